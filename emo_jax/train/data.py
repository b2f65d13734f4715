"""Training batches: this process's rows of each global batch, from Grain (the audio feature
windows read from the shards: no audio encoder runs here), assembled into global jax.Arrays.

The global batch is cut into `parallel.data_shards` Grain shards (default: one per process);
process p reads shards [p*k, (p+1)*k), k = shards / processes, and concatenates them. The same
number of shards gives the same global batches on any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

from emo_jax.config import Config, ConfigError, clip_spec
from emo_jax.data.pipeline import make_loader
from emo_jax.data.source import Corpus
from emo_jax.models.emo import audio_feature_shape


class BatchStream:
    """Iterator over this process's part of each global batch (host numpy, model-ready); its
    position is checkpointable (`get_state` / `set_state`, Grain's Orbax handler)."""

    def __init__(
        self, cfg: Config, process_index: int | None = None, process_count: int | None = None
    ):
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        shards = cfg.parallel.data_shards or process_count
        if shards % process_count:
            raise ConfigError(
                f"parallel.data_shards {shards} is not a multiple of the {process_count} processes"
            )
        per = shards // process_count
        self.loaders = [make_loader(cfg, process_index * per + i, shards) for i in range(per)]
        self.iterators = [iter(loader) for loader in self.loaders]

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self.iterators]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> bytes:
        return json.dumps([it.get_state().decode() for it in self.iterators]).encode()

    def set_state(self, state: bytes) -> None:
        states = json.loads(state)
        if len(states) != len(self.iterators):
            raise ConfigError(
                f"the checkpoint's data position has {len(states)} Grain shards per process, "
                f"this run {len(self.iterators)} (keep parallel.data_shards and the process count)"
            )
        for it, s in zip(self.iterators, states):
            it.set_state(s.encode())

    def start_prefetch(self) -> None:
        """Called by Grain's checkpoint handler after a restore (loading is on demand here)."""


def global_batch(local: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict:
    """Process-local rows -> global jax.Arrays split along the batch axis."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def eval_data(cfg: Config) -> Config:
    """`cfg` with the evaluation data: `train.eval_shards` (else the training corpus) with data
    seed + 1, not augmented."""
    shards = cfg.train.eval_shards or cfg.data.shards
    data = dataclasses.replace(cfg.data, shards=shards, seed=cfg.data.seed + 1, hue_augment=0.0)
    return dataclasses.replace(cfg, data=data)


def check_corpora(cfg: Config) -> None:
    """The corpora a run reads (training; evaluation if it scores batches) exist and, with
    audio, hold `cfg.model.audio`'s features: their errors before anything compiles."""
    shards = {cfg.data.shards, *([eval_data(cfg).data.shards] if cfg.train.eval_batches else [])}
    for folder in sorted(shards):
        corpus = Corpus.load(folder)
        if cfg.data.mode == "video" and cfg.model.emo.use_audio:
            corpus.check_audio(cfg.model.audio)


def fixed_batches(cfg: Config, shardings: dict[str, NamedSharding]) -> list[dict]:
    """`train.eval_batches` global batches drawn once from `eval_data`."""
    stream = BatchStream(eval_data(cfg))
    return [global_batch(next(stream), shardings) for _ in range(cfg.train.eval_batches)]


def batch_abstract(cfg: Config, rows: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of a model-ready batch of `rows` examples (for compiling without data)."""
    d, emo, clip = cfg.data, cfg.model.emo, clip_spec(cfg.model)
    s = d.resolution
    f = clip.n_frames if d.mode == "video" else 1
    spec: dict[str, Any] = {
        "frames": ((rows, f, s, s, 3), np.uint8),
        "reference": ((rows, s, s, 3), np.uint8),
        "mask": ((rows, s, s), np.float32),
    }
    if d.mode == "video":
        spec["motion_frames"] = ((rows, clip.n_motion_frames, s, s, 3), np.uint8)
        spec["speed"] = ((rows, f), np.float32)
        if emo.use_audio:
            layers, dim = audio_feature_shape(cfg.model.audio)
            spec["audio"] = ((rows, f, 2 * clip.audio_context + 1, layers, dim), np.float32)
    return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in spec.items()}
