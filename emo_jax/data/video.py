"""Video I/O with PyAV (FFmpeg inside the wheel, no system ffmpeg): frames read at a fixed rate,
and a streaming H.264 + AAC mp4 writer.

Timing rule used across emo_jax: frame k covers [k / fps, (k + 1) / fps) seconds, so at 25 fps and
16 kHz it owns audio samples [640 k, 640 (k + 1)).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from emo_jax import interrupt
from emo_jax.config import AudioConfig
from emo_jax.errors import InputError
from emo_jax.files import output_mode

FPS = round(AudioConfig.fps)  # the default model's frame rate


class CorruptVideoError(InputError):
    """Undecodable data in the middle of a video; `frames_read` frames before it are good."""

    def __init__(self, message: str, frames_read: int):
        super().__init__(message)
        self.frames_read = frames_read


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds."""

    width: int
    height: int
    fps: float
    duration: float  # seconds (0 if unknown)
    has_audio: bool


def probe(path: str | Path) -> VideoInfo:
    """Size, frame rate, duration and audio presence; InputError if it is not a video."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video track")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or FPS
            duration = 0.0
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            return VideoInfo(
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                fps=float(rate),
                duration=duration,
                has_audio=bool(container.streams.audio),
            )
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise unreadable(path, e) from None


def unreadable(path: Path, e: Exception) -> InputError:
    """The error for a file FFmpeg cannot open as a video, with FFmpeg's reason in words."""
    reason = getattr(e, "strerror", None) or type(e).__name__
    return InputError(f"{path}: not readable as a video (FFmpeg: {reason})")


def _decoded(path: Path, size: tuple[int, int] | None) -> Iterator[tuple[float, float, np.ndarray]]:
    """(time in seconds from the first frame, frame duration, RGB frame) in presentation order."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise unreadable(path, e) from None
    with container:
        if not container.streams.video:
            raise InputError(f"{path}: has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = float(stream.average_rate or stream.guessed_rate or FPS)
        width, height = size or (None, None)
        t0, count = None, 0
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
                frames = packet.decode()
            except StopIteration:
                return
            except (av.error.FFmpegError, ValueError) as e:
                reason = getattr(e, "strerror", None) or type(e).__name__
                raise CorruptVideoError(
                    f"{path}: corrupt data after frame {count} (FFmpeg: {reason})", count
                ) from None
            for frame in frames:
                if frame.is_corrupt:
                    raise CorruptVideoError(f"{path}: corrupt frame after frame {count}", count)
                t = frame.time if frame.time is not None else count / rate
                t0 = t if t0 is None else t0
                yield t - t0, 1 / rate, frame.to_ndarray(width=width, height=height, format="rgb24")
                count += 1


def iter_frames(
    path: str | Path, fps: float = FPS, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H, W, 3) resampled to `fps` (nearest source frame in time).

    `size=(width, height)` scales while decoding. Raises CorruptVideoError at undecodable data
    (the frames yielded before it are good) and InputError if the file is not a video.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: video file not found")
    k = 0
    prev: tuple[float, float, np.ndarray] | None = None
    for t, dt, frame in _decoded(path, size):
        if prev is not None:
            mid = (prev[0] + t) / 2  # frame `prev` is the nearest for output times before `mid`
            while k / fps < mid:
                yield prev[2]
                k += 1
        prev = (t, dt, frame)
    if prev is None:
        raise InputError(f"{path}: has no decodable video frame")
    while k == 0 or k / fps < prev[0] + prev[1] / 2:
        yield prev[2]
        k += 1


class VideoWriter:
    """Streaming mp4 writer: H.264 video written clip by clip, the audio (if given) muxed as AAC
    in step with the frames. The file appears at `path` only on close() (atomic rename), with
    the mode open() would give (or the replaced file's); on an error inside a `with` block, or a
    stop (`emo_jax.interrupt`), nothing is left behind."""

    def __init__(
        self,
        path: str | Path,
        fps: int = FPS,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        crf: int = 18,
        preset: str = "veryfast",
        threads: int = 0,
    ):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=".mp4"
        )
        os.close(fd)
        self._tmp = Path(tmp)
        interrupt.register(self._tmp)
        os.chmod(self._tmp, output_mode(self.path))
        self.fps = fps
        self.frames_written = 0
        self._audio = None if audio is None else np.asarray(audio, np.float32).reshape(-1)
        self._sample_rate = sample_rate
        self._samples_written = 0
        self._container = av.open(str(self._tmp), "w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=Fraction(fps))
        self._video.pix_fmt = "yuv420p"
        self._video.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        self._audio_stream = None
        if self._audio is not None:
            self._audio_stream = self._container.add_stream("aac", rate=sample_rate)
            self._audio_stream.layout = "mono"
        self._size: tuple[int, int] | None = None

    def write(self, frames: np.ndarray) -> None:
        """Appends RGB uint8 frames (F, H, W, 3) or one frame (H, W, 3)."""
        import av

        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}"
            )
        size = (frames.shape[2], frames.shape[1])
        if self._size is None:
            if size[0] % 2 or size[1] % 2:
                raise InputError(f"{self.path}: H.264 needs an even frame size, got {size}")
            self._size = size
            self._video.width, self._video.height = size
        elif size != self._size:
            raise ValueError(f"frame size {size} differs from the first frames' {self._size}")
        for frame in frames:
            packets = self._video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24"))
            self._container.mux(packets)
        self.frames_written += len(frames)
        self._write_audio_until(self.frames_written * self._sample_rate // self.fps)

    def _write_audio_until(self, end: int) -> None:
        import av

        if self._audio_stream is None:
            return
        end = min(end, len(self._audio))
        if end <= self._samples_written:
            return
        chunk = np.clip(self._audio[self._samples_written : end], -1.0, 1.0)[None]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout="mono"
        )
        frame.sample_rate = self._sample_rate
        frame.pts = self._samples_written
        self._container.mux(self._audio_stream.encode(frame))
        self._samples_written = end

    def close(self) -> Path:
        """Flushes the encoders, muxes the rest of the audio and moves the file into place."""
        if self._container is None:
            return self.path
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"{self.path}: no frames were written")
        self._container.mux(self._video.encode())
        if self._audio_stream is not None:
            self._write_audio_until(self.frames_written * self._sample_rate // self.fps)
            self._container.mux(self._audio_stream.encode())
        self._container.close()
        self._container = None
        os.replace(self._tmp, self.path)
        interrupt.unregister(self._tmp)
        return self.path

    def abort(self) -> None:
        """Drops the partial file."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # a broken encoder state must not hide the original error
                pass
            self._container = None
        self._tmp.unlink(missing_ok=True)
        interrupt.unregister(self._tmp)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
