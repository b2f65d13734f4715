"""The exported EMO model folder: one sub-folder per component in the format of the PyTorch
library that owns it, and an index naming them.

    DST/emo_index.json     {"format": "emo_jax-export", "version": 2, "config": {...},
                            "components": {name: sub-folder}}
    DST/reference_unet/    diffusers UNet2DConditionModel (ReferenceNet)
    DST/denoising_unet/    diffusers UNet2DConditionModel (backbone; attn2 = audio-attention)
    DST/motion_modules/    diffusers MotionAdapter (the temporal modules)
    DST/speed_encoder/     speed MLP + the speed attention of every temporal module
    DST/audio_proj/        Hallo-style AudioProjModel
    DST/face_locator/      the face-locator conv net
    DST/vae/               diffusers AutoencoderKL
    DST/audio_encoder/     transformers Wav2Vec2Model (when the config names one)

The ReferenceNet has no text cross-attention and no output head, and a stage-1 backbone has no
audio-attention; so that diffusers opens both as `UNet2DConditionModel`, those keys are written
as zeros (listed in the index under "placeholders") and dropped again on import. Zero
weights make diffusers' attention add nothing, so the PyTorch twin runs the folder as it is.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from emo_jax.config import Config, from_dict, to_dict
from emo_jax.errors import InputError
from emo_jax.files import atomic_folder, read_json, write_json
from emo_jax.models.emo import EMOModel, abstract_params
from emo_jax.models.inventory import component_of
from emo_jax.models.motion_adapter import MOTION_ADAPTER_FORMAT, adapter_config
from emo_jax.models.unet import UNET_FORMAT
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.weights.convert import ConversionError, torch_entries, torch_shapes, torch_to_flax
from emo_jax.weights.io import Entry, find_weights, load_state_dict, save_safetensors
from emo_jax.weights.pretrained import abstract_params as folder_params
from emo_jax.weights.pretrained import save_pretrained

INDEX = "emo_index.json"
FORMAT = "emo_jax-export"
VERSION = 2  # 2: the temporal modules' folder is named motion_modules/ (was motion_module/)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclasses.dataclass(frozen=True)
class Part:
    """One exported sub-folder: the components it holds (emo_jax.models.inventory)."""

    name: str
    components: tuple[str, ...]
    strip_top: bool  # drop the top-level module name from the keys
    class_name: str

    def select(self, path: tuple[str, ...]) -> bool:
        return component_of(path) in self.components


# The backbone's folder holds its audio-attention too: diffusers' UNet has a slot for it.
PARTS = (
    Part("reference_unet", ("reference_unet",), True, "UNet2DConditionModel"),
    Part("denoising_unet", ("denoising_unet", "audio_attention"), True, "UNet2DConditionModel"),
    Part("motion_modules", ("motion_modules",), True, "MotionAdapter"),
    Part("speed_encoder", ("speed_encoder",), False, "SpeedEncoder"),
    Part("audio_proj", ("audio_proj",), True, "AudioProjModel"),
    Part("face_locator", ("face_locator",), True, "FaceLocator"),
)


def _key(path: tuple[str, ...], part: Part) -> tuple[str, ...]:
    if part.strip_top:
        return path[1:]
    return path[1:] if path[0] == "denoising_unet" else path


def _part_tree(flat: dict, part: Part) -> dict:
    return unflatten_dict({_key(p, part): v for p, v in flat.items() if part.select(p)})


def _unet_shapes(config: Config) -> dict[str, tuple[int, ...]]:

    cfg = config.model.unet
    return torch_shapes(folder_params(UNET_FORMAT.build(cfg, None), UNET_FORMAT, cfg))


def _part_config(part: Part, config: Config) -> dict:
    emo, unet = config.model.emo, config.model.unet
    if part.class_name == "UNet2DConditionModel":
        return {"_class_name": "UNet2DConditionModel", **to_dict(unet)}
    settings = {
        "speed_encoder": {
            k: getattr(emo, k)
            for k in (
                "speed_centers",
                "speed_radii",
                "speed_window",
                "speed_hidden_dim",
                "speed_embed_dim",
            )
        },
        "audio_proj": {
            "output_dim": unet.cross_attention_dim,
            "hidden_dim": config.model.audio.proj_hidden_dim,
            "num_tokens": config.model.audio.proj_tokens,
        },
        "face_locator": {
            "out_channels": unet.block_out_channels[0],
            "channels": list(emo.face_locator_channels),
        },
    }[part.name]
    return {"_class_name": part.class_name, **to_dict(settings)}


def export_model(folder: str | Path, config: Config, params: dict, overwrite: bool = False) -> None:
    """Writes the exported folder for a model bundle's params {"emo": ..., "vae": ...}."""
    flat = flatten_dict(jax.tree_util.tree_map(np.asarray, params["emo"]))
    with atomic_folder(folder, overwrite) as tmp:
        components, placeholders = {}, {}
        for part in PARTS:
            tree = _part_tree(flat, part)
            if not tree:
                continue
            entries = torch_entries(tree)
            if part.class_name == "UNet2DConditionModel":
                have = {e.key for e in entries}
                missing = {k: s for k, s in _unet_shapes(config).items() if k not in have}
                placeholders[part.name] = sorted(missing)
                entries += [
                    Entry(k, s, np.dtype(np.float32), lambda s=s: np.zeros(s, np.float32))
                    for k, s in missing.items()
                ]
            if part.name == "motion_modules":
                save_pretrained(
                    tree,
                    adapter_config(config.model.unet, config.model.emo),
                    tmp / part.name,
                    MOTION_ADAPTER_FORMAT,
                )
                components[part.name] = part.name
                continue
            save_safetensors(entries, tmp / part.name / WEIGHTS)
            write_json(_part_config(part, config), tmp / part.name / "config.json")
            components[part.name] = part.name
        save_pretrained(params["vae"], config.model.vae, tmp / "vae", VAE_FORMAT)
        components["vae"] = "vae"
        w2v = config.model.audio.wav2vec2_path
        if config.model.audio.encoder == "wav2vec2" and w2v:
            shutil.copytree(w2v, tmp / "audio_encoder")
            components["audio_encoder"] = "audio_encoder"
        write_json(
            {
                "format": FORMAT,
                "version": VERSION,
                "config": to_dict(config),
                "components": components,
                "placeholders": placeholders,
            },
            tmp / INDEX,
        )


def is_export(folder: str | Path) -> bool:
    """True for an exported EMO folder."""
    return (Path(folder) / INDEX).is_file()


def export_config(folder: str | Path) -> Config:
    """The config of an exported folder (its index; no weights read)."""
    index = read_json(Path(folder) / INDEX)
    if index.get("format") != FORMAT:
        raise InputError(f"{Path(folder) / INDEX}: not an emo_jax export index")
    if index.get("version") != VERSION:
        raise InputError(
            f"{Path(folder) / INDEX}: export version {index.get('version')}, this emo_jax reads "
            f"version {VERSION} (export the model again)"
        )
    return from_dict(Config, index["config"], str(Path(folder) / INDEX))


def import_model(folder: str | Path) -> tuple[Config, dict]:
    """An exported folder -> (config, {"emo": ..., "vae": ...}), every tensor accounted for."""
    folder = Path(folder)
    index = read_json(folder / INDEX)
    config = export_config(folder)
    flat_abstract = flatten_dict(abstract_params(EMOModel(config.model)))
    loaded: dict = {}
    for part in PARTS:
        keys = [p for p in flat_abstract if part.select(p)]
        if not keys:
            continue
        sub = index["components"].get(part.name)
        if sub is None:
            raise InputError(f"{folder / INDEX}: component {part.name} is missing")
        weights = find_weights(folder / sub, ("diffusion_pytorch_model",))
        sd = load_state_dict(weights)
        skip = set(index.get("placeholders", {}).get(part.name, ()))
        sd = {k: v for k, v in sd.items() if k not in skip and not k.endswith("pos_embed.pe")}
        tree = unflatten_dict({_key(p, part): flat_abstract[p] for p in keys})
        values, _, _ = torch_to_flax(sd, tree, source=str(weights))
        flat_values = flatten_dict(values)
        loaded.update({p: flat_values[_key(p, part)] for p in keys})
    left = [("/".join(p)) for p in flat_abstract if p not in loaded]
    if left:
        raise ConversionError(
            f"{folder}: no tensor for {len(left)} param(s): {', '.join(left[:10])}"
        )
    vae_folder = folder / index["components"].get("vae", "vae")
    vae_weights = find_weights(vae_folder, ("diffusion_pytorch_model",))
    vae_cfg = config.model.vae
    vae, _, _ = torch_to_flax(
        load_state_dict(vae_weights),
        folder_params(VAE_FORMAT.build(vae_cfg, None), VAE_FORMAT, vae_cfg),
        source=str(vae_weights),
    )
    return config, {"emo": unflatten_dict(loaded), "vae": vae}
