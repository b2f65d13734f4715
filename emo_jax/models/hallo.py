"""Hallo (fudan-generative-vision/hallo) as a family of the EMO network: the same UNet for the
ReferenceNet and the denoiser, with what Hallo adds switched on by `model.emo.family: hallo`
(sizes in `model.hallo`):

- a face-identity embedding through `image_proj` to tokens that are the cross-attention context
  of both UNets (the unconditional branch: the projection of a zero embedding);
- audio modules after every spatial transformer of the denoiser (emo_jax.nn.audio_attention),
  driven by the audio tokens, the full / face / lip region masks and `motion_scale`;
- a 3-channel face-region image into the face locator;
- Hallo's reference bank, quirks included (its weights were trained and are run with them):
  the ReferenceNet runs on [reference, motion frames] twice, item j with the face tokens of
  branch j % 2; its tokens are rounded to float16; denoiser row i (of the guided batch) reads
  the reference copy i % 2; the unconditional branch sees no reference; the motion-frame
  features are the ReferenceNet's LayerNorm'd tokens of the same layer;
- the denoiser as Hallo runs it (its training-mode branch): motion frames enter the temporal
  modules of the blocks with attention; those of the blocks without attention never run.

    conds = model.apply(p, face_emb, audio, region, method=HalloModel.conditions)
    features = encode_reference(model, p, stack, conds["context"])  # models.emo; once per clip
    out = model.apply(p, latents, t, features, conds, masks, motion_scale)  # per step

Batches are Hallo's guided pair for one video: row 0 unconditional (no face embedding, audio,
face locator or reference), row 1 conditional.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import ModelConfig
from emo_jax.models.audio_proj import AudioProjection
from emo_jax.models.emo import compute_dtype
from emo_jax.models.face_locator import FaceLocator
from emo_jax.models.image_proj import ImageProjection
from emo_jax.models.unet import UNet2DConditionModel
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.transformer import REFERENCE

BANK_DTYPE = jnp.float16  # Hallo's ReferenceAttentionControl.update() casts the bank to it


class HalloModel(nn.Module):
    """Hallo's Net: reference_unet, denoising_unet, face_locator, image_proj, audio_proj."""

    config: ModelConfig

    def setup(self) -> None:
        cfg, emo, hallo = self.config, self.config.emo, self.config.hallo
        dtype = compute_dtype(cfg)
        self.reference_unet = UNet2DConditionModel(
            cfg.unet,
            write_reference=True,
            remat=emo.remat,
            dtype=dtype,
            attention_impl=cfg.attention,
        )
        self.denoising_unet = UNet2DConditionModel(
            cfg.unet,
            temporal=emo.temporal,
            hallo=hallo,
            remat=emo.remat,
            dtype=dtype,
            attention_impl=cfg.attention,
        )
        self.image_proj = ImageProjection(
            cfg.unet.cross_attention_dim, hallo.face_tokens, dtype=dtype
        )
        self.audio_proj = AudioProjection(
            output_dim=hallo.audio_attention_dim,
            hidden_dim=cfg.audio.proj_hidden_dim,
            num_tokens=cfg.audio.proj_tokens,
            dtype=dtype,
        )
        self.face_locator = FaceLocator(
            cfg.unet.block_out_channels[0], emo.face_locator_channels, dtype=dtype
        )

    def face_tokens(self, face_emb: jax.Array) -> jax.Array:
        """(1, E) embedding -> (2, T, D): [tokens of a zero embedding; tokens of `face_emb`]."""
        return self.image_proj(jnp.concatenate([jnp.zeros_like(face_emb), face_emb]))

    def conditions(
        self, face_emb: jax.Array, audio: jax.Array, face_region: jax.Array
    ) -> dict[str, jax.Array]:
        """The guided pair's conditions, as Hallo's pipeline forms them (row 0 unconditional):
        face_emb (1, E); audio (1, F, 2m+1, layers, dim) windows; face_region (1, H, W, 3) in
        [0, 1] -> {"context" (2, T, D) face tokens, "audio" (2, F, K, Da) audio tokens,
        "residual" (2, F, h, w, C0) face-locator features}."""
        f = audio.shape[1]
        tokens = self.audio_proj(audio)  # (1, F, K, Da)
        region = self.face_locator(face_region)  # (1, h, w, C0)
        region = jnp.broadcast_to(region[:, None], (1, f, *region.shape[1:]))
        return {
            "context": self.face_tokens(face_emb),
            "audio": jnp.concatenate([jnp.zeros_like(tokens), tokens]),
            "residual": jnp.concatenate([jnp.zeros_like(region), region]),
        }

    def encode_reference(self, stack: jax.Array, context: jax.Array) -> dict:
        """Hallo's reference bank for one clip: `stack` (1+M, h, w, 4) = the reference latent
        and the M motion-frame latents; `context` (2, T, D) the face tokens of the guided pair.
        Returns {"reference": per spatial transformer block (2, S, C), the two copies;
        "motion": per temporal position (2*M, h', w', C)}. Needs the REFERENCE collection
        mutable (see `encode_reference`)."""
        n = stack.shape[0]
        x = jnp.concatenate([stack, stack])  # (2(1+M), h, w, 4)
        self.reference_unet(x, jnp.zeros((2 * n,), jnp.int32), context[jnp.arange(2 * n) % 2])
        sown = jax.tree_util.tree_map(
            lambda t: t[0],
            dict(self.reference_unet.variables[REFERENCE]),
            is_leaf=lambda t: isinstance(t, tuple),
        )
        bank = jax.tree_util.tree_map(
            lambda t: t.astype(BANK_DTYPE).astype(t.dtype).reshape(2, n, *t.shape[1:]), sown
        )  # (2, 1+M, S, C) per block
        reference = jax.tree_util.tree_map(lambda t: t[:, 0], bank)
        motion = {}
        for block, attentions in bank.items():
            entries = {}
            for name, tree in attentions.items():
                t = tree["transformer_blocks_0"]["tokens"][:, 1:]  # (2, M, S, C)
                side = round(t.shape[2] ** 0.5)
                i = name.split("_")[-1]
                entries[f"motion_{i}"] = t.reshape(2 * (n - 1), side, side, t.shape[-1])
            motion[block] = entries
        return {"reference": reference, "motion": motion}

    def __call__(
        self,
        latents: jax.Array,
        timesteps: jax.Array,
        features: dict,
        conds: dict[str, jax.Array],
        masks: tuple,
        motion_scale: jax.Array,
    ) -> jax.Array:
        """Hallo's denoising_unet on the guided pair: latents (2, F, h, w, 4) -> (2, F, h, w, 4).

        features from `encode_reference`; conditions from `conditions`; masks per level k
        (latent side / 2^k) the (full, face, lip) masks (2F, L_k^2); motion_scale (3,)."""
        b, f, h, w, c = latents.shape
        x = latents.reshape(b * f, h, w, c)  # (2F, h, w, 4)
        context = jnp.repeat(conds["context"], f, axis=0)  # (2F, T, D)
        tokens = conds["audio"].reshape(b * f, *conds["audio"].shape[2:])
        residual = conds["residual"].reshape(b * f, *conds["residual"].shape[2:])
        rows = jnp.arange(b * f) % 2  # Hallo's tiled bank: row i reads reference copy i % 2
        references = jax.tree_util.tree_map(lambda t: t[rows], features["reference"])
        cond = Conditions(
            num_frames=f,
            references=references,
            reference_keep=jnp.arange(b) > 0,
            motion=features["motion"],
            audio_tokens=tokens,
            region_masks=masks,
            motion_scale=jnp.asarray(motion_scale, jnp.float32),
        )
        out = self.denoising_unet(x, timesteps, context, cond, sample_residual=residual)
        return out.reshape(b, f, h, w, -1).astype(jnp.float32)


def abstract_params(model: HalloModel) -> Any:
    """Param shapes of a Hallo model, nothing allocated."""
    cfg = model.config
    n = len(cfg.unet.block_out_channels)
    s = 2 ** (n - 1)
    down = 2 ** (len(cfg.emo.face_locator_channels) - 1)
    m = cfg.emo.n_motion_frames
    window = 2 * cfg.audio.window + 1
    stack = jnp.zeros((1 + m, s, s, cfg.unet.in_channels))
    emb = jnp.zeros((1, cfg.hallo.face_embed_dim))
    masks = tuple(tuple(jnp.ones((2, (s >> k) ** 2)) for _ in range(3)) for k in range(n))

    def init(key):
        def all_parts(mdl: HalloModel):
            region = jnp.zeros((1, down * s, down * s, cfg.hallo.face_locator_in_channels))
            conds = mdl.conditions(
                emb,
                jnp.zeros((1, 1, window, cfg.hallo.audio_layers, cfg.hallo.audio_width)),
                region,
            )
            features = mdl.encode_reference(stack, conds["context"])
            latents = jnp.zeros((2, 1, s, s, cfg.unet.in_channels))
            return mdl(latents, jnp.zeros((), jnp.int32), features, conds, masks, jnp.ones((3,)))

        return model.init(key, method=all_parts)["params"]

    return jax.eval_shape(init, jax.random.key(0))


def apply_part(config: ModelConfig, params: Any, name: str, x: jax.Array) -> jax.Array:
    """One of `image_proj`, `audio_proj`, `face_locator` on its own input."""
    return HalloModel(config).apply({"params": params}, x, method=lambda m, x: getattr(m, name)(x))
