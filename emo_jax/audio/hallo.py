"""Hallo's audio features (hallo/datasets/audio_processor.py, hallo/models/wav2vec.py): a
waveform -> one vector per wav2vec2 layer per video frame, computed as Hallo computes them.

- The waveform (16 kHz mono) is normalised over the whole track (Wav2Vec2FeatureExtractor:
  zero mean, unit variance), then zero-padded so that its frame count, ceil(seconds x fps),
  becomes a whole number of clips (`padded_frames`); the video is trimmed back to the unpadded
  count after generation.
- wav2vec2's convolutional feature encoder runs on the whole padded track; its frames (50 per
  second) are resampled to the padded frame count by linear interpolation with aligned corners
  (torch's `F.interpolate(mode="linear", align_corners=True)`) *before* the feature
  projection and the transformer, which therefore run at the video's frame rate.
- The output is every layer's hidden state, `hidden_states[1:]`: (frames, layers, dim).

One pass over the whole track, as Hallo's (the interpolation grid and the transformer's
attention span the track): memory grows with the audio's length. Hallo's optional vocal
separation (audio-separator, Kim_Vocal_2) is left out: give speech without music.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.audio.features import check_waveform, normalize
from emo_jax.config import AudioConfig
from emo_jax.models.wav2vec2 import (
    Encoder,
    FeatureEncoder,
    FeatureProjection,
    Wav2Vec2Model,
    wav2vec2_folder,
)


def audio_frames(num_samples: int, sample_rate: int, fps: float) -> int:
    """Hallo's video frame count for `num_samples` samples: ceil(seconds x fps)."""
    return math.ceil(num_samples / sample_rate * fps)


def padded_frames(frames: int, clip_frames: int) -> int:
    """`frames` rounded up to whole clips (Hallo pads the audio to them)."""
    return -(-frames // clip_frames) * clip_frames


def interpolate_linear(x: jax.Array, size: int) -> jax.Array:
    """(T, C) -> (size, C): torch's `F.interpolate(mode="linear", align_corners=True)` along T
    (source position of output i: i (T-1)/(size-1) in float32; one output takes source 0)."""
    t = x.shape[0]
    scale = np.float32((t - 1) / (size - 1)) if size > 1 else np.float32(0)
    pos = np.arange(size, dtype=np.float32) * scale
    i0 = np.minimum(np.floor(pos).astype(np.int64), t - 1)
    i1 = np.minimum(i0 + 1, t - 1)
    w = jnp.asarray((pos - i0)[:, None])
    return x[i0] * (1 - w) + x[i1] * w


def wav2vec2_at_frames(
    module: Wav2Vec2Model, params: Any, wave: jax.Array, frames: int
) -> jax.Array:
    """Hallo's `Wav2VecModel.forward`: waveform (N,) -> hidden states of layers 1..L at
    `frames` positions (frames, L, dim)."""
    cfg, dtype = module.config, module.dtype
    conv = FeatureEncoder(cfg, dtype).apply(
        {"params": params["feature_extractor"]}, wave[None], None
    )  # (1, T, conv_dim)
    x = interpolate_linear(conv[0], frames)[None]  # (1, frames, conv_dim)
    x = FeatureProjection(cfg, dtype).apply({"params": params["feature_projection"]}, x)
    hidden = Encoder(cfg, dtype).apply({"params": params["encoder"]}, x, None).hidden_states
    return jnp.stack([h[0] for h in hidden[1:]], axis=1).astype(jnp.float32)


class HalloAudioFeatures:
    """The wav2vec2 folder of `cfg` (model.audio.wav2vec2_path) -> Hallo's features."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self.module, self.params = Wav2Vec2Model.from_pretrained(wav2vec2_folder(cfg))
        self._run = jax.jit(
            lambda p, wave, frames: wav2vec2_at_frames(self.module, p, wave, frames),
            static_argnums=2,
        )

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(layers, dim) of one frame."""
        return self.module.config.num_hidden_layers, self.module.config.hidden_size

    def __call__(self, wave: np.ndarray, clip_frames: int, name: str = "waveform") -> tuple:
        """Raw mono waveform at `cfg.sample_rate` -> (features (padded frames, layers, dim)
        float32, frames of the video): see the module doc."""
        cfg = self.cfg
        frames = audio_frames(len(wave), cfg.sample_rate, cfg.fps)
        check_waveform(wave, cfg, name)
        padded = padded_frames(frames, clip_frames)
        per_frame = cfg.sample_rate // round(cfg.fps)  # Hallo: sample_rate // fps samples
        x = np.pad(normalize(wave), (0, (padded - frames) * per_frame))
        return np.asarray(self._run(self.params, jnp.asarray(x), padded)), frames
