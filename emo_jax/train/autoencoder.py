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
import functools
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.config import Config, ConfigError
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL, sample_latent
from emo_jax.parallel.mesh import make_mesh
from emo_jax.parallel.sharding import (
    batch_shardings,
    replicated,
    tree_shardings,
    with_shardings,
)
from emo_jax.train.data import BatchStream, batch_abstract, fixed_batches, global_batch
from emo_jax.train.metrics import MetricsLog, batch_digest
from emo_jax.train.optimizer import guarded_update, learning_rate, make_optimizer
from emo_jax.weights import pretrained


@flax.struct.dataclass
class AutoencoderState:
    step: jax.Array  # () int32
    params: Any
    opt_state: Any
    rng: jax.Array  # (2,) uint32
    skipped: jax.Array  # () int32


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


def trainable_mask(params: Any, parts: tuple[str, ...]) -> Any:
    """True on the leaves of the trained parts ("encoder": encoder + quant_conv, "decoder":
    decoder + post_quant_conv)."""
    owner = {"encoder": "encoder", "quant_conv": "encoder"}

    def flags(tree: Any, on: bool) -> Any:
        return jax.tree_util.tree_map(lambda _: on, tree)

    return {name: flags(tree, owner.get(name, "decoder") in parts) for name, tree in params.items()}


def make_loss_fn(vae: AutoencoderKL, kl_weight: float, face_weight: float = 0.0):
    """loss(params, batch, key) -> (total, (l1, kl)); l1 is weighted by `pixel_weights`."""

    def loss_fn(params, batch, key):
        x = images_of(batch)
        mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
        z = sample_latent(mean, logvar, key)
        y = vae.apply({"params": params}, z, method=AutoencoderKL.decode)
        w = pixel_weights(batch, face_weight)
        l1 = jnp.mean(w * jnp.abs(y.astype(jnp.float32) - x)) / jnp.mean(w)
        kl = 0.5 * jnp.mean(jnp.sum(mean**2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
        return l1 + kl_weight * kl, (l1, kl)

    return loss_fn


def make_step(vae: AutoencoderKL, optimizer: optax.GradientTransformation, cfg: Config):
    t = cfg.train
    loss_fn = make_loss_fn(vae, t.kl_weight, t.face_weight)

    def frozen_aware(params, batch, key):  # no gradient (nor its work) for frozen parts
        mask = trainable_mask(params, t.vae_trainable)
        held = jax.tree_util.tree_map(
            lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask
        )
        return loss_fn(held, batch, key)

    grad_fn = jax.value_and_grad(frozen_aware, has_aux=True)
    schedule = learning_rate(cfg.train)

    def step(state: AutoencoderState, batch: dict):
        rng, key = jax.random.split(state.rng)
        (value, (l1, kl)), grads = grad_fn(state.params, batch, key)
        params, opt_state, grad_norm, ok = guarded_update(
            optimizer, grads, state.opt_state, state.params, value
        )
        new = AutoencoderState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            rng=rng,
            skipped=state.skipped + (~ok).astype(jnp.int32),
        )
        metrics = {
            "loss": value,
            "l1": l1,
            "kl": kl,
            "grad_norm": grad_norm,
            "lr": schedule(state.step),
            "ok": ok,
        }
        return new, metrics

    return step


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
    out = Path(t.out_dir)
    lead = jax.process_index() == 0
    say = tqdm.write if lead else (lambda *_: None)
    mesh = make_mesh(cfg.parallel)
    vae = AutoencoderKL(cfg.model.vae)
    start_params = None
    if t.init_from:
        vae, start_params = AutoencoderKL.from_pretrained(t.init_from)
        if dataclasses.replace(vae.config, scaling_factor=None) != dataclasses.replace(
            cfg.model.vae, scaling_factor=None
        ):
            raise ConfigError(f"train.init_from {t.init_from}: not the model.vae architecture")
    optimizer = optax.masked(make_optimizer(t), lambda p: trainable_mask(p, t.vae_trainable))
    abstract_params = pretrained.abstract_params(vae, VAE_FORMAT, vae.config)
    init = functools.partial(
        _init_state, vae=vae, optimizer=optimizer, seed=t.seed, params=start_params
    )
    abstract_state = jax.eval_shape(init)
    state_sh = tree_shardings(abstract_state, mesh, cfg.parallel.fsdp_min_size)
    batch_sh = batch_shardings(batch_abstract(cfg, cfg.data.batch_size), mesh)
    step_fn = jax.jit(
        make_step(vae, optimizer, cfg),
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=(0,),
    )
    data = BatchStream(cfg)
    ckpts = Checkpoints(out / "checkpoints", t.keep_checkpoints)
    start = ckpts.latest_step()
    if start is not None:
        target = {"state": with_shardings(abstract_state, state_sh)}
        state = ckpts.restore(start, target, data if start < t.steps else None)
        state = state["state"]
        say(f"resumed from {ckpts.directory}/{start}")
    else:
        start = 0
        state = jax.jit(init, out_shardings=state_sh)()
        source = t.init_from or f"fresh (seed {t.seed})"
        say(f"autoencoder from {source}: {_count(abstract_params):,} params")
        say(f"training {' and '.join(t.vae_trainable)}")
    eval_batches = fixed_batches(cfg, batch_sh)
    eval_fn = jax.jit(make_loss_fn(vae, t.kl_weight, t.face_weight))

    def evaluate(params) -> float:
        values = [
            eval_fn(params, b, jax.random.PRNGKey(i))[1][0] for i, b in enumerate(eval_batches)
        ]
        return float(np.mean(jax.device_get(values)))

    log = MetricsLog(out, t.log_every, cfg.data.batch_size, say)
    if eval_batches and start < t.steps:
        log.eval(start, evaluate(state.params))
    bar = tqdm(total=t.steps, initial=start, disable=not (progress and lead), unit="step")
    step = start
    losses: dict[int, float] = {}
    while step < t.steps:
        local = next(data)
        state, metrics = step_fn(state, global_batch(local, batch_sh))
        step += 1
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        losses[step] = metrics["loss"]
        log.record(step, metrics, batch_digest(local))
        bar.update(1)
        bar.set_postfix(l1=f"{metrics['l1']:.4f}")
        if step % t.checkpoint_every == 0 or step == t.steps:
            score = evaluate(state.params) if eval_batches else None
            if score is not None:
                log.eval(step, score)
            ckpts.save(step, {"state": state}, data, score)
    bar.close()
    ckpts.wait()
    ckpts.close()
    log.close()
    params = jax.device_get(state.params)
    config = vae.config  # a frozen encoder keeps the latent space and its scale
    if "encoder" in t.vae_trainable:
        std = latent_std(vae, params, eval_batches or [global_batch(next(data), batch_sh)])
        config = dataclasses.replace(config, scaling_factor=round(1.0 / std, 5))
    if lead:
        AutoencoderKL.save_pretrained(params, config, out / "vae")
        say(f"autoencoder: {out / 'vae'} (scaling_factor {config.scaling_factor})")
    return {"start": start, "end": step, "losses": losses, "scaling_factor": config.scaling_factor}


def latent_std(vae: AutoencoderKL, params: Any, batches: list[dict]) -> float:
    """The standard deviation of the latent means over `batches` (what scaling_factor divides)."""
    encode = jax.jit(
        lambda p, b: vae.apply({"params": p}, images_of(b), method=AutoencoderKL.encode)[0]
    )
    z = np.concatenate([np.asarray(encode(params, b)).ravel() for b in batches])
    return float(z.std())


def _init_state(vae: AutoencoderKL, optimizer, seed: int, params: Any = None) -> AutoencoderState:
    if params is None:
        key = jax.random.key(seed, impl="unsafe_rbg")
        params = pretrained.init_params(vae, VAE_FORMAT, vae.config, key)
    return AutoencoderState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.PRNGKey(seed),
        skipped=jnp.zeros((), jnp.int32),
    )


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
