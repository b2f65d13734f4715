"""One config system: typed dataclasses, loaded from YAML (with `base:` includes) and dotted
command-line overrides such as `train.learning_rate=1e-4`."""

from __future__ import annotations

import dataclasses
import types
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emo_jax.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A config file or override that does not fit the dataclasses (one line, names the place)."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Converts a YAML value to the annotated type (lists -> tuples, dicts -> dataclasses)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Builds dataclass `cls` from a mapping; unknown keys are errors that name the key."""
    moved = {}
    if cls is Config and isinstance(data.get("data"), dict):
        keep = {k: v for k, v in data["data"].items() if k not in MOVED_DATA_KEYS}
        moved = {k: v for k, v in data["data"].items() if k in MOVED_DATA_KEYS}
        data = {**data, "data": keep}
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    if moved:
        _accept_moved(obj, moved, where)
    return obj


def _accept_moved(cfg: Config, moved: dict, where: str) -> None:
    """Old data.* keys that the model now states: the model's value, or an error."""
    for key, value in moved.items():
        section, name = MOVED_DATA_KEYS[key]
        held = getattr(getattr(cfg.model, section), name)
        if value != held:
            raise ConfigError(
                f"{where}: data.{key} {value} differs from model.{section}.{name} {held} (the "
                f"data follow the model now: remove data.{key})"
            )
    warnings.warn(
        f"{where}: data.{', data.'.join(moved)} ignored: the data follow model.audio and "
        "model.emo now (remove them)",
        FutureWarning,
        stacklevel=3,
    )


def to_dict(obj: Any) -> Any:
    """Dataclass tree -> plain YAML-able dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path, kind: str = "config") -> dict:
    """A YAML file's top-level mapping; one-line errors for a missing file, bad YAML or
    another top level (`kind` names the file in them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {kind} file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_yaml(path: str | Path) -> dict:
    """Reads a YAML file, resolving `base:` (a path or list of paths relative to the file)."""
    path = Path(path)
    data = read_yaml(path)
    bases = data.pop("base", [])
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_yaml(path.parent / b))
    return _deep_merge(merged, data)


def stage_name(stage: int) -> str:
    """A stage's run folder name: "autoencoder" (stage 0) or "stageN"."""
    return "autoencoder" if stage == 0 else f"stage{stage}"


def select_stage(data: dict, stage: Any, where: str) -> dict:
    """One stage of a stage file's settings (others pass through as they are).

    A stage file holds `stages: {N: settings}` beside settings that every stage shares, and
    `runs: FOLDER`, the family's run folders. Stage N's settings are, from the lowest: its run
    paths (train.out_dir FOLDER/stageN, or FOLDER/autoencoder for stage 0; train.init_from the
    previous stage's folder from stage 2 on; train.vae_path FOLDER/autoencoder/vae where the
    file has a stage 0), the shared settings, `stages[N]`, and train.stage N.
    """
    data = dict(data)
    stages, runs = data.pop("stages", None), data.pop("runs", None)
    if stages is None:
        if runs is not None:
            raise ConfigError(f"{where}: runs: belongs to a stage file (one with stages:)")
        return data
    if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
        raise ConfigError(f"{where}: stages: expected a mapping of stage number -> settings")
    known = ", ".join(str(k) for k in sorted(stages))
    if stage is None:
        raise ConfigError(
            f"{where}: a stage file (stages {known}): pick one with --stage N (train.stage=N)"
        )
    if stage not in stages:
        raise ConfigError(f"{where}: no stage {stage!r} (stages {known})")
    paths: dict[str, str] = {}
    if runs is not None:
        paths["out_dir"] = f"{runs}/{stage_name(stage)}"
        if stage >= 2:
            paths["init_from"] = f"{runs}/{stage_name(stage - 1)}"
        if stage >= 1 and 0 in stages:
            paths["vae_path"] = f"{runs}/{stage_name(0)}/vae"
    merged = _deep_merge(_deep_merge({"train": paths}, data), stages[stage])
    return _deep_merge(merged, {"train": {"stage": stage}})


def resolve(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """The settings of a config file (or the defaults if `path` is None) with dotted
    overrides: its `base:` files included, and of a stage file the stage `train.stage` names."""
    overrides = overrides or []
    data = load_yaml(path) if path else {}
    stage = apply_overrides(data, overrides).get("train", {}).get("stage")
    return apply_overrides(select_stage(data, stage, str(path)), overrides)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Applies `a.b.c=value` strings (value parsed as YAML) to a nested dict."""
    data = _deep_merge({}, data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


# ---------------------------------------------------------------------------- sections
# Field names of UNetConfig / VAEConfig are diffusers' config.json keys, so a diffusers folder's
# config loads as it is.


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """diffusers `UNet2DConditionModel` config (the subset emo_jax implements; SD1.5 defaults)."""

    sample_size: int | None = 64
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    )
    mid_block_type: str | None = "UNetMidBlock2DCrossAttn"
    up_block_types: tuple[str, ...] = (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    )
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int | tuple[int, ...] = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    dropout: float = 0.0
    act_fn: str = "silu"
    norm_num_groups: int | None = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int | tuple[int, ...] | None = 768  # None: no cross-attention
    transformer_layers_per_block: int | tuple[int, ...] = 1
    reverse_transformer_layers_per_block: tuple[int, ...] | None = None
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    upcast_attention: bool = False
    resnet_time_scale_shift: str = "default"
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    time_embedding_type: str = "positional"
    time_embedding_dim: int | None = None
    time_embedding_act_fn: str | None = None
    timestep_post_act: str | None = None
    time_cond_proj_dim: int | None = None
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    attention_type: str = "default"
    mid_block_only_cross_attention: bool | None = None
    # Settings diffusers knows and emo_jax does not implement: accepted only at their defaults.
    encoder_hid_dim: int | None = None
    encoder_hid_dim_type: str | None = None
    dual_cross_attention: bool = False
    class_embed_type: str | None = None
    addition_embed_type: str | None = None
    addition_time_embed_dim: int | None = None
    num_class_embeds: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    class_embeddings_concat: bool = False
    cross_attention_norm: str | None = None
    addition_embed_type_num_heads: int = 64


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers `AutoencoderKL` config (SD1.5 defaults)."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",) * 4
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int = 512
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    @property
    def factor(self) -> int:
        """Pixels per latent along each axis: one stride-2 step per block after the first (8
        for the SD VAE)."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
    """transformers `Wav2Vec2Config` (its config.json keys; defaults = wav2vec2-base-960h's
    architecture). Loaded from a folder's config.json by `emo_jax.models.wav2vec2`, which
    ignores bookkeeping keys and rejects values it does not implement."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    # Training-time settings (Wav2Vec2Model runs here for inference only); mask_*_prob > 0
    # also gives the model its `masked_spec_embed` parameter.
    hidden_dropout: float = 0.1
    activation_dropout: float = 0.1
    attention_dropout: float = 0.1
    feat_proj_dropout: float = 0.0
    feat_quantizer_dropout: float = 0.0
    final_dropout: float = 0.1
    layerdrop: float = 0.1
    initializer_range: float = 0.02
    apply_spec_augment: bool = True
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0
    mask_feature_length: int = 10
    mask_feature_min_masks: int = 0
    # Heads and pre-training (not part of Wav2Vec2Model): any value is accepted.
    vocab_size: int | None = 32
    num_codevectors_per_group: int = 320
    num_codevector_groups: int = 2
    contrastive_logits_temperature: float = 0.1
    num_negatives: int = 100
    codevector_dim: int = 256
    proj_codevector_dim: int = 256
    diversity_loss_weight: float = 0.1
    ctc_loss_reduction: str = "sum"
    ctc_zero_infinity: bool = False
    use_weighted_layer_sum: bool = False
    classifier_proj_size: int = 256
    tdnn_dim: tuple[int, ...] = (512, 512, 512, 512, 1500)
    tdnn_kernel: tuple[int, ...] = (5, 3, 3, 1, 1)
    tdnn_dilation: tuple[int, ...] = (1, 2, 3, 1, 1)
    xvector_output_dim: int = 512
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    # Adapters (not implemented): add_adapter must be false and adapter_attn_dim null.
    add_adapter: bool = False
    adapter_kernel_size: int = 3
    adapter_stride: int = 2
    num_adapter_layers: int = 3
    output_hidden_size: int | None = None
    adapter_attn_dim: int | None = None


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """Audio -> per-video-frame features (window of +-`window` frames) -> audio tokens."""

    encoder: str = "wav2vec2"  # "wav2vec2" (pretrained, transformers folder) or "mel" (cheap)
    wav2vec2_path: str | None = None  # transformers-format folder: config.json + weights
    layers: tuple[int, ...] | None = None  # wav2vec2 hidden_states indices; None: 1..L (all)
    sample_rate: int = 16000
    fps: float = 25.0  # video frame rate: frames = round(seconds * fps), halves up
    window: int = 2  # m: frame f gets the features of frames f-m .. f+m
    chunk_seconds: float = 20.0  # long audio goes through the encoder in chunks this long
    context_seconds: float = 2.0  # extra audio each side of a wav2vec2 chunk, then dropped
    n_mels: int = 80  # mel encoder: bins ...
    mel_n_fft: int = 400  # ... FFT size = window (samples) ...
    mel_hop: int = 160  # ... hop (samples) ...
    mel_subframes: int = 4  # ... and vectors per video frame (its "layers" axis)
    proj_tokens: int = 32  # K: audio tokens per frame that audio-attention attends to
    proj_hidden_dim: int = 512  # hidden width of the projection MLP (output: cross_attention_dim)


@dataclasses.dataclass(frozen=True)
class TemporalConfig:
    """AnimateDiff motion modules (diffusers `MotionAdapter` field names)."""

    motion_num_attention_heads: int | tuple[int, ...] = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32  # positional encodings: n motion + f frames must fit
    motion_transformer_layers_per_block: int = 1
    use_motion_mid_block: bool = True
    norm_per_frame: bool = False  # GroupNorm statistics per frame (AnimateDiff's original, Hallo)


@dataclasses.dataclass(frozen=True)
class MotionAdapterConfig:
    """diffusers `MotionAdapter` config (the AnimateDiff motion modules on their own)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    motion_layers_per_block: int = 2
    motion_transformer_layers_per_block: int = 1
    motion_mid_block_layers_per_block: int = 1
    motion_transformer_layers_per_mid_block: int = 1
    motion_num_attention_heads: int | tuple[int, ...] = 8
    motion_norm_num_groups: int = 32
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    conv_in_channels: int | None = None


@dataclasses.dataclass(frozen=True)
class HalloConfig:
    """What Hallo's network has beyond EMO's (model.emo.family = "hallo"); Hallo's sizes."""

    face_embed_dim: int = 512  # ArcFace identity embedding -> ImageProjModel
    face_tokens: int = 4  # its tokens: the cross-attention context of both UNets
    audio_attention_dim: int = 768  # width of the audio tokens (AudioProjModel output_dim)
    audio_blocks: tuple[str, ...] = ("up", "down", "mid")  # audio modules with 3 region
    audio_depths: tuple[int, ...] = (0, 1, 2, 3)  # cross-attentions (else one plain one)
    face_locator_in_channels: int = 3  # the face-region image (RGB)
    audio_layers: int = 12  # wav2vec2 hidden states per frame the audio projection takes
    audio_width: int = 768  # and their width (wav2vec2-base-960h)
    motion_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)  # pose (full), face, lip weights
    face_expand_ratio: float = 1.2  # face box side x this = the face region
    face_model: str | None = None  # insightface recognition ONNX (generate: --face-model)


@dataclasses.dataclass(frozen=True)
class EMOConfig:
    """What EMO adds to the SD1.5 UNet, and which parts are switched on (the stages)."""

    use_temporal: bool = True  # temporal modules with motion frames (stages 2, 3)
    use_audio: bool = True  # audio projection + audio-attention (stages 2, 3)
    use_speed: bool = True  # speed encoder + speed attention in the temporal modules (stage 3)
    use_face_locator: bool = True
    temporal: TemporalConfig = TemporalConfig()
    n_motion_frames: int = 4  # n (paper)
    n_frames: int = 12  # f (paper)
    face_locator_channels: tuple[int, ...] = (16, 32, 96, 256)  # 3 stride-2 steps: 8x down
    speed_centers: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6)
    speed_radii: tuple[float, ...] = (0.1,) * 9  # r_i of the tanh bucket encoding
    speed_window: int = 2  # m: frame f sees the speed encodings of f-m .. f+m
    speed_hidden_dim: int = 256
    speed_embed_dim: int = 768  # l: width of the speed tokens
    remat: bool = False  # rematerialise each UNet block in the backward pass
    family: str = "emo"  # "emo" or "hallo" (Hallo's network: model.hallo)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ConfigError(f"model.emo.family: {self.family!r} is not one of emo, hallo")


FAMILIES = ("emo", "hallo")


ATTENTION = ("auto", "xla", "cudnn", "splash", "chunked")  # model.attention's choices


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The networks: SD1.5 UNet (backbone and ReferenceNet) and VAE."""

    unet: UNetConfig = UNetConfig()
    vae: VAEConfig = VAEConfig()
    audio: AudioConfig = AudioConfig()
    emo: EMOConfig = EMOConfig()
    hallo: HalloConfig = HalloConfig()
    dtype: str = "float32"  # compute dtype; params stay float32
    attention: str = "auto"  # one of ATTENTION (emo_jax.nn.attention says what each is)

    def __post_init__(self):
        if self.attention not in ATTENTION:
            raise ConfigError(f"model.attention: {self.attention!r} is not one of {ATTENTION}")
        locator, vae = len(self.emo.face_locator_channels), len(self.vae.block_out_channels)
        if self.emo.use_face_locator and locator != vae:
            raise ConfigError(
                f"model.emo.face_locator_channels has {locator} entries ({locator - 1} stride-2 "
                f"steps), model.vae.block_out_channels {vae}: they must downsample alike"
            )


SAMPLERS = ("ddim", "dpmpp_2m")  # DDIM; DPM-Solver++ 2M (emo_jax.diffusion.samplers)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """Noise schedule (diffusers scheduler config names; SD1.5 values), training loss, sampler."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"  # or "linear"
    prediction_type: str = "epsilon"  # or "v_prediction", "sample"
    rescale_betas_zero_snr: bool = False  # zero terminal SNR (use with v_prediction)
    timestep_spacing: str = "leading"  # or "trailing", "linspace"
    steps_offset: int = 1  # added to "leading" timesteps
    set_alpha_to_one: bool = False  # DDIM's last step goes to alpha_bar = 1 (else alpha_bar_0)
    clip_sample: bool = False  # DDIM: clip the predicted x0 to [-clip_sample_range, ...]
    clip_sample_range: float = 1.0
    lower_order_final: bool = True  # DPM-Solver++: first-order last step if < 15 steps
    use_karras_sigmas: bool = False  # DPM-Solver++: Karras et al. sigma spacing
    final_sigmas_type: str = "zero"  # DPM-Solver++: last sigma "zero" or "sigma_min"
    snr_gamma: float | None = None  # training: min-SNR-gamma loss weighting (None: plain MSE)
    sampler: str = "ddim"  # one of SAMPLERS
    num_inference_steps: int = 40  # the paper: DDIM, 40 steps
    eta: float = 0.0  # DDIM noise (0: deterministic)
    guidance_scale: float = 3.5  # CFG scale (Hallo); the reference scale if audio's is set
    audio_guidance_scale: float | None = None  # set: separate audio scale (V-Express style)

    def __post_init__(self):
        choices = {
            "beta_schedule": ("linear", "scaled_linear"),
            "prediction_type": ("epsilon", "v_prediction", "sample"),
            "timestep_spacing": ("leading", "trailing", "linspace"),
            "final_sigmas_type": ("zero", "sigma_min"),
            "sampler": SAMPLERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"diffusion.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Preprocessed corpus, training examples and the Grain loader (emo_jax.data)."""

    shards: str = "data/processed"  # folder written by `emo-jax preprocess` (manifest.json)
    mode: str = "video"  # "video": n motion + f target frames (stages 2-3); "image": stage 1
    resolution: int = 512  # square frames; shards stored at another size are resized
    # frame rate, sample rate, clip lengths, audio context: the model's (`clip_spec`)
    clip_stride: int = 1  # frames between the starts of consecutive candidate clips
    batch_size: int = 4  # global; each JAX process loads batch_size / process_count
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None  # None: repeat forever
    hue_augment: float = 0.0  # fraction of examples hue-turned (emo_jax.data.pipeline)
    worker_count: int = 0  # Grain worker processes (0: load in the main process)
    worker_buffer_size: int = 2
    # preprocessing (emo-jax preprocess)
    detector: str = "auto"  # face back end: auto | dlib | haar (emo_jax.faces.detect)
    pose: str = "flow"  # head speed: flow (in the face track) | landmarks (emo_jax.faces.pose)
    crop_scale: float = 2.0  # crop side / median face box side
    jpeg_quality: int = 95
    min_face_fraction: float = 0.5  # skip a video whose face is found in fewer frames
    min_frames: int = 25  # skip (or do not trim below) videos shorter than this
    audio_dtype: str = "float32"  # model.audio's features in the shards: float32 | float16

    def __post_init__(self):
        if self.mode not in ("video", "image"):
            raise ConfigError(f"data.mode: {self.mode!r} is not one of video, image")
        if self.audio_dtype not in ("float32", "float16"):
            raise ConfigError(
                f"data.audio_dtype: {self.audio_dtype!r} is not one of float32, float16"
            )
        if not 0.0 <= self.hue_augment <= 1.0:
            raise ConfigError(f"data.hue_augment: {self.hue_augment} is not in [0, 1]")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """The timing and length of a training clip: the model's facts, as the data read them."""

    fps: int  # model.audio.fps, whole
    sample_rate: int  # model.audio.sample_rate
    n_frames: int  # f: model.emo.n_frames
    n_motion_frames: int  # n: model.emo.n_motion_frames
    audio_context: int  # m: frames of audio features before and after the clip, model.audio.window

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps


# data.<key> of configs before the data followed the model -> where the fact lives now
MOVED_DATA_KEYS = {
    "fps": ("audio", "fps"),
    "sample_rate": ("audio", "sample_rate"),
    "n_frames": ("emo", "n_frames"),
    "n_motion_frames": ("emo", "n_motion_frames"),
    "audio_context": ("audio", "window"),
}


def clip_spec(model: ModelConfig) -> ClipSpec:
    """What training clips are for `model` (the one place the data take these facts from)."""
    audio, emo = model.audio, model.emo
    if audio.fps != round(audio.fps) or audio.sample_rate % round(audio.fps):
        raise ConfigError(
            f"model.audio.fps {audio.fps:g}: training data need a whole frame rate that divides "
            f"model.audio.sample_rate {audio.sample_rate}"
        )
    return ClipSpec(
        fps=round(audio.fps),
        sample_rate=audio.sample_rate,
        n_frames=emo.n_frames,
        n_motion_frames=emo.n_motion_frames,
        audio_context=audio.window,
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training stage (emo_jax.train): what trains, where it starts, the optimizer, the run.

    Which modules exist is `model.emo.use_*`; which of them train is `trainable` (components of
    emo_jax.models.inventory). Frozen ones get no gradient and no optimizer state.
    """

    stage: int = 1  # 0 autoencoder (model.vae), 1 image, 2 video (temporal + audio), 3 speed
    trainable: tuple[str, ...] = ("reference_unet", "denoising_unet", "face_locator")
    out_dir: str = "runs/stage1"  # checkpoints/, tb/, samples/, metrics.jsonl, bundle/
    init_from: str | None = None  # previous stage: bundle or run folder; stage 0: a VAE folder
    sd15_unet: str | None = None  # diffusers SD1.5 UNet or pipeline folder -> both UNets
    reference_from_backbone: bool = False  # fresh ReferenceNet = a copy of the fresh backbone
    motion_adapter: str | None = None  # diffusers AnimateDiff MotionAdapter -> temporal modules
    vae_path: str | None = None  # diffusers AutoencoderKL folder or a bundle; None: random VAE
    vae_seed: int = 0  # seed of the random VAE (the same in every stage)
    seed: int = 0  # params init, noise, timesteps, condition dropout
    steps: int = 30000  # optimizer steps of this stage
    learning_rate: float = 1e-5  # the paper, all stages
    warmup_steps: int = 0  # linear warm-up from 0, then constant
    decay_steps: int = 0  # the last decay_steps: linearly down to 0 (0: constant to the end)
    weight_decay: float = 0.01  # AdamW (diffusers' default)
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clipping
    grad_accum: int = 1  # micro-batches per optimizer step (data.batch_size is per step)
    ema_decay: float | None = None  # EMA of the trained weights (None: no EMA)
    drop_reference: float = 0.05  # condition dropout for guidance (Hallo: 0.05)
    drop_audio: float = 0.05
    drop_speed: float = 0.0
    drop_motion: float = 0.05  # motion frames -> zero maps, as for a video's first clip
    log_every: int = 10  # steps between stdout / TensorBoard lines
    checkpoint_every: int = 1000  # steps between (async) checkpoints; one more at the end
    keep_checkpoints: int = 3  # the latest N, plus the best (eval loss, else training loss)
    sample_every: int = 0  # steps between sample videos (0: none)
    sample_steps: int = 20  # DDIM steps of a sample video
    eval_batches: int = 0  # fixed batches scored at start and per checkpoint (fixed noise)
    eval_shards: str | None = None  # their corpus (held-out people); None: data.shards
    kl_weight: float = 1e-6  # stage 0: weight of the KL term beside the L1 reconstruction
    face_weight: float = 0.0  # stage 0: extra L1 weight inside the face mask (1 + w there)
    vae_trainable: tuple[str, ...] = ("encoder", "decoder")  # stage 0: the parts that train

    def __post_init__(self):
        for name in ("warmup_steps", "decay_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: {getattr(self, name)} is negative")
        if self.warmup_steps + self.decay_steps > self.steps:
            raise ConfigError(
                f"train.warmup_steps {self.warmup_steps} + train.decay_steps {self.decay_steps}"
                f" exceed train.steps {self.steps}"
            )


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Device mesh, sharding and multi-host start-up (emo_jax.parallel)."""

    data: int = -1  # mesh axis sizes; -1: the devices the other axes leave
    fsdp: int = 1  # params and optimizer state sharded over this axis (batch too)
    tensor: int = 1  # output features of kernels sharded over this axis
    fsdp_min_size: int = 4096  # smaller params stay replicated
    data_shards: int | None = None  # Grain shards (None: one per process); fixed: same data order
    distributed: bool | None = None  # jax.distributed.initialize; None: if a cluster is detected
    coordinator_address: str | None = None  # else JAX_COORDINATOR_ADDRESS / auto-detection
    num_processes: int | None = None  # else JAX_NUM_PROCESSES / auto-detection
    process_id: int | None = None  # else JAX_PROCESS_ID / auto-detection
    generate_devices: int = 1  # generation: devices each clip is split over (`--devices`)


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole config tree that the CLI loads."""

    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    parallel: ParallelConfig = ParallelConfig()


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config (or the defaults if `path` is None) with dotted overrides; of a
    stage file, the stage `train.stage` names (`select_stage`)."""
    return from_dict(Config, resolve(path, overrides), str(path) if path else "config")
