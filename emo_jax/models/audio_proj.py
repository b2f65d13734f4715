"""Audio projection: each frame's feature window -> the tokens that audio-attention attends to.

Hallo's `AudioProjModel` (same parameter names, so its weights convert by the shared rules):
the window (2m+1, layers, dim) is flattened, a 3-layer MLP (ReLU after the first two) maps it
to `num_tokens` x `output_dim`, and a LayerNorm over `output_dim` normalises each token.
With wav2vec2-base, m = 2 and K = 32: 5 x 12 x 768 = 46,080 -> 512 -> 512 -> 32 x 768.
`output_dim` is the backbone's cross_attention_dim (768 for SD1.5).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import AudioConfig, Wav2Vec2Config
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT, wav2vec2_folder
from emo_jax.weights.pretrained import read_config


def window_shape(cfg: AudioConfig) -> tuple[int, int, int]:
    """(2m+1, layers, dim) of one frame's features, the input of AudioProjection, from the
    config alone: a wav2vec2 folder's config.json is read (not its weights); without a
    folder, wav2vec2-base is assumed."""
    if cfg.encoder == "mel":
        layers, dim = cfg.mel_subframes, cfg.n_mels
    else:
        w2v = Wav2Vec2Config()
        if cfg.wav2vec2_path:
            w2v = read_config(wav2vec2_folder(cfg), WAV2VEC2_FORMAT)
        layers, dim = len(cfg.layers or range(w2v.num_hidden_layers)), w2v.hidden_size
    return 2 * cfg.window + 1, layers, dim


class AudioProjection(nn.Module):
    """(B, F, 2m+1, layers, dim) -> (B, F, num_tokens, output_dim)."""

    output_dim: int = 768
    hidden_dim: int = 512
    num_tokens: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, f = x.shape[:2]
        x = x.reshape(b * f, -1).astype(self.dtype)  # (B*F, (2m+1)*layers*dim)
        x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="proj1")(x))
        x = nn.relu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="proj2")(x))
        x = nn.Dense(self.num_tokens * self.output_dim, dtype=self.dtype, name="proj3")(x)
        x = x.reshape(b * f, self.num_tokens, self.output_dim)
        x = nn.LayerNorm(1e-5, dtype=self.dtype, name="norm")(x)
        return x.reshape(b, f, self.num_tokens, self.output_dim)
