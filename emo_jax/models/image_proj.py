"""Image projection: a face-identity embedding -> the tokens that cross-attention attends to.

Hallo's `ImageProjModel` (same parameter names): one Linear from the embedding (512-d ArcFace)
to `num_tokens` x `output_dim`, then a LayerNorm over `output_dim` per token. Hallo's
unconditional tokens are this projection of a zero embedding (the bias through the norm).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class ImageProjection(nn.Module):
    """(B, embed_dim) -> (B, num_tokens, output_dim)."""

    output_dim: int = 768
    num_tokens: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b = x.shape[0]
        x = nn.Dense(self.num_tokens * self.output_dim, dtype=self.dtype, name="proj")(
            x.reshape(b, -1).astype(self.dtype)
        )
        x = x.reshape(b, self.num_tokens, self.output_dim)
        return nn.LayerNorm(1e-5, use_fast_variance=False, dtype=self.dtype, name="norm")(x)
