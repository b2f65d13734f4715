"""ArrayRecord shards of preprocessed video: one shard per video, one record per frame.

A record is a msgpack map:
  "jpeg": bytes            the cropped frame (resolution x resolution RGB, JPEG)
  "audio": bytes           the frame's audio, int16 little-endian, sample_rate / fps samples
  "features": {"shape": [layers, dim], "dtype": "<f4" or "<f2", "data": bytes}
                           the frame's audio features: `AudioFeatures` per-frame output for the
                           whole track (the int16 audio above, normalised with the track's
                           statistics), as generation computes them; the manifest's
                           "audio_features" says which model.audio made them (`audio_spec`)
  "box": [x0, y0, x1, y1]  face box in the cropped frame's pixels
  "speed": float           head rotation speed (degrees per frame)
  "angles": [yaw, pitch, roll]  head rotation relative to frame 0 (degrees; drifts)
  "video": str, "frame": int
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import cv2
import msgpack
import numpy as np

from emo_jax.config import AudioConfig
from emo_jax.errors import InputError
from emo_jax.files import atomic_write
from emo_jax.models.wav2vec2 import wav2vec2_folder

WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin")  # the files of a wav2vec2 folder hashed
_weights_digests: dict[tuple, str] = {}


def _weights_digest(folder: Path) -> str:
    """sha256 (16 hex digits) of a wav2vec2 folder's config and weight files (cached per
    file size and mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: model.audio.wav2vec2_path has no config or weight files")
    key = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if (folder, key) not in _weights_digests:
        h = hashlib.sha256()
        for p in files:
            h.update(p.name.encode())
            with open(p, "rb") as f:
                while block := f.read(1 << 24):
                    h.update(block)
        _weights_digests[folder, key] = h.hexdigest()[:16]
    return _weights_digests[folder, key]


def audio_spec(cfg: AudioConfig) -> dict:
    """What decides a model.audio's per-frame features: the encoder's settings (not the
    window, which the loader applies) and, for wav2vec2, a digest of its weight files."""
    spec = {
        "encoder": cfg.encoder,
        "sample_rate": int(cfg.sample_rate),
        "fps": float(cfg.fps),
        "chunk_seconds": float(cfg.chunk_seconds),
    }
    if cfg.encoder == "mel":
        keys = ("n_mels", "mel_n_fft", "mel_hop", "mel_subframes")
        return {**spec, **{k: int(getattr(cfg, k)) for k in keys}}
    folder = wav2vec2_folder(cfg)
    if not folder.is_dir():
        raise InputError(f"{folder}: model.audio.wav2vec2_path not found")
    return {
        **spec,
        "layers": None if cfg.layers is None else [int(i) for i in cfg.layers],
        "context_seconds": float(cfg.context_seconds),
        "weights": _weights_digest(folder),
    }


def spec_digest(spec: dict) -> str:
    """16 hex digits of sha256 of an `audio_spec`."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def quantize(audio: np.ndarray) -> np.ndarray:
    """Float audio -> the int16 PCM that records hold."""
    return np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")


def dequantize(pcm: np.ndarray | bytes) -> np.ndarray:
    """int16 PCM (array or little-endian bytes) -> float32 in [-1, 1]."""
    return np.frombuffer(pcm, "<i2").astype(np.float32) / 32767


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (H, W, 3)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_frame(
    jpeg: bytes,
    audio: np.ndarray,
    box: np.ndarray,
    speed: float,
    angles: np.ndarray,
    video: str,
    frame: int,
    features: np.ndarray | None,
) -> bytes:
    """One frame record (see the module doc); `audio` is float in [-1, 1]; `features`
    (layers, dim) in the dtype to store (None: a record without them, as before they were
    stored)."""
    rec = {
        "jpeg": jpeg,
        "audio": quantize(audio).tobytes(),
        "box": [float(v) for v in box],
        "speed": float(speed),
        "angles": [float(v) for v in angles],
        "video": video,
        "frame": int(frame),
    }
    if features is not None:
        rec["features"] = _features_field(features)
    return msgpack.packb(rec)


def _features_field(features: np.ndarray) -> dict:
    data = np.ascontiguousarray(features, features.dtype.newbyteorder("<"))
    return {"shape": list(data.shape), "dtype": data.dtype.str, "data": data.tobytes()}


def with_features(raw: bytes, features: np.ndarray) -> bytes:
    """A frame record with its "features" set to `features` (everything else kept as is)."""
    rec = msgpack.unpackb(raw)
    rec["features"] = _features_field(features)
    return msgpack.packb(rec)


def decode_frame(raw: bytes) -> dict:
    """A frame record with "audio" as float32 in [-1, 1], "features" (if stored) as float32
    (layers, dim) and "box"/"angles" as float32 arrays (the JPEG stays encoded)."""
    rec = msgpack.unpackb(raw)
    rec["audio"] = dequantize(rec["audio"])
    if "features" in rec:
        f = rec["features"]
        rec["features"] = (
            np.frombuffer(f["data"], f["dtype"]).reshape(f["shape"]).astype(np.float32)
        )
    rec["box"] = np.asarray(rec["box"], np.float32)
    rec["angles"] = np.asarray(rec["angles"], np.float32)
    return rec


def write_shard(path: Path, records: Iterable[bytes]) -> None:
    """Writes records to an ArrayRecord file atomically."""
    from array_record.python.array_record_module import ArrayRecordWriter

    def write(tmp: Path) -> None:
        writer = ArrayRecordWriter(str(tmp), WRITER_OPTIONS)
        try:
            for rec in records:
                writer.write(rec)
        finally:
            writer.close()

    atomic_write(path, write)


def read_shard(path: Path) -> list[bytes]:
    """All records of one shard (for tools and tests; training reads through Grain)."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not path.is_file():
        raise InputError(f"{path}: shard not found")
    reader = ArrayRecordReader(str(path))
    try:
        return list(reader.read_all())
    finally:
        reader.close()
