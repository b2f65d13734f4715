"""One table of rules between PyTorch state dicts and Flax param trees, used both ways.

The Flax module tree mirrors the PyTorch one: `down_blocks_0/attentions_1/to_q/kernel` is
`down_blocks.0.attentions.1.to_q.weight`. A param tree's own structure (from `jax.eval_shape`)
drives the conversion, so every Flax leaf has exactly one PyTorch key and one transform, and a
round trip is bit-exact.

Leaf rules:
  Dense kernel (in, out)          <-> Linear weight (out, in)            transpose
  Conv kernel (H, W, I, O)        <-> Conv2d weight (O, I, H, W)
  Conv kernel (W, I, O)           <-> Conv1d weight (O, I, W)
  Conv kernel (T, H, W, I, O)     <-> Conv3d weight (O, I, T, H, W)
  norm scale                      <-> weight
  Embed embedding                 <-> weight
  anything else (bias, raw params) keeps its name and layout.
  weight_g / weight_v             <-> parametrizations.weight.original0/1  (WEIGHT_NORM renames)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from emo_jax.errors import InputError
from emo_jax.weights.io import Entry

# Flax names of list members: `resnets_0` <-> `resnets.0`. Any other `_<digits>` suffix
# (`linear_1`, `conv_2`) is part of the PyTorch attribute name and stays as it is.
LIST_NAMES = frozenset(
    {
        "down_blocks",
        "up_blocks",
        "resnets",
        "attentions",
        "transformer_blocks",
        "downsamplers",
        "upsamplers",
        "to_out",
        "net",
        "layers",
        "conv_layers",
        "motion_modules",
        "audio_modules",
        "blocks",
        "mid_blocks",
    }
)

_LIST_MEMBER = re.compile(r"^(.*)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Rename:
    """An extra rule: a regex substitution applied to the PyTorch key derived from a Flax path.

    Because conversion is driven by the Flax tree, the same rule serves both directions.
    """

    pattern: str
    repl: str


# Weight-normalised layers: Flax leaves `weight_g` / `weight_v` (PyTorch layout) are saved as
# current PyTorch saves them (`torch.nn.utils.parametrizations.weight_norm`). Applied to a
# loaded state dict with `apply_renames`, the same rules read the old
# `torch.nn.utils.weight_norm` names `weight_g` / `weight_v`.
WEIGHT_NORM = (
    Rename(r"\.weight_g$", ".parametrizations.weight.original0"),
    Rename(r"\.weight_v$", ".parametrizations.weight.original1"),
)


def _leaf_transform(leaf_name: str, ndim: int) -> tuple[str, tuple[int, ...] | None]:
    """(PyTorch leaf name, axes that map the Flax array to the PyTorch one) for a Flax leaf."""
    if leaf_name == "kernel":
        perm = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 0, 1), 5: (4, 3, 0, 1, 2)}.get(ndim)
        if perm is None:
            raise ValueError(f"kernel of rank {ndim} has no rule")
        return "weight", perm
    if leaf_name in ("scale", "embedding"):
        return "weight", None
    return leaf_name, None


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def flax_path_to_torch_key(path: tuple[str, ...], renames: Iterable[Rename] = ()) -> str:
    """Module path + leaf name -> PyTorch state-dict key (without the leaf transform)."""
    parts = []
    for p in path[:-1]:
        m = _LIST_MEMBER.match(p)
        if m and m.group(1) in LIST_NAMES:
            parts.extend([m.group(1), m.group(2)])
        else:
            parts.append(p)
    leaf, _ = _leaf_transform(path[-1], 2 if path[-1] == "kernel" else 1)
    return apply_renames(".".join(parts + [leaf]), renames)


def apply_renames(key: str, renames: Iterable[Rename]) -> str:
    """A PyTorch key after the regex rules (also normalises legacy keys of a loaded dict)."""
    for r in renames:
        key = re.sub(r.pattern, r.repl, key)
    return key


@dataclasses.dataclass(frozen=True)
class _LeafRule:
    path: tuple[str, ...]
    key: str
    perm: tuple[int, ...] | None
    shape: tuple[int, ...]  # Flax shape


def _rules(abstract_params: Any, renames: Iterable[Rename]) -> list[_LeafRule]:
    renames = tuple(renames)
    rules = []
    for kp, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
        path = tuple(str(k.key) for k in kp)
        key = flax_path_to_torch_key(path, renames)
        _, perm = _leaf_transform(path[-1], len(leaf.shape))
        rules.append(_LeafRule(path, key, perm, tuple(leaf.shape)))
    return rules


def torch_shape(rule: _LeafRule) -> tuple[int, ...]:
    return tuple(rule.shape[i] for i in rule.perm) if rule.perm else rule.shape


def torch_shapes(
    abstract_params: Any, renames: Iterable[Rename] = ()
) -> dict[str, tuple[int, ...]]:
    """{PyTorch key: PyTorch shape} of a (possibly abstract) Flax param tree."""
    return {r.key: torch_shape(r) for r in _rules(abstract_params, renames)}


class ConversionError(InputError):
    """A state dict that does not fit the model: every offending key, in one message."""


def _report(
    source: str,
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
    limit: int = 20,
    what: str = "state dict does not fit the model",
) -> None:
    def show(kind: str, keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return f"{len(keys)} {kind}: {', '.join(keys[:limit])}{more}"

    parts = [
        show(kind, keys)
        for kind, keys in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape mismatch(es)", mismatched),
        )
        if keys
    ]
    if parts:
        raise ConversionError(f"{source}: {what}: " + "; ".join(parts))


def check_shapes(saved: Any, expected: Any, source: str) -> None:
    """Raises ConversionError naming every missing, unexpected and mismatched leaf of a saved
    param tree against the expected one (leaves of both: anything with a `.shape`)."""
    have = {k: tuple(v.shape) for k, v in flatten_dict(saved, sep="/").items()}
    want = {k: tuple(v.shape) for k, v in flatten_dict(expected, sep="/").items()}
    mismatched = [
        f"{k} {have[k]} != expected {s}" for k, s in want.items() if k in have and have[k] != s
    ]
    _report(
        source,
        [k for k in want if k not in have],
        sorted(k for k in have if k not in want),
        mismatched,
        what="the params do not fit the config",
    )


def _to_device(value: np.ndarray) -> Any:
    """Float32 and float16 weights become jax arrays as they are read, so the numpy copy of
    each tensor is freed at once (a checkpoint is held once) and Orbax saves them without
    another copy. Other dtypes stay numpy: JAX would narrow 64-bit values."""
    return jnp.asarray(value) if value.dtype in (np.float32, np.float16) else value


def torch_to_flax(
    state_dict: Mapping[str, Any],
    abstract_params: Any,
    renames: Iterable[Rename] = (),
    source: str = "state dict",
    allow_missing: bool = False,
    allow_unexpected: bool = False,
) -> tuple[Any, list[str], list[str]]:
    """PyTorch state dict (numpy arrays) -> Flax params shaped like `abstract_params`.

    Strict by default: missing keys, unexpected keys and shape mismatches are reported all at
    once. With `allow_missing` the missing leaves are returned as None (for the caller to fill
    from an initialisation). Returns (params, missing keys, unexpected keys).
    """
    rules = _rules(abstract_params, renames)
    known = {r.key for r in rules}
    missing, mismatched, leaves = [], [], []
    for r in rules:
        if r.key not in state_dict:
            missing.append(r.key)
            leaves.append(None)
            continue
        value = np.asarray(state_dict[r.key])
        if value.shape != torch_shape(r):
            mismatched.append(f"{r.key} {tuple(value.shape)} != expected {torch_shape(r)}")
            leaves.append(None)
            continue
        leaves.append(_to_device(np.transpose(value, _inverse(r.perm)) if r.perm else value))
    unexpected = sorted(k for k in state_dict if k not in known)
    _report(
        source,
        [] if allow_missing else missing,
        [] if allow_unexpected else unexpected,
        mismatched,
    )
    treedef = jax.tree_util.tree_structure(abstract_params)
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return params, missing, unexpected


def torch_entries(params: Any, renames: Iterable[Rename] = ()) -> list:
    """The PyTorch tensors of `params` as lazy `weights.io.Entry`s: each is transposed only
    when written, so saving holds one converted tensor at a time."""
    out = []
    for r, leaf in zip(_rules(params, renames), jax.tree_util.tree_leaves(params)):
        out.append(
            Entry(
                r.key,
                torch_shape(r),
                np.dtype(leaf.dtype),
                lambda leaf=leaf, perm=r.perm: (
                    np.transpose(np.asarray(leaf), perm) if perm else np.asarray(leaf)
                ),
            )
        )
    return out


def flax_to_torch(params: Any, renames: Iterable[Rename] = ()) -> dict[str, np.ndarray]:
    """Flax params -> PyTorch state dict of contiguous numpy arrays (the exact inverse)."""
    out = {}
    for r, leaf in zip(_rules(params, renames), jax.tree_util.tree_leaves(params)):
        value = np.asarray(leaf)
        out[r.key] = np.ascontiguousarray(np.transpose(value, r.perm) if r.perm else value)
    return out


def rename_keys(state_dict: Mapping[str, Any], fn: Callable[[str], str | None]) -> dict:
    """Maps every key through `fn` (None drops the key)."""
    out = {}
    for k, v in state_dict.items():
        new = fn(k)
        if new is not None:
            out[new] = v
    return out
