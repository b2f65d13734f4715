"""Generation benchmarks (print tables; no assertions).

default  the built-in default model (96 px, emo_jax/assets/default_model) through EMOPipeline
       on this machine: load time, compile time, seconds per generated video-second and peak
       RSS for a short and a 4x longer audio (memory must not grow with the video's length;
       frames go to an mp4, not to RAM)
tiny   the same for the tiny config with random weights
step   one denoising step of the full-size config (configs/model/emo_sd15.yaml): batch 1,
       f = 12 frames, every guidance pass batched (2 with the default CFG), the n = 4 motion
       frames' features; compile time and run time reported separately. Weights are zeros of
       the right shapes (the cost does not depend on their values).
flops  FLOPs per generated frame of the full-size model at 512 px (64x64 latents): XLA's
       cost analysis of each lowered piece (`jax.jit(f).lower(...).cost_analysis()`, shapes
       only, nothing allocated or run; a multiply-add counts 2, element-wise ops count too):
         denoising  one step's guided forward x steps / f
         reference  the ReferenceNet pass over the n motion frames, once per clip / f
         vae        VAE encode of the n motion frames per clip / f + VAE decode of each frame
       The reference image's ReferenceNet and VAE passes happen once per video: left out.
       Divide by a device's seconds per frame to get its achieved FLOP/s (utilisation).

  python bench/bench_generate.py                  # all; step at 64x64 latents
  python bench/bench_generate.py step --latent 32 # a smaller step on a CPU
  python bench/bench_generate.py --quick          # seconds: the built-in model, small

--quick: the built-in model for every part (default and tiny: its pipeline; step and flops:
its config, configs/default/model.yaml, at 4x4 latents), 0.32 s of audio (one clip): a check
that the benchmark runs, not a measurement.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "configs" / "model" / "emo_sd15.yaml"  # the paper's f = 12, n = 4
TINY = ROOT / "configs" / "model" / "tiny.yaml"
BUILT_IN = ROOT / "configs" / "default" / "model.yaml"  # the built-in model's config
PARTS = ("default", "tiny", "step", "flops")


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples RSS every 10 ms while in the `with` block."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def bench_pipeline(which: str, seconds: float, steps: int | None) -> None:
    import soundfile

    from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(None, TINY if which == "tiny" else None)
    speech, rate = soundfile.read(ROOT / "emo_jax" / "assets" / "speech.wav", dtype="float32")
    image = ROOT / "emo_jax" / "assets" / "face.png"
    opts = {} if steps is None else {"steps": steps}
    out = Path(tempfile.mkdtemp()) / "bench.mp4"

    def audio(length: float) -> tuple[np.ndarray, int]:
        n = int(length * rate)
        return np.resize(speech, n), rate

    _ = pipe.model.params
    init = time.perf_counter() - t0
    warm = min(1.0, seconds)
    first = pipe(image, audio(warm), out=out, return_frames=False, **opts)  # compiles
    job = pipe.prepare(image, audio(warm), **opts)
    clip_s = job.clip_frames / job.fps
    diffusion = job.config.diffusion
    passes = job.guidance.num_passes
    print(
        f"{pipe.model.source}, {job.reference.image.shape[0]} px, {diffusion.sampler} "
        f"{diffusion.num_inference_steps} steps, f = {job.clip_frames}, {passes} guidance "
        f"passes, on {jax.devices()[0]}"
    )
    print(f"  load (or random init) params  {init:8.1f} s")
    print(f"  first video ({warm:g} s, compiles) {first.seconds:8.1f} s")
    print()
    print(
        f"{'audio (s)':>10}{'wall (s)':>10}{'s / video-s':>13}{'s / clip':>10}{'peak RSS (MiB)':>16}"
    )
    for length in (seconds, 4 * seconds):
        with PeakRSS() as mem:
            result = pipe(image, audio(length), out=out, return_frames=False, **opts)
        video_s = result.num_frames / result.fps
        clips = -(-result.num_frames // job.clip_frames)
        print(
            f"{length:>10.1f}{result.seconds:>10.1f}{result.seconds / video_s:>13.2f}"
            f"{result.seconds / clips:>10.2f}{mem.peak / 2**20:>16.0f}"
        )
    print(f"  (one clip = {clip_s:.2f} s of video)")


def step_pieces(config: Path, latent: int):
    """(config, VideoFunctions, step function, abstract args, abstract reference and motion
    latents) for `config` at `latent` size."""
    from emo_jax.config import load_config
    from emo_jax.diffusion import Guidance
    from emo_jax.models.emo import abstract_params, audio_feature_shape, encode_reference
    from emo_jax.pipeline.sampling import video_functions

    cfg, s = load_config(config), latent
    fns = video_functions(cfg.model, cfg.diffusion)
    m = cfg.model
    f, n, c = m.emo.n_frames, m.emo.n_motion_frames, m.unet.in_channels
    params = abstract_params(fns.model)
    ref = jax.ShapeDtypeStruct((1, s, s, c), jnp.float32)
    motion = jax.ShapeDtypeStruct((1, n, s, s, c), jnp.float32)
    features = jax.eval_shape(
        lambda p, r, mo: encode_reference(fns.model, p, r, mo), params, ref, motion
    )
    layers, dim = audio_feature_shape(m.audio)
    args = (
        params,
        features,
        jax.ShapeDtypeStruct((1, f, s, s, c), jnp.float32),
        jax.ShapeDtypeStruct((1, f, 2 * m.audio.window + 1, layers, dim), jnp.float32),
        jax.ShapeDtypeStruct((1, fns.factor * s, fns.factor * s), jnp.float32),
        jax.ShapeDtypeStruct((1, f), jnp.float32),
    )

    def step(params, features, x, audio, mask, speed):
        guidance = Guidance.from_config(cfg.diffusion)
        return fns.denoiser(params, features, audio, mask, speed, guidance)(x, jnp.int32(500))

    return cfg, fns, step, args, (ref, motion)


def bench_step(config: Path, latent: int, repeats: int) -> None:
    from emo_jax.diffusion import Guidance

    cfg, fns, step, args, _ = step_pieces(config, latent)
    zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), args)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(args[0]))
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times = []
    with PeakRSS() as mem:
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*zeros))
            times.append(time.perf_counter() - t0)
    passes = Guidance.from_config(cfg.diffusion).num_passes
    f, n = cfg.model.emo.n_frames, cfg.model.emo.n_motion_frames
    print(
        f"{config.stem} denoising step ({n_params / 1e9:.2f} B EMO params, {cfg.model.dtype}) "
        f"on {jax.devices()[0]}"
    )
    print(
        f"  latents {latent}x{latent} ({fns.factor * latent} px), f = {f}, n = {n}, "
        f"guidance passes {passes} (UNet batch {passes * f})"
    )
    print(f"  compile        {compile_s:8.1f} s")
    print(f"  step           {min(times):8.1f} s  (best of {repeats})")
    print(f"  per frame      {min(times) / f:8.2f} s per step")
    flops = float(compiled.cost_analysis()["flops"])
    print(
        f"  achieved       {flops / min(times) / 1e9:8.1f} GFLOP/s ({flops / 1e12:.2f} TFLOP a step)"
    )
    print(f"  peak RSS       {mem.peak / 2**30:8.1f} GiB")


def bench_flops(config: Path, latent: int, steps: int | None) -> None:
    from emo_jax.diffusion import Guidance
    from emo_jax.models.inventory import bundle_abstract as all_params

    cfg, fns, step, args, (ref, motion) = step_pieces(config, latent)
    steps = steps or cfg.diffusion.num_inference_steps
    passes = Guidance.from_config(cfg.diffusion).num_passes
    f, n = cfg.model.emo.n_frames, cfg.model.emo.n_motion_frames
    vae_params = all_params(cfg)["vae"]
    px = fns.factor * latent
    frame = jax.ShapeDtypeStruct((1, px, px, 3), jnp.uint8)

    def flops(fn, *a) -> float:
        return float(jax.jit(fn).lower(*a).cost_analysis()["flops"])

    step_flops = flops(step, *args)
    motion_flops = flops(fns.motion, args[0], ref, motion)
    c = cfg.model.unet.in_channels
    encode_flops = flops(fns.encode, vae_params, frame)
    decode_flops = flops(
        fns.decode, vae_params, jax.ShapeDtypeStruct((1, latent, latent, c), jnp.float32)
    )
    rows = {
        f"denoising ({steps} steps x {passes} passes)": step_flops * steps / f,
        "ReferenceNet on motion frames": motion_flops / f,
        "VAE encode (motion) + decode": encode_flops * n / f + decode_flops,
    }
    print(
        f"FLOPs per generated frame, {config.stem}, {px} px, f = {f}, n = {n} (XLA cost analysis)"
    )
    for name, value in rows.items():
        print(f"  {name:<40}{value / 1e12:10.2f} TFLOP")
    print(f"  {'total':<40}{sum(rows.values()) / 1e12:10.2f} TFLOP")
    print(
        f"  one guided step of a clip: {step_flops / 1e12:.2f} TFLOP ({step_flops / f / 1e12:.2f} per frame)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="*", help=f"any of {', '.join(PARTS)} (default: all)")
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="default, tiny: the short audio (long: 4x)"
    )
    parser.add_argument("--steps", type=int, help="denoising steps (default: the config's)")
    parser.add_argument("--latent", type=int, default=64, help="step: latent side (64 = 512 px)")
    parser.add_argument("--repeats", type=int, default=1, help="step: timed runs")
    parser.add_argument("--quick", action="store_true", help="seconds, tiny config (see above)")
    args = parser.parse_args()
    config, latent, seconds, steps = FULL, args.latent, args.seconds, args.steps
    if args.quick:
        config, latent, seconds = BUILT_IN, 4, 0.32
    parts = args.parts or PARTS
    if set(parts) - set(PARTS):
        parser.error(f"unknown parts {sorted(set(parts) - set(PARTS))}: choose from {PARTS}")
    for part in dict.fromkeys("default" if args.quick and p == "tiny" else p for p in parts):
        if part in ("default", "tiny"):
            bench_pipeline(part, seconds, steps)
        elif part == "step":
            bench_step(config, latent, args.repeats)
        else:
            bench_flops(config, 64 if config == FULL else latent, steps)
        print()


if __name__ == "__main__":
    main()
