"""The one attention module (diffusers' `Attention`): self-, cross-, reference- and temporal
attention all use it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`).

    Queries come from `x` (B, T, C) or (B, H, W, C); keys and values from `context` (B, S, D),
    or from `x` when `context` is None. With `norm_num_groups`, a GroupNorm (`group_norm`) runs
    first and the input is added back (the VAE's mid-block attention).
    """

    heads: int
    dim_head: int
    bias: bool = False
    out_bias: bool = True
    norm_num_groups: int | None = None
    norm_eps: float = 1e-5
    residual_connection: bool = False
    rescale_output_factor: float = 1.0
    zero_init_out: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, x: jax.Array, context: jax.Array | None = None, kv_mask: jax.Array | None = None
    ) -> jax.Array:
        """`kv_mask` (B, S) bool: False keys are not attended to."""
        residual = x
        shape = x.shape
        channels = shape[-1]
        if self.norm_num_groups is not None:
            x = nn.GroupNorm(
                self.norm_num_groups,
                epsilon=self.norm_eps,
                use_fast_variance=False,
                dtype=self.dtype,
                name="group_norm",
            )(x)
        x = x.reshape(shape[0], -1, channels)  # (B, T, C)
        context = x if context is None else context
        inner = self.heads * self.dim_head
        dense = lambda name, bias: nn.Dense(inner, use_bias=bias, dtype=self.dtype, name=name)  # noqa: E731
        q = dense("to_q", self.bias)(x)
        k = dense("to_k", self.bias)(context)
        v = dense("to_v", self.bias)(context)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)  # noqa: E731
        mask = None if kv_mask is None else kv_mask[:, None, None, :]  # (B, 1, 1, S)
        out = jax.nn.dot_product_attention(split(q), split(k), split(v), mask=mask)
        out = out.reshape(out.shape[0], out.shape[1], inner)
        out = nn.Dense(
            channels,
            use_bias=self.out_bias,
            dtype=self.dtype,
            kernel_init=nn.initializers.zeros
            if self.zero_init_out
            else nn.linear.default_kernel_init,
            name="to_out_0",
        )(out)
        out = out.reshape(shape)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out
