"""Decoding any common audio (or video) file to mono float32 at a given sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emo_jax.errors import InputError


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at `sample_rate`, decoded with PyAV (FFmpeg in a wheel).

    Reads wav, flac, mp3, m4a/aac, ogg and the audio track of video files.
    """
    import av

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: audio file not found")
    if not path.is_file() or path.stat().st_size == 0:
        kind = "a folder" if path.is_dir() else "an empty file"
        raise InputError(f"{path}: not an audio file ({kind})")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError(f"{path}: not an audio file (no audio track)")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise InputError(f"{path}: not an audio file (FFmpeg: {reason})") from None
    if not chunks:
        raise InputError(f"{path}: the audio track is empty")
    return np.concatenate(chunks).astype(np.float32)
