"""`emo-jax evaluate`: generate each held-out clip from its first frame and its audio, and
measure what EMO should learn against the clip's known truth.

For each clip of the corpus folder (`emo-jax synth --split heldout`): the first frame is the
reference, the clip's audio the audio, and the requested head speed is the clip's true speed
averaged over the second around each whole second (the pipeline's speed curve). The generated
frames are compared with the ground-truth frames cut and resized the way the pipeline cut the
reference (`Reference.crop`).
The face-region mask given to the pipeline is the first frame's true face box in the cascade's
convention (`mouth.to_haar`), enlarged as the pipeline does, so no clip fails on detection.

Four videos are measured by the same code: the generated one, the ground truth itself (the
ceiling: what the measures read on perfect frames), the ground truth through the model's
autoencoder (what its latent space keeps: on average a ceiling for generated video) and the
reference image repeated (a control that cannot follow the audio). Metrics
(`emo_jax.eval.metrics`):

- lip sync: Pearson of the mouth measure (`emo_jax.eval.mouth`, faces tracked by the Haar
  cascade) with the clip's true opening, averaged over clips. Pearson of a constant series is
  undefined (None in the JSON, "undefined" in the table): the reference repeated's always; in
  the mean a clip whose mouth does not move counts 0 (it follows nothing), and the mean is
  undefined only when every clip's is;
- lip sync, shuffled audio: the same measure against the true opening of another clip (the
  next one, cyclically): what lip sync reads when the video follows the wrong audio;
- identity: PSNR and SSIM of the face outside the mouth against the ground-truth frames;
- head speed: frames pooled over clips into buckets of requested speed (the model's speed
  centres); Spearman of the bucket centres with the mean measured speed (`faces.pose.FlowPose`);
- seams: mean frame-to-frame change into the first frame of each generated clip (f, 2f, ...)
  over the mean change within clips, pooled over clips (1: seamless);
- the mouth in pauses: in the audio's pauses of `metrics.MIN_PAUSE` s or longer, the mean
  mouth measure (pause opening) and the mouth region's frame-to-frame change over its change
  during speech (pause change), pooled over clips: a resting mouth reads as the truth's.

Each figure has a standard error over clips, and the evaluation reports paired differences:
identity against the reference repeated, the mouth in pauses against the ground truth
(`emo_jax.eval.summary`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emo_jax.audio.io import load_audio
from emo_jax.data.video import iter_frames
from emo_jax.errors import InputError
from emo_jax.eval import metrics, summary
from emo_jax.eval.mouth import from_haar, mouth_opening, to_haar, track_faces
from emo_jax.files import read_json
from emo_jax.pipeline.inputs import FACE_EXPAND, box_mask

VIDEOS = ("generated", "ground_truth", "autoencoded", "reference_repeated")
TRUTH_KEYS = ("mouth_open", "speed", "box")


@dataclasses.dataclass(frozen=True)
class TruthClip:
    """A corpus clip: frames, audio and per-frame truth."""

    name: str
    split: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    wave: np.ndarray  # (T * sample_rate / fps,) float32
    sample_rate: int
    fps: int
    opening: np.ndarray  # (T,)
    speed: np.ndarray  # (T,) degrees per frame
    boxes: np.ndarray  # (T, 4) corpus convention, pixels


def find_clips(folder: str | Path) -> list[Path]:
    """The clips (truth JSON files with an mp4 beside them) of a corpus folder, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: data folder not found")
    paths = sorted(p for p in folder.glob("*.json") if p.with_suffix(".mp4").is_file())
    if not paths:
        raise InputError(f"{folder}: no corpus clips (<name>.json + <name>.mp4; emo-jax synth)")
    return paths


def load_clip(path: Path, seconds: float | None = None) -> TruthClip:
    """A clip from its truth JSON (audio from the .wav beside it, else the mp4), cut to the
    first `seconds` if given."""
    truth = read_json(path)
    per_frame = truth.get("frames", {})
    missing = [k for k in TRUTH_KEYS if k not in per_frame]
    if missing or "fps" not in truth or "sample_rate" not in truth:
        raise InputError(f"{path}: not a corpus truth file (missing {', '.join(missing) or 'fps'})")
    fps, rate = int(truth["fps"]), int(truth["sample_rate"])
    n = len(per_frame["mouth_open"])
    if seconds is not None:
        n = min(n, max(1, int(round(seconds * fps))))
    frames = []
    for frame in iter_frames(path.with_suffix(".mp4")):
        frames.append(frame)
        if len(frames) == n:
            break
    if len(frames) < n:
        raise InputError(f"{path.with_suffix('.mp4')}: {len(frames)} frames, the truth has {n}")
    wav = path.with_suffix(".wav")
    wave = load_audio(wav if wav.is_file() else path.with_suffix(".mp4"), rate)
    samples = n * rate // fps
    wave = np.pad(wave[:samples], (0, max(0, samples - len(wave))))
    frames = np.stack(frames)
    if frames.shape[1] != frames.shape[2]:
        raise InputError(f"{path.with_suffix('.mp4')}: frames must be square (corpus clips are)")
    return TruthClip(
        name=path.stem,
        split=str(truth.get("split", "unknown")),
        frames=frames,
        wave=wave.astype(np.float32),
        sample_rate=rate,
        fps=fps,
        opening=np.asarray(per_frame["mouth_open"][:n], np.float64),
        speed=np.asarray(per_frame["speed"][:n], np.float64),
        boxes=np.asarray(per_frame["box"][:n], np.float64),
    )


def speed_curve(speed: np.ndarray, fps: int) -> list[float]:
    """The pipeline's speed curve (value i at i seconds, interpolated between) of a per-frame
    speed: value i is the mean over the second around i s."""
    half = fps // 2
    return [float(speed[max(0, i - half) : i + half].mean()) for i in range(0, len(speed), fps)]


def cut(frames: np.ndarray, boxes: np.ndarray, crop: tuple[int, int, int], size: int):
    """Frames (T, H, W, 3) and boxes (T, 4) -> the square `crop` (x0, y0, side) resized to
    `size`, as the pipeline cuts the reference."""
    x0, y0, side = crop
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = np.stack(
        [
            cv2.resize(f[y0 : y0 + side, x0 : x0 + side], (size, size), interpolation=interp)
            for f in frames
        ]
    )
    return out, (boxes - [x0, y0, x0, y0]) * (size / side)


@dataclasses.dataclass(frozen=True)
class Reading:
    """What the measures read from one video."""

    opening: np.ndarray  # (T,) mouth measure
    speed: np.ndarray  # (T,) head speed, degrees per frame
    boxes: np.ndarray  # (T, 4) tracked face boxes, corpus convention


def read_video(frames: np.ndarray, fallback_box: np.ndarray) -> Reading:
    """Faces tracked by the cascade (`fallback_box`, cascade convention, if none is found), the
    mouth measure and the head speed."""
    boxes = track_faces(frames, fallback_box)
    faces = from_haar(boxes)
    return Reading(mouth_opening(frames, faces), metrics.head_speeds(frames, boxes), faces)


def generate_clip(pipe: Any, clip: TruthClip, options: dict) -> tuple:
    """(job, generated frames, truth frames and boxes cut as the pipeline cut the reference,
    seconds generating) of a clip generated from its first frame, audio and head speed; both
    videos have n = min(generated, truth) frames."""
    size = clip.frames.shape[1]
    mask = (box_mask(to_haar(clip.boxes[0]), size, FACE_EXPAND) * 255).astype(np.uint8)
    job = pipe.prepare(
        clip.frames[0],
        (clip.wave, clip.sample_rate),
        speed=speed_curve(clip.speed, clip.fps),
        mask=mask,
        **options,
    )
    t0 = time.perf_counter()
    generated = pipe.generate(job).frames
    seconds = time.perf_counter() - t0
    n = min(len(generated), len(clip.opening))
    truth, boxes = cut(clip.frames[:n], clip.boxes[:n], job.reference.crop, generated.shape[1])
    return job, generated[:n], truth, boxes, seconds


def read_results(path: Path, paths: list[Path], seconds: float | None) -> dict:
    """An earlier evaluation's results (`evaluate`, written by `emo-jax evaluate --out`), checked
    to be of the clips `paths` cut to `seconds`, for paired figures."""
    results = read_json(path)
    rows = results.get("per_clip")
    if not isinstance(rows, list) or not all("pauses" in r.get("generated", {}) for r in rows):
        raise InputError(f"{path}: not the results of this emo-jax evaluate (no per-clip rows)")
    names = [r.get("name") for r in rows]
    if names != [p.stem for p in paths] or results.get("seconds_per_clip") != seconds:
        raise InputError(
            f"{path}: results of other clips ({len(names)} clips, {names[0] if names else '-'}"
            f"...; --seconds {results.get('seconds_per_clip')}): pair only the same clips"
        )
    return results


def _pooled(values: np.ndarray) -> list[float]:
    """[sum, count] of values: what a pooled mean over clips adds up."""
    return [float(np.sum(values)), int(len(values))]


def measure_video(
    frames: np.ndarray,
    reading: Reading,
    clip: TruthClip,
    requested: np.ndarray,
    clip_frames: int,
    pauses: np.ndarray,
    centers: tuple[float, ...],
) -> dict[str, Any]:
    """One video's row of a clip: its lip sync, and what its pooled figures add up (head speed
    per requested-speed bucket, seam changes, the mouth in and out of the audio's pauses)."""
    n = len(frames)
    sums, counts = metrics.bucket_sums(requested[:n], reading.speed, centers)
    boundary, within = metrics.seam_changes(frames, clip_frames)
    changes = metrics.mouth_changes(frames, reading.boxes)  # changes[t - 1]: frame t-1 -> t
    in_pause = pauses[1:n] & pauses[: n - 1]
    in_speech = ~pauses[1:n] & ~pauses[: n - 1]
    return {
        "lip_sync": metrics.pearson(reading.opening, clip.opening[:n]),
        "speed": {"sums": sums.tolist(), "frames": counts.tolist()},
        "seams": {"boundary": _pooled(boundary), "within": _pooled(within)},
        "pauses": {
            "opening": _pooled(reading.opening[pauses[:n]]),
            "pause_change": _pooled(changes[in_pause]),
            "speech_change": _pooled(changes[in_speech]),
        },
    }


def evaluate(
    pipe: Any,
    paths: list[Path],
    seconds: float | None = None,
    options: dict | None = None,
    on_clip: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Generates and measures every clip of `paths` (see the module doc); returns the results
    (JSON-able: NaN and infinity become None): per clip, each video's row
    (`measure_video`), and the figures of each video (`summary.figures`) with their
    standard errors and the paired differences `summary.PAIRED_WITHIN`."""
    options = dict(options or {})
    start = time.perf_counter()
    generation = 0.0
    per_clip, openings, readings = [], [], []
    centers = pipe.config.model.emo.speed_centers
    clip_frames = None
    for i, path in enumerate(paths):
        clip = load_clip(path, seconds)
        if on_clip is not None:
            on_clip(i, len(paths), clip.name)
        job, generated, truth, boxes, seconds_generating = generate_clip(pipe, clip, options)
        generation += seconds_generating
        n = len(generated)
        resolution, clip_frames = generated.shape[1], job.clip_frames
        fallback = to_haar(boxes[0])
        pauses = metrics.pause_frames(clip.wave, clip.sample_rate, clip.fps, n)
        videos = {
            "generated": generated[:n],
            "ground_truth": truth,
            "autoencoded": pipe.autoencode(job, truth),
            "reference_repeated": np.repeat(job.reference.image[None], n, axis=0),
        }
        row: dict[str, Any] = {
            "name": clip.name,
            "split": clip.split,
            "frames": n,
            "pause_frames": int(pauses.sum()),
            "generation_seconds": seconds_generating,
        }
        readings.append({})
        for video, frames in videos.items():
            reading = readings[-1][video] = read_video(frames, fallback)
            truth_motion = video in ("ground_truth", "autoencoded")
            requested = clip.speed if truth_motion else job.speed
            row[video] = measure_video(
                frames, reading, clip, requested, clip_frames, pauses, centers
            )
            if video != "ground_truth":
                row[video].update(metrics.identity(frames, truth, boxes))
        openings.append(clip.opening[:n])
        per_clip.append(row)
    for row, reading, other in zip(per_clip, readings, openings[1:] + openings[:1]):
        for video in VIDEOS:  # against the next clip's true opening (cyclically)
            mine = reading[video].opening
            shuffled = metrics.pearson(mine[: len(other)], other[: len(mine)])
            row[video]["lip_sync_shuffled"] = shuffled if len(paths) > 1 else math.nan
    rows = _jsonable(per_clip)  # the figures are computed as a later comparison reads them
    return _jsonable(
        {
            "clips": len(per_clip),
            "splits": sorted({row["split"] for row in per_clip}),
            "seconds_per_clip": seconds,
            "resolution": int(resolution),
            "clip_frames": int(clip_frames),
            "speed_centers": list(centers),
            "options": options,
            "metrics": {v: summary.figures([r[v] for r in rows], centers) for v in VIDEOS},
            "standard_errors": {v: summary.standard_errors(rows, v, centers) for v in VIDEOS},
            "paired": {
                what: summary.paired(rows, video, rows, other, centers)
                for what, video, other, _ in summary.PAIRED_WITHIN
            },
            "per_clip": rows,
            "generation_seconds": generation,
            "total_seconds": time.perf_counter() - start,
        }
    )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


HEADS = ("generated", "ground truth", "GT autoencoded", "reference repeated")


def format_table(results: dict) -> str:
    """The results as plain text: the figures x the four videos (`VIDEOS`), "value ± SE", and
    the paired differences within the evaluation (`summary.PAIRED_WITHIN`)."""
    parts = [summary.format_table(results, VIDEOS, HEADS)]
    for what, _, _, keys in summary.PAIRED_WITHIN:
        pairs = results.get("paired", {}).get(what, {})
        parts.append(summary.format_paired(what, {k: pairs[k] for k in keys if k in pairs}))
    return "\n".join(parts)
