"""What a training run records and shows: metrics.csv, steps.csv, curves.png, progress, TensorBoard, report.

Files in the run folder (all written by rank 0 only; other DDP ranks pass ``enabled=False``):

============  ==================================================================================
file          contents
============  ==================================================================================
metrics.csv   one row per epoch, columns :data:`METRIC_COLUMNS`; rewritten atomically per epoch
steps.csv     ``step,loss,lr`` per optimiser step (the raw loss curve); appended line by line
curves.png    loss (raw per step, moving average, val per epoch), accuracy, learning rate
report.txt    :func:`final_report`, the one-screen summary the engine prints at the end
============  ==================================================================================

Resuming: a checkpoint holds the epoch and step it was taken at; ``MetricsLog.truncate_after(epoch)``
and ``StepLossLog.truncate_after(step)`` drop the rows written after it (the run went on past the
checkpoint before it stopped), so the resumed run appends without duplicating rows.

Note the module name shadows the standard library's ``logging`` only for code inside this package
that imports it relatively; ``import logging`` elsewhere is unaffected (absolute imports).
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
import time
import weakref
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError, counted, display_name, noun_for
from cnnlab.io import WRITE_ADVICE, atomic_path, write_text_atomic
# The run folder's file names live in cnnlab/run.py; re-exported here for code that imports them from logging.
from cnnlab.run import BUDGET_FILE, CURVES_FILE, METRICS_FILE, REPORT_FILE, STEPS_FILE, TENSORBOARD_DIR  # noqa: F401
from cnnlab.text import duration_text

# One row per epoch. Accuracies are fractions (0..1); lr is the learning rate of the first parameter
# group at the end of the epoch (as a rule the classifier's: docs/training.md, "Which rate lr is");
# epoch_seconds is the training part only (evaluation excluded), and
# images_per_second is training images over those seconds. ema_* stay empty when EMA is off.
METRIC_COLUMNS = (
    "epoch",  # 1-based: the number of epochs finished when the row was written
    "step",  # optimiser steps finished (global, all epochs)
    "train_loss",  # mean over the epoch's training images (with label smoothing / mixup as trained)
    "train_acc",
    "val_loss",
    "val_acc",
    "ema_val_loss",
    "ema_val_acc",
    "lr",
    "epoch_seconds",
    "images_per_second",
)
_INT_COLUMNS = ("epoch", "step")
STEP_COLUMNS = ("step", "loss", "lr")


# ---------------------------------------------------------------------------------------------
# CSV files


def _cell(value) -> str:
    """A CSV cell: empty for None, ints as ints, floats with repr (shortest text that reads back exactly)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"A metric cannot be a boolean, got {value!r}.")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(float(value))  # torch/numpy scalars too; bit-exact round trip for resume comparisons


def _parse(text: str | None, integer: bool):
    """A cell as int (``integer``) or float; None when empty. Raises ValueError on anything else.

    Floats keep ``nan`` and ``inf``: a diverged run records them and the curve check must read them.
    Integers must be whole and finite ("3" and a hand-edited "3.0" both read as 3; "3.5" does not).
    """
    if text is None or text.strip() == "":
        return None
    value = float(text)
    if not integer:
        return value
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"'{text}' is not a whole number")
    return int(value)


def _read_run_text(path: Path, name: str) -> str:
    """The text of the run file ``name`` at ``path``; CnnlabError naming ``path`` if unreadable or not text."""
    what = f"a {name}"
    fix = f"{name} is written by `cnnlab train`: point at a run folder it wrote, or restore the file from a copy."
    shown = display_name(str(path))  # a name that is not UTF-8 shows escaped, as everywhere
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CnnlabError(f"Cannot read '{shown}': {err.strerror or err}. {fix}") from None
    try:
        text = data.decode("utf-8-sig")  # -sig: a file saved again by a spreadsheet starts with a byte order mark
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise CnnlabError(f"'{shown}' is not {what}: line {line} is not UTF-8 text (byte {err.start}), so the file is "
                          f"binary or damaged. {fix}") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise CnnlabError(f"'{shown}' is not {what}: line {line} holds a NUL byte, so the file is binary or "
                          f"damaged. {fix}")
    return text


def _quote(text: str, limit: int = 40) -> str:
    """A cell or line for a message: printable, and cut to ``limit`` characters."""
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def read_metrics(path: str | Path, skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """The rows of a metrics.csv as dicts: epoch/step as int, other numbers as float, empty cells as None.

    A missing or empty file reads as no rows (a run stopped before its first epoch ended). Every row is
    checked: the header must name known columns (:data:`METRIC_COLUMNS`, ``epoch`` among them), each
    line must have as many cells as the header, every cell must be a number (``nan`` and ``inf`` are
    numbers: a diverged run records them) and every row must have its epoch. cnnlab rewrites the file
    atomically, so its own crash never leaves half a row; a copy or a disk can. With ``skipped`` given,
    a last line without its line end is left out and recorded there as ``(where, why)``, as
    :func:`read_steps` does. Anything else raises CnnlabError naming the file and the line, and no row
    is dropped in silence.
    """
    path = Path(path)
    if not path.is_file():
        return []
    what = f"a {METRICS_FILE}"
    shown = display_name(str(path))
    text = _read_run_text(path, METRICS_FILE)
    if skipped is not None and text and not text.endswith("\n"):
        # the writer ends every line with "\n": what follows the last one is a line cut short, left out
        # even when it parses (its last number may have lost digits)
        end = text.rfind("\n") + 1
        _note_cut(skipped, path, text.count("\n") + 1, text[end:].rstrip("\r"))
        text = text[:end]
    fix = f"Fix or delete the line, or restore {METRICS_FILE} from a copy."
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []  # empty file
        header = [name.strip() for name in header]
        unknown = [name for name in header if name not in METRIC_COLUMNS]
        if unknown or "epoch" not in header or len(set(header)) != len(header):
            problem = (f"unknown {noun_for(len(unknown), 'column')} {', '.join(_quote(n) for n in unknown)}" if unknown
                       else "no 'epoch' column" if "epoch" not in header else "a column named twice")
            raise CnnlabError(f"'{shown}' is not {what}: its header (line 1) has {problem}. The columns of "
                              f"{METRICS_FILE} are {', '.join(METRIC_COLUMNS)} (epoch required). "
                              f"Point at a run folder `cnnlab train` wrote, or restore the file from a copy.")
        rows = []
        for cells in reader:
            line = reader.line_num  # the physical line the record ends on
            if not any(cell.strip() for cell in cells):
                continue  # a blank line holds no row
            if len(cells) != len(header):
                raise CnnlabError(f"'{shown}' line {line} has {counted(len(cells), 'cell')} where the header has {len(header)} "
                                  f"({_quote(','.join(cells))}): the line is cut short or was edited. {fix}")
            row = {}
            for name, cell in zip(header, cells):
                try:
                    row[name] = _parse(cell, name in _INT_COLUMNS)
                except ValueError:
                    kind = "a whole number" if name in _INT_COLUMNS else "a number"
                    raise CnnlabError(f"'{shown}' line {line} is not a metrics row: {name} is {_quote(cell)}, not "
                                      f"{kind}. {fix}") from None
            if row["epoch"] is None:
                raise CnnlabError(f"'{shown}' line {line} is not a metrics row: its epoch is empty. {fix}")
            rows.append(row)
    except csv.Error as err:
        raise CnnlabError(f"'{shown}' line {reader.line_num} cannot be read as CSV ({err}). {fix}") from None
    return rows


def _csv_text(columns: Sequence[str], rows: Iterable[Mapping]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


class MetricsLog:
    """metrics.csv: one row per epoch, the whole (small) file rewritten atomically on each append.

    Rewriting beats appending here: a crash mid-write leaves the previous complete file, never half a
    row, and at one row per epoch the cost is nothing. A new log starts empty (a fresh run replaces an
    old file on its first append); call :meth:`truncate_after` to continue an existing one on resume.
    With ``enabled=False`` (DDP ranks other than 0) rows are kept in memory and nothing is written.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []

    def append(self, row: Mapping) -> None:
        """Add one epoch's row (keys from :data:`METRIC_COLUMNS`; missing ones stay empty) and save."""
        unknown = sorted(set(row) - set(METRIC_COLUMNS))
        if unknown:
            raise ValueError(f"Unknown metrics columns {unknown}; the columns are {list(METRIC_COLUMNS)}.")
        if row.get("epoch") is None:
            raise ValueError("A metrics row needs its 'epoch'.")
        clean = {}
        for column in METRIC_COLUMNS:
            value = row.get(column)
            if value is not None:
                value = int(value) if column in _INT_COLUMNS else float(value)
            clean[column] = value
        self.rows.append(clean)
        self._save()

    def truncate_after(self, epoch: int) -> str:
        """Continue the file on disk, keeping only rows with ``row['epoch'] <= epoch`` (epochs a checkpoint holds).
        Returns the epochs among 1..``epoch`` that have no row (the file was deleted or cut), as
        :func:`missing_numbers` writes them ("" when none)."""
        self.rows = [row for row in read_metrics(self.path) if row.get("epoch") is not None and row["epoch"] <= epoch]
        self._save()
        return missing_numbers((row["epoch"] for row in self.rows), epoch)

    def _save(self) -> None:
        if self.enabled:
            write_text_atomic(self.path, _csv_text(METRIC_COLUMNS, self.rows), "the metrics")


def read_steps(path: str | Path, skipped: list[tuple[str, str]] | None = None) -> list[dict]:
    """The rows of a steps.csv as dicts ``{'step': int, 'loss': float, 'lr': float}``.

    steps.csv is appended line by line and every line ends with a newline, so a crash can leave only
    one kind of damage: a last line without its newline, cut short. That line is left out and, when
    ``skipped`` is given, recorded there as ``(where, why)``, so a caller can say so. A missing or
    empty file reads as no rows. Anything else (another header, a line that is not three numbers,
    bytes that are not text) raises CnnlabError naming the file and the line. ``nan`` and ``inf``
    are numbers: the engine records the step where the loss blew up.
    """
    path = Path(path)
    if not path.is_file():
        return []
    what = f"a {STEPS_FILE}"
    shown = display_name(str(path))
    text = _read_run_text(path, STEPS_FILE)
    if not text:
        return []
    lines = text.split("\n")  # the writer ends every line with "\n"; the last item is what follows the last one
    cut = lines.pop()  # "" when the file ends with a newline, else a line the writer never finished
    if cut and not lines:  # only a header, cut short: a crash before the first step was written
        _note_cut(skipped, path, 1, cut)
        return []
    fix = f"Fix or delete the line, or restore {STEPS_FILE} from a copy."
    header = [name.strip() for name in lines[0].rstrip("\r").split(",")]
    if tuple(header) != STEP_COLUMNS:
        raise CnnlabError(f"'{shown}' is not {what}: its header (line 1) is {_quote(lines[0])} where "
                          f"{','.join(STEP_COLUMNS)} is expected. Point at a run folder `cnnlab train` wrote, or "
                          "restore the file from a copy.")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        try:  # the common case, as the writer writes it; anything else goes the slow way, with its message
            step, loss, lr = cells
            rows.append({"step": int(step), "loss": float(loss), "lr": float(lr)})
            continue
        except ValueError:
            pass
        line = line.rstrip("\r")
        if line.strip():  # a blank line holds no row
            rows.append(_step_row(path, number, line, fix))
    if cut:  # left out even when it parses: its last number may have lost digits ("0.01" cut to "0.0")
        _note_cut(skipped, path, len(lines) + 1, cut)
    return rows


def _step_row(path: Path, number: int, line: str, fix: str) -> dict:
    shown = display_name(str(path))
    cells = line.split(",")
    if len(cells) != len(STEP_COLUMNS):
        raise CnnlabError(f"'{shown}' line {number} has {counted(len(cells), 'cell')} where {','.join(STEP_COLUMNS)} needs "
                          f"{len(STEP_COLUMNS)} ({_quote(line)}). {fix}")
    try:
        step, loss, lr = _parse(cells[0], True), _parse(cells[1], False), _parse(cells[2], False)
    except ValueError:
        step = None
    if step is None or loss is None or lr is None:
        raise CnnlabError(f"'{shown}' line {number} is not a step row: {_quote(line)} is not a whole step number "
                          f"followed by two numbers (loss, lr). {fix}")
    return {"step": step, "loss": loss, "lr": lr}


def _note_cut(skipped: list | None, path: Path, number: int, line: str) -> None:
    if skipped is not None:
        shown = display_name(str(path))
        skipped.append((f"{shown} line {number}", f"cut short with no line end ({_quote(line)}): the run stopped "
                                                 "while writing it"))


def missing_numbers(present: Iterable[int], upto: int) -> str:
    """The numbers among 1..``upto`` not in ``present``, as runs: "1-421", "3, 5-7"; "" when none is missing."""
    have = set(present)
    runs: list[list[int]] = []
    for number in range(1, upto + 1):
        if number in have:
            continue
        if runs and runs[-1][1] == number - 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class StepLossLog:
    """Per-step training loss and learning rate: kept in memory and appended to steps.csv.

    Each :meth:`append` writes one short line and flushes it (a few microseconds, no fsync), so
    :func:`save_curves` reading the file after an epoch sees every step. A line cut short by a crash
    is skipped when read, and :meth:`truncate_after` rewrites the file atomically on resume. A new log
    replaces an old steps.csv on its first append. ``enabled=False`` keeps memory only.
    """

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        # Compact typed arrays: a long run has hundreds of thousands of steps.
        self.steps = array("q")
        self.losses = array("d")
        self.lrs = array("d")
        self._file = None
        self._closer = None
        self._continue = False  # True after truncate_after: append to the file instead of replacing it

    def __len__(self) -> int:
        return len(self.steps)

    def append(self, step: int, loss: float, lr: float) -> None:
        step, loss, lr = int(step), float(loss), float(lr)
        self.steps.append(step)
        self.losses.append(loss)
        self.lrs.append(lr)
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        self._file.write(f"{step},{loss!r},{lr!r}\n")
        self._file.flush()

    def rows(self) -> list[dict]:
        """The steps so far as dicts ``{'step', 'loss', 'lr'}`` (what :func:`save_curves` takes)."""
        return [{"step": s, "loss": v, "lr": r} for s, v, r in zip(self.steps, self.losses, self.lrs)]

    def truncate_after(self, step: int) -> str:
        """Continue the file on disk, keeping only rows with ``row['step'] <= step`` (steps a checkpoint holds).
        Returns the steps among 1..``step`` that have no row, as :func:`missing_numbers` writes them."""
        self.close()
        kept = [row for row in read_steps(self.path) if row["step"] <= step]
        self.steps = array("q", (row["step"] for row in kept))
        self.losses = array("d", (row["loss"] for row in kept))
        self.lrs = array("d", (row["lr"] for row in kept))
        if self.enabled:
            write_text_atomic(self.path, _csv_text(STEP_COLUMNS, kept), "the step log")
        self._continue = True
        return missing_numbers(self.steps, step)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()  # a weakref.finalize runs at most once
        self._file = self._closer = None

    def _open(self) -> None:
        try:
            if self._continue:
                self._file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (held across steps)
            else:
                self._file = open(self.path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (held across steps)
                self._file.write(",".join(STEP_COLUMNS) + "\n")
        except OSError as err:
            raise CnnlabError(f"Cannot write the step log to '{display_name(str(self.path))}': {err.strerror or err}. "
                              f"{WRITE_ADVICE}") from None
        self._continue = True
        # Close the file when this object goes away even if nobody calls close() (no ResourceWarning).
        self._closer = weakref.finalize(self, self._file.close)


# ---------------------------------------------------------------------------------------------
# curves


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values; the first ``window - 1`` points average what exists.

    ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``, computed with one cumulative sum: O(n).
    """
    if int(window) != window or window < 1:
        raise ValueError(f"The moving-average window must be a whole number >= 1, got {window!r}.")
    window = int(window)
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    totals = np.concatenate(([0.0], np.cumsum(values)))  # totals[i] = sum of the first i values
    ends = np.arange(1, values.size + 1)  # slice end (exclusive) of each point's window
    starts = np.maximum(ends - window, 0)
    return (totals[ends] - totals[starts]) / (ends - starts)


def _series(rows: Sequence[Mapping], x_key: str, y_key: str, scale: float = 1.0) -> tuple[list, list]:
    """(x, y) of the rows where both values exist."""
    xs, ys = [], []
    for row in rows:
        x, y = row.get(x_key), row.get(y_key)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y * scale)
    return xs, ys


LOG_SCALE_SPAN = 1e3  # the loss axis turns logarithmic when the largest finite loss is this many times the smallest


def _spans_decades(steps: Sequence[Mapping], rows: Sequence[Mapping]) -> bool:
    """Whether the positive finite losses drawn (step losses, else epoch train losses; val losses) span more than
    :data:`LOG_SCALE_SPAN`: an exploding run, whose curve a linear axis would show as flat until the last steps."""
    values = [row["loss"] for row in steps] or [row.get("train_loss") for row in rows]
    values += [row.get(key) for row in rows for key in ("val_loss", "ema_val_loss")]
    positive = [value for value in values if value is not None and math.isfinite(value) and value > 0]
    return bool(positive) and max(positive) > LOG_SCALE_SPAN * min(positive)


def save_curves(source, path: str | Path, smoothing: int = 50, *, steps: Sequence[Mapping] | None = None) -> Path:
    """Draw the run's curves into one PNG with three panels: loss, accuracy, learning rate.

    ``source`` is a run folder (metrics.csv and steps.csv are read from it) or a list of metrics rows,
    with the step rows passed as ``steps``. Loss: raw per-step training loss (faint), its trailing
    moving average over ``smoothing`` steps (bold), and val loss per epoch (markers, at the step the
    epoch ended). Accuracy: train and val per epoch, EMA val when present. LR: per step (or per epoch
    when there is no step log). A loss that spans more than three orders of magnitude (a run that exploded)
    is drawn on a log axis, and the first step whose loss is NaN or inf is marked by a dashed line. Written
    atomically: a failed write leaves the previous file.
    """
    # Figure without pyplot: no global state and no backend switch in the caller's process; PNG
    # output renders through Agg.
    from matplotlib.figure import Figure

    if isinstance(source, (str, Path)):
        run_dir = Path(source)
        rows = read_metrics(run_dir / METRICS_FILE)
        steps = read_steps(run_dir / STEPS_FILE)
    else:
        rows = list(source)
        steps = list(steps or [])
    path = Path(path)
    shown = display_name(str(path))
    if path.suffix.lower() != ".png":
        raise CnnlabError(f"The curves file must be a .png, got '{shown}'.")
    if int(smoothing) != smoothing or smoothing < 1:
        raise CnnlabError(f"log.smoothing must be a whole number of steps >= 1 (1 = no smoothing), got {smoothing!r}.")
    if not rows and not steps:
        raise CnnlabError(f"There is nothing to plot for '{shown}': no epoch and no step has been recorded.")

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)
    try:
        # --- loss against steps
        if steps:
            step_x = [row["step"] for row in steps]
            losses = [row["loss"] for row in steps]
            loss_ax.plot(step_x, losses, color="C0", alpha=0.25, linewidth=0.7, label="train loss (per step)")
            loss_ax.plot(step_x, moving_average(losses, smoothing), color="C0", linewidth=2.0,
                         label=f"train loss ({int(smoothing)}-step mean)")
        else:
            x, y = _series(rows, "step", "train_loss")
            loss_ax.plot(x, y, "o-", color="C0", label="train loss (per epoch)")
        x, y = _series(rows, "step", "val_loss")
        if y:
            loss_ax.plot(x, y, "o", color="C1", markersize=6, label="val loss (per epoch)")
        x, y = _series(rows, "step", "ema_val_loss")
        if y:
            loss_ax.plot(x, y, "s", color="C2", markersize=5, label="EMA val loss")
        blown = next((row for row in steps if not math.isfinite(row["loss"])), None)
        if blown is not None:  # matplotlib leaves a NaN/inf out of the line: mark where the loss stopped being a number
            loss_ax.axvline(blown["step"], color="C3", linestyle="--", linewidth=1.0,
                            label=f"loss {blown['loss']} at step {blown['step']}")
        if _spans_decades(steps, rows):
            # A loss that exploded by orders of magnitude flattens everything before it on a linear axis
            loss_ax.set_yscale("log")
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("loss")
        loss_ax.set_title("loss")

        # --- accuracy against epochs, in percent
        for key, style, color, label in (("train_acc", "o-", "C0", "train"), ("val_acc", "o-", "C1", "val"),
                                         ("ema_val_acc", "s--", "C2", "EMA val")):
            x, y = _series(rows, "epoch", key, scale=100.0)
            if y:
                acc_ax.plot(x, y, style, color=color, label=label)
        x, y = _series(rows, "epoch", "val_acc", scale=100.0)
        if y:
            best = int(np.argmax(y))
            acc_ax.set_title(f"accuracy (best val {y[best]:.2f}% at epoch {x[best]})")
        else:
            acc_ax.set_title("accuracy")
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy (%)")

        # --- learning rate
        if steps:
            lr_ax.plot([row["step"] for row in steps], [row["lr"] for row in steps], color="C3")
            lr_ax.set_xlabel("step")
        else:
            x, y = _series(rows, "epoch", "lr")
            lr_ax.plot(x, y, "o-", color="C3")
            lr_ax.set_xlabel("epoch (lr at its end)")
        lr_ax.set_ylabel("learning rate")
        lr_ax.set_title("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))

        for ax in (loss_ax, acc_ax, lr_ax):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        with atomic_path(path, "the curves") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        fig.clear()  # release the artists now; a Figure without pyplot is not held anywhere else
    return path


# ---------------------------------------------------------------------------------------------
# progress


def _format_lr(lr: float) -> str:
    """0.0500 for usual SGD rates, 3.00e-04 for small ones (AdamW, the end of a cosine), 0 for zero."""
    if lr == 0:
        return "0"
    return f"{lr:.4f}" if lr >= 1e-3 else f"{lr:.2e}"


# A loss from this size up prints with an exponent: in fixed point a diverging run's 3.668e+17 would be
# "366789147283903552.000". Below it fixed point reads well, and every loss a healthy run has (about ln C
# down to a few thousandths) keeps the fixed format its lines and reports have always had.
LARGE_LOSS = 1e4


def loss_text(value: float, decimals: int) -> str:
    """A loss in a line a person reads: fixed point with ``decimals`` decimals (0.412), or with an exponent and as
    many digits when fixed point would not show it, i.e. from :data:`LARGE_LOSS` up (3.668e+17) or below one unit
    of the last decimal, where it would print as 0.000 (4.200e-05). Zero, nan and inf print as themselves."""
    size = abs(value)
    if math.isfinite(value) and size != 0 and (size >= LARGE_LOSS or size < 10.0 ** -decimals):
        return f"{value:.{decimals}e}"
    return f"{value:.{decimals}f}"


def epoch_line(row: Mapping, total_epochs: int | None = None) -> str:
    """The plain one-line summary of an epoch's metrics row, e.g.

    ``epoch 3/10  train loss 0.412 acc 85.1%  val loss 0.388 acc 86.0%  lr 0.0500  12.3 s  4,870 img/s``
    (an ``ema loss ... acc ...`` part follows val when the row has EMA values; missing values are left out).
    """
    epoch = row.get("epoch")
    parts = [f"epoch {epoch}/{total_epochs}" if total_epochs else f"epoch {epoch}"]
    for prefix, loss_key, acc_key in (("train", "train_loss", "train_acc"), ("val", "val_loss", "val_acc"),
                                      ("ema", "ema_val_loss", "ema_val_acc")):
        loss, acc = row.get(loss_key), row.get(acc_key)
        pieces = []
        if loss is not None:
            pieces.append(f"loss {loss_text(loss, 3)}")
        if acc is not None:
            pieces.append(f"acc {acc:.1%}")
        if pieces:
            parts.append(f"{prefix} " + " ".join(pieces))
    if row.get("lr") is not None:
        parts.append(f"lr {_format_lr(row['lr'])}")
    if row.get("epoch_seconds") is not None:
        parts.append(f"{row['epoch_seconds']:.1f} s")
    if row.get("images_per_second") is not None:
        parts.append(f"{row['images_per_second']:,.0f} img/s")
    return "  ".join(parts)


NOT_YET = "-"  # a progress bar's loss, accuracy and speed before the epoch's first step


class Progress:
    """Shows training progress: a rich bar per epoch on a terminal, one plain line per epoch otherwise.

    On a terminal (and not ``quiet``) the bar shows loss, accuracy, images/s and ETA, and each finished
    epoch leaves its plain line above it. Off a terminal or with ``quiet``, only the plain line per
    epoch is printed and :meth:`update` returns at once (no formatting per step). ``enabled=False``
    (DDP ranks other than 0) prints nothing. ``console`` is a rich Console (default: stdout).
    """

    # Seconds between bar updates: the bar redraws at 10 Hz anyway, so more updates are wasted work.
    UPDATE_INTERVAL = 0.1

    def __init__(self, quiet: bool = False, enabled: bool = True, console=None):
        self.enabled = enabled
        self.quiet = quiet
        self.total_epochs: int | None = None
        self._console = console
        self._bar = None  # rich.progress.Progress while a bar is live
        self._task = None
        self._steps = 0
        self._last_update = -math.inf
        self._rendering = False  # True only while an epoch's bar is shown: update() does work
        # stdout was closed under the run (the program reading it, tee or head, ended): nothing more is shown,
        # and the engine stops the run at the epoch's end with its checkpoint saved (see _print)
        self.output_closed = False
        # why the output could not be written, when that was not a closed pipe (a full disk under a log file)
        self.output_error: str | None = None
        if enabled:
            if self._console is None:
                from rich.console import Console

                self._console = Console()
            self._use_bar = not quiet and self._console.is_terminal
        else:
            self._use_bar = False

    @property
    def console(self):
        return self._console

    def start_epoch(self, epoch: int, total_epochs: int, steps: int) -> None:
        """Begin epoch ``epoch`` (0-based index) of ``total_epochs``, which has ``steps`` optimiser steps."""
        self.total_epochs = total_epochs
        if not self._use_bar:
            return
        if self._bar is None:
            self._bar = self._make_bar()
            self._bar.start()
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._steps = steps
        # no step yet: dashes, not "nan", which would read as a diverged loss
        self._task = self._bar.add_task(f"epoch {epoch + 1}/{total_epochs}", total=steps,
                                        loss=NOT_YET, acc=NOT_YET, ips=NOT_YET)
        self._last_update = -math.inf
        self._rendering = True

    def update(self, step_in_epoch: int, loss: float, acc: float, images_per_second: float) -> None:
        """Steps done in this epoch (1-based), the last batch's loss and accuracy (fraction), images/s."""
        if not self._rendering:
            return
        now = time.monotonic()
        if now - self._last_update < self.UPDATE_INTERVAL and step_in_epoch < self._steps:
            return
        self._last_update = now
        self._bar.update(self._task, completed=step_in_epoch, loss=loss_text(loss, 4), acc=f"{acc:.1%}",
                         ips=f"{images_per_second:,.0f}")

    def note(self, line: str) -> None:
        """Print a line between epochs (above the bar on a terminal)."""
        if not self.enabled:
            return
        self._print(self._bar.console if self._bar is not None else self._console, line)

    def _print(self, console, line: str) -> None:
        """Print ``line``; a closed stdout sets :attr:`output_closed` instead of ending the process.

        rich answers a BrokenPipeError by pointing stdout at /dev/null and raising SystemExit(1)
        (Console.on_broken_pipe): raised here, mid-epoch, it ended the run after its metrics row and before
        its checkpoint, with status.json still saying running and no word on stderr. The run is stopped as a
        Ctrl-C stops it instead, by the engine, which reads this flag."""
        if not self.enabled:
            return
        try:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        except BrokenPipeError:
            self._closed()
        except OSError as err:  # stdout on a full disk (`> log` there): the run stops at the epoch's end as well
            self.output_error = err.strerror or str(err)
            self._closed()
        except SystemExit as err:
            if not isinstance(err.__context__, BrokenPipeError):
                raise
            self._closed()

    def _closed(self) -> None:
        self.output_closed = True
        self.enabled = False

    def end_epoch(self, row: Mapping) -> None:
        """Print the epoch's plain line (from its metrics row) and clear its bar."""
        if not self.enabled:
            return
        line = epoch_line(row, self.total_epochs)
        if self._bar is not None:
            if self._task is not None:
                self._bar.remove_task(self._task)
                self._task = None
            self._rendering = False
            self._print(self._bar.console, line)
        else:
            self._print(self._console, line)

    def close(self) -> None:
        """Stop the bar (safe to call more than once, and from a ``finally``)."""
        self._rendering = False
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None

    def _make_bar(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        return RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            # formatted only when the bar redraws (10 Hz), never per step; the loss comes as text (loss_text)
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[ips]} img/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self._console,
            transient=True,  # the bar disappears; the plain lines printed per epoch stay
        )


# ---------------------------------------------------------------------------------------------
# TensorBoard


def require_tensorboard():
    """torch's SummaryWriter; a CnnlabError with the command that fixes it when the tensorboard package is
    missing. The engine calls it before the run folder is written, so log.tensorboard=true without the
    package leaves nothing behind."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise CnnlabError(
            "log.tensorboard is on but the tensorboard package is not installed. Install it with "
            "`pip install tensorboard`, or turn TensorBoard off (--set log.tensorboard=false); "
            f"{METRICS_FILE} and {CURVES_FILE} are written either way.") from None
    return SummaryWriter


class TensorBoardWriter:
    """TensorBoard event files in ``run_dir/tensorboard`` when enabled; otherwise every call does nothing.

    Enabled without the tensorboard package installed is a user error, raised at construction (before
    training starts) with the command that fixes it. A resumed run passes ``purge_step``, the first step it
    will log: TensorBoard then hides the events the earlier process wrote from that step on (steps taken
    after its last checkpoint, which the resumed run takes again), so no curve doubles back.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = False, purge_step: int | None = None):
        self.enabled = enabled
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self._writer = None
        if not enabled:
            return
        self._writer = require_tensorboard()(log_dir=str(self.log_dir), purge_step=purge_step)

    def step(self, step: int, loss: float, lr: float) -> None:
        """Per-step scalars: ``train/loss_step`` and ``train/lr`` at the global step."""
        if self._writer is None:
            return
        self._writer.add_scalar("train/loss_step", loss, step)
        self._writer.add_scalar("train/lr", lr, step)

    def epoch(self, row: Mapping) -> None:
        """Every metric of an epoch's row as ``epoch/<column>`` at x = the epoch number."""
        if self._writer is None:
            return
        for column in METRIC_COLUMNS:
            value = row.get(column)
            if column in _INT_COLUMNS or value is None:
                continue
            self._writer.add_scalar(f"epoch/{column}", value, row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------------------------------
# final report


_LABEL_WIDTH = 16  # the report's label column
_REPORT_WIDTH = 79  # fits an 80-column terminal without rich re-wrapping a line


def _budget_text(seconds: float, timing: float, one_epoch_over: bool, *, minutes: float) -> str:
    """How ``seconds`` of training and ``timing`` seconds of timed steps came out against ``minutes``;
    ``one_epoch_over``: the timed steps put one epoch, the least a run trains, past the budget already."""
    budget = minutes * 60.0
    used = seconds + timing
    share = f"{used / budget:.0%} of train.minutes={minutes:g}"
    if timing > 0:
        share += f" (the training and {duration_text(timing)} of timing steps before it)"
    if used <= budget:
        return share
    why = ("one epoch, the least a run trains, was longer than the budget by the timed steps" if one_epoch_over
           else "the machine ran slower than the timed steps")
    return f"{share}: over by {duration_text(used - budget)}; {why}"


def budget_timing_seconds(run_dir: Path) -> float:
    """The seconds train.minutes spent timing steps, from the run's budget.json; 0 without one."""
    return _budget_record(run_dir)[0]


def _budget_record(run_dir: Path) -> tuple[float, bool]:
    """From the run's budget.json: (the seconds of timed steps, whether those steps put one epoch and the timing
    past train.minutes, so that the least a run trains was over already); (0, False) without one, and False where
    it lacks the epoch's estimate."""
    try:
        record = json.loads((run_dir / BUDGET_FILE).read_text())
        timing = float(record["probe_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, False
    try:
        return timing, float(record["epoch_seconds"]) + timing > float(record["minutes"]) * 60.0
    except (KeyError, ValueError, TypeError):
        return timing, False


def _loss_acc(loss, acc) -> str:
    parts = []
    if loss is not None:
        parts.append(f"loss {loss_text(loss, 4)}")
    if acc is not None:
        parts.append(f"acc {acc:.2%}")
    return "  ".join(parts) if parts else "-"


def final_report(rows: Sequence[Mapping], run_dir: str | Path, best: Mapping | None = None,
                 threads: str | None = None, budget_minutes: float | None = None,
                 stopped_early: str | None = None) -> str:
    """A one-screen text summary of a finished run (the engine prints it and saves report.txt). Its "files" line
    lists what ``run_dir`` holds now, and report.txt, which this text is written to next.

    ``best`` is ``{'val_acc': fraction, 'epoch': 1-based}`` as the engine tracks it; when missing (or
    never set, epoch < 1) it is taken from the rows. ``threads`` says how many CPU threads trained
    (:func:`cnnlab.threads.threads_text`). ``budget_minutes`` is train.minutes: the report then says how the
    training time, with the steps timed before it (budget.json in ``run_dir``), came out against it.
    ``stopped_early`` says when and why early stopping ended the run ('after epoch 3 of 10: ...'), on its own line.
    """
    run_dir = Path(run_dir)
    lines = [f"cnnlab run  {run_dir}"]
    if not rows:
        lines.append("no epoch finished: nothing to report")
        return "\n".join(lines) + "\n"
    last = rows[-1]
    if best is None or best.get("epoch") is None or best["epoch"] < 1:
        scored = [row for row in rows if row.get("val_acc") is not None]
        best = max(scored, key=lambda row: row["val_acc"]) if scored else None
    seconds = sum(row["epoch_seconds"] for row in rows if row.get("epoch_seconds") is not None)
    # Images trained = sum over epochs of rate x seconds; over the total seconds that is the run's mean rate.
    images = sum(row["images_per_second"] * row["epoch_seconds"] for row in rows
                 if row.get("images_per_second") is not None and row.get("epoch_seconds") is not None)

    def field(label: str, text: str) -> str:
        return f"{label:<{_LABEL_WIDTH}}{text}"

    steps = f" ({last['step']:,} {noun_for(last['step'], 'step')})" if last.get("step") is not None else ""
    lines.append(field("epochs", f"{last['epoch']}{steps}"))
    if stopped_early:
        lines.append(field("stopped early", stopped_early))
    if best is not None and best.get("val_acc") is not None:
        lines.append(field("best val acc", f"{best['val_acc']:.2%} at epoch {best['epoch']}"))
    lines.append(field("final train", _loss_acc(last.get("train_loss"), last.get("train_acc"))))
    lines.append(field("final val", _loss_acc(last.get("val_loss"), last.get("val_acc"))))
    ema_rows = [row for row in rows if row.get("ema_val_acc") is not None]
    if ema_rows:
        ema_best = max(ema_rows, key=lambda row: row["ema_val_acc"])
        lines.append(field("final EMA val", _loss_acc(last.get("ema_val_loss"), last.get("ema_val_acc"))
                           + f"  (best {ema_best['ema_val_acc']:.2%} at epoch {ema_best['epoch']})"))
    if last.get("lr") is not None:
        lines.append(field("final lr", _format_lr(last["lr"])))
    if seconds > 0:
        timing = f"{duration_text(seconds)} training ({duration_text(seconds / len(rows))} per epoch)"
        if images > 0:
            timing += f", {images / seconds:,.0f} img/s"
        lines.append(field("time", timing))
        if budget_minutes is not None:
            lines.append(field("budget", _budget_text(seconds, *_budget_record(run_dir), minutes=budget_minutes)))
    if threads:
        lines.append(field("threads", threads))
    lines.append(field("run folder", f"{run_dir}/"))
    for label, name in (("metrics", METRICS_FILE), ("curves", CURVES_FILE)):
        if (run_dir / name).exists():
            lines.append(field(label, str(run_dir / name)))
    if run_dir.is_dir():
        # report.txt is this text: written next, it belongs in its own list
        names = sorted({p.name for p in run_dir.iterdir() if not p.name.startswith(".")} | {REPORT_FILE})
        if names:  # wrapped by hand so the report reads the same in report.txt and on an 80-column terminal
            wrapped = textwrap.wrap(", ".join(names), width=_REPORT_WIDTH, initial_indent=field("files", ""),
                                    subsequent_indent=" " * _LABEL_WIDTH, break_on_hyphens=False)
            lines.extend(wrapped)
    return "\n".join(lines) + "\n"
