"""What the benches share: the machine they ran on, and how they refuse bad input.

No torch import here: cli_startup times whole processes and imports none itself.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

from cnnlab.errors import CnnlabError
from cnnlab.threads import cpu_name  # noqa: F401  (the one reader of /proc/cpuinfo; imports no torch)


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as the benches print them before and after measuring."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def count(text: str) -> int:
    """argparse type for a count of runs, steps, images or threads: a whole number, at least 1.

    A zero would leave a side with no measurement, so the ratio (or its best run) could not be formed.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give one of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1: give a whole number of at least 1")
    return value


def positive(text: str) -> float:
    """argparse type for a length of time or a share: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give one above 0") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number above 0")
    return value


def fraction(text: str) -> float:
    """argparse type for a share or an accuracy: a number above 0 and at most 1 (91% is 0.91)."""
    value = positive(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text} is above 1: give a fraction (0.91 for 91%)")
    return value


def checked_device(parser: argparse.ArgumentParser, text: str):
    """``torch.device(text)`` for a bench's --device, or the parser's exit-2 error: not a device, or CUDA absent."""
    import torch  # here, not at the top: cli_startup imports this module and must not import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        parser.error(f"--device {text!r} is not a device: write cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {text}: torch finds no usable CUDA device here; leave --device out to measure on "
                     "the CPU.")
    return device


def run_main(main: Callable[[], object]) -> None:
    """Run a bench's ``main``; cnnlab's own refusals (an unknown model, a missing data file, a bad --set)
    end with their one-paragraph message and exit 2, as the cnnlab commands do, instead of a traceback."""
    try:
        main()
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
