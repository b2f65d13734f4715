"""`emo-jax preprocess`: videos -> ArrayRecord shards + manifest for the Grain pipeline."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="videos folder -> training shards (faces, audio, speed)")
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument(
        "--config", help="YAML config: its data section, and model.audio's frame and sample rate"
    )
    p.add_argument("--resolution", type=int, help="crop size (overrides data.resolution)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.crop_scale=1.8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emo_jax.config import load_config
    from emo_jax.data.preprocess import preprocess

    overrides = list(args.overrides)
    if args.resolution is not None:
        overrides.append(f"data.resolution={args.resolution}")
    cfg = load_config(args.config, overrides)
    manifest = preprocess(args.videos, args.out, cfg, args.workers, not args.no_progress)
    counts = manifest["counts"]
    print(
        f"{counts['videos_ok']} of {counts['videos_found']} videos ready ({counts['frames']} frames), "
        f"{counts['videos_skipped']} skipped, {counts['videos_trimmed']} trimmed: {args.out}/manifest.json"
    )
    for item in manifest["skipped"]:
        print(f"  skipped: {item['reason']}")
    return 0
