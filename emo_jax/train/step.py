"""The train step: VAE latents, condition dropout, the diffusion loss, gradient accumulation,
AdamW on the trainable half only, NaN/Inf skip, optional EMA."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from emo_jax.config import Config
from emo_jax.diffusion import add_noise, loss, sample_timesteps
from emo_jax.models.emo import EMOModel, encode_reference
from emo_jax.models.vae import AutoencoderKL, encode_images
from emo_jax.train.optimizer import guarded_update, keep_if, learning_rate
from emo_jax.train.stages import merge


@flax.struct.dataclass
class TrainState:
    """Everything an optimizer step changes (the frozen params and the VAE are separate inputs)."""

    step: jax.Array  # () int32: optimizer steps done
    params: Any  # the trainable half of the EMO params, float32
    opt_state: Any  # AdamW state of `params` only
    ema: Any  # EMA of `params` ({} without EMA)
    rng: jax.Array  # (2,) uint32 PRNG key, split once per step
    skipped: jax.Array  # () int32: steps whose update was skipped (non-finite loss or gradient)


def init_state(params: Any, optimizer: optax.GradientTransformation, cfg: Config) -> TrainState:
    """Step 0 for the trainable params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree_util.tree_map(jnp.copy, params) if cfg.train.ema_decay is not None else {},
        rng=jax.random.PRNGKey(cfg.train.seed),
        skipped=jnp.zeros((), jnp.int32),
    )


def batch_latents(vae, vae_params, batch: dict, key: jax.Array | None) -> tuple:
    """Target latents (B, F, h, w, 4), reference latent (B, h, w, 4), motion latents
    (B, n, h, w, 4) or None: one VAE pass over all frames of the batch."""
    frames, ref = batch["frames"], batch["reference"]
    motion = batch.get("motion_frames")
    b, f = frames.shape[:2]
    n = 0 if motion is None else motion.shape[1]
    parts = [frames.reshape(b * f, *frames.shape[2:]), ref]
    if n:
        parts.append(motion.reshape(b * n, *motion.shape[2:]))
    z = jax.lax.stop_gradient(encode_images(vae, vae_params, jnp.concatenate(parts), key))
    latents = z[: b * f].reshape(b, f, *z.shape[1:])  # (B, F, h, w, 4)
    ref_latent = z[b * f : b * f + b]
    motion_latents = z[b * f + b :].reshape(b, n, *z.shape[1:]) if n else None
    return latents, ref_latent, motion_latents


def condition_keep(cfg: Config, key: jax.Array, batch: int) -> dict[str, jax.Array]:
    """Per-example keep masks of the conditions this model has (False: dropped, the null form)."""
    t, emo = cfg.train, cfg.model.emo
    rates = {"reference": t.drop_reference}
    if emo.use_audio:
        rates["audio"] = t.drop_audio
    if emo.use_temporal:
        rates["motion"] = t.drop_motion
        if emo.use_speed:
            rates["speed"] = t.drop_speed
    rates = {k: r for k, r in rates.items() if r > 0}
    keys = jax.random.split(key, max(1, len(rates)))
    return {
        k: jax.random.bernoulli(kk, 1.0 - r, (batch,)) for kk, (k, r) in zip(keys, rates.items())
    }


def make_loss_fn(cfg: Config, model: EMOModel, vae: AutoencoderKL) -> Callable:
    """loss(trainable, frozen, vae_params, batch, key) -> float32 scalar diffusion loss."""

    def loss_fn(trainable, frozen, vae_params, batch, key):
        params = merge(trainable, frozen)
        k_vae, k_t, k_noise, k_keep = jax.random.split(key, 4)
        latents, ref_latent, motion_latents = batch_latents(vae, vae_params, batch, k_vae)
        b = latents.shape[0]
        features = encode_reference(model, params, ref_latent, motion_latents)
        t = sample_timesteps(cfg.diffusion, k_t, b)
        noise = jax.random.normal(k_noise, latents.shape, jnp.float32)
        out = model.apply(
            {"params": params},
            add_noise(cfg.diffusion, latents, noise, t),
            t,
            features,
            batch.get("audio"),
            batch["mask"],
            batch.get("speed"),
            condition_keep(cfg, k_keep, b),
        )
        return loss(cfg.diffusion, out, latents, noise, t)

    return loss_fn


def make_eval_loss(cfg: Config, model: EMOModel, vae: AutoencoderKL) -> Callable:
    """`make_loss_fn` without condition dropout: the score of fixed batches with fixed keys."""
    no_drop = dataclasses.replace(
        cfg.train, drop_reference=0.0, drop_audio=0.0, drop_speed=0.0, drop_motion=0.0
    )
    return make_loss_fn(dataclasses.replace(cfg, train=no_drop), model, vae)


def _micro_batches(batch: dict, k: int) -> dict:
    """(B, ...) -> (k, B/k, ...); micro-batch i holds rows i, i+k, ..., so every data shard
    contributes equally to each."""
    return jax.tree_util.tree_map(
        lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch
    )


def make_train_step(
    cfg: Config,
    model: EMOModel,
    vae: AutoencoderKL,
    optimizer: optax.GradientTransformation,
    batch_sharding: NamedSharding | None = None,
) -> Callable:
    """step(state, frozen, vae_params, batch) -> (state, metrics); jit it with shardings."""
    grad_fn = jax.value_and_grad(make_loss_fn(cfg, model, vae))
    accum, decay = cfg.train.grad_accum, cfg.train.ema_decay
    schedule = learning_rate(cfg.train)

    def grads_of(params, frozen, vae_params, batch, key):
        if accum == 1:
            return grad_fn(params, frozen, vae_params, batch, key)

        def body(carry, xs):
            i, micro = xs
            if batch_sharding is not None:
                micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
            value, grads = grad_fn(params, frozen, vae_params, micro, jax.random.fold_in(key, i))
            total, gsum = carry
            return (total + value, jax.tree_util.tree_map(jnp.add, gsum, grads)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
        (total, gsum), _ = jax.lax.scan(
            body, zero, (jnp.arange(accum), _micro_batches(batch, accum))
        )
        return total / accum, jax.tree_util.tree_map(lambda g: g / accum, gsum)

    def step(state: TrainState, frozen, vae_params, batch):
        rng, key = jax.random.split(state.rng)
        value, grads = grads_of(state.params, frozen, vae_params, batch, key)
        params, opt_state, grad_norm, ok = guarded_update(
            optimizer, grads, state.opt_state, state.params, value
        )
        ema = state.ema
        if decay is not None:
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema=keep_if(ok, ema, state.ema),
            rng=rng,
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        metrics = {"loss": value, "grad_norm": grad_norm, "lr": schedule(state.step), "ok": ok}
        return new_state, metrics

    return step
