"""What the training experiments share: runs per (setting, seed) kept and read back, Ctrl-C, the
verdict rules against the spread over seeds, --data, settings kept for resume, the comparison page."""

import copy
import csv
import dataclasses
import json
import re
import shlex
import shutil
import statistics
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from cnnlab.errors import CnnlabError
from cnnlab.run import RunFolder
from cnnlab.data.sources import load_source
from cnnlab.experiments import activations, base, preprocessing, regularisation
from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Check, Experiment, ExperimentResult, SizeInfo
from cnnlab.experiments.training import (
    DIVERGED,
    READ,
    RUNS_FOLDER,
    TRAINED,
    RunOutcome,
    SeedStats,
    alike,
    better,
    data_problem,
    diverged_anywhere,
    experiment_config,
    learned,
    no_worse,
    seed_stats,
    run_line,
    summary_rows,
    train_settings,
)

TINY_RUN = {"model": {"name": "lenet5"}, "data": {"train_per_class": 10},
            "train": {"epochs": 1, "batch_size": 32}, "aug": {"preset": "none"}}


# --- the rules ------------------------------------------------------------------------------


def test_seed_stats_are_the_mean_and_sample_standard_deviation():
    stats = SeedStats((0.90, 0.92, 0.97))
    assert stats.mean == pytest.approx(statistics.fmean([0.90, 0.92, 0.97]))
    assert stats.std == pytest.approx(statistics.stdev([0.90, 0.92, 0.97]))
    assert SeedStats((0.5,)).std == 0.0
    assert "3 seeds" in stats.text(100, "%")


def test_better_holds_fails_or_cannot_decide_by_the_difference_against_the_spread():
    a, b = SeedStats((0.90, 0.91, 0.92)), SeedStats((0.80, 0.81, 0.82))  # 10 points apart, spread 1
    assert better("a beats b", "a", a, "b", b).verdict == HOLDS
    assert better("b beats a", "b", b, "a", a).verdict == FAILS
    # Lower is better (a loss): the smaller mean wins.
    assert better("b has the lower loss", "b", b, "a", a, higher=False).verdict == HOLDS
    # Within the spread: no decision either way.
    close = SeedStats((0.905, 0.915, 0.925))
    check = better("close beats a", "close", close, "a", a)
    assert check.verdict == INCONCLUSIVE and "+0.50 points" in check.margin
    # A minimum margin larger than the difference: no decision.
    assert better("a beats b", "a", a, "b", b, min_margin=0.2).verdict == INCONCLUSIVE
    # Fewer than three seeds decide nothing, however large the gap.
    assert better("a beats b", "a", SeedStats((0.99, 0.99)), "b", SeedStats((0.1, 0.1))).verdict == INCONCLUSIVE


def test_margins_are_points_with_two_decimals_as_the_differences_are():
    """A spread-based minimum margin (dropout's: the sub-networks' largest spread) prints as the "needed more than"
    it decided, not as 1.46016; a tolerance as the allowance it makes up."""
    a, b = SeedStats((0.80, 0.81, 0.79)), SeedStats((0.77, 0.78, 0.76))
    spread = 0.0146016  # larger than a's and b's (1 point)
    margin = better("a beats b", "a", a, "b", b, min_margin=spread).margin
    needed = margin.split("needed more than ", 1)[1].split(" ", 1)[0]
    assert needed == f"{spread * 100:.2f}" and f"the minimum margin {needed})" in margin
    assert "1.46016" not in margin
    assert "the minimum margin 0.00)" in better("a beats b", "a", a, "b", b).margin
    margin = alike("alike", "a", a, "b", b, tolerance=0.01).margin
    assert "(tolerance 1.00 + the larger spread)" in margin


def test_a_run_line_prints_a_blown_up_loss_with_an_exponent():
    """A diverging run's loss in fixed point is 36 digits wide (bn-lr's tiny no-bn-lr3): with an exponent, as the epoch
    lines print it, to two digits (its magnitude)."""
    from cnnlab.experiments.training import _fmt
    from cnnlab.train.logging import loss_text

    assert loss_text(7.4813e35, 4) == "7.4813e+35" and _fmt(7.4813e35) == "7.5e+35"
    assert _fmt(4.2e-05) == "4.2e-05"  # below 0.0001: fixed point would print 0.0000
    assert _fmt(0.41234) == "0.4123" and _fmt(None) == "-"
    assert _fmt(float("inf")) == "inf" and _fmt(float("nan")) == "nan"


def test_the_run_count_says_k_of_n_only_where_n_is_the_experiments_total():
    """A single train_settings call plans its own runs; an experiment that calls it several times declares the
    total (RunCount.plan); an undeclared second call makes the total unknown, and runs beyond it drop "of N"."""
    from cnnlab.text import RunCount

    one_call = RunCount()
    one_call.expect(3)
    assert [one_call.finished() for _ in range(3)] == ["run 1 of 3", "run 2 of 3", "run 3 of 3"]
    declared = RunCount()
    declared.plan(12)
    texts = []
    for _ in range(4):  # four calls of three runs each
        declared.expect(3)
        texts += [declared.finished() for _ in range(3)]
    assert texts[0] == "run  1 of 12" and texts[-1] == "run 12 of 12"  # aligned under each other
    undeclared = RunCount()
    undeclared.expect(2)
    first = [undeclared.finished() for _ in range(2)]
    undeclared.expect(2)
    undeclared.expect(5)  # a third call does not plan again
    assert first == ["run 1 of 2", "run 2 of 2"] and [undeclared.finished() for _ in range(2)] == ["run 3", "run 4"]
    over = RunCount()
    over.plan(1)
    assert [over.finished(), over.finished()] == ["run 1 of 1", "run 2"]  # never "2 of 1"
    unknown = RunCount()
    assert unknown.finished() == "run 1"


def test_alike_allows_the_tolerance_plus_the_larger_spread():
    a, b = SeedStats((0.90, 0.91, 0.92)), SeedStats((0.915, 0.925, 0.935))  # gap 1.5 points, spread 1
    assert alike("alike", "a", a, "b", b, tolerance=0.01).verdict == HOLDS  # 1.5 <= 1 + 1
    assert alike("alike", "a", a, "b", b, tolerance=0.001).verdict == FAILS  # 1.5 > 0.1 + 1
    assert alike("alike", "a", SeedStats((0.9,)), "b", b, tolerance=1).verdict == INCONCLUSIVE


def test_alike_is_inconclusive_when_the_runs_vary_more_than_the_tolerance():
    # ReLU at 19.3% +- 6.0 against ELU at 38.3% +- 19.0 (a tiny run on digits: ReLU learned nothing, ELU did).
    # The gap of 19 points lies within 1 point plus the spread of 19: noise that wide says nothing of alikeness.
    relu, elu = SeedStats((0.13, 0.20, 0.25)), SeedStats((0.18, 0.40, 0.57))
    check = alike("alike", "relu", relu, "elu", elu, tolerance=0.01)
    assert check.verdict == INCONCLUSIVE and "vary too much" in check.margin
    # a gap beyond the tolerance plus that spread still fails, and a spread of exactly the tolerance still holds
    assert alike("alike", "a", SeedStats((0.10, 0.11, 0.12)), "b", elu, tolerance=0.01).verdict == FAILS
    level = SeedStats((0.90, 0.91, 0.92))  # spread 1 point, as float rounding gives it: 0.010000000000000009
    assert alike("alike", "a", level, "b", level, tolerance=0.01).verdict == HOLDS


@pytest.mark.parametrize("a, verdict, said", [
    ((0.93, 0.94, 0.95), HOLDS, "a ahead by 3.00 points"),  # ahead
    ((0.895, 0.905, 0.915), HOLDS, "b ahead by 0.50 points"),  # behind by 0.5: within the spread and the tolerance
    ((0.86, 0.88, 0.90), FAILS, "b ahead by 3.00 points"),  # behind by 3, more than the spread of 2
])
def test_no_worse_allows_a_lag_within_the_spread_and_the_tolerance(a, verdict, said):
    b = SeedStats((0.90, 0.91, 0.92))
    check = no_worse("c", "a", SeedStats(a), "b", b, tolerance=0.01)
    assert check.verdict == verdict and said in check.margin, check.margin


def test_no_worse_is_inconclusive_behind_by_more_than_the_tolerance_within_a_wide_spread():
    # ResNet-56's training error 9 points above ResNet-20's, with a spread of 10: not "no higher", nor clearly higher
    resnet56, resnet20 = SeedStats((0.12, 0.22, 0.32)), SeedStats((0.125, 0.13, 0.135))
    check = no_worse("c", "resnet56", resnet56, "resnet20", resnet20, tolerance=0.01, higher=False)
    assert check.verdict == INCONCLUSIVE and "resnet20 ahead by 9.00 points" in check.margin
    assert no_worse("c", "resnet56", resnet20, "resnet20", resnet56, tolerance=0.01, higher=False).verdict == HOLDS
    assert no_worse("c", "a", SeedStats((0.1,)), "b", resnet20, tolerance=0.01).verdict == INCONCLUSIVE


def test_two_measurements_of_the_same_nets_are_judged_by_their_per_net_differences():
    """A net's test pass and its sub-networks' average, per seed: 0.05 points apart on every net, with the nets
    2 points apart. The spread is the nets', shared by both: it cancels in their differences, which decide."""
    test_pass, average = SeedStats((0.78, 0.80, 0.82)), SeedStats((0.7805, 0.8005, 0.8205))
    assert alike("c", "test pass", test_pass, "average", average, tolerance=0.01).verdict == INCONCLUSIVE
    same_nets = SeedStats((-0.0005, -0.0005, -0.0005))
    paired = alike("c", "test pass", test_pass, "average", average, tolerance=0.01, differences=same_nets)
    assert paired.verdict == HOLDS and "the spread of the per-net differences" in paired.margin, paired.margin
    # every net loses exactly 4 points: the nets' 10-point spread gave that room before, their differences none
    unshifted, shifted = SeedStats((0.70, 0.80, 0.90)), SeedStats((0.66, 0.76, 0.86))
    cost = alike("c", "shifted", shifted, "unshifted", unshifted, tolerance=0.01,
                 differences=SeedStats((-0.04, -0.04, -0.04)))
    assert cost.verdict == FAILS and "gap 4.00 points, allowed 1.00" in cost.margin, cost.margin
    noisy = alike("c", "shifted", shifted, "unshifted", unshifted, tolerance=0.01,
                  differences=SeedStats((0.01, -0.02, 0.01)))  # within, but differences spread 1.7 points
    assert noisy.verdict == INCONCLUSIVE
    assert alike("c", "a", test_pass, "b", average, tolerance=0.01,
                 differences=SeedStats((0.0, 0.0))).verdict == INCONCLUSIVE  # two nets


def test_no_worse_says_level_for_equal_means():
    level = no_worse("c", "a", SeedStats((0.9, 0.91, 0.92)), "b", SeedStats((0.92, 0.91, 0.9)), tolerance=0.01)
    assert level.verdict == HOLDS and ": level;" in level.margin and "-0.00" not in level.margin


def test_diverged_anywhere_names_a_setting_with_any_diverged_seed():
    runs = [RunOutcome("selu", 0, "r/0", TRAINED, val_acc=0.9), RunOutcome("selu", 1, "r/1", DIVERGED),
            RunOutcome("elu", 0, "r/2", TRAINED, val_acc=0.8)]
    assert diverged_anywhere(runs, "selu") and not diverged_anywhere(runs, "elu")
    assert not diverged_anywhere(runs, "relu")  # no run at all is not a diverged one


# --- runs kept per setting and seed -----------------------------------------------------------


def _context(tmp_path, seeds=1, said=None):
    return base.RunContext(size="tiny", seeds=seeds, out=tmp_path, data="digits",
                           say=(said.append if said is not None else (lambda text: None)))


def test_every_setting_and_seed_is_a_run_folder_and_a_rerun_reads_them_back(tmp_path):
    configs = {"sgd": experiment_config("digits", {**TINY_RUN, "optim": {"name": "sgd", "lr": 0.05}}),
               "adamw": experiment_config("digits", {**TINY_RUN, "optim": {"name": "adamw", "lr": 1e-3}})}
    said = []
    first = train_settings(_context(tmp_path, seeds=2, said=said), configs)
    assert [(o.setting, o.seed, o.status) for o in first] == [
        ("sgd", 0, TRAINED), ("adamw", 0, TRAINED), ("sgd", 1, TRAINED), ("adamw", 1, TRAINED)]  # seed-major
    # Each line names the run among the call's four, seed-major, the settings' names aligned
    assert [re.match(r"(run \d+ of \d+)  (\S+)/seed(\d+) +loss ", line).groups() for line in said] == [
        ("run 1 of 4", "sgd", "0"), ("run 2 of 4", "adamw", "0"), ("run 3 of 4", "sgd", "1"), ("run 4 of 4", "adamw", "1")]
    assert len({line.index(" loss ") for line in said}) == 1
    for outcome in first:
        run = tmp_path / "runs" / outcome.setting / f"seed{outcome.seed}"
        assert outcome.run_dir == str(run) and (run / "report.txt").is_file()
        assert not (run / "curves.png").exists()  # log.curves is off: the comparison page draws the curves
        assert json.loads(json.dumps(outcome.row()))["test_acc"] == outcome.test_acc  # a JSON-ready row
        assert 0.0 <= outcome.test_acc <= 1.0 and outcome.epochs == 1 and len(outcome.curve) == 1
    # train.seed differs between seeds, so seeds are different runs of one setting.
    assert first[0].train_loss != first[2].train_loss
    stamp = (tmp_path / "runs" / "sgd" / "seed0" / "best.safetensors").stat().st_mtime_ns
    said.clear()
    again = train_settings(_context(tmp_path, seeds=2, said=said), configs)
    assert [o.status for o in again] == [READ] * 4
    assert said[-1].startswith("run 4 of 4  adamw") and all(line.endswith("%  read back") for line in said)
    assert [o.test_acc for o in again] == [o.test_acc for o in first]
    assert (tmp_path / "runs" / "sgd" / "seed0" / "best.safetensors").stat().st_mtime_ns == stamp
    rows = summary_rows(again, ["sgd", "adamw"], ["test_acc"])
    assert rows[0]["test_acc_mean"] == pytest.approx(seed_stats(again, "sgd", "test_acc").mean)
    assert rows[0]["seeds"] == 2 and rows[0]["diverged"] == 0
    # A finished run whose best checkpoint is gone has no test accuracy to read back: it was left out of its
    # setting's mean without a word; the call is refused with the two ways out
    lost = tmp_path / "runs" / "adamw" / "seed1"
    (lost / "best.safetensors").unlink()
    with pytest.raises(CnnlabError, match=r"run adamw/seed1 finished earlier, but its best checkpoint .* is gone.*"
                                          r"Restore best\.safetensors .*or delete the folder"):
        train_settings(_context(tmp_path, seeds=2), configs)
    shutil.rmtree(lost)  # the way out it names: that run is trained anew, the others read back
    again = train_settings(_context(tmp_path, seeds=2), configs)
    assert [o.status for o in again] == [READ, READ, READ, TRAINED] and again[3].test_acc == first[3].test_acc


def test_ctrl_c_keeps_the_finished_runs_and_the_same_call_continues(tmp_path, monkeypatch):
    from cnnlab.train import engine

    configs = {name: experiment_config("digits", TINY_RUN) for name in ("a", "b")}
    real_train = engine.train
    calls = []

    def interrupted_second(config, out, **kwargs):
        calls.append(out)
        result = real_train(config, out, **kwargs)
        if len(calls) == 2:
            result.stop_requested = True  # as if Ctrl-C had come in the second run's last step: it finished
        return result

    monkeypatch.setattr(engine, "train", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        train_settings(_context(tmp_path), configs)
    assert len(calls) == 2  # no run started after the Ctrl-C
    monkeypatch.setattr(engine, "train", real_train)
    outcomes = train_settings(_context(tmp_path), {**configs, "c": configs["a"]})
    assert [o.status for o in outcomes] == [READ, READ, TRAINED]  # the finished runs are kept, not retrained


def test_a_half_finished_run_continues_as_its_config_yaml_records_it(tmp_path, monkeypatch):
    from cnnlab.run import RunFolder
    from cnnlab.train import engine

    configs = {"a": experiment_config("digits", TINY_RUN)}
    train_settings(_context(tmp_path), configs)
    run = RunFolder(tmp_path / "runs" / "a" / "seed0")
    run.report.unlink()  # stopped before its report: its last checkpoint is on disk
    recorded = run.read_config()
    assert recorded != configs["a"]  # the augmentation preset resolved, for one
    calls = []
    real_train = engine.train

    def recording_train(config, out, **kwargs):
        calls.append((config, kwargs["resume"]))
        return real_train(config, out, **kwargs)

    monkeypatch.setattr(engine, "train", recording_train)
    assert [o.status for o in train_settings(_context(tmp_path), configs)] == [TRAINED]
    assert calls == [(recorded, True)]


def test_a_diverged_run_is_counted_not_raised(tmp_path):
    config = experiment_config("digits", {**TINY_RUN, "optim": {"name": "sgd", "lr": 1e20}, "schedule": {"name": "constant"}})
    [outcome] = train_settings(_context(tmp_path), {"huge-lr": config})
    assert outcome.status == DIVERGED and outcome.test_acc is None
    assert summary_rows([outcome], ["huge-lr"], ["test_acc"])[0]["diverged"] == 1
    assert seed_stats([outcome], "huge-lr", "test_acc").n == 0
    said = []
    [again] = train_settings(_context(tmp_path, said=said), {"huge-lr": config})  # not retrained: it would diverge again
    assert again.status == DIVERGED
    # its line says so, as a finished run's does, not "0.0 s" as if it had been run again in no time
    assert said == ["run 1 of 1  huge-lr/seed0  diverged  read back"]
    assert again.row() == outcome.row()  # the table reads the same


# --- run_experiment with a training experiment ---------------------------------------------


@pytest.fixture
def toy(monkeypatch):
    """A tiny training experiment registered for one test: two learning rates, one check."""
    seen = {}

    def run(ctx):
        seen["ctx"] = ctx
        configs = {f"lr{lr:g}": experiment_config(ctx.data, {**TINY_RUN, "optim": {"lr": lr}}) for lr in (0.01, 0.05)}
        outcomes = train_settings(ctx, configs)
        check = better("lr 0.05 beats 0.01", "0.05", seed_stats(outcomes, "lr0.05", "test_acc"),
                       "0.01", seed_stats(outcomes, "lr0.01", "test_acc"))
        return ExperimentResult(rows=[o.row() for o in outcomes], checks=[check],
                                runs=[Path(o.run_dir) for o in outcomes])

    experiment = Experiment(
        name="toy-lr", claim="A larger rate trains faster.", source=("002", "lr"), rule="better, 3 seeds",
        runs="lenet5 at two rates", sizes={s: SizeInfo(s, 1.0) for s in base.SIZES}, run=run, seeds=(1, 10, 3),
        data={"tiny": "digits", "quick": "digits", "full": "digits"},
        check_data=lambda dataset, size: None if dataset.channels == 1 else "it needs gray images")
    monkeypatch.setitem(base.REGISTRY._items, experiment.name, experiment)
    return seen


def test_tiny_runs_the_fewest_seeds_and_writes_the_comparison_page(toy, tmp_path):
    result = base.run_experiment("toy-lr", "tiny", out=tmp_path / "e")
    assert toy["ctx"].seeds == 1 and toy["ctx"].data == "digits"
    assert result.meta["resumed"] is False  # a fresh call (a continued one: the test below)
    assert result.verdict == INCONCLUSIVE  # one seed decides nothing
    page = (tmp_path / "e" / base.REPORT_FILE).read_text()
    assert "lr0.05" in page and "lr0.01" in page
    written = json.loads((tmp_path / "e" / base.RESULT_FILE).read_text())
    assert written["reports"] == [base.REPORT_FILE] and len(written["runs"]) == 2 and written["data"] == "digits"
    kept = base.run_experiment("toy-lr", "tiny", out=tmp_path / "e")
    assert kept.runs == [tmp_path / "e" / p for p in written["runs"]]


def test_result_json_and_the_page_name_the_runs_relative_to_the_experiment_folder(toy, tmp_path, monkeypatch):
    """result.json's runs and report.html's "Run folders" named the runs as the first call did (e/runs/... from
    where it ran), so a moved or copied folder's files named the old place. Both now name them as the table does,
    relative to the experiment's folder; a result.json written before is read as before."""
    monkeypatch.chdir(tmp_path)
    base.run_experiment("toy-lr", "tiny", out="e")
    written = json.loads((tmp_path / "e" / base.RESULT_FILE).read_text())
    assert written["runs"] == ["runs/lr0.01/seed0", "runs/lr0.05/seed0"]
    assert written[base.RUN_DIRS_KEY] == base.RUN_DIRS_RELATIVE
    page = (tmp_path / "e" / base.REPORT_FILE).read_text()
    assert "runs/lr0.01/seed0" in page and "e/runs/" not in page and str(tmp_path) not in page
    shutil.copytree(tmp_path / "e", tmp_path / "copy")
    kept = base.run_experiment("toy-lr", "tiny", out="copy")
    assert kept.runs == [Path("copy") / p for p in written["runs"]]
    assert kept.to_dict()["runs"] == written["runs"]

    # A result.json of the previous version: runs as the first call named them, the table's paths relative.
    old = dict(written, runs=[f"e/{p}" for p in written["runs"]])
    old[base.RUN_DIRS_KEY] = base.RUN_DIR_CHECKPOINT_RELATIVE
    (tmp_path / "copy" / base.RESULT_FILE).write_text(json.dumps(old))
    kept = base.run_experiment("toy-lr", "tiny", out="copy")
    assert kept.runs == [Path("copy") / p for p in written["runs"]]


def _table_run_dirs(out: Path) -> list[str]:
    with open(out / base.TABLE_CSV, newline="") as handle:
        return [row["run_dir"] for row in csv.DictReader(handle)]


def test_the_table_names_each_run_relative_to_the_experiment_folder_and_a_kept_result_finds_them_anywhere(
        toy, tmp_path, monkeypatch):
    """One experiment, run from one folder: its table names the runs relative to the experiment's folder, so a
    copy read from another working folder reads its own runs; the kept result, read from another folder or after
    the folder moved, names its runs where they are."""
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    result = base.run_experiment("toy-lr", "tiny", out="e")  # recorded relative to this folder: e/runs/...
    settings = [row["setting"] for row in result.rows]
    assert _table_run_dirs(Path("e")) == [f"runs/{setting}/seed0" for setting in settings]
    assert json.loads((Path("e") / base.TABLE_JSON).read_text())[0]["run_dir"] == f"runs/{settings[0]}/seed0"
    assert [row["run_dir"] for row in result.rows] == [f"e/runs/{setting}/seed0" for setting in settings]
    # A copy elsewhere, read back from another working folder: its rows name its own runs, not the original's
    shutil.copytree(tmp_path / "first" / "e", tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    kept = base.run_experiment("toy-lr", "tiny", out=tmp_path / "copy")
    assert kept.kept and [row["run_dir"] for row in kept.rows] == [
        str(tmp_path / "copy" / "runs" / setting / "seed0") for setting in settings]
    assert all((Path(row["run_dir"]) / "report.txt").is_file() for row in kept.rows)
    # The original, kept, from another folder than the one it ran in; then moved
    kept = base.run_experiment("toy-lr", "tiny", out=tmp_path / "first" / "e")
    assert kept.runs and all((run / "report.txt").is_file() for run in kept.runs)
    assert kept.meta["out"] == str(tmp_path / "first" / "e")
    (tmp_path / "first" / "e").rename(tmp_path / "moved")
    kept = base.run_experiment("toy-lr", "tiny", out="moved")
    assert [run.parent.name for run in kept.runs] == ["lr0.01", "lr0.05"]
    assert all((run / "report.txt").is_file() for run in kept.runs) and kept.meta["out"] == "moved"
    assert kept.to_dict()["reports"] == [base.REPORT_FILE]


def test_a_table_written_before_relative_run_dirs_is_read_where_the_folder_is_now(toy, tmp_path):
    first = tmp_path / "first"
    result = base.run_experiment("toy-lr", "tiny", out=first)
    # As older versions wrote them: the runs as the call named them, and no note that they are relative
    (first / base.TABLE_JSON).write_text(json.dumps(result.rows))
    recorded = json.loads((first / base.RESULT_FILE).read_text())
    del recorded[base.RUN_DIRS_KEY]
    (first / base.RESULT_FILE).write_text(json.dumps(recorded))
    first.rename(tmp_path / "moved")
    kept = base.run_experiment("toy-lr", "tiny", out=tmp_path / "moved")
    assert [row["run_dir"] for row in kept.rows] == [
        str(tmp_path / "moved" / Path(row["run_dir"]).relative_to(first)) for row in result.rows]
    assert all((Path(row["run_dir"]) / "report.txt").is_file() for row in kept.rows)


def test_the_recorded_command_runs_as_written_whatever_the_folder_is_called(toy, tmp_path):
    out = tmp_path / "my runs" / "e"
    result = base.run_experiment("toy-lr", "tiny", out=out, data="synthetic:classes=4,train=200,channels=1")
    args = shlex.split(result.meta["command"])
    assert args[args.index("--out") + 1] == str(out)
    assert args[args.index("--data") + 1] == "synthetic:classes=4,train=200,channels=1"
    assert json.loads((out / base.RESULT_FILE).read_text())["command"] == result.meta["command"]


def test_the_data_is_kept_as_the_loader_spells_it_so_a_rerun_with_another_spelling_continues(toy, tmp_path):
    out = tmp_path / "e"
    first = base.run_experiment("toy-lr", "tiny", out=out, data=" Digits")
    assert first.meta["data"] == "digits" and toy["ctx"].data == "digits"
    assert "--data" not in first.meta["command"]  # the default data, however it was spelled
    kept = base.run_experiment("toy-lr", "tiny", out=out)  # the same data: the kept result, not a refusal
    assert kept.verdict == first.verdict and kept.meta["data"] == "digits"


def test_data_is_checked_before_any_run(toy, tmp_path):
    with pytest.raises(CnnlabError, match="cannot use --data synthetic.*gray images.*default data"):
        base.run_experiment("toy-lr", "tiny", out=tmp_path / "e", data="synthetic:channels=3")
    with pytest.raises(CnnlabError, match="Unknown data spec"):
        base.run_experiment("toy-lr", "tiny", out=tmp_path / "e", data="nonsense")
    assert "ctx" not in toy and not (tmp_path / "e" / "runs").exists()
    with pytest.raises(CnnlabError, match="uses no data"):
        base.run_experiment("receptive-field", "tiny", out=tmp_path / "rf", data="digits")


def _stopping(monkeypatch, run_folder: bool) -> None:
    """Make toy-lr stop (Ctrl-C) at once, after starting a run when ``run_folder``: its folder with the
    config.yaml the engine writes first (an empty folder is no run)."""

    def stop(ctx):
        if run_folder:
            run = RunFolder(ctx.out / RUNS_FOLDER / "lr0.01" / "seed0")
            run.path.mkdir(parents=True)
            run.config.write_text("model: {name: lenet5}\n")
        raise KeyboardInterrupt

    monkeypatch.setitem(base.REGISTRY._items, "toy-lr", dataclasses.replace(base.REGISTRY._items["toy-lr"], run=stop))


# experiment -> the config of one of its runs at a size, as its own code builds it (same data, same batch)
ONE_RUN = {
    "activations": lambda data, size: experiment_config(
        data, activations.mlp_sections(activations.RECIPES[size], "relu")),
    "normalize": lambda data, size: next(iter(preprocessing.normalize_configs(data, size).values())),
    "dropout": lambda data, size: experiment_config(
        data, regularisation.dropout_sections(regularisation.DROPOUT_RECIPES[size], "inverted", None)),
    "augmentation": lambda data, size: experiment_config(
        data, regularisation.augmentation_sections(regularisation.AUG_RECIPES[size], {"preset": "none"})),
}


@pytest.mark.parametrize("name, data", [
    ("activations", "synthetic:classes=3,train=96,val=32,test=32"),
    ("normalize", "synthetic:classes=2,train=60,val=16,test=16"),
    ("dropout", "synthetic:classes=2,train=60,val=16,test=16"),
    ("augmentation", "synthetic:classes=2,train=60,val=16,test=16"),
])
def test_too_few_training_images_for_one_batch_are_refused_before_anything_runs(name, data, tmp_path):
    """Enough images per class for the tiny subset, but the subset is smaller than one batch: the engine
    would refuse the first run (advising a batch size `experiment` has no option for)."""
    config = ONE_RUN[name](data, "tiny")
    per_class, batch = config.data.train_per_class, config.train.batch_size
    classes = load_source(data).num_classes
    assert per_class * classes < batch  # the case under test
    with pytest.raises(CnnlabError) as refused:
        base.run_experiment(name, "tiny", out=tmp_path / "e", data=data)
    message = str(refused.value)
    assert f"Experiment '{name}'" in message and "--size tiny" in message
    assert f"{per_class * classes} training images" in message and f"one batch of {batch}" in message
    assert f"at least {-(-batch // per_class)} classes" in message
    # Another size is advised only when its runs fill a batch on this data, and every size that does is named.
    check = base.get_experiment(name).check_data
    named = {size for size in base.SIZES if f"--size {size}" in message.partition(": ")[2]}
    assert named == {size for size in base.SIZES if size != "tiny" and check(load_source(data), size) is None}
    assert not (tmp_path / "e").exists()  # refused before anything was written


def test_the_batch_advice_names_another_size_only_where_one_fits(cli, tmp_path):
    """`experiment search` on custom data trains every size on all its images at one batch size, so no
    --size helps; degradation's tiny size trains at a smaller batch than its others, so it is named."""
    small = "synthetic:classes=2,train=20,val=10,test=10"  # 20 training images
    code, _, err = cli(["experiment", "search", "--size", "quick", "--data", small, "--out", str(tmp_path / "s")])
    assert code == 2 and "fewer than one batch of 32" in err, err
    assert "at least 32 training images" in err and "choose" not in err and "another --size" not in err, err
    code, _, err = cli(["experiment", "degradation", "--size", "quick", "--data", small, "--out", str(tmp_path / "d")])
    assert code == 2 and "fewer than one batch of" in err and "or choose --size tiny," in err, err
    assert base.get_experiment("degradation").check_data(load_source(small), "tiny") is None  # the advice holds
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_the_batch_check_counts_the_training_images_the_engine_would(tmp_path):
    data = "synthetic:classes=2,train=30,val=16,test=16"
    dataset = load_source(data)

    def run(batch, per_class=None):
        return experiment_config(data, {"train": {"batch_size": batch}, "data": {"train_per_class": per_class}})

    assert data_problem(dataset, runs=[run(30)]) is None  # exactly one batch
    assert "all 30 training images" in data_problem(dataset, runs=[run(31)])
    assert data_problem(dataset, runs=[run(20, per_class=10)]) is None
    assert "10 images per class of 2 classes, 20 training images" in data_problem(dataset, runs=[run(21, per_class=10)])
    assert "has 15 training images" in data_problem(dataset, runs=[run(8, per_class=16)])


def test_an_unfinished_experiment_refuses_other_settings(toy, tmp_path, monkeypatch):
    out = tmp_path / "e"
    # An interrupted run leaves settings.json, its runs and no result.json.
    _stopping(monkeypatch, run_folder=True)
    with pytest.raises(KeyboardInterrupt):
        base.run_experiment("toy-lr", "tiny", out=out)
    assert json.loads((out / base.SETTINGS_FILE).read_text())["seeds"] == 1
    assert not (out / base.RESULT_FILE).exists()
    with pytest.raises(CnnlabError, match="unfinished experiment run with other settings.*seeds 1 there, 2 now"):
        base.run_experiment("toy-lr", "tiny", seeds=2, out=out)


def test_a_continued_experiment_says_its_seconds_leave_out_the_interrupted_calls(toy, tmp_path, monkeypatch):
    # a fresh call's resumed is False: test_tiny_runs_the_fewest_seeds_and_writes_the_comparison_page
    out = tmp_path / "e"
    with monkeypatch.context() as patch:
        _stopping(patch, run_folder=True)
        with pytest.raises(KeyboardInterrupt):
            base.run_experiment("toy-lr", "tiny", out=out)
    continued = base.run_experiment("toy-lr", "tiny", out=out)
    assert continued.meta["resumed"] is True
    assert json.loads((out / base.RESULT_FILE).read_text())["resumed"] is True


@pytest.fixture
def threads():
    """torch.set_num_threads for one test, torch's count as it was restored after it."""
    import torch

    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_the_thread_count_is_recorded_said_and_on_the_page(toy, tmp_path, threads):
    """settings.json and result.json record torch.get_num_threads() as the call started, the opening lines say it
    after the rules (before the first run's line), and so does the comparison page; a kept result says the count
    it was measured with, not this call's."""
    import torch

    threads(1)
    said = []
    out = tmp_path / "e"
    base.run_experiment("toy-lr", "tiny", out=out, say=said.append)
    assert json.loads((out / base.SETTINGS_FILE).read_text())[base.THREADS_KEY] == 1
    assert json.loads((out / base.RESULT_FILE).read_text())[base.THREADS_KEY] == 1
    assert said.index(base.VERDICT_RULE) + 1 == said.index("torch threads: 1")
    assert said[said.index("torch threads: 1") + 1].startswith("run 1 of 2  lr0.01/seed0")
    page = (out / base.REPORT_FILE).read_text()
    assert "experiment toy-lr at --size tiny; torch threads: 1" in page
    threads(2)
    assert torch.get_num_threads() == 2
    said.clear()
    kept = base.run_experiment("toy-lr", "tiny", out=out, say=said.append)
    assert kept.kept and "torch threads: 1" in said and "torch threads: 2" not in said


def test_a_continued_experiment_records_its_own_thread_count_and_names_the_earlier_one(toy, tmp_path, monkeypatch,
                                                                                       threads):
    """Another thread count is no other setting: the interrupted experiment continues (not refused), and its lines
    say the count its kept runs ran with."""
    out = tmp_path / "e"
    threads(1)
    with monkeypatch.context() as patch:
        _stopping(patch, run_folder=True)
        with pytest.raises(KeyboardInterrupt):
            base.run_experiment("toy-lr", "tiny", out=out)
    assert json.loads((out / base.SETTINGS_FILE).read_text())[base.THREADS_KEY] == 1
    threads(2)
    said = []
    continued = base.run_experiment("toy-lr", "tiny", out=out, say=said.append)
    assert continued.meta["resumed"] is True and continued.meta[base.THREADS_KEY] == 2
    assert json.loads((out / base.SETTINGS_FILE).read_text())[base.THREADS_KEY] == 2
    both = "torch threads: 2 (an earlier call here, whose finished runs are kept, ran with 1)"
    assert both in said
    # the result, its page and a later call's kept line name both counts: runs of each are in it
    assert json.loads((out / base.RESULT_FILE).read_text())[base.EARLIER_THREADS_KEY] == [1]
    assert both in (out / base.REPORT_FILE).read_text()
    said.clear()
    assert base.run_experiment("toy-lr", "tiny", out=out, say=said.append).kept and both in said


def test_a_folder_with_settings_and_no_runs_starts_afresh_with_other_settings(toy, tmp_path, monkeypatch, capsys):
    out = tmp_path / "e"
    # Stopped before its first run wrote anything (as when the engine refuses the first run): only settings.json.
    _stopping(monkeypatch, run_folder=False)
    with pytest.raises(KeyboardInterrupt):
        base.run_experiment("toy-lr", "tiny", out=out)
    assert [p.name for p in out.iterdir()] == [base.SETTINGS_FILE]
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):  # not refused: it started with the new settings
        base.run_experiment("toy-lr", "tiny", seeds=2, out=out)
    assert json.loads((out / base.SETTINGS_FILE).read_text())["seeds"] == 2
    err = capsys.readouterr().err
    assert "note:" in err and "starting afresh" in err


def test_a_check_verdict_must_be_one_of_three():
    with pytest.raises(ValueError):
        Check("x", "MAYBE", "")


def test_a_comparison_of_settings_that_learned_nothing_is_inconclusive():
    """The shared rule: a decided check becomes INCONCLUSIVE, naming why, when no setting of a difference it
    compares reached chance + LEARNED_MARGIN of mean final validation accuracy; one that learned decides."""
    from cnnlab.experiments.base import FAILS, HOLDS, INCONCLUSIVE, Check
    from cnnlab.experiments.training import LEARNED_MARGIN, TRAINED, RunOutcome, learned, unless_learned

    def runs(setting, val):
        return [RunOutcome(setting=setting, seed=s, run_dir=f"r/{setting}/{s}", status=TRAINED, val_acc=val)
                for s in range(3)]

    chance = 0.1
    outcomes = runs("a", 0.112) + runs("b", 0.099) + runs("c", chance + LEARNED_MARGIN) + runs("d", 0.6)
    assert not learned(outcomes, "a", chance) and learned(outcomes, "c", chance)  # the margin itself counts
    # exactly 30% on 10 classes is on the line, though 0.1 + 0.2 > 0.3 in floating point; a hair less is not
    assert learned(runs("e", 0.3), "e", chance) and not learned(runs("f", 0.2999), "f", chance)
    decided = Check("a beats b", HOLDS, "a ahead")
    gated = unless_learned(decided, outcomes, chance, ("a", "b"))
    assert gated.verdict == INCONCLUSIVE and gated.claim == decided.claim
    assert "a ahead" in gated.margin and "learned nothing" in gated.margin and "11.20%" in gated.margin
    assert unless_learned(decided, outcomes, chance, ("a", "d")) == decided  # one of them learned
    assert unless_learned(Check("x", FAILS, "m"), outcomes, chance, ("a", "d"), ("b", "a")).verdict == INCONCLUSIVE
    assert unless_learned(Check("x", FAILS, "m"), outcomes, chance, ("c", "a"), ("d", "b")).verdict == FAILS
    assert unless_learned(Check("x", HOLDS, "m"), outcomes, float("nan"), ("d",)).verdict == INCONCLUSIVE


def test_a_run_line_keeps_every_value_it_shows():
    """bn-lr's last line at --size tiny (a blown-up loss), built as train_settings builds it: place, setting, seed,
    loss (two digits when it blew up), the test accuracy and the time; read back, "read back" stands where the
    time was; a run not scored on the test split shows its validation accuracy instead."""
    outcome = RunOutcome(setting="no-bn-lr3", seed=0, run_dir="runs/no-bn-lr3/seed0", status=TRAINED,
                         train_loss=7.4813e35, val_acc=0.1004, test_acc=0.1012)
    width = len("no-bn-lr0.1/seed0")  # the longest of bn-lr's four runs sets the column
    line = run_line("run 4 of 4", outcome, 0.2, width=width)
    assert re.fullmatch(r"run 4 of 4  no-bn-lr3/seed0 +loss 7\.5e\+35, test 10\.12%  0\.2 s", line), line
    # read back from an earlier call: the time it took to read the run back says nothing about the run
    read = run_line("run 4 of 4", dataclasses.replace(outcome, status=READ), 0.2, width=width)
    assert read == line.removesuffix("0.2 s") + "read back"
    unscored = run_line("run 4 of 4", outcome, 0.2, evaluate=False, width=width)
    assert "test" not in unscored and unscored.endswith("loss 7.5e+35, val 10.04%  0.2 s")
    assert run_line("run 1", dataclasses.replace(outcome, status=DIVERGED), 61.0).endswith("diverged  1 min 01 s")


# The training experiments whose lines are not run_line's: search says its studies' trials (their lines fit 80
# columns: test_search_experiment), transfer and from-scratch their ladders' runs (cnnlab.transfer.ladder; below)
OWN_LINES = ("search", "transfer", "from-scratch")


def _ladders(name: str, size: str, seeds: int) -> tuple[dict, tuple, int]:
    """The ladders ``name`` runs at ``size`` (folder -> sizes), their rungs and the runs it plans, as the
    experiment's run function works them out."""
    from cnnlab.experiments import scratch, transfer
    from cnnlab.transfer.ladder import ALL, RUNGS, SCRATCH, TRAINING_RUNGS

    if name == "transfer":
        plan = transfer.SETTINGS[size]
        return ({transfer.SIMILAR: plan.similar, transfer.DIFFERENT: plan.different}, RUNGS,
                1 + seeds * len(TRAINING_RUNGS) * (len(plan.similar) + len(plan.different)))
    budgets, sizes = scratch.SETTINGS[size].budgets(size), scratch.ScratchSize.sizes(size)
    return ({scratch.budget_folder(steps): sizes for steps in budgets}, (SCRATCH, ALL),
            1 + len(budgets) * len(sizes) * seeds * len((SCRATCH, ALL)))


@pytest.mark.parametrize("name", ["transfer", "from-scratch"])
def test_every_ladder_line_fits_80_columns(name):
    """transfer's and from-scratch's lines at each size with the most seeds they take: what the source is (on
    its default data), the source's line and each ladder's rung lines, with the widest values: 100.00%, "59 min
    59 s", "read back" (in the time's place), the widest rung of the ladder with the widest name; the probe's
    line, uncounted, as wide as a counted one. A rung's line was 95 columns ("run 121 of 121  different   100
    per class  seed 9  scratch test 100.00%  59 min 59 s, read back"), the source's 101."""
    from cnnlab.experiments import transfer
    from cnnlab.text import LINE_COLUMNS, RunCount, note_lines
    from cnnlab.transfer.ladder import PROBE, RungRun, rung_line, rung_name

    experiment = base.get_experiment(name)
    seeds = experiment.seeds[1]
    for size in base.SIZES:
        ladders, rungs, planned = _ladders(name, size, seeds)
        width = transfer.names_width(ladders, seeds, rungs)
        count = RunCount()
        count.plan(planned)
        lines = note_lines(transfer.SOURCE_RUN, transfer.source_text(experiment.data[size], 10), LINE_COLUMNS)
        source = RunOutcome(transfer.SOURCE_RUN, 0, "runs/source", TRAINED, val_acc=1.0, test_acc=1.0)
        lines += [transfer.source_line(count.finished(), outcome, 3599.0, width)
                  for outcome in (source, dataclasses.replace(source, status=READ))]
        count.done = planned - 1  # the last run: the widest count
        for folder, sizes in ladders.items():
            for rung in rungs:
                name_shown = rung_name(folder, max(sizes), seeds - 1, rung)
                place = count.uncounted() if rung == PROBE else f"run {planned} of {planned}"
                for status in ("done", "read"):
                    run = RungRun(max(sizes), seeds - 1, rung, 1.0, 1.0, 3599.0, status)
                    line = rung_line(place, name_shown, run, "test", width)
                    assert line.startswith(f"{place}  {name_shown}") and line.endswith(
                        "100.00%  read back" if status == "read" else "100.00%  59 min 59 s"), line
                    lines.append(line)
        assert all(len(line) <= 80 for line in lines), (size, [line for line in lines if len(line) > 80])
        # every counted line's name starts in one column, the source's too
        counted = [line for line in lines if line.startswith("run ")]
        assert len({line.index("  ", len(f"run {planned} of {planned}")) for line in counted}) == 1, counted


def _png_signature(figure, path, *args, **kwargs):
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n")


def _said_lines(monkeypatch, tmp_path: Path, experiment: Experiment, size: str) -> tuple[list, list]:
    """Every run line and measure line ``experiment`` says at ``size`` with the most seeds it takes, on the size's
    default data, without training: each run comes back diverged (so nothing after it measures weights). Returns
    the arguments of each run_line call (place, run, evaluate, width) and of each measure_line call (place, run,
    width), each made again below with the widest values."""
    from cnnlab.experiments import training
    from cnnlab.experiments.base import RunContext

    runs, measures = [], []

    def not_trained(config, run_dir, setting, evaluate=True):
        return RunOutcome(setting=setting, seed=config.train.seed, run_dir=str(run_dir), status=DIVERGED)

    def run_said(place, outcome, seconds, evaluate=True, width=0):
        runs.append((place, outcome.setting, outcome.seed, evaluate, width))
        return ""

    def measure_said(place, name, shown, seconds, width=0):
        measures.append((place, name, width))
        return ""

    monkeypatch.setattr(training, "train_or_read", not_trained)
    monkeypatch.setattr(training, "run_line", run_said)
    monkeypatch.setattr(training, "measure_line", measure_said)
    ctx = RunContext(size=size, seeds=experiment.seeds[1], out=tmp_path / size, data=experiment.data[size])
    result = experiment.run(ctx)  # to the end: a verdict and plots from runs that all diverged
    assert result.checks and all(Path(plot).is_file() for plot in result.plots)
    assert runs and len(runs) == ctx.runs.planned  # every run the experiment makes was said
    assert len(measures) in (0, len(runs))  # measured: every run, each with its line
    return runs, measures


@pytest.mark.filterwarnings("ignore:No artists with labels")  # the plots of runs that all diverged
@pytest.mark.parametrize("name", [e.name for e in base.list_experiments() if e.data is not None and e.name not in OWN_LINES])
def test_every_run_and_measure_line_fits_80_columns(monkeypatch, tmp_path, name):
    """Each experiment's lines at each size, at the most seeds it takes (seed9; "run 120 of 120"), with its longest
    run name and the widest values a line shows: a loss with an exponent (float32's largest), 100.00%, a run under
    an hour ("59 min 59 s"), "read back", and a run without usable weights. bn-lr alone was checked: preact's
    "preact_resnet18/seed9" made 89 columns."""
    import torch

    from cnnlab.experiments.training import measure_line, run_name
    from cnnlab.text import duration_text

    from cnnlab.experiments import preact

    experiment = base.get_experiment(name)
    # preact's exact block checks run on tiny's inputs at every size: their numbers print in no line. On the same
    # inputs and seeds every size's rows are the same, so they are worked out once and handed to each size.
    real_exact_rows, block_rows = preact.exact_rows, []

    def exact_rows_once(size):
        if not block_rows:
            block_rows.extend(real_exact_rows(size))
        return copy.deepcopy(block_rows)

    for size in base.SIZES:
        monkeypatch.setattr(preact, "BLOCK_INPUTS", dict.fromkeys(base.SIZES, preact.BLOCK_INPUTS["tiny"]))
        monkeypatch.setattr(preact, "exact_rows", exact_rows_once)
        if size != base.SIZES[0]:
            # The plots of runs that all diverged are drawn at the first size; at the others, where only the lines
            # are under test, each is laid out and written as a bare PNG signature (drawing was half the test)
            monkeypatch.setattr(Figure, "savefig", _png_signature)
            monkeypatch.setattr(Figure, "tight_layout", lambda self, *args, **kwargs: None)
        runs, measures = _said_lines(monkeypatch, tmp_path, experiment, size)
        monkeypatch.undo()  # the real run_line and measure_line (and preact's inputs and exact_rows) again
        for place, setting, seed, evaluate, width in runs:
            outcome = RunOutcome(setting=setting, seed=seed, run_dir=run_name(setting, seed), status=TRAINED,
                                 train_loss=float(torch.finfo(torch.float32).max), val_acc=1.0, test_acc=1.0)
            for said, ending in ((outcome, duration_text(3599.0)), (dataclasses.replace(outcome, status=READ), "read back")):
                line = run_line(place, said, 3599.0, evaluate, width)
                assert len(line) <= 80, (size, line)
                assert line.startswith(f"{place}  {run_name(setting, seed)}") and line.endswith(f"100.00%  {ending}")
        shown = [None, *_widest_shown()[name]] if measures else []  # None: a run without usable weights
        for place, run, width in measures:
            for text in shown:
                line = measure_line(place, run, text, 3599.0, width)
                assert all(len(part) <= 80 for part in line.splitlines()), (size, line)
                assert text is None or text in line


def _widest_shown() -> dict[str, list[str]]:
    """Each measuring experiment's measure text, by its own shown function, for made-up measures with the widest
    values each can hold: float32's largest, negated where a value can fall below zero (a rise, an eigenvalue
    of largest magnitude, a share kept below chance), 100.00%, and a share kept from an intact net barely above
    chance. A new experiment that measures its runs needs its entry here."""
    import torch

    from cnnlab.experiments.lesion import Lesions, lesion_shown
    from cnnlab.experiments.surface import RISE_AT, Eigen, Surface, surface_shown

    largest = float(torch.finfo(torch.float32).max)  # 3.4028e38: its 3 significant digits print as 2 (3.4e38)
    below = largest * 6 / 7  # 2.9167e38: every digit shown
    chance = 0.1
    lesions = [Lesions("s", 9, "runs/s/seed9", intact, {"block": acc}, {}, {}, chance)
               for intact in (1.0, chance + 1e-12, chance + 1e-300) for acc in (0.0, 0.99, 1.0)]
    alphas = [-RISE_AT, 0.0, RISE_AT]
    # a rise of -2 x the loss (the slice's losses 0), or of the slice's losses (the loss 0)
    surfaces = [Surface("s", 9, "runs/s/seed9", 1, loss, alphas, [[at, loss, at]], Eigen(eig, 0.0, 20))
                for huge in (largest, below) for loss, at in ((huge, 0.0), (0.0, huge))
                for eig in (-huge, huge, -1.2345e-7, 12345.6)]
    return {"lesion": [lesion_shown(run) for run in lesions], "loss-surface": [surface_shown(run) for run in surfaces]}


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_the_log_scaled_plots_of_runs_that_all_diverged_are_drawn_empty(tmp_path):
    """norm-batch's batch axis and bn-lr's rate axis are log-scaled; with no finished run they have nothing to
    place on it, and matplotlib refused to lay out a log axis over its default 0..1 limits (ValueError)."""
    from cnnlab.experiments import normalization

    nb = normalization.NB_BUDGETS["tiny"]
    diverged = [RunOutcome(normalization.nb_setting(n, b), 0, "runs/x", DIVERGED) for n in nb.norms for b in nb.batches]
    assert normalization._norm_batch_plot(tmp_path / "nb.png", diverged, nb).is_file()
    lr = normalization.LR_BUDGETS["tiny"]
    diverged = [RunOutcome(normalization.lr_setting(v, r), 0, "runs/x", DIVERGED)
                for v in normalization.BN_VARIANTS for r in lr.lrs]
    assert normalization._lr_plot(tmp_path / "lr.png", diverged, lr, float("nan")).is_file()
    assert normalization._lr_plot(tmp_path / "lr_chance.png", diverged, lr, 0.1).is_file()  # crosses at chance


def test_a_short_number_keeps_its_digits_in_a_bounded_width():
    """3 significant digits as %g writes them, the exponent without its plus sign or leading zeros, so that no
    double, however large or small, takes more than the digits + 7 columns (sign, point, "e-308")."""
    import sys

    from cnnlab.text import short_number

    assert [short_number(v) for v in (0.04123, 41.3, 12345.6, -6.81e38, 1e-5, 0.0, 999.5)] == [
        "0.0412", "41.3", "1.23e4", "-6.81e38", "1e-5", "0", "1e3"]
    assert short_number(12345.6, 4) == "1.235e4" and short_number(float("nan")) == "nan"
    widest = (-sys.float_info.max, -sys.float_info.min, -1.23e-5, -0.000123, -float("inf"))
    for digits in (2, 3, 4):
        for value in widest:
            assert len(short_number(value, digits)) <= digits + 7, short_number(value, digits)
            assert float(short_number(value, digits)) == float(f"{value:.{digits}g}")  # the same number

def test_measure_runs_says_a_line_per_run_and_keeps_what_was_measured():
    from types import SimpleNamespace

    from cnnlab.experiments.training import NOT_MEASURED, RunOutcome, measure_runs

    said = []
    outcomes = [RunOutcome("plain20", 0, "runs/plain20/seed0", "trained"),
                RunOutcome("resnet20", 0, "runs/resnet20/seed0", "diverged")]
    measured = measure_runs(SimpleNamespace(say=said.append), outcomes, "lesions",
                            lambda o: None if o.status == "diverged" else len(o.setting), lambda n: f"{n} letters")
    assert measured == [7]  # the diverged run measured nothing and is left out
    assert [line.rsplit("  ", 1)[0] for line in said] == [
        "lesions 1 of 2  plain20/seed0   7 letters", f"lesions 2 of 2  resnet20/seed0  {NOT_MEASURED}"]
    assert all(line.endswith(" s") for line in said)  # each ends with the time it took


def test_a_report_of_an_experiments_folder_points_to_its_page(toy, tmp_path, cli):
    """`cnnlab report EXPERIMENT` (or EXPERIMENT/runs) is not a run folder: the refusal names the page the
    experiment wrote and how to list its runs, rather than only "it has no config.yaml"."""
    out = tmp_path / "e"
    base.run_experiment("toy-lr", "tiny", out=out)
    for named in (out, out / "runs"):
        code, stdout, err = cli(["report", str(named)])
        assert code == 2 and "the folder of a `cnnlab experiment`" in err, err
        assert str(out / base.REPORT_FILE) in err and f"cnnlab runs {out}" in err and "Traceback" not in err


def test_a_diverged_run_is_left_out_of_the_means_though_its_fields_hold_finite_numbers():
    """A diverged run's outcome keeps its last finished epoch's numbers (finite): seed_stats left out only
    non-finite values, so bn-lr's table meant a diverged 'no-bn-lr3' in with 'seeds 0, diverged 1'."""
    outcomes = [RunOutcome("a", 0, "r/a/0", TRAINED, val_acc=0.9, train_loss=0.3),
                RunOutcome("a", 1, "r/a/1", TRAINED, val_acc=0.8, train_loss=0.5),
                RunOutcome("a", 2, "r/a/2", DIVERGED, val_acc=0.1, train_loss=875957.7),
                RunOutcome("b", 0, "r/b/0", DIVERGED, val_acc=0.1, train_loss=1e6)]
    assert seed_stats(outcomes, "a", "val_acc").values == (0.9, 0.8)
    (a, b) = summary_rows(outcomes, ["a", "b"], ["val_acc", "train_loss"])
    assert a["val_acc_mean"] == pytest.approx(0.85) and a["train_loss_mean"] == pytest.approx(0.4)
    assert (a["seeds"], a["diverged"]) == (2, 1)
    assert b["val_acc_mean"] is None and b["train_loss_mean"] is None and (b["seeds"], b["diverged"]) == (0, 1)
    assert not learned(outcomes, "b", chance=0.05)  # its 10% is not learning: no finished seed


def test_digits_counts_in_the_size_descriptions_are_the_data_s():
    """lesion's quick size said 538 test images where digits' test split holds 269: every count a size on digits
    states is checked against the loaded data."""
    from cnnlab.experiments.base import list_experiments

    digits = load_source("digits")
    stated = {"test": len(digits.test), "training": len(digits.train)}
    checked = 0
    for experiment in list_experiments():
        for size, info in experiment.sizes.items():
            if (experiment.data or {}).get(size) != "digits":
                continue
            for count, split in re.findall(r"([\d,]+) (test|training) (?:images|digits)", info.description):
                if split == "training" and f"all {count}" not in info.description:
                    continue  # "10 images per class" and the like: a subset, not the split
                assert int(count.replace(",", "")) == stated[split], (experiment.name, size, info.description)
                checked += 1
    assert checked >= 5
