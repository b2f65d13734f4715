"""Parameter counts per component, from `jax.eval_shape` (nothing allocated)."""

from __future__ import annotations

import math
from typing import Any

import jax

from emo_jax.config import Config


def count(tree: Any) -> int:
    """Number of scalars in a (possibly abstract) param tree."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def parameter_counts(config: Config) -> dict[str, int]:
    """{component: parameter count} for the models a config describes."""
    from emo_jax.checkpoint.pretrained import abstract_params
    from emo_jax.models.unet import UNET_FORMAT
    from emo_jax.models.vae import VAE_FORMAT

    counts = {}
    for name, fmt, cfg in (
        ("unet", UNET_FORMAT, config.model.unet),
        ("vae", VAE_FORMAT, config.model.vae),
    ):
        counts[name] = count(abstract_params(fmt.build(cfg, None), fmt, cfg))
    return counts
