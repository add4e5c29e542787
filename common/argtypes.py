"""argparse types shared by every command line of the project (training, load tools): a value a run cannot use is
an argparse error naming the option, never a traceback from deep in the run. Standard library only."""

from __future__ import annotations

import argparse
import math


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if isinstance(value, float) and math.isnan(value):  # NaN compares false with every bound and would pass them
        raise argparse.ArgumentTypeError("NaN is not a number of anything")
    return value


def positive_int(text: str) -> int:
    """A count that must be at least 1 (epochs, faces, requests, rounds, workers)."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A count where 0 means "none" or "all", as the option's help says (a warm-up, --limit, --threads)."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A duration, budget or rate that must be above 0 and finite (a budget of 0 once meant "none", silently)."""
    value = _number(text, float)
    if value <= 0 or value == math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A duration or share where 0 means none (--max-unavailable-s), finite."""
    value = _number(text, float)
    if value < 0 or value == math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {text}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """Comma-separated counts, each at least 1 (a concurrency sweep ``1,16,64``, widths ``16,32,64``)."""
    try:
        return tuple(positive_int(part.strip()) for part in str(text).split(","))
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated whole numbers, each at least 1 ({err})") from None
