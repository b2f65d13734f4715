"""transformers' `Wav2Vec2Model` in Flax linen (inference), with transformers' parameter names.

Both encoder variants (`do_stable_layer_norm` false: post-LN, as wav2vec2-base; true: pre-LN, as
the large "lv60" models) and both feature encoders (`feat_extract_norm` "group": GroupNorm on
the first conv only; "layer": LayerNorm after every conv). Dropout, LayerDrop and SpecAugment
are training-only and left out: EMO keeps the audio encoder frozen.

Outputs match transformers 5.x: `hidden_states` holds the encoder's input (after the
positional conv, and after the encoder LayerNorm in the post-LN variant) and every layer's
output; `last_hidden_state` is the last layer's output, after the final LayerNorm in the
pre-LN variant.

With an `attention_mask` (B, N) over the samples, padded samples do not reach the valid frames:
the GroupNorm statistics, the positional conv and the attention keys see the valid frames
only, so the valid frames equal a run on the unpadded input. (transformers masks the
positional conv and the attention too, but not the GroupNorm.)

Attention is local to this file: its parameters are transformers' `q_proj/k_proj/v_proj/
out_proj` and it masks keys by length, which the diffusers-named `emo_jax.nn.attention` does not.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from emo_jax.config import AudioConfig, ConfigError, Wav2Vec2Config
from emo_jax.nn.activations import ACTIVATIONS
from emo_jax.weights import pretrained
from emo_jax.weights.convert import WEIGHT_NORM, apply_renames, rename_keys

# transformers' ACT2FN names (those without parameters) beyond the diffusers ones in
# emo_jax.nn.activations.
_gelu_tanh = lambda x: jax.nn.gelu(x, approximate=True)  # noqa: E731
TRANSFORMERS_ACTIVATIONS = {
    **ACTIVATIONS,
    **dict.fromkeys(("gelu_new", "gelu_fast", "gelu_accurate"), _gelu_tanh),
    **dict.fromkeys(("gelu_pytorch_tanh", "gelu_python_tanh"), _gelu_tanh),
    "gelu_python": ACTIVATIONS["gelu"],
    "gelu_10": lambda x: jnp.clip(jax.nn.gelu(x, approximate=False), -10, 10),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),
    "relu6": jax.nn.relu6,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "hardswish": jax.nn.hard_swish,
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
}

# Prefix of the base model's keys in task checkpoints (Wav2Vec2ForCTC, ForPreTraining, ...).
BASE_PREFIX = "wav2vec2."

# config.json keys that are bookkeeping or settings of old transformers versions that only
# mattered in training; they are dropped on load (keys starting with "_" are dropped too).
IGNORED_KEYS = (
    "architectures",
    "transformers_version",
    "model_type",
    "dtype",
    "torch_dtype",
    "num_feat_extract_layers",
    "id2label",
    "label2id",
    "problem_type",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tie_word_embeddings",
    "use_cache",
    "gradient_checkpointing",
    "feat_extract_dropout",
    "hidden_dropout_prob",
    "freeze_feat_extract_train",
    "mask_channel_length",
    "mask_channel_min_space",
    "mask_channel_other",
    "mask_channel_prob",
    "mask_channel_selection",
    "mask_time_min_space",
    "mask_time_other",
    "mask_time_selection",
    "no_mask_channel_overlap",
    "no_mask_time_overlap",
)


class Wav2Vec2Output(NamedTuple):
    last_hidden_state: jax.Array  # (B, T, hidden_size)
    hidden_states: tuple[jax.Array, ...]  # num_hidden_layers + 1 entries of (B, T, hidden_size)


def conv_output_length(cfg: Wav2Vec2Config, num_samples: Any) -> Any:
    """Frames out of the feature encoder for `num_samples` input samples (int or array)."""
    for k, s in zip(cfg.conv_kernel, cfg.conv_stride):
        num_samples = (num_samples - k) // s + 1
    return num_samples


def receptive_field(cfg: Wav2Vec2Config) -> tuple[int, int]:
    """(hop, window) in samples: feature frame j sees samples [j*hop, j*hop + window)."""
    window = 1
    for k, s in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride)):
        window = (window - 1) * s + k
    return math.prod(cfg.conv_stride), window


def wav2vec2_folder(cfg: AudioConfig) -> Path:
    """The wav2vec2 folder an audio config names (an error if it names another encoder or none)."""
    if cfg.encoder != "wav2vec2":
        raise ConfigError(f"model.audio.encoder: {cfg.encoder!r} (expected wav2vec2 or mel)")
    if not cfg.wav2vec2_path:
        raise ConfigError(
            "model.audio.wav2vec2_path: not set (a transformers wav2vec2 folder, e.g. "
            "facebook/wav2vec2-base-960h; or model.audio.encoder=mel needs no weights)"
        )
    return Path(cfg.wav2vec2_path)


def validate(cfg: Wav2Vec2Config) -> None:
    """Raises ValueError for settings transformers allows that emo_jax does not implement."""
    if cfg.feat_extract_norm not in ("group", "layer"):
        raise ValueError(f"feat_extract_norm={cfg.feat_extract_norm!r} (expected group or layer)")
    for key in ("hidden_act", "feat_extract_activation"):
        if getattr(cfg, key) not in TRANSFORMERS_ACTIVATIONS:
            raise ValueError(f"{key}={getattr(cfg, key)!r} is not supported by emo_jax")
    if cfg.add_adapter or cfg.adapter_attn_dim is not None:
        raise ValueError("adapters (add_adapter, adapter_attn_dim) are not supported by emo_jax")
    if cfg.output_hidden_size not in (None, cfg.hidden_size):
        raise ValueError(f"output_hidden_size={cfg.output_hidden_size} needs an adapter")
    if not len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride):
        raise ValueError("conv_dim, conv_kernel and conv_stride differ in length")
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError("hidden_size is not a multiple of num_attention_heads")
    if cfg.hidden_size % cfg.num_conv_pos_embedding_groups:
        raise ValueError("hidden_size is not a multiple of num_conv_pos_embedding_groups")


class ChannelNorm(nn.Module):
    """GroupNorm with one group per channel, over time (B, T, C); only valid frames count."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        w = (
            jnp.ones((*x.shape[:2], 1), x.dtype)
            if mask is None
            else mask[..., None].astype(x.dtype)
        )
        n = jnp.maximum(w.sum(1, keepdims=True), 1.0)
        mean = (x * w).sum(1, keepdims=True) / n
        var = (jnp.square(x - mean) * w).sum(1, keepdims=True) / n
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class ConvLayer(nn.Module):
    """`feature_extractor.conv_layers.N`: conv, optional norm, activation."""

    config: Wav2Vec2Config
    index: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg, i = self.config, self.index
        x = nn.Conv(
            cfg.conv_dim[i],
            (cfg.conv_kernel[i],),
            (cfg.conv_stride[i],),
            "VALID",
            use_bias=cfg.conv_bias,
            dtype=self.dtype,
            name="conv",
        )(x)
        if cfg.feat_extract_norm == "layer":
            x = nn.LayerNorm(1e-5, dtype=self.dtype, name="layer_norm")(x)
        elif i == 0:
            x = ChannelNorm(name="layer_norm")(x, mask)
        return TRANSFORMERS_ACTIVATIONS[cfg.feat_extract_activation](x)


class FeatureEncoder(nn.Module):
    """`feature_extractor`: waveform (B, N) -> conv features (B, T, conv_dim[-1])."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
        cfg = self.config
        x = x[..., None].astype(self.dtype)  # (B, N, 1)
        for i in range(len(cfg.conv_dim)):
            mask = None
            if lengths is not None and i == 0:
                frames = (lengths - cfg.conv_kernel[0]) // cfg.conv_stride[0] + 1
                mask = jnp.arange((x.shape[1] - cfg.conv_kernel[0]) // cfg.conv_stride[0] + 1)
                mask = mask[None] < frames[:, None]  # (B, T0)
            x = ConvLayer(cfg, i, self.dtype, name=f"conv_layers_{i}")(x, mask)
        return x


class FeatureProjection(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.LayerNorm(self.config.layer_norm_eps, dtype=self.dtype, name="layer_norm")(x)
        return nn.Dense(self.config.hidden_size, dtype=self.dtype, name="projection")(x)


class WeightNormConv1d(nn.Module):
    """Conv1d with `weight_norm(dim=2)`: weight = g * v / |v|, the norm taken per kernel tap.

    `weight_g` (1, 1, K) and `weight_v` (C_out, C_in/groups, K) keep PyTorch's layout.
    """

    features: int
    kernel_size: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = x.shape[-1] // self.groups
        std = 2 * math.sqrt(1 / (k * x.shape[-1]))
        v = self.param(
            "weight_v", nn.initializers.normal(std), (self.features, fan_in, k), jnp.float32
        )
        norm = lambda w: jnp.sqrt(jnp.sum(jnp.square(w), axis=(0, 1), keepdims=True))  # noqa: E731
        g = self.param("weight_g", lambda _: norm(v))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        kernel = jnp.transpose(v * (g / norm(v)), (2, 1, 0)).astype(
            self.dtype
        )  # (K, C_in/g, C_out)
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=(1,),
            padding=[(k // 2, k // 2)],
            dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=self.groups,
        )
        return y + bias.astype(self.dtype)


class PositionalConvEmbedding(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        k = cfg.num_conv_pos_embeddings
        y = WeightNormConv1d(
            cfg.hidden_size, k, cfg.num_conv_pos_embedding_groups, self.dtype, name="conv"
        )(x)
        if k % 2 == 0:
            y = y[:, :-1]
        return TRANSFORMERS_ACTIVATIONS[cfg.feat_extract_activation](y)


class Attention(nn.Module):
    """Multi-head self-attention with transformers' names; keys past `lengths` are masked."""

    embed_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
        b, t, _ = x.shape
        dense = lambda name: nn.Dense(self.embed_dim, dtype=self.dtype, name=name)  # noqa: E731
        heads = lambda y: y.reshape(b, t, self.num_heads, -1)  # noqa: E731
        q, k, v = (heads(dense(n)(x)) for n in ("q_proj", "k_proj", "v_proj"))  # (B, T, H, D)
        out = jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths)
        return dense("out_proj")(out.reshape(b, t, self.embed_dim))


class FeedForward(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = nn.Dense(cfg.intermediate_size, dtype=self.dtype, name="intermediate_dense")(x)
        x = TRANSFORMERS_ACTIVATIONS[cfg.hidden_act](x)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, name="output_dense")(x)


class EncoderLayer(nn.Module):
    """`encoder.layers.N`: post-LN, or pre-LN when `do_stable_layer_norm`."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
        cfg = self.config
        attn = Attention(cfg.hidden_size, cfg.num_attention_heads, self.dtype, name="attention")
        ln = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name=name)  # noqa: E731
        ff = FeedForward(cfg, self.dtype, name="feed_forward")
        if cfg.do_stable_layer_norm:
            x = x + attn(ln("layer_norm")(x), lengths)
            return x + ff(ln("final_layer_norm")(x))
        x = ln("layer_norm")(x + attn(x, lengths))
        return ln("final_layer_norm")(x + ff(x))


class Encoder(nn.Module):
    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> Wav2Vec2Output:
        cfg = self.config
        if lengths is not None:
            x = jnp.where((jnp.arange(x.shape[1])[None] < lengths[:, None])[..., None], x, 0)
        x = x + PositionalConvEmbedding(cfg, self.dtype, name="pos_conv_embed")(x)
        layer_norm = nn.LayerNorm(cfg.layer_norm_eps, dtype=self.dtype, name="layer_norm")
        if not cfg.do_stable_layer_norm:
            x = layer_norm(x)
        hidden = [x]
        for i in range(cfg.num_hidden_layers):
            x = EncoderLayer(cfg, self.dtype, name=f"layers_{i}")(x, lengths)
            hidden.append(x)
        last = layer_norm(x) if cfg.do_stable_layer_norm else x
        return Wav2Vec2Output(last, tuple(hidden))


class Wav2Vec2Model(nn.Module):
    """transformers' `Wav2Vec2Model`: waveform (B, N) -> hidden states at 1/prod(conv_stride)
    of the sample rate. `attention_mask` (B, N): 1 for real samples, 0 for padding."""

    config: Wav2Vec2Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, input_values: jax.Array, attention_mask: jax.Array | None = None
    ) -> Wav2Vec2Output:
        cfg = self.config
        if cfg.mask_time_prob > 0 or cfg.mask_feature_prob > 0:
            self.param("masked_spec_embed", nn.initializers.uniform(1.0), (cfg.hidden_size,))
        lengths = None
        if attention_mask is not None:
            lengths = attention_mask.astype(jnp.int32).sum(-1)
        x = FeatureEncoder(cfg, self.dtype, name="feature_extractor")(input_values, lengths)
        x = FeatureProjection(cfg, self.dtype, name="feature_projection")(x)
        frames = None if lengths is None else conv_output_length(cfg, lengths)
        return Encoder(cfg, self.dtype, name="encoder")(x, frames)

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: Any = None) -> tuple[Wav2Vec2Model, Any]:
        """(module, params) from a transformers folder (config.json + model.safetensors or
        pytorch_model.bin), strictly: every key, every shape. Task checkpoints (ForCTC, ...)
        load their `wav2vec2.` part; old `weight_g/weight_v` keys load too."""
        return pretrained.from_pretrained(folder, WAV2VEC2_FORMAT, dtype)

    @staticmethod
    def save_pretrained(params: Any, config: Wav2Vec2Config, folder: str | Path) -> None:
        """Writes a transformers `Wav2Vec2Model` folder (weight norm as parametrizations)."""
        pretrained.save_pretrained(params, config, folder, WAV2VEC2_FORMAT)


def base_state_dict(state_dict: dict) -> dict:
    """The base model's part of a transformers state dict, with current weight-norm names."""
    if any(k.startswith(BASE_PREFIX) for k in state_dict):
        state_dict = rename_keys(
            state_dict, lambda k: k[len(BASE_PREFIX) :] if k.startswith(BASE_PREFIX) else None
        )
    return rename_keys(state_dict, lambda k: apply_renames(k, WEIGHT_NORM))


def dummy_inputs(cfg: Wav2Vec2Config) -> tuple:
    """Shortest waveform that builds every parameter."""
    hop, window = receptive_field(cfg)
    return (jnp.zeros((1, window + hop)),)


WAV2VEC2_FORMAT = pretrained.FolderFormat(
    class_name="Wav2Vec2Model",
    config_cls=Wav2Vec2Config,
    build=lambda cfg, dtype: Wav2Vec2Model(cfg, dtype=dtype or jnp.float32),
    dummy_inputs=dummy_inputs,
    weight_stem="model",
    library="transformers",
    renames=WEIGHT_NORM,
    ignore_keys=IGNORED_KEYS,
    validate=validate,
    model_type="wav2vec2",
    legacy_stems=("pytorch_model",),
    adapt_state_dict=base_state_dict,
)
