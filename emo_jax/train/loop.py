"""The training loop of every stage: restore or start, step, log, evaluate, checkpoint, sample,
and the stage's output at the end.

A run folder (train.out_dir) holds checkpoints/, metrics.jsonl, eval.jsonl, tb/, samples/ and
what the stage writes at the end (bundle/, or vae/ in stage 0). Starting a run whose folder has
a complete checkpoint resumes from it, data position included.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config
from emo_jax.train.data import BatchStream, fixed_batches, global_batch
from emo_jax.train.metrics import MetricsLog, batch_digest
from emo_jax.train.setup import Setup
from emo_jax.train.step import TrainState

Say = Callable[[str], None]


@dataclasses.dataclass
class Stage:
    """What a stage adds to the loop."""

    setup: Setup
    inputs: Any  # the step's fixed inputs, placed with their shardings
    start: Callable[[Say], tuple[TrainState, Any]]  # step 0: (state, frozen params)
    finish: Callable[[TrainState, Any, list[dict], BatchStream, Say], dict]  # writes the output
    sample: Callable[[Path, TrainState, Any], np.ndarray] | None = None  # video -> its frames


def evaluate(setup: Setup, batches: list[dict], state: TrainState, frozen, inputs) -> float:
    """The mean score of fixed batches with fixed keys (EMA weights if kept): a loss that moves
    only with the weights."""
    params = state.ema or state.params
    scores = [
        setup.eval_loss(params, frozen, inputs, b, jax.random.PRNGKey(i))
        for i, b in enumerate(batches)
    ]
    return float(np.mean(jax.device_get(scores)))


def run(cfg: Config, stage: Stage, progress: bool = True) -> dict:
    """Runs (or resumes) the stage to `train.steps`; returns the stage's `finish` entries and
    {"start", "end", "losses" (step -> loss of the steps run here), "state", "frozen"}."""
    t, setup = cfg.train, stage.setup
    out = Path(t.out_dir)
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    batch_sh = setup.shardings[3]
    data = BatchStream(cfg)
    ckpts = Checkpoints(out / "checkpoints", t.keep_checkpoints)
    start = ckpts.latest_step()
    if start is not None:
        target = {"state": setup.abstract_state, "frozen": setup.abstract_frozen}
        saved = ckpts.restore(start, target, data if start < t.steps else None)
        state, frozen = saved["state"], saved["frozen"]
        say(f"resumed from {ckpts.directory}/{start}")
    else:
        start = 0
        state, frozen = stage.start(say)
    log = MetricsLog(out, t.log_every, cfg.data.batch_size, say)
    batches = fixed_batches(cfg, batch_sh) if t.eval_batches else []
    score = lambda: evaluate(setup, batches, state, frozen, stage.inputs)  # noqa: E731
    if batches and start < t.steps:
        log.eval(start, score())
    bar = tqdm(total=t.steps, initial=start, disable=not (progress and lead), unit="step")
    losses: dict[int, float] = {}
    since_save: list[float] = []
    pending = None

    def finish_step(item) -> None:
        step, metrics, digest = item
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        losses[step] = metrics["loss"]
        if metrics["ok"]:
            since_save.append(metrics["loss"])
        log.record(step, metrics, digest)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}")

    step = start
    while step < t.steps:
        local = next(data)
        state, metrics = setup.step(state, frozen, stage.inputs, global_batch(local, batch_sh))
        step += 1
        if pending:  # read the previous step's metrics while this one runs
            finish_step(pending)
        pending = (step, metrics, batch_digest(local))
        if step % t.checkpoint_every == 0 or step == t.steps:
            finish_step(pending)
            pending = None
            if batches:
                best = score()
                log.eval(step, best)
            else:
                best = float(np.mean(since_save)) if since_save else None
            ckpts.save(step, {"state": state, "frozen": frozen}, data, best)
            say(f"step {step}: saving checkpoint (async)")
            since_save = []
        if stage.sample and t.sample_every and step % t.sample_every == 0:
            video = stage.sample(out / "samples" / f"step_{step:07d}.mp4", state, frozen)
            log.image("sample/first_frame", video[0], step)
    if pending:
        finish_step(pending)
    bar.close()
    ckpts.wait()
    ckpts.close()
    log.close()
    result = stage.finish(state, frozen, batches, data, say)
    return {
        **result,
        "start": start,
        "end": step,
        "losses": losses,
        "state": state,
        "frozen": frozen,
    }
