"""Hallo at its released sizes: the peak memory of converting its `net.pth` and of exporting it
back, and the per-device memory and FLOPs of 512x512 generation from the compiled programs.

    python bench/bench_hallo.py convert [--workdir DIR]         # ~5 GB synthetic net.pth
    python bench/bench_hallo.py compile --target v5e:1x1 --dtype bfloat16   # TPU (libtpu)
    python bench/bench_hallo.py compile --target cpu    # XLA:CPU (no float16 matmuls: bfloat16)
    python bench/bench_hallo.py all --quick     # seconds: the tiny fixture's sizes, in-process

`convert`: a `net.pth` of Hallo's released shapes (the key / shape table the converter
expects, exported back to Hallo's names) with random float16 values, as Hallo's release
stores them (2.42e9 values: 4.85 GB, the released file's size), and a random SD VAE folder;
then `emo-jax convert --src-format hallo` and `--dst-format hallo` each in a fresh process:
its maximum resident set size (what `/usr/bin/time -v` reports) against the file's size, and
the round trip checked value for value.

`compile`: the programs of one 16-frame clip (2 motion frames) at 512x512 at Hallo's released
sizes, lowered for one chip of a TPU topology (libtpu compiles on the CPU: `pip install -e
.[tpu]`) or for XLA:CPU (whose compiled memory stands in for a GPU's: a GPU build fuses and
schedules differently, and `auto` attention is `chunked` here where a GPU takes cuDNN's):
the clip's whole sampling program (face / audio conditions, the reference bank, 40 guided
steps), one guided step, the reference-bank pass and the VAE decode of the clip, each with its
compiled memory and FLOPs; the time per video-second projected at 40% of the chip's peak.
Parameters are float16 as a bundle converted from Hallo's release holds them
(`--param-dtype float32`: a float32 file's); `--dtype` is `model.dtype`, the compute dtype. Full size: several CPU-minutes and
GBs of host memory per program: run one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests/fixtures/hallo-tiny"
GIB = 2**30
FPS = 25  # Hallo's video frame rate
SIZES = ("unet_config.json", "unet_additional_kwargs.json", "modules.json")


def synthetic_net(folder: Path, sizes: Path | None) -> float:
    """folder/net.pth of random float16 values in the shapes the converter expects (sizes: the
    JSON files of `sizes`, copied beside; None: Hallo's released), the positional tables
    Hallo's; returns its size in GiB. Tensors are made one at a time."""
    import numpy as np
    import torch

    from emo_jax.interop import hallo
    from emo_jax.models.hallo import HalloModel, abstract_params

    folder.mkdir(parents=True)
    for name in SIZES * (sizes is not None):
        shutil.copy(sizes / name, folder / name)
    config = hallo.model_config(folder)
    entries = hallo.export_entries(
        abstract_params(HalloModel(config)), config.emo.temporal.motion_max_seq_length
    )
    gen = torch.Generator().manual_seed(0)
    state = {}
    for e in entries:
        if e.key.endswith("pos_encoder.pe"):
            state[e.key] = torch.from_numpy(np.asarray(e.make())).half()
        else:
            state[e.key] = (torch.randn(e.shape, generator=gen) * 0.02).half()
    torch.save(state, folder / "net.pth")
    return (folder / "net.pth").stat().st_size / GIB


def random_vae_folder(folder: Path) -> None:
    """A diffusers VAE folder of random float32 weights of SD's VAE (sd-vae-ft-mse's shapes)."""
    import numpy as np

    from emo_jax.config import VAEConfig
    from emo_jax.files import write_json
    from emo_jax.models.vae import VAE_FORMAT
    from emo_jax.weights.convert import torch_shapes
    from emo_jax.weights.io import Entry, save_safetensors
    from emo_jax.weights.pretrained import abstract_params, config_json

    cfg = VAEConfig()
    shapes = torch_shapes(abstract_params(VAE_FORMAT.build(cfg, None), VAE_FORMAT, cfg))
    rng = np.random.default_rng(0)
    entries = [
        Entry(k, s, np.dtype(np.float32), lambda s=s: 0.02 * rng.standard_normal(s, np.float32))
        for k, s in shapes.items()
    ]
    folder.mkdir(parents=True)
    write_json(config_json(cfg, VAE_FORMAT), folder / "config.json")
    save_safetensors(entries, folder / "diffusion_pytorch_model.safetensors")


def same_tensors(a: Path, b: Path) -> bool:
    """net.pth `a` and `b` hold the same keys, dtypes and bits (read one tensor at a time)."""
    import torch

    sa = torch.load(a, map_location="cpu", weights_only=True, mmap=True)
    sb = torch.load(b, map_location="cpu", weights_only=True, mmap=True)
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def convert(work: Path, quick: bool) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_convert import run  # noqa: E402  (a sibling script)

    src = work / "hallo"
    size = synthetic_net(src, FIXTURE if quick else None)
    if quick:
        shutil.copytree(FIXTURE / "vae", src / "vae")
    else:
        random_vae_folder(src / "vae")
    bundle, back = work / "bundle", work / "back"
    rows = []
    for what, args in (
        ("net.pth -> bundle", ["--src", str(src / "net.pth"), "--src-format", "hallo"]),
        ("bundle -> net.pth", ["--src", str(bundle), "--dst-format", "hallo"]),
    ):
        dst = bundle if what.endswith("bundle") else back
        secs, peak = run(["convert", *args, "--dst", str(dst)], quick)
        rows.append((what, secs, peak))
    exported = (back / "net.pth").stat().st_size / GIB
    exact = same_tensors(src / "net.pth", back / "net.pth")
    where = "this process so far" if quick else "its own process"
    print(f"net.pth {size:.2f} GiB (float16); exported net.pth {exported:.2f} GiB")
    print(f"{'conversion':<22}{'seconds':>9}{'peak RSS GiB':>14}{'RSS / net.pth':>15}  ({where})")
    for what, secs, peak in rows:
        print(f"{what:<22}{secs:>9.1f}{peak:>14.2f}{peak / size:>15.2f}")
    print(f"round trip: bit-exact: {exact}")


def _programs(model_cfg, resolution: int, param_dtype: str) -> tuple[dict, int]:
    """{name: (jitted function, abstract args)} of one clip's generation (see the doc)."""
    import jax
    import jax.numpy as jnp

    from emo_jax.interop import hallo
    from emo_jax.models.emo import encode_reference
    from emo_jax.models.hallo import HalloModel, abstract_params
    from emo_jax.models.vae import VAE_FORMAT
    from emo_jax.pipeline.hallo import HalloFunctions, HalloInputs
    from emo_jax.weights.pretrained import abstract_params as vae_abstract

    fns = HalloFunctions(model_cfg, hallo.DIFFUSION, None)
    model, emo, h = fns.model, model_cfg.emo, model_cfg.hallo
    f, n, side = emo.n_frames, emo.n_motion_frames, resolution // model_cfg.vae.factor
    z = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    params = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, param_dtype), abstract_params(model)
    )
    vae = vae_abstract(VAE_FORMAT.build(model_cfg.vae, None), VAE_FORMAT, model_cfg.vae)
    levels = len(model_cfg.unet.block_out_channels)
    masks = tuple(tuple(z(1, (side >> k) ** 2) for _ in range(3)) for k in range(levels))
    inputs = HalloInputs(z(1, h.face_embed_dim), z(resolution, resolution, 3), masks, z(3))
    audio = z(1, f, 2 * model_cfg.audio.window + 1, h.audio_layers, h.audio_width)
    stack, latents = z(1 + n, side, side, 4), z(1, f, side, side, 4)
    key = jax.eval_shape(lambda: jax.random.key(0))

    def bank(p, inputs, audio, stack):
        conds = model.apply(
            {"params": p}, inputs.face_emb, audio, inputs.face_region[None],
            method=HalloModel.conditions,
        )  # fmt: skip
        return conds, encode_reference(model, p, stack, conds["context"])

    conds, features = jax.eval_shape(bank, params, inputs, audio, stack)
    tiled = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct((2 * f, m.shape[1]), m.dtype), masks
    )

    def step(p, x, features, conds, masks, scale, guidance):  # HalloFunctions' guided denoise
        out = model.apply(
            {"params": p}, jnp.concatenate([x, x]), 500, features, conds, masks, scale
        )
        return out[:1] + guidance * (out[1:] - out[:1])

    guidance = z()  # the guidance scale: an argument (a new scale does not recompile)
    return {
        "clip: whole sampling program": (
            fns.latents,
            (params, stack, inputs, audio, latents, key, guidance),
        ),
        "one guided step": (
            jax.jit(step),
            (params, latents, features, conds, tiled, z(3), guidance),
        ),
        "reference bank + conditions": (jax.jit(bank), (params, inputs, audio, stack)),
        f"VAE decode of {f} frames": (fns.decode, (vae, z(f, side, side, 4))),
    }, fns.num_steps


def compile_table(args) -> str:
    import jax
    from bench_tpu import CHIPS, _peak  # noqa: E402  (a sibling script)

    from emo_jax.interop import hallo

    if args.target == "cpu":
        device, hbm, peak_flops, name = jax.devices("cpu")[0], None, None, "XLA:CPU"
    else:
        from jax.experimental import topologies

        device = topologies.get_topology_desc(args.target, "tpu").devices[0]
        gen = args.target.split(":")[0]
        hbm, peak_flops, _ = CHIPS[gen]
        name = f"one {gen} chip ({hbm} GiB HBM)"
    sharding = jax.sharding.SingleDeviceSharding(device)
    put = lambda tree: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
    )
    with tempfile.TemporaryDirectory() as empty:  # no JSONs beside: Hallo's released sizes
        sizes = FIXTURE if args.quick else Path(empty)
        model_cfg = hallo.model_config(sizes)
    model_cfg = dataclasses.replace(model_cfg, dtype=args.dtype)
    resolution = 64 if args.quick else args.resolution
    programs, steps = _programs(model_cfg, resolution, args.param_dtype)
    f = model_cfg.emo.n_frames
    rows, flops, t0 = [], {}, time.perf_counter()
    for what, (fn, fn_args) in programs.items():
        if args.only and args.only not in what:
            continue
        t = time.perf_counter()
        try:
            with jax.set_mesh(jax.sharding.Mesh([device], ("data",))):  # `auto` as on device
                compiled = fn.lower(*put(fn_args)).compile()
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what exceeds HBM
            need = re.search(r"HLO temporaries \(([\d.]+G)\)", str(e))
            if need is None:
                raise
            text = f"- | {need[1]}B: **does not fit** | - | -"
            rows.append((what, text, time.perf_counter() - t))
            continue
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        flops[what] = float((cost[0] if isinstance(cost, list) else cost).get("flops", 0.0))
        cells = (mem.argument_size_in_bytes, mem.temp_size_in_bytes, _peak(mem))
        text = " | ".join(f"{c / GIB:.2f}" for c in cells) + f" | {flops[what] / 1e12:.4g}"
        rows.append((what, text, time.perf_counter() - t))
        print(f"compiled {what} in {rows[-1][-1]:.0f} s", file=sys.stderr, flush=True)
    lines = [
        f"### Hallo generation, {resolution}x{resolution}, {name}",
        "",
        f"Released sizes{' (tiny fixture: --quick)' * args.quick}; compute {args.dtype}, "
        f"params {args.param_dtype}; clip of {f} frames + "
        f"{model_cfg.emo.n_motion_frames} motion frames, {steps} steps, guidance batched "
        f"(2 x {f} frames per UNet call); attention `{model_cfg.attention}`; jax "
        f"{jax.__version__}, compiled in {time.perf_counter() - t0:.0f} s.",
        "",
        "| program | arguments GiB | temporaries GiB | peak GiB | TFLOP | compile s |",
        "|---|---:|---:|---:|---:|---:|",
        *(f"| {w} | {text} | {s:.0f} |" for w, text, s in rows),
    ]
    step, bank, decode = (
        flops.get("one guided step"),
        flops.get("reference bank + conditions"),
        flops.get(f"VAE decode of {f} frames"),
    )
    if step and bank and decode:
        clip = steps * step + bank + decode
        lines += ["", f"FLOPs per clip ({f} new frames): {steps} x step + bank + decode = "
                  f"{clip / 1e12:.4g} TFLOP; per video-second ({FPS} frames): "
                  f"{clip * FPS / f / 1e12:.4g} TFLOP."]  # fmt: skip
        if peak_flops:
            per_second = clip * FPS / f / (0.4 * peak_flops)
            lines[-1] += (
                f" At 40% of {peak_flops / 1e12:.0f} TFLOP/s: {per_second:.3g} s per video-second."
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("convert", "compile", "all"))
    parser.add_argument("--quick", action="store_true", help="the tiny fixture, in-process")
    parser.add_argument("--workdir", help="convert: scratch folder (default: a temp dir)")
    parser.add_argument("--target", default="cpu", help="compile: cpu, or a TPU topology v5e:1x1")
    parser.add_argument("--dtype", default="bfloat16", help="compile: model.dtype")
    parser.add_argument("--param-dtype", default="float16", help="compile: the params' dtype")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--only", help="compile: only the programs whose name holds this")
    parser.add_argument("--out", help="compile: also write the table to this markdown file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    if args.target != "cpu" and args.what != "convert":
        from bench_tpu import tpu_environment

        tpu_environment(args.target)  # before jax is imported
    if args.what in ("convert", "all"):
        convert(Path(args.workdir or tempfile.mkdtemp(prefix="bench_hallo_")), args.quick)
    if args.what in ("compile", "all"):
        text = compile_table(args)
        print(text)
        if args.out:
            Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
