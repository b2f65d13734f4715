"""`emo-jax` command line: one sub-command per job, each registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

from emo_jax.errors import InputError

# Each module defines `register(subparsers)`, which adds its sub-command(s) and sets `func`.
COMMAND_MODULES = (
    "emo_jax.commands.info",
    "emo_jax.commands.generate",
    "emo_jax.commands.app",
    "emo_jax.commands.train",
    "emo_jax.commands.convert",
    "emo_jax.commands.synth",
    "emo_jax.commands.preprocess",
    "emo_jax.commands.audio_features",
    "emo_jax.commands.evaluate",
    "emo_jax.commands.recipe",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `emo-jax` parser."""
    parser = argparse.ArgumentParser(
        prog="emo-jax", description="EMO talking-head video diffusion in JAX/Flax."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input exits 2 with a one-line message."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except InputError as e:
        print(f"emo-jax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"emo-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
