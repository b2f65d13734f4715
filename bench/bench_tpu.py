"""Per-chip memory and FLOPs of the real TPU programs, compiled on this CPU-only machine.

libtpu (`pip install -e .[tpu]`) compiles ahead of time for a named TPU topology: the mesh is
built from the topology's devices, the training step (or one clip's sampling loop) is lowered
and compiled for them, and the compiled program's `memory_analysis()` / `cost_analysis()` give,
per chip: parameters, optimizer state, activations/temporaries, peak HBM against the chip's
HBM, FLOPs, and the time projected at 40% and 60% of the chip's peak bf16 FLOP/s.

    python bench/bench_tpu.py --topology v5p:2x2x1 --stage 2                 # FSDP over 4 chips
    python bench/bench_tpu.py --topology v5e:4x4 --stage 2 --mesh data=4,fsdp=4 --out t.md
    python bench/bench_tpu.py --topology v5e:1x1 --generate                  # one clip, 1 chip
    python bench/bench_tpu.py --topology v5e:2x2 --config configs/train/tiny.yaml --stage 2

`--config` defaults to configs/train/paper.yaml, stage `--stage` (full size: a stage-2 compile
takes ~25 CPU-minutes and ~21 GB of host memory). The programs are traced under the TPU mesh, so
`model.attention: auto` picks as on a TPU. Trailing arguments are config overrides
(`model.emo.remat=false`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
CHIPS = {  # per chip, public specs: HBM GiB, peak bf16 FLOP/s, TPU_ACCELERATOR_TYPE prefix
    "v4": (32, 275e12, "v4"),
    "v5e": (16, 197e12, "v5litepod"),
    "v5p": (95, 459e12, "v5p"),
}
UTILISATION = (0.4, 0.6)


def tpu_environment(topology: str) -> None:
    """What libtpu needs to compile for `topology` without TPU hardware (set before jax)."""
    gen, dims = topology.split(":")
    chips = math.prod(int(d) for d in dims.split("x"))
    prefix = CHIPS[gen][2]
    cores = chips if gen == "v5e" else 2 * chips  # v4 and v5p names count TensorCores
    os.environ.update(
        JAX_PLATFORMS="cpu",
        TPU_ACCELERATOR_TYPE=f"{prefix}-{cores}",
        TPU_WORKER_HOSTNAMES="localhost",
        ALLOW_MULTIPLE_LIBTPU_LOAD="1",  # compiling only: no device to guard with the lockfile
        TF_CPP_MIN_LOG_LEVEL="3",
    )


def parse_mesh(text: str | None, chips: int) -> list[str]:
    """`data=4,fsdp=4` -> parallel overrides; None: FSDP over every chip."""
    sizes = {"data": 1, "fsdp": chips, "tensor": 1}
    if text:
        sizes = {"data": 1, "fsdp": 1, "tensor": 1}
        for item in text.split(","):
            name, _, size = item.partition("=")
            if name not in sizes or not size.isdigit():
                raise SystemExit(f"--mesh {text!r}: expected name=size with data, fsdp, tensor")
            sizes[name] = int(size)
    return [f"parallel.{k}={v}" for k, v in sizes.items()]


def _per_chip(tree) -> int:
    """Bytes of one chip's shards of an abstract tree (ShapeDtypeStructs with shardings)."""
    import jax
    import numpy as np

    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(tree)
    )


def _peak(mem) -> int:
    """Arguments + outputs (less the donated ones) + temporaries of a compiled program."""
    return (
        mem.argument_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
        + mem.temp_size_in_bytes
    )


def train_rows(cfg, mesh) -> tuple[list[tuple[str, float]], float, float]:
    """(GiB rows, FLOPs per step per chip, compile seconds) of the training step."""
    import jax

    from emo_jax.train.setup import build

    setup = build(cfg, mesh)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):  # `auto` attention as on TPU; splash runs per chip (shard_map)
        args = (
            setup.abstract_state,
            setup.abstract_frozen,
            setup.abstract_vae,
            setup.abstract_batch,
        )
        compiled = setup.step.lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem, state = compiled.memory_analysis(), setup.abstract_state
    rows = [
        ("parameters: trained (float32)", _per_chip(state.params)),
        ("parameters: frozen + VAE", _per_chip((setup.abstract_frozen, setup.abstract_vae))),
        ("optimizer state (AdamW moments + EMA)", _per_chip((state.opt_state, state.ema))),
        ("batch", _per_chip(setup.abstract_batch)),
        ("activations / temporaries", mem.temp_size_in_bytes),
        ("peak HBM", _peak(mem)),
    ]
    flops = float(compiled.cost_analysis()["flops"])
    return [(k, v / GIB) for k, v in rows], flops, seconds


def generate_rows(cfg, device) -> tuple[list[tuple[str, float]], float, float]:
    """(GiB rows, FLOPs per clip, compile seconds) of one clip's sampling loop on one chip:
    n_frames frames at data.resolution, every guidance pass batched into one forward."""
    import jax
    import jax.numpy as jnp

    from emo_jax.diffusion import Guidance
    from emo_jax.models.emo import abstract_params, audio_feature_shape, encode_reference
    from emo_jax.pipeline.sampling import VideoFunctions

    fns = VideoFunctions(cfg.model, cfg.diffusion)
    sharding = jax.sharding.SingleDeviceSharding(device)
    put = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
    )
    emo, s = cfg.model.emo, cfg.data.resolution
    latent = s // fns.factor
    f, n = emo.n_frames, emo.n_motion_frames
    params = abstract_params(fns.model)
    z = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    features = jax.eval_shape(
        lambda p, r, m: encode_reference(fns.model, p, r, m),
        params,
        z(1, latent, latent, 4),
        z(1, n, latent, latent, 4),
    )
    layers, dim = audio_feature_shape(cfg.model.audio)
    audio = z(1, f, 2 * cfg.model.audio.window + 1, layers, dim)
    inputs = put((params, features, audio, z(1, s, s), z(1, f)))
    key = put(jax.eval_shape(lambda: jax.random.key(0)))
    t0 = time.perf_counter()
    with jax.set_mesh(jax.sharding.Mesh([device], ("data",))):  # `auto` attention: as on TPU
        guidance = Guidance.from_config(cfg.diffusion)
        compiled = fns.sample.lower(*inputs, key, guidance).compile()
        step = jax.jit(
            lambda *a: fns.denoiser(*a, guidance)(jnp.zeros((1, f, latent, latent, 4)), 500)
        )
        step_flops = float(step.lower(*inputs).compile().cost_analysis()["flops"])
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    rows = [
        ("parameters (float32)", _per_chip(inputs[0])),
        ("reference features + audio", _per_chip(inputs[1:])),
        ("activations / temporaries", mem.temp_size_in_bytes),
        ("peak HBM", _peak(mem)),
    ]
    return [(k, v / GIB) for k, v in rows], step_flops * fns.num_steps, seconds


def table(args, overrides: list[str]) -> str:
    import jax
    from jax.experimental import topologies

    from emo_jax.config import load_config
    from emo_jax.parallel.mesh import make_mesh

    gen = args.topology.split(":")[0]
    hbm, peak_flops, _ = CHIPS[gen]
    devices = list(topologies.get_topology_desc(args.topology, "tpu").devices)
    config = args.config or str(REPO / "configs/train/paper.yaml")
    mesh_over = parse_mesh(None if args.generate else args.mesh, len(devices))
    cfg = load_config(config, [f"train.stage={args.stage}", *mesh_over, *overrides])
    if args.generate:
        rows, flops, seconds = generate_rows(cfg, devices[0])
        what, unit, chips = "generation: one clip's sampling loop", "clip", 1
    else:
        mesh = make_mesh(cfg.parallel, devices)
        rows, flops, seconds = train_rows(cfg, mesh)
        what, unit, chips = f"training stage {cfg.train.stage}", "step", len(devices)
    mesh_text = ", ".join(f"{k}={v}" for k, v in make_mesh(cfg.parallel, devices).shape.items())
    lines = [
        f"### {what}, {args.topology} ({gen}, {hbm} GiB HBM per chip)",
        "",
        f"Config `{Path(config).name}` {' '.join(overrides)}; "
        f"{'one chip' if args.generate else f'mesh {mesh_text}'}; "
        f"attention `{cfg.model.attention}`, compute {cfg.model.dtype}, "
        f"{cfg.data.resolution}x{cfg.data.resolution}, "
        f"compiled with libtpu on the CPU in {seconds:.0f} s (jax {jax.__version__}).",
        "",
        "| per chip | GiB |",
        "|---|---:|",
        *(f"| {k} | {v:.2f} |" for k, v in rows[:-1]),
        f"| **{rows[-1][0]}** | **{rows[-1][1]:.2f}** of {hbm} ({rows[-1][1] / hbm:.0%}) |",
        "",
        f"FLOPs per {unit} per chip: {flops / 1e12:.4g} TFLOP (compiled program's cost "
        f"analysis; {chips} chip{'s' * (chips > 1)}). "
        + ", ".join(
            f"{u:.0%} of {peak_flops / 1e12:.0f} TFLOP/s: {flops / (u * peak_flops):.3g} s"
            for u in UTILISATION
        )
        + f" per {unit}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5p:2x2x1", help="e.g. v5e:4x4, v5p:2x2x1")
    parser.add_argument(
        "--stage", type=int, default=2, help="1, 2 or 3 (train.stage of the config)"
    )
    parser.add_argument("--mesh", help="data=4,fsdp=4[,tensor=1] (default: FSDP over all)")
    parser.add_argument("--generate", action="store_true", help="one clip's sampling loop")
    parser.add_argument("--config", help="a stage file (default: configs/train/paper.yaml)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.path=value")
    args = parser.parse_args()
    if args.topology.split(":")[0] not in CHIPS or ":" not in args.topology:
        raise SystemExit(f"--topology {args.topology!r}: expected <{'|'.join(CHIPS)}>:AxB[xC]")
    tpu_environment(args.topology)
    sys.path.insert(0, str(REPO))
    text = table(args, args.overrides)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
