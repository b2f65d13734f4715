"""Timestep embeddings as diffusers computes them."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.activations import get_activation


def timestep_embedding(
    timesteps: jax.Array,
    dim: int,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: int = 10000,
) -> jax.Array:
    """Sinusoidal embedding (B,) -> (B, dim), diffusers' `get_timestep_embedding`."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
    freqs = jnp.exp(exponent / (half - downscale_freq_shift))
    emb = scale * (timesteps.astype(jnp.float32)[:, None] * freqs[None, :])
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """`linear_1` -> act -> `linear_2` (diffusers' `TimestepEmbedding`)."""

    time_embed_dim: int
    out_dim: int | None = None
    act_fn: str = "silu"
    post_act_fn: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.time_embed_dim, dtype=self.dtype, name="linear_1")(x)
        x = get_activation(self.act_fn)(x)
        x = nn.Dense(self.out_dim or self.time_embed_dim, dtype=self.dtype, name="linear_2")(x)
        return get_activation(self.post_act_fn)(x) if self.post_act_fn else x
