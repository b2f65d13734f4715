"""The training loop of one stage: restore or initialise, step, log, checkpoint, sample, export.

A run folder (train.out_dir) holds checkpoints/, metrics.jsonl, tb/, samples/ and, at the end,
bundle/ (what `generate` loads and what the next stage's `init_from` may name). Starting a run
whose folder has a complete checkpoint resumes from it, data position included.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config
from emo_jax.parallel.mesh import make_mesh
from emo_jax.train.data import BatchStream, fixed_batches, global_batch
from emo_jax.train.metrics import MetricsLog, batch_digest
from emo_jax.train.sample import SampleVideos
from emo_jax.train.setup import Setup, build
from emo_jax.train.stages import merge, split
from emo_jax.train.step import init_state
from emo_jax.train.weights import initial_params, load_vae


def _start(cfg: Config, setup: Setup, ckpts: Checkpoints, data: BatchStream, say) -> tuple:
    """(step, state, frozen params): from the latest complete checkpoint (and the data
    position saved with it), else this stage's initial weights."""
    start = ckpts.latest_step()
    if start is not None:
        target = {"state": setup.abstract_state, "frozen": setup.abstract_frozen}
        saved = ckpts.restore(start, target, data if start < cfg.train.steps else None)
        say(f"resumed from {ckpts.directory}/{start}")
        return start, saved["state"], saved["frozen"]
    params, lines = initial_params(cfg, setup.model, setup.param_shardings)
    for line in lines:
        say(line)
    trainable, frozen = split(params, cfg.train.trainable)
    init = functools.partial(init_state, optimizer=setup.optimizer, cfg=cfg)
    return 0, jax.jit(init, out_shardings=setup.shardings[0])(trainable), frozen


class FixedEval:
    """`train.eval_batches` batches drawn once (data seed + 1), scored with fixed keys and
    without condition dropout: a loss that moves only with the weights."""

    def __init__(self, cfg: Config, setup: Setup):
        self.batches = fixed_batches(cfg, setup.shardings[3])
        self.fn = setup.eval_loss

    def __call__(self, state, frozen, vae_params) -> float:
        params = state.ema or state.params
        losses = [
            self.fn(params, frozen, vae_params, b, jax.random.PRNGKey(i))
            for i, b in enumerate(self.batches)
        ]
        return float(np.mean(jax.device_get(losses)))


def train(cfg: Config, progress: bool = True) -> dict:
    """Runs (or resumes) the stage to `train.steps`; returns {"start", "end", "losses" (step ->
    loss of the steps run here), "state", "frozen"}."""
    t = cfg.train
    out = Path(t.out_dir)
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    setup = build(cfg, make_mesh(cfg.parallel))
    _, _, vae_sh, batch_sh = setup.shardings
    vae_params = jax.device_put(load_vae(cfg, setup.vae), vae_sh)
    data = BatchStream(cfg)
    ckpts = Checkpoints(out / "checkpoints", t.keep_checkpoints)
    start, state, frozen = _start(cfg, setup, ckpts, data, say)
    samples = None
    if t.sample_every:
        samples = SampleVideos(
            cfg, setup.model, setup.vae, setup.mesh, (setup.param_shardings, vae_sh)
        )
    log = MetricsLog(out, t.log_every, cfg.data.batch_size, say)
    evaluate = FixedEval(cfg, setup) if t.eval_batches else None
    if evaluate and start < t.steps:
        log.eval(start, evaluate(state, frozen, vae_params))
    bar = tqdm(total=t.steps, initial=start, disable=not (progress and lead), unit="step")
    losses: dict[int, float] = {}
    since_save: list[float] = []
    pending = None

    def finish(item) -> None:
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
        state, metrics = setup.step(state, frozen, vae_params, global_batch(local, batch_sh))
        step += 1
        if pending:  # read the previous step's metrics while this one runs
            finish(pending)
        pending = (step, metrics, batch_digest(local))
        if step % t.checkpoint_every == 0 or step == t.steps:
            finish(pending)
            pending = None
            if evaluate:
                score = evaluate(state, frozen, vae_params)
                log.eval(step, score)
            else:
                score = float(np.mean(since_save)) if since_save else None
            ckpts.save(step, {"state": state, "frozen": frozen}, data, score)
            say(f"step {step}: saving checkpoint (async)")
            since_save = []
        if samples and step % t.sample_every == 0:
            params = merge(state.ema or state.params, frozen)
            video = samples.write(out / "samples" / f"step_{step:07d}.mp4", params, vae_params)
            log.image("sample/first_frame", video[0], step)
    if pending:
        finish(pending)
    bar.close()
    ckpts.wait()
    ckpts.close()
    log.close()
    if jax.process_count() == 1:
        final = merge(state.ema or state.params, frozen)
        saved = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vae=setup.vae.config))
        save_bundle(out / "bundle", saved, {"emo": final, "vae": vae_params}, overwrite=True)
        say(f"model bundle: {out / 'bundle'}")
    else:
        say("model bundle: run this command again as one process to write it from the checkpoint")
    return {"start": start, "end": step, "losses": losses, "state": state, "frozen": frozen}
