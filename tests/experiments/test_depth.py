"""The degradation experiment: a tiny run through run_experiment (files, runs, the recipe the runs
recorded), the verdict rule on made-up training errors, the data it refuses, and CIFAR-10 as the full
size's data when a copy is present."""

import csv
import json

import pytest

from cnnlab.errors import CnnlabError
from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import depth
from cnnlab.experiments.training import DIVERGED, TRAINED, RunOutcome
from cnnlab.run import RunFolder

NAME = "degradation"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("degradation")
    return run_experiment(NAME, "tiny", out=out), out


def test_tiny_writes_table_plots_report_and_one_run_per_net(tiny):
    result, out = tiny
    assert (out / RESULT_FILE).is_file() and (out / REPORT_FILE).is_file()
    with open(out / TABLE_CSV) as handle:
        table = list(csv.DictReader(handle))
    nets = ["plain20", "plain56", "resnet20", "resnet56"]
    assert [r["setting"] for r in table] == nets + nets  # one summary row per net, then one row per run
    assert {p.name for p in result.plots} == {"degradation.png", "training_loss.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert len(result.runs) == 4 and all((run / "metrics.csv").is_file() for run in result.runs)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["seeds"] == 1 and saved["data"] == "digits" and len(saved["checks"]) == 2
    # One seed decides nothing: both checks say so.
    assert result.verdict == INCONCLUSIVE
    assert all(c.verdict == INCONCLUSIVE and "fewer than 3 seeds" in c.margin for c in result.checks)


def test_training_error_is_one_minus_the_engines_last_training_accuracy(tiny):
    result, _ = tiny
    summary, per_run = result.rows[:4], result.rows[4:]
    for row, run_row, run in zip(summary, per_run, result.runs):
        with open(run / "metrics.csv") as handle:
            last = list(csv.DictReader(handle))[-1]
        assert row["train_error_mean"] == pytest.approx(1 - float(last["train_acc"])) == run_row["train_error"]
        assert row["depth"] == run_row["depth"] == (56 if "56" in row["setting"] else 20)
        assert row["shortcuts"] == row["setting"].startswith("resnet")
        assert run_row["run_dir"] == str(run) and run_row["seed"] == 0


def test_runs_record_he_et_al_recipe_without_augmentation(tiny):
    result, _ = tiny
    for run in result.runs:
        config = RunFolder(run).read_config()
        assert config.model.name == run.parent.name and config.model.norm in (None, "bn")
        assert (config.optim.name, config.optim.lr, config.optim.lr_batch) == ("sgd", 0.1, 128)
        assert (config.optim.momentum, config.optim.nesterov, config.optim.weight_decay) == (0.9, False, 1e-4)
        assert config.schedule.name == "cosine" and config.data.image_size == depth.IMAGE_SIZE
        assert config.aug.crop in (None, "none") and not config.aug.hflip and not config.aug.label_smoothing
        assert not config.aug.mixup_alpha and not config.aug.cutmix_alpha and not config.aug.erasing
    # The step's learning rate follows the batch by the linear scaling rule: 0.1 x 16 / 128 at tiny.
    with open(result.runs[0] / "steps.csv") as handle:
        first = next(csv.DictReader(handle))
    assert float(first["lr"]) == pytest.approx(0.1 * depth.BUDGETS["tiny"].batch_size / 128)


CHANCE = 0.1  # 10 classes


def outcome(net, seed, train_acc, status=TRAINED, val_acc=0.8):
    return RunOutcome(setting=net, seed=seed, run_dir=f"/nowhere/{net}/{seed}", status=status, epochs=1,
                      train_acc=None if status == DIVERGED else train_acc,
                      val_acc=None if status == DIVERGED else val_acc)


def made_up(errors: dict[str, list[float]], diverged=()):
    runs = [outcome(net, seed, 1 - e) for net, values in errors.items() for seed, e in enumerate(values)]
    return runs + [outcome(net, 9, 0.5, DIVERGED) for net in diverged]


def test_rule_holds_when_plain56_is_clearly_worse_and_resnet56_no_worse():
    checks = depth.degradation_checks(made_up({
        "plain20": [0.10, 0.11, 0.12], "plain56": [0.20, 0.21, 0.22],  # 10 points worse, spread 1
        "resnet20": [0.10, 0.11, 0.12], "resnet56": [0.105, 0.115, 0.125],  # 0.5 higher, within the spread of 1
    }), CHANCE)
    assert [c.verdict for c in checks] == [HOLDS, HOLDS]
    assert "+10.00 points" in checks[0].margin and "resnet20 ahead by 0.50 points" in checks[1].margin


def test_rule_fails_and_is_inconclusive_where_the_numbers_say_so():
    checks = depth.degradation_checks(made_up({
        "plain20": [0.20, 0.21, 0.22], "plain56": [0.10, 0.11, 0.12],  # the deeper plain net trains BETTER
        "resnet20": [0.10, 0.11, 0.12], "resnet56": [0.20, 0.21, 0.22],  # the deeper ResNet degrades
    }), CHANCE)
    assert [c.verdict for c in checks] == [FAILS, FAILS]
    checks = depth.degradation_checks(made_up({
        "plain20": [0.10, 0.15, 0.20], "plain56": [0.12, 0.17, 0.22],  # 2 points, spread 5: undecided
        "resnet20": [0.10, 0.11, 0.12], "resnet56": [0.10, 0.11, 0.12],
    }), CHANCE)
    assert [c.verdict for c in checks] == [INCONCLUSIVE, HOLDS]


def test_a_diverged_run_is_left_out_and_fewer_than_three_seeds_decide_nothing():
    runs = made_up({"plain20": [0.1, 0.1, 0.1], "plain56": [0.3, 0.3], "resnet20": [0.1] * 3, "resnet56": [0.1] * 3},
                   diverged=["plain56"])
    stats = depth.error_stats(runs, "plain56")
    assert stats.n == 2 and stats.mean == pytest.approx(0.3)
    assert depth.degradation_checks(runs, CHANCE)[0].verdict == INCONCLUSIVE


def test_refuses_data_it_cannot_use(tmp_path):
    with pytest.raises(CnnlabError, match="class-balanced subset of 10 per class"):
        run_experiment(NAME, "tiny", data="synthetic:classes=10,train=50", out=tmp_path / "small")
    assert not (tmp_path / "small").exists()


def test_cli_refuses_bad_data_with_exit_code_2(cli, tmp_path):
    code, _, err = cli(["experiment", NAME, "--size", "tiny", "--data", "synthetic:classes=10,train=50",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "cannot use --data" in err


def test_full_trains_on_cifar10_only_when_a_copy_is_present(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path))
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    assert not depth._cifar10_present()
    (tmp_path / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    assert depth._cifar10_present()
    assert depth.DATA["full"] in ("cifar10", "fashion-mnist") and depth.DATA["tiny"] == "digits"


def test_figure_draws_made_up_curves_with_a_diverged_run(tmp_path):
    runs = []
    for net, error in (("plain20", 0.2), ("plain56", 0.4), ("resnet20", 0.2), ("resnet56", 0.15)):
        for seed in range(3):
            run = outcome(net, seed, 1 - error)
            run.curve = [{"train_acc": 1 - error * (1 + 1 / epoch), "val_acc": 0.7, "train_loss": 1 / epoch}
                         for epoch in (1, 2, 3)]
            runs.append(run)
    runs.append(outcome("plain56", 3, 0.0, DIVERGED))
    path = depth.degradation_plot(tmp_path / "fig.png", runs)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert depth.degradation_checks(runs, CHANCE)[0].verdict == HOLDS


def test_nets_that_learned_nothing_decide_nothing():
    """At tiny with 3 seeds the four nets ended at chance (training errors of 91-94%) and the deeper plain net's
    higher error was a HOLDS. With no net of a pair at chance + 20 points of validation accuracy, the pair's check
    is INCONCLUSIVE and says why; a deep net that learned nothing beside a shallow one that learned is the
    degradation itself, and is decided as before."""
    errors = {"plain20": [0.90, 0.905, 0.91], "plain56": [0.93, 0.935, 0.94],
              "resnet20": [0.90, 0.905, 0.91], "resnet56": [0.96, 0.965, 0.97]}
    at_chance = [outcome(net, seed, 1 - e, val_acc=0.11) for net, values in errors.items()
                 for seed, e in enumerate(values)]
    checks = depth.degradation_checks(at_chance, CHANCE)
    assert [c.verdict for c in checks] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all("learned nothing" in c.margin and "11.00%" in c.margin for c in checks)
    # The same errors with the rule off (every net learned) are decided: the gate, not the errors, made them open.
    assert [c.verdict for c in depth.degradation_checks(made_up(errors), CHANCE)] == [HOLDS, FAILS]

    shallow_learned = [outcome(net, seed, 1 - e, val_acc=0.11 if net == "plain56" else 0.6)
                       for net, values in {"plain20": [0.40, 0.41, 0.42], "plain56": [0.90, 0.91, 0.92],
                                           "resnet20": [0.1] * 3, "resnet56": [0.1] * 3}.items()
                       for seed, e in enumerate(values)]
    assert depth.degradation_checks(shallow_learned, CHANCE)[0].verdict == HOLDS
