"""Training checkpoints with Orbax: async saves, the latest N plus the best, resumable to the batch.

    RUN/checkpoints/<step>/state/   params (both halves), optimizer state, EMA, step, RNG
    RUN/checkpoints/<step>/data/    the Grain iterator state of every process

Orbax writes a step into a temporary folder and renames it when every process has finished, so
a save cut short (a kill, a pre-emption) leaves no `<step>` folder and the latest complete one
stays the one that is restored; leftover temporary folders are removed on the next start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from emo_jax.errors import InputError

BEST_METRIC = "loss"  # lower is better (an evaluation loss, or the recent training loss)


def _names(path: tuple) -> tuple[str, ...]:
    """A pytree key path as names: a dataclass field and a dict key of one name are alike
    (the saved tree holds dicts where the state has dataclasses)."""
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


class IteratorSnapshot:
    """A data iterator's state captured at save time (the save itself may finish later)."""

    def __init__(self, iterator: Any):
        self.state = iterator.get_state()

    def get_state(self) -> bytes:
        return self.state


class Checkpoints:
    """Orbax CheckpointManager for {"state": pytree, "data": iterator} (call from every process)."""

    def __init__(self, directory: str | Path, keep: int = 3, keep_best: bool = True):
        self.directory = Path(directory).absolute()
        policies = [ocp.checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda m: m[BEST_METRIC],
                    reverse=True,  # keeps the lowest
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=True,
            cleanup_tmp_directories=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data"), options=options
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, loss: float | None = None) -> None:
        """Starts an async save (returns once the arrays are copied off the devices)."""
        metrics = None if loss is None or not np.isfinite(loss) else {BEST_METRIC: float(loss)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator)),
            ),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any, iterator: Any | None = None) -> Any:
        """The state at `step` (shaped and sharded like `abstract_state`); `iterator`, if given,
        is set to the position it had when that step was saved."""
        self.check_shapes(step, abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(iterator)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except ValueError as e:
            if "process_" in str(e):  # Grain keeps one file per process
                raise InputError(
                    f"{self.directory}/{step}: its data position was saved by another number of "
                    f"processes than {jax.process_count()}; resume with the same number"
                ) from None
            raise
        return restored["state"]

    def check_shapes(self, step: int, abstract_state: Any) -> None:
        """InputError naming the first array whose saved shape differs from `abstract_state`'s
        (a run folder resumed with another model config)."""
        saved = self.manager.item_metadata(step)["state"]
        saved = getattr(saved, "tree", saved)
        flat_saved = {_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
        for path, want in jax.tree_util.tree_flatten_with_path(abstract_state)[0]:
            have = flat_saved.get(_names(path))
            if have is not None and tuple(have.shape) != tuple(want.shape):
                raise InputError(
                    f"{self.directory}/{step}: saved with another model config "
                    f"({'.'.join(_names(path))} is {tuple(have.shape)} there, "
                    f"{tuple(want.shape)} now); resume with the config it was saved with, or "
                    "train into a new train.out_dir"
                )

    def restore_numpy(self, step: int | None = None) -> Any:
        """The saved state tree as host numpy arrays (latest step by default), e.g. the params
        that the next stage starts from."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise InputError(f"{self.directory}: no complete checkpoint")
        path = self.directory / str(step) / "state"
        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(path).item_metadata.tree
            as_numpy = jax.tree_util.tree_map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta
            )
            return ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))

    def wait(self) -> None:
        """Blocks until the async save in flight (if any) is complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
