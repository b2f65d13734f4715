"""Where generation's model comes from: `resolve_checkpoint(path)` -> config + params.

Kinds of checkpoint, tried in order (`RESOLVERS`; add a function there for a new kind, e.g.
a training-run folder whose latest Orbax step holds {"emo", "vae"}):

- a model bundle folder (`emo_jax.checkpoint.bundle`: config.yaml + Orbax params/);
- an exported model folder (`emo_jax.interop.export`: emo_index.json + one diffusers /
  transformers folder per component).

With no path the built-in default model is used: the bundle in emo_jax/assets/default_model
(trained by configs/default/recipe.yaml; its card.json says on what). A config given without
a path means random weights of that config (announced by a RandomWeightsWarning), and so does
a package whose default model is missing (the tiny config, configs/model/tiny.yaml).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp

from emo_jax.checkpoint.bundle import is_bundle, load_bundle, load_bundle_config
from emo_jax.config import Config, load_config
from emo_jax.errors import InputError, check_input
from emo_jax.interop.export import export_config, import_model, is_export
from emo_jax.models import emo
from emo_jax.models.inventory import bundle_abstract
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL
from emo_jax.weights import pretrained
from emo_jax.weights.convert import check_shapes

DEFAULT_MODEL = Path(__file__).parents[1] / "assets" / "default_model"  # a bundle + card.json
TINY_CONFIG = Path(__file__).parents[1] / "configs" / "model" / "tiny.yaml"  # tests, fallback
DEFAULT_SEED = 0
RANDOM_WEIGHTS_NOTE = "random weights: output is noise"


class RandomWeightsWarning(UserWarning):
    """The model has random weights (no trained checkpoint was given)."""


@dataclasses.dataclass
class LoadedModel:
    """A config with its params {"emo": ..., "vae": ...}, read (or, for random weights, made)
    on first use and checked to fit the config then: the inputs are checked before that."""

    config: Config
    source: str  # what was loaded, for messages
    params_: dict | None = None
    random_seed: int | None = None  # set: random weights from this seed
    card: dict | None = None  # the built-in model's card.json (name, trained on, evaluation)
    read: Callable[[], dict] | None = None  # reads the saved params

    @property
    def params(self) -> dict:
        if self.params_ is None and self.read is not None:
            self.params_ = check_fit(self.read(), self.config, self.source)
        elif self.params_ is None:
            self.params_ = random_params(self.config, self.random_seed)
        return self.params_


@functools.lru_cache(maxsize=1)
def random_params(config: Config, seed: int) -> dict:
    """Freshly initialised EMO and VAE params (EMO's new layers at their zero identity); the
    last set is kept, so a process that asks twice (tests, an app) makes them once."""
    key = jax.random.key(seed + 1, impl="unsafe_rbg")  # rbg: fast to compile, as init_params
    vae = pretrained.init_params(AutoencoderKL(config.model.vae), VAE_FORMAT, config.model.vae, key)
    return {"emo": emo.init_params(emo.EMOModel(config.model), seed), "vae": vae}


@functools.lru_cache(maxsize=2)
def _abstract(config: Config) -> dict:
    """`bundle_abstract`, kept: tracing a model for its shapes takes seconds."""
    return bundle_abstract(config)


def check_fit(params: dict, config: Config, source: str) -> dict:
    """`params` as jnp arrays if they fit `config` exactly, else one InputError naming the
    missing, unexpected and mismatched keys."""
    want = _abstract(config)
    check_shapes(params, want, source)
    return jax.tree_util.tree_map(lambda have, w: jnp.asarray(have, w.dtype), params, want)


def _bundle(path: Path, config: Config | None) -> LoadedModel | None:
    """A model bundle; `config` (if given) replaces the bundle's config.yaml."""
    if not is_bundle(path):
        return None
    config = config or load_bundle_config(path)
    return LoadedModel(config, str(path), read=lambda: load_bundle(path)[1])


def _export(path: Path, config: Config | None) -> LoadedModel | None:
    """An exported model folder; `config` (if given) replaces the one in its index."""
    if not is_export(path):
        return None
    config = config or export_config(path)
    return LoadedModel(config, str(path), read=lambda: import_model(path)[1])


# (path, config or None) -> LoadedModel, or None if the path is not of that kind.
RESOLVERS: list[Callable[[Path, Config | None], LoadedModel | None]] = [_bundle, _export]


def default_config(overrides: list[str] | None = None) -> Config:
    """The config of the model `generate` uses without --checkpoint (no weights read)."""
    path = DEFAULT_MODEL / "config.yaml" if is_bundle(DEFAULT_MODEL) else TINY_CONFIG
    return load_config(path, overrides)


def default_model() -> LoadedModel:
    """The built-in default model (its card included), or the tiny random fallback."""
    if not is_bundle(DEFAULT_MODEL):
        return random_model(load_config(TINY_CONFIG), DEFAULT_SEED)
    card_path = DEFAULT_MODEL / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    loaded = _bundle(DEFAULT_MODEL, None)
    return dataclasses.replace(
        loaded, source=f"built-in default model ({DEFAULT_MODEL})", card=card
    )


def random_model(config: Config, seed: int) -> LoadedModel:
    """`config` with random weights from `seed`, announced by a RandomWeightsWarning."""
    warnings.warn(
        f"no checkpoint for this config: {RANDOM_WEIGHTS_NOTE} (seed {seed}); "
        "pass a trained model bundle to get faces",
        RandomWeightsWarning,
        stacklevel=3,
    )
    return LoadedModel(config, f"random weights (seed {seed})", random_seed=seed)


def resolve_checkpoint(
    path: str | Path | None, config: Config | None = None, seed: int = DEFAULT_SEED
) -> LoadedModel:
    """The model at `path` (see the module doc); with None the built-in default model, or with
    a `config` that config with random weights from `seed`."""
    if path is None:
        return default_model() if config is None else random_model(config, seed)
    path = Path(path)
    check_input(path, "checkpoint", folder=True)
    for resolve in RESOLVERS:
        loaded = resolve(path, config)
        if loaded is not None:
            return loaded
    raise InputError(
        f"{path}: not a model bundle (config.yaml + params/) or exported model (emo_index.json)"
    )
