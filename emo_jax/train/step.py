"""The train step of every stage: a loss of (trainable, frozen, inputs, batch, key), gradient
accumulation, AdamW on the trainable half only, NaN/Inf skip, optional EMA."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from emo_jax.config import TrainConfig
from emo_jax.train.optimizer import guarded_update, keep_if, learning_rate


@flax.struct.dataclass
class TrainState:
    """Everything an optimizer step changes (the frozen params and the step's fixed inputs are
    separate arguments)."""

    step: jax.Array  # () int32: optimizer steps done
    params: Any  # the trainable half of the params, float32
    opt_state: Any  # AdamW state of `params` only
    ema: Any  # EMA of `params` ({} without EMA)
    rng: jax.Array  # (2,) uint32 PRNG key, split once per step
    skipped: jax.Array  # () int32: steps whose update was skipped (non-finite loss or gradient)


def init_state(
    params: Any, optimizer: optax.GradientTransformation, cfg: TrainConfig
) -> TrainState:
    """Step 0 for the trainable params."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        ema=jax.tree_util.tree_map(jnp.copy, params) if cfg.ema_decay is not None else {},
        rng=jax.random.PRNGKey(cfg.seed),
        skipped=jnp.zeros((), jnp.int32),
    )


def _micro_batches(batch: dict, k: int) -> dict:
    """(B, ...) -> (k, B/k, ...); micro-batch i holds rows i, i+k, ..., so every data shard
    contributes equally to each."""
    return jax.tree_util.tree_map(
        lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch
    )


def make_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    cfg: TrainConfig,
    batch_sharding: NamedSharding | None = None,
) -> Callable:
    """step(state, frozen, inputs, batch) -> (state, metrics) for
    loss_fn(trainable, frozen, inputs, batch, key) -> (loss, {name: scalar}); the loss and the
    named scalars are logged as metrics. Jit it with shardings."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    accum, decay = cfg.grad_accum, cfg.ema_decay
    schedule = learning_rate(cfg)

    def grads_of(params, frozen, inputs, batch, key):
        if accum == 1:
            return grad_fn(params, frozen, inputs, batch, key)

        def body(carry, xs):
            i, micro = xs
            if batch_sharding is not None:
                micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
            out = grad_fn(params, frozen, inputs, micro, jax.random.fold_in(key, i))
            return jax.tree_util.tree_map(jnp.add, carry, out), None

        micros = _micro_batches(batch, accum)  # (k, B/k, ...)
        first = jax.tree_util.tree_map(lambda x: x[0], micros)
        shapes = jax.eval_shape(grad_fn, params, frozen, inputs, first, key)
        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(body, zero, (jnp.arange(accum), micros))
        return jax.tree_util.tree_map(lambda x: x / accum, total)

    def step(state: TrainState, frozen, inputs, batch):
        rng, key = jax.random.split(state.rng)
        (value, aux), grads = grads_of(state.params, frozen, inputs, batch, key)
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
        metrics = {"loss": value, **aux, "grad_norm": grad_norm, "lr": schedule(state.step)}
        return new_state, {**metrics, "ok": ok}

    return step
