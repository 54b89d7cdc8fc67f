"""argparse types of the numeric flags of every command line (training, fine-tuning, the front end,
the data packers): a bad value is argparse's one-line usage error before any work.

``float()`` accepts 'nan' and 'inf', and NaN passes every ``<= 0`` check, so finiteness is explicit.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (learning rate, timeouts, seconds, regularisation strength)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (--grad_clip: 0 is off)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def int_in(minimum: int, maximum: float = math.inf, unit: str = "") -> Callable[[str], int]:
    """An integer from ``minimum`` to ``maximum`` (``unit`` names what it counts in the messages)."""
    what = f"an integer number of {unit}" if unit else "an integer"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text!r}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {int(maximum)}, got {text!r}")
        return value
    parse.__name__ = "int"   # argparse names the type in its messages
    return parse


# A sample rate outside these is a mistake (seconds or kHz typed for Hz, or a rate no recorder makes: 768 kHz is
# the highest); every check of a rate, command line or array API, uses them.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
sample_rate = int_in(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, "Hz")   # --sample_rate of the packers

non_negative_int = int_in(0)   # --num_workers: 0 loads in the main process
