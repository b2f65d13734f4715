"""Preprocessing a folder of talking-head videos into ArrayRecord shards for training.

For each video: decode at `fps`; detect the face in every frame; fill and smooth the face
track (from the landmarks where the back end has them); one stable square crop around it,
resized to `resolution`; head rotation speed per frame (`pose` "flow": the flow estimator in
the face track; "landmarks": the head pose of the landmarks, `emo_jax.faces.pose`, falling back
to flow where the landmarks are missing in half the frames, which the manifest lists); the
audio track at `sample_rate` (exactly sample_rate / fps samples per frame, zero-padded
at the end if the audio is a little short) and its features per frame (config.model.audio's
encoder over the whole track, normalised with the track's statistics: what generation computes,
so that training never runs an audio encoder). Output folder:

  shards/<id>.array_record   one record per frame (emo_jax.data.records)
  videos/<id>.json           the per-video result: done marker, or why it was skipped
  manifest.json              settings, counts, the shard list, skipped and trimmed files
                             (written only when at least one video is usable)

Runs are resumable: a video whose result file matches the file's size, mtime and the settings is
not processed again; one whose audio feature settings alone differ (another model.audio or
data.audio_dtype, or a shard from before features were stored) only has its features
rewritten. Bad input (not a video, no audio track, no face, corrupt data) is reported in the
manifest and the run goes on; a corrupt frame trims the video there.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from emo_jax.audio.features import AudioFeatures, normalize
from emo_jax.audio.io import load_audio
from emo_jax.config import AudioConfig, Config, clip_spec
from emo_jax.data import records
from emo_jax.data.video import CorruptVideoError, iter_frames, probe
from emo_jax.errors import InputError
from emo_jax.faces.detect import make_detector, resolve
from emo_jax.faces.pose import (
    POSE_ESTIMATORS,
    integrate,
    landmark_angles,
    landmark_speeds,
    speeds_from_omegas,
)
from emo_jax.faces.track import fill_track, stable_crop
from emo_jax.files import write_json

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".flv")
MANIFEST_VERSION = 2  # 2: records hold the audio features
AUDIO_SETTINGS = ("audio_features", "audio_dtype")  # a change of these rewrites features only
DETECT_SIDE = 480  # frames are decoded at most this large (short side) for face detection
POSE_SIDE = 128  # the crop is analysed for head rotation at this size


@dataclasses.dataclass(frozen=True)
class Settings:
    """What decides a video's output: a change re-processes it."""

    resolution: int
    fps: int
    sample_rate: int
    detector: str
    pose: str
    crop_scale: float
    jpeg_quality: int
    min_face_fraction: float
    min_frames: int
    audio_dtype: str
    audio_features: str  # `records.spec_digest` of config.model.audio's `audio_spec`

    @classmethod
    def from_config(cls, cfg: Config) -> Settings:
        """config.data's settings, the face back end resolved ("auto" -> what is installed);
        frame and sample rate: config.model's (`clip_spec`); the audio features' digest."""
        if cfg.data.pose not in ("landmarks", "flow"):
            raise InputError(f"data.pose: {cfg.data.pose!r} is not one of landmarks, flow")
        try:
            detector = resolve(cfg.data.detector)
        except ValueError as e:
            raise InputError(f"data.detector: {e}") from None
        clip = clip_spec(cfg.model)
        model = {
            "fps": clip.fps,
            "sample_rate": clip.sample_rate,
            "audio_features": records.spec_digest(records.audio_spec(cfg.model.audio)),
        }
        names = [f.name for f in dataclasses.fields(cls) if f.name not in model]
        fields = {name: getattr(cfg.data, name) for name in names}
        return cls(**model, **{**fields, "detector": detector})


@functools.lru_cache(maxsize=1)
def _audio_features(cfg: AudioConfig) -> AudioFeatures:
    return AudioFeatures(cfg)  # one encoder per process (wav2vec2 loads once)


def frame_features(track: np.ndarray, cfg: AudioConfig, dtype: str) -> Iterator[np.ndarray]:
    """The features (layers, dim) in `dtype` of each video frame of a whole track (as the
    records hold it), normalised with the track's statistics: `AudioFeatures`' per-frame
    output, as generation computes it."""
    for block in _audio_features(cfg).iter_frames(normalize(track)):
        yield from block.astype(dtype)


def video_id(rel: Path) -> str:
    """A file-name-safe id from the path relative to the videos folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", "__".join(rel.parts))


def find_videos(videos_dir: Path) -> list[Path]:
    """Video files under `videos_dir` (recursive, by extension, sorted)."""
    if not videos_dir.is_dir():
        raise InputError(f"{videos_dir}: videos folder not found")
    paths = sorted(
        p for p in videos_dir.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )
    if not paths:
        raise InputError(f"{videos_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return paths


def _scaled_size(width: int, height: int, short: int) -> tuple[int, int] | None:
    if min(width, height) <= short:
        return None
    s = short / min(width, height)
    return 2 * round(width * s / 2), 2 * round(height * s / 2)


def _detect(path: Path, settings: Settings, width: int, height: int):
    """The largest face's boxes and 68 landmarks per frame (full-resolution pixels, None where
    not found) and the corruption note."""
    detector = make_detector(settings.detector)
    size = _scaled_size(width, height, DETECT_SIDE)
    scale = 1.0 if size is None else width / size[0]
    boxes, marks, note = [], [], None
    try:
        for frame in iter_frames(path, settings.fps, size):
            found = detector.detect(frame)
            face = found[0] if found else None
            boxes.append(None if face is None else face.box * scale)
            marks.append(None if face is None or face.landmarks is None else face.landmarks * scale)
    except CorruptVideoError as e:
        note = f"trimmed to {len(boxes)} frames: {e}"
    return boxes, marks, note


def _frames_and_pose(path: Path, settings: Settings, n: int, crop, track: np.ndarray):
    """JPEG crops, per-frame rotation vectors and boxes in crop pixels for the first n frames."""
    x0, y0, side = crop
    res = settings.resolution
    estimator = POSE_ESTIMATORS["flow"]()  # also the fallback of pose "landmarks"
    pose_scale = POSE_SIDE / side
    jpegs, omegas, prev = [], [], None
    for k, frame in enumerate(itertools.islice(iter_frames(path, settings.fps), n)):
        patch = frame[y0 : y0 + side, x0 : x0 + side]
        interp = cv2.INTER_AREA if side > res else cv2.INTER_LINEAR
        jpegs.append(
            records.encode_jpeg(
                cv2.resize(patch, (res, res), interpolation=interp), settings.jpeg_quality
            )
        )
        grey = cv2.cvtColor(
            cv2.resize(patch, (POSE_SIDE, POSE_SIDE), interpolation=cv2.INTER_AREA),
            cv2.COLOR_RGB2GRAY,
        )
        if prev is None:
            omegas.append(np.zeros(3))
        else:
            box = (track[k - 1] - [x0, y0, x0, y0]) * pose_scale
            omegas.append(estimator(prev, grey, box))
        prev = grey
    if len(jpegs) < n:
        raise CorruptVideoError(
            f"{path}: fewer frames on the second read ({len(jpegs)} < {n})", len(jpegs)
        )
    omegas = np.array(omegas)
    if len(omegas) > 1:
        omegas[0] = omegas[1]
    boxes = np.clip((track[:n] - [x0, y0, x0, y0]) * (res / side), 0, res)
    return jpegs, omegas, boxes


def process_video(
    path: Path,
    vid: str,
    out_dir: Path,
    settings: Settings,
    audio: AudioConfig,
    stored: dict | None = None,
) -> dict:
    """Preprocesses one video (given its `stored` result of other audio feature settings: only
    rewrites its features); returns its result (also written to videos/<id>.json)."""
    stat = path.stat()
    result = {
        "id": vid,
        "source": str(path),
        "source_bytes": stat.st_size,
        "source_mtime": stat.st_mtime,
        **(stored or {}),
        "settings": dataclasses.asdict(settings),
    }
    try:
        if stored is None:
            result.update(_process(path, vid, out_dir, settings, audio))
        elif stored["status"] == "ok":
            write_features(out_dir / stored["shard"], audio, settings.audio_dtype)
    except InputError as e:
        result.update(status="skipped", reason=str(e))
    except Exception as e:  # an unexpected failure on one file must not stop the run
        result.update(status="skipped", reason=f"{path}: failed ({type(e).__name__}: {e})")
    write_json(result, out_dir / "videos" / f"{vid}.json")
    return result


def _process(
    path: Path, vid: str, out_dir: Path, settings: Settings, audio_cfg: AudioConfig
) -> dict:
    info = probe(path)
    if not info.has_audio:
        raise InputError(f"{path}: has no audio track")
    audio = load_audio(path, settings.sample_rate)
    spf = settings.sample_rate // settings.fps
    boxes, marks, note = _detect(path, settings, info.width, info.height)
    n = min(len(boxes), -(-len(audio) // spf))
    if n < len(boxes) - 1:
        note = (note + "; " if note else "") + f"audio ends at frame {n} of {len(boxes)}"
    boxes = boxes[:n]
    if n < settings.min_frames:
        raise InputError(
            f"{path}: too short: {n} frames with sound ({n / settings.fps:.1f} s), "
            f"{settings.min_frames} needed"
        )
    found = sum(b is not None for b in boxes)
    if found < settings.min_face_fraction * n:
        raise InputError(
            f"{path}: no face in {n - found} of {n} frames (a face is needed in "
            f"{settings.min_face_fraction:.0%} of them)"
        )
    track = fill_track(boxes)
    crop = stable_crop(track, info.width, info.height, settings.crop_scale)
    jpegs, omegas, crop_boxes = _frames_and_pose(path, settings, n, crop, track)
    speeds, angles, speed_source = _speeds(omegas, marks[:n], settings, info.width, info.height)
    audio = np.pad(audio[: n * spf], (0, max(0, n * spf - len(audio))))
    track = records.dequantize(records.quantize(audio))  # as the records hold it
    features = frame_features(track, audio_cfg, settings.audio_dtype)
    recs = (
        records.encode_frame(
            jpegs[k], audio[k * spf : (k + 1) * spf], crop_boxes[k], speeds[k], angles[k], vid, k, f
        )
        for k, f in zip(range(n), features)
    )
    shard = Path("shards") / f"{vid}.array_record"
    records.write_shard(out_dir / shard, recs)
    return {
        "status": "ok",
        "reason": None,
        "trimmed": note,
        "shard": str(shard),
        "n_frames": n,
        "source_size": [info.width, info.height],
        "source_fps": info.fps,
        "crop": list(crop),
        "face_fraction": found / n,
        "mean_speed": float(speeds.mean()),
        "speed_source": speed_source,
    }


def _speeds(omegas: np.ndarray, marks: list, settings: Settings, width: int, height: int):
    """Per-frame speeds (F,), angles (F, 3) and where they came from: "landmarks" (the head
    pose of the landmarks, smoothed) or "flow" (the flow estimator in the face track; angles
    integrated): `pose` "flow", or no landmarks in half the frames."""
    if settings.pose == "landmarks" and sum(m is not None for m in marks) >= len(marks) / 2:
        angles = np.array(
            [np.full(3, np.nan) if m is None else landmark_angles(m, width, height) for m in marks]
        )
        speeds, angles = landmark_speeds(angles)
        return speeds, angles, "landmarks"
    reason = "flow" if settings.pose == "flow" else "flow (no landmarks in half the frames)"
    return speeds_from_omegas(omegas), integrate(omegas), reason


def write_features(shard: Path, audio: AudioConfig, dtype: str) -> None:
    """Rewrites a shard's records with `audio`'s features (in `dtype`) of its stored track."""
    raws = records.read_shard(shard)
    track = np.concatenate([records.decode_frame(raw)["audio"] for raw in raws])
    features = frame_features(track, audio, dtype)
    records.write_shard(shard, (records.with_features(r, f) for r, f in zip(raws, features)))


def _stored(result_path: Path, path: Path, settings: Settings, out_dir: Path) -> dict | None:
    """The stored result if it is still valid for this file and these settings, but perhaps
    for the audio features' (`AUDIO_SETTINGS`)."""
    import json

    try:
        result = json.loads(result_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    stat = path.stat()
    frames = lambda s: {k: v for k, v in s.items() if k not in AUDIO_SETTINGS}  # noqa: E731
    if (
        result.get("source_bytes") != stat.st_size
        or result.get("source_mtime") != stat.st_mtime
        or frames(result.get("settings") or {}) != frames(dataclasses.asdict(settings))
    ):
        return None
    if result.get("status") == "ok" and not (out_dir / result["shard"]).is_file():
        return None
    return result


def _worker_init() -> None:
    cv2.setNumThreads(1)


def build_manifest(results: list[dict], settings: Settings, found: int, audio: dict) -> dict:
    """The manifest from the per-video results (ordered by id, so indices are stable) and the
    `audio_spec` of the records' features."""
    results = sorted(results, key=lambda r: r["id"])
    ok = [r for r in results if r["status"] == "ok"]
    return {
        "version": MANIFEST_VERSION,
        "settings": dataclasses.asdict(settings),
        "audio_features": audio,
        "samples_per_frame": settings.sample_rate // settings.fps,
        "counts": {
            "videos_found": found,
            "videos_ok": len(ok),
            "videos_skipped": len(results) - len(ok),
            "videos_trimmed": sum(1 for r in ok if r.get("trimmed")),
            "frames": sum(r["n_frames"] for r in ok),
        },
        "videos": [{"id": r["id"], "shard": r["shard"], "n_frames": r["n_frames"]} for r in ok],
        "skipped": [
            {"file": r["source"], "reason": r["reason"]} for r in results if r["status"] != "ok"
        ],
        "trimmed": [{"file": r["source"], "note": r["trimmed"]} for r in ok if r.get("trimmed")],
        "speed_from_flow": [
            {"file": r["source"], "why": r["speed_source"]}
            for r in ok
            if r["settings"]["pose"] == "landmarks" and r.get("speed_source") != "landmarks"
        ],
    }


def preprocess(
    videos_dir: str | Path,
    out_dir: str | Path,
    cfg: Config,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Preprocesses every video under `videos_dir` into `out_dir` with `cfg.data`'s settings
    at `cfg.model`'s frame and sample rate, with `cfg.model.audio`'s features; returns the
    manifest."""
    from tqdm import tqdm

    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    paths = find_videos(videos_dir)
    settings = Settings.from_config(cfg)
    results, todo = [], []
    for path in paths:
        vid = video_id(path.relative_to(videos_dir))
        stored = _stored(out_dir / "videos" / f"{vid}.json", path, settings, out_dir)
        if stored is not None and stored["settings"] == dataclasses.asdict(settings):
            results.append(stored)
        else:
            todo.append((path, vid, stored))
    audio = cfg.model.audio
    bar = tqdm(total=len(todo), desc="preprocess", unit="video", disable=not progress)
    if workers <= 1 or len(todo) <= 1:
        for path, vid, stored in todo:
            results.append(process_video(path, vid, out_dir, settings, audio, stored))
            bar.update()
    else:
        ctx = get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            futures = [
                pool.submit(process_video, p, v, out_dir, settings, audio, s) for p, v, s in todo
            ]
            for fut in as_completed(futures):
                results.append(fut.result())
                bar.update()
    bar.close()
    manifest = build_manifest(results, settings, len(paths), records.audio_spec(audio))
    if manifest["counts"]["videos_ok"]:
        write_json(manifest, out_dir / "manifest.json")
    return manifest
