"""Hallo's checkpoint (`net.pth`, fudan-generative-vision/hallo) <-> an emo_jax model of family
"hallo", by the shared rule table plus Hallo's names:

    audioproj.* / imageproj.*                      audio_proj / image_proj
    motion_modules.N.temporal_transformer.*        motion_modules_N (diffusers' layout):
        transformer_blocks.K.attention_blocks.0/1  attn1 / attn2
        transformer_blocks.K.norms.0/1, ff_norm    norm1 / norm2, norm3
        ...attention_blocks.J.pos_encoder.pe       (fixed sinusoidal table: checked, recomputed)

The sizes are Hallo's released ones unless `unet_config.json`, `unet_additional_kwargs.json`
and `modules.json` lie beside `net.pth` (and `vae/config.json`, the VAE's). Reading is strict:
every key mapped, none left over, shapes checked; the pickle is memory-mapped and read with
`weights_only`, one tensor at a time, and kept in its own dtype (Hallo's release: float16;
computation promotes it to `model.dtype`): a 4.8 GB file is held about once and its bundle
is as large (bench/bench_hallo.py measures both ways).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from emo_jax.checkpoint.bundle import load_bundle, save_bundle
from emo_jax.config import (
    AudioConfig,
    Config,
    ConfigError,
    DiffusionConfig,
    EMOConfig,
    HalloConfig,
    ModelConfig,
    TemporalConfig,
    UNetConfig,
    VAEConfig,
    from_dict,
    to_dict,
)
from emo_jax.errors import InputError
from emo_jax.files import atomic_folder, read_json, write_json
from emo_jax.models.hallo import HalloModel, abstract_params
from emo_jax.models.vae import AutoencoderKL
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT
from emo_jax.weights.convert import Rename, torch_entries, torch_shapes, torch_to_flax
from emo_jax.weights.io import Entry, load_state_dict
from emo_jax.weights.pretrained import read_config

PARTS = {  # Hallo's Net attribute -> emo_jax EMOModel attribute
    "reference_unet": "reference_unet",
    "denoising_unet": "denoising_unet",
    "face_locator": "face_locator",
    "imageproj": "image_proj",
    "audioproj": "audio_proj",
}
_MM = r"(motion_modules\.\d+\.)"
_TB = r"(motion_modules\.\d+\.temporal_transformer\.transformer_blocks\.\d+\.)"
RENAMES = (
    Rename(r"^audio_proj\.", "audioproj."),
    Rename(r"^image_proj\.", "imageproj."),
    Rename(_MM, r"\1temporal_transformer."),
    Rename(_TB + r"attn1\.", r"\1attention_blocks.0."),
    Rename(_TB + r"attn2\.", r"\1attention_blocks.1."),
    Rename(_TB + r"norm1\.", r"\1norms.0."),
    Rename(_TB + r"norm2\.", r"\1norms.1."),
    Rename(_TB + r"norm3\.", r"\1ff_norm."),
)
PE = re.compile(r"^(.*attention_blocks\.\d+\.)pos_encoder\.pe$")

# Hallo's released sizes (configs/inference/default.yaml, scripts/inference.py).
RELEASED_UNET_KWARGS = {
    "use_inflated_groupnorm": True,
    "unet_use_cross_frame_attention": False,
    "unet_use_temporal_attention": False,
    "use_motion_module": True,
    "use_audio_module": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": True,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 32,
        "temporal_attention_dim_div": 1,
    },
    "audio_attention_dim": 768,
    "stack_enable_blocks_name": ["up", "down", "mid"],
    "stack_enable_blocks_depth": [0, 1, 2, 3],
}
RELEASED_MODULES = {
    "face_locator": {
        "conditioning_embedding_channels": 320,
        "conditioning_channels": 3,
        "block_out_channels": [16, 32, 64, 128],
    },
    "imageproj": {
        "cross_attention_dim": 768,
        "clip_embeddings_dim": 512,
        "clip_extra_context_tokens": 4,
    },
    "audioproj": {
        "seq_len": 5,
        "blocks": 12,
        "channels": 768,
        "intermediate_dim": 512,
        "output_dim": 768,
        "context_tokens": 32,
    },
}
# Hallo's sampler: DDIM, v-prediction, zero terminal SNR, trailing, 40 steps, CFG 3.5.
DIFFUSION = DiffusionConfig(
    beta_schedule="linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    set_alpha_to_one=True,
    num_inference_steps=40,
    guidance_scale=3.5,
)
CLIP_FRAMES, MOTION_FRAMES = 16, 2  # data.n_sample_frames, data.n_motion_frames


def _expect(path: Path, where: str, value: Any, allowed: Any) -> None:
    if value != allowed:
        raise InputError(f"{path}: {where} = {value!r}: emo_jax implements only {allowed!r}")


def _read_beside(folder: Path, name: str, default: dict) -> tuple[dict, Path]:
    path = folder / name
    return (read_json(path), path) if path.is_file() else (default, path)


def model_config(folder: Path, vae: VAEConfig | None = None) -> ModelConfig:
    """The network of the `net.pth` in `folder`: from the JSON files beside it, else Hallo's."""
    raw_unet, unet_path = _read_beside(folder, "unet_config.json", {})
    kw, kw_path = _read_beside(folder, "unet_additional_kwargs.json", RELEASED_UNET_KWARGS)
    mods, mods_path = _read_beside(folder, "modules.json", RELEASED_MODULES)
    unet_data = {k: v for k, v in raw_unet.items() if not k.startswith("_")}
    try:
        unet = from_dict(UNetConfig, unet_data, str(unet_path))
    except ConfigError as e:
        raise InputError(str(e)) from None
    for key, allowed in (
        ("use_inflated_groupnorm", True),
        ("unet_use_cross_frame_attention", False),
        ("unet_use_temporal_attention", False),
        ("use_motion_module", True),
        ("use_audio_module", True),
        ("motion_module_resolutions", [1, 2, 4, 8]),
        ("motion_module_decoder_only", False),
        ("motion_module_type", "Vanilla"),
    ):
        value = kw.get(key)
        _expect(kw_path, key, bool(value) if allowed is False else value, allowed)
    mm = kw.get("motion_module_kwargs", {})
    _expect(
        kw_path,
        "attention_block_types",
        list(mm.get("attention_block_types", [])),
        ["Temporal_Self", "Temporal_Self"],
    )
    _expect(kw_path, "temporal_position_encoding", mm.get("temporal_position_encoding"), True)
    _expect(kw_path, "temporal_attention_dim_div", mm.get("temporal_attention_dim_div", 1), 1)
    try:
        fl, ip, ap = mods["face_locator"], mods["imageproj"], mods["audioproj"]
        _expect(
            mods_path,
            "face_locator.conditioning_embedding_channels",
            fl["conditioning_embedding_channels"],
            unet.block_out_channels[0],
        )
        _expect(
            mods_path,
            "imageproj.cross_attention_dim",
            ip.get("cross_attention_dim", unet.cross_attention_dim),
            unet.cross_attention_dim,
        )
        _expect(mods_path, "audioproj.output_dim", ap["output_dim"], kw["audio_attention_dim"])
        if ap["seq_len"] % 2 != 1:
            raise InputError(f"{mods_path}: audioproj.seq_len {ap['seq_len']} is not odd")
        temporal = TemporalConfig(
            motion_num_attention_heads=mm["num_attention_heads"],
            motion_max_seq_length=mm["temporal_position_encoding_max_len"],
            motion_transformer_layers_per_block=mm["num_transformer_block"],
            use_motion_mid_block=bool(kw["motion_module_mid_block"]),
            norm_per_frame=True,
        )
        emo = EMOConfig(
            family="hallo",
            use_speed=False,
            temporal=temporal,
            n_motion_frames=MOTION_FRAMES,
            n_frames=CLIP_FRAMES,
            face_locator_channels=tuple(fl["block_out_channels"]),
        )
        hallo = HalloConfig(
            face_embed_dim=ip["clip_embeddings_dim"],
            face_tokens=ip["clip_extra_context_tokens"],
            audio_attention_dim=kw["audio_attention_dim"],
            audio_blocks=tuple(kw.get("stack_enable_blocks_name") or ()),
            audio_depths=tuple(kw.get("stack_enable_blocks_depth") or ()),
            face_locator_in_channels=fl.get("conditioning_channels", 3),
            audio_layers=ap["blocks"],
            audio_width=ap["channels"],
        )
        audio = AudioConfig(
            window=(ap["seq_len"] - 1) // 2,
            proj_tokens=ap["context_tokens"],
            proj_hidden_dim=ap["intermediate_dim"],
        )
    except (KeyError, TypeError) as e:
        raise InputError(f"{mods_path} / {kw_path}: missing or malformed entry {e}") from None
    vae_cfg = vae or _vae_beside(folder) or VAEConfig()
    try:
        return ModelConfig(unet=unet, vae=vae_cfg, audio=audio, emo=emo, hallo=hallo)
    except ConfigError as e:
        raise InputError(f"{folder}: {e}") from None


def _vae_beside(folder: Path) -> VAEConfig | None:
    path = folder / "vae" / "config.json"
    if not path.is_file():
        return None
    data = {k: v for k, v in read_json(path).items() if not k.startswith("_")}
    known = {f.name for f in dataclasses.fields(VAEConfig)}
    return from_dict(VAEConfig, {k: v for k, v in data.items() if k in known}, str(path))


def positional_table(max_len: int, dim: int) -> np.ndarray:
    """Hallo's `PositionalEncoding.pe` (1, max_len, dim), computed as its torch code does."""
    import torch

    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe.numpy()


def _hallo_shapes(abstract: Any) -> dict[str, tuple[int, ...]]:
    return torch_shapes(abstract, RENAMES)


def pe_keys(shapes: dict[str, tuple[int, ...]], max_len: int) -> dict[str, tuple[int, ...]]:
    """{pe key: shape} of every temporal attention in a Hallo key set."""
    out = {}
    for key, shape in shapes.items():
        m = re.match(r"^(.*attention_blocks\.\d+\.)to_q\.weight$", key)
        if m and "temporal_transformer" in key:
            out[m.group(1) + "pos_encoder.pe"] = (1, max_len, shape[1])
    return out


def to_flax(state: Any, abstract: Any, max_len: int, source: str) -> Any:
    """Hallo state dict -> Flax params shaped like `abstract` (strict; pe tables checked)."""
    expected_pe = pe_keys(_hallo_shapes(abstract), max_len)
    bad = []
    for key in sorted(expected_pe.keys() & state.keys()):
        value = np.asarray(state[key])
        table = positional_table(*expected_pe[key][1:])
        half = table.astype(np.float16).astype(value.dtype)  # as a float16 file holds it
        if value.shape != table.shape or not (
            np.allclose(value, table, atol=1e-5) or np.array_equal(value, half)
        ):
            bad.append(key)
    missing_pe = sorted(set(expected_pe) - set(state.keys()))
    if bad or missing_pe:
        what = [
            f"{len(bad)} positional table(s) not Hallo's sinusoid: {', '.join(bad[:5])}"
        ] * bool(bad)
        what += [f"{len(missing_pe)} missing key(s): {', '.join(missing_pe[:5])}"] * bool(
            missing_pe
        )
        raise InputError(f"{source}: " + "; ".join(what))
    weights = _Without(state, expected_pe.keys())  # read tensor by tensor, not copied here
    params, _, _ = torch_to_flax(weights, abstract, RENAMES, source=source)
    return params


class _Without(Mapping):
    """A state dict less some keys (a view: nothing is read until asked for)."""

    def __init__(self, state: Mapping, drop: Any):
        self._state, self._drop = state, set(drop)

    def __getitem__(self, key: str) -> Any:
        if key in self._drop:
            raise KeyError(key)
        return self._state[key]

    def __iter__(self):
        return (k for k in self._state if k not in self._drop)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def export_entries(params: Any, max_len: int) -> list:
    """Hallo's `net.pth` tensors (lazy entries, Hallo's key names) for EMO params; the
    positional tables in their attention's dtype."""
    entries = torch_entries(params, RENAMES)
    shapes = {e.key: e.shape for e in entries}
    dtypes = {e.key: e.dtype for e in entries}
    for key, shape in pe_keys(shapes, max_len).items():
        dtype = dtypes[key.replace("pos_encoder.pe", "to_q.weight")]
        make = lambda s=shape, d=dtype: positional_table(*s[1:]).astype(d)  # noqa: E731
        entries.append(Entry(key, shape, dtype, make))
    return entries


@dataclasses.dataclass
class HalloWeights:
    """A Hallo checkpoint read into emo_jax: the network config and the Flax params."""

    config: ModelConfig
    params: Any


@functools.lru_cache(maxsize=4)
def _abstract(config: ModelConfig) -> Any:
    return abstract_params(HalloModel(config))


def read(path: str | Path, vae: VAEConfig | None = None, dtype: Any = np.float32) -> HalloWeights:
    """Reads Hallo's `net.pth` (sizes from the JSON files beside it, else Hallo's released);
    params as `dtype`, or None: float16 and float32 tensors as the file stores them."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    state = load_state_dict(path)
    unknown = [k for k in state.keys() if not k.startswith(tuple(f"{p}." for p in PARTS))]
    if unknown:
        raise InputError(
            f"{path}: {len(unknown)} key(s) outside Hallo's Net ({', '.join(PARTS)}): "
            f"{', '.join(unknown[:5])}"
        )
    config = model_config(path.parent, vae)
    abstract = _abstract(config)
    renamed = _Floats(state, dtype)
    params = to_flax(renamed, abstract, config.emo.temporal.motion_max_seq_length, str(path))
    return HalloWeights(config, params)


class _Floats(Mapping):
    """A state dict whose tensors are read as `dtype` on access (None: float16 and float32 as
    they are, others as float32)."""

    def __init__(self, state: Mapping, dtype: Any):
        self._state, self._dtype = state, dtype

    def __getitem__(self, key: str) -> np.ndarray:
        value = np.asarray(self._state[key])
        keep = self._dtype is None and value.dtype in (np.float16, np.float32)
        return value if keep else np.asarray(value, self._dtype or np.float32)

    def __iter__(self):
        return iter(self._state)

    def __len__(self) -> int:
        return len(self._state)


def to_bundle(
    src: str | Path,
    dst: str | Path,
    vae: str | Path | None = None,
    wav2vec2: str | Path | None = None,
    overwrite: bool = False,
) -> Config:
    """Hallo's `net.pth` + the SD VAE folder (`--vae`, else `vae/` beside it) + the wav2vec2
    folder -> an emo_jax model bundle (Hallo's sampler settings; the params in the file's
    float16 or float32); complete or nothing."""
    src = Path(src)
    vae = Path(vae) if vae else src.parent / "vae"
    if not (vae / "config.json").is_file():
        raise InputError(f"{vae}: no VAE folder (pass --vae, the sd-vae-ft-mse folder)")
    vae_module, vae_params = AutoencoderKL.from_pretrained(vae)
    weights = read(src, vae_module.config, dtype=None)  # as stored: the file held once
    audio = weights.config.audio
    if wav2vec2:
        w2v = read_config(Path(wav2vec2), WAV2VEC2_FORMAT)
        layers, width = weights.config.hallo.audio_layers, weights.config.hallo.audio_width
        if (w2v.num_hidden_layers, w2v.hidden_size) != (layers, width):
            raise InputError(
                f"{wav2vec2}: wav2vec2 with {w2v.num_hidden_layers} layers of width "
                f"{w2v.hidden_size}; {src} takes {layers} layers of width {width}"
            )
        audio = dataclasses.replace(audio, wav2vec2_path=str(Path(wav2vec2).absolute()))
    config = Config(
        model=dataclasses.replace(weights.config, audio=audio),
        diffusion=dataclasses.replace(DIFFUSION),
    )
    save_bundle(dst, config, {"emo": weights.params, "vae": vae_params}, overwrite)
    return config


def from_bundle(src: str | Path, dst: str | Path, overwrite: bool = False) -> None:
    """A Hallo-family bundle -> Hallo's `net.pth` in `dst` (a folder), with the
    `unet_config.json`, `unet_additional_kwargs.json` and `modules.json` that size it."""
    import torch

    src, dst = Path(src), Path(dst)
    config, params = load_bundle(src)
    model = config.model
    if model.emo.family != "hallo":
        raise InputError(f"{src}: a model of family {model.emo.family!r}, not hallo")
    entries = export_entries(params.pop("emo"), model.emo.temporal.motion_max_seq_length)
    del params
    with atomic_folder(dst, overwrite) as tmp:
        state = {}
        for i, e in enumerate(entries):  # each param is freed once its tensor is made
            state[e.key] = torch.from_numpy(np.array(e.make()))
            entries[i] = None
        torch.save(state, tmp / "net.pth")
        for name, data in sizes_json(model).items():
            write_json(data, tmp / name)


def sizes_json(model: ModelConfig) -> dict[str, dict]:
    """The JSON files that size a Hallo `net.pth` (read back by `model_config`)."""
    emo, hallo, temporal = model.emo, model.hallo, model.emo.temporal
    unet = {"_class_name": "UNet2DConditionModel", **to_dict(model.unet)}
    kwargs = {
        **RELEASED_UNET_KWARGS,
        "motion_module_mid_block": temporal.use_motion_mid_block,
        "motion_module_kwargs": {
            **RELEASED_UNET_KWARGS["motion_module_kwargs"],
            "num_attention_heads": temporal.motion_num_attention_heads,
            "num_transformer_block": temporal.motion_transformer_layers_per_block,
            "temporal_position_encoding_max_len": temporal.motion_max_seq_length,
        },
        "audio_attention_dim": hallo.audio_attention_dim,
        "stack_enable_blocks_name": list(hallo.audio_blocks),
        "stack_enable_blocks_depth": list(hallo.audio_depths),
    }
    modules = {
        "face_locator": {
            "conditioning_embedding_channels": model.unet.block_out_channels[0],
            "conditioning_channels": hallo.face_locator_in_channels,
            "block_out_channels": list(emo.face_locator_channels),
        },
        "imageproj": {
            "cross_attention_dim": model.unet.cross_attention_dim,
            "clip_embeddings_dim": hallo.face_embed_dim,
            "clip_extra_context_tokens": hallo.face_tokens,
        },
        "audioproj": {
            "seq_len": 2 * model.audio.window + 1,
            "blocks": hallo.audio_layers,
            "channels": hallo.audio_width,
            "intermediate_dim": model.audio.proj_hidden_dim,
            "output_dim": hallo.audio_attention_dim,
            "context_tokens": model.audio.proj_tokens,
        },
    }
    return {
        "unet_config.json": unet,
        "unet_additional_kwargs.json": kwargs,
        "modules.json": modules,
    }
