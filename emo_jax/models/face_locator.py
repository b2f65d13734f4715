"""Face locator: a light conv encoder of the face-region mask, added to the backbone's input
features (the weak face-position condition of the paper)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.resnet import conv


class FaceLocator(nn.Module):
    """Mask (B, H, W) or image (B, H, W, C) in [0, 1] -> features (B, H/2^k, W/2^k,
    out_channels), k = len(channels)-1 (EMO: a one-channel mask; Hallo: a 3-channel image of
    the face region).

    AnimateAnyone's pose-guider layout: `conv_in`, then per level a 3x3 conv and a stride-2
    3x3 conv (`blocks_0`, `blocks_1`, ...), SiLU between; `conv_out` starts at zero, so a
    new locator adds nothing.
    """

    out_channels: int
    channels: tuple[int, ...] = (16, 32, 96, 256)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mask: jax.Array) -> jax.Array:
        x = mask.astype(self.dtype)
        x = x[..., None] if x.ndim == 3 else x  # (B, H, W, C)
        x = jax.nn.silu(conv(self.channels[0], 3, self.dtype, "conv_in")(x))
        for i in range(len(self.channels) - 1):
            x = jax.nn.silu(conv(self.channels[i], 3, self.dtype, f"blocks_{2 * i}")(x))
            x = jax.nn.silu(
                conv(self.channels[i + 1], 3, self.dtype, f"blocks_{2 * i + 1}", stride=2)(x)
            )
        return nn.Conv(
            self.out_channels,
            (3, 3),
            padding=((1, 1), (1, 1)),
            kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            name="conv_out",
        )(x)
