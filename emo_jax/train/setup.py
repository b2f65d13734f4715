"""Everything a stage needs before any weight or batch exists: modules, optimizer, abstract
state, shardings, and the jitted train step (so a full-size step compiles without allocating)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
from emo_jax.train.emo_loss import make_eval_loss, make_loss_fn
from emo_jax.train.optimizer import make_optimizer
from emo_jax.train.stages import split, validate
from emo_jax.train.step import init_state, make_step
from emo_jax.train.weights import vae_module
from emo_jax.weights import pretrained


@dataclasses.dataclass
class Setup:
    """A stage on a mesh. `abstract_*` are ShapeDtypeStructs carrying their shardings; `inputs`
    are the step's fixed inputs that no checkpoint holds (the frozen VAE's params; {} in
    stage 0)."""

    cfg: Config
    mesh: Mesh
    model: Any  # the module that trains: EMOModel (stages 1-3) or AutoencoderKL (stage 0)
    vae: AutoencoderKL | None  # the frozen VAE of stages 1-3
    optimizer: optax.GradientTransformation
    param_shardings: Any  # the whole param tree of `model`
    abstract_state: Any  # TrainState
    abstract_frozen: Any
    abstract_inputs: Any
    abstract_batch: dict
    step: Any  # jitted (state, frozen, inputs, batch) -> (state, metrics); donates state
    eval_loss: Any  # jitted (trainable params, frozen, inputs, batch, key) -> score

    @property
    def shardings(self) -> tuple:
        """(state, frozen, inputs, batch) shardings."""
        get = lambda tree: jax.tree_util.tree_map(lambda a: a.sharding, tree)  # noqa: E731
        return tuple(
            get(t)
            for t in (
                self.abstract_state,
                self.abstract_frozen,
                self.abstract_inputs,
                self.abstract_batch,
            )
        )


def compile_stage(
    cfg: Config,
    mesh: Mesh,
    model: Any,
    params: Any,
    split_params: Callable[[Any], tuple[Any, Any]],
    inputs: Any,
    loss_fn: Callable,
    eval_loss: Callable,
    optimizer: optax.GradientTransformation,
    vae: AutoencoderKL | None = None,
) -> Setup:
    """The Setup of a stage training `model`, whose abstract `params` `split_params` cuts into
    (trainable, frozen) halves, with loss_fn(trainable, frozen, inputs, batch, key) ->
    (loss, {name: scalar}) and eval_loss(trainable, frozen, inputs, batch, key) -> score."""
    min_size = cfg.parallel.fsdp_min_size
    rows = cfg.data.batch_size
    dp = data_parallel_size(mesh)
    if (rows // cfg.train.grad_accum) % dp:
        raise ConfigError(
            f"data.batch_size {rows} / train.grad_accum {cfg.train.grad_accum} does not split "
            f"over the {dp} data-parallel devices"
        )
    trainable, frozen = split_params(params)
    state = jax.eval_shape(lambda p: init_state(p, optimizer, cfg.train), trainable)
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
        abstract_inputs=shard(inputs),
        abstract_batch=with_shardings(batch, batch_shardings(batch, mesh)),
        step=None,
        eval_loss=None,
    )
    state_sh, frozen_sh, inputs_sh, batch_sh = setup.shardings
    fn = make_step(loss_fn, optimizer, cfg.train, NamedSharding(mesh, batch_spec(mesh)))
    rep = replicated(mesh)
    setup.step = jax.jit(
        fn,
        in_shardings=(state_sh, frozen_sh, inputs_sh, batch_sh),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )
    setup.eval_loss = jax.jit(
        eval_loss,
        in_shardings=(state_sh.params, frozen_sh, inputs_sh, batch_sh, rep),
        out_shardings=rep,
    )
    return setup


def build(cfg: Config, mesh: Mesh) -> Setup:
    """Modules, abstract state and shardings, and the jitted train step of stage 1-3 `cfg` on
    `mesh`."""
    model = EMOModel(cfg.model)
    params = abstract_params(model)
    validate(cfg, params)
    vae = vae_module(cfg)
    return compile_stage(
        cfg,
        mesh,
        model,
        params,
        lambda p: split(p, cfg.train.trainable),
        pretrained.abstract_params(vae, VAE_FORMAT, vae.config),
        make_loss_fn(cfg, model, vae),
        make_eval_loss(cfg, model, vae),
        make_optimizer(cfg.train),
        vae,
    )
