"""Speed encoder: head-rotation speed per frame -> speed tokens for the temporal modules."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def bucket_encoding(speed: jax.Array, centers: jax.Array, radii: jax.Array) -> jax.Array:
    """s_i = tanh((w - c_i) / r_i * 3) (the paper): speeds (B, F) -> (B, F, d)."""
    return jnp.tanh((speed[..., None] - centers) / radii * 3.0)


def frame_windows(x: jax.Array, m: int) -> jax.Array:
    """concat(x_{f-m}, ..., x_{f+m}) along the feature axis: (B, F, D) -> (B, F, (2m+1)*D).

    Frames beyond the clip repeat the edge frame.
    """
    f = x.shape[1]
    idx = jnp.clip(jnp.arange(f)[:, None] + jnp.arange(-m, m + 1)[None], 0, f - 1)  # (F, 2m+1)
    w = x[:, idx]  # (B, F, 2m+1, D)
    return w.reshape(*w.shape[:2], -1)


class SpeedEncoder(nn.Module):
    """Bucket encoding, window of +-m frames, MLP (`linear_1`, SiLU, `linear_2`) -> (B, F, L)."""

    centers: tuple[float, ...]
    radii: tuple[float, ...]
    window: int = 2
    hidden_dim: int = 256
    embed_dim: int = 768
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, speed: jax.Array) -> jax.Array:
        s = bucket_encoding(
            speed.astype(jnp.float32), jnp.asarray(self.centers), jnp.asarray(self.radii)
        )
        s = frame_windows(s, self.window).astype(self.dtype)  # (B, F, (2m+1)*d)
        s = jax.nn.silu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="linear_1")(s))
        return nn.Dense(self.embed_dim, dtype=self.dtype, name="linear_2")(s)
