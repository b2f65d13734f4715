"""Audio features per video frame: the paper's A_f = concat(A_{f-m}, ..., A_{f+m}).

Contract: a waveform of N samples at `sample_rate` gives an array (frames, 2m+1, layers, dim):

- frames = round(N / sample_rate * fps), halves rounded up (60 s at 25 fps: exactly 1500).
  Audio shorter than one video frame is an error.
- Video frame f spans [f/fps, (f+1)/fps) s; its vector per layer is the encoder's output
  linearly interpolated at the frame's centre, (f + 1/2) / fps, an encoder frame being
  placed at the centre of the samples it sees; before the first and after the last encoder
  frame the end frame is used. (The mel encoder samples `mel_subframes` points per video
  frame, at (f + (i + 1/2)/S) / fps, which form its `layers` axis.) `window_shape(cfg)` in
  emo_jax.audio.encoders gives (2m+1, layers, dim) from the config alone.
- Window: entry k of frame f is frame f + k - m; frames before 0 or after the end repeat the
  first or the last frame (as Hallo does).
- The waveform is normalised first as transformers' Wav2Vec2FeatureExtractor does: zero mean,
  unit variance over the whole track (`track_stats`), never over a part of it: preprocessing
  stores each training video's whole-track features (emo_jax.data.preprocess), so a training
  example's features equal generation's features for the same frames.
- Long audio runs through the encoder in chunks of `chunk_seconds` of video frames, each with
  `context_seconds` of extra audio each side for wav2vec2 (whose attention spans the chunk),
  so memory is bounded by the chunk length. Audio up to one chunk long is one exact pass;
  longer wav2vec2 features differ from one (unbounded) pass wherever attention (or a
  group-norm feature encoder) reaches beyond the chunk; the local parts match one pass. The
  mel encoder is local: chunked output equals one pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from emo_jax.audio.encoders import FrameEncoder, build_encoder
from emo_jax.audio.io import load_audio
from emo_jax.config import AudioConfig
from emo_jax.errors import InputError
from emo_jax.files import atomic_write

SILENCE_PEAK = 1e-4  # peak amplitude below which audio counts as silent (-80 dBFS)


class SilentAudioWarning(UserWarning):
    """The audio is (digitally) silent: features are computed, but carry no speech."""


def track_stats(wave: np.ndarray) -> np.ndarray:
    """(2,) float32: the mean and standard deviation (+1e-7 in the variance) of a whole track."""
    wave = np.asarray(wave, np.float32)
    return np.array([wave.mean(), np.sqrt(wave.var() + 1e-7)], np.float32)


def normalize(wave: np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
    """Zero mean, unit variance, as Wav2Vec2FeatureExtractor(do_normalize=True), with the
    track's `stats` (default: `wave` is the whole track)."""
    wave = np.asarray(wave, np.float32)
    mean, std = track_stats(wave) if stats is None else stats
    return (wave - mean) / std


def num_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Video frames for `num_samples` samples: round(seconds * fps), halves rounded up."""
    return math.floor(num_samples * fps / sample_rate + 0.5)


def iter_windowed(blocks: Iterable[np.ndarray], m: int) -> Iterator[np.ndarray]:
    """Consecutive blocks of per-frame features (n, ...) -> the same frames' windows
    (n', 2m+1, ...), in order; the ends repeat the first / last frame."""
    buf = None
    for block in blocks:
        buf = np.concatenate([np.repeat(block[:1], m, 0) if buf is None else buf, block])
        ready = len(buf) - 2 * m
        if ready > 0:
            yield _windows(buf, m)
            buf = buf[ready:]
    if buf is not None and m > 0:
        yield _windows(np.concatenate([buf, np.repeat(buf[-1:], m, 0)]), m)


def _windows(buf: np.ndarray, m: int) -> np.ndarray:
    """(n + 2m, ...) -> (n, 2m+1, ...)."""
    view = np.lib.stride_tricks.sliding_window_view(buf, 2 * m + 1, axis=0)  # (n, ..., 2m+1)
    return np.ascontiguousarray(np.moveaxis(view, -1, 1))


def window_frames(features: np.ndarray, m: int) -> np.ndarray:
    """(frames, ...) -> (frames, 2m+1, ...): entry k of frame f is frame f+k-m (ends repeated)."""
    return np.concatenate(list(iter_windowed([features], m)))


def check_waveform(wave: np.ndarray, cfg: AudioConfig, name: str) -> None:
    """A raw waveform at `cfg.sample_rate`: at least one video frame long (else InputError);
    a warning naming `name` if it is silent."""
    if len(wave) * cfg.fps < cfg.sample_rate:
        raise InputError(
            f"{name}: the audio lasts {1000 * len(wave) / cfg.sample_rate:.1f} ms, shorter "
            f"than one video frame ({1000 / cfg.fps:.1f} ms at {cfg.fps:g} fps)"
        )
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        warnings.warn(
            f"{name}: the audio is silent (peak {peak:.1e}); its features carry no speech",
            SilentAudioWarning,
            stacklevel=3,
        )


class AudioFeatures:
    """Audio (file or waveform) -> per-video-frame features, as the module docstring says."""

    def __init__(self, cfg: AudioConfig, encoder: FrameEncoder | None = None):
        self.cfg = cfg
        self.encoder = encoder or build_encoder(cfg)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(layers, dim) of one frame."""
        return self.encoder.subframes * self.encoder.layers, self.encoder.dim

    @property
    def window_shape(self) -> tuple[int, int, int]:
        """(2m+1, layers, dim) of one frame's window: what AudioProjection takes."""
        return (2 * self.cfg.window + 1, *self.frame_shape)

    def load(self, path: str | Path) -> np.ndarray:
        """Decoded, mono, resampled and normalised waveform; errors and warnings name `path`."""
        return self.prepare(load_audio(path, self.cfg.sample_rate), str(path))

    def prepare(self, wave: np.ndarray, name: str = "waveform") -> np.ndarray:
        """Checks a raw waveform (`check_waveform`) and normalises it."""
        check_waveform(wave, self.cfg, name)
        return normalize(wave)

    def num_frames(self, wave: np.ndarray) -> int:
        return num_frames(len(wave), self.cfg.sample_rate, self.cfg.fps)

    def iter_frames(self, wave: np.ndarray) -> Iterator[np.ndarray]:
        """Per-frame features (n, layers, dim), chunk by chunk, for a prepared waveform."""
        cfg, enc = self.cfg, self.encoder
        total = self.num_frames(wave)
        per_chunk = max(1, round(cfg.chunk_seconds * cfg.fps))
        margin = enc.context + enc.receptive_field + enc.hop  # audio beyond a chunk's frames
        centre = (enc.receptive_field - 1) / 2  # of an encoder frame, in samples from its start
        sub = (np.arange(enc.subframes) + 0.5) / enc.subframes
        for f0 in range(0, total, per_chunk):
            f1 = min(total, f0 + per_chunk)
            t = (np.arange(f0, f1)[:, None] + sub) / cfg.fps * cfg.sample_rate  # (F, S) samples
            s0 = max(0, math.floor((t[0, 0] - margin) / enc.hop)) * enc.hop  # on the global grid
            s1 = min(len(wave), math.ceil(t[-1, -1] + margin))
            piece = wave[s0:s1]
            if len(piece) < enc.receptive_field:
                piece = np.pad(piece, (0, enc.receptive_field - len(piece)))
            src = enc.encode(piece)  # (T, layers, dim)
            pos = np.clip((t - s0 - centre) / enc.hop, 0, len(src) - 1)
            i0 = np.floor(pos).astype(np.int64)
            i1 = np.minimum(i0 + 1, len(src) - 1)
            w = (pos - i0)[..., None, None].astype(np.float32)
            out = src[i0] * (1 - w) + src[i1] * w  # (F, S, layers, dim)
            yield out.reshape(f1 - f0, *self.frame_shape)

    def iter_windows(self, wave: np.ndarray) -> Iterator[np.ndarray]:
        """Windowed features (n, 2m+1, layers, dim), chunk by chunk, for a prepared waveform."""
        return iter_windowed(self.iter_frames(wave), self.cfg.window)

    def __call__(self, audio: str | Path | np.ndarray) -> np.ndarray:
        """(frames, 2m+1, layers, dim) float32 for an audio file or a raw waveform."""
        wave = self.prepare(audio) if isinstance(audio, np.ndarray) else self.load(audio)
        return np.concatenate(list(self.iter_windows(wave)))

    def write(
        self,
        wave: np.ndarray,
        out: str | Path,
        per_frame: bool = False,
        dtype: str = "float32",
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, ...]:
        """Streams the features of a prepared waveform to an .npy file (memory: one chunk),
        written to a temporary name and renamed when complete. `per_frame` leaves out the
        window: (frames, layers, dim). `progress(n)` is called after every n frames."""
        total = self.num_frames(wave)
        shape = (total, *(self.frame_shape if per_frame else self.window_shape))
        blocks = self.iter_frames(wave) if per_frame else self.iter_windows(wave)

        def write(tmp: Path) -> None:
            header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
            with open(tmp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                for block in blocks:
                    f.write(np.ascontiguousarray(block, dtype).tobytes())
                    if progress:
                        progress(len(block))

        atomic_write(Path(out), write)
        return shape
