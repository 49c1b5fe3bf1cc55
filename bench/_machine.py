"""What the benches share: the machine they ran on, how they run child processes, and how they refuse bad input.

No torch import here: cli_startup times whole processes and imports none itself.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import signal
import subprocess
import sys
from typing import Callable, Optional

from cnnlab.errors import CnnlabError, counted
from cnnlab.threads import cpu_name, process_cores  # the one reader of /proc/cpuinfo; imports no torch

REFUSED = 2  # the exit status of a cnnlab command (or bench) that refused its input
STDERR_TAIL = 6  # how many of a failed child's last stderr lines its error message quotes


def machine_line() -> str:
    """"machine: CPU NAME, N cores": how every bench's output starts (N: the cores this process may run on)."""
    return f"machine: {cpu_name()}, {counted(len(process_cores()), 'core')}"


def load_average() -> str:
    """The 1-, 5- and 15-minute load averages, as the benches print them before and after measuring."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_rate(run) -> float:
    """Training images/s of a finished ``cnnlab train`` run folder: images over seconds, summed over the epochs
    of its metrics.csv (each row's images/s times its epoch seconds)."""
    import csv
    from pathlib import Path

    with open(Path(run) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    images = sum(float(r["images_per_second"]) * float(r["epoch_seconds"]) for r in rows)
    return images / sum(float(r["epoch_seconds"]) for r in rows)


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
    """``torch.device(text)`` for a bench's --device, or the parser's exit-2 error: not a device cnnlab runs on (cpu
    or cuda; torch also knows meta, mps, ...), or CUDA absent."""
    import torch  # here, not at the top: cli_startup imports this module and must not import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device {text!r} is not a device cnnlab runs on: write cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {text}: torch finds no usable CUDA device here; leave --device out to measure on "
                     "the CPU.")
    return device


class ChildFailed(Exception):
    """A child process a bench started exited with an error; the message names it and quotes its stderr's end."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code  # the child's exit status (negative: killed by that signal)


def run_child(argv: list[str], name: Optional[str] = None, **options) -> subprocess.CompletedProcess:
    """``subprocess.run(argv)`` with its stderr (and, unless ``options`` say otherwise, its stdout) captured
    as text; a non-zero exit raises :class:`ChildFailed`, which :func:`run_main` turns into one paragraph.

    ``name`` is how the message names the command where ``argv`` would not read well (a ``python -c``
    program of many lines); by default it is ``argv`` as a shell would take it.
    """
    options.setdefault("stdout", subprocess.PIPE)
    done = subprocess.run(argv, stderr=subprocess.PIPE, text=True, **options)
    if done.returncode != 0:
        raise ChildFailed(_failure_text(name or shlex.join(argv), done.returncode, done.stderr), done.returncode)
    return done


def _failure_text(name: str, code: int, stderr: str) -> str:
    """One paragraph: which command failed, how, and the last lines it wrote on stderr (blank ones dropped)."""
    if code < 0:
        how = f"was killed by signal {-code}"
    elif code == REFUSED:
        how = f"refused its input (exit status {code})"
    else:
        how = f"failed with exit status {code}"
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        said = "It wrote nothing on stderr."
    else:
        shown = lines[-STDERR_TAIL:]
        heading = "Its stderr ends:" if len(lines) > len(shown) else "Its stderr:"
        said = "\n".join([heading, *(f"  | {line}" for line in shown)])
    advice = ("Fix what it names and run the bench again." if code == REFUSED else
              "Run that command alone to see all of its output.")
    return f"the command `{name}` {how}. {advice} {said}"


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C (SIGINT) or SIGTERM that stopped a training run a bench started (or the bench itself): the bench
    stops too, and :func:`run_main` ends it with exit status 128 + the signal, as a shell reports a process that
    signal ended. ``during`` says what was under way ("the recipe's run", ...); ``signum`` is the signal, None
    when it is not known (then it counts as Ctrl-C)."""

    def __init__(self, during: str = "", signum: Optional[int] = None):
        super().__init__(during)
        self.during, self.signum = during, signum


def stop_if_interrupted(result, during: str) -> None:
    """Raise :class:`Interrupted` when ``result``, the engine's TrainResult, says a stop signal came during its
    run: one that cut the run short (``interrupted``), or one that came in its last step, when the run still
    finished (``stop_requested``). Either way the user asked to stop, and the bench must not go on measuring
    as if the run had simply finished."""
    if result.interrupted or result.stop_requested:
        raise Interrupted(during, result.stop_signal)


def interrupted_exit_code(signum: Optional[int]) -> int:
    """128 + the signal: 130 for Ctrl-C (SIGINT, also when the signal is not known), 143 for SIGTERM."""
    return 128 + (signum or signal.SIGINT)


def stopped_word(signum: Optional[int]) -> str:
    """How a bench's interruption line starts: 'stopped by SIGTERM' for a kill, 'interrupted' for Ctrl-C."""
    return "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"


def run_main(main: Callable[[], object]) -> None:
    """Run a bench's ``main``; cnnlab's own refusals (an unknown model, a missing data file, a bad --set)
    end with their one-paragraph message and exit 2, as the cnnlab commands do, instead of a traceback.

    A child process that failed (:func:`run_child`) ends the bench with one paragraph naming the command
    and quoting the end of its stderr: exit 2 when the child refused its input (its own exit status 2),
    else exit 1 (the child's status is in the message).

    A Ctrl-C or SIGTERM (:class:`Interrupted`, or a plain KeyboardInterrupt; the engine's own set-up and report
    interruptions carry their ``signum`` too) ends it with one line, after what it printed so far, and exit
    status 130 (Ctrl-C) or 143 (SIGTERM).
    """
    try:
        main()
    except CnnlabError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(REFUSED)
    except ChildFailed as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(REFUSED if err.code == REFUSED else 1)
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", None)
        during = getattr(err, "during", "")
        print(f"{stopped_word(signum)}{' during ' + during if during else ''}: the bench stopped there; the lines "
              "above are what it measured.", file=sys.stderr)
        sys.exit(interrupted_exit_code(signum))
