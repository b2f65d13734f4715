"""Grain pipeline throughput (examples per second) at 128x128 and 512x512.

Builds (once, cached) a small synthetic corpus per resolution with `emo-jax synth` and
`emo-jax preprocess`'s library calls, then times the DataLoader in video mode (4 motion + 12
target frames, reference, audio, mask, speed) and image mode, with 0 and 2 worker processes,
plain and, with --hue-augment P, with that fraction of examples hue-turned.

    python bench/bench_data.py                       # both resolutions
    python bench/bench_data.py --resolutions 128 --batches 20 --hue-augment 1
    python bench/bench_data.py --quick --cache DIR  # seconds: 1 person x 2 s at 32 px, 2 batches

--quick: a 1-person, 2 s corpus at 32 px, 2 batches per row, in this process only (0 workers):
a check that the benchmark runs, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def build(
    root: Path, resolution: int, identities: int = 4, seconds: float = 6.0, workers: int = 2
) -> Path:
    from emo_jax.config import Config, DataConfig
    from emo_jax.data.preprocess import preprocess
    from emo_jax.data.synth import make_corpus

    videos = root / f"videos{resolution}_{identities}x{seconds:g}"
    out = root / f"processed{resolution}_{identities}x{seconds:g}"
    if not (out / "manifest.json").is_file():
        make_corpus(
            videos, identities, seconds, size=max(resolution, 64), workers=workers, progress=False
        )
        preprocess(
            videos, out, Config(data=DataConfig(resolution=resolution)), workers, progress=False
        )
    return out


def throughput(
    shards: Path, resolution: int, mode: str, workers: int, batches: int, hue: float
) -> float:
    from emo_jax.config import Config, DataConfig
    from emo_jax.data.pipeline import make_loader

    batch = 4 if mode == "video" else 16
    cfg = DataConfig(
        shards=str(shards),
        resolution=resolution,
        mode=mode,
        batch_size=batch,
        worker_count=workers,
        hue_augment=hue,
    )
    it = iter(make_loader(Config(data=cfg), 0, 1))
    for _ in range(3):  # warm-up: worker start-up, first reads
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--hue-augment", type=float, default=0.0, help="also time this fraction")
    parser.add_argument(
        "--cache", default=os.path.join(tempfile.gettempdir(), "emo_jax_bench_data")
    )
    parser.add_argument("--quick", action="store_true", help="seconds: see above")
    args = parser.parse_args()
    corpus, worker_counts = {}, (0, 2)
    if args.quick:
        args.resolutions, args.batches, worker_counts = [32], 2, (0,)
        corpus = {"identities": 1, "seconds": 2.0, "workers": 1}
    print(f"cores: {os.cpu_count()}")
    print(f"{'resolution':>10} {'mode':>6} {'workers':>8} {'hue':>5} {'examples/s':>11}")
    hues = [0.0] + ([args.hue_augment] if args.hue_augment else [])
    for res in args.resolutions:
        shards = build(Path(args.cache), res, **corpus)
        for mode in ("video", "image"):
            for workers in worker_counts:
                for hue in hues:
                    rate = throughput(shards, res, mode, workers, args.batches, hue)
                    print(f"{res:>10} {mode:>6} {workers:>8} {hue:>5.2f} {rate:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
