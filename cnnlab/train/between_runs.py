"""Ctrl-C and SIGTERM between the training runs of a command that trains several (search, experiment, transfer).

Inside a run, :class:`cnnlab.train.engine.StopRequest` takes both signals over and stops at the next step boundary
with a checkpoint. Between two runs nothing did: a SIGTERM (kill, timeout, docker stop, a pre-emption) ended the
process at once, with no line saying what was kept and no exit code of cnnlab's own, and a Ctrl-C raised wherever
the command stood, while it recorded a trial's result or scored a finished run.

While :func:`stop_between_runs` is in force, the first signal that lands between runs is held instead: the work on
the run that just finished (scoring it, recording it) completes, and the next run does not start (``train`` raises
SetupInterrupted before it writes anything; a search stops before it asks for the next trial; an experiment that
measures its trained runs one by one, lesion's and loss-surface's minutes each, stops before the next measure). The command then
stops as it does after a run that a signal stopped, with the finished runs kept, one line saying how to continue
and exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM). A second signal stops at once. A signal held after
the last run leaves nothing to stop: the command finishes its work and ends as it would have.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What the first signal stops before: a search and a ladder train runs one after another; an experiment may also
# measure its trained runs one by one (lesion's and loss-surface's minutes each)
NEXT_RUN = "the next training run starts"
NEXT_RUN_OR_MEASURE = "the next training run starts, or a run's measures"
MESSAGES = {
    signal.SIGINT: ("\nCtrl-C: stopping before {what} (the finished runs are kept, and the same command continues); "
                    "press Ctrl-C again to stop at once.\n"),
    signal.SIGTERM: ("\nSIGTERM (the process was asked to end: kill, timeout, docker stop, a pre-emption): stopping "
                     "before {what} (the finished runs are kept, and the same command continues); a second SIGTERM "
                     "or Ctrl-C stops at once.\n"),
}


class StoppedBetweenRuns(KeyboardInterrupt):
    """A stop signal (``signum``) that came between two training runs: the next one did not start."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_depth = 0  # how many stop_between_runs are in force (a search inside an experiment holds one inside another)
_held: Optional[int] = None  # the signal held for the next run's start, while one is in force
_last: Optional[int] = None  # the last signal held, kept after the command's stop for its exit code
_what = NEXT_RUN  # what the outermost stop_between_runs in force stops before, as its message says


def held_signal() -> Optional[int]:
    """The signal held between runs (signal.SIGINT or signal.SIGTERM) for the next run's start, or None."""
    return _held


def last_signal() -> Optional[int]:
    """The last signal held between runs in this process (it decides the stopped command's exit code), or None."""
    return _last


def forget_last_signal() -> None:
    """A new command starts with no signal on record (cnnlab.cli.main): an earlier command in the same process
    that held one must not decide this one's exit code."""
    global _last
    _last = None


def stop_if_held() -> None:
    """Raise :class:`StoppedBetweenRuns` when a signal is held: where a loop is about to start its next run."""
    if _held is not None:
        raise StoppedBetweenRuns(_held)


def hold_stop() -> bool:
    """Stop before the next run as a Ctrl-C between runs does, for a reason of the command's own (its output was
    closed), which the command says when it stops. False where no :func:`stop_between_runs` is in force (nothing
    would read the stop) or a stop is held already."""
    global _held, _last
    if _depth == 0 or _held is not None:
        return False
    _held = _last = signal.SIGINT
    return True


def _handle(signum, frame) -> None:
    global _held, _last
    _last = signum
    if _held is not None:  # the second: at once
        raise StoppedBetweenRuns(signum)
    _held = signum
    try:  # os.write, not print: the handler may run while the main code is inside a print to stderr
        os.write(2, MESSAGES[signum].format(what=_what).encode())
    except OSError:
        pass


@contextmanager
def stop_between_runs(what: str = NEXT_RUN) -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM that lands between training runs until the next run would start (see the module).

    As StopRequest does, only the main thread takes the signals over; a SIGINT the parent process set to be ignored
    or to kill (not a Python callable) is left as it is, and so is a SIGTERM ignored (nohup) or set outside Python.
    ``what``: what the stop comes before, as the message says (:data:`NEXT_RUN_OR_MEASURE` for a command that
    also measures runs one by one); the outermost block's holds. Used as a decorator too (``@stop_between_runs()``)."""
    global _depth, _held, _last, _what
    previous: dict[int, object] = {}
    if _depth == 0 and threading.current_thread() is threading.main_thread():
        _held = _last = None
        _what = what
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler) or (signum == signal.SIGTERM and handler == signal.SIG_DFL):
                previous[signum] = handler
                signal.signal(signum, _handle)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if _depth == 0:
            _held = None
