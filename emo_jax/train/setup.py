"""Everything a stage needs before any weight or batch exists: modules, optimizer, abstract
state, shardings, and the jitted train step (so a full-size step compiles without allocating)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding

from emo_jax.config import Config, ConfigError
from emo_jax.models.emo import EMOModel, abstract_params
from emo_jax.models.vae import VAE_FORMAT, AutoencoderKL
from emo_jax.parallel.sharding import (
    batch_shardings,
    batch_spec,
    data_parallel_size,
    replicated,
    tree_shardings,
    with_shardings,
)
from emo_jax.train.data import batch_abstract
from emo_jax.train.optimizer import make_optimizer
from emo_jax.train.stages import split, validate
from emo_jax.train.step import init_state, make_eval_loss, make_train_step
from emo_jax.train.weights import vae_module
from emo_jax.weights import pretrained


@dataclasses.dataclass
class Setup:
    """A stage on a mesh. `abstract_*` are ShapeDtypeStructs carrying their shardings."""

    cfg: Config
    mesh: Mesh
    model: EMOModel
    vae: AutoencoderKL
    optimizer: optax.GradientTransformation
    param_shardings: Any  # the whole EMO param tree
    abstract_state: Any  # TrainState
    abstract_frozen: Any
    abstract_vae: Any
    abstract_batch: dict
    step: Any  # jitted (state, frozen, vae_params, batch) -> (state, metrics); donates state
    eval_loss: Any  # jitted (trainable params, frozen, vae_params, batch, key) -> loss

    @property
    def shardings(self) -> tuple:
        """(state, frozen, vae, batch) shardings."""
        get = lambda tree: jax.tree_util.tree_map(lambda a: a.sharding, tree)  # noqa: E731
        return tuple(
            get(t)
            for t in (
                self.abstract_state,
                self.abstract_frozen,
                self.abstract_vae,
                self.abstract_batch,
            )
        )


def build(cfg: Config, mesh: Mesh) -> Setup:
    """Modules, abstract state and shardings, and the jitted train step of `cfg` on `mesh`."""
    model = EMOModel(cfg.model)
    params = abstract_params(model)
    validate(cfg, params)
    vae = vae_module(cfg)
    optimizer = make_optimizer(cfg.train)
    min_size = cfg.parallel.fsdp_min_size
    trainable, frozen = split(params, cfg.train.trainable)
    state = jax.eval_shape(lambda p: init_state(p, optimizer, cfg), trainable)
    vae_params = pretrained.abstract_params(vae, VAE_FORMAT, vae.config)
    rows = cfg.data.batch_size
    dp = data_parallel_size(mesh)
    if (rows // cfg.train.grad_accum) % dp:
        raise ConfigError(
            f"data.batch_size {rows} / train.grad_accum {cfg.train.grad_accum} does not split "
            f"over the {dp} data-parallel devices"
        )
    batch = batch_abstract(cfg, rows)
    shard = lambda tree: with_shardings(tree, tree_shardings(tree, mesh, min_size))  # noqa: E731
    setup = Setup(
        cfg=cfg,
        mesh=mesh,
        model=model,
        vae=vae,
        optimizer=optimizer,
        param_shardings=tree_shardings(params, mesh, min_size),
        abstract_state=shard(state),
        abstract_frozen=shard(frozen),
        abstract_vae=shard(vae_params),
        abstract_batch=with_shardings(batch, batch_shardings(batch, mesh)),
        step=None,
        eval_loss=None,
    )
    state_sh, frozen_sh, vae_sh, batch_sh = setup.shardings
    fn = make_train_step(cfg, model, vae, optimizer, NamedSharding(mesh, batch_spec(mesh)))
    setup.step = jax.jit(
        fn,
        in_shardings=(state_sh, frozen_sh, vae_sh, batch_sh),
        out_shardings=(state_sh, replicated(mesh)),
        donate_argnums=(0,),
    )
    rep = replicated(mesh)
    setup.eval_loss = jax.jit(
        make_eval_loss(cfg, model, vae),
        in_shardings=(state_sh.params, frozen_sh, vae_sh, batch_sh, rep),
        out_shardings=rep,
    )
    return setup
