"""Original (non-diffusers) checkpoint layouts, as key tables to and from diffusers' names:

- Stable Diffusion 1.5 single files (`model.diffusion_model.*`, `first_stage_model.*`), the
  layout of the LDM code base, with or without EMA copies (`model_ema.*`);
- AnimateDiff motion modules (`mm_sd_v15_v2.ckpt`: `...motion_modules.N.temporal_transformer.*`).

Each table maps a diffusers key to its original key (plus a reshape for the VAE's 1x1-conv
attention weights), so reading and writing use the same table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from emo_jax.config import UNetConfig, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def _unet_modules(cfg: UNetConfig) -> list[tuple[str, str, str]]:
    """(diffusers module prefix, LDM module prefix, kind) for every UNet module."""
    n = len(cfg.block_out_channels)
    layers = cfg.layers_per_block
    layers = layers if isinstance(layers, tuple) else (layers,) * n
    if len(set(layers)) != 1:
        raise ValueError("the LDM layout needs the same layers_per_block in every block")
    lpb = layers[0]
    out = [
        ("time_embedding.linear_1", "time_embed.0", "plain"),
        ("time_embedding.linear_2", "time_embed.2", "plain"),
        ("conv_in", "input_blocks.0.0", "plain"),
        ("conv_norm_out", "out.0", "plain"),
        ("conv_out", "out.2", "plain"),
        ("mid_block.resnets.0", "middle_block.0", "resnet"),
        ("mid_block.attentions.0", "middle_block.1", "plain"),
        ("mid_block.resnets.1", "middle_block.2", "resnet"),
    ]
    for b, kind in enumerate(cfg.down_block_types):
        for j in range(lpb):
            i = 1 + b * (lpb + 1) + j
            out.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{i}.0", "resnet"))
            if kind.startswith("CrossAttn"):
                out.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{i}.1", "plain"))
        if b < n - 1:
            i = (b + 1) * (lpb + 1)
            out.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{i}.0.op", "plain"))
    for b, kind in enumerate(cfg.up_block_types):
        attn = kind.startswith("CrossAttn")
        for j in range(lpb + 1):
            i = b * (lpb + 1) + j
            out.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{i}.0", "resnet"))
            if attn:
                out.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{i}.1", "plain"))
        if b < n - 1:
            i = b * (lpb + 1) + lpb
            out.append(
                (
                    f"up_blocks.{b}.upsamplers.0.conv",
                    f"output_blocks.{i}.{2 if attn else 1}.conv",
                    "plain",
                )
            )
    return out


def _vae_modules(cfg: VAEConfig) -> list[tuple[str, str, str]]:
    n = len(cfg.block_out_channels)
    out = [("quant_conv", "quant_conv", "plain"), ("post_quant_conv", "post_quant_conv", "plain")]
    for side in ("encoder", "decoder"):
        out += [
            (f"{side}.conv_in", f"{side}.conv_in", "plain"),
            (f"{side}.conv_out", f"{side}.conv_out", "plain"),
            (f"{side}.conv_norm_out", f"{side}.norm_out", "plain"),
            (f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", "vae_resnet"),
            (f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", "vae_attention"),
            (f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", "vae_resnet"),
        ]
    for b in range(n):
        for j in range(cfg.layers_per_block):
            out.append(
                (
                    f"encoder.down_blocks.{b}.resnets.{j}",
                    f"encoder.down.{b}.block.{j}",
                    "vae_resnet",
                )
            )
        if b < n - 1:
            out.append(
                (
                    f"encoder.down_blocks.{b}.downsamplers.0.conv",
                    f"encoder.down.{b}.downsample.conv",
                    "plain",
                )
            )
        u = n - 1 - b  # the LDM decoder numbers its levels from the bottom
        for j in range(cfg.layers_per_block + 1):
            out.append(
                (f"decoder.up_blocks.{b}.resnets.{j}", f"decoder.up.{u}.block.{j}", "vae_resnet")
            )
        if b < n - 1:
            out.append(
                (
                    f"decoder.up_blocks.{b}.upsamplers.0.conv",
                    f"decoder.up.{u}.upsample.conv",
                    "plain",
                )
            )
    return out


def _inner(rest: str, kind: str) -> str:
    table = {"resnet": _UNET_RESNET, "vae_resnet": (("conv_shortcut", "nin_shortcut"),)}.get(
        kind, _VAE_ATTENTION if kind == "vae_attention" else ()
    )
    for ours, theirs in table:
        if rest == ours or rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    return rest


def key_table(
    diffusers_keys: Iterable[str], modules: list[tuple[str, str, str]], prefix: str
) -> dict:
    """{diffusers key: original key} for every key (longest module prefix wins)."""
    by_len = sorted(modules, key=lambda m: -len(m[0]))
    table = {}
    for key in diffusers_keys:
        for ours, theirs, kind in by_len:
            if key.startswith(ours + "."):
                table[key] = prefix + theirs + "." + _inner(key[len(ours) + 1 :], kind)
                break
        else:
            raise ValueError(f"no LDM name for diffusers key {key}")
    return table


def unet_table(keys: Iterable[str], cfg: UNetConfig) -> dict:
    """diffusers UNet keys -> `model.diffusion_model.*` keys."""
    return key_table(keys, _unet_modules(cfg), UNET_PREFIX)


def vae_table(keys: Iterable[str], cfg: VAEConfig) -> dict:
    """diffusers VAE keys -> `first_stage_model.*` keys."""
    return key_table(keys, _vae_modules(cfg), VAE_PREFIX)


def is_vae_attention_weight(key: str) -> bool:
    """VAE mid-block attention projections: Linear in diffusers, 1x1 Conv2d in LDM."""
    return bool(re.search(r"mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", key))


def to_original(state_dict: dict, table: dict) -> dict:
    """diffusers-named state dict -> original layout."""
    out = {}
    for k, v in state_dict.items():
        out[table[k]] = v[:, :, None, None] if is_vae_attention_weight(k) else v
    return out


def from_original(
    state_dict: dict, table: dict, source: str = "checkpoint"
) -> tuple[dict, list[str]]:
    """Original layout -> diffusers names for the keys in `table`; (state dict, missing keys)."""
    out, missing = {}, []
    for ours, theirs in table.items():
        if theirs not in state_dict:
            missing.append(theirs)
            continue
        v = state_dict[theirs]
        if is_vae_attention_weight(ours) and np.ndim(v) == 4:
            v = v[:, :, 0, 0]
        out[ours] = v
    return out, missing


def ema_keys(state_dict: dict) -> dict:
    """The EMA copy of an LDM checkpoint (`model_ema.diffusion_modelinput_blocks00weight` style)
    as `model.diffusion_model.*` keys, if it has one (else the dict unchanged)."""
    if sum(k.startswith("model_ema.") for k in state_dict) <= 100:
        return state_dict
    out = dict(state_dict)
    for k in state_dict:
        if k.startswith(UNET_PREFIX):
            flat = "model_ema." + "".join(k.split(".")[1:])
            if flat in state_dict:
                out[k] = state_dict[flat]
    return out


# AnimateDiff: diffusers key fragment <-> original key fragment.
_ANIMATEDIFF = (
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
)


def animatediff_to_original(key: str) -> str:
    """A diffusers `MotionAdapter` key -> the original AnimateDiff key."""
    key = re.sub(r"(motion_modules\.\d+\.)", r"\1temporal_transformer.", key)
    for ours, theirs in _ANIMATEDIFF:
        key = key.replace(ours, theirs)
    return key


def animatediff_from_original(state_dict: dict) -> dict:
    """Original AnimateDiff motion-module state dict -> `MotionAdapter` names (position
    tables `pos_encoder.pe` dropped: emo_jax computes them)."""
    out = {}
    for k, v in state_dict.items():
        if "pos_encoder" in k:
            continue
        new = k.replace(".temporal_transformer", "")
        for ours, theirs in _ANIMATEDIFF:
            new = new.replace(theirs, ours)
        out[new] = v
    return out


def is_animatediff_original(keys: Iterable[str]) -> bool:
    """True for the original AnimateDiff layout."""
    return any(".temporal_transformer." in k for k in keys)


def is_ldm_single_file(keys: Iterable[str]) -> bool:
    """True for an SD single-file checkpoint."""
    return any(k.startswith(UNET_PREFIX) or k.startswith(VAE_PREFIX) for k in keys)
