"""What a weights path holds, how to read it into Flax params, and how to write it back.

Formats:
  diffusers       a UNet / VAE / MotionAdapter folder, or a pipeline folder (unet/ + vae/)
  transformers    a wav2vec2 folder
  sd-single-file  Stable Diffusion 1.5 in the original layout (.safetensors / .ckpt)  [read]
  animatediff     an original AnimateDiff motion-module file (mm_sd_v15_v2.ckpt)     [read]
  orbax           emo_jax's own: a component (config.json + params/) or a model bundle
                  (config.yaml + params/, {"emo", "vae"})
  export          the exported EMO folder (emo_index.json + one sub-folder per component)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from emo_jax.checkpoint import bundle
from emo_jax.config import Config, MotionAdapterConfig, UNetConfig, VAEConfig
from emo_jax.errors import InputError
from emo_jax.files import atomic_folder, read_json, write_json
from emo_jax.interop import export, layouts
from emo_jax.models.inventory import bundle_abstract
from emo_jax.models.motion_adapter import MOTION_ADAPTER_FORMAT
from emo_jax.models.unet import UNET_FORMAT
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT
from emo_jax.weights.convert import torch_shapes, torch_to_flax
from emo_jax.weights.io import load_state_dict
from emo_jax.weights.pretrained import (
    FolderFormat,
    abstract_params,
    config_json,
    from_pretrained,
    read_config,
    save_pretrained,
)

PIPELINE_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
FORMATS = ("diffusers", "transformers", "sd-single-file", "animatediff", "orbax", "export")


@dataclasses.dataclass
class Model:
    """Weights read from somewhere: kind, config and Flax params (dicts of both for "sd")."""

    kind: str  # "unet" | "vae" | "motion_adapter" | "wav2vec2" | "sd" | "emo"
    config: Any
    params: Any
    notes: list[str] = dataclasses.field(default_factory=list)


def folder_formats() -> dict[str, FolderFormat]:
    """{kind: FolderFormat} of the single-component folders."""
    return {
        "unet": UNET_FORMAT,
        "vae": VAE_FORMAT,
        "motion_adapter": MOTION_ADAPTER_FORMAT,
        "wav2vec2": WAV2VEC2_FORMAT,
    }


def kind_of_config(path: Path) -> str:
    """The component kind a config.json describes."""
    raw = read_json(path)
    names = [raw.get("_class_name"), *(raw.get("architectures") or [])]
    if raw.get("model_type") == "wav2vec2":
        names.append("Wav2Vec2Model")
    for kind, fmt in folder_formats().items():
        if fmt.class_name in names or (
            kind == "wav2vec2" and any("Wav2Vec2" in str(n) for n in names)
        ):
            return kind
    raise InputError(
        f"{path}: unknown model class {names[0] or 'null'} (expected a UNet, VAE, MotionAdapter or wav2vec2)"
    )


def detect(path: Path) -> str:
    """The format of `path`, from what it holds."""
    if not path.exists():
        raise InputError(f"{path}: not found")
    if path.is_dir():
        if export.is_export(path):
            return "export"
        if (path / "params").is_dir() or (path / "unet" / "params").is_dir():
            return "orbax"
        if (path / "model_index.json").is_file():
            return "diffusers"
        if (path / "config.json").is_file():
            return (
                "transformers"
                if kind_of_config(path / "config.json") == "wav2vec2"
                else "diffusers"
            )
        raise InputError(
            f"{path}: a folder with no config.json, emo_index.json or params/: unknown format"
        )
    keys = load_state_dict(path).keys()
    if layouts.is_ldm_single_file(keys):
        return "sd-single-file"
    if layouts.is_animatediff_original(keys):
        return "animatediff"
    raise InputError(
        f"{path}: a weight file of unknown layout (neither SD single-file nor AnimateDiff)"
    )


def _read_component(path: Path) -> Model:
    """A single-component folder: a diffusers/transformers folder or an orbax component."""
    kind = kind_of_config(path / "config.json")
    fmt = folder_formats()[kind]
    cfg = read_config(path, fmt)
    if (path / "params").is_dir():
        params = bundle.restore_params(
            path / "params", abstract_params(fmt.build(cfg, None), fmt, cfg)
        )
    else:
        params = from_pretrained(path, fmt)[1]
    return Model(kind, cfg, params)


def read(
    path: str | Path, fmt: str | None = None, config: Config | None = None, ema: bool = False
) -> Model:
    """Reads `path` (format detected unless given). `config` supplies the architecture of an
    SD single file (default: SD1.5); `ema` takes a single file's EMA weights."""
    path = Path(path)
    fmt = fmt or detect(path)
    if fmt in ("diffusers", "transformers", "orbax") and (path / "model_index.json").is_file():
        parts = {k: _read_component(path / k) for k in ("unet", "vae") if (path / k).is_dir()}
        if not parts:
            raise InputError(f"{path}: a pipeline folder without unet/ or vae/")
        return Model(
            "sd", {k: m.config for k, m in parts.items()}, {k: m.params for k, m in parts.items()}
        )
    if fmt in ("diffusers", "transformers"):
        return _read_component(path)
    if fmt == "sd-single-file":
        return _read_sd_single_file(path, config, ema)
    if fmt == "animatediff":
        return _read_animatediff(path)
    if fmt == "export":
        cfg, params = export.import_model(path)
        return Model("emo", cfg, params)
    if fmt == "orbax":
        if bundle.is_bundle(path):
            cfg = bundle.load_bundle_config(path)
            return Model("emo", cfg, bundle.load_bundle(path, bundle_abstract(cfg))[1])
        return _read_component(path)
    raise InputError(f"{path}: unknown source format {fmt!r} (known: {', '.join(FORMATS)})")


def _read_sd_single_file(path: Path, config: Config | None, ema: bool) -> Model:
    sd = load_state_dict(path)
    if ema:
        sd = layouts.ema_keys(sd)
    unet_cfg = config.model.unet if config else UNetConfig()
    vae_cfg = config.model.vae if config else VAEConfig()
    fmts = folder_formats()
    out_cfg, out_params, used = {}, {}, set()
    for kind, cfg, table_fn, prefix in (
        ("unet", unet_cfg, layouts.unet_table, layouts.UNET_PREFIX),
        ("vae", vae_cfg, layouts.vae_table, layouts.VAE_PREFIX),
    ):
        if not any(k.startswith(prefix) for k in sd):
            continue
        fmt = fmts[kind]
        abstract = abstract_params(fmt.build(cfg, None), fmt, cfg)
        table = table_fn(torch_shapes(abstract).keys(), cfg)
        named, missing = layouts.from_original(sd, table)
        if missing:
            raise InputError(
                f"{path}: {len(missing)} {kind} key(s) missing for this architecture: {', '.join(missing[:10])}"
            )
        out_params[kind], _, _ = torch_to_flax(named, abstract, source=str(path))
        out_cfg[kind] = cfg
        used.update(table.values())
    unused = sorted(k for k in sd if k not in used)
    notes = (
        [
            f"{len(unused)} tensors not part of the UNet or VAE (text encoder, EMA copies, ...) left out"
        ]
        if unused
        else []
    )
    return Model("sd", out_cfg, out_params, notes)


def _read_animatediff(path: Path) -> Model:
    """The layout stores neither head count nor norm groups: 8 and 32, as in every published
    AnimateDiff motion module."""
    original = load_state_dict(path)
    sd = layouts.animatediff_from_original(original)
    channels, layers = [], 0
    i = 0
    while f"down_blocks.{i}.motion_modules.0.proj_in.weight" in sd:
        channels.append(int(sd[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[0]))
        i += 1
    while f"down_blocks.0.motion_modules.{layers}.proj_in.weight" in sd:
        layers += 1
    if not channels:
        raise InputError(f"{path}: no down_blocks motion modules found")
    pe = [v for k, v in original.items() if k.endswith("pos_encoder.pe")]
    cfg = MotionAdapterConfig(
        block_out_channels=tuple(channels),
        motion_layers_per_block=layers,
        use_motion_mid_block=any(k.startswith("mid_block.") for k in sd),
        motion_max_seq_length=int(pe[0].shape[1]) if pe else 32,
    )
    for i, width in enumerate(channels):
        for count, what in (
            (cfg.motion_norm_num_groups, "GroupNorm groups"),
            (cfg.motion_num_attention_heads, "attention heads"),
        ):
            if width % count:
                key = layouts.animatediff_to_original(
                    f"down_blocks.{i}.motion_modules.0.norm.weight"
                )
                raise InputError(
                    f"{path}: {key} has {width} channels, not a multiple of the {count} {what} "
                    "that AnimateDiff motion modules have (the file does not store them)"
                )
    fmt = folder_formats()["motion_adapter"]
    params, _, _ = torch_to_flax(
        sd, abstract_params(fmt.build(cfg, None), fmt, cfg), source=str(path)
    )
    return Model("motion_adapter", cfg, params)


def _write_orbax(params: Any, dst: Path) -> None:
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(dst.absolute(), params)
        ckptr.wait_until_finished()


def _write_component(params: Any, cfg: Any, kind: str, out: Path, fmt: str) -> None:
    ffmt = folder_formats()[kind]
    if fmt == "orbax":
        out.mkdir(parents=True, exist_ok=True)
        write_json(config_json(cfg, ffmt), out / "config.json")
        _write_orbax(params, out / "params")
    else:
        save_pretrained(params, cfg, out, ffmt)


def write(model: Model, dst: str | Path, fmt: str, overwrite: bool = False) -> None:
    """Writes `model` to `dst` in format `fmt`: complete, or nothing."""
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise InputError(f"{dst}: already exists (use --overwrite to replace it)")
    if model.kind == "emo":
        if fmt == "export":
            return export.export_model(dst, model.config, model.params, overwrite=True)
        if fmt == "orbax":
            return bundle.save_bundle(dst, model.config, model.params, overwrite=True)
        raise InputError(f"{dst}: a whole EMO model is written as export or orbax, not {fmt}")
    if fmt not in ("diffusers", "transformers", "orbax"):
        raise InputError(
            f"{dst}: a {model.kind} is written as diffusers, transformers or orbax, not {fmt}"
        )
    with atomic_folder(dst, overwrite) as tmp:
        if model.kind == "sd":
            for name, params in model.params.items():
                _write_component(params, model.config[name], name, tmp / name, fmt)
            write_json(PIPELINE_INDEX, tmp / "model_index.json")
        else:
            _write_component(model.params, model.config, model.kind, tmp, fmt)
    return None
