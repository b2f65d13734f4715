"""Frame encoders: a waveform chunk -> feature vectors on a regular grid of samples.

Both encoders share one contract (`FrameEncoder`), so the per-video-frame resampling, the
chunking and the +-m window in `emo_jax.audio.features` serve either:

- `Wav2Vec2Encoder`: a pretrained transformers wav2vec2 folder (the paper's audio encoder);
  the chosen hidden states, one vector per layer per 20 ms (wav2vec2-base).
- `MelEncoder`: log-mel spectrogram frames, one layer, no weights: for CPU-size models and
  tests, so that a tiny model needs no pretrained wav2vec2.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.config import AudioConfig, ConfigError
from emo_jax.models.wav2vec2 import (
    Wav2Vec2Model,
    conv_output_length,
    receptive_field,
    wav2vec2_folder,
)


class FrameEncoder(Protocol):
    """Feature frame j of a chunk sees samples [j*hop, j*hop + receptive_field) of it."""

    hop: int  # samples between frames
    receptive_field: int  # samples one frame sees; also the shortest chunk `encode` takes
    context: int  # extra samples each side of a chunk (0: a frame depends on its samples only)
    layers: int
    dim: int
    subframes: int  # points sampled per video frame (they join the layers axis)

    def encode(self, wave: np.ndarray) -> np.ndarray:
        """(N,) float32, N >= receptive_field -> (frames, layers, dim) float32."""
        ...


def bucket_length(n: int, hop: int) -> int:
    """`n` rounded up to at most 25% more, on a grid of 4 sizes per octave (multiples of
    `hop`), so that chunks of many lengths share a few compiled shapes."""
    units = -(-n // hop)
    q = max(1, 2 ** (units.bit_length() - 3))
    return -(-units // q) * q * hop


class Wav2Vec2Encoder:
    """Frozen wav2vec2 -> hidden states `layers` (indices into transformers' hidden_states:
    0 is the encoder input, i the output of layer i; None: 1..num_hidden_layers).

    Chunks are zero-padded to `bucket_length` with an attention mask, which leaves the valid
    frames unchanged (see emo_jax.models.wav2vec2), and run jitted, one shape per bucket.
    """

    def __init__(
        self, module: Any, params: Any, layers: tuple[int, ...] | None = None, context: int = 0
    ):
        cfg = module.config
        layers = tuple(layers) if layers else tuple(range(1, cfg.num_hidden_layers + 1))
        bad = [i for i in layers if not 0 <= i <= cfg.num_hidden_layers]
        if bad:
            raise ConfigError(
                f"model.audio.layers: {bad} out of range 0..{cfg.num_hidden_layers} "
                "(0: encoder input, i: output of layer i)"
            )
        self.hop, self.receptive_field = receptive_field(cfg)
        self.context = context
        self.layers, self.dim, self.subframes = len(layers), cfg.hidden_size, 1
        self._params = {"params": params}
        self._frames = lambda n: conv_output_length(cfg, n)

        def run(params, x, mask):  # (1, N), (1, N) -> (T, layers, dim)
            hidden = module.apply(params, x, mask).hidden_states
            return jnp.stack([hidden[i][0] for i in layers], axis=1)

        self._run = jax.jit(run)

    def encode(self, wave: np.ndarray) -> np.ndarray:
        n = len(wave)
        size = bucket_length(n, self.hop)
        x = np.zeros((1, size), np.float32)
        x[0, :n] = wave
        mask = (np.arange(size) < n)[None]
        return np.asarray(self._run(self._params, x, mask))[: self._frames(n)]


class MelEncoder:
    """Log-mel frames: Hann window of `n_fft` samples every `hop`, power spectrum, Slaney
    mel filter bank (librosa's), natural log of (mel + 1e-5). No padding at the ends.
    `subframes` vectors per video frame keep its 10 ms detail (4 x 10 ms at 25 fps)."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, subframes: int = 4):
        import librosa

        self.hop, self.receptive_field, self.context = hop, n_fft, 0
        self.layers, self.dim, self.subframes = 1, n_mels, subframes
        self._filters = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).T
        self._window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann

    def encode(self, wave: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(wave, self.receptive_field)[:: self.hop]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1)) ** 2  # (T, n_fft // 2 + 1)
        return np.log(power @ self._filters + 1e-5).astype(np.float32)[:, None, :]


def build_encoder(cfg: AudioConfig) -> FrameEncoder:
    """The encoder `cfg.encoder` names ("wav2vec2" loads `cfg.wav2vec2_path`)."""
    if cfg.encoder == "mel":
        return MelEncoder(
            cfg.sample_rate, cfg.mel_n_fft, cfg.mel_hop, cfg.n_mels, cfg.mel_subframes
        )
    module, params = Wav2Vec2Model.from_pretrained(wav2vec2_folder(cfg))
    context = round(cfg.context_seconds * cfg.sample_rate)
    return Wav2Vec2Encoder(module, params, cfg.layers, context)
