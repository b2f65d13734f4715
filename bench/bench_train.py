"""Training step: time and memory of the tiny stages on one device, scaling over 1-8 fake CPU
devices, and the full-size (SD1.5) step's memory per device for a mesh, from the compiled step
on abstract inputs (nothing allocated) - to choose a TPU slice before paying for one.

    python bench/bench_train.py tiny                        # tiny stages 1-3, one device
    python bench/bench_train.py scaling                     # tiny stage 3 on 1, 2, 4, 8 devices
    python bench/bench_train.py full --stage 2 --mesh 1x8   # SD1.5 size, 8 devices (FSDP)
    python bench/bench_train.py all
    python bench/bench_train.py all --quick                 # seconds: see below

--quick: tiny stage 1 with a one-level UNet for every part, 1 timed step, one device, in this
process: a check that the benchmark runs, not a measurement.

Batches are random arrays of the configured shapes (no corpus needed). On this CPU, fake
devices share the same cores, so "scaling" shows the partitioning overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
QUICK = [  # --quick: tiny stage 1 with a one-level UNet, batch 2
    "model.unet.block_out_channels=[16]",
    "model.unet.down_block_types=[CrossAttnDownBlock2D]",
    "model.unet.up_block_types=[CrossAttnUpBlock2D]",
    "model.unet.attention_head_dim=[4]",
    "model.unet.mid_block_type=null",
    "data.batch_size=2",
]


def _nbytes(tree) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def _per_device(tree) -> int:
    """Bytes of one device's shards of an abstract tree (ShapeDtypeStructs with shardings)."""
    import jax
    import numpy as np

    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(tree)
    )


def _random_batch(setup, seed: int = 0) -> dict:
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    batch = {}
    for k, a in setup.abstract_batch.items():
        if a.dtype == np.uint8:
            v = rng.integers(0, 256, a.shape, dtype=np.uint8)
        elif k == "mask":
            v = (rng.random(a.shape) < 0.5).astype(np.float32)
        else:
            v = rng.standard_normal(a.shape).astype(a.dtype)
        batch[k] = jax.device_put(v, a.sharding)
    return batch


def measure(config: str, overrides: list[str], steps: int) -> dict:
    """Compile time, median step time and memory of one config on this process's devices."""
    import jax
    import numpy as np

    from emo_jax.config import load_config
    from emo_jax.parallel.mesh import make_mesh
    from emo_jax.train.setup import build
    from emo_jax.train.stages import split
    from emo_jax.train.step import init_state
    from emo_jax.train.weights import initial_params, load_vae

    cfg = load_config(config, ["train.init_from=null", *overrides])
    setup = build(cfg, make_mesh(cfg.parallel))
    state_sh, _, vae_sh, _ = setup.shardings
    params, _ = initial_params(cfg, setup.model, setup.param_shardings)
    trainable, frozen = split(params, cfg.train.trainable)
    state = jax.jit(lambda p: init_state(p, setup.optimizer, cfg.train), out_shardings=state_sh)(
        trainable
    )
    vae = jax.device_put(load_vae(cfg, setup.vae), vae_sh)
    t0 = time.perf_counter()
    compiled = setup.step.lower(
        setup.abstract_state, setup.abstract_frozen, setup.abstract_inputs, setup.abstract_batch
    ).compile()
    compile_s = time.perf_counter() - t0
    batches = [_random_batch(setup, i) for i in range(2)]
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, metrics = compiled(state, frozen, vae, batches[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    mem = compiled.memory_analysis()
    step_s = float(np.median(times[2:]))
    return {
        "devices": jax.device_count(),
        "batch": cfg.data.batch_size,
        "compile_s": compile_s,
        "step_ms": 1000 * step_s,
        "examples_per_s": cfg.data.batch_size / step_s,
        "trainable_params": sum(x.size for x in jax.tree_util.tree_leaves(trainable)),
        "frozen_params": sum(x.size for x in jax.tree_util.tree_leaves(frozen)),
        "peak_mib": (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
        / MIB,
    }


def tiny(steps: int, stages: tuple[int, ...] = (1, 2, 3), overrides: tuple[str, ...] = ()) -> None:
    print("tiny stages, 1 device (peak: compiled step's arguments + outputs + temporaries)")
    print(
        f"{'stage':>5} {'batch':>5} {'trainable':>10} {'frozen':>9} {'compile s':>9} "
        f"{'step ms':>8} {'examples/s':>10} {'peak MiB':>8}"
    )
    for stage in stages:
        r = measure(
            str(REPO / "configs/train/tiny.yaml"), [f"train.stage={stage}", *overrides], steps
        )
        print(
            f"{stage:>5} {r['batch']:>5} {r['trainable_params']:>10,} {r['frozen_params']:>9,} "
            f"{r['compile_s']:>9.1f} {r['step_ms']:>8.1f} {r['examples_per_s']:>10.1f} "
            f"{r['peak_mib']:>8.1f}"
        )


def _subprocess(args: list[str], devices: int, xla_flags: str = "") -> dict:
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {xla_flags}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    proc = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def scaling(steps: int, per_device: int, quick: bool = False) -> None:
    stage = 1 if quick else 3
    print(f"tiny stage {stage}, {per_device} examples per device (weak scaling), mesh data=N")
    print(
        f"{'devices':>7} {'batch':>5} {'compile s':>9} {'step ms':>8} {'examples/s':>10} "
        f"{'peak MiB/device':>15}"
    )
    config = str(REPO / "configs/train/tiny.yaml")
    for n in (1,) if quick else (1, 2, 4, 8):
        over = [f"train.stage={stage}", f"data.batch_size={per_device * n}", "parallel.data=-1"]
        if quick:
            r = measure(config, [*QUICK, *over], steps)
        else:
            r = _subprocess(["_measure", config, str(steps), *over], n)
        print(
            f"{n:>7} {r['batch']:>5} {r['compile_s']:>9.1f} {r['step_ms']:>8.1f} "
            f"{r['examples_per_s']:>10.1f} {r['peak_mib']:>15.1f}"
        )


def full_memory(config: str, mesh: str, overrides: list[str]) -> dict:
    """Per-device bytes of `config`'s step on `mesh` (data x fsdp [x tensor])."""
    import jax

    from emo_jax.config import load_config
    from emo_jax.parallel.mesh import make_mesh
    from emo_jax.train.setup import build

    sizes = [int(s) for s in mesh.split("x")] + [1]
    over = [f"parallel.data={sizes[0]}", f"parallel.fsdp={sizes[1]}", f"parallel.tensor={sizes[2]}"]
    cfg = load_config(config, [*over, *overrides])
    setup = build(cfg, make_mesh(cfg.parallel))
    t0 = time.perf_counter()
    compiled = setup.step.lower(
        setup.abstract_state, setup.abstract_frozen, setup.abstract_inputs, setup.abstract_batch
    ).compile()
    mem = compiled.memory_analysis()
    state = setup.abstract_state
    return {
        "devices": jax.device_count(),
        "compile_s": time.perf_counter() - t0,
        "trainable_params": sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
        "frozen_params": sum(x.size for x in jax.tree_util.tree_leaves(setup.abstract_frozen)),
        "params_mib": _per_device(state.params) / MIB,
        "optimizer_mib": _per_device(state.opt_state) / MIB,
        "ema_mib": _per_device(state.ema) / MIB,
        "frozen_mib": _per_device(setup.abstract_frozen) / MIB,
        "vae_mib": _per_device(setup.abstract_inputs) / MIB,
        "batch_mib": _per_device(setup.abstract_batch) / MIB,
        "temp_mib": mem.temp_size_in_bytes / MIB,
        "peak_mib": (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            - mem.alias_size_in_bytes
            + mem.temp_size_in_bytes
        )
        / MIB,
        "global_state_mib": _nbytes(state) / MIB,
    }


def full(stage: int, mesh: str, overrides: list[str], quick: bool = False) -> None:
    n = 1
    for s in mesh.split("x"):
        n *= int(s)
    if quick:
        mesh, config = "1x1", str(REPO / "configs/train/tiny.yaml")
        r = full_memory(config, mesh, ["train.stage=1", *QUICK, *overrides])
    else:
        # LLVM at -O0: the kernels are never run, only the buffer assignment matters (faster)
        config = str(REPO / "configs/train/paper.yaml")
        r = _subprocess(
            ["_full", config, mesh, f"train.stage={stage}", *overrides],
            n,
            "--xla_backend_optimization_level=0",
        )
    print(
        f"{'tiny (--quick)' if quick else 'full size (SD1.5)'} stage {1 if quick else stage}, "
        f"mesh {mesh} on {r['devices']} devices "
        f"(compiled on CPU in {r['compile_s']:.0f} s; overrides: {overrides or 'none'})"
    )
    print(f"  trainable {r['trainable_params']:,} params, frozen {r['frozen_params']:,}")
    print(f"  {'per device':<28} {'MiB':>9}")
    for key, label in (
        ("params_mib", "trained params (f32)"),
        ("optimizer_mib", "AdamW moments"),
        ("ema_mib", "EMA"),
        ("frozen_mib", "frozen params"),
        ("vae_mib", "VAE"),
        ("batch_mib", "batch"),
        ("temp_mib", "activations + temporaries"),
        ("peak_mib", "peak (compiled step)"),
    ):
        print(f"  {label:<28} {r[key]:>9.0f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":  # worker: one config, JSON out
        print(json.dumps(measure(sys.argv[2], sys.argv[4:], int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_full":
        print(json.dumps(full_memory(sys.argv[2], sys.argv[3], sys.argv[4:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["tiny", "scaling", "full", "all"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--per-device", type=int, default=2, help="scaling: examples per device")
    parser.add_argument("--stage", type=int, default=2, help="full: stage 1, 2 or 3")
    parser.add_argument("--mesh", default="1x8", help="full: data x fsdp [x tensor]")
    parser.add_argument("overrides", nargs="*", help="full: config overrides")
    parser.add_argument("--quick", action="store_true", help="seconds: see above")
    args = parser.parse_args()
    if args.quick:
        args.steps = 1
    print(f"cores: {os.cpu_count()}")
    if args.what in ("tiny", "all"):
        tiny(args.steps, (1,), tuple(QUICK)) if args.quick else tiny(args.steps)
    if args.what in ("scaling", "all"):
        scaling(args.steps, args.per_device, args.quick)
    if args.what in ("full", "all"):
        full(args.stage, args.mesh, args.overrides, args.quick)


if __name__ == "__main__":
    main()
