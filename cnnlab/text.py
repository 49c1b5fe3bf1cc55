"""How numbers are written in the lines and tables a person reads (search ranges, trial values, durations).

One rule for every place that shows searched values, so that a value reads the same in the refined
ranges, the per-trial lines and the results table: integers plainly (1024, not 1.02e+03); other
numbers with 3 significant digits, or as many more as it takes for every two different numbers
shown together to print differently (0.01234 and 0.01235 are not both "0.0123").

One rule for a duration (:func:`duration_text`), so that a run's training time reads the same in
`cnnlab runs` and on its report page: "12.3 s", "4 min 05 s", "1 h 15 min".

One rule for how far a series of training runs is (:class:`RunCount`): "run 3 of 12" on each finished run's
line, in an experiment and in a transfer ladder alike.

One rule for a note longer than the terminal is wide (:func:`note_lines`): one paragraph, its lines after the
first indented under its text.
"""

import math
import re
import textwrap
from dataclasses import dataclass
from typing import Optional

from cnnlab.errors import is_number

LINE_COLUMNS = 80  # a terminal's default width: a run's, a measure's and a trial's line fit it
SIGNIFICANT_DIGITS = 3  # where a float starts: enough to read, short enough to scan a column
MOST_DIGITS = 17  # 17 significant digits tell any two different floats apart


def distinct_texts(values) -> list[str]:
    """``values`` as text, in order: numbers by :func:`number_text` with the fewest digits (3 or more)
    at which every two different numbers among them print differently; anything else (a choice such
    as "relu", None, True) as ``str`` gives it."""
    numbers = {value for value in values if is_number(value)}  # 1 and 1.0 are one value, and print as "1"
    texts = {}
    for digits in range(SIGNIFICANT_DIGITS, MOST_DIGITS + 1):
        texts = {value: number_text(value, digits) for value in numbers}
        if len(set(texts.values())) == len(texts):
            break
    return [texts[value] if is_number(value) else str(value) for value in values]


def number_text(value, digits: int = SIGNIFICANT_DIGITS) -> str:
    """One number with ``digits`` significant digits: an int, or a float that is a whole number, plainly;
    a float below 1 as %g (0.0012, 1e-05); a larger one in fixed point (12345.6 -> 12346, 1.23456 -> 1.23)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value) or abs(value) >= 1e16:  # nan, inf; beyond float's integers only an exponent is compact
        return f"{value:.{digits}g}"
    if float(value).is_integer():
        return str(int(value))
    if abs(value) < 1:
        return f"{value:.{digits}g}"  # 0.0012, 1e-05
    # No exponent above 1: 12345.6 prints as 12346 (not 1.23e+04), 1.23456 as 1.23
    decimals = max(0, digits - len(str(int(abs(value)))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def short_number(value: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` with ``digits`` significant digits in at most ``digits`` + 7 columns, for a measure on a line of
    fixed width: %g (0.0412, 41.3, 1.23e+04), its exponent without the plus sign and leading zeros (1.23e4,
    -6.81e38, 1e-5), so a huge or tiny value is no wider than an ordinary one: at most a sign, the digits and
    their point, and "e-308"."""
    text = f"{value:.{digits}g}"
    mantissa, exponent = text.split("e") if "e" in text else (text, None)
    return mantissa if exponent is None else f"{mantissa}e{int(exponent)}"


MAX_HOURS_SHOWN = 10**6  # about 114 years: a longer duration (a damaged record) reads in seconds, as short_number


def duration_text(seconds: float) -> str:
    """A duration as a person reads it: under a minute to a tenth of a second (12.3 s), under an hour in
    minutes and seconds (4 min 05 s), else in hours and minutes (1 h 15 min, 1,200 h 00 min). Each form is
    chosen after rounding to what it shows, so 59.96 s reads "1 min 00 s", not "60.0 s", and 3599.6 s reads
    "1 h 00 min", not "60 min 00 s". From MAX_HOURS_SHOWN hours on, no clock reading means anything: it reads
    as a number of seconds (3.6e9 s, 1.7e308 s), not as hundreds of digits. ``seconds``: finite, not negative."""
    if seconds >= MAX_HOURS_SHOWN * 3600:
        return f"{short_number(seconds)} s"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours:,} h {minutes:02d} min"


def note_lines(label: str, text: str, width: int) -> list[str]:
    """``label: text`` wrapped to ``width`` columns as one paragraph, the lines after the first indented under the
    text, e.g. for ``note``::

        note: runs/a: stale (measured weights the run has replaced since): eval-test-none;
              evaluate again (`cnnlab eval runs/a`, with the same options) to measure ...

    A terminal that wraps the note itself starts its next line at column 0, where it reads as a line of its own.
    Words stay whole, and so does a command in backticks (`cnnlab runs 'Bob'"'"'s runs'`), so that it copies as
    one line: one longer than a line takes a line of its own, and the terminal folds it."""
    prefix = f"{label}: "
    joined = "\0"  # stands for a space inside backticks while wrapping: textwrap breaks only at whitespace
    kept = re.sub(r"`[^`]*`", lambda command: command.group(0).replace(" ", joined), text)
    lines = textwrap.wrap(kept, width=width, initial_indent=prefix, subsequent_indent=" " * len(prefix),
                          break_long_words=False, break_on_hyphens=False) or [prefix.rstrip()]
    return [line.replace(joined, " ") for line in lines]


def mib_over_limit(need_bytes: int) -> str:
    """Bytes that exceed a limit of whole MiB, as MiB rounded up: to a tenth below 100 MiB (1.3 MiB), whole above
    (2,049 MiB). Rounded up, the number always reads above the limit it is compared with: 1.3 MiB rounded to
    the nearest whole would read "1 MiB, above memory_limit_mb=1"."""
    if need_bytes < 100 * 2**20:
        return f"{math.ceil(need_bytes / 2**20 * 10) / 10:.1f} MiB"
    return f"{-(-need_bytes // 2**20):,} MiB"  # in whole numbers: a float would lose the last digits of a huge size


@dataclass
class RunCount:
    """How far a series of training runs is, for each finished run's line: "run 3 of 12". The series is an
    experiment's runs, or a transfer ladder's (:func:`cnnlab.transfer.ladder.run_transfer`; inside an experiment,
    the experiment's count numbers its ladders' runs too).

    ``planned`` is the number of training runs the experiment makes at its size and seeds (a run read back from
    an earlier call counts: its line says so). :func:`cnnlab.experiments.training.train_settings` plans its own
    runs when the experiment declared nothing; an experiment that calls it more than once (one run per call,
    in a loop) declares the total with :meth:`plan` first. Where the total is not known the lines say "run 3".
    """

    planned: Optional[int] = None
    done: int = 0
    settled: bool = False  # declared by the experiment (plan), or found unknown (expect): no call changes it

    def plan(self, runs: int) -> None:
        """The experiment's total, declared before its first run."""
        self.planned, self.settled = runs, True

    def expect(self, runs: int) -> None:
        """One train_settings call is about to make ``runs`` runs: they are the experiment's total when nothing
        was declared and it is the first call; a later undeclared call makes the total unknown."""
        if self.settled:
            return
        if self.planned is None:
            self.planned = runs
        else:  # a second call the experiment did not declare: the first call's lines said "of N" too early
            self.planned, self.settled = None, True

    def finished(self) -> str:
        """Count one finished run: "run 3 of 12", or "run 3" when the total is not known (or was exceeded)."""
        self.done += 1
        if self.planned is None or self.done > self.planned:
            return f"run {self.done}"
        return f"run {self.done:>{len(str(self.planned))}} of {self.planned}"

    def uncounted(self) -> str:
        """Spaces as wide as the next finished run's "run 3 of 12", for the line of work that trains no network
        (the ladder's probe), so that its other columns stay under those of the counted lines."""
        if self.planned is None or self.done + 1 > self.planned:
            return " " * len(f"run {self.done + 1}")
        return " " * len(f"run {self.planned} of {self.planned}")


def finite_or_null(value):
    """``value`` with every non-finite float (a NaN loss, an infinite std) as None, at any depth of dicts, lists
    and tuples: JSON has no NaN or Infinity, and ``json.dumps`` would write them as tokens no strict parser
    reads. The --json of lr-find and check."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(item) for item in value]
    return value
