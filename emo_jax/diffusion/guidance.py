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


@dataclasses.dataclass(frozen=True)
class Guidance:
    """Guidance scales: `scale` alone, or `scale` for the reference and `audio_scale` for audio."""

    scale: float = 1.0
    audio_scale: float | None = None

    @classmethod
    def from_config(cls, cfg: DiffusionConfig) -> Guidance:
        return cls(cfg.guidance_scale, cfg.audio_guidance_scale)

    @property
    def passes(self) -> tuple[dict[str, bool], ...]:
        """Which conditions each forward pass keeps, in batch order."""
        if self.audio_scale is not None:
            return (UNCOND, REFERENCE_ONLY, FULL)
        return (FULL,) if self.scale == 1.0 else (UNCOND, FULL)

    def combine(self, outputs: list[jax.Array]) -> jax.Array:
        """The guided output from the per-pass outputs (in `passes` order)."""
        if self.audio_scale is not None:
            u, r, c = outputs
            return u + self.scale * (r - u) + self.audio_scale * (c - r)
        if len(outputs) == 1:
            return outputs[0]
        u, c = outputs
        return u + self.scale * (c - u)


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
