"""The temporal module: AnimateDiff's motion module (diffusers' `AnimateDiffTransformer3D`) with
EMO's speed layer, a cross-attention from every frame to the speed tokens along the frame axis."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.attention import Attention
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.resnet import group_norm
from emo_jax.nn.transformer import BasicTransformerBlock, layer_norm, positions


class TemporalTransformer(nn.Module):
    """Attention over frames at every spatial position: (B*F, H, W, C) -> (B*F, H, W, C).

    Names follow diffusers (`norm`, `proj_in`, `transformer_blocks_i`, `proj_out`); `proj_out`
    starts at zero, so a new module is the identity. From `conditions`: `num_frames` F;
    `motion` (B*n, H, W, C), features of n motion frames prepended along the frame axis (their
    outputs dropped); with `speed`, `speed_norm` + `speed_attn` (zero-initialised output) let
    each frame attend to the clip's `speed_tokens` (B, F, L), token j at frame position n + j.
    `norm_per_frame`: the GroupNorm's statistics are per frame (AnimateDiff's original code and
    Hallo), not over all frames (diffusers).
    """

    heads: int
    num_layers: int = 1
    norm_num_groups: int = 32
    max_positions: int = 32
    speed: bool = False
    norm_per_frame: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, conditions: Conditions) -> jax.Array:
        f = conditions.num_frames
        b = x.shape[0] // f
        n = 0
        if conditions.motion is not None:
            m = conditions.motion
            n = m.shape[0] // b
            x = jnp.concatenate(
                [m.astype(x.dtype).reshape(b, n, *m.shape[1:]), x.reshape(b, f, *x.shape[1:])], 1
            ).reshape(b * (n + f), *x.shape[1:])  # (B*(n+F), H, W, C)
        x = self._all_frames(x, n + f, conditions.speed_tokens, n)
        return x.reshape(b, n + f, *x.shape[1:])[:, n:].reshape(b * f, *x.shape[1:])

    def _all_frames(
        self, x: jax.Array, num_frames: int, speed_tokens: jax.Array | None, speed_offset: int
    ) -> jax.Array:
        """The module over all (B*num_frames, H, W, C) frames, speed token j at position
        `speed_offset + j`."""
        bf, h, w, c = x.shape
        b = bf // num_frames
        residual = x
        norm = group_norm(self.norm_num_groups, 1e-6, self.dtype, "norm")
        if self.norm_per_frame:
            x = norm(x).reshape(b, num_frames, h, w, c)
        else:  # statistics over (F, H, W) per channel group, as (b, c, f, h, w) in PyTorch
            x = norm(x.reshape(b, num_frames, h, w, c))
        x = x.transpose(0, 2, 3, 1, 4).reshape(b * h * w, num_frames, c)  # (B*H*W, F, C)
        x = nn.Dense(c, dtype=self.dtype, name="proj_in")(x)
        for i in range(self.num_layers):
            x = BasicTransformerBlock(
                c,
                self.heads,
                c // self.heads,
                max_positions=self.max_positions,
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                name=f"transformer_blocks_{i}",
            )(x)
        if self.speed and speed_tokens is not None:
            q = layer_norm(1e-5, self.dtype, "speed_norm")(x)
            q = (q + positions(q, self.max_positions)).reshape(b, h * w * num_frames, c)
            s = speed_tokens.astype(self.dtype)  # (B, F_s, L)
            s = s + positions(s, self.max_positions, speed_offset)
            # Every position shares its clip's speed tokens: folding positions into the query
            # axis equals repeating the tokens to (B*H*W, F_s, L), without the copies.
            out = Attention(
                self.heads,
                c // self.heads,
                zero_init_out=True,
                dtype=self.dtype,
                name="speed_attn",
                implementation=self.attention_impl,
            )(q, s)
            x = x + out.reshape(b * h * w, num_frames, c)
        x = nn.Dense(c, kernel_init=nn.initializers.zeros, dtype=self.dtype, name="proj_out")(x)
        x = x.reshape(b, h, w, num_frames, c).transpose(0, 3, 1, 2, 4).reshape(bf, h, w, c)
        return x + residual
