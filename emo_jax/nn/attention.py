"""The one attention module (diffusers' `Attention`): self-, cross-, reference- and temporal
attention all use it; `model.attention` (config.ATTENTION) picks how the scores are computed."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import ATTENTION
from emo_jax.nn.attention_chunked import chunked_attention
from emo_jax.nn.attention_splash import splash_attention

SHORT = 1 << 20  # `auto` keeps XLA's materialised scores below this many per (sample, head)


def choose(implementation: str, q_len: int, kv_len: int, head_dim: int, dtype: Any) -> str:
    """The implementation `auto` stands for on the platform compiled for: the mesh's (set
    with `jax.set_mesh`), else the default backend's. Other choices stand for themselves.

    Short attentions (q_len * kv_len < SHORT: temporal, audio, low resolutions) stay `xla`;
    longer ones take `splash` on TPU, `cudnn` on an NVIDIA GPU where cuDNN takes the head
    size and dtype (half precision, head size a multiple of 8 up to 128), else `chunked`."""
    if implementation not in ATTENTION:
        raise ValueError(f"attention {implementation!r}: expected one of {ATTENTION}")
    if implementation != "auto":
        return implementation
    if q_len * kv_len < SHORT:
        return "xla"
    mesh = jax.sharding.get_abstract_mesh()
    platform = jax.default_backend() if mesh.empty else mesh.abstract_device.platform
    if platform == "tpu":
        return "splash"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if platform == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128:
        return "cudnn"
    return "chunked"


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_mask: jax.Array | None = None,
    implementation: str = "xla",
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v: q (B, T, H, D), k and v (B, S, H, D) -> (B, T, H, D).

    `kv_mask` (B, S) bool: False keys are not attended to. `cudnn` takes it as key lengths,
    so it must keep a prefix of the keys (the reference drop does: own tokens come first)."""
    kind = choose(implementation, q.shape[1], k.shape[1], q.shape[-1], q.dtype)
    if kind == "chunked":
        return chunked_attention(q, k, v, kv_mask)
    if kind == "splash":
        return splash_attention(q, k, v, kv_mask)
    if kind == "cudnn":
        lengths = None if kv_mask is None else kv_mask.sum(-1, dtype=jnp.int32)
        return jax.nn.dot_product_attention(
            q, k, v, key_value_seq_lengths=lengths, implementation="cudnn"
        )
    mask = None if kv_mask is None else kv_mask[:, None, None, :]  # (B, 1, 1, S)
    return jax.nn.dot_product_attention(q, k, v, mask=mask)


class Attention(nn.Module):
    """Multi-head attention with diffusers' parameter names (`to_q`, `to_k`, `to_v`, `to_out.0`).

    Queries come from `x` (B, T, C) or (B, H, W, C); keys and values from `context` (B, S, D),
    or from `x` when `context` is None. With `norm_num_groups`, a GroupNorm (`group_norm`) runs
    first and the input is added back (the VAE's mid-block attention). `implementation`: one
    of config.ATTENTION (`dot_product_attention`).
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
    implementation: str = "xla"

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
        out = dot_product_attention(split(q), split(k), split(v), kv_mask, self.implementation)
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
