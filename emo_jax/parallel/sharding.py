"""Sharding rules, in one place: logical axis names of every array, and the mesh axes they map to.

A parameter's logical axes come from its name and rank (a Dense kernel is (embed, mlp), a conv
kernel (-, -, embed, mlp), a bias or norm scale (vector)); RULES maps them to mesh axes. A mesh
axis that does not divide its dimension is dropped, and an array of at least `fsdp_min_size`
elements whose rules left "fsdp" unused gets it on its largest dimension that it divides (FSDP
over the large dimensions). Optimizer moments and EMA share their parameter's name and shape, so
they shard alike. Batches are split along their first axis over every data-parallel axis.
Generation (`clip_spec`) replicates the params and splits a guided clip (passes x batch,
frames, ...): its rows over "data", its frames over "fsdp".
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),  # examples: FSDP is data parallel too
    "embed": ("fsdp",),  # input features of kernels
    "mlp": ("tensor",),  # output features of kernels
    "vector": (),  # biases, norm scales: replicated
    "passes": ("data",),  # generation: the guided batch's rows (guidance passes x videos)
    "frames": ("fsdp",),  # generation: a clip's frames
}


def logical_axes(name: str, ndim: int) -> tuple[str | None, ...]:
    """Logical axis names of a parameter (or its optimizer moment) by leaf name and rank."""
    if name == "kernel" and ndim >= 2:
        return (None,) * (ndim - 2) + ("embed", "mlp")
    if ndim == 1:
        return ("vector",)
    return (None,) * ndim


def _mesh_axes(logical: str | None, mesh: Mesh) -> tuple[str, ...]:
    return tuple(a for a in RULES.get(logical, ()) if mesh.shape.get(a, 1) > 1) if logical else ()


def spec_for(
    name: str, shape: tuple[int, ...], mesh: Mesh, fsdp_min_size: int = 0
) -> PartitionSpec:
    """The PartitionSpec of an array leaf called `name` with `shape`."""
    dims: list[tuple[str, ...]] = []
    for size, logical in zip(shape, logical_axes(name, len(shape))):
        axes = _mesh_axes(logical, mesh)
        dims.append(axes if size % math.prod(mesh.shape[a] for a in axes) == 0 else ())
    used = {a for d in dims for a in d}
    fsdp = mesh.shape.get("fsdp", 1)
    if fsdp > 1 and "fsdp" not in used and math.prod(shape) >= fsdp_min_size:
        free = [i for i, s in enumerate(shape) if not dims[i] and s % fsdp == 0]
        if free:
            dims[max(free, key=lambda i: shape[i])] = ("fsdp",)
    return PartitionSpec(*(d if len(d) > 1 else (d[0] if d else None) for d in dims))


def _leaf_name(path: tuple) -> str:
    key = path[-1] if path else None
    return str(getattr(key, "key", getattr(key, "name", key)))


def tree_shardings(tree: Any, mesh: Mesh, fsdp_min_size: int = 0) -> Any:
    """NamedSharding for every leaf of a (possibly abstract) pytree of arrays."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(
            mesh, spec_for(_leaf_name(path), tuple(x.shape), mesh, fsdp_min_size)
        ),
        tree,
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying `shardings` (an Orbax restore target)."""
    return jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def batch_spec(mesh: Mesh) -> PartitionSpec:
    """Leading axis over the data-parallel mesh axes."""
    axes = _mesh_axes("batch", mesh)
    return PartitionSpec(axes if axes else None)


def clip_spec(mesh: Mesh) -> PartitionSpec:
    """A guided clip (passes x batch, frames, ...): rows and frames over their mesh axes."""
    rows, frames = _mesh_axes("passes", mesh), _mesh_axes("frames", mesh)
    return PartitionSpec(rows or None, frames or None)


def batch_shardings(tree: Any, mesh: Mesh) -> Any:
    """NamedSharding per leaf of a batch: split along the first axis."""
    sharding = NamedSharding(mesh, batch_spec(mesh))
    return jax.tree_util.tree_map(lambda _: sharding, tree)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards."""
    return math.prod(mesh.shape[a] for a in _mesh_axes("batch", mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
