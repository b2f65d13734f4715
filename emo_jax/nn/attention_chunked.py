"""Blockwise attention in plain JAX (FlashAttention-2's online softmax): the (T, S) scores are
never held whole, forward or backward, on any backend."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

NEG = -1e30  # the score of a masked key (finite: a fully masked block must not give NaN)


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_mask: jax.Array | None = None,
    block_q: int = 512,
    block_k: int = 1024,
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v for q (B, T, H, D), k and v (B, S, H, D); `kv_mask` (B, S)
    bool: False keys are not attended to. Holds at most (B, H, block_q, block_k) scores."""
    b, t, _, _ = q.shape
    s = k.shape[1]
    bq, bk = min(block_q, t), min(block_k, s)
    tp, sp = -(-t // bq) * bq, -(-s // bk) * bk  # padded to whole blocks
    mask = jnp.ones((b, s), bool) if kv_mask is None else kv_mask
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    out = _flash(pad(q, tp), pad(k, sp), pad(v, sp), pad(mask, sp), bq, bk)
    return out[:, :t]


def _blocks(x: jax.Array, n: int) -> jax.Array:
    """(B, N*n, ...) -> (N, B, n, ...)."""
    return jnp.moveaxis(x.reshape(x.shape[0], -1, n, *x.shape[2:]), 1, 0)


def _unblock(x: jax.Array) -> jax.Array:
    """(N, B, n, ...) -> (B, N*n, ...)."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _scores(qi: jax.Array, kj: jax.Array, mj: jax.Array) -> jax.Array:
    """(B, H, bq, bk) float32 scaled scores, masked keys at NEG."""
    sc = jnp.einsum("bqhd,bkhd->bhqk", qi, kj, preferred_element_type=jnp.float32)
    sc = sc * jnp.float32(qi.shape[-1] ** -0.5)
    return jnp.where(mj[:, None, None, :], sc, NEG)


def _forward(q, k, v, mask, bq, bk):
    """(out (B, T, H, D), logsumexp (B, H, T) float32)."""
    b, _, h, d = q.shape
    kb, vb, mb = _blocks(k, bk), _blocks(v, bk), _blocks(mask, bk)

    def q_block(qi):  # (B, bq, H, D)
        def kv_step(carry, kvm):
            m, total, acc = carry  # (B, H, bq), (B, H, bq), (B, bq, H, D)
            kj, vj, mj = kvm
            sc = _scores(qi, kj, mj)
            m_new = jnp.maximum(m, sc.max(-1))
            p = jnp.where(mj[:, None, None, :], jnp.exp(sc - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bhqk,bkhd->bqhd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32
            )
            acc = acc * jnp.swapaxes(corr, 1, 2)[..., None] + pv
            return (m_new, total * corr + p.sum(-1), acc), None

        init = (
            jnp.full((b, h, bq), NEG, jnp.float32),
            jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, bq, h, d), jnp.float32),
        )
        (m, total, acc), _ = lax.scan(kv_step, init, (kb, vb, mb))
        total = jnp.where(total == 0.0, 1.0, total)  # a query with every key masked gives zeros
        out = acc / jnp.swapaxes(total, 1, 2)[..., None]
        return out.astype(q.dtype), m + jnp.log(total)

    out, lse = lax.map(q_block, _blocks(q, bq))  # (Nq, B, bq, H, D), (Nq, B, H, bq)
    return _unblock(out), jnp.moveaxis(lse, 0, 2).reshape(b, h, -1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, mask, bq, bk):
    return _forward(q, k, v, mask, bq, bk)[0]


def _flash_fwd(q, k, v, mask, bq, bk):
    out, lse = _forward(q, k, v, mask, bq, bk)
    return out, (q, k, v, mask, out, lse)


def _flash_bwd(bq, bk, res, do):
    """FlashAttention-2's backward: scores recomputed per block from the saved logsumexp."""
    q, k, v, mask, out, lse = res
    b, t, h, d = q.shape
    scale = jnp.float32(d**-0.5)
    delta = jnp.einsum("bthd,bthd->bht", do.astype(jnp.float32), out.astype(jnp.float32))
    per_q = (
        _blocks(q, bq),
        _blocks(do, bq),
        _blocks(jnp.swapaxes(lse, 1, 2), bq),  # (Nq, B, bq, H)
        _blocks(jnp.swapaxes(delta, 1, 2), bq),
    )

    def kv_block(dq, kvm):
        kj, vj, mj = kvm  # (B, bk, H, D), (B, bk, H, D), (B, bk)

        def q_step(carry, qs):
            dk, dv = carry  # (B, bk, H, D) float32
            qi, doi, lse_i, delta_i = qs
            sc = _scores(qi, kj, mj)
            lse_i, delta_i = jnp.swapaxes(lse_i, 1, 2), jnp.swapaxes(delta_i, 1, 2)  # (B, H, bq)
            p = jnp.where(mj[:, None, None, :], jnp.exp(sc - lse_i[..., None]), 0.0)
            dv = dv + jnp.einsum(
                "bhqk,bqhd->bkhd", p.astype(do.dtype), doi, preferred_element_type=jnp.float32
            )
            dp = jnp.einsum("bqhd,bkhd->bhqk", doi, vj, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_i[..., None]) * scale).astype(q.dtype)
            dqi = jnp.einsum("bhqk,bkhd->bqhd", ds, kj, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bhqk,bqhd->bkhd", ds, qi, preferred_element_type=jnp.float32)
            return (dk, dv), dqi

        zeros = jnp.zeros(kj.shape, jnp.float32)
        (dk, dv), dqs = lax.scan(q_step, (zeros, zeros), per_q)
        return dq + _unblock(dqs), (dk, dv)

    kv = (_blocks(k, bk), _blocks(v, bk), _blocks(mask, bk))
    dq, (dk, dv) = lax.scan(kv_block, jnp.zeros(q.shape, jnp.float32), kv)
    return dq.astype(q.dtype), _unblock(dk).astype(k.dtype), _unblock(dv).astype(v.dtype), None


_flash.defvjp(_flash_fwd, _flash_bwd)
