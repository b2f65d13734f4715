"""Argument types that check numbers while the command line is parsed, before anything loads:
finite, and within the range the option allows (argparse prints the message, exit 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def whole(minimum: int = 1, maximum: int | None = None) -> Callable[[str], int]:
    """A whole number from `minimum` to `maximum` (if given)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text}: must be at most {maximum}")
        return value

    return parse


def number(minimum: float = 0.0, positive: bool = False) -> Callable[[str], float]:
    """A finite number >= `minimum` (> 0 if `positive`)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be positive")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be at least {minimum:g}")
        return value

    return parse


def number_or_file(minimum: float = 0.0) -> Callable[[str], float | str]:
    """A finite number >= `minimum`, or (anything that does not read as a number) a file name."""
    check = number(minimum)

    def parse(text: str) -> float | str:
        try:
            float(text)
        except ValueError:
            return text
        return check(text)

    return parse
