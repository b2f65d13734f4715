"""`emo-jax synth`: write the synthetic talking-head corpus (mp4 + wav + ground-truth JSON)."""

from __future__ import annotations

import argparse
import os

from emo_jax.commands.arguments import number, whole

DEFAULT_AUDIO = "espeak"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic talking-head corpus with known truth")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--identities", type=whole(1), default=4, help="number of people")
    p.add_argument(
        "--seconds", type=number(positive=True), default=10.0, help="length of each clip"
    )
    p.add_argument("--clips", type=whole(1), default=1, help="clips per identity")
    p.add_argument("--size", type=whole(32), default=128, help="frame width and height (even)")
    p.add_argument("--seed", type=whole(0), default=0, help="corpus seed")
    p.add_argument(
        "--audio",
        default=DEFAULT_AUDIO,
        help="espeak: English sentences spoken by espeak-ng, mouth by visemes (default); "
        "syllables: speech-like sounds, mouth by loudness",
    )
    p.add_argument(
        "--split",
        default="train",
        choices=("train", "heldout"),
        help="heldout: identities and sentences that the train split never uses",
    )
    p.add_argument("--workers", type=whole(1), default=os.cpu_count() or 1, help="processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from emo_jax.data.synth import make_corpus
    from emo_jax.errors import check_output

    check_output(args.out, folder=True)
    paths = make_corpus(
        args.out,
        args.identities,
        args.seconds,
        size=args.size,
        clips=args.clips,
        seed=args.seed,
        workers=args.workers,
        audio_source=args.audio,
        progress=not args.no_progress,
        split=args.split,
    )
    print(f"{len(paths)} {args.split} clips in {args.out}")
    return 0
