"""The AnimateDiff motion modules on their own, as diffusers' `MotionAdapter` holds them: the
format in which temporal modules are published and exported."""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from emo_jax.config import EMOConfig, MotionAdapterConfig, UNetConfig
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.temporal import TemporalTransformer
from emo_jax.nn.transformer import sinusoidal_positions
from emo_jax.weights import pretrained


def _per_block(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


class MotionModules(nn.Module):
    """One block's `motion_modules_j`."""

    channels: int
    heads: int
    count: int
    layers: int
    norm_num_groups: int
    max_positions: int

    @nn.compact
    def __call__(self) -> None:
        for j in range(self.count):
            TemporalTransformer(
                self.heads,
                self.layers,
                self.norm_num_groups,
                self.max_positions,
                name=f"motion_modules_{j}",
            )(jnp.zeros((1, 1, 1, self.channels)), Conditions())


class MotionAdapterModel(nn.Module):
    """`down_blocks_i`, `mid_block`, `up_blocks_i`, each with its `motion_modules_j`: the same
    tree as the temporal modules inside EMO's backbone. A container, as diffusers' is:
    calling it only builds the parameters."""

    config: MotionAdapterConfig

    @nn.compact
    def __call__(self) -> None:
        cfg = self.config
        n = len(cfg.block_out_channels)
        heads = _per_block(cfg.motion_num_attention_heads, n)
        group = lambda c, h, count, layers, name: MotionModules(  # noqa: E731
            c, h, count, layers, cfg.motion_norm_num_groups, cfg.motion_max_seq_length, name=name
        )()
        t = cfg.motion_transformer_layers_per_block
        for i, c in enumerate(cfg.block_out_channels):
            group(c, heads[i], cfg.motion_layers_per_block, t, f"down_blocks_{i}")
        if cfg.use_motion_mid_block:
            group(
                cfg.block_out_channels[-1],
                heads[-1],
                cfg.motion_mid_block_layers_per_block,
                cfg.motion_transformer_layers_per_mid_block,
                "mid_block",
            )
        for i, c in enumerate(reversed(cfg.block_out_channels)):
            group(c, heads[::-1][i], cfg.motion_layers_per_block + 1, t, f"up_blocks_{i}")


def adapter_config(unet: UNetConfig, emo: EMOConfig) -> MotionAdapterConfig:
    """The MotionAdapter config of an EMO backbone's temporal modules."""
    t = emo.temporal
    layers = unet.layers_per_block
    if isinstance(layers, tuple):
        if len(set(layers)) > 1:
            raise ValueError("a MotionAdapter needs the same layers_per_block in every block")
        layers = layers[0]
    return MotionAdapterConfig(
        block_out_channels=unet.block_out_channels,
        motion_layers_per_block=layers,
        motion_transformer_layers_per_block=t.motion_transformer_layers_per_block,
        motion_transformer_layers_per_mid_block=t.motion_transformer_layers_per_block,
        motion_num_attention_heads=t.motion_num_attention_heads,
        motion_norm_num_groups=t.motion_norm_num_groups,
        motion_max_seq_length=t.motion_max_seq_length,
        use_motion_mid_block=t.use_motion_mid_block,
    )


def position_tables(cfg: MotionAdapterConfig, state_dict: dict) -> dict:
    """The fixed position tables diffusers stores as `...transformer_blocks.N.pos_embed.pe`
    (`state_dict` values need only a `.shape`)."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"(.*transformer_blocks\.\d+)\.norm1\.weight$", k)
        if m:
            table = sinusoidal_positions(cfg.motion_max_seq_length, v.shape[0])
            out[f"{m.group(1)}.pos_embed.pe"] = np.asarray(table)[None]
    return out


def drop_position_tables(state_dict: dict) -> dict:
    """A loaded adapter without its position tables (emo_jax computes them)."""
    return {k: v for k, v in state_dict.items() if not k.endswith("pos_embed.pe")}


def validate(cfg: MotionAdapterConfig) -> None:
    """Raises ValueError for adapters emo_jax does not implement, or norm groups or heads that
    do not divide the widths."""
    if cfg.conv_in_channels:
        raise ValueError("MotionAdapter with conv_in_channels (SparseCtrl-style) is not supported")
    pretrained.check_divides(cfg, "motion_norm_num_groups")
    pretrained.check_divides(cfg, "motion_num_attention_heads")


MOTION_ADAPTER_FORMAT = pretrained.FolderFormat(
    class_name="MotionAdapter",
    config_cls=MotionAdapterConfig,
    build=lambda cfg, dtype: MotionAdapterModel(cfg),
    dummy_inputs=lambda cfg: (),
    weight_stem="diffusion_pytorch_model",
    validate=validate,
    adapt_state_dict=drop_position_tables,
    extra_tensors=position_tables,
)
