"""The components of the EMO param tree, and parameter counts per component (from
`jax.eval_shape`, nothing allocated)."""

from __future__ import annotations

import math
from typing import Any

import jax
from flax.traverse_util import flatten_dict

from emo_jax.config import Config, Wav2Vec2Config
from emo_jax.models import hallo
from emo_jax.models.emo import EMOModel, abstract_params
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT
from emo_jax.weights.pretrained import abstract_params as folder_params

# The components of an EMO param tree, named after their modules in it. Stages train
# components (`train.trainable`), the exported folder groups them (emo_jax.interop.export).
COMPONENTS = (
    "reference_unet",  # the ReferenceNet
    "denoising_unet",  # the backbone's spatial layers
    "audio_attention",  # the backbone's cross-attention (`attn2`) outside its motion modules
    "motion_modules",  # the backbone's temporal modules (AnimateDiff's)
    "speed_encoder",  # the speed MLP and the speed attention (`speed_*`) in every motion module
    "face_locator",
    "audio_proj",
)


def count(tree: Any) -> int:
    """Number of scalars in a (possibly abstract) param tree."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def component_of(path: tuple[str, ...]) -> str:
    """The component an EMO param path belongs to: its top module, except in the backbone."""
    top = path[0]
    if top == "denoising_unet":
        if any(p.startswith("motion_modules_") for p in path):
            speed = any(p.startswith("speed_") for p in path)
            return "speed_encoder" if speed else "motion_modules"
        return "audio_attention" if "attn2" in path else "denoising_unet"
    if top not in COMPONENTS:
        raise ValueError(f"{'/'.join(path)}: no component has the module {top}")
    return top


def emo_counts(abstract: Any) -> dict[str, int]:
    """{component: count} of an EMO param tree."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for path, leaf in flatten_dict(abstract).items():
        counts[component_of(path)] += math.prod(leaf.shape)
    return {k: v for k, v in counts.items() if v}


def bundle_abstract(config: Config) -> dict:
    """The {"emo", "vae"} param shapes of a model bundle of `config`, nothing allocated."""
    vae = config.model.vae
    hallo_family = config.model.emo.family == "hallo"
    return {
        "emo": hallo.abstract_params(hallo.HalloModel(config.model))
        if hallo_family
        else abstract_params(EMOModel(config.model)),
        "vae": folder_params(VAE_FORMAT.build(vae, None), VAE_FORMAT, vae),
    }


def parameter_counts(config: Config) -> dict[str, int]:
    """{component: parameter count} of the EMO model, its VAE and its audio encoder."""
    abstract = bundle_abstract(config)
    counts = emo_counts(abstract["emo"])
    counts["vae"] = count(abstract["vae"])
    if config.model.audio.encoder == "wav2vec2":
        w2v = Wav2Vec2Config()
        counts["audio_encoder (wav2vec2-base)"] = count(
            folder_params(WAV2VEC2_FORMAT.build(w2v, None), WAV2VEC2_FORMAT, w2v)
        )
    return counts
