"""The Pallas splash-attention kernel (TPU; `interpret=True` runs it anywhere, slowly) behind
the (B, T, H, D) interface of `jax.nn.dot_product_attention`, key masks as segment ids."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

LANES = 128  # the kernel's block sizes are multiples of this
BLOCK = 512  # query and key block size (smaller for shorter sequences)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _single(q, k, v, mask, interpret: bool) -> jax.Array:
    """One device's share: q (B, T, H, D), k and v (B, S, H, D), mask (B, S)."""
    b, t, h, d = q.shape
    s = k.shape[1]
    bq, bk = min(BLOCK, _round_up(t, LANES)), min(BLOCK, _round_up(s, LANES))
    tp, sp = _round_up(t, bq), _round_up(s, bk)
    pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n - x.shape[1])] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # (B, H, L, D)  # noqa: E731
    kernel = splash.make_splash_mha(
        splash.MultiHeadMask([splash.FullMask((tp, sp))] * h),
        block_sizes=splash.BlockSizes(bq, bk, bk, bq, bk, bk, bq, bk),
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )
    segments = splash.SegmentIds(  # a masked key is in segment 1, every query in segment 0
        q=jnp.zeros((b, tp), jnp.int32), kv=jnp.where(pad(mask, sp), 0, 1).astype(jnp.int32)
    )
    scaled = (q * jnp.asarray(d**-0.5, q.dtype)).astype(q.dtype)  # the kernel does not scale
    out = jax.vmap(kernel)(
        heads_first(pad(scaled, tp)), heads_first(pad(k, sp)), heads_first(pad(v, sp)), segments
    )
    return heads_first(out)[:, :t]


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    kv_mask: jax.Array | None = None,
    interpret: bool = False,
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v with the splash kernel; `kv_mask` (B, S) bool.

    Under a mesh (`jax.set_mesh`), the kernel runs per device (`shard_map`): the batch split
    over the leading mesh axes whose sizes divide it, the heads over the axes after them
    (where they divide; else those devices repeat the work)."""
    mask = jnp.ones(k.shape[:2], bool) if kv_mask is None else kv_mask
    fn = lambda q, k, v, m: _single(q, k, v, m, interpret)  # noqa: E731
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, mask)

    names = [a for a in mesh.axis_names if mesh.shape[a] > 1]
    split = 0  # the leading axes that divide the batch
    while (
        split < len(names)
        and q.shape[0] % math.prod(mesh.shape[a] for a in names[: split + 1]) == 0
    ):
        split += 1
    rest = names[split:]
    heads = (
        tuple(rest) if rest and q.shape[2] % math.prod(mesh.shape[a] for a in rest) == 0 else None
    )
    batch = tuple(names[:split]) or None
    spec = PartitionSpec(batch, None, heads, None)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(spec, spec, spec, PartitionSpec(batch, None)),
        out_specs=spec,
        check_vma=False,
    )(q, k, v, mask)
