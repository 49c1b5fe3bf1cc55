"""Run records: metrics.csv/steps.csv round trips and resume truncation, curves, progress, TensorBoard, report."""

import io
import math
import sys

import numpy as np
import pytest
from rich.console import Console

from cnnlab.errors import CnnlabError
from cnnlab.train.logging import (
    METRIC_COLUMNS,
    MetricsLog,
    Progress,
    StepLossLog,
    TensorBoardWriter,
    epoch_line,
    final_report,
    moving_average,
    read_metrics,
    read_steps,
    save_curves,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_row(epoch, ema=False, **changes):
    """A plausible epoch row; values chosen so repr() round trips are non-trivial (1/3, 0.1)."""
    row = {"epoch": epoch, "step": 10 * epoch, "train_loss": 1 / (epoch + 2), "train_acc": 0.5 + epoch / 100,
           "val_loss": 0.1 + 1 / (epoch + 3), "val_acc": 0.6 + epoch / 50, "lr": 0.05 / epoch,
           "epoch_seconds": 2.0, "images_per_second": 1000.0 + epoch}
    if ema:
        row.update(ema_val_loss=0.3, ema_val_acc=0.7 + epoch / 100)
    row.update(changes)
    return row


def fill_run(run_dir, epochs=3, steps_per_epoch=10, ema=True):
    metrics, steps = MetricsLog(run_dir / "metrics.csv"), StepLossLog(run_dir / "steps.csv")
    for epoch in range(1, epochs + 1):
        for step in range((epoch - 1) * steps_per_epoch + 1, epoch * steps_per_epoch + 1):
            steps.append(step, 2.3 / step ** 0.3, 0.1 * (1 - step / 100))
        metrics.append(make_row(epoch, ema=ema))
    steps.close()
    return metrics, steps


# --- metrics.csv ---------------------------------------------------------------------------------

def test_metrics_round_trip_exact_with_empty_cells(tmp_path):
    log = MetricsLog(tmp_path / "metrics.csv")
    rows = [make_row(1), make_row(2, ema=True)]
    for row in rows:
        log.append(row)
    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[0] == ",".join(METRIC_COLUMNS)  # header once
    assert text.count("images_per_second") == 1
    back = read_metrics(tmp_path / "metrics.csv")
    assert len(back) == 2
    assert back[0]["ema_val_acc"] is None and back[0]["ema_val_loss"] is None  # empty cell -> None
    for original, read in zip(rows, back):
        assert isinstance(read["epoch"], int) and isinstance(read["step"], int)
        for key, value in original.items():
            assert read[key] == value  # bit-exact floats (repr), needed for resume comparisons
    assert set(back[0]) == set(METRIC_COLUMNS)


def test_metrics_rejects_unknown_column(tmp_path):
    with pytest.raises(ValueError, match="val_top5"):
        MetricsLog(tmp_path / "m.csv").append({**make_row(1), "val_top5": 0.9})


def test_metrics_truncate_after_resume_drops_later_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    first = MetricsLog(path)
    for epoch in range(1, 5):
        first.append(make_row(epoch))
    # the run checkpointed after epoch 2, went on to write rows 3 and 4, then died: resume at 2
    resumed = MetricsLog(path)
    resumed.truncate_after(2)
    assert [row["epoch"] for row in read_metrics(path)] == [1, 2]
    resumed.append(make_row(3, train_loss=0.123))
    back = read_metrics(path)
    assert [row["epoch"] for row in back] == [1, 2, 3]  # no duplicated epoch 3
    assert back[2]["train_loss"] == 0.123
    assert back[0] == read_metrics(path)[0] and resumed.rows == back


def test_metrics_fresh_log_replaces_old_file_and_disabled_writes_nothing(tmp_path):
    path = tmp_path / "metrics.csv"
    old = MetricsLog(path)
    for epoch in (1, 2, 3):
        old.append(make_row(epoch))
    MetricsLog(path).append(make_row(1, train_loss=9.0))  # a fresh run in the same folder
    assert [row["train_loss"] for row in read_metrics(path)] == [9.0]
    other = tmp_path / "rank1.csv"
    quiet = MetricsLog(other, enabled=False)
    quiet.append(make_row(1))
    assert not other.exists() and len(quiet.rows) == 1
    assert read_metrics(tmp_path / "missing.csv") == []


def test_read_metrics_names_bad_line(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss\n1,10,0.5\n2,20,oops\n")
    with pytest.raises(CnnlabError, match="line 3"):
        read_metrics(path)


# --- steps.csv -----------------------------------------------------------------------------------

def test_step_log_round_trip_truncate_and_cut_line(tmp_path):
    path = tmp_path / "steps.csv"
    log = StepLossLog(path)
    for step in range(1, 8):
        log.append(step, 1 / step, 0.1 / step)
    # visible on disk without close(): save_curves reads the file after each epoch
    assert [row["step"] for row in read_steps(path)] == list(range(1, 8))
    assert read_steps(path)[2] == {"step": 3, "loss": 1 / 3, "lr": 0.1 / 3}
    assert log.rows() == read_steps(path) and len(log) == 7
    log.close()
    with open(path, "a") as handle:
        handle.write("8,0.12")  # a crash cut the last line short
    assert len(read_steps(path)) == 7

    resumed = StepLossLog(path)
    resumed.truncate_after(5)
    assert list(resumed.steps) == [1, 2, 3, 4, 5]
    resumed.append(6, 0.5, 0.01)
    resumed.close()
    assert [row["step"] for row in read_steps(path)] == [1, 2, 3, 4, 5, 6]
    assert read_steps(path)[-1]["loss"] == 0.5
    assert path.read_text().count("step,loss,lr") == 1


def test_step_log_fresh_replaces_and_disabled_keeps_memory_only(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("step,loss,lr\n1,9.0,0.1\n2,9.0,0.1\n")
    fresh = StepLossLog(path)
    fresh.append(1, 2.0, 0.1)
    fresh.close()
    assert read_steps(path) == [{"step": 1, "loss": 2.0, "lr": 0.1}]
    off = StepLossLog(tmp_path / "rank1.csv", enabled=False)
    off.append(1, 2.0, 0.1)
    assert not (tmp_path / "rank1.csv").exists() and off.rows() == [{"step": 1, "loss": 2.0, "lr": 0.1}]


# --- moving average ------------------------------------------------------------------------------

def test_moving_average_by_hand():
    values = [4.0, 2.0, 6.0, 0.0, 10.0]
    # window 3, trailing: [4], [4,2], [4,2,6], [2,6,0], [6,0,10]
    expected = [4.0, 3.0, 4.0, 8 / 3, 16 / 3]
    np.testing.assert_allclose(moving_average(values, 3), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(moving_average(values, 1), values)
    # a window longer than the data: the running mean of everything so far
    np.testing.assert_allclose(moving_average(values, 50), np.cumsum(values) / np.arange(1, 6), atol=1e-12)
    assert moving_average([], 5).shape == (0,)
    with pytest.raises(ValueError):
        moving_average(values, 0)


def test_moving_average_matches_numpy_convolution():
    values = np.random.default_rng(0).normal(size=500)
    window = 17
    ours = moving_average(values, window)
    full = np.convolve(values, np.ones(window) / window, mode="valid")  # full windows only
    np.testing.assert_allclose(ours[window - 1:], full, atol=1e-12)
    for i in range(window - 1):  # the first points average what exists
        assert ours[i] == pytest.approx(values[: i + 1].mean(), abs=1e-12)


# --- curves --------------------------------------------------------------------------------------

def test_save_curves_from_run_folder_and_from_rows(tmp_path):
    fill_run(tmp_path)
    out = save_curves(tmp_path, tmp_path / "curves.png", smoothing=5)
    assert out.read_bytes()[:8] == PNG_MAGIC
    rows = [make_row(1), make_row(2)]  # no step log: loss and lr per epoch, no EMA
    save_curves(rows, tmp_path / "rows.png", smoothing=3)
    assert (tmp_path / "rows.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(CnnlabError, match="smoothing"):
        save_curves(rows, tmp_path / "bad.png", smoothing=0)
    with pytest.raises(CnnlabError, match="nothing to plot"):
        save_curves(tmp_path / "empty-run", tmp_path / "empty.png")


def test_save_curves_of_an_exploding_loss_uses_a_log_axis_and_marks_the_non_finite_step(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn = {}

    def keep_loss_axis(self, fname, **kwargs):
        loss_ax = self.axes[0]
        drawn["scale"] = loss_ax.get_yscale()
        drawn["labels"] = loss_ax.get_legend_handles_labels()[1]

    monkeypatch.setattr(Figure, "savefig", keep_loss_axis)
    # the loss grows a hundredfold a step, then becomes inf: on a linear axis all but the last steps lie flat at 0
    exploding = [{"step": step, "loss": 2.3 * 100.0 ** (step - 1), "lr": 1e5} for step in range(1, 10)]
    exploding.append({"step": 10, "loss": math.inf, "lr": 1e5})
    save_curves([make_row(1, step=9, train_loss=1e9, val_loss=1e12)], tmp_path / "diverged.png", smoothing=3,
                steps=exploding)
    assert drawn["scale"] == "log" and "loss inf at step 10" in drawn["labels"]
    # a healthy loss, falling from ln(10) to a tenth of it, keeps the linear axis and has no marker
    healthy = [{"step": step, "loss": 2.3 / step ** 0.5, "lr": 0.1} for step in range(1, 101)]
    save_curves([make_row(1, step=100)], tmp_path / "healthy.png", smoothing=3, steps=healthy)
    assert drawn["scale"] == "linear" and not any(label.startswith("loss ") for label in drawn["labels"])


def test_save_curves_failed_write_keeps_old_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    fill_run(tmp_path, epochs=2)
    path = tmp_path / "curves.png"
    save_curves(tmp_path, path, smoothing=4)
    old = path.read_bytes()

    def half_then_disk_full(self, fname, **kwargs):
        with open(fname, "wb") as handle:
            handle.write(PNG_MAGIC + b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half_then_disk_full)
    with pytest.raises(CnnlabError, match="No space left"):
        save_curves(tmp_path, path, smoothing=4)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


# --- progress ------------------------------------------------------------------------------------

def test_progress_plain_line_off_terminal():
    buffer = io.StringIO()
    progress = Progress(console=Console(file=buffer, width=60))  # not a terminal; narrower than the line
    progress.start_epoch(2, 10, steps=100)
    for step in range(1, 101):
        progress.update(step, 0.5, 0.8, 4000.0)
    assert buffer.getvalue() == ""  # nothing per step
    progress.end_epoch({"epoch": 3, "train_loss": 0.4123, "train_acc": 0.8512, "val_loss": 0.3879,
                        "val_acc": 0.86, "lr": 0.05, "epoch_seconds": 12.34, "images_per_second": 4870.2})
    progress.close()
    assert buffer.getvalue() == ("epoch 3/10  train loss 0.412 acc 85.1%  val loss 0.388 acc 86.0%  "
                                 "lr 0.0500  12.3 s  4,870 img/s\n")


def test_epoch_line_with_ema_and_small_lr():
    line = epoch_line(make_row(1, ema=True, lr=3e-4), total_epochs=5)
    assert line.startswith("epoch 1/5  train loss")
    assert "ema loss 0.300 acc 71.0%" in line and "lr 3.00e-04" in line


def test_losses_too_large_or_too_small_for_fixed_point_print_with_an_exponent(tmp_path):
    # A diverging run's loss of 3.7e17 printed as "366789147283903552.000"; a loss of 4.2e-05 as "0.000"
    huge, tiny = 3.6678914728390355e17, 4.2e-05
    line = epoch_line(make_row(1, train_loss=huge, val_loss=tiny), total_epochs=3)
    assert "train loss 3.668e+17 acc" in line and "val loss 4.200e-05 acc" in line
    report = final_report([make_row(1, train_loss=huge, val_loss=tiny)], tmp_path)
    assert "final train     loss 3.6679e+17  acc" in report and "final val       loss 4.2000e-05  acc" in report
    # every loss fixed point shows keeps its format, up to the first that takes an exponent
    for loss, text in ((0.4123, "0.412"), (2.302585, "2.303"), (0.001, "0.001"), (9999.9, "9999.900"),
                       (0.0, "0.000"), (math.nan, "nan"), (math.inf, "inf"), (1e4, "1.000e+04")):
        assert f"train loss {text} acc" in epoch_line(make_row(1, train_loss=loss)), loss
    assert "loss 0.0001  acc" in final_report([make_row(1, train_loss=1e-4)], tmp_path)
    # metrics.csv keeps what the lines round: the exact float
    MetricsLog(tmp_path / "metrics.csv").append(make_row(1, train_loss=huge, val_loss=tiny))
    row = read_metrics(tmp_path / "metrics.csv")[0]
    assert (row["train_loss"], row["val_loss"]) == (huge, tiny)


def test_progress_bar_shows_a_diverging_loss_with_an_exponent():
    buffer = io.StringIO()
    progress = Progress(console=Console(file=buffer, force_terminal=True, color_system=None, width=200))
    progress.start_epoch(0, 1, steps=4)
    progress.update(4, 3.6678914728390355e17, 0.1, 100.0)
    progress._bar.refresh()  # draw now: the bar otherwise redraws on its own clock
    progress.close()
    assert "loss 3.6679e+17  acc 10.0%" in buffer.getvalue()


def test_progress_disabled_prints_nothing():
    buffer = io.StringIO()
    progress = Progress(enabled=False, console=Console(file=buffer, force_terminal=True))
    progress.start_epoch(0, 2, steps=5)
    progress.update(1, 0.5, 0.5, 100.0)
    progress.end_epoch(make_row(1))
    progress.close()
    assert buffer.getvalue() == ""


def test_progress_quiet_on_terminal_is_plain():
    buffer = io.StringIO()
    progress = Progress(quiet=True, console=Console(file=buffer, force_terminal=True, color_system=None))
    progress.start_epoch(0, 1, steps=3)
    progress.update(1, 0.5, 0.5, 100.0)
    progress.end_epoch(make_row(1))
    progress.close()
    assert buffer.getvalue() == epoch_line(make_row(1), 1) + "\n"


def test_progress_bar_on_terminal_leaves_epoch_lines():
    buffer = io.StringIO()
    progress = Progress(console=Console(file=buffer, force_terminal=True, color_system=None, width=200))
    for epoch in range(2):
        progress.start_epoch(epoch, 2, steps=4)
        for step in range(1, 5):
            progress.update(step, 0.5, 0.75, 123.0)
        progress.end_epoch(make_row(epoch + 1))
    progress.close()
    progress.close()  # idempotent (the engine calls it in a finally)
    text = buffer.getvalue()
    assert epoch_line(make_row(1), 2) in text and epoch_line(make_row(2), 2) in text


# --- TensorBoard ---------------------------------------------------------------------------------

def test_tensorboard_missing_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail
    with pytest.raises(CnnlabError, match="pip install tensorboard"):
        TensorBoardWriter(tmp_path, enabled=True)
    off = TensorBoardWriter(tmp_path, enabled=False)  # disabled: no import, no files, calls do nothing
    off.step(1, 0.5, 0.1)
    off.epoch(make_row(1))
    off.close()
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_writes_scalars(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    fake = type(sys)("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    writer = TensorBoardWriter(tmp_path, enabled=True)
    writer.step(7, 0.25, 0.01)
    writer.epoch(make_row(2))
    writer.close()
    assert calls[0] == ("init", str(tmp_path / "tensorboard"))
    assert ("train/loss_step", 0.25, 7) in calls and ("epoch/val_acc", make_row(2)["val_acc"], 2) in calls
    assert not any(tag == "epoch/ema_val_acc" for tag, *_ in calls)  # empty values are skipped
    assert calls[-1] == ("close",)


# --- final report --------------------------------------------------------------------------------

def test_final_report_mentions_best_epoch_and_files(tmp_path):
    fill_run(tmp_path, epochs=3)
    rows = read_metrics(tmp_path / "metrics.csv")
    rows[1]["val_acc"] = 0.99  # epoch 2 is the best
    report = final_report(rows, tmp_path, {"val_acc": 0.99, "epoch": 2})
    assert "best val acc    99.00% at epoch 2" in report
    assert "final val" in report and f"acc {rows[-1]['val_acc']:.2%}" in report
    assert "final EMA val" in report
    assert "6.0 s training" in report  # 3 epochs x 2 s
    assert "metrics.csv" in report and str(tmp_path) in report
    files = report.split("files")[1]
    assert "report.txt" in files and not (tmp_path / "report.txt").exists()  # the file this text is written to
    assert len(report.splitlines()) <= 20  # one screen
    # without the engine's best: taken from the rows
    assert "99.00% at epoch 2" in final_report(rows, tmp_path)
    assert "no epoch finished" in final_report([], tmp_path)
    # the step count takes its noun's number: "1 (1 step)", not "1 (1 steps)"
    assert "epochs          1 (1 step)\n" in final_report([make_row(1, step=1)], tmp_path)
    assert "epochs          2 (1,200 steps)\n" in final_report([make_row(1), make_row(2, step=1200)], tmp_path)


def test_the_bar_shows_dashes_before_the_first_step_not_nan():
    """On a terminal the bar read "loss nan  acc nan%  nan img/s" until its epoch's first step ended: a loss
    of nan reads as a diverged run."""
    from rich.progress import TextColumn

    progress = Progress(console=Console(file=io.StringIO(), width=100, force_terminal=True))
    progress.start_epoch(0, 2, steps=4)
    try:
        fields = next(c for c in progress._bar.columns if isinstance(c, TextColumn) and "loss" in c.text_format)
        task = progress._bar.tasks[0]
        assert str(fields.render(task)) == "loss -  acc -  - img/s"
        progress.update(4, 0.5, 0.8, 4000.0)
        assert str(fields.render(progress._bar.tasks[0])) == "loss 0.5000  acc 80.0%  4,000 img/s"
    finally:
        progress.close()
