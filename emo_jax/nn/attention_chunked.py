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
    mask = jnp.pad(mask, [(0, 0), (0, sp - s)])

    def heads_first(x, n):  # (B, L, H, D) -> (B, H, n, D), zero-padded: batched matmul layout
        return jnp.pad(jnp.swapaxes(x, 1, 2), [(0, 0), (0, 0), (0, n - x.shape[1]), (0, 0)])

    out = _flash(heads_first(q, tp), heads_first(k, sp), heads_first(v, sp), mask, bq, bk)
    return jnp.swapaxes(out[:, :, :t], 1, 2)


def _blocks(x: jax.Array, n: int, axis: int) -> jax.Array:
    """x with `axis` (length N*n) split into blocks of n, the block index first: (N, ...)."""
    shape = x.shape[:axis] + (-1, n) + x.shape[axis + 1 :]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unblock(x: jax.Array, axis: int) -> jax.Array:
    """The inverse of `_blocks`: (N, ...) -> x with the blocks joined along `axis`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2 :])


def _scores(qi: jax.Array, kj: jax.Array, mj: jax.Array) -> jax.Array:
    """(B, H, bq, bk) float32 scores of pre-scaled queries, masked keys at NEG."""
    sc = jnp.einsum("bhqd,bhkd->bhqk", qi, kj, preferred_element_type=jnp.float32)
    return jnp.where(mj[:, None, None, :], sc, NEG)


def _scaled(q: jax.Array) -> jax.Array:
    return q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)


def _forward(q, k, v, mask, bq, bk):
    """q (B, H, T, D), k and v (B, H, S, D), mask (B, S) -> (out (B, H, T, D), logsumexp
    (B, H, T) float32)."""
    b, h, _, d = q.shape
    kb, vb, mb = _blocks(k, bk, 2), _blocks(v, bk, 2), _blocks(mask, bk, 1)

    def q_block(qi):  # (B, H, bq, D)
        def kv_step(carry, kvm):
            m, total, acc = carry  # (B, H, bq), (B, H, bq), (B, H, bq, D)
            kj, vj, mj = kvm
            sc = _scores(qi, kj, mj)
            m_new = jnp.maximum(m, sc.max(-1))
            p = jnp.where(mj[:, None, None, :], jnp.exp(sc - m_new[..., None]), 0.0)
            corr = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bhqk,bhkd->bhqd", p.astype(v.dtype), vj, preferred_element_type=jnp.float32
            )
            return (m_new, total * corr + p.sum(-1), acc * corr[..., None] + pv), None

        init = (
            jnp.full((b, h, bq), NEG, jnp.float32),
            jnp.zeros((b, h, bq), jnp.float32),
            jnp.zeros((b, h, bq, d), jnp.float32),
        )
        (m, total, acc), _ = lax.scan(kv_step, init, (kb, vb, mb))
        total = jnp.where(total == 0.0, 1.0, total)  # a query with every key masked gives zeros
        return (acc / total[..., None]).astype(q.dtype), m + jnp.log(total)

    out, lse = lax.map(q_block, _blocks(_scaled(q), bq, 2))  # (Nq, B, H, bq, D), (Nq, B, H, bq)
    return _unblock(out, 2), _unblock(lse, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, mask, bq, bk):
    return _forward(q, k, v, mask, bq, bk)[0]


def _flash_fwd(q, k, v, mask, bq, bk):
    out, lse = _forward(q, k, v, mask, bq, bk)
    return out, (q, k, v, mask, out, lse)


def _flash_bwd(bq, bk, res, do):
    """FlashAttention-2's backward: scores recomputed per block from the saved logsumexp."""
    q, k, v, mask, out, lse = res
    scale = jnp.float32(q.shape[-1] ** -0.5)
    delta = jnp.einsum("bhtd,bhtd->bht", do.astype(jnp.float32), out.astype(jnp.float32))
    per_q = tuple(_blocks(x, bq, 2) for x in (_scaled(q), do, lse, delta))

    def kv_block(dq, kvm):
        kj, vj, mj = kvm  # (B, H, bk, D), (B, H, bk, D), (B, bk)

        def q_step(carry, qs):
            dk, dv = carry  # (B, H, bk, D) float32
            qi, doi, lse_i, delta_i = qs  # (B, H, bq, D) x2, (B, H, bq) x2
            p = jnp.where(
                mj[:, None, None, :], jnp.exp(_scores(qi, kj, mj) - lse_i[..., None]), 0.0
            )
            dv = dv + jnp.einsum(
                "bhqk,bhqd->bhkd", p.astype(do.dtype), doi, preferred_element_type=jnp.float32
            )
            dp = jnp.einsum("bhqd,bhkd->bhqk", doi, vj, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_i[..., None])).astype(q.dtype)
            dqi = jnp.einsum("bhqk,bhkd->bhqd", ds, kj, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bhqk,bhqd->bhkd", ds, qi, preferred_element_type=jnp.float32)
            return (dk, dv), dqi * scale

        zeros = jnp.zeros(kj.shape, jnp.float32)
        (dk, dv), dqs = lax.scan(q_step, (zeros, zeros), per_q)
        return dq + _unblock(dqs, 2), (dk, dv)

    kv = (_blocks(k, bk, 2), _blocks(v, bk, 2), _blocks(mask, bk, 1))
    dq, (dk, dv) = lax.scan(kv_block, jnp.zeros(q.shape, jnp.float32), kv)
    return (
        dq.astype(q.dtype),
        _unblock(dk, 2).astype(k.dtype),
        _unblock(dv, 2).astype(v.dtype),
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)
