"""emo_jax.pipeline: inference. `EMOPipeline.from_pretrained(path or None)(image, audio)`
(a `HalloPipeline` for a model of family "hallo")."""

from emo_jax.pipeline.hallo import HalloPipeline
from emo_jax.pipeline.loading import RandomWeightsWarning, resolve_checkpoint
from emo_jax.pipeline.pipeline import Clip, EMOOutput, EMOPipeline, Options

__all__ = [
    "Clip",
    "EMOOutput",
    "EMOPipeline",
    "HalloPipeline",
    "Options",
    "RandomWeightsWarning",
    "resolve_checkpoint",
]
