"""Evaluation metrics on frames with known truth: lip sync, identity, head speed, seams,
the mouth in pauses.

Each takes plain arrays, so it can be checked on ground truth and constructed cases; the
evaluation (`emo_jax.eval.evaluate`) applies them to generated videos.
"""

from __future__ import annotations

import math

import numpy as np

from emo_jax.data.preprocess import POSE_SIDE
from emo_jax.eval.mouth import lower_face
from emo_jax.faces.pose import POSE_ESTIMATORS, speeds_from_omegas

MIN_BUCKET_FRAMES = 10  # a speed bucket counts with at least this many frames
SPEED_RESOLUTION = 1e-3  # degrees per frame: smaller differences are not motion
SILENCE_DB = -35.0  # a frame this far below the clip's loudest is silent (espeak: -46 dB)
MIN_PAUSE = 0.3  # seconds: shorter silences (stops, breaths) are not pauses


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN (undefined) when either series is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 1e-12 else math.nan


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties get their mean rank); NaN (undefined) for fewer than 2
    points or a constant series."""
    from scipy.stats import rankdata

    if len(a) < 2:
        return math.nan
    return pearson(rankdata(a), rankdata(b))


def head_speeds(frames: np.ndarray, boxes: np.ndarray, estimator: str = "flow") -> np.ndarray:
    """Head rotation speed (F,) in degrees per frame of frames (F, H, W, 3) with Haar-convention
    face boxes (F, 4), measured as preprocessing does (`emo_jax.faces.pose`, frames resized to
    POSE_SIDE, median over 3 frames; frame 0 copies frame 1)."""
    import cv2

    pose = POSE_ESTIMATORS[estimator]()
    scale = POSE_SIDE / frames.shape[1]
    greys = [
        cv2.cvtColor(
            cv2.resize(f, (POSE_SIDE, POSE_SIDE), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
        )
        for f in frames
    ]
    omegas = np.zeros((len(frames), 3))
    for k in range(1, len(frames)):
        omegas[k] = pose(greys[k - 1], greys[k], boxes[k - 1] * scale)
    if len(frames) > 1:
        omegas[0] = omegas[1]
    return speeds_from_omegas(omegas)


def bucket_sums(
    requested: np.ndarray, measured: np.ndarray, centers: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Per requested-speed bucket (frames go to the nearest centre): the sum of the measured
    speeds and the frame count, (len(centers),) each; sums of clips pool their frames."""
    centers_arr = np.asarray(centers, np.float64)
    nearest = np.abs(np.asarray(requested)[:, None] - centers_arr[None]).argmin(axis=1)
    k = len(centers_arr)
    return (
        np.bincount(nearest, weights=np.asarray(measured, np.float64), minlength=k),
        np.bincount(nearest, minlength=k),
    )


def speed_buckets(
    requested: np.ndarray, measured: np.ndarray, centers: tuple[float, ...]
) -> dict[str, float | list]:
    """Measured speed per requested-speed bucket and their Spearman (`buckets_spearman`)."""
    return buckets_spearman(*bucket_sums(requested, measured, centers), centers)


def buckets_spearman(
    sums: np.ndarray, counts: np.ndarray, centers: tuple[float, ...]
) -> dict[str, float | list]:
    """The mean measured speed of each bucket (`bucket_sums`; buckets with fewer than
    MIN_BUCKET_FRAMES frames are dropped) and the Spearman correlation of the buckets' centres
    with it, rounded to SPEED_RESOLUTION (a still head reads as constant: undefined, NaN)."""
    rows = [
        (float(c), float(s / n), int(n))
        for c, s, n in zip(centers, sums, counts)
        if n >= MIN_BUCKET_FRAMES
    ]
    return {
        "spearman": spearman(
            [r[0] for r in rows], np.round(np.array([r[1] for r in rows]) / SPEED_RESOLUTION)
        ),
        "buckets": [{"requested": c, "measured": m, "frames": n} for c, m, n in rows],
    }


def face_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (H, W): the face box (corpus convention) without its lower-face (mouth) region."""
    mask = np.zeros((height, width), bool)
    x0, y0 = np.floor(np.clip(box[:2], 0, [width, height])).astype(int)
    x1, y1 = np.ceil(np.clip(box[2:], 0, [width, height])).astype(int)
    mask[y0:y1, x0:x1] = True
    mx0, my0, mx1, my1 = lower_face(box, height, width)
    mask[my0:my1, mx0:mx1] = False
    return mask


def identity(frames: np.ndarray, truth: np.ndarray, boxes: np.ndarray) -> dict[str, float]:
    """PSNR (dB, of the mean squared error over all frames) and mean SSIM of the face outside
    the mouth (`face_mask` of the true boxes, corpus convention) against the true frames."""
    from skimage.metrics import structural_similarity

    height, width = truth.shape[1:3]
    err, count, ssims = 0.0, 0, []
    for gen, ref, box in zip(frames, truth, boxes):
        mask = face_mask(box, height, width)
        if not mask.any():
            continue
        diff = gen.astype(np.float64) - ref.astype(np.float64)
        err += float((diff[mask] ** 2).sum())
        count += int(mask.sum()) * 3
        _, full = structural_similarity(
            gen, ref, channel_axis=-1, data_range=255, full=True, win_size=7
        )
        ssims.append(float(full.mean(axis=-1)[mask].mean()))
    if count == 0:
        return {"psnr": math.nan, "ssim": math.nan}
    mse = err / count
    psnr = 10 * math.log10(255**2 / mse) if mse > 0 else math.inf
    return {"psnr": psnr, "ssim": float(np.mean(ssims))}


def frame_changes(frames: np.ndarray) -> np.ndarray:
    """Mean absolute change (T-1,) from each frame to the next, in 0-255 levels."""
    x = frames.astype(np.float32)
    return np.abs(x[1:] - x[:-1]).mean(axis=(1, 2, 3))


def seam_changes(frames: np.ndarray, clip_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame-to-frame changes across clip boundaries (into frames f, 2f, ...) and within clips."""
    changes = frame_changes(frames)  # changes[t - 1]: frame t-1 -> t
    into = np.arange(1, len(frames))
    seam = into % clip_frames == 0
    return changes[seam], changes[~seam]


def ratio_of_means(top: tuple[float, int], bottom: tuple[float, int]) -> float:
    """Mean over mean of two (sum, count) pairs; NaN if either is empty or the bottom mean is
    (near) 0, a video that does not move."""
    if top[1] == 0 or bottom[1] == 0 or bottom[0] <= 1e-9 * bottom[1]:
        return math.nan
    return float((top[0] / top[1]) / (bottom[0] / bottom[1]))


def seam_ratio(boundary: np.ndarray, within: np.ndarray) -> float:
    """Mean change across boundaries / mean change within clips (1: seamless); NaN if either is
    missing or the video does not move."""
    return ratio_of_means((boundary.sum(), len(boundary)), (within.sum(), len(within)))


def pause_frames(
    wave: np.ndarray, sample_rate: int, fps: int, n: int, min_seconds: float = MIN_PAUSE
) -> np.ndarray:
    """bool (n,): the video frames inside the audio's pauses, runs of at least `min_seconds` of
    frames whose level is SILENCE_DB or more below the clip's loudest frame."""
    hop = sample_rate // fps
    wave = np.pad(np.asarray(wave, np.float64)[: n * hop], (0, max(0, n * hop - len(wave))))
    rms = np.sqrt((wave.reshape(n, hop) ** 2).mean(axis=1)) + 1e-12
    quiet = 20 * np.log10(rms / rms.max()) < SILENCE_DB
    out = np.zeros(n, bool)
    start = None
    for t, q in enumerate(np.append(quiet, False)):
        if q and start is None:
            start = t
        elif not q and start is not None:
            if t - start >= math.ceil(min_seconds * fps - 1e-9):
                out[start:t] = True
            start = None
    return out


def mouth_changes(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mean absolute change (T-1,) of the lower-face (mouth) region from each frame to the next,
    in 0-255 levels; the region is frame t's (boxes (T, 4), corpus convention)."""
    height, width = frames.shape[1:3]
    out = np.zeros(max(len(frames) - 1, 0))
    for t in range(1, len(frames)):
        x0, y0, x1, y1 = lower_face(boxes[t], height, width)
        a, b = frames[t - 1, y0:y1, x0:x1], frames[t, y0:y1, x0:x1]
        out[t - 1] = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()
    return out
