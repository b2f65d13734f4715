"""Shared set-up of the training tests: a tiny synthetic corpus, the test config (tiny stage 3
made smaller still: compile time dominates on the CPU), subprocess helpers, and the worker that
runs in a subprocess with 8 fake devices (`python tests/train_support.py meshes OUT.json ...`)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/train/tiny.yaml")
# One UNet level without a mid block, an 8-channel VAE, 16 mel bins; batch 16 in two
# micro-batches of 8 (so 8 data-parallel devices get a row each); 2 motion + 4 target frames.
OVERRIDES = [
    "train.stage=3",
    "model.unet.block_out_channels=[16]",
    "model.unet.down_block_types=[CrossAttnDownBlock2D]",
    "model.unet.up_block_types=[CrossAttnUpBlock2D]",
    "model.unet.attention_head_dim=[4]",
    "model.unet.mid_block_type=null",
    "model.vae.block_out_channels=[8,8,8,8]",
    "model.vae.layers_per_block=1",
    "model.emo.face_locator_channels=[8,8,8,16]",
    "model.audio.n_mels=16",
    "data.batch_size=16",
    "data.resolution=32",
    "train.init_from=null",
    "train.grad_accum=2",
    "train.ema_decay=0.9",
    "train.steps=6",
    "train.checkpoint_every=2",
    "train.keep_checkpoints=3",
    "train.log_every=1",
    "train.sample_every=0",
    "train.eval_batches=0",
    "train.warmup_steps=0",
    "parallel.data_shards=2",
    "parallel.fsdp_min_size=0",
]
MESHES = ((8, 1), (2, 4), (1, 8))
# The paper's stages: what trains, the data mode, (audio, temporal, speed) switched on.
STAGES = {
    1: ({"reference_unet", "denoising_unet", "face_locator"}, "image", (False, False, False)),
    2: ({"motion_modules", "audio_attention", "audio_proj"}, "video", (True, True, False)),
    3: ({"motion_modules", "speed_encoder"}, "video", (True, True, True)),
}


def make_corpus(root: Path) -> Path:
    """Synthetic videos (2 people x 3 s, 64 px) preprocessed at 32 px with the test config's
    audio features; built once per folder."""
    out = root / "processed"
    if not (out / "manifest.json").is_file():
        from emo_jax.config import Config, DataConfig, load_config
        from emo_jax.data import synth
        from emo_jax.data.preprocess import preprocess

        synth.make_corpus(
            root / "videos", identities=2, seconds=3.0, size=64, progress=False, workers=1
        )
        cfg = Config(
            model=load_config(CONFIG, OVERRIDES).model,
            data=DataConfig(shards=str(out), resolution=32),
        )
        preprocess(root / "videos", out, cfg, 1, False)
    return out


def overrides(corpus: Path, out_dir: Path, *extra: str) -> list[str]:
    return [*OVERRIDES, f"data.shards={corpus}", f"train.out_dir={out_dir}", *extra]


def env(devices: int | None = None) -> dict[str, str]:
    """Environment of a test subprocess: CPU, the shared compilation cache, unbuffered output."""
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + e.get("PYTHONPATH", ""),
        JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "emo_jax_jit_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    e.pop("XLA_FLAGS", None)
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return e


def train_command(args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "emo_jax.cli",
        "train",
        "--config",
        CONFIG,
        "--no-progress",
        *args,
    ]


def run_train(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_command(args), env=env(), capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(run: Path) -> dict[int, dict]:
    """step -> the last record of that step in RUN/metrics.jsonl (a resumed run repeats steps)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def checkpoint_params(run: Path, step: int) -> dict:
    """Flat {path: array} of the trained params, EMA and frozen params saved at `step`."""
    from flax.traverse_util import flatten_dict

    from emo_jax.checkpoint.manager import Checkpoints

    saved = Checkpoints(run / "checkpoints").restore_numpy(step)
    tree = {
        "params": saved["state"]["params"],
        "ema": saved["state"]["ema"],
        "frozen": saved["frozen"],
    }
    return flatten_dict(tree, sep="/")


def initial_weights(cfg) -> dict:
    """Flat {path: array} of a fresh run's state at step 0, named as `checkpoint_params` names
    it: the trained half (params and its EMA) and the frozen half."""
    import jax
    from flax.traverse_util import flatten_dict

    from emo_jax.models.emo import EMOModel, init_params
    from emo_jax.train.stages import split

    params = jax.device_get(init_params(EMOModel(cfg.model), cfg.train.seed))
    trainable, frozen = split(params, cfg.train.trainable)
    return flatten_dict({"params": trainable, "ema": trainable, "frozen": frozen}, sep="/")


def assert_trained_alike(got: dict, want: dict, init: dict, tol: float = 1e-2) -> float:
    """The frozen params unchanged and equal; per trained tensor (params, EMA), the distance
    from `want` is below `tol` of how far training moved it from `init` (both as Frobenius
    norms, so that the few elements whose gradient is float noise, which Adam turns into full
    steps of either sign, weigh as little as they are). One optimizer step skipped, or a
    gradient that misses part of the batch, moves a tensor by about its own movement."""
    import numpy as np

    assert got.keys() == want.keys() == init.keys()
    worst, where = 0.0, None
    for k, w in want.items():
        if k.startswith("frozen/"):
            assert np.array_equal(got[k], w) and np.array_equal(w, init[k]), k
            continue
        moved = float(np.linalg.norm(w - init[k]))
        if moved == 0:  # no gradient and no weight decay (e.g. a bias of an unused path)
            assert np.array_equal(got[k], w), k
            continue
        ratio = float(np.linalg.norm(got[k] - w)) / moved
        worst, where = max((worst, where), (ratio, k))
    assert worst < tol, (worst, where)
    return worst


def _meshes(out: Path, corpus: Path) -> None:
    """Two steps on each mesh of MESHES (8 fake devices) from the same initial weights; writes
    the losses, each device's share of the state, and the weights after step 2 (npz; the
    initial ones as init:PATH)."""
    from concurrent.futures import ThreadPoolExecutor

    import jax
    import numpy as np
    from flax.traverse_util import flatten_dict

    from emo_jax.config import load_config
    from emo_jax.parallel.mesh import make_mesh
    from emo_jax.train.data import BatchStream, global_batch
    from emo_jax.train.setup import build
    from emo_jax.train.stages import split
    from emo_jax.train.step import init_state
    from emo_jax.train.weights import initial_params, load_vae

    assert jax.device_count() == 8
    configs = {
        f"{d}x{f}": load_config(
            CONFIG, overrides(corpus, out.parent, f"parallel.data={d}", f"parallel.fsdp={f}")
        )
        for d, f in MESHES
    }
    setups = {k: build(c, make_mesh(c.parallel)) for k, c in configs.items()}
    lowered = [
        s.step.lower(s.abstract_state, s.abstract_frozen, s.abstract_inputs, s.abstract_batch)
        for s in setups.values()
    ]
    with ThreadPoolExecutor(len(lowered)) as pool:  # XLA compiles without the GIL
        compiled = dict(zip(setups, pool.map(lambda low: low.compile(), lowered)))
    cfg, first = configs["1x8"], setups["1x8"]
    params = jax.device_get(initial_params(cfg, first.model, first.param_shardings)[0])
    vae = load_vae(cfg, first.vae)
    report = {}
    weights = {f"init:{k}": v for k, v in initial_weights(cfg).items()}
    for key, setup in setups.items():
        state_sh, frozen_sh, vae_sh, batch_sh = setup.shardings
        trainable, frozen = split(
            jax.device_put(params, setup.param_shardings), cfg.train.trainable
        )
        init = functools.partial(init_state, optimizer=setup.optimizer, cfg=cfg.train)
        state = jax.jit(init, out_shardings=state_sh)(trainable)
        vae_params, data, losses = jax.device_put(vae, vae_sh), BatchStream(cfg), {}
        for step in (1, 2):
            state, m = compiled[key](state, frozen, vae_params, global_batch(next(data), batch_sh))
            losses[step] = float(m["loss"])
        leaves = jax.tree_util.tree_leaves((state, frozen))
        held = [sum(x.addressable_shards[i].data.nbytes for x in leaves) for i in range(8)]
        report[key] = {"losses": losses, "share": [h / sum(x.nbytes for x in leaves) for h in held]}
        tree = {"params": state.params, "ema": state.ema, "frozen": frozen}
        for path, v in flatten_dict(jax.device_get(tree), sep="/").items():
            weights[f"{key}:{path}"] = np.asarray(v)
    out.write_text(json.dumps(report))
    np.savez(out.with_suffix(".npz"), **weights)


if __name__ == "__main__":
    if sys.argv[1] == "meshes":
        _meshes(Path(sys.argv[2]), Path(sys.argv[3]))
