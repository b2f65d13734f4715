"""AdamW with linear warm-up to a constant learning rate (optionally decaying linearly to 0 at
the end) and global-norm clipping, and the update that is skipped when the loss or the gradient
is not finite."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from emo_jax.config import TrainConfig


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then constant (the paper: 1e-5 in every stage), then
    linearly -> 0 over the last decay_steps of the stage's steps."""
    pieces, boundaries = [], []
    if cfg.warmup_steps > 0:
        pieces.append(optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps))
        boundaries.append(cfg.warmup_steps)
    pieces.append(optax.constant_schedule(cfg.learning_rate))
    if cfg.decay_steps > 0:
        pieces.append(optax.linear_schedule(cfg.learning_rate, 0.0, cfg.decay_steps))
        boundaries.append(cfg.steps - cfg.decay_steps)
    return optax.join_schedules(pieces, boundaries) if boundaries else pieces[0]


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (the update of one optimizer step)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(
            learning_rate(cfg),
            b1=cfg.adam_b1,
            b2=cfg.adam_b2,
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
        ),
    )


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `ok` (a traced bool), else `old`, leaf by leaf."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def guarded_update(
    optimizer: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any, loss: Any
) -> tuple[Any, Any, jax.Array, jax.Array]:
    """(params, opt_state, grad_norm, ok) after one optimizer step; the old params and state
    when the loss or the gradient is not finite (ok False: the step is skipped, not applied)."""
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    return keep_if(ok, new_params, params), keep_if(ok, new_state, opt_state), grad_norm, ok
