"""Classifier-free guidance over EMO's conditions, all passes batched into one forward.

With u = no reference and no audio, r = reference only, c = reference and audio:

- one scale s (Hallo, 3.5):            out = u + s (c - u)                    passes (u, c)
- reference and audio scales (V-Express): out = u + s_ref (r - u) + s_audio (c - r)   passes (u, r, c)
- s = 1 without an audio scale:        out = c                                one pass

The passes are concatenated along the batch axis, pass-major: rows [p*B:(p+1)*B] are pass p.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from emo_jax.config import DiffusionConfig

CONDITIONS = ("reference", "audio")
UNCOND = {"reference": False, "audio": False}
REFERENCE_ONLY = {"reference": True, "audio": False}
FULL = {"reference": True, "audio": True}

# denoise_fn(latents (P*B, ...), t, keep) -> model output (P*B, ...); keep maps each name in
# CONDITIONS to a bool array (P*B,): whether that row sees the condition (else it is dropped, as
# in training's condition dropout).
GuidedDenoiseFn = Callable[[jax.Array, jax.Array, dict[str, jax.Array]], jax.Array]


LAYOUTS = {1: (FULL,), 2: (UNCOND, FULL), 3: (UNCOND, REFERENCE_ONLY, FULL)}  # by pass count


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guidance scales: `scale` alone, or `scale` for the reference and `audio_scale` for audio.

    A pytree: the scales are its leaves (traced in a jitted function, so a new scale does not
    recompile) and the pass count its static part, set from the scales when they are numbers
    (scale 1 without an audio scale: one pass, no guidance)."""

    scale: Any = 1.0  # float or a traced scalar
    audio_scale: Any = None
    num_passes: int = 0  # 0: from the scales

    def __post_init__(self) -> None:
        if not self.num_passes:
            single = self.audio_scale is None and float(self.scale) == 1.0
            passes = 3 if self.audio_scale is not None else 1 if single else 2
            object.__setattr__(self, "num_passes", passes)

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> Guidance:
        audio = cfg.audio_guidance_scale
        return cls(float(cfg.guidance_scale), None if audio is None else float(audio))

    @property
    def passes(self) -> tuple[dict[str, bool], ...]:
        """Which conditions each forward pass keeps, in batch order."""
        return LAYOUTS[self.num_passes]

    def combine(self, outputs: list[jax.Array]) -> jax.Array:
        """The guided output from the per-pass outputs (in `passes` order)."""
        if self.audio_scale is not None:
            u, r, c = outputs
            return u + self.scale * (r - u) + self.audio_scale * (c - r)
        if len(outputs) == 1:
            return outputs[0]
        u, c = outputs
        return u + self.scale * (c - u)


jax.tree_util.register_dataclass(
    Guidance, data_fields=["scale", "audio_scale"], meta_fields=["num_passes"]
)


def guided(denoise_fn: GuidedDenoiseFn, guidance: Guidance) -> Callable:
    """(latents, t) -> guided model output, running every pass of `guidance` in one forward."""
    passes = guidance.passes

    def fn(latents: jax.Array, t: jax.Array) -> jax.Array:
        batch = latents.shape[0]
        x = jnp.concatenate([latents] * len(passes), axis=0)  # (P*B, ...)
        keep = {c: jnp.repeat(jnp.array([p[c] for p in passes]), batch) for c in CONDITIONS}
        out = denoise_fn(x, t, keep)
        return guidance.combine(jnp.split(out, len(passes), axis=0))

    return fn
