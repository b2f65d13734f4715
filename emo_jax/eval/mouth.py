"""How open the mouth is, read from frames: the lip gap (dark mouth interior plus teeth) in the
lower face, in face-box heights.

Per frame, inside the lower-face region of the face box (`REGION`), each pixel counts as mouth
by how dark it is against the skin (luminance below `DARK` x the region's skin level, the 75th
percentile of its luminance, fully at `DARKEST` x) or how grey it is (teeth); of the blobs this
makes, the mouth is the largest one that lies inside the region and near its middle (`inside`).
Summed down each column this is the gap's height per column; the mean of the `TOP` fraction of
tallest columns (so the mouth's width and position do not matter) over the median face-box
height of the video is the measure. Boxes come from the truth, or from the Haar cascade
(`track_faces`, mapped to the truth's convention by `from_haar`).

Validated on ground-truth frames of the held-out corpus (tests/test_eval_mouth.py): Pearson with
the true opening 0.978 per clip at 96 px and 0.984 at 128 px (12 clips of 6 s each, H.264).
"""

from __future__ import annotations

import numpy as np

from emo_jax.faces.detect import make_detector
from emo_jax.faces.track import fill_track

REGION = (0.15, 0.42, 0.85, 0.95)  # x0, y0, x1, y1 as fractions of the face box
DARK, DARKEST = 0.45, 0.1
GREY = 0.3  # teeth: (max - min) / max of RGB below this
TOP = 0.08
CENTRAL = 0.6  # the mouth's centre lies in this middle fraction of the region's width
HAAR_MARGINS = (0.11, 0.24, 0.145, -0.02)  # measured on the corpus (tests/test_eval_mouth.py)
TRACK_SMOOTH = 2.0  # frames
TRACK_STRIDE = 2  # the cascade runs on every second frame


def lower_face(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The lower-face region (x0, y0, x1, y1) in whole pixels of a face box (4,), in the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    rx0, ry0, rx1, ry1 = REGION
    left = int(np.clip(np.floor(x0 + rx0 * w), 0, width - 1))
    top = int(np.clip(np.floor(y0 + ry0 * h), 0, height - 1))
    right = int(np.clip(np.ceil(x0 + rx1 * w), left + 1, width))
    bottom = int(np.clip(np.ceil(y0 + ry1 * h), top + 1, height))
    return left, top, right, bottom


def mouthness(patch: np.ndarray) -> np.ndarray:
    """How much each pixel (H, W, 3) uint8 looks like the open mouth (interior or teeth), 0..1."""
    rgb = patch.astype(np.float32)
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    skin = max(np.percentile(lum, 75), 1.0)
    dark = np.clip((DARK * skin - lum) / ((DARK - DARKEST) * skin), 0, 1)
    spread = (rgb.max(axis=-1) - rgb.min(axis=-1)) / np.maximum(rgb.max(axis=-1), 1)
    grey = np.clip((GREY - spread) / GREY, 0, 1) * (lum > DARK * skin)
    return np.maximum(dark, grey)


def inside(m: np.ndarray) -> np.ndarray:
    """`m` (H, W) on the mouth only: of the blobs (m > 0.3) that do not touch the region's
    edges (hair, neck, background and eyes reach in from there) and are centred in the middle
    `CENTRAL` of its width (not the jaw line), the one of largest mass, with a pixel around it;
    zeros if there is none."""
    import cv2

    height, width = m.shape
    count, labels, _, centroids = cv2.connectedComponentsWithStats(
        (m > 0.3).astype(np.uint8), connectivity=8
    )
    mass = np.bincount(labels.ravel(), weights=m.ravel(), minlength=count)
    mass[0] = 0
    mass[np.concatenate([labels[:, 0], labels[:, -1], labels[-1], labels[0]])] = 0
    mass[np.abs(centroids[:, 0] / max(width - 1, 1) - 0.5) > CENTRAL / 2] = 0
    if mass.max() <= 0:
        return np.zeros_like(m)
    blob = cv2.dilate((labels == mass.argmax()).astype(np.uint8), np.ones((3, 3), np.uint8))
    return m * blob


def mouth_opening(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Mouth opening (F,) of frames (F, H, W, 3) uint8 with face boxes (F, 4) x0 y0 x1 y1, in
    units of the median face-box height (so a noisy box does not scale it frame by frame)."""
    out = np.zeros(len(frames))
    height, width = frames.shape[1:3]
    unit = max(float(np.median(boxes[:, 3] - boxes[:, 1])), 1.0)
    for f, (frame, box) in enumerate(zip(frames, boxes)):
        x0, y0, x1, y1 = lower_face(box, height, width)
        columns = inside(mouthness(frame[y0:y1, x0:x1])).sum(axis=0)
        k = max(1, int(round(TOP * (box[2] - box[0]))))
        out[f] = np.sort(columns)[-k:].mean() / unit
    return out


def from_haar(box: np.ndarray) -> np.ndarray:
    """Haar-cascade face boxes (..., 4) -> the corpus's face-box convention (the forehead just
    above the eyebrows to the chin, cheek to cheek): on the corpus the cascade's box reaches
    further out by HAAR_MARGINS (left, top, right, bottom; fractions of the true box)."""
    left, top, right, bottom = HAAR_MARGINS
    box = np.asarray(box, np.float64)
    w = (box[..., 2] - box[..., 0]) / (1 + left + right)
    h = (box[..., 3] - box[..., 1]) / (1 + top + bottom)
    x0, y0 = box[..., 0] + left * w, box[..., 1] + top * h
    return np.stack([x0, y0, x0 + w, y0 + h], axis=-1)


def to_haar(box: np.ndarray) -> np.ndarray:
    """The inverse of `from_haar`: corpus face boxes (..., 4) -> where the cascade puts them."""
    left, top, right, bottom = HAAR_MARGINS
    box = np.asarray(box, np.float64)
    w, h = box[..., 2] - box[..., 0], box[..., 3] - box[..., 1]
    return box + np.stack([-left * w, -top * h, right * w, bottom * h], axis=-1)


def track_faces(
    frames: np.ndarray, fallback: np.ndarray | None = None, stride: int = TRACK_STRIDE
) -> np.ndarray:
    """Haar-cascade face boxes (F, 4): the cascade on every `stride`-th frame, the frames
    between and any misses interpolated, jitter smoothed (`emo_jax.faces.track.fill_track`);
    `fallback` (4,), a cascade-convention box, for every frame if no face is found at all
    (None: ValueError)."""
    detector = make_detector("haar")
    found = [
        detector(f) if k % stride == 0 or k == len(frames) - 1 else None
        for k, f in enumerate(frames)
    ]
    if all(b is None for b in found):
        if fallback is None:
            raise ValueError("no face in any frame")
        return np.repeat(np.asarray(fallback, np.float64)[None], len(frames), axis=0)
    return fill_track(found, smooth=TRACK_SMOOTH)
