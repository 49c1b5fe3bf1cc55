"""train.minutes: the timed steps leave no trace, the epochs fit the budget, and a bad fit is refused."""

import pytest
import torch
from safetensors.torch import load_file

from cnnlab.config import RunConfig, apply_overrides, load_config, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.train import budget, engine
from cnnlab.train.logging import final_report, read_metrics

SMALL = [
    "model.name=lenet5", "data.spec=synthetic:classes=4,train=192,val=64,test=64", "train.batch_size=32",
    "train.epochs=4", "optim.lr=0.05", "train.deterministic=true", "log.quiet=true", "log.curves=false",
]
# Every source of randomness a step touches: augmentation, dropout, EMA, Muon's momentum.
BUSY = ["aug.preset=strong", "model.drop_rate=0.3", "train.ema=true", "optim.name=muon"]


def small_config(*extra):
    return apply_overrides(RunConfig(), SMALL + list(extra))


def _fit_to(monkeypatch, epochs):
    """Make the budget's arithmetic come to ``epochs`` whatever the clock said; the steps are still timed."""
    timed = []
    real = budget._time_steps

    def recording(run, steps_per_epoch, train_step, forward_model):
        timed.append(real(run, steps_per_epoch, train_step, forward_model))
        return timed[-1]

    monkeypatch.setattr(budget, "_time_steps", recording)
    monkeypatch.setattr(budget, "fits_epochs", lambda minutes, epoch_seconds, probe_seconds: epochs)
    return timed


def test_a_budgeted_run_trains_bit_for_bit_as_one_configured_with_its_epochs(tmp_path, monkeypatch):
    timed = _fit_to(monkeypatch, 2)
    engine.train(small_config(*BUSY, "train.minutes=1"), tmp_path / "budget")
    monkeypatch.undo()
    engine.train(small_config(*BUSY, "train.epochs=2"), tmp_path / "plain")
    (step_seconds, steps), = timed
    assert steps == 3 and step_seconds > 0  # 6 steps per epoch: 3 untimed, 3 timed
    for name in ("last.safetensors", "best.safetensors"):
        got, want = load_file(tmp_path / "budget" / name), load_file(tmp_path / "plain" / name)
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), (name, key)
    rows, plain = read_metrics(tmp_path / "budget" / "metrics.csv"), read_metrics(tmp_path / "plain" / "metrics.csv")
    keep = ("epoch", "step", "train_loss", "train_acc", "val_acc", "ema_val_acc", "lr")
    assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep} for r in plain]
    # config.yaml records what ran, so --resume repeats those epochs; a rerun from it fits the budget again (at
    # most those epochs), and with train.minutes=null trains exactly them
    recorded = load_config(tmp_path / "budget" / "config.yaml").train
    assert recorded.epochs == 2 and recorded.minutes == 1
    engine.train(apply_overrides(load_config(tmp_path / "budget" / "config.yaml"), ["train.minutes=null"]),
                 tmp_path / "again")
    got, want = load_file(tmp_path / "again" / "last.safetensors"), load_file(tmp_path / "plain" / "last.safetensors")
    assert all(torch.equal(got[key], want[key]) for key in want)
    assert "budget" in (tmp_path / "budget" / "report.txt").read_text()


def test_a_resumed_budgeted_run_keeps_its_epochs_without_timing_again(tmp_path, monkeypatch):
    from cnnlab.train import schedule

    _fit_to(monkeypatch, 3)
    original = schedule.lr_factor

    def interrupting(config, step, total, per_epoch):
        if step == 8:  # part-way through epoch 2 of the run (the timed steps are steps 0-5 of its epoch 1)
            raise KeyboardInterrupt
        return original(config, step, total, per_epoch)

    monkeypatch.setattr(schedule, "lr_factor", interrupting)
    stopped = engine.train(small_config("train.minutes=1"), tmp_path / "run")
    assert stopped.interrupted and stopped.last_checkpoint["epoch"] == 1
    monkeypatch.setattr(schedule, "lr_factor", original)
    monkeypatch.setattr(budget, "_time_steps", lambda *a: pytest.fail("a resumed run timed its steps again"))
    resumed = engine.train(load_config(tmp_path / "run" / "config.yaml"), tmp_path / "run", resume=True)
    assert resumed.final["epoch"] == 3 and not resumed.interrupted
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / "metrics.csv")] == [1, 2, 3]


@pytest.mark.parametrize("ema", [True, False])
def test_the_timed_steps_include_the_loops_ema_update(tmp_path, monkeypatch, ema):
    from cnnlab.train.ema import ModelEma

    updates = []
    real_update = ModelEma.update
    monkeypatch.setattr(ModelEma, "update", lambda self, model: (updates.append(1), real_update(self, model)))
    _fit_to(monkeypatch, 2)
    engine.train(small_config(f"train.ema={str(ema).lower()}", "train.minutes=1"), tmp_path / "run")
    # 6 steps an epoch: the timing's 3 untimed and 3 timed steps each update a throwaway average, then the
    # loop's 2 epochs update the run's own.
    assert len(updates) == (6 + 2 * 6 if ema else 0)


def test_a_compiled_run_times_its_steps_through_the_compiled_model(tmp_path, monkeypatch):
    class Compiled(torch.nn.Module):
        """Stands in for torch.compile's wrapper (no compiling in the suite): counts its calls."""

        def __init__(self, model):
            super().__init__()
            self.model, self.calls = model, 0

        def forward(self, x):
            self.calls += 1
            return self.model(x)

    wrappers = []

    def compile_(model):
        wrappers.append(Compiled(model))
        return wrappers[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    calls_when_fitted = []
    real_fit = budget.fit_to_budget

    def fit_and_count(run, train_step, forward_model=None):
        fitted = real_fit(run, train_step, forward_model)
        calls_when_fitted.append(sum(wrapper.calls for wrapper in wrappers))
        return fitted

    monkeypatch.setattr(budget, "fit_to_budget", fit_and_count)
    _fit_to(monkeypatch, 2)
    engine.train(small_config("train.compile=on", "train.minutes=1"), tmp_path / "run")
    # 6 steps an epoch: the timing's 3 untimed and 3 timed steps ran through the compiled wrapper
    assert calls_when_fitted == [6]
    assert read_metrics(tmp_path / "run" / "metrics.csv")[-1]["epoch"] == 2


def test_the_epochs_are_the_whole_ones_that_fit_90_percent_of_the_budget():
    # The fast recipe's arithmetic by hand: 300 s x 0.9 = 270 s; less 3.0 s of timing, 267 s; at
    # 29.6 s an epoch that is 9.02 epochs, so 9; at 29.7 s it is 8.99, so 8.
    assert budget.fits_epochs(5, 29.6, 3.0) == 9
    assert budget.fits_epochs(5, 29.7, 3.0) == 8
    assert budget.fits_epochs(0.5, 40.0, 1.0) == 0  # 26 s: not one epoch; the run trains 1 and says so
    assert budget.fits_epochs(1, 0.0, 0.0) == 0  # nothing measured: no division by zero


def _fit(epochs, asked, step_seconds, minutes=5.0, steps=223, probe=3.0):
    return budget.BudgetFit(minutes=minutes, asked_epochs=asked, epochs=epochs, steps_per_epoch=steps,
                            timed_steps=20, step_seconds=step_seconds, probe_seconds=probe)


def test_the_notice_gives_the_measurement_and_what_it_decided():
    cut = _fit(8, 17, 31.4 / 223).describe()
    assert "20 timed steps took 0.141 s each" in cut and "an epoch of 223 steps takes about 31.4 s" in cut
    assert "8 of train.epochs=17 fit 90% of the budget" in cut and "about 4 min 14 s" in cut  # 8 x 31.4 + 3.0
    whole = _fit(9, 9, 20.0 / 223).describe()
    assert "all 9 epochs of train.epochs fit the budget" in whole
    one = _fit(1, 9, 400.0 / 223).describe()
    assert "longer than the budget allows, so the run trains 1 epoch" in one and "raise train.minutes" in one

    # a tiny epoch times one step: no "1 timed step took 0.357 s each", no "an epoch of 1 steps"
    tiny = budget.BudgetFit(minutes=1.0, asked_epochs=1, epochs=1, steps_per_epoch=1, timed_steps=1,
                            step_seconds=0.357, probe_seconds=0.5).describe()
    assert "1 timed step took 0.357 s, so an epoch of 1 step takes about" in tiny
    assert "the 1 epoch of train.epochs fits the budget" in tiny


def test_the_fit_never_raises_train_epochs_and_trains_at_least_one(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "_time_steps", lambda *args: (1e-6, 3))  # a machine a million times faster
    config, fit = budget.fit_to_budget(engine.setup_run(small_config("train.minutes=10")), engine.train_step)
    assert config.train.epochs == fit.epochs == 4
    monkeypatch.setattr(budget, "_time_steps", lambda *args: (60.0, 3))  # a minute a step: 6 min an epoch
    config, fit = budget.fit_to_budget(engine.setup_run(small_config("train.minutes=1")), engine.train_step)
    assert config.train.epochs == 1


def test_a_setting_that_no_longer_fits_the_shorter_run_is_named_with_the_budget(monkeypatch):
    monkeypatch.setattr(budget, "_time_steps", lambda *args: (1.0, 3))  # 6 s an epoch
    run = engine.setup_run(small_config("train.minutes=0.25", "train.ema=true", "train.swa_epochs=3"))
    with pytest.raises(CnnlabError) as err:  # 15 s x 0.9 = 13.5 s: 2 epochs of 6 s, and SWA wants 3
        budget.fit_to_budget(run, engine.train_step)
    message = str(err.value)
    assert "train.minutes=0.25 leaves time for 2 of train.epochs=4" in message
    assert "train.swa_epochs=3.0 must lie in 0..train.epochs (2)" in message and "Raise train.minutes" in message


def test_a_budget_with_no_whole_epoch_says_so(monkeypatch):
    monkeypatch.setattr(budget, "_time_steps", lambda *args: (1e-3, 3))  # 6 ms an epoch
    run = engine.setup_run(small_config("train.minutes=0.00001", "train.ema=true", "train.swa_epochs=3"))
    with pytest.raises(CnnlabError) as err:  # 0.54 ms of budget: no whole epoch, 1 trains, and SWA wants 3
        budget.fit_to_budget(run, engine.train_step)
    message = str(err.value)
    assert "train.minutes=1e-05 leaves time for no whole epoch, so 1 of train.epochs=4 would train" in message
    assert "(about 0.006 s each here)" in message  # not rounded to 0.0 s


def test_a_budget_must_be_positive_and_is_refused_under_ddp():
    with pytest.raises(CnnlabError, match=r"train.minutes=0 must lie in \(0, 10,000,000\], or be null"):
        validate_config(small_config("train.minutes=0"))
    with pytest.raises(CnnlabError, match=r"train.minutes times one process's steps"):
        engine._check_distributed(small_config("train.minutes=5"), torch.device("cpu"),
                                  engine.dist_utils.DistInfo(rank=0, world=2))
    engine._check_distributed(small_config("train.minutes=5"), torch.device("cpu"),  # a resume times nothing
                              engine.dist_utils.DistInfo(rank=0, world=2), resume=True)


def test_the_report_says_how_the_training_time_came_out_against_the_budget(tmp_path):
    rows = [{"epoch": 1, "step": 10, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5,
             "lr": 0.1, "epoch_seconds": 42.0, "images_per_second": 100.0}]
    assert "70% of train.minutes=1" in final_report(rows, tmp_path, budget_minutes=1)  # 42 / 60
    (tmp_path / "budget.json").write_text('{"probe_seconds": 3.0}')
    assert "75% of train.minutes=1 (the training and 3.0 s of timing steps before it)" in final_report(
        rows, tmp_path, budget_minutes=1)
    over = final_report(rows, tmp_path, budget_minutes=0.5)  # 45 s against 30 s
    assert "150% of train.minutes=0.5" in over and "over by 15.0 s" in over
    assert "the machine ran slower than the timed steps" in " ".join(over.split())
    # the timed steps had one epoch (40 s, with 3 s of timing) past 30 s already: the least a run trains
    (tmp_path / "budget.json").write_text('{"probe_seconds": 3.0, "epoch_seconds": 40.0, "minutes": 0.5}')
    over = " ".join(final_report(rows, tmp_path, budget_minutes=0.5).split())
    assert "over by 15.0 s; one epoch, the least a run trains, was longer than the budget by the timed steps" in over
    assert not any(line.startswith("budget") for line in final_report(rows, tmp_path).splitlines())
