"""The jitted pieces of generation, built once per (model config, sampler settings, mesh) and
shared by every pipeline with those, so each compiles once per video shape:

  encode     one uint8 frame (1, H, W, 3) -> scaled VAE latent (1, h, w, 4) (the mean)
  reference  ReferenceNet on the reference latent: its features, with zero motion maps
             (the paper's first clip) - once per video
  motion     ReferenceNet on the motion latents (1, n, h, w, 4): motion features - once per clip
             (`encode_reference` passes the reference through again, about 1/(n+1) of this
             call and ~0.1% of a clip; its reference features are not used)
  sample     one clip: noise from a key, all denoising steps in one `lax.fori_loop`, every
             guidance pass batched into one forward (`sample_reporting`: the same, reporting
             each step). The guidance scales are an argument (a `Guidance` pytree): a new
             scale reuses the program; only the pass count (1, 2 or 3) is part of it.
  decode     scaled latents (k, h, w, 4) -> uint8 frames (k, H, W, 3)

Progress: `sample_reporting`'s denoiser makes one `jax.debug.callback` per step, which calls
`on_step()`. A host callback keeps an executable out of JAX's persistent compilation cache,
so `sample` (used when no one watches the progress) has none.

On several devices (`mesh`, from `emo_jax.parallel.mesh.generation_mesh`): the params are
replicated (`place`), each denoising forward's guided batch (passes x frames) is split over
the mesh (`emo_jax.parallel.sharding.clip_spec`) and the decoded frames over all its devices;
the rest is left to XLA's propagation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from emo_jax.config import DiffusionConfig, ModelConfig
from emo_jax.diffusion import Guidance, guided, make_sampler, sample
from emo_jax.models.emo import EMOModel, encode_reference
from emo_jax.models.vae import AutoencoderKL, decode_images, encode_images
from emo_jax.parallel.sharding import clip_spec


def _tile(tree: Any, times: int) -> Any:
    """Every leaf repeated `times` along the batch axis, pass-major (as `guided` stacks rows)."""
    return jax.tree_util.tree_map(lambda x: jnp.concatenate([x] * times, axis=0), tree)


def without_guidance(diffusion: DiffusionConfig) -> DiffusionConfig:
    """The diffusion config with its guidance scales at their defaults: what the jitted
    functions depend on (the scales are their arguments)."""
    default = DiffusionConfig()
    return dataclasses.replace(
        diffusion,
        guidance_scale=default.guidance_scale,
        audio_guidance_scale=default.audio_guidance_scale,
    )


class MeshPlacement:
    """Where generation's functions run: one device (`mesh` None) or a mesh. `place` puts a
    pytree (the params) on every device of the mesh; `scope` is the mesh as the one that
    traced code sees (`auto` attention and splash read it); `split` constrains a guided batch
    (passes x batch, frames, ...) to `clip_spec`."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh

    def place(self, tree: Any) -> Any:
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def scope(self) -> contextlib.AbstractContextManager:
        if self.mesh is None:
            return contextlib.nullcontext()
        return jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh)

    def split(self, x: jax.Array) -> jax.Array:
        if self.mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, clip_spec(self.mesh)))

    def split_frames(self, x: jax.Array) -> jax.Array:
        """Frames (N, ...) over every device of the mesh (the VAE decode): N a multiple of it."""
        if self.mesh is None:
            return x
        spec = PartitionSpec(tuple(self.mesh.axis_names))
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def frames_per_call(self, frames: int) -> int:
        """`frames` rounded up to a multiple of the device count (for `split_frames`)."""
        n = 1 if self.mesh is None else self.mesh.size
        return -(-frames // n) * n


class VideoFunctions(MeshPlacement):
    """The jitted encode / reference / motion / sample / decode functions (params are args)."""

    def __init__(
        self, model_config: ModelConfig, diffusion: DiffusionConfig, mesh: Mesh | None = None
    ):
        super().__init__(mesh)
        self.model = EMOModel(model_config)
        self.vae = AutoencoderKL(model_config.vae)
        self.factor = model_config.vae.factor
        self.sampler = make_sampler(diffusion)
        self.on_step: Callable[[], None] | None = None
        self.encode = jax.jit(functools.partial(encode_images, self.vae))
        self.reference = jax.jit(lambda p, ref: encode_reference(self.model, p, ref))
        self.motion = jax.jit(
            lambda p, ref, mot: encode_reference(self.model, p, ref, mot)["motion"]
        )
        self.sample = jax.jit(functools.partial(self._sample, report=False))
        self.sample_reporting = jax.jit(functools.partial(self._sample, report=True))
        self.decode = jax.jit(lambda p, z: decode_images(self.vae, p, self.split_frames(z)))

    @property
    def num_steps(self) -> int:
        return self.sampler.num_steps

    def _tick(self, _t: jax.Array) -> None:
        if self.on_step is not None:
            self.on_step()

    def denoiser(
        self,
        params: Any,
        features: dict,
        audio: jax.Array,
        mask: jax.Array,
        speed: jax.Array,
        guidance: Guidance,
        report: bool = False,
    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """(latents (1, F, h, w, C), t) -> guided model output: one denoising step's forward,
        every guidance pass in one batch. audio (1, F, 2m+1, layers, dim), mask (1, H, W),
        speed (1, F)."""
        passes = len(guidance.passes)
        feats, audio, mask, speed = _tile((features, audio, mask, speed), passes)

        def denoise(x: jax.Array, t: jax.Array, keep: dict) -> jax.Array:
            if report:
                jax.debug.callback(self._tick, t)
            x = self.split(x)  # (P, F, h, w, C)
            out = self.model.apply({"params": params}, x, t, feats, audio, mask, speed, keep)
            return self.split(out)

        return guided(denoise, guidance)

    def _sample(
        self,
        params: Any,
        features: dict,
        audio: jax.Array,
        mask: jax.Array,
        speed: jax.Array,
        key: jax.Array,
        guidance: Guidance,
        report: bool,
    ) -> jax.Array:
        """Latents (1, F, h, w, C) of one clip, from noise drawn with `key`."""
        f, h, w = audio.shape[1], mask.shape[1] // self.factor, mask.shape[2] // self.factor
        noise_key, step_key = jax.random.split(key)
        shape = (1, f, h, w, self.model.config.unet.in_channels)
        noise = jax.random.normal(noise_key, shape, jnp.float32)
        with self.scope():
            denoise = self.denoiser(params, features, audio, mask, speed, guidance, report)
            return sample(denoise, noise, self.sampler, step_key)


def video_functions(
    model_config: ModelConfig, diffusion: DiffusionConfig, mesh: Mesh | None = None
) -> VideoFunctions:
    """The shared `VideoFunctions` for these configs (any guidance scales) and mesh."""
    return _video_functions(model_config, without_guidance(diffusion), mesh)


@functools.lru_cache(maxsize=4)
def _video_functions(
    model_config: ModelConfig, diffusion: DiffusionConfig, mesh: Mesh | None
) -> VideoFunctions:
    return VideoFunctions(model_config, diffusion, mesh)
