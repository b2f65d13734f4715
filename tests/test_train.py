"""Training pieces on one device: stage configs, trainable/frozen split, loading a previous
stage, sharding rules, the compiled step's memory, NaN skip and EMA."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_support as ts
from flax.traverse_util import flatten_dict
from jax.sharding import AbstractMesh, AxisType, PartitionSpec

from emo_jax.checkpoint.manager import Checkpoints
from emo_jax.cli import main
from emo_jax.config import ClipSpec, ConfigError, ParallelConfig, clip_spec, load_config
from emo_jax.errors import InputError
from emo_jax.models.emo import EMOModel, abstract_params
from emo_jax.models.inventory import component_of, emo_counts
from emo_jax.parallel.mesh import axis_sizes, make_mesh
from emo_jax.parallel.sharding import spec_for
from emo_jax.train.data import BatchStream, batch_abstract, global_batch
from emo_jax.train.metrics import step_seconds
from emo_jax.train.optimizer import learning_rate
from emo_jax.train.setup import build
from emo_jax.train.stages import load_matching, merge, split, validate
from emo_jax.train.step import _micro_batches, init_state
from emo_jax.train.weights import initial_params, load_vae, previous_stage_params

TINY = "configs/train/tiny.yaml"
STAGE_DIRS = ("stage1", "stage2", "stage3")


def _bytes(tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("family", ["paper", "tiny"])
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_configs_follow_the_paper(stage, family):
    cfg = load_config(f"configs/train/{family}.yaml", [f"train.stage={stage}"])
    trainable, mode, switches = ts.STAGES[stage]
    emo = cfg.model.emo
    assert set(cfg.train.trainable) == trainable and cfg.data.mode == mode
    assert (emo.use_temporal, emo.use_audio, emo.use_speed) == switches
    if family == "tiny":  # (full size: the bench builds those steps)
        validate(cfg, abstract_params(EMOModel(cfg.model)))
    else:  # the paper's values
        assert cfg.train.learning_rate == 1e-5 and cfg.data.resolution == 512
        assert cfg.data.batch_size == (48 if stage == 1 else 4)
        if stage > 1:
            assert (emo.n_frames, emo.n_motion_frames) == (12, 4)
            assert cfg.train.init_from == f"runs/stage{stage - 1}"
    # speed: degrees per frame in the data; the bucket centres span the synthetic corpus' range
    assert min(emo.speed_centers) <= 0.05 and max(emo.speed_centers) >= 1.5


def test_stage_files_pick_one_stage_and_derive_its_run_paths():
    train = {
        n: load_config("configs/default/train.yaml", [f"train.stage={n}"]).train for n in range(4)
    }
    runs = "runs/default/"
    assert [t.stage for t in train.values()] == [0, 1, 2, 3]
    assert [t.out_dir for t in train.values()] == [runs + n for n in ("autoencoder", *STAGE_DIRS)]
    assert [t.init_from for t in train.values()] == [None, None, runs + "stage1", runs + "stage2"]
    assert [t.vae_path for t in train.values()] == [None] + [runs + "autoencoder/vae"] * 3
    paper = load_config("configs/train/paper.yaml", ["train.stage=3", "train.out_dir=elsewhere"])
    assert (paper.train.out_dir, paper.train.init_from) == ("elsewhere", "runs/stage2")
    assert paper.train.vae_path is None  # no stage 0 in that file: the SD VAE, or a random one
    with pytest.raises(ConfigError, match="tiny.yaml: a stage file \\(stages 1, 2, 3\\)"):
        load_config(TINY)
    with pytest.raises(ConfigError, match="tiny.yaml: no stage 0 \\(stages 1, 2, 3\\)"):
        load_config(TINY, ["train.stage=0"])


def test_data_follow_the_model_and_old_data_keys_must_agree():
    with pytest.warns(FutureWarning, match="data.n_frames, data.fps ignored"):
        cfg = load_config(TINY, ["train.stage=2", "data.n_frames=4", "data.fps=25"])
    assert clip_spec(cfg.model) == ClipSpec(
        fps=25, sample_rate=16000, n_frames=4, n_motion_frames=2, audio_context=2
    )
    assert batch_abstract(cfg, 3)["audio"].shape[:3] == (3, 4, 2 * 2 + 1)
    with pytest.raises(ConfigError, match="data.n_frames 12 differs from model.emo.n_frames 4"):
        load_config(TINY, ["train.stage=2", "data.n_frames=12"])
    with pytest.raises(ConfigError, match="model.audio.fps 24.5: training data need a whole"):
        clip_spec(load_config(TINY, ["train.stage=2", "model.audio.fps=24.5"]).model)


def test_validate_names_the_problem():
    cfg = load_config(TINY, ["train.stage=2", "train.trainable=[speed_encoder]"])
    with pytest.raises(ConfigError, match="speed.*not in this model"):
        validate(cfg, abstract_params(EMOModel(cfg.model)))
    cfg = load_config(TINY, ["train.stage=2", "data.mode=image"])
    with pytest.raises(ConfigError, match="use_temporal"):
        validate(cfg, abstract_params(EMOModel(cfg.model)))
    assert main(["train", "--config", TINY, "--stage", "1", "train.trainable=[x]"]) == 2


def test_learning_rate_warms_up_holds_and_decays_to_zero(capsys):
    train = load_config(
        TINY,
        [
            "train.stage=1",
            "train.learning_rate=1.0e-3",
            "train.steps=100",
            "train.warmup_steps=10",
            "train.decay_steps=40",
        ],
    ).train
    lr = learning_rate(train)
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 60: 1e-3, 70: 7.5e-4, 90: 2.5e-4, 100: 0.0}
    assert {k: float(lr(k)) for k in expected} == pytest.approx(expected, abs=1e-9)
    constant = learning_rate(dataclasses.replace(train, warmup_steps=0, decay_steps=0))
    assert float(constant(0)) == float(constant(100)) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="warmup_steps 10 \\+ train.decay_steps 91 exceed"):
        load_config(
            TINY,
            ["train.stage=1", "train.steps=100", "train.warmup_steps=10", "train.decay_steps=91"],
        )
    with pytest.raises(ConfigError, match="train.decay_steps: -1 is negative"):
        load_config(TINY, ["train.stage=1", "train.decay_steps=-1"])
    args = ["train", "--config", TINY, "--stage", "1", "train.decay_steps=100000"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "decay_steps 100000 exceed train.steps" in err


class _NoData:
    """A data iterator with nothing to remember."""

    def get_state(self):
        return b"{}"


def test_split_merge_and_next_stage_loading(tmp_path):
    stage1 = abstract_params(EMOModel(load_config(TINY, ["train.stage=1"]).model))
    stage2 = abstract_params(EMOModel(load_config(TINY, ["train.stage=2"]).model))
    train, frozen = split(stage2, ("motion_modules", "audio_attention", "audio_proj"))
    assert {component_of(p) for p in flatten_dict(train)} == {
        "motion_modules",
        "audio_attention",
        "audio_proj",
    }
    assert flatten_dict(merge(train, frozen)).keys() == flatten_dict(stage2).keys()

    ones = jax.tree_util.tree_map(lambda x: np.ones(x.shape, x.dtype), stage1)
    zeros = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), stage2)
    loaded, report = load_matching(zeros, ones, "stage1")
    flat = flatten_dict(loaded)
    assert report.loaded == len(flatten_dict(stage1)) and report.unused == 0
    # new at init: the stage-2 modules, and the pre-norm of the audio-attention (`norm2`,
    # counted as backbone by the inventory; absent in stage 1, which has no cross-attention)
    new = {p for p in report.initialised if not p.endswith(("norm2/scale", "norm2/bias"))}
    assert {component_of(tuple(p.split("/"))) for p in new} == {
        "motion_modules",
        "audio_attention",
        "audio_proj",
    }
    for path, v in flat.items():
        assert v.all() == ("/".join(path) not in report.initialised), path

    # a stage-1 run folder: its latest checkpoint's EMA (else params) + frozen params
    t1, f1 = split(ones, ("reference_unet",))
    state = {"params": jax.tree_util.tree_map(lambda x: 2 * x, t1), "ema": t1, "step": np.int32(1)}
    ckpts = Checkpoints(tmp_path / "checkpoints")
    ckpts.save(1, {"state": state, "frozen": f1}, _NoData())
    ckpts.wait()
    prev = flatten_dict(previous_stage_params(tmp_path))
    assert prev.keys() == flatten_dict(stage1).keys() and all(v.max() == 1 for v in prev.values())

    bad = jax.tree_util.tree_map(lambda x: np.ones((3,) * x.ndim, x.dtype), stage1)
    with pytest.raises(ConfigError, match="do not fit"):
        load_matching(zeros, bad, "bad")


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
    ckpts = Checkpoints(tmp_path, keep=2)
    for step, loss in zip(range(1, 6), [5.0, 1.0, 4.0, 3.0, 2.0]):
        ckpts.save(step, {"x": np.full(3, step, np.float32)}, _NoData(), loss)
    ckpts.wait()
    assert ckpts.all_steps() == [2, 4, 5]
    assert Checkpoints(tmp_path).restore_numpy()["x"].tolist() == [5, 5, 5]


def test_checkpoint_of_another_config_is_refused_by_name(tmp_path):
    """Resuming a run folder with a changed model config: one line naming the array."""
    ckpts = Checkpoints(tmp_path, keep_best=False)
    state = {"params": {"conv": {"kernel": np.ones((3, 3, 4, 8), np.float32)}}}
    ckpts.save(1, {"state": state}, _NoData())
    ckpts.wait()
    wider = {
        "state": {"params": {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 4, 16), np.float32)}}}
    }
    with pytest.raises(InputError, match=r"1: saved with another model config \(state.params.conv."
                       r"kernel is \(3, 3, 4, 8\) there, \(3, 3, 4, 16\) now\)"):  # fmt: skip
        ckpts.restore(1, wider)
    same = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), {"state": state}
    )
    assert ckpts.restore(1, same)["state"]["params"]["conv"]["kernel"].shape == (3, 3, 4, 8)


def test_step_seconds_span_resumed_runs_and_skip_each_first_step(tmp_path):
    rows = [
        {"step": 1},  # a run's first step: compiles, no time
        {"step": 2, "seconds": 0.5},
        {"step": 3, "seconds": 1.0},
        {"step": 3},  # resumed from the checkpoint at step 2
        {"step": 4, "seconds": 0.25},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert step_seconds(tmp_path).tolist() == [0.5, 1.0, 0.25]


def test_sharding_rules():
    mesh = AbstractMesh((2, 4, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    assert spec_for("kernel", (320, 640), mesh) == PartitionSpec("fsdp", None)
    assert spec_for("kernel", (3, 3, 320, 640), mesh) == PartitionSpec(None, None, "fsdp", None)
    # input features not divisible: FSDP moves to the largest dimension it divides
    assert spec_for("kernel", (3, 3, 6, 640), mesh) == PartitionSpec(None, None, None, "fsdp")
    assert spec_for("bias", (640,), mesh, fsdp_min_size=4096) == PartitionSpec(None)
    assert spec_for("bias", (640,), mesh, fsdp_min_size=0) == PartitionSpec("fsdp")
    assert spec_for("kernel", (6, 5), mesh, fsdp_min_size=0) == PartitionSpec(None, None)
    tensor = AbstractMesh((1, 2, 4), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    assert spec_for("kernel", (320, 640), tensor) == PartitionSpec("fsdp", "tensor")
    assert axis_sizes(ParallelConfig(data=-1, fsdp=4), 8) == (2, 4, 1)
    with pytest.raises(ConfigError, match="needs 16 devices"):
        axis_sizes(ParallelConfig(data=4, fsdp=4), 8)


def test_micro_batches_take_every_kth_row():
    x = np.arange(8)
    assert _micro_batches({"x": x}, 2)["x"].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]


@pytest.fixture(scope="module")
def stage3(tmp_path_factory):
    corpus = ts.make_corpus(tmp_path_factory.getbasetemp() / "train_corpus")
    cfg = load_config(ts.CONFIG, ts.overrides(corpus, tmp_path_factory.mktemp("run")))
    return cfg, build(cfg, make_mesh(cfg.parallel))


def test_frozen_params_have_no_optimizer_state(stage3):
    cfg, setup = stage3
    trainable = flatten_dict(setup.abstract_state.params)
    assert {component_of(p) for p in trainable} == {"motion_modules", "speed_encoder"}
    params = _bytes(setup.abstract_state.params)
    # AdamW's two moments (and a step count): of the trainable params only
    assert 2 * params <= _bytes(setup.abstract_state.opt_state) <= 2 * params + 64


@pytest.mark.slow  # compiles the step for its memory (about 45 s)
def test_frozen_params_take_no_step_memory(stage3):
    cfg, setup = stage3
    mem = _lower(setup).compile().memory_analysis()
    state, frozen = _bytes(setup.abstract_state), _bytes(setup.abstract_frozen)
    inputs = state + frozen + _bytes(setup.abstract_inputs) + _bytes(setup.abstract_batch)
    assert inputs - 65536 <= mem.argument_size_in_bytes <= inputs  # less: unused params pruned
    # outputs: the state (updated in place) + metrics and a buffer table; no frozen param
    assert mem.alias_size_in_bytes == state
    assert mem.output_size_in_bytes - state < frozen / 20


def test_nan_step_is_skipped_and_ema_follows(stage3):
    cfg, setup = stage3
    state_sh, frozen_sh, vae_sh, batch_sh = setup.shardings
    params, _ = initial_params(cfg, setup.model, setup.param_shardings)
    trainable, frozen = split(params, cfg.train.trainable)
    state = jax.jit(lambda p: init_state(p, setup.optimizer, cfg.train), out_shardings=state_sh)(
        trainable
    )
    vae = jax.device_put(load_vae(cfg, setup.vae), vae_sh)
    data = BatchStream(cfg)
    p0 = jax.device_get(state.params)
    state, m = setup.step(state, frozen, vae, global_batch(next(data), batch_sh))
    assert bool(m["ok"]) and int(state.step) == 1 and int(state.skipped) == 0
    p1, ema1 = jax.device_get((state.params, state.ema))
    moved = jax.tree_util.tree_map(lambda a, b: float(np.abs(a - b).max()), p1, p0)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    for e, a, b in zip(*(jax.tree_util.tree_leaves(t) for t in (ema1, p0, p1))):
        np.testing.assert_allclose(e, 0.9 * a + 0.1 * b, rtol=1e-5, atol=1e-7)

    opt1 = jax.device_get(state.opt_state)
    nan_vae = jax.tree_util.tree_map(lambda x: jnp.full_like(x, jnp.nan), vae)
    state, m = setup.step(state, frozen, nan_vae, global_batch(next(data), batch_sh))
    assert not bool(m["ok"]) and not np.isfinite(float(m["loss"]))
    assert int(state.step) == 2 and int(state.skipped) == 1
    same = jax.tree_util.tree_map(
        np.array_equal, (p1, ema1, opt1), jax.device_get((state.params, state.ema, state.opt_state))
    )
    assert all(jax.tree_util.tree_leaves(same))


def _everything_trainable(cfg, setup):
    everything = dataclasses.replace(
        cfg.train, trainable=tuple(emo_counts(abstract_params(setup.model)))
    )
    return build(dataclasses.replace(cfg, train=everything), setup.mesh)


def _lower(setup):
    return setup.step.lower(
        setup.abstract_state, setup.abstract_frozen, setup.abstract_inputs, setup.abstract_batch
    )


def test_frozen_params_are_not_differentiated(stage3):
    """No weight-gradient arithmetic for frozen params: the lowered step (before XLA) of the
    stage does a quarter fewer flops than the same step with everything trainable."""
    cfg, setup = stage3
    flops = _lower(setup).cost_analysis()["flops"]
    assert flops < 0.85 * _lower(_everything_trainable(cfg, setup)).cost_analysis()["flops"]


@pytest.mark.slow
def test_frozen_params_cost_no_gradient_memory(stage3):
    """Compiled: the working memory of the everything-trainable step exceeds the stage's by
    more than the frozen params' size (their gradients, moments and updates)."""
    cfg, setup = stage3
    temp = _lower(setup).compile().memory_analysis().temp_size_in_bytes
    full = _lower(_everything_trainable(cfg, setup)).compile().memory_analysis()
    assert full.temp_size_in_bytes - temp >= _bytes(setup.abstract_frozen)
