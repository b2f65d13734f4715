"""CPU speed against the PyTorch twin: one denoising step of the full EMO denoiser in emo_jax
(jit-compiled) and in `emo_jax.interop.torch_twin.EMOTwin` (diffusers modules), on this CPU,
in one process, with the same weights and the same thread count; their times, the ratio
torch / emo_jax (>= 1: emo_jax at least as fast) and their peak memory.

A step is what the twin's forward computes: the ReferenceNet over the reference and the motion
frames, then the backbone (reference-, audio- and temporal attention, speed tokens, face
locator) over the target frames; one conditional pass (no guidance), batch 1, float32.
Weights are random: `init_params`, its all-zero tensors (zero-initialised layers, biases)
given small random values so that every path counts; emo_jax runs them, then they are
exported (`emo_jax.interop.export`) and the twin reads the folder. The outputs' largest
difference, relative to the largest output, shows both timed the same computation.

emo_jax first: compile (excluded), a warm-up call, then the median of --runs calls; its
weights are then exported and freed before the twin is built, so one framework's weights sit
in memory at a time (full size: 2.24e9 params, 8.33 GiB). The twin: `torch.inference_mode()`,
`torch.set_num_threads` = XLA:CPU's thread count (its default pool: the CPUs this process may
use), one warm-up call, the median of --runs calls. Memory (Linux /proc): the process's peak
resident set size over each framework's calls (warm-up included; compile and weight loading
not), and that peak above the resident size before the framework's weights were made or read:
its weights + the step's working memory (the twin's weights map the exported files and become
resident as the warm-up reads them).

    python bench/bench_twin.py           # SD1.5 sizes, 64x64 latents (512 px), 12 + 4 frames
    python bench/bench_twin.py --size 32 --frames 2 --motion 2 --runs 2    # a smaller step
    python bench/bench_twin.py --quick   # the tiny config, about a minute (most of it compiling)

Full size (XLA:CPU compile, shapes only): 17.0 TFLOP a step, 2.24 GiB compiled temporaries,
41 s to compile; peak RSS ~12 GiB (init 11.7 GiB, then weights 8.3 + the step's temporaries);
~9 GB of exported files in the temporary folder. A call takes minutes on 2 cores (the mid-size
step ran at 53 GFLOP/s in emo_jax and 25 in the twin under load: ~6 and ~11 min at full
size), 4 calls with --runs 1, plus ~8 min of init, compile, export and loading. Run it
on an otherwise idle machine: under load the twin's OpenMP threads slow down far more than
XLA's (the tiny step went from 0.35 s to 5-7 s while two training runs used both cores).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.config import Config, load_config
from emo_jax.models.audio_proj import window_shape
from emo_jax.models.emo import EMOModel, encode_reference, init_params

REPO = Path(__file__).resolve().parents[1]
FULL = REPO / "configs/model/emo_sd15.yaml"
TINY = REPO / "configs/model/tiny.yaml"
GIB = 2**30
ZERO_STD = 0.02  # the values given to init's all-zero tensors


def reset_peak() -> None:
    """Sets this process's peak resident set size (VmHWM) to its current size (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memory(field: str) -> int:
    """Bytes of this process's `VmRSS` (resident now) or `VmHWM` (peak) (Linux)."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(dict(line.split(":", 1) for line in lines)[field].split()[0]) * 1024


def release() -> None:
    """Frees what is unreferenced and hands the C heap's free pages back to the system."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def random_params(model: EMOModel, seed: int = 0) -> dict:
    """`init_params` with every all-zero tensor replaced by N(0, ZERO_STD) values."""
    rng = np.random.default_rng(seed)

    def fill(x: jax.Array) -> jax.Array:
        if np.any(np.asarray(x)):
            return x
        return jnp.asarray(ZERO_STD * rng.standard_normal(x.shape, np.float32))

    return jax.tree_util.tree_map(fill, init_params(model, seed))


def step_inputs(config: Config, frames: int, motion: int, size: int) -> tuple:
    """Channels-last inputs of one step: latents (1, F, s, s, C), timesteps (1,), reference
    (1, s, s, C), motion latents (1, n, s, s, C) or None, audio (1, F, 2m+1, layers, dim),
    face mask (1, 8s, 8s), speed (1, F)."""
    rng = np.random.default_rng(1)
    c, down = config.model.unet.in_channels, config.model.vae.factor
    normal = lambda *shape: rng.standard_normal(shape, np.float32)  # noqa: E731
    return (
        normal(1, frames, size, size, c),
        np.array([500]),
        normal(1, size, size, c),
        normal(1, motion, size, size, c) if motion else None,
        normal(1, frames, *window_shape(config.model.audio)),
        (rng.uniform(size=(1, down * size, down * size)) > 0.5).astype(np.float32),
        rng.uniform(0, 1.5, (1, frames)).astype(np.float32),
    )


def timed(call, runs: int) -> tuple[float, object]:
    """Median seconds of `runs` calls after a warm-up call, and the warm-up's result."""
    result = call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def run_jax(model: EMOModel, params: dict, inputs: tuple, runs: int) -> dict:
    """emo_jax's step: compile, then the calls; its output and figures."""
    lat, t, ref, mot, audio, mask, speed = jax.device_put(inputs)

    def step(p, lat, t, ref, mot, audio, mask, speed):
        features = encode_reference(model, p, ref, mot)
        return model.apply({"params": p}, lat, t, features, audio, mask, speed)

    reset_peak()
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(params, lat, t, ref, mot, audio, mask, speed).compile()
    compile_s = time.perf_counter() - t0
    compile_peak = memory("VmHWM")
    args = (params, lat, t, ref, mot, audio, mask, speed)
    reset_peak()
    seconds, output = timed(lambda: jax.block_until_ready(compiled(*args)), runs)
    return {
        "output": np.asarray(output),
        "seconds": seconds,
        "peak": memory("VmHWM"),
        "compile_s": compile_s,
        "compile_peak": compile_peak,
        "temp": compiled.memory_analysis().temp_size_in_bytes,
        "flops": float(compiled.cost_analysis()["flops"]),
    }


def run_torch(folder: Path, inputs: tuple, threads: int, runs: int) -> dict:
    """The twin's step on the exported folder: the calls; its output and figures."""
    import torch
    from diffusers.utils import logging

    from emo_jax.interop.torch_twin import EMOTwin

    logging.set_verbosity_error()  # without `accelerate`: a warning per UNet loaded
    torch.set_num_threads(threads)
    base = memory("VmRSS")
    twin = EMOTwin.from_exported(folder)  # its weights map the files: resident once used
    lat, t, ref, mot, audio, mask, speed = (
        None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in inputs
    )
    chw = lambda a: None if a is None else a.movedim(-1, -3).contiguous()  # noqa: E731
    args = (chw(lat), t, chw(ref), chw(mot), audio, mask, speed)
    reset_peak()
    with torch.inference_mode():
        seconds, output = timed(lambda: twin(*args), runs)
    return {
        "output": output.movedim(-3, -1).numpy(),
        "seconds": seconds,
        "base": base,
        "peak": memory("VmHWM"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=FULL, help="an EMO model config")
    parser.add_argument("--size", type=int, default=64, help="latent side (x8 pixels)")
    parser.add_argument("--frames", type=int, help="target frames (default: the config's)")
    parser.add_argument("--motion", type=int, help="motion frames (default: the config's)")
    parser.add_argument("--runs", type=int, default=1, help="timed calls after the warm-up")
    parser.add_argument("--attention", help="model.attention for emo_jax (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="the tiny config, 8x8 latents")
    args = parser.parse_args()
    if args.quick:
        args.config, args.size, args.frames, args.motion = TINY, 8, 4, 2
    config = load_config(
        str(args.config), [f"model.attention={args.attention}"] if args.attention else []
    )
    emo = config.model.emo
    frames = args.frames or emo.n_frames
    motion = emo.n_motion_frames if args.motion is None else args.motion
    threads = len(os.sched_getaffinity(0))  # XLA:CPU's default thread pool

    model = EMOModel(config.model)
    base = memory("VmRSS")
    params = random_params(model)
    release()  # init's freed heap (3 GiB at full size)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    inputs = step_inputs(config, frames, motion, args.size)
    ours = run_jax(model, params, inputs, args.runs) | {"base": base}
    with tempfile.TemporaryDirectory() as tmp:
        from emo_jax.interop.export import export_model
        from emo_jax.models.vae import VAE_FORMAT
        from emo_jax.weights.pretrained import abstract_params as folder_params

        # the VAE is no part of a step: zeros, for the export's sake
        vae_cfg = config.model.vae
        vae = folder_params(VAE_FORMAT.build(vae_cfg, None), VAE_FORMAT, vae_cfg)
        vae = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), vae)
        export_model(Path(tmp) / "export", config, {"emo": params, "vae": vae})
        del params, vae
        jax.clear_caches()
        release()
        theirs = run_torch(Path(tmp) / "export", inputs, threads, args.runs)

    diff = np.abs(ours["output"] - theirs["output"]).max() / np.abs(theirs["output"]).max()
    px = config.model.vae.factor * args.size
    print(
        f"\none denoising step of {args.config.name} ({n_params / 1e6:,.0f} M params, "
        f"{4 * n_params / GIB:.2f} GiB, {config.model.dtype}): {args.size}x{args.size} latents ({px} px), {frames} target + "
        f"{motion} motion frames, one conditional pass; {threads} threads "
        f"(XLA:CPU's pool, torch.set_num_threads({threads}))"
    )
    print(
        f"emo_jax: compile {ours['compile_s']:.1f} s (excluded), peak RSS "
        f"{ours['compile_peak'] / GIB:.2f} GiB while compiling; "
        f"{ours['temp'] / GIB:.2f} GiB compiled temporaries; {ours['flops'] / 1e9:,.1f} GFLOP "
        f"a step (XLA's count; GFLOP/s below divide it by each framework's time)"
    )
    print(
        f"\n| framework | step s (median of {args.runs}) | GFLOP/s | peak RSS GiB | "
        "above its start GiB |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in (("emo_jax (jit)", ours), ("torch twin", theirs)):
        print(
            f"| {name} | {r['seconds']:.3f} | {ours['flops'] / r['seconds'] / 1e9:.1f} | "
            f"{r['peak'] / GIB:.2f} | {(r['peak'] - r['base']) / GIB:.2f} |"
        )
    print(f"\ntorch / emo_jax: {theirs['seconds'] / ours['seconds']:.2f}x")
    print(f"outputs: max |emo_jax - torch| / max |torch| = {diff:.1e}, agree: {diff < 1e-4}")


if __name__ == "__main__":
    main()
