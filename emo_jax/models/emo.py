"""The EMO denoiser: ReferenceNet + backbone (one UNet definition), audio projection, face
locator and speed encoder.

    features = encode_reference(model, params, reference_latent, motion_latents)  # once
    noise = model.apply(params, latents, t, features, audio, face_mask, speed, keep)  # per step

Conditions and their "null" forms (a per-sample `keep` mask drops them in training; guidance
compares the model with and without them at sampling time):
  reference  keys/values of the reference-attention are masked out (as if absent);
  audio      audio tokens are zeros;
  speed      speed tokens are zeros;
  motion     motion-frame features are zero maps (the paper's first clip).
The face mask is always given (all ones when unknown: the face may be anywhere).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import AudioConfig, ModelConfig
from emo_jax.models.audio_proj import AudioProjection, window_shape
from emo_jax.models.face_locator import FaceLocator
from emo_jax.models.speed import SpeedEncoder
from emo_jax.models.unet import MOTION, UNet2DConditionModel
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.transformer import REFERENCE

CONDITIONS = ("reference", "audio", "speed", "motion")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(config: ModelConfig) -> Any:
    """The jnp dtype named by `model.dtype`."""
    return DTYPES[config.dtype]


class EMOModel(nn.Module):
    """Noisy latents (B, F, h, w, 4) + conditions -> predicted noise (or v) (B, F, h, w, 4)."""

    config: ModelConfig

    def setup(self) -> None:
        cfg, emo = self.config, self.config.emo
        dtype = compute_dtype(cfg)
        self.reference_unet = UNet2DConditionModel(
            dataclasses.replace(cfg.unet, cross_attention_dim=None),
            write_reference=True,
            remat=emo.remat,
            dtype=dtype,
            attention_impl=cfg.attention,
        )
        self.denoising_unet = UNet2DConditionModel(
            cfg.unet if emo.use_audio else dataclasses.replace(cfg.unet, cross_attention_dim=None),
            temporal=emo.temporal if emo.use_temporal else None,
            speed=emo.use_speed and emo.use_temporal,
            zero_init_cross_out=True,
            remat=emo.remat,
            dtype=dtype,
            attention_impl=cfg.attention,
        )
        if emo.use_audio:
            self.audio_proj = AudioProjection(
                output_dim=cfg.unet.cross_attention_dim,
                hidden_dim=cfg.audio.proj_hidden_dim,
                num_tokens=cfg.audio.proj_tokens,
                dtype=dtype,
            )
        if emo.use_face_locator:
            self.face_locator = FaceLocator(
                cfg.unet.block_out_channels[0], emo.face_locator_channels, dtype=dtype
            )
        if emo.use_speed and emo.use_temporal:
            self.speed_encoder = SpeedEncoder(
                emo.speed_centers,
                emo.speed_radii,
                emo.speed_window,
                emo.speed_hidden_dim,
                emo.speed_embed_dim,
                dtype=dtype,
            )

    def encode_reference(
        self, reference_latent: jax.Array, motion_latents: jax.Array | None = None
    ) -> dict:
        """One ReferenceNet pass (t=0) over the reference (B, h, w, 4) and the motion frames
        (B, n, h, w, 4): {"reference": tokens per spatial transformer block (B, S, C),
        "motion": features per temporal position (B*n, h', w', C)}. Without motion frames the
        motion features are zero maps of `n_motion_frames` frames. Needs the REFERENCE and
        MOTION collections mutable (`encode_reference` below does that)."""
        b = reference_latent.shape[0]
        n = self.config.emo.n_motion_frames if motion_latents is None else motion_latents.shape[1]
        x = reference_latent
        if motion_latents is not None:
            x = jnp.concatenate([x, motion_latents.reshape(b * n, *motion_latents.shape[2:])])
        self.reference_unet(x, jnp.zeros((x.shape[0],), jnp.int32))  # (B + B*n, h, w, 4)
        sown = _unwrap(self.reference_unet.variables)
        refs = jax.tree_util.tree_map(lambda t: t[:b], sown[REFERENCE])
        if motion_latents is None:
            motion = jax.tree_util.tree_map(
                lambda t: jnp.zeros((b * n, *t.shape[1:]), t.dtype), sown[MOTION]
            )
        else:
            motion = jax.tree_util.tree_map(lambda t: t[b:], sown[MOTION])
        return {"reference": refs, "motion": motion if self.config.emo.use_temporal else None}

    def __call__(
        self,
        latents: jax.Array,
        timesteps: jax.Array,
        features: dict,
        audio: jax.Array | None = None,
        face_mask: jax.Array | None = None,
        speed: jax.Array | None = None,
        keep: dict[str, jax.Array] | None = None,
    ) -> jax.Array:
        """latents (B, F, h, w, 4); timesteps (B,) or scalar; features from `encode_reference`;
        audio (B, F, 2m+1, layers, dim) per-frame features; face_mask (B, H, W) in [0, 1] (pixels);
        speed (B, F) head-rotation speed; keep {condition: (B,) bool} (absent: all kept)."""
        emo = self.config.emo
        b, f, h, w, c = latents.shape
        keep = keep or {}

        def mask(name: str, x: jax.Array) -> jax.Array:
            return x if name not in keep else mask_rows(x, keep[name])

        x = latents.reshape(b * f, h, w, c)  # (B*F, h, w, 4)
        t = jnp.repeat(jnp.broadcast_to(jnp.asarray(timesteps), (b,)), f)  # (B*F,)

        context = None
        if emo.use_audio:
            tokens = mask("audio", self.audio_proj(audio))  # (B, F, K, D)
            context = tokens.reshape(b * f, *tokens.shape[2:])  # (B*F, K, D)
        residual = None
        if emo.use_face_locator:
            if face_mask is None:
                down = self.config.vae.factor  # mask pixels per latent
                face_mask = jnp.ones((b, down * h, down * w), jnp.float32)
            residual = jnp.repeat(self.face_locator(face_mask), f, axis=0)  # (B*F, h, w, C0)
        speed_tokens = None
        if emo.use_speed and emo.use_temporal:
            speed_tokens = mask("speed", self.speed_encoder(speed))  # (B, F, L)
        motion = None
        if emo.use_temporal and features.get("motion") is not None:
            keep_motion = keep.get("motion")
            motion = features["motion"]
            if keep_motion is not None:
                n = jax.tree_util.tree_leaves(motion)[0].shape[0] // b
                motion = jax.tree_util.tree_map(
                    lambda m: mask_rows(m, jnp.repeat(keep_motion, n)), motion
                )
        out = self.denoising_unet(
            x,
            t,
            context,
            Conditions(
                num_frames=f,
                references=features["reference"],
                reference_keep=keep.get("reference"),
                motion=motion,
                speed_tokens=speed_tokens,
            ),
            sample_residual=residual,
        )
        return out.reshape(b, f, h, w, -1).astype(jnp.float32)

    def init_all(self, latents, timesteps, reference_latent, audio, face_mask, speed):
        """Touches every submodule (the `method` for `init`)."""
        return self(
            latents, timesteps, self.encode_reference(reference_latent), audio, face_mask, speed
        )


def mask_rows(x: jax.Array, keep: jax.Array) -> jax.Array:
    """Zeroes the rows (leading axis) where `keep` is False."""
    return x * keep.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


def _unwrap(variables: Any) -> dict:
    """The REFERENCE and MOTION collections, sown 1-tuples (x,) -> x."""
    return {
        col: jax.tree_util.tree_map(
            lambda t: t[0], dict(variables[col]), is_leaf=lambda t: isinstance(t, tuple)
        )
        for col in (REFERENCE, MOTION)
    }


def encode_reference(model: nn.Module, params: Any, *inputs: jax.Array | None) -> dict:
    """`model.encode_reference(*inputs)` as a function of the params (once per video / clip):
    the ReferenceNet features of an EMO or Hallo model."""
    features, _ = model.apply(
        {"params": params},
        *inputs,
        method=type(model).encode_reference,
        mutable=[REFERENCE, MOTION],
    )
    return features


def audio_feature_shape(audio: AudioConfig) -> tuple[int, int]:
    """(layers, dim) of one frame's audio features."""
    return window_shape(audio)[1:]


def dummy_inputs(config: ModelConfig, frames: int | None = None, size: int | None = None) -> tuple:
    """Example inputs for `init_all`: batch 1, `frames` frames of `size` x `size` latents."""
    emo, audio = config.emo, config.audio
    f = frames or emo.n_frames
    s = size or 2 ** (len(config.unet.block_out_channels) - 1)
    c = config.unet.in_channels
    down = config.vae.factor  # mask pixels per latent (the face locator's too)
    window, layers, audio_dim = window_shape(audio)
    return (
        jnp.zeros((1, f, s, s, c)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1, s, s, c)),
        jnp.zeros((1, f, window, layers, audio_dim)),
        jnp.ones((1, down * s, down * s)),
        jnp.zeros((1, f)),
    )


def init_params(model: EMOModel, seed: int = 0) -> Any:
    """Fresh params (every new layer at its zero-initialised identity), reproducible by seed.

    The "rbg" PRNG compiles the thousands of initialisers several times faster than threefry.
    """
    inputs = dummy_inputs(model.config, 1)
    init = jax.jit(lambda key: model.init(key, *inputs, method=EMOModel.init_all)["params"])
    return init(jax.random.key(seed, impl="unsafe_rbg"))


def abstract_params(model: EMOModel) -> Any:
    """Param shapes, nothing allocated."""
    return jax.eval_shape(
        lambda: model.init(
            jax.random.key(0), *dummy_inputs(model.config, 1), method=EMOModel.init_all
        )
    )["params"]
