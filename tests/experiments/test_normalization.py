"""The normalisation experiments (norm-batch, bn-lr): tiny runs through run_experiment (files, runs,
what the runs recorded), the norms each setting builds, and the verdict rules on made-up outcomes."""

import csv
import json
import re

import pytest
from torch import nn

import cnnlab
from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import normalization as nz
from cnnlab.experiments.training import DIVERGED, TRAINED, RunOutcome
from cnnlab.run import RunFolder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("normalization")
    return {name: (run_experiment(name, "tiny", out=root / name), root / name) for name in ("norm-batch", "bn-lr")}


def first_step_lr(run) -> float:
    with open(run / "steps.csv") as handle:
        return float(next(csv.DictReader(handle))["lr"])


@pytest.mark.parametrize("name, plots", [("norm-batch", {"norm_batch.png"}),
                                         ("bn-lr", {"bn_lr_accuracy.png", "bn_lr_loss_by_epoch.png"})])
def test_tiny_writes_table_plots_report_and_runs(tiny, name, plots):
    result, out = tiny[name]
    assert (out / RESULT_FILE).is_file() and (out / REPORT_FILE).is_file()
    with open(out / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows) == 8  # 4 settings, then 4 runs
    assert {p.name for p in result.plots} == plots
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert len(result.runs) == 4 and all((run / "metrics.csv").is_file() for run in result.runs)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["seeds"] == 1 and saved["data"] == "digits"
    assert result.verdict == INCONCLUSIVE  # one seed decides nothing


def test_norm_batch_runs_scale_the_rate_with_the_batch(tiny):
    result, _ = tiny["norm-batch"]
    for row, run in zip(result.rows[:4], result.runs):
        config = RunFolder(run).read_config()
        assert config.model.norm == nz.NORMS[row["setting"].split("-")[0]]
        assert config.train.batch_size == row["batch_size"]
        # Linear scaling rule, as the engine stepped it (cosine starts at the peak): 0.2 x batch / 256.
        assert first_step_lr(run) == pytest.approx(0.2 * row["batch_size"] / 256) == pytest.approx(row["lr"])


def test_bn_lr_runs_use_the_swept_rate_with_and_without_bn(tiny):
    result, _ = tiny["bn-lr"]
    for row, run in zip(result.rows[:4], result.runs):
        config = RunFolder(run).read_config()
        assert config.model.name == "vgg_mini" and config.model.norm == ("none" if row["setting"].startswith("no-bn")
                                                                         else "bn")
        assert first_step_lr(run) == pytest.approx(row["lr"])


def test_each_norm_setting_builds_the_layer_it_names():
    kinds = {}
    for prefix, spec in nz.NORMS.items():
        model = cnnlab.create_model(nz.NB_NET, num_classes=10, in_chans=1, norm=spec)
        kinds[prefix] = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d))]
    assert all(type(m) is nn.BatchNorm2d for m in kinds["bn"])
    # GN: 8 groups everywhere, so 2, 4 and 8 channels per group (neither IN nor LN); LN: one group of all channels.
    assert {(m.num_groups, m.num_channels) for m in kinds["gn"]} == {(8, 16), (8, 32), (8, 64)}
    assert {m.num_groups for m in kinds["ln"]} == {1}
    assert all(isinstance(m, nn.InstanceNorm2d) and m.affine for m in kinds["in"])
    plain = cnnlab.create_model(nz.LR_NET, num_classes=10, in_chans=1, norm="none")
    assert not [m for m in plain.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]


def run(setting, seed, *, val=None, test=None, loss1=None, status=TRAINED):
    ok = status != DIVERGED
    return RunOutcome(setting=setting, seed=seed, run_dir=f"/nowhere/{setting}/{seed}", status=status, epochs=1,
                      val_acc=val if ok else None, test_acc=test if ok else None,
                      curve=[{"train_loss": loss1}] if ok else [])


def accuracies(table: dict[str, list[float]]):
    """Runs whose val and test accuracies are both the given value, one per seed."""
    return [run(setting, seed, val=a, test=a) for setting, values in table.items() for seed, a in enumerate(values)]


def test_norm_batch_rule_holds_when_only_bn_loses_at_batch_2():
    outcomes = accuracies({
        "bn-b2": [0.60, 0.61, 0.62], "bn-b32": [0.80, 0.81, 0.82],
        "gn-b2": [0.78, 0.79, 0.80], "gn-b32": [0.79, 0.80, 0.81],
        "ln-b2": [0.77, 0.78, 0.79], "ln-b32": [0.76, 0.77, 0.78],  # LN's best batch is 2: its drop is 0
    })
    assert nz.best_batch(outcomes, "bn", (2, 32)) == 32 and nz.best_batch(outcomes, "ln", (2, 32)) == 2
    drop = nz.batch_drop(outcomes, "bn", 32, 2)
    assert drop.values == pytest.approx((0.2, 0.2, 0.2))
    checks = nz.norm_batch_checks(outcomes, ("bn", "gn", "ln"), (2, 32), 0.1)
    assert [c.verdict for c in checks] == [HOLDS, HOLDS, HOLDS]


def test_norm_batch_rule_fails_when_bn_is_best_at_the_smallest_batch_or_gn_loses_more():
    outcomes = accuracies({"bn-b2": [0.80, 0.81, 0.82], "bn-b32": [0.70, 0.71, 0.72],
                           "gn-b2": [0.60, 0.61, 0.62], "gn-b32": [0.80, 0.81, 0.82]})
    checks = nz.norm_batch_checks(outcomes, ("bn", "gn"), (2, 32), 0.1)
    assert [c.verdict for c in checks] == [FAILS, FAILS]
    assert "is the smallest, 2" in checks[0].margin


def test_a_batch_that_diverged_on_some_seed_is_not_the_best_and_is_named_so():
    outcomes = accuracies({"bn-b2": [0.60, 0.61], "bn-b32": [0.80, 0.81, 0.82], "gn-b2": [0.78, 0.79],
                           "gn-b32": [0.79, 0.80]})
    outcomes += [run("bn-b32", 3, status=DIVERGED), run("bn-b2", 2, status=DIVERGED),
                 run("gn-b2", 2, status=DIVERGED), run("gn-b32", 2, status=DIVERGED)]
    assert nz.best_batch(outcomes, "bn", (2, 32)) is None  # each of BN's batches lost a seed
    checks = nz.norm_batch_checks(outcomes, ("bn", "gn"), (2, 32), 0.1)
    assert [c.verdict for c in checks] == [INCONCLUSIVE, INCONCLUSIVE]
    assert "no batch size whose every seed finished" in checks[0].margin
    assert "no batch size whose every seed finished" in checks[1].margin
    kept = [o for o in outcomes if not (o.setting == "bn-b32" and o.status == DIVERGED)]
    assert nz.best_batch(kept, "bn", (2, 32)) == 32  # the one that finished every seed


def test_bn_lr_rule_on_made_up_runs():
    chance = 0.1
    outcomes = accuracies({
        "bn-lr0.1": [0.85, 0.86, 0.87], "bn-lr1": [0.80, 0.81, 0.82],
        "no-bn-lr0.1": [0.84, 0.85, 0.86], "no-bn-lr1": [0.10, 0.10, 0.11],  # stuck at chance: does not train
    })
    for o in outcomes:
        o.curve = [{"train_loss": 1.0 if o.setting.startswith("bn") else 1.5}]
    assert nz.trains(outcomes, "bn-lr1", chance) and not nz.trains(outcomes, "no-bn-lr1", chance)
    assert nz.best_lr(outcomes, "no-bn", (0.1, 1.0), chance) == 0.1
    checks = nz.bn_lr_checks(outcomes, (0.1, 1.0), chance)
    assert [c.verdict for c in checks] == [HOLDS, HOLDS, HOLDS]

    # A diverged seed makes a rate fail to train; both nets training at the top of the grid decides nothing.
    diverged = accuracies({"bn-lr0.1": [0.85] * 3, "no-bn-lr0.1": [0.85] * 3, "bn-lr1": [0.8] * 2,
                           "no-bn-lr1": [0.8] * 3}) + [run("bn-lr1", 2, status=DIVERGED)]
    assert not nz.trains(diverged, "bn-lr1", chance)
    assert nz.bn_lr_checks(diverged, (0.1, 1.0), chance)[0].verdict == FAILS
    both = accuracies({"bn-lr0.1": [0.85] * 3, "no-bn-lr0.1": [0.85] * 3, "bn-lr1": [0.8] * 3,
                       "no-bn-lr1": [0.8] * 3})
    assert nz.bn_lr_checks(both, (0.1, 1.0), chance)[0].verdict == INCONCLUSIVE


def test_refuses_data_with_too_few_images_per_class(tmp_path):
    from cnnlab.errors import CnnlabError

    for name in ("norm-batch", "bn-lr"):
        with pytest.raises(CnnlabError, match="class-balanced subset of 10 per class"):
            run_experiment(name, "tiny", data="synthetic:classes=10,train=50", out=tmp_path / name)


def test_plots_draw_made_up_runs_with_diverged_ones(tmp_path):
    outcomes = []
    for setting, acc in (("bn-lr0.1", 0.8), ("bn-lr1", 0.7), ("no-bn-lr0.1", 0.8)):
        for seed in range(3):
            outcomes.append(run(setting, seed, val=acc, test=acc, loss1=1.0))
            outcomes[-1].curve = [{"train_loss": 1.0}, {"train_loss": 0.5}]
    outcomes += [run("no-bn-lr1", seed, status=DIVERGED) for seed in range(3)]
    budget = nz.LrBudget((0.1, 1.0), None, 2)
    for path in (nz._lr_plot(tmp_path / "acc.png", outcomes, budget, 0.1),
                 nz._lr_curves_plot(tmp_path / "loss.png", outcomes, budget)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert nz.bn_lr_checks(outcomes, (0.1, 1.0), 0.1)[0].verdict == HOLDS  # BN trains at 1, the plain net diverges
    norm_runs = accuracies({"bn-b2": [0.6] * 3, "bn-b16": [0.8] * 3, "gn-b2": [0.8] * 3, "gn-b16": [0.8] * 2})
    for o in norm_runs:
        o.train_loss = 0.5
    path = nz._norm_batch_plot(tmp_path / "nb.png", norm_runs, nz.NormBatchBudget(("bn", "gn"), (2, 16), None, 1))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("size, data", [("quick", "digits"), ("full", "fashion-mnist")])
@pytest.mark.parametrize("edge", [0, -1])  # the smallest and the largest batch, which the size's text names
def test_the_steps_a_size_describes_are_the_steps_its_runs_take(size, data, edge):
    from cnnlab.config import config_from_dict
    from cnnlab.train.engine import setup_run

    budget = nz.NB_BUDGETS[size]
    batch = budget.batches[edge]
    sections = nz.norm_batch_sections("bn", batch, budget)
    sections["data"]["spec"] = data
    run = setup_run(config_from_dict(sections))
    steps = len(run.train_loader) * budget.epochs
    assert nz.nb_steps(budget, batch) == steps
    # `cnnlab experiment list` and docs/experiments.md give these counts: "1,500 steps at batch 2, 21 at batch 128"
    assert re.search(rf"\b{steps:,} (steps )?at batch {batch}\b", nz.NORM_BATCH.sizes[size].description)


def test_norm_batch_batches_at_chance_decide_nothing():
    """At tiny with 3 seeds BN scored 11.2% at batch 2 and 9.9% at batch 16 on validation, both chance, and 'BN
    degrades' was decided on that. A drop between batches that learned nothing is INCONCLUSIVE, with the reason;
    so is GN's drop compared with BN's when either drop's batches learned nothing."""
    outcomes = accuracies({"bn-b2": [0.11, 0.112, 0.114], "bn-b32": [0.098, 0.099, 0.10],
                           "gn-b2": [0.60, 0.61, 0.62], "gn-b32": [0.80, 0.81, 0.82]})
    checks = nz.norm_batch_checks(outcomes, ("bn", "gn"), (2, 32), 0.1)
    assert [c.verdict for c in checks] == [INCONCLUSIVE, INCONCLUSIVE]
    assert all("learned nothing" in c.margin and "bn-b2" in c.margin for c in checks)
    # BN learning at its best batch and at chance at batch 2 is the degradation itself: decided.
    outcomes = accuracies({"bn-b2": [0.10, 0.11, 0.12], "bn-b32": [0.80, 0.81, 0.82],
                           "gn-b2": [0.78, 0.79, 0.80], "gn-b32": [0.79, 0.80, 0.81]})
    assert [c.verdict for c in nz.norm_batch_checks(outcomes, ("bn", "gn"), (2, 32), 0.1)] == [HOLDS, HOLDS]
