"""Stages 1-3: the EMO model's run (its weights at step 0, sample videos, the model bundle)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.config import Config
from emo_jax.data.source import Corpus
from emo_jax.parallel.mesh import make_mesh
from emo_jax.train.data import check_corpora
from emo_jax.train.loop import Stage, run
from emo_jax.train.sample import SampleVideos
from emo_jax.train.setup import build
from emo_jax.train.stages import merge, split
from emo_jax.train.step import init_state
from emo_jax.train.weights import initial_params, load_vae


def train(cfg: Config, progress: bool = True) -> dict:
    """Runs (or resumes) stage 1, 2 or 3 of `cfg`; writes RUN/bundle at the end (one process)."""
    check_corpora(cfg)
    setup = build(cfg, make_mesh(cfg.parallel))
    state_sh, _, vae_sh, _ = setup.shardings
    vae_params = jax.device_put(load_vae(cfg, setup.vae), vae_sh)
    out = Path(cfg.train.out_dir)

    def start(say):
        params, lines = initial_params(cfg, setup.model, setup.param_shardings)
        for line in lines:
            say(line)
        trainable, frozen = split(params, cfg.train.trainable)
        init = functools.partial(init_state, optimizer=setup.optimizer, cfg=cfg.train)
        return jax.jit(init, out_shardings=state_sh)(trainable), frozen

    def finish(state, frozen, batches, data, say) -> dict:
        if jax.process_count() > 1:
            say(
                "model bundle: run this command again as one process to write it from the checkpoint"
            )
            return {}
        final = merge(state.ema or state.params, frozen)
        model = dataclasses.replace(cfg.model, vae=setup.vae.config)
        # a model is cut as its training data was: the bundle names the corpus's face back end
        detector = Corpus.load(cfg.data.shards).detector or cfg.data.detector
        data = dataclasses.replace(cfg.data, detector=detector)
        saved = dataclasses.replace(cfg, model=model, data=data)
        save_bundle(out / "bundle", saved, {"emo": final, "vae": vae_params}, overwrite=True)
        say(f"model bundle: {out / 'bundle'}")
        return {}

    sample = None
    if cfg.train.sample_every:
        videos = SampleVideos(
            cfg, setup.model, setup.vae, setup.mesh, (setup.param_shardings, vae_sh)
        )

        def sample(path, state, frozen):
            return videos.write(path, merge(state.ema or state.params, frozen), vae_params)

    return run(cfg, Stage(setup, vae_params, start, finish, sample), progress)
