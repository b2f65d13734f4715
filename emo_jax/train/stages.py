"""Stages as config: which components train, and where a stage's weights come from.

The param tree is split into a trainable and a frozen half (by `inventory.component_of`); the
train step differentiates the trainable half only, and only it has optimizer state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from emo_jax.config import Config, ConfigError, clip_spec
from emo_jax.models.inventory import COMPONENTS, component_of, emo_counts


def validate(cfg: Config, abstract_params: Any) -> None:
    """Checks that the stage's trainable components exist and that data and model agree."""
    t, d, emo = cfg.train, cfg.data, cfg.model.emo
    clip_spec(cfg.model)  # training data need a whole frame rate
    unknown = [c for c in t.trainable if c not in COMPONENTS]
    if unknown:
        raise ConfigError(f"train.trainable: unknown {unknown} (known: {', '.join(COMPONENTS)})")
    present = emo_counts(abstract_params)
    absent = [c for c in t.trainable if c not in present]
    if absent:
        raise ConfigError(
            f"train.trainable: {absent} not in this model (model.emo.use_* switches them on)"
        )
    if not t.trainable:
        raise ConfigError("train.trainable: empty (nothing to train)")
    video = emo.use_temporal
    if (d.mode == "video") != video:
        raise ConfigError(
            f"data.mode {d.mode!r} does not fit model.emo.use_temporal={video} (video needs it)"
        )
    if t.grad_accum < 1 or d.batch_size % t.grad_accum:
        raise ConfigError(
            f"train.grad_accum {t.grad_accum} does not divide data.batch_size {d.batch_size}"
        )


def partition(params: Any, trains: Callable[[tuple[str, ...]], bool]) -> tuple[dict, dict]:
    """(trainable, frozen) halves of a param tree: the leaves whose path `trains`, the rest.
    The one way a stage freezes params: the step differentiates, and the optimizer holds
    state for, the trainable half only."""
    flat = flatten_dict(params)
    train = {p: v for p, v in flat.items() if trains(p)}
    frozen = {p: v for p, v in flat.items() if p not in train}
    return unflatten_dict(train), unflatten_dict(frozen)


def split(params: Any, trainable: tuple[str, ...]) -> tuple[dict, dict]:
    """(trainable, frozen) halves of an EMO param tree by component."""
    return partition(params, lambda path: component_of(path) in trainable)


def merge(*trees: Any) -> dict:
    """One param tree from disjoint halves (the inverse of `split`)."""
    flat: dict = {}
    for tree in trees:
        flat.update(flatten_dict(tree))
    return unflatten_dict(flat)


@dataclasses.dataclass
class LoadReport:
    """What a previous stage's params supplied to this stage's."""

    source: str
    loaded: int
    initialised: list[str]  # paths (a/b/c) kept at their fresh (zero) init
    unused: int

    def summary(self) -> str:
        groups = sorted({component_of(tuple(p.split("/"))) for p in self.initialised})
        init = f"; new at init: {len(self.initialised)} ({', '.join(groups)})" if groups else ""
        unused = f"; not in this stage: {self.unused}" if self.unused else ""
        return f"{self.source}: loaded {self.loaded} tensors{init}{unused}"


def load_matching(params: Any, previous: Any, source: str) -> tuple[dict, LoadReport]:
    """`params` with every leaf that `previous` has replaced by it (same path, same shape);
    new modules keep their init. A shape mismatch is an error naming the path."""
    flat, prev = flatten_dict(params), flatten_dict(previous)
    bad = [
        f"{'/'.join(p)} {tuple(prev[p].shape)} vs {tuple(v.shape)}"
        for p, v in flat.items()
        if p in prev and tuple(prev[p].shape) != tuple(v.shape)
    ]
    if bad:
        raise ConfigError(f"{source}: params do not fit this model: {', '.join(bad[:10])}")
    out = {p: (np.asarray(prev[p]) if p in prev else v) for p, v in flat.items()}
    report = LoadReport(
        source,
        sum(p in prev for p in flat),
        ["/".join(p) for p in flat if p not in prev],
        sum(p not in flat for p in prev),
    )
    return unflatten_dict(out), report
