"""`emo-jax preprocess`: videos -> ArrayRecord shards + manifest for the Grain pipeline."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from emo_jax.commands.arguments import whole


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess", help="videos folder -> training shards (faces, audio features, speed)"
    )
    p.add_argument("--videos", required=True, help="folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument(
        "--config",
        help="YAML config: its data section, and model.audio (frame and sample rate, and the "
        "audio features stored for training: the model's encoder)",
    )
    p.add_argument("--resolution", type=whole(16), help="crop size (overrides data.resolution)")
    p.add_argument("--workers", type=whole(1), default=os.cpu_count() or 1, help="processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.crop_scale=1.8")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emo_jax.config import load_config
    from emo_jax.data.preprocess import preprocess
    from emo_jax.errors import InputError, check_input, check_output

    check_input(args.videos, "videos folder", folder=True)
    check_output(args.out, folder=True)
    if args.config:
        check_input(args.config, "config file")
    overrides = list(args.overrides)
    if args.resolution is not None:
        overrides.append(f"data.resolution={args.resolution}")
    cfg = load_config(args.config, overrides)
    made = Path(args.out).absolute()  # the first folder this run makes (None: it exists)
    while not made.parent.exists():
        made = made.parent
    made = None if made.exists() else made
    manifest = preprocess(args.videos, args.out, cfg, args.workers, not args.no_progress)
    counts = manifest["counts"]
    for item in manifest["skipped"]:
        print(f"emo-jax preprocess: skipped {item['file']}: {item['reason']}", file=sys.stderr)
    if not counts["videos_ok"]:
        if made:  # leave nothing behind (a folder that existed keeps the skipped files' notes)
            shutil.rmtree(made, ignore_errors=True)
        raise InputError(
            f"{args.videos}: none of the {counts['videos_found']} videos is usable (each "
            "skipped one is named above with the reason)"
        )
    print(
        f"{counts['videos_ok']} of {counts['videos_found']} videos ready ({counts['frames']} frames), "
        f"{counts['videos_skipped']} skipped, {counts['videos_trimmed']} trimmed: {args.out}/manifest.json"
    )
    return 0
