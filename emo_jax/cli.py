"""`emo-jax` command line: one sub-command per job, each registered by the module that owns it.

Dotted config overrides (`model.audio.encoder=mel`) may stand anywhere on the line. Errors in
the arguments are one line and exit 2, as is bad input found later (InputError); Ctrl-C and
SIGTERM stop at any moment with one line (`emo_jax.interrupt`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emo_jax.errors import InputError
from emo_jax.interrupt import install, pause_point

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


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def build_parser() -> Parser:
    """The full `emo-jax` parser."""
    parser = Parser(prog="emo-jax", description="EMO talking-head video diffusion in JAX/Flax.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with every `key.path=value` word (wherever it stands) in `overrides`."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    command = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = command.choices[args.command]
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        sub.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides and not hasattr(args, "overrides"):
        sub.error(f"takes no config overrides: {' '.join(overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point (argv None: the process's command line, which also installs the clean stop
    on Ctrl-C / SIGTERM); returns the exit code: 2 for bad input, 130 when interrupted."""
    if argv is None:
        words = sys.argv[1:]
        install(f"emo-jax {words[0]}" if words and not words[0].startswith("-") else "emo-jax")
        pause_point("start")
    try:
        args = parse(argv)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2)
        return e.code if isinstance(e.code, int) else 2
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
