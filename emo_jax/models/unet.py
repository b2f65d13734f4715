"""UNet2DConditionModel (Stable Diffusion 1.5), channels-last, with diffusers' module names.

One definition serves the plain SD UNet, EMO's ReferenceNet (`write_reference`: every spatial
transformer block records the tokens entering its self-attention) and EMO's backbone
(`references`: those tokens become extra keys/values of the twin block's self-attention).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import HalloConfig, TemporalConfig, UNetConfig
from emo_jax.nn.activations import get_activation
from emo_jax.nn.audio_attention import AudioModule
from emo_jax.nn.conditions import Conditions
from emo_jax.nn.embeddings import TimestepEmbedding, timestep_embedding
from emo_jax.nn.resnet import Downsample2D, ResnetBlock2D, Upsample2D, conv, group_norm
from emo_jax.nn.temporal import TemporalTransformer
from emo_jax.nn.transformer import Transformer2DModel
from emo_jax.weights import pretrained

MOTION = "motion"  # the collection ReferenceNet writes its motion-frame features to

DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
MID_TYPES = ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D", None)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What one down/mid/up block holds (derived from the config as diffusers does)."""

    out_channels: int
    num_layers: int
    attention: bool
    heads: int = 1
    transformer_layers: int = 1
    only_cross_attention: bool = False
    resample: bool = False


def _per_block(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def validate(cfg: UNetConfig) -> None:
    """Raises ValueError for settings diffusers allows that emo_jax does not implement, or norm
    groups that do not divide the widths."""
    defaults = UNetConfig()
    unsupported = [
        f.name
        for f in dataclasses.fields(UNetConfig)
        if f.name
        in (
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "dual_cross_attention",
            "class_embed_type",
            "addition_embed_type",
            "addition_time_embed_dim",
            "num_class_embeds",
            "projection_class_embeddings_input_dim",
            "class_embeddings_concat",
            "cross_attention_norm",
            "time_cond_proj_dim",
        )
        and getattr(cfg, f.name) != getattr(defaults, f.name)
    ]
    if unsupported:
        raise ValueError(f"UNet settings not supported by emo_jax: {', '.join(unsupported)}")
    bad = [t for t in cfg.down_block_types if t not in DOWN_TYPES]
    bad += [t for t in cfg.up_block_types if t not in UP_TYPES]
    bad += [cfg.mid_block_type] if cfg.mid_block_type not in MID_TYPES else []
    if bad:
        raise ValueError(f"UNet block types not supported by emo_jax: {', '.join(map(str, bad))}")
    if cfg.time_embedding_type != "positional" or cfg.attention_type != "default":
        raise ValueError("UNet: only time_embedding_type=positional, attention_type=default")
    if isinstance(cfg.cross_attention_dim, tuple) and len(set(cfg.cross_attention_dim)) > 1:
        raise ValueError("UNet: per-block cross_attention_dim of different widths")
    if cfg.resnet_time_scale_shift not in ("default", "scale_shift"):
        raise ValueError(f"UNet: resnet_time_scale_shift={cfg.resnet_time_scale_shift!r}")
    pretrained.check_divides(cfg, "norm_num_groups")


def block_specs(
    cfg: UNetConfig,
) -> tuple[tuple[BlockSpec, ...], BlockSpec | None, tuple[BlockSpec, ...]]:
    """(down blocks, mid block, up blocks) as diffusers' `UNet2DConditionModel.__init__` builds them."""
    n = len(cfg.block_out_channels)
    heads = _per_block(cfg.num_attention_heads or cfg.attention_head_dim, n)
    layers = _per_block(cfg.layers_per_block, n)
    tlayers = _per_block(cfg.transformer_layers_per_block, n)
    only_cross = _per_block(cfg.only_cross_attention, n)
    down = tuple(
        BlockSpec(
            out_channels=cfg.block_out_channels[i],
            num_layers=layers[i],
            attention=t.startswith("CrossAttn"),
            heads=heads[i],
            transformer_layers=tlayers[i],
            only_cross_attention=only_cross[i],
            resample=i < n - 1,
        )
        for i, t in enumerate(cfg.down_block_types)
    )
    mid = None
    if cfg.mid_block_type is not None:
        mid = BlockSpec(
            out_channels=cfg.block_out_channels[-1],
            num_layers=1,
            attention=cfg.mid_block_type == "UNetMidBlock2DCrossAttn",
            heads=heads[-1],
            transformer_layers=tlayers[-1],
        )
    rev = lambda t: tuple(reversed(t))  # noqa: E731
    rtlayers = cfg.reverse_transformer_layers_per_block or rev(tlayers)
    up = tuple(
        BlockSpec(
            out_channels=rev(cfg.block_out_channels)[i],
            num_layers=rev(layers)[i] + 1,
            attention=t.startswith("CrossAttn"),
            heads=rev(heads)[i],
            transformer_layers=rtlayers[i],
            only_cross_attention=rev(only_cross)[i],
            resample=i < n - 1,
        )
        for i, t in enumerate(cfg.up_block_types)
    )
    return down, mid, up


class UNetBlock(nn.Module):
    """A down, mid or up block: per layer a resnet, a spatial transformer (if the block has
    attention) and a temporal module (if `temporal`), then resampling.

    Down blocks return (x, skips); up blocks consume their skips; the mid block has one more
    resnet than attentions. Names follow diffusers (`resnets_i`, `attentions_i`,
    `motion_modules_i`, `downsamplers_0` / `upsamplers_0`). With `write_reference` (ReferenceNet)
    the input of every temporal position is recorded as motion features (`MOTION`).
    """

    kind: str  # "down" | "mid" | "up"
    spec: BlockSpec
    cfg: UNetConfig
    write_reference: bool = False
    temporal: TemporalConfig | None = None
    temporal_heads: int = 8
    speed: bool = False
    zero_init_cross_out: bool = False
    upsample_size: tuple[int, int] | None = None
    hallo: HalloConfig | None = None
    level: int = 0  # Hallo: the region-mask level of this block's resolution
    audio_widths: tuple[int, ...] = ()  # Hallo: per layer, the width its audio module uses
    dtype: Any = jnp.float32
    attention_impl: str = "xla"

    def resnet(self, i: int, x: jax.Array, temb: jax.Array) -> jax.Array:
        cfg = self.cfg
        return ResnetBlock2D(
            self.spec.out_channels,
            groups=cfg.norm_num_groups,
            eps=cfg.norm_eps,
            act_fn=cfg.act_fn,
            time_embedding_norm=cfg.resnet_time_scale_shift,
            output_scale_factor=cfg.mid_block_scale_factor if self.kind == "mid" else 1.0,
            dtype=self.dtype,
            name=f"resnets_{i}",
        )(x, temb)

    def attention(self, i: int, x: jax.Array, context, conditions: Conditions) -> jax.Array:
        cfg, spec = self.cfg, self.spec
        name = f"attentions_{i}"
        return Transformer2DModel(
            spec.heads,
            spec.out_channels // spec.heads,
            num_layers=spec.transformer_layers,
            norm_num_groups=cfg.norm_num_groups,
            use_linear_projection=cfg.use_linear_projection,
            cross_attention=cfg.cross_attention_dim is not None,
            only_cross_attention=spec.only_cross_attention,
            write_reference=self.write_reference,
            zero_init_cross_out=self.zero_init_cross_out,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name=name,
        )(x, context, conditions.at(name))

    def audio_module(self, i: int, x: jax.Array, conditions: Conditions) -> jax.Array:
        """Hallo's audio module i, after the spatial transformer (audio tokens, region masks
        and motion_scale from `conditions`)."""
        hallo, spec, cond = self.hallo, self.spec, conditions
        if hallo is None or not spec.attention or self.write_reference:
            return x
        regions = self.kind in hallo.audio_blocks and self.level in hallo.audio_depths
        return AudioModule(
            spec.heads,
            self.audio_widths[i] // spec.heads,
            norm_num_groups=self.cfg.norm_num_groups,
            regions=regions,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name=f"audio_modules_{i}",
        )(
            x,
            cond.audio_tokens,
            cond.region_masks[self.level] if regions else None,
            cond.motion_scale,
        )

    def motion_module(self, i: int, x: jax.Array, conditions: Conditions) -> jax.Array:
        """Temporal module i (with the motion frames' features recorded at `motion_i`).

        Hallo runs its denoiser in training mode, where the temporal modules of blocks without
        attention never run: they exist (their weights are in the checkpoint) but are skipped."""
        name = f"motion_{i}"
        if self.write_reference:
            self.sow(MOTION, name, x)
        if self.temporal is None:
            return x
        skip = self.hallo is not None and not self.spec.attention
        if skip and not self.is_initializing():
            return x
        y = TemporalTransformer(
            self.temporal_heads,
            num_layers=self.temporal.motion_transformer_layers_per_block,
            norm_num_groups=self.temporal.motion_norm_num_groups,
            max_positions=self.temporal.motion_max_seq_length,
            speed=self.speed,
            norm_per_frame=self.temporal.norm_per_frame,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            name=f"motion_modules_{i}",
        )(x, conditions.at(name))
        return x if skip else y

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        temb: jax.Array,
        context: jax.Array | None,
        conditions: Conditions,
        skips: tuple[jax.Array, ...] = (),
    ):
        spec = self.spec
        if self.kind == "mid":
            x = self.resnet(0, x, temb)
            if spec.attention:
                x = self.attention(0, x, context, conditions)
            x = self.audio_module(0, x, conditions)
            x = self.motion_module(0, x, conditions)
            return self.resnet(1, x, temb)
        outputs = []
        for i in range(spec.num_layers):
            if self.kind == "up":
                x = jnp.concatenate([x, skips[-1 - i]], axis=-1)  # (B, H, W, C + C_skip)
            x = self.resnet(i, x, temb)
            if spec.attention:
                x = self.attention(i, x, context, conditions)
            x = self.audio_module(i, x, conditions)
            x = self.motion_module(i, x, conditions)
            outputs.append(x)
        if spec.resample and self.kind == "down":
            x = Downsample2D(
                spec.out_channels, self.cfg.downsample_padding, self.dtype, name="downsamplers_0"
            )(x)
            outputs.append(x)
        if spec.resample and self.kind == "up":
            x = Upsample2D(spec.out_channels, self.dtype, name="upsamplers_0")(
                x, self.upsample_size
            )
        return (x, tuple(outputs)) if self.kind == "down" else x


class UNet2DConditionModel(nn.Module):
    """SD UNet: (B, H, W, C) latents, timesteps (B,) or scalar, context (B, S, D) -> (B, H, W, C).

    EMO options (all off for the plain SD UNet):
      write_reference: ReferenceNet: record the spatial transformers' self-attention inputs
        (`REFERENCE`) and the temporal positions' features (`MOTION`); the output head
        (`conv_norm_out`, `conv_out`), which nothing reads, is not built.
      temporal / speed: backbone temporal modules (AnimateDiff), with the speed layer.
      zero_init_cross_out: the cross-attention (audio-attention) output starts at zero.
      hallo: Hallo's denoiser: audio modules after the spatial transformers (reading
        `Conditions.audio_tokens`, `region_masks`, `motion_scale`); temporal modules only in
        blocks with attention (emo_jax.models.hallo).
      remat: rematerialise every block in the backward pass.
    Call inputs for video: frames folded into the batch (B*F, H, W, C) with `conditions`
    (`Conditions`: F, the ReferenceNet's tokens and motion features, speed tokens, ...);
    `sample_residual` (B*F, H, W, C0) added after `conv_in` (face locator).
    """

    config: UNetConfig
    write_reference: bool = False
    temporal: TemporalConfig | None = None
    speed: bool = False
    zero_init_cross_out: bool = False
    hallo: HalloConfig | None = None
    remat: bool = False
    dtype: Any = jnp.float32
    attention_impl: str = "xla"  # one of config.ATTENTION

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array,
        encoder_hidden_states: jax.Array | None = None,
        conditions: Conditions | None = None,
        sample_residual: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        down_specs, mid_spec, up_specs = block_specs(cfg)
        n_blocks = len(cfg.block_out_channels)
        theads = (
            _per_block(self.temporal.motion_num_attention_heads, n_blocks)
            if self.temporal
            else (8,) * n_blocks
        )
        batch = sample.shape[0]
        sample = sample.astype(self.dtype)
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (batch,))
        t_emb = timestep_embedding(
            timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
        ).astype(self.dtype)
        emb = TimestepEmbedding(
            cfg.time_embedding_dim or cfg.block_out_channels[0] * 4,
            act_fn=cfg.act_fn,
            post_act_fn=cfg.timestep_post_act,
            dtype=self.dtype,
            name="time_embedding",
        )(t_emb)
        if cfg.time_embedding_act_fn:
            emb = get_activation(cfg.time_embedding_act_fn)(emb)
        context = encoder_hidden_states
        if context is not None:
            context = context.astype(self.dtype)
        conditions = conditions or Conditions()
        block_cls = nn.remat(UNetBlock) if self.remat else UNetBlock
        widths = audio_widths(cfg, down_specs, up_specs)

        def block(kind, spec, name, heads, x, skips=(), size=None, level=0):
            return block_cls(
                kind,
                spec,
                cfg,
                write_reference=self.write_reference,
                temporal=self.temporal
                if kind != "mid" or self.temporal is None or self.temporal.use_motion_mid_block
                else None,
                temporal_heads=heads,
                speed=self.speed,
                zero_init_cross_out=self.zero_init_cross_out,
                upsample_size=size,
                hallo=self.hallo,
                level=level,
                audio_widths=widths[name],
                dtype=self.dtype,
                attention_impl=self.attention_impl,
                name=name,
            )(x, emb, context, conditions.at(name), skips)

        x = conv(cfg.block_out_channels[0], cfg.conv_in_kernel, self.dtype, "conv_in")(sample)
        if sample_residual is not None:
            x = x + sample_residual.astype(self.dtype)
        skips = [x]
        for i, spec in enumerate(down_specs):
            x, out = block("down", spec, f"down_blocks_{i}", theads[i], x, level=i)
            skips.extend(out)
        if mid_spec is not None:
            x = block("mid", mid_spec, "mid_block", theads[-1], x, level=n_blocks - 1)
        for i, spec in enumerate(up_specs):
            own, skips = skips[-spec.num_layers :], skips[: -spec.num_layers]
            size = tuple(skips[-1].shape[1:3]) if skips else None
            x = block(
                "up", spec, f"up_blocks_{i}", theads[::-1][i], x, tuple(own), size, n_blocks - 1 - i
            )
        if self.write_reference:
            return x
        if cfg.norm_num_groups is not None:
            x = group_norm(cfg.norm_num_groups, cfg.norm_eps, self.dtype, "conv_norm_out")(x)
            x = get_activation(cfg.act_fn)(x)
        return conv(cfg.out_channels, cfg.conv_out_kernel, self.dtype, "conv_out")(x)

    @classmethod
    def from_pretrained(cls, folder, dtype: Any = None) -> tuple[UNet2DConditionModel, Any]:
        """(module, params) from a diffusers `UNet2DConditionModel` folder."""
        return pretrained.from_pretrained(folder, UNET_FORMAT, dtype)

    @staticmethod
    def save_pretrained(params: Any, config: UNetConfig, folder) -> None:
        """Writes a diffusers `UNet2DConditionModel` folder."""
        pretrained.save_pretrained(params, config, folder, UNET_FORMAT)


def audio_widths(
    cfg: UNetConfig, down: tuple[BlockSpec, ...], up: tuple[BlockSpec, ...]
) -> dict[str, tuple[int, ...]]:
    """{block name: per layer, the width Hallo's audio module attends in}: the layer's input
    width in down blocks, the block's `in_channels` (the next-deeper width) in up blocks."""
    outs = cfg.block_out_channels
    n = len(outs)
    out = {"mid_block": (outs[-1],)}
    for i, spec in enumerate(down):
        first = outs[max(i - 1, 0)]
        out[f"down_blocks_{i}"] = (first,) + (spec.out_channels,) * (spec.num_layers - 1)
    for i, spec in enumerate(up):
        out[f"up_blocks_{i}"] = (outs[::-1][min(i + 1, n - 1)],) * spec.num_layers
    return out


def dummy_inputs(cfg: UNetConfig) -> tuple:
    """Smallest inputs that build every parameter."""
    size = 2 ** (len(cfg.block_out_channels) - 1)
    ctx_dim = cfg.cross_attention_dim
    ctx_dim = ctx_dim[0] if isinstance(ctx_dim, tuple) else ctx_dim
    ctx = None if ctx_dim is None else jnp.zeros((1, 1, ctx_dim))
    return jnp.zeros((1, size, size, cfg.in_channels)), jnp.zeros((1,), jnp.int32), ctx


UNET_FORMAT = pretrained.FolderFormat(
    class_name="UNet2DConditionModel",
    config_cls=UNetConfig,
    build=lambda cfg, dtype: UNet2DConditionModel(cfg, dtype=dtype or jnp.float32),
    dummy_inputs=dummy_inputs,
    weight_stem="diffusion_pytorch_model",
    validate=validate,
)
