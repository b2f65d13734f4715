"""ArrayRecord shards of preprocessed video: one shard per video, one record per frame.

A record is a msgpack map:
  "jpeg": bytes            the cropped frame (resolution x resolution RGB, JPEG)
  "audio": bytes           the frame's audio, int16 little-endian, sample_rate / fps samples
  "box": [x0, y0, x1, y1]  face box in the cropped frame's pixels
  "speed": float           head rotation speed (degrees per frame)
  "angles": [yaw, pitch, roll]  head rotation relative to frame 0 (degrees; drifts)
  "video": str, "frame": int
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import msgpack
import numpy as np

from emo_jax.errors import InputError
from emo_jax.files import atomic_write

WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access


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
) -> bytes:
    """One frame record (see the module doc); `audio` is float in [-1, 1]."""
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype("<i2")
    return msgpack.packb(
        {
            "jpeg": jpeg,
            "audio": pcm.tobytes(),
            "box": [float(v) for v in box],
            "speed": float(speed),
            "angles": [float(v) for v in angles],
            "video": video,
            "frame": int(frame),
        }
    )


def decode_frame(raw: bytes) -> dict:
    """A frame record with "audio" as float32 in [-1, 1] and "box"/"angles" as float32 arrays
    (the JPEG stays encoded)."""
    rec = msgpack.unpackb(raw)
    rec["audio"] = np.frombuffer(rec["audio"], "<i2").astype(np.float32) / 32767
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
