"""Stage 0: a small autoencoder trained in place of the SD VAE (for models trained from scratch).

`model.vae` is trained on the corpus's frames (data.mode image: targets and references) with an
L1 reconstruction loss plus `train.kl_weight` x the KL term, with the stages' optimizer,
checkpoints (resumable to the exact batch) and logging. At the end the latent scale is measured
on fixed batches and the run writes RUN/vae, a diffusers AutoencoderKL folder whose
`scaling_factor` makes the latents unit-variance; the next stages name it in `train.vae_path`.

`train.init_from` (a diffusers AutoencoderKL folder) starts from trained weights and
`train.vae_trainable: [decoder]` trains the decoder alone: the latent space, and with it any
diffusion model trained on it and the scaling_factor, stay as they are (SD's ft-MSE decoder
fine-tune). `train.face_weight` weighs the L1 inside the face mask by 1 + face_weight.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.config import Config, ConfigError
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL, sample_latent
from emo_jax.parallel.mesh import make_mesh
from emo_jax.train.data import global_batch
from emo_jax.train.loop import Stage, run
from emo_jax.train.optimizer import make_optimizer
from emo_jax.train.setup import compile_stage
from emo_jax.train.stages import merge, partition
from emo_jax.train.step import init_state
from emo_jax.weights import pretrained

OWNER = {"encoder": "encoder", "quant_conv": "encoder"}  # else "decoder" (+ post_quant_conv)


def images_of(batch: dict) -> jax.Array:
    """A stage-1 batch -> every image in it, (B*F + B, S, S, 3) in [-1, 1]."""
    frames = batch["frames"]
    frames = frames.reshape(-1, *frames.shape[2:])  # (B*F, S, S, 3)
    x = jnp.concatenate([frames, batch["reference"]]).astype(jnp.float32)
    return x / 127.5 - 1.0


def pixel_weights(batch: dict, face_weight: float) -> jax.Array:
    """Per-pixel L1 weights of `images_of(batch)`, (B*F + B, S, S, 1): 1 + face_weight inside
    the face mask (the targets' box union, for the reference too)."""
    f = batch["frames"].shape[1]
    mask = batch["mask"].astype(jnp.float32)  # (B, S, S)
    mask = jnp.concatenate([jnp.repeat(mask, f, axis=0), mask])  # (B*F + B, S, S)
    return (1.0 + face_weight * mask)[..., None]


def split_parts(params: Any, parts: tuple[str, ...]) -> tuple[dict, dict]:
    """(trainable, frozen) halves of VAE params: the trained parts ("encoder": encoder +
    quant_conv, "decoder": decoder + post_quant_conv) and the rest."""
    return partition(params, lambda path: OWNER.get(path[0], "decoder") in parts)


def make_loss_fn(vae: AutoencoderKL, kl_weight: float, face_weight: float = 0.0):
    """loss(trainable, frozen, inputs, batch, key) -> (total, {"l1", "kl"}); l1 is weighted by
    `pixel_weights`; `inputs` is unused (stage 0 has no fixed inputs)."""

    def loss_fn(trainable, frozen, inputs, batch, key):
        params = merge(trainable, frozen)
        x = images_of(batch)
        mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
        z = sample_latent(mean, logvar, key)
        y = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
        w = pixel_weights(batch, face_weight)
        l1 = jnp.mean(w * jnp.abs(y.astype(jnp.float32) - x)) / jnp.mean(w)
        kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
        return l1 + kl_weight * kl, {"l1": l1, "kl": kl}

    return loss_fn


def validate(cfg: Config) -> None:
    if cfg.data.mode != "image":
        raise ConfigError("train.stage 0 (autoencoder) reads images: set data.mode: image")
    if cfg.train.vae_path:
        raise ConfigError("train.stage 0 trains model.vae: train.vae_path must be empty")
    parts = cfg.train.vae_trainable
    if not parts or set(parts) - {"encoder", "decoder"}:
        raise ConfigError(
            f"train.vae_trainable {list(parts)}: name encoder, decoder or both (stage 0)"
        )
    if "encoder" not in parts and not cfg.train.init_from:
        raise ConfigError("train.vae_trainable without encoder needs train.init_from (a VAE)")


def train_autoencoder(cfg: Config, progress: bool = True) -> dict:
    """Runs (or resumes) the autoencoder stage; writes RUN/vae at the end."""
    validate(cfg)
    t = cfg.train
    vae = AutoencoderKL(cfg.model.vae)
    start_params = None
    if t.init_from:
        vae, start_params = AutoencoderKL.from_pretrained(t.init_from)
        if dataclasses.replace(vae.config, scaling_factor=None) != dataclasses.replace(
            cfg.model.vae, scaling_factor=None
        ):
            raise ConfigError(f"train.init_from {t.init_from}: not the model.vae architecture")
    loss_fn = make_loss_fn(vae, t.kl_weight, t.face_weight)
    setup = compile_stage(
        cfg,
        make_mesh(cfg.parallel),
        vae,
        pretrained.abstract_params(vae, VAE_FORMAT, vae.config),
        lambda p: split_parts(p, t.vae_trainable),
        {},
        loss_fn,
        lambda *args: loss_fn(*args)[1]["l1"],
        make_optimizer(t),
    )
    state_sh, _, _, batch_sh = setup.shardings

    def start(say):
        if start_params is None:
            key = jax.random.key(t.seed, impl="unsafe_rbg")
            init = lambda: pretrained.init_params(vae, VAE_FORMAT, vae.config, key)  # noqa: E731
            params = jax.jit(init, out_shardings=setup.param_shardings)()
        else:
            params = jax.device_put(start_params, setup.param_shardings)
        say(
            f"autoencoder from {t.init_from or f'fresh (seed {t.seed})'}: {_count(params):,} params"
        )
        say(f"training {' and '.join(t.vae_trainable)}")
        trainable, frozen = split_parts(params, t.vae_trainable)
        state = jax.jit(lambda p: init_state(p, setup.optimizer, t), out_shardings=state_sh)
        return state(trainable), frozen

    def finish(state, frozen, batches, data, say) -> dict:
        params = jax.device_get(merge(state.ema or state.params, frozen))
        config = vae.config  # a frozen encoder keeps the latent space and its scale
        if "encoder" in t.vae_trainable:
            std = latent_std(vae, params, batches or [global_batch(next(data), batch_sh)])
            config = dataclasses.replace(config, scaling_factor=round(1.0 / std, 5))
        if jax.process_index() == 0:
            AutoencoderKL.save_pretrained(params, config, Path(t.out_dir) / "vae")
            say(f"autoencoder: {Path(t.out_dir) / 'vae'} (scaling_factor {config.scaling_factor})")
        return {"scaling_factor": config.scaling_factor}

    return run(cfg, Stage(setup, {}, start, finish), progress)


def latent_std(vae: AutoencoderKL, params: Any, batches: list[dict]) -> float:
    """The standard deviation of the latent means over `batches` (what scaling_factor divides)."""
    encode = jax.jit(
        lambda p, b: vae.apply({"params": p}, images_of(b), method=AutoencoderKL.encode)[0]
    )
    z = np.concatenate([np.asarray(encode(params, b)).ravel() for b in batches])
    return float(z.std())


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
