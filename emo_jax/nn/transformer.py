"""BasicTransformerBlock and Transformer2DModel (diffusers names), with EMO's reference hooks:
a ReferenceNet block records the tokens that enter its self-attention (`sow` into the
"reference" collection), and a backbone block appends the recorded tokens of its twin to its
self-attention's keys and values (reference-attention)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.nn.attention import Attention
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.resnet import conv, group_norm

REFERENCE = "reference"  # the collection ReferenceNet blocks write their tokens to
TOKENS = "tokens"  # the name each block records its tokens under


def sinusoidal_positions(length: int, dim: int) -> jax.Array:
    """(length, dim) sin/cos table of diffusers' `SinusoidalPositionalEmbedding` (AnimateDiff)."""
    position = jnp.arange(length, dtype=jnp.float32)[:, None]
    div = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(10000.0) / dim))
    pe = jnp.zeros((length, dim), jnp.float32)
    pe = pe.at[:, 0::2].set(jnp.sin(position * div))
    return pe.at[:, 1::2].set(jnp.cos(position * div))


def layer_norm(eps: float, dtype: Any, name: str) -> nn.LayerNorm:
    """LayerNorm computed as PyTorch does (two-pass variance)."""
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=dtype, name=name)


class GatedProj(nn.Module):
    """`proj` then GEGLU (`geglu`) or GELU (`gelu`), diffusers' `GEGLU` / `GELU`."""

    inner: int
    activation: str = "geglu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.activation == "geglu":
            h, gate = jnp.split(nn.Dense(2 * self.inner, dtype=self.dtype, name="proj")(x), 2, -1)
            return h * jax.nn.gelu(gate, approximate=False)
        if self.activation == "gelu":
            return jax.nn.gelu(
                nn.Dense(self.inner, dtype=self.dtype, name="proj")(x), approximate=False
            )
        raise ValueError(f"unsupported feed-forward activation {self.activation!r}")


class FeedForward(nn.Module):
    """`net.0` (gated projection to `mult * dim`) then `net.2` (back to `dim`)."""

    dim: int
    mult: int = 4
    activation: str = "geglu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = GatedProj(self.dim * self.mult, self.activation, self.dtype, name="net_0")(x)
        return nn.Dense(self.dim, dtype=self.dtype, name="net_2")(x)


class BasicTransformerBlock(nn.Module):
    """norm1 -> self-attention (attn1) -> norm2 -> cross-attention (attn2) -> norm3 -> ff.

    `write_reference`: record norm1's output (ReferenceNet). `Conditions.references`: the
    ReferenceNet twin's tokens, appended to attn1's keys/values for every frame (backbone).
    `cross_attention`: False drops norm2/attn2 (a block with nothing to cross-attend to); with
    no `context`, attn2 is a second self-attention (AnimateDiff's temporal blocks).
    `max_positions`: sinusoidal positions are added before attn1 and attn2 (temporal blocks).
    """

    dim: int
    heads: int
    dim_head: int
    cross_attention: bool = True
    only_cross_attention: bool = False
    write_reference: bool = False
    zero_init_cross_out: bool = False
    max_positions: int | None = None
    dtype: Any = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        conditions: Conditions | None = None,
    ) -> jax.Array:
        """x (B*F, T, C); reads `references` ({"tokens": (B, S, C)}: this block's twin) and
        `reference_keep` from `conditions`."""
        attn = lambda name, zero=False: Attention(  # noqa: E731
            self.heads,
            self.dim_head,
            zero_init_out=zero,
            dtype=self.dtype,
            name=name,
            implementation=self.attention_impl,
        )
        pos = lambda h: h if self.max_positions is None else h + positions(h, self.max_positions)  # noqa: E731
        h = layer_norm(1e-5, self.dtype, "norm1")(x)  # (B*F, T, C)
        if self.write_reference:
            self.sow(REFERENCE, TOKENS, h)
        cond = conditions or Conditions()
        kv, kv_mask = None, None
        if self.only_cross_attention:
            kv = context
        elif cond.references is not None:
            f = cond.num_frames
            ref = cond.references[TOKENS].astype(h.dtype)
            if ref.shape[0] != h.shape[0]:  # one set per sample, else one per frame (Hallo)
                ref = jnp.repeat(ref, f, axis=0)  # (B*F, S, C)
            kv = jnp.concatenate([h, ref], axis=1)  # (B*F, T+S, C)
            if cond.reference_keep is not None:
                keep = jnp.repeat(cond.reference_keep, f)[:, None]  # (B*F, 1)
                kv_mask = jnp.concatenate(
                    [jnp.ones(h.shape[:2], bool), jnp.broadcast_to(keep, ref.shape[:2])], axis=1
                )  # (B*F, T+S)
        x = attn("attn1")(pos(h), kv, kv_mask) + x
        if self.cross_attention:
            h = layer_norm(1e-5, self.dtype, "norm2")(x)
            x = attn("attn2", self.zero_init_cross_out)(pos(h), context) + x
        h = layer_norm(1e-5, self.dtype, "norm3")(x)
        return FeedForward(self.dim, dtype=self.dtype, name="ff")(h) + x


def positions(h: jax.Array, max_positions: int, offset: int = 0) -> jax.Array:
    """Sinusoidal positions offset .. offset+T-1 for a (B, T, C) sequence (at most `max_positions`)."""
    if offset + h.shape[1] > max_positions:
        raise ValueError(
            f"{offset + h.shape[1]} frames exceed the temporal modules' {max_positions} positions"
        )
    table = sinusoidal_positions(max_positions, h.shape[2])
    return table[offset : offset + h.shape[1]].astype(h.dtype)[None]


class Transformer2DModel(nn.Module):
    """GroupNorm, `proj_in` (1x1 conv or linear), transformer blocks, `proj_out`, residual."""

    heads: int
    dim_head: int
    num_layers: int = 1
    norm_num_groups: int = 32
    use_linear_projection: bool = False
    cross_attention: bool = True
    only_cross_attention: bool = False
    write_reference: bool = False
    zero_init_cross_out: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "xla"

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        conditions: Conditions | None = None,
    ) -> jax.Array:
        cond = conditions or Conditions()
        b, hgt, wdt, c = x.shape
        inner = self.heads * self.dim_head
        residual = x
        x = group_norm(self.norm_num_groups, 1e-6, self.dtype, "norm")(x)
        if self.use_linear_projection:
            x = nn.Dense(inner, dtype=self.dtype, name="proj_in")(x.reshape(b, hgt * wdt, c))
        else:
            x = conv(inner, 1, self.dtype, "proj_in")(x).reshape(b, hgt * wdt, inner)  # (B, HW, C)
        for i in range(self.num_layers):
            name = f"transformer_blocks_{i}"
            x = BasicTransformerBlock(
                inner,
                self.heads,
                self.dim_head,
                cross_attention=self.cross_attention,
                only_cross_attention=self.only_cross_attention,
                write_reference=self.write_reference,
                zero_init_cross_out=self.zero_init_cross_out,
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                name=name,
            )(x, context, cond.at(name))
        if self.use_linear_projection:
            x = nn.Dense(c, dtype=self.dtype, name="proj_out")(x).reshape(b, hgt, wdt, c)
        else:
            x = conv(c, 1, self.dtype, "proj_out")(x.reshape(b, hgt, wdt, inner))
        return x + residual
