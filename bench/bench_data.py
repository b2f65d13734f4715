"""Training data throughput (examples per second): the model-ready host batches a training step
waits for (`emo_jax.train.data.BatchStream`: Grain, then anything the host does before the
step), at 128x128 and 512x512, and the shards' size per video-second.

Builds (once, cached) a small synthetic corpus per resolution with `emo-jax synth` and
`emo-jax preprocess`'s library calls, with the tiny model's audio features (configs/train/tiny.yaml:
log-mel), then times batches of the tiny model's stage 2 (2 motion + 4 target frames, reference,
audio feature windows, mask, speed) and stage-1 images, with 0 and 2 worker processes, plain
and, with --hue-augment P, with that fraction of examples hue-turned.

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

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/train/tiny.yaml")


def build(
    root: Path, resolution: int, identities: int = 4, seconds: float = 6.0, workers: int = 2
) -> Path:
    from emo_jax.config import Config, DataConfig, load_config
    from emo_jax.data.preprocess import preprocess
    from emo_jax.data.synth import make_corpus

    videos = root / f"videos{resolution}_{identities}x{seconds:g}"
    out = root / f"processed{resolution}_{identities}x{seconds:g}"
    if not (out / "manifest.json").is_file():
        make_corpus(
            videos, identities, seconds, size=max(resolution, 64), workers=workers, progress=False
        )
        model = load_config(TINY, ["train.stage=2"]).model
        cfg = Config(model=model, data=DataConfig(resolution=resolution))
        preprocess(videos, out, cfg, workers, progress=False)
    return out


def throughput(
    shards: Path, resolution: int, mode: str, workers: int, batches: int, hue: float
) -> float:
    from emo_jax.config import load_config
    from emo_jax.train.data import BatchStream

    batch = 4 if mode == "video" else 16
    over = [f"data.{k}={v}" for k, v in (("shards", shards), ("resolution", resolution))]
    over += [f"data.mode={mode}", f"data.batch_size={batch}", f"data.worker_count={workers}"]
    cfg = load_config(TINY, ["train.stage=2", f"data.hue_augment={hue}", *over])
    it = iter(BatchStream(cfg, 0, 1))
    for _ in range(3):  # warm-up: worker start-up, first reads
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def shard_bytes_per_second(shards: Path) -> float:
    """Bytes of shards per second of video."""
    import json

    manifest = json.loads((shards / "manifest.json").read_text())
    size = sum((shards / v["shard"]).stat().st_size for v in manifest["videos"])
    return size / (manifest["counts"]["frames"] / manifest["settings"]["fps"])


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
    sizes = {}
    for res in args.resolutions:
        shards = build(Path(args.cache), res, **corpus)
        sizes[res] = shard_bytes_per_second(shards)
        for mode in ("video", "image"):
            for workers in worker_counts:
                for hue in hues:
                    rate = throughput(shards, res, mode, workers, args.batches, hue)
                    print(f"{res:>10} {mode:>6} {workers:>8} {hue:>5.2f} {rate:>11.1f}", flush=True)
    for res, size in sizes.items():
        print(f"shards at {res} px: {size / 1024:.1f} KiB per video-second")


if __name__ == "__main__":
    main()
