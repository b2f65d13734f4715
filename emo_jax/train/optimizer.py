"""AdamW with linear warm-up to a constant learning rate and global-norm clipping."""

from __future__ import annotations

import optax

from emo_jax.config import TrainConfig


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then constant (the paper: 1e-5 in every stage)."""
    if cfg.warmup_steps <= 0:
        return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps),
            optax.constant_schedule(cfg.learning_rate),
        ],
        [cfg.warmup_steps],
    )


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
