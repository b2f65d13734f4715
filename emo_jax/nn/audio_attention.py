"""Hallo's audio module: after a spatial transformer, tokens attend to the frame's audio tokens
through three parallel cross-attentions (full frame / pose, face, lip), each masked to its
region, passed through a 1x1 convolution and weighted by the user's `motion_scale`.

Names follow Hallo (`Transformer3DModel` with `AudioTemporalBasicTransformerBlock`): `norm`,
`proj_in`, `transformer_blocks_0` (`norm1`, `attn1`, `norm2`, `attn2_0..2` or `attn2`,
`zero_conv_full/face/lip`, `norm3`, `ff`), `proj_out`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.attention import Attention
from emo_jax.nn.resnet import conv, group_norm
from emo_jax.nn.transformer import FeedForward, layer_norm

REGIONS = ("full", "face", "lip")


class AudioTransformerBlock(nn.Module):
    """(N, T, C) tokens of a square map + audio tokens (N, K, D) -> (N, T, C).

    `regions`: three cross-attentions, one per region mask (N, T) in `masks`, each masked,
    1x1-convolved (`zero_conv_*`: its bias is not masked) and weighted by `scale[k]`; else one
    plain cross-attention `attn2` (the zero convolutions exist but are not used, as in Hallo).
    """

    dim: int
    heads: int
    dim_head: int
    regions: bool = True
    dtype: Any = jnp.float32
    attention_impl: str = "xla"  # one of config.ATTENTION

    @nn.compact
    def __call__(
        self, x: jax.Array, tokens: jax.Array, masks: tuple | None, scale: jax.Array
    ) -> jax.Array:
        attn = lambda name: Attention(  # noqa: E731
            self.heads,
            self.dim_head,
            dtype=self.dtype,
            name=name,
            implementation=self.attention_impl,
        )
        zero_convs = {r: conv(self.dim, 1, self.dtype, f"zero_conv_{r}") for r in REGIONS}
        h = layer_norm(1e-5, self.dtype, "norm1")(x)
        x = attn("attn1")(h) + x
        h = layer_norm(1e-5, self.dtype, "norm2")(x)
        tokens = tokens.astype(self.dtype)
        if self.regions:
            n, t, c = x.shape
            side = round(t**0.5)
            for k, region in enumerate(REGIONS):
                a = attn(f"attn2_{k}")(h, tokens) * masks[k][:, :, None].astype(self.dtype)
                a = zero_convs[region](a.reshape(n, side, side, c)).reshape(n, t, c)  # (N, T, C)
                x = x + scale[k].astype(self.dtype) * a
        else:
            if self.is_initializing():
                for region in REGIONS:
                    zero_convs[region](jnp.zeros((1, 1, 1, self.dim), self.dtype))
            x = attn("attn2")(h, tokens) + x
        h = layer_norm(1e-5, self.dtype, "norm3")(x)
        return FeedForward(self.dim, dtype=self.dtype, name="ff")(h) + x


class AudioModule(nn.Module):
    """GroupNorm, 1x1 `proj_in` to `heads * dim_head`, one `AudioTransformerBlock`, 1x1
    `proj_out` back, residual: (N, H, W, C) -> (N, H, W, C)."""

    heads: int
    dim_head: int
    norm_num_groups: int = 32
    regions: bool = True
    dtype: Any = jnp.float32
    attention_impl: str = "xla"  # one of config.ATTENTION

    @nn.compact
    def __call__(
        self, x: jax.Array, tokens: jax.Array, masks: tuple | None, scale: jax.Array
    ) -> jax.Array:
        n, hgt, wdt, c = x.shape
        inner = self.heads * self.dim_head
        h = group_norm(self.norm_num_groups, 1e-6, self.dtype, "norm")(x)
        h = conv(inner, 1, self.dtype, "proj_in")(h).reshape(n, hgt * wdt, inner)  # (N, HW, I)
        h = AudioTransformerBlock(
            inner,
            self.heads,
            self.dim_head,
            self.regions,
            self.dtype,
            self.attention_impl,
            name="transformer_blocks_0",
        )(h, tokens, masks, scale)
        return conv(c, 1, self.dtype, "proj_out")(h.reshape(n, hgt, wdt, inner)) + x
