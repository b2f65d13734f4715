"""ResnetBlock2D, Downsample2D, Upsample2D with diffusers' parameter names (channels-last)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.activations import get_activation


def group_norm(groups: int, eps: float, dtype: Any, name: str) -> nn.GroupNorm:
    """GroupNorm computed as PyTorch does (two-pass variance)."""
    return nn.GroupNorm(groups, epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


def conv(
    features: int, kernel: int, dtype: Any, name: str, stride: int = 1, pad: int | None = None
):
    """Conv2d with PyTorch's symmetric padding (kernel // 2 unless given)."""
    p = kernel // 2 if pad is None else pad
    return nn.Conv(
        features, (kernel, kernel), strides=stride, padding=((p, p), (p, p)), dtype=dtype, name=name
    )


class ResnetBlock2D(nn.Module):
    """GroupNorm-act-conv twice, time embedding added (or scale-shift) in between."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    act_fn: str = "silu"
    time_embedding_norm: str = "default"
    skip_time_act: bool = False
    output_scale_factor: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        act = get_activation(self.act_fn)
        h = act(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        if temb is not None:
            width = (
                2 * self.out_channels
                if self.time_embedding_norm == "scale_shift"
                else self.out_channels
            )
            t = temb if self.skip_time_act else act(temb)
            t = nn.Dense(width, dtype=self.dtype, name="time_emb_proj")(t)[:, None, None, :]
        if temb is not None and self.time_embedding_norm == "default":
            h = h + t
        h = group_norm(self.groups, self.eps, self.dtype, "norm2")(h)
        if temb is not None and self.time_embedding_norm == "scale_shift":
            scale, shift = jnp.split(t, 2, axis=-1)
            h = h * (1 + scale) + shift
        h = conv(self.out_channels, 3, self.dtype, "conv2")(act(h))
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        out = x + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


class Downsample2D(nn.Module):
    """Stride-2 conv (`conv`); padding 0 pads right/bottom by one first, as diffusers does."""

    out_channels: int
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.out_channels, 3, self.dtype, "conv", stride=2, pad=self.padding)(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling (x2, or to `size`) then a 3x3 conv (`conv`)."""

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, size: tuple[int, int] | None = None) -> jax.Array:
        h, w = x.shape[1:3]
        if size is None or tuple(size) == (2 * h, 2 * w):
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
        else:  # PyTorch's "nearest": source index floor(i * in / out)
            x = x[:, (jnp.arange(size[0]) * h) // size[0]][
                :, :, (jnp.arange(size[1]) * w) // size[1]
            ]
        return conv(self.out_channels, 3, self.dtype, "conv")(x)
