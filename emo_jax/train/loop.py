"""The training loop of one stage: restore or initialise, step, log, checkpoint, sample, export.

A run folder (train.out_dir) holds checkpoints/, metrics.jsonl, tb/, samples/ and, at the end,
bundle/ (what `generate` loads and what the next stage's `init_from` may name). Starting a run
whose folder has a complete checkpoint resumes from it, data position included.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config
from emo_jax.parallel.mesh import make_mesh
from emo_jax.train.data import BatchStream, global_batch
from emo_jax.train.metrics import MetricsLog
from emo_jax.train.sample import SampleVideos
from emo_jax.train.setup import build
from emo_jax.train.stages import merge, split
from emo_jax.train.step import init_state
from emo_jax.train.weights import initial_params, load_vae


def _digest(batch: dict[str, np.ndarray]) -> int:
    """A fingerprint of this process's rows of a batch (to check resumed data positions)."""
    return zlib.crc32(np.ascontiguousarray(batch["frames"]).tobytes())


def train(cfg: Config, progress: bool = True) -> dict:
    """Runs (or resumes) the stage to `train.steps`; returns {"start", "end", "losses" (step ->
    loss of the steps run here), "state", "frozen"}."""
    t = cfg.train
    out = Path(t.out_dir)
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    setup = build(cfg, make_mesh(cfg.parallel))
    state_sh, frozen_sh, vae_sh, batch_sh = setup.shardings
    vae_params = jax.device_put(load_vae(cfg, setup.vae), vae_sh)
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
        params, lines = initial_params(cfg, setup.model, setup.param_shardings)
        trainable, frozen = split(params, t.trainable)
        state = jax.jit(lambda p: init_state(p, setup.optimizer, cfg), out_shardings=state_sh)(
            trainable
        )
        for line in lines:
            say(line)
    samples = None
    if t.sample_every:
        samples = SampleVideos(
            cfg, setup.model, setup.vae, setup.mesh, (setup.param_shardings, vae_sh)
        )
    log = MetricsLog(out, t.log_every, cfg.data.batch_size, say)
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
        pending = (step, metrics, _digest(local))
        if step % t.checkpoint_every == 0 or step == t.steps:
            finish(pending)
            pending = None
            mean = float(np.mean(since_save)) if since_save else None
            ckpts.save(step, {"state": state, "frozen": frozen}, data, mean)
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
        save_bundle(out / "bundle", cfg, {"emo": final, "vae": vae_params}, overwrite=True)
        say(f"model bundle: {out / 'bundle'}")
    else:
        say("model bundle: run this command again as one process to write it from the checkpoint")
    return {"start": start, "end": step, "losses": losses, "state": state, "frozen": frozen}
