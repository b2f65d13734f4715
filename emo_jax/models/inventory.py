"""Parameter counts per component, from `jax.eval_shape` (nothing allocated)."""

from __future__ import annotations

import math
from typing import Any

import jax
from flax.traverse_util import flatten_dict

from emo_jax.config import Config, Wav2Vec2Config
from emo_jax.models.emo import EMOModel, abstract_params
from emo_jax.models.vae import VAE_FORMAT
from emo_jax.models.wav2vec2 import WAV2VEC2_FORMAT
from emo_jax.weights.pretrained import abstract_params as folder_params

COMPONENTS = (
    "reference_net",
    "backbone_spatial",
    "audio_attention",
    "temporal",
    "speed",
    "face_locator",
    "audio_projection",
)


def count(tree: Any) -> int:
    """Number of scalars in a (possibly abstract) param tree."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def component_of(path: tuple[str, ...]) -> str:
    """Which EMO component a param path belongs to."""
    top = path[0]
    motion = any(p.startswith("motion_modules_") for p in path)
    if top == "reference_unet":
        return "reference_net"
    if top == "speed_encoder" or (motion and any(p.startswith("speed_") for p in path)):
        return "speed"
    if motion:
        return "temporal"
    if top == "denoising_unet":
        return "audio_attention" if "attn2" in path else "backbone_spatial"
    return {"face_locator": "face_locator", "audio_proj": "audio_projection"}[top]


def emo_counts(abstract: Any) -> dict[str, int]:
    """{component: count} of an EMO param tree."""
    counts = dict.fromkeys(COMPONENTS, 0)
    for path, leaf in flatten_dict(abstract).items():
        counts[component_of(path)] += math.prod(leaf.shape)
    return {k: v for k, v in counts.items() if v}


def parameter_counts(config: Config) -> dict[str, int]:
    """{component: parameter count} of the EMO model, its VAE and its audio encoder."""
    counts = emo_counts(abstract_params(EMOModel(config.model)))
    vae = config.model.vae
    counts["vae"] = count(folder_params(VAE_FORMAT.build(vae, None), VAE_FORMAT, vae))
    if config.model.audio.encoder == "wav2vec2":
        w2v = Wav2Vec2Config()
        counts["audio_encoder (wav2vec2-base)"] = count(
            folder_params(WAV2VEC2_FORMAT.build(w2v, None), WAV2VEC2_FORMAT, w2v)
        )
    return counts
