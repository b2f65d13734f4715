"""Starting EMO from published PyTorch parts: a Stable Diffusion 1.5 UNet into the ReferenceNet
and the backbone, an AnimateDiff `MotionAdapter` into the temporal modules. Everything else
(audio-attention, speed layers, face locator, audio projection) keeps its (zero-)init.

Known-unused source keys are reported, not errors: the ReferenceNet has no text
cross-attention and no output head; the backbone's text cross-attention (`attn2`) becomes the
audio-attention, which starts fresh; `pos_embed.pe` are AnimateDiff's fixed position tables,
which emo_jax computes. Any other unknown key or shape mismatch is an error naming every
offending key, unless `allow_unused`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from flax.traverse_util import flatten_dict, unflatten_dict

from emo_jax.checkpoint.bundle import save_bundle
from emo_jax.config import Config
from emo_jax.errors import InputError
from emo_jax.interop.formats import read
from emo_jax.models.emo import EMOModel, init_params
from emo_jax.models.inventory import component_of
from emo_jax.weights.convert import ConversionError, flax_to_torch, torch_to_flax
from emo_jax.weights.io import find_weights, load_state_dict

REFERENCE_UNUSED = r"^(conv_norm_out|conv_out)\.|transformer_blocks\.\d+\.(attn2|norm2)\."
BACKBONE_UNUSED = r"transformer_blocks\.\d+\.attn2\."
ADAPTER_UNUSED = r"pos_embed\.pe$"


@dataclasses.dataclass
class PartReport:
    """What one source put into one component."""

    component: str
    source: str
    loaded: int
    initialised: list[str]
    unused: list[str]

    def summary(self) -> str:
        groups = sorted({component_of(tuple(p.split("/"))) for p in self.initialised})
        init = f"; kept at init: {len(self.initialised)} ({', '.join(groups)})" if groups else ""
        unused = f"; unused source keys: {len(self.unused)}" if self.unused else ""
        return f"{self.component} <- {self.source}: loaded {self.loaded} tensors{init}{unused}"


def load_into(
    params: dict,
    top: str,
    component: str,
    state_dict: dict,
    unused_pattern: str,
    source: str,
    allow_unused: bool = False,
) -> tuple[dict, PartReport]:
    """Loads `state_dict` (named as the module `params[top]`) into the leaves of `component`
    (emo_jax.models.inventory) in it; all of them must be found."""
    flat = flatten_dict(params[top])
    chosen = {p: v for p, v in flat.items() if component_of((top, *p)) == component}
    loaded, _, unexpected = torch_to_flax(
        state_dict, unflatten_dict(chosen), source=source, allow_unexpected=True
    )
    bad = [k for k in unexpected if not re.search(unused_pattern, k)]
    if bad and not allow_unused:
        raise ConversionError(
            f"{source}: {len(bad)} key(s) that {component} has no place for: {', '.join(bad[:20])}"
            + (f" (+{len(bad) - 20} more)" if len(bad) > 20 else "")
        )
    flat.update(flatten_dict(loaded))
    out = dict(params)
    out[top] = unflatten_dict(flat)
    kept = ["/".join((top, *p)) for p in flat if p not in chosen]
    return out, PartReport(component, source, len(chosen), kept, unexpected)


def unet_weights(path: str | Path) -> Path:
    """The UNet weight file of a diffusers UNet folder or a whole pipeline folder (`unet/`)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "unet").is_dir():
        path = path / "unet"
    if not path.is_dir():
        raise InputError(f"{path}: not a diffusers UNet or pipeline folder")
    return find_weights(path, ("diffusion_pytorch_model",))


def load_sd15_unet(
    params: dict, state_dict: dict, source: str, allow_unused: bool = False
) -> tuple[dict, list[PartReport]]:
    """An SD1.5 UNet state dict (diffusers names) into the ReferenceNet and the backbone."""
    params, ref = load_into(
        params,
        "reference_unet",
        "reference_unet",
        state_dict,
        REFERENCE_UNUSED,
        source,
        allow_unused,
    )
    params, backbone = load_into(
        params,
        "denoising_unet",
        "denoising_unet",
        state_dict,
        BACKBONE_UNUSED,
        source,
        allow_unused,
    )
    return params, [ref, backbone]


def load_motion_adapter(
    params: dict, state_dict: dict, source: str, allow_unused: bool = False
) -> tuple[dict, PartReport]:
    """A MotionAdapter state dict (diffusers names) into the backbone's temporal modules."""
    return load_into(
        params, "denoising_unet", "motion_modules", state_dict, ADAPTER_UNUSED, source, allow_unused
    )


def init_from_pretrained(
    params: dict,
    sd15_unet: str | Path | None = None,
    motion_adapter: str | Path | None = None,
    allow_unused: bool = False,
) -> tuple[dict, list[PartReport]]:
    """EMO params with PyTorch parts loaded from diffusers folders or weight files; one report
    per (source, component)."""
    reports = []
    if sd15_unet is not None:
        weights = unet_weights(sd15_unet)
        params, reps = load_sd15_unet(params, load_state_dict(weights), str(weights), allow_unused)
        reports += reps
    if motion_adapter is not None:
        path = Path(motion_adapter)
        weights = find_weights(path, ("diffusion_pytorch_model",)) if path.is_dir() else path
        params, rep = load_motion_adapter(
            params, load_state_dict(weights), str(weights), allow_unused
        )
        reports.append(rep)
    return params, reports


def build_emo_bundle(
    config: Config,
    sd_source: str | Path,
    motion_source: str | Path | None,
    dst: str | Path,
    allow_unused: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> list[PartReport]:
    """A model bundle to start training from: a fresh EMO of `config` with an SD1.5 checkpoint
    (any format `emo-jax convert` reads) in its ReferenceNet/backbone and VAE, and optionally
    AnimateDiff motion modules."""
    if Path(dst).exists() and not overwrite:
        raise InputError(f"{dst}: already exists (use --overwrite to replace it)")
    sd = read(sd_source, config=config)
    parts = sd.params if sd.kind == "sd" else {sd.kind: sd.params}
    if "unet" not in parts or "vae" not in parts:
        raise InputError(f"{sd_source}: needs both a UNet and a VAE to start an EMO model")
    params = init_params(EMOModel(config.model), seed)
    params, reports = load_sd15_unet(
        params, flax_to_torch(parts["unet"]), str(sd_source), allow_unused
    )
    if motion_source is not None:
        mm = read(motion_source)
        if mm.kind != "motion_adapter":
            raise InputError(f"{motion_source}: not AnimateDiff motion modules (found {mm.kind})")
        params, rep = load_motion_adapter(
            params, flax_to_torch(mm.params), str(motion_source), allow_unused
        )
        reports.append(rep)
    save_bundle(dst, config, {"emo": params, "vae": parts["vae"]}, overwrite=overwrite)
    return reports
