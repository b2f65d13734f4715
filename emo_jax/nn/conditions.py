"""`Conditions`: what the backbone's blocks read besides the latents, timesteps and
cross-attention context, passed down the module tree as one value (a pytree: it goes
through jit, remat and scan)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import struct

PER_MODULE = "per_module"  # field metadata: a tree keyed by module names, narrowed by `at`


@struct.dataclass
class Conditions:
    """Frames folded into the batch (B*F, ...) go with these, each optional (None: absent).

    num_frames      F, frames per sample (static).
    references      ReferenceNet tokens, a tree shaped as the module tree down to each spatial
                    transformer block: {..."transformer_blocks_i": {"tokens": (B, S, C)}}.
    reference_keep  (B,) bool: False masks a sample's reference tokens out (dropped).
    motion          motion-frame features, a tree shaped as the module tree down to each
                    temporal position: {..."motion_i": (B*n, h, w, C)}, n motion frames.
    speed_tokens    (B, F, L) speed-encoder tokens the temporal modules' speed layer attends to.
    audio_tokens    Hallo: (B*F, K, D) audio tokens its audio modules attend to.
    region_masks    Hallo: per mask level k (latent side / 2^k) the (full, face, lip) region
                    masks (B*F, L_k^2) of its audio modules.
    motion_scale    Hallo: (3,) weights of the full, face and lip audio attentions.

    A new condition is a new field: per-sample arrays are read where they are used; trees keyed
    by module names carry `PER_MODULE` metadata and each module passes `at(child)` down.
    """

    num_frames: int = struct.field(pytree_node=False, default=1)
    references: Any = struct.field(default=None, metadata={PER_MODULE: True})
    reference_keep: jax.Array | None = None
    motion: Any = struct.field(default=None, metadata={PER_MODULE: True})
    speed_tokens: jax.Array | None = None
    audio_tokens: jax.Array | None = None
    region_masks: tuple | None = None
    motion_scale: jax.Array | None = None

    def at(self, name: str) -> Conditions:
        """The conditions of submodule `name`: every `PER_MODULE` tree narrowed to its
        `name` subtree (None where the tree has none)."""
        return self.replace(
            **{
                f.name: _child(getattr(self, f.name), name)
                for f in dataclasses.fields(self)
                if f.metadata.get(PER_MODULE)
            }
        )


def _child(tree: Any, name: str) -> Any:
    return None if tree is None else tree.get(name)
