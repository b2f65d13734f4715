"""Attention implementations on this CPU: compiled memory (XLA's `memory_analysis()`, nothing
allocated) and run time, `xla` (materialised scores) against `chunked` (blockwise).

layer     one reference-attention layer at 512x512 sizes: 16 frames, 4096 queries (64x64
          latents) attending to 4096 + 4096 keys (own tokens + reference tokens), 8 heads x 40,
          projections included; temporaries of the forward (generation) and of the gradient
          (training), in float32 and bfloat16
generate  the tiny model's sampling loop for one clip (two guidance passes) at a resolution
          whose first attention level is long: the compiled program's peak
speed     the attention alone at that layer's sizes (2 frames), float32, against torch's fused
          scaled_dot_product_attention on the same threads: wall and CPU seconds (CPU seconds
          compare fairly on a busy machine)

    python bench/bench_attention.py            # layer and generate, full sizes (compiles only)
    python bench/bench_attention.py speed      # seconds per call (~1 minute)
    python bench/bench_attention.py --quick    # smaller sizes, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emo_jax.nn.attention import Attention

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
KINDS = ("xla", "chunked")


def _peak(mem) -> int:
    return mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes


def layer(frames: int, tokens: int, heads: int, dim: int, dtype, run: bool) -> None:
    """Temporaries of one reference-attention layer, per implementation."""
    channels = heads * dim
    x = jax.ShapeDtypeStruct((frames, tokens, channels), dtype)
    kv = jax.ShapeDtypeStruct((frames, 2 * tokens, channels), dtype)
    scores = frames * heads * tokens * 2 * tokens * 4
    print(
        f"\nreference-attention layer, {jnp.dtype(dtype).name}: {frames} frames x {tokens} "
        f"queries x {2 * tokens} keys x {heads} heads x {dim}; float32 scores would take "
        f"{scores / MIB:,.0f} MiB"
    )
    print(f"{'attention':>9} {'forward temp MiB':>16} {'gradient temp MiB':>17} {'forward s':>9}")
    for kind in KINDS:
        module = Attention(heads, dim, dtype=dtype, implementation=kind)
        params = jax.eval_shape(module.init, jax.random.key(0), x, kv)
        fwd = jax.jit(module.apply)
        loss = lambda p, x, kv, m=module: m.apply(p, x, kv).astype(jnp.float32).sum()  # noqa: E731
        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        compiled = fwd.lower(params, x, kv).compile()
        f_temp = compiled.memory_analysis().temp_size_in_bytes
        g_temp = grad.lower(params, x, kv).compile().memory_analysis().temp_size_in_bytes
        seconds = float("nan")
        if run:
            rng = np.random.default_rng(0)
            args = [jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in (x, kv)]
            args = (
                jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 0.02, a.dtype), params),
                *args,
            )
            jax.block_until_ready(compiled(*args))
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            seconds = time.perf_counter() - t0
        print(f"{kind:>9} {f_temp / MIB:>16,.1f} {g_temp / MIB:>17,.1f} {seconds:>9.2f}")


def generate(resolution: int, frames: int) -> None:
    """Peak of the tiny model's compiled sampling loop for one clip, per implementation."""
    from emo_jax.config import load_config
    from emo_jax.diffusion import Guidance
    from emo_jax.models.emo import abstract_params, audio_feature_shape, encode_reference
    from emo_jax.pipeline.sampling import VideoFunctions

    base = load_config(str(REPO / "configs/model/tiny.yaml"))
    latent = resolution // 8
    print(
        f"\ntiny model, one clip: {frames} frames at {resolution}x{resolution} (first attention "
        f"level {latent * latent} queries x {2 * latent * latent} keys), two guidance passes"
    )
    print(f"{'attention':>9} {'temp MiB':>9} {'peak MiB':>9} {'compile s':>9}")
    for kind in KINDS:
        cfg = dataclasses.replace(base.model, attention=kind)
        cfg = dataclasses.replace(cfg, emo=dataclasses.replace(cfg.emo, n_frames=frames))
        fns = VideoFunctions(cfg, base.diffusion)
        z = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
        params = abstract_params(fns.model)
        n = cfg.emo.n_motion_frames
        features = jax.eval_shape(
            functools.partial(encode_reference, fns.model),
            params,
            z(1, latent, latent, 4),
            z(1, n, latent, latent, 4),
        )
        layers, dim = audio_feature_shape(cfg.audio)
        audio = z(1, frames, 2 * cfg.audio.window + 1, layers, dim)
        key = jax.eval_shape(lambda: jax.random.key(0))
        t0 = time.perf_counter()
        guidance = Guidance.from_config(base.diffusion)
        args = (params, features, audio, z(1, resolution, resolution), z(1, frames), key, guidance)
        mem = fns.sample.lower(*args).compile().memory_analysis()
        seconds = time.perf_counter() - t0
        print(
            f"{kind:>9} {mem.temp_size_in_bytes / MIB:>9,.1f} {_peak(mem) / MIB:>9,.1f} "
            f"{seconds:>9.1f}"
        )


def speed(frames: int, tokens: int, heads: int, dim: int) -> None:
    """Seconds of one attention call (no projections), per implementation and in torch."""
    import torch

    from emo_jax.nn.attention import dot_product_attention

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    rng = np.random.default_rng(0)
    q, k, v = (
        rng.standard_normal((frames, n, heads, dim), np.float32)
        for n in (tokens,) + (2 * tokens,) * 2
    )
    print(
        f"\nattention alone, float32: {frames} frames x {tokens} queries x {2 * tokens} keys x "
        f"{heads} heads x {dim}; {torch.get_num_threads()} threads"
    )
    print(f"{'attention':>9} {'wall s':>8} {'CPU s':>8} {'max diff':>9}")

    def timed(call):
        call()  # warm-up (and compile)
        t0, c0 = time.perf_counter(), time.process_time()
        out = call()
        return time.perf_counter() - t0, time.process_time() - c0, out

    tq, tk, tv = (torch.from_numpy(x).transpose(1, 2) for x in (q, k, v))
    with torch.no_grad():
        wall, cpu, want = timed(
            lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        )
    want = want.transpose(1, 2).numpy()
    print(f"{'torch':>9} {wall:>8.2f} {cpu:>8.2f} {0.0:>9.1e}")
    for kind in KINDS:
        fn = jax.jit(functools.partial(dot_product_attention, implementation=kind))
        wall, cpu, got = timed(lambda fn=fn: jax.block_until_ready(fn(q, k, v)))
        diff = float(np.abs(np.asarray(got) - want).max())
        print(f"{kind:>9} {wall:>8.2f} {cpu:>8.2f} {diff:>9.1e}")
        if not diff < 1e-4:
            raise SystemExit(f"{kind} attention disagrees with torch's by {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "what", nargs="?", choices=["layer", "generate", "speed", "all"], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    args = parser.parse_args()
    if args.what in ("layer", "all"):
        frames, tokens = (2, 1024) if args.quick else (16, 4096)
        for dtype in (jnp.float32, jnp.bfloat16):
            layer(frames, tokens, 8, 40, dtype, run=args.quick)
    if args.what in ("generate", "all"):
        generate(*((128, 4) if args.quick else (512, 12)))
    if args.what == "speed" or (args.what == "all" and args.quick):
        speed(2, *((1024, 2, 40) if args.quick else (4096, 8, 40)))


if __name__ == "__main__":
    main()
