"""A sample video during training: the fixed validation example generated with the current
weights (guided DDIM from noise, VAE decode), written beside its ground truth with its audio."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.config import Config, clip_spec
from emo_jax.data.pipeline import make_loader
from emo_jax.data.source import ClipIndex, Corpus, FrameReader
from emo_jax.data.video import VideoWriter
from emo_jax.diffusion import Guidance, guided, make_sampler, sample
from emo_jax.models.emo import EMOModel, encode_reference
from emo_jax.models.vae import AutoencoderKL, decode_images
from emo_jax.parallel.sharding import replicated
from emo_jax.train.emo_loss import batch_latents


def validation_example(cfg: Config) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The first clip of the corpus in index order (batch of 1, model-ready) and the raw audio
    of its target frames (None in image mode); the same on every process."""
    data = dataclasses.replace(cfg.data, shuffle=False, batch_size=1, worker_count=0, seed=0)
    example = next(iter(make_loader(dataclasses.replace(cfg, data=data), 0, 1)))
    if data.mode != "video":
        return example, None
    clip, corpus = clip_spec(cfg.model), Corpus.load(data.shards)
    first = ClipIndex(corpus, clip.n_motion_frames + clip.n_frames, data.clip_stride)[0]
    t0 = int(first["start"]) + clip.n_motion_frames
    recs = FrameReader(corpus, data.resolution).read(
        int(first["video"]), range(t0, t0 + clip.n_frames)
    )
    return example, np.concatenate([r["audio"] for r in recs])


class SampleVideos:
    """Writes `<dir>/step_<N>.mp4`: generated | the VAE's reconstruction of the ground truth |
    the ground truth, with the clip's audio. (With a random VAE only the first two compare.)"""

    def __init__(self, cfg: Config, model: EMOModel, vae: AutoencoderKL, mesh, shardings: tuple):
        self.cfg = cfg
        self.example, self.wave = validation_example(cfg)
        sampler = make_sampler(cfg.diffusion, cfg.train.sample_steps)
        guidance = Guidance.from_config(cfg.diffusion)
        passes = len(guidance.passes)

        def generate(params, vae_params, example, key):
            target, ref_latent, motion_latents = batch_latents(vae, vae_params, example, None)
            features = encode_reference(model, params, ref_latent, motion_latents)
            tile = lambda x: None if x is None else jnp.concatenate([x] * passes)  # noqa: E731
            feats = jax.tree_util.tree_map(tile, features)
            audio, speed = tile(example.get("audio")), tile(example.get("speed"))
            mask = tile(example["mask"])

            def denoise(x, t, keep):
                return model.apply({"params": params}, x, t, feats, audio, mask, speed, keep)

            z = jax.random.normal(key, target.shape)  # (1, F, h, w, 4)
            latents = sample(guided(denoise, guidance), z, sampler)
            both = jnp.concatenate([latents[0], target[0]])  # (2F, h, w, 4)
            x = decode_images(vae, vae_params, both)  # (2F, S, S, 3)
            return jnp.concatenate(jnp.split(x, 2), axis=2)  # (F, S, 2S, 3)

        rep = replicated(mesh)
        self._generate = jax.jit(generate, in_shardings=(*shardings, rep, rep), out_shardings=rep)

    def write(self, path: Path, params: Any, vae_params: Any, seed: int = 0) -> np.ndarray:
        """Generates and (on process 0) writes the video; returns its frames (F, S, 3S, 3)."""
        frames = np.asarray(
            self._generate(params, vae_params, self.example, jax.random.PRNGKey(seed))
        )
        video = np.concatenate([frames, self.example["frames"][0]], axis=2)
        if jax.process_index() == 0:
            clip = clip_spec(self.cfg.model)
            with VideoWriter(path, clip.fps, self.wave, clip.sample_rate) as w:
                w.write(video)
        return video
