"""Speaking-face corpus and evaluation speed: rendering (seconds per clip-second, per audio
source and size), the per-frame cost of the measures (face tracking, mouth measure, head speed),
and the wall time of `emo-jax evaluate` (generation vs measuring) on held-out clips.

    python bench/bench_eval.py                                   # built-in model, 2 x 2 s clips
    python bench/bench_eval.py --checkpoint runs/bundle --clips 4 --seconds 4 --steps 20
    python bench/bench_eval.py --quick --cache DIR  # seconds: one 0.64 s clip, 64 px

--quick: clips of 1 s at 64 px, rendering timed at 64 px, 0.64 s of one clip evaluated with
the model's steps: a check that the benchmark runs, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path


def render_speed(sizes: list[int], seconds: float) -> None:
    from emo_jax.data.synth import HELDOUT_SEED_BASE, make_identity, render_clip

    print(f"{'source':>10} {'size':>5} {'s per clip-second':>18}")
    for source in ("espeak", "syllables"):
        for size in sizes:
            render_clip(make_identity(HELDOUT_SEED_BASE), min(1.0, seconds), size, 0, source)
            start = time.perf_counter()
            for k in range(3):
                render_clip(make_identity(HELDOUT_SEED_BASE + k), seconds, size, 1, source)
            print(f"{source:>10} {size:>5} {(time.perf_counter() - start) / (3 * seconds):>18.3f}")


def measure_speed(folder: Path) -> None:
    from emo_jax.eval import evaluate, metrics, mouth

    clip = evaluate.load_clip(evaluate.find_clips(folder)[0])
    n = len(clip.frames)
    rows = []
    start = time.perf_counter()
    boxes = mouth.track_faces(clip.frames)
    rows.append(("face tracking (Haar, every 2nd frame)", time.perf_counter() - start))
    start = time.perf_counter()
    mouth.mouth_opening(clip.frames, mouth.from_haar(boxes))
    rows.append(("mouth measure", time.perf_counter() - start))
    start = time.perf_counter()
    metrics.head_speeds(clip.frames, boxes)
    rows.append(("head speed (optical flow)", time.perf_counter() - start))
    start = time.perf_counter()
    metrics.identity(clip.frames, clip.frames[::-1].copy(), clip.boxes)
    rows.append(("identity (PSNR + SSIM)", time.perf_counter() - start))
    print(f"\n{'measure':>38} {'ms per frame':>13}  ({clip.frames.shape[1]} px, {n} frames)")
    for name, seconds in rows:
        print(f"{name:>38} {1000 * seconds / n:>13.2f}")


def evaluation(folder: Path, args: argparse.Namespace) -> None:
    from emo_jax.eval.evaluate import evaluate, find_clips, format_table
    from emo_jax.pipeline import EMOPipeline, RandomWeightsWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = EMOPipeline.from_pretrained(args.checkpoint)
    options = {} if args.steps is None else {"steps": args.steps}
    if args.resolution:
        options["resolution"] = args.resolution
    paths = find_clips(folder)[: args.clips]
    results = evaluate(pipe, paths, args.seconds, options)
    total, generation = results["total_seconds"], results["generation_seconds"]
    video = results["clips"] * args.seconds
    steps = args.steps or "the config's"
    print(
        f"\nevaluate: {pipe.model.source}, {results['clips']} clips x {args.seconds} s, "
        f"{results['resolution']} px, {steps} steps, {os.cpu_count()} cores"
    )
    print(f"{'total':>22} {total:8.1f} s")
    per_clip = [row["generation_seconds"] for row in results["per_clip"]]
    print(f"{'generation':>22} {generation:8.1f} s  (first clip {per_clip[0]:.1f} s: compiles)")
    if len(per_clip) > 1:
        later = sum(per_clip[1:]) / ((len(per_clip) - 1) * args.seconds)
        print(f"{'':>22} {later:8.1f} s per video-second after the first clip")
    print(
        f"{'measuring and I/O':>22} {total - generation:8.1f} s  "
        f"({(total - generation) / video:.2f} s per video-second)"
    )
    print(format_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="model to evaluate (default: built-in)")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resolution", type=int, help="default: the model's")
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "emo_jax_bench_eval")
    )
    parser.add_argument("--quick", action="store_true", help="seconds: see above")
    args = parser.parse_args()
    from emo_jax.data.synth import make_corpus

    seconds, size, workers = 6.0, 128, 2
    if args.quick:
        seconds, size, workers, args.sizes = 1.0, 64, 1, [64]
        args.clips, args.seconds, args.steps = 1, 0.64, None  # 2 clips; the model's steps
    folder = Path(args.cache) / f"heldout{size}_{seconds:g}s"
    make_corpus(
        folder, max(args.clips, 2), seconds, size, split="heldout", audio_source="espeak",
        workers=workers, progress=False,
    )  # fmt: skip
    render_speed(args.sizes, seconds)
    measure_speed(folder)
    evaluation(folder, args)


if __name__ == "__main__":
    main()
