"""The activations experiment at `tiny`: its files and runs, the activation statistics against a
hand-computed forward pass, and refused data."""

import csv
import json

import pytest
import torch
import yaml
from torch import nn

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments.activations import (
    ACT_SPECS,
    ONE_SIGN_SIGMOID,
    ONE_SIGN_TANH,
    SATURATION_BAND,
    activation_stats,
    best_by_validation,
    just_use_relu_check,
    one_sign_rows,
    zigzag_check,
)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("activations") / "exp"
    return run_experiment("activations", "tiny", out=out), out


def test_files_runs_and_one_seed_verdicts(result):
    result, out = result
    with open(out / TABLE_CSV) as handle:
        rows = list(csv.DictReader(handle))
    # One summary row per activation, then one row per run (here one seed each).
    assert [r["setting"] for r in rows] == list(ACT_SPECS) * 2
    assert all(r["seed"] == "" for r in rows[:7]) and all(r["seed"] == "0" for r in rows[7:])
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["size"] == "tiny" and saved["seeds"] == 1 and saved["data"] == "digits"
    assert (out / REPORT_FILE).is_file() and len(result.runs) == len(ACT_SPECS)
    assert {p.name for p in result.plots} == {"activations_by_epoch.png", "activations_bars.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    # One seed decides nothing: every training check says so, and the overall verdict follows.
    training, zigzag = result.checks[:3], result.checks[3]
    assert len(result.checks) == 4 and all(c.verdict == INCONCLUSIVE for c in training)
    assert all("fewer than 3 seeds" in c.margin for c in training)
    # The zig-zag check is a property of each net, decided on one seed: sigmoid's rows are all of one sign.
    assert zigzag.verdict == HOLDS and "sigmoid 100.00%" in zigzag.margin
    assert result.verdict == INCONCLUSIVE


def test_each_run_trains_its_activation_on_one_network(result):
    result, out = result
    for name, act in ACT_SPECS.items():
        config = yaml.safe_load((out / "runs" / name / "seed0" / "config.yaml").read_text())
        assert config["model"]["act"] == act and config["model"]["name"] == "mlp"
        assert config["model"]["norm"] == "none" and config["aug"]["preset"] == "none"
        assert config["model"]["options"]["depth"] == 2 and config["model"]["options"]["width"] == 32


def test_trained_rows_measure_every_unit(result):
    result, _ = result
    rows = {r["setting"]: r for r in result.rows if "seeds" in r}  # the summary rows
    runs = {r["setting"]: r for r in result.rows if "seed" in r}
    for name, row in rows.items():
        assert row["dead_share_mean"] == runs[name]["dead_share"]  # one seed: the mean is the run's value
        assert row["units_measured"] == 2 * 32  # two hidden layers of 32 units
        assert 0 <= row["dead_share_mean"] <= row["never_positive_share_mean"] <= 1
        assert (row["saturated_share_mean"] is not None) == (name in ("sigmoid", "tanh"))
    # Leaky ReLU (alpha 0.1), ELU, SELU and tanh are never exactly 0 for a nonzero input: no dead units.
    for name in ("leaky_relu", "elu", "selu", "tanh"):
        assert rows[name]["dead_share_mean"] == 0


def _hand_model(act: nn.Module):
    """Two hidden layers of 4 units with known dead units: (B, 3) -> (B, 2)."""
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), type(act)(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]))
        model[0].bias.copy_(torch.tensor([0.0, -10.0, 0.0, -10.0]))  # units 1 and 3 never positive (inputs < 3)
        model[2].weight.copy_(torch.eye(4) * 8)
        model[2].bias.copy_(torch.tensor([-30.0, 0.0, 0.0, 0.0]))  # unit 0 never positive
    return model


def _reference(model, x, act_fn, bounds=None):
    """The counts by a hand-written forward pass: (dead, never positive, saturated outputs / outputs)."""
    pre1 = x @ model[0].weight.T + model[0].bias
    out1 = act_fn(pre1)
    pre2 = out1 @ model[2].weight.T + model[2].bias
    out2 = act_fn(pre2)
    dead = sum(int((o == 0).all(0).sum()) for o in (out1, out2))
    never = sum(int((p <= 0).all(0).sum()) for p in (pre1, pre2))
    saturated = None
    if bounds:
        low, high = bounds
        band = SATURATION_BAND * (high - low)
        outs = torch.cat([out1, out2], 1)
        saturated = float(((outs <= low + band) | (outs >= high - band)).float().mean())
    return dead, never, saturated


@pytest.mark.parametrize("act, fn, bounds", [
    (nn.ReLU(), torch.relu, None),
    (nn.ReLU(inplace=True), torch.relu, None),  # the input is read before the in-place op overwrites it
    (nn.LeakyReLU(0.1), lambda t: nn.functional.leaky_relu(t, 0.1), None),
    (nn.Sigmoid(), torch.sigmoid, (0.0, 1.0)),
    (nn.Tanh(), torch.tanh, (-1.0, 1.0)),
])
def test_activation_stats_match_a_hand_forward_pass(act, fn, bounds):
    torch.manual_seed(0)
    x = torch.rand(64, 3) * 3  # inputs in [0, 3): units 0 and 2 of layer 1 are on
    model = _hand_model(act)
    stats = activation_stats(model, x, type(act))
    dead, never, saturated = _reference(model, x, fn, bounds)
    assert (stats.layers, stats.units) == (2, 8)
    assert (stats.dead, stats.never_positive) == (dead, never)
    assert stats.never_positive >= 3  # the three units the biases switch off, and those fed only by them
    assert (stats.dead > 0) == isinstance(act, nn.ReLU)  # only ReLU outputs exact zeros
    if bounds:
        assert stats.saturated_share == pytest.approx(saturated) and 0 < saturated < 1
    else:
        assert stats.saturated_share is None
    assert model.training  # left in the mode it was in


def _per_example_rows(model, x, labels):
    """The reference: each example's loss back-propagated alone, and the rows (neurons) of the weight gradient
    of every Linear but the first: (rows not all zero, rows of one sign)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][1:]
    rows = one_sign = 0
    for e in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[e:e + 1]), labels[e:e + 1]).backward()
        for linear in linears:
            grad = linear.weight.grad  # (out, in): outer(dL/dy, h) for this one example
            positive, negative = (grad > 0).any(1), (grad < 0).any(1)
            rows += int((positive | negative).sum())
            one_sign += int(((positive | negative) & ~(positive & negative)).sum())
    model.zero_grad(set_to_none=True)
    return rows, one_sign


@pytest.mark.parametrize("act, expected", [
    (nn.Sigmoid(), 1.0),  # every input of the second and third layers is positive
    (nn.Tanh(), 0.0),  # zero-centred: the inputs take both signs here
    (nn.ReLU(inplace=True), 1.0),  # not zero-centred either (>= 0), and in place after the hooked Linear
])
def test_one_sign_rows_against_per_example_backward_passes(act, expected):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), act, nn.Linear(4, 4), type(act)(), nn.Linear(4, 2))
    with torch.no_grad():  # layer 1's units: two see +x, two see -x, so tanh's outputs have both signs
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, -1, 0, 0], [-1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, 1]]))
        model[2].bias.zero_()
    x = torch.rand(16, 3) + 0.5  # positive inputs: +x and -x units differ in sign
    labels = torch.randint(0, 2, (16,))
    measured = one_sign_rows(model, x, labels)
    rows, one_sign = _per_example_rows(model, x, labels)
    assert (measured.rows, measured.one_sign) == (rows, one_sign) and rows > 0
    assert measured.share == expected and measured.layers == ("2", "4")
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind


def _runs(shares: dict):
    from cnnlab.experiments.training import TRAINED, RunOutcome

    return [(RunOutcome(setting=name, seed=seed, run_dir=f"runs/{name}/seed{seed}", status=TRAINED),
             {"one_sign_grad_share": share}) for name, values in shares.items() for seed, share in enumerate(values)]


def _share(rows: list[str]) -> float:
    """The share of one-sign rows among synthetic gradient rows, each written as its entries' signs ('++-0'):
    a row counts when its nonzero entries all have one sign (rows of zeros only are left out, as one_sign_rows
    leaves them out)."""
    counted_rows = [row for row in rows if set(row) - {"0"}]
    return sum(len(set(row) - {"0"}) == 1 for row in counted_rows) / len(counted_rows)


# Synthetic runs, each given by its gradient rows' signs. Sigmoid's inputs are all positive, so each row takes
# its upstream gradient's sign everywhere; tanh's mixed-sign inputs give mixed rows.
ALL_ONE_SIGN = ["+++", "---", "+0+"]  # 100%
NEARLY_ALL = ["+++"] * 99 + ["+-+"]  # 99%: exactly the sigmoid line
MOSTLY_ONE_SIGN = ["+++"] * 98 + ["+-+"] * 2  # 98%
MIXED = ["+-+", "-+-", "+-0", "000"]  # 0% (the zero row is not counted)
HALF = ["+++", "+-+"]  # 50%: exactly the tanh line
OVER_HALF = ["+++", "---", "+-+"]  # 67%


@pytest.mark.parametrize("sigmoid, tanh, verdict", [
    ([ALL_ONE_SIGN, ALL_ONE_SIGN], [MIXED, MIXED], HOLDS),
    ([NEARLY_ALL], [HALF], HOLDS),  # both lines are inclusive
    ([ALL_ONE_SIGN, MOSTLY_ONE_SIGN], [MIXED], FAILS),  # one sigmoid run below 99% fails it
    ([ALL_ONE_SIGN], [MIXED, OVER_HALF], FAILS),  # one tanh run above 50%: tanh's rows are mostly of one sign
    ([MOSTLY_ONE_SIGN], [OVER_HALF], FAILS),
    ([ALL_ONE_SIGN], [None], INCONCLUSIVE),  # tanh diverged: nothing to compare sigmoid with
    ([None], [MIXED], INCONCLUSIVE),
    ([None], [OVER_HALF], FAILS),  # tanh's half fails on its own
    ([MOSTLY_ONE_SIGN], [], FAILS),
    ([ALL_ONE_SIGN, float("nan")], [MIXED], HOLDS),  # a share of no rows is left out, not read as a failure
])
def test_zigzag_rule(sigmoid, tanh, verdict):
    def share(rows):
        return rows if rows is None or isinstance(rows, float) else _share(rows)

    assert (_share(NEARLY_ALL), _share(HALF)) == (ONE_SIGN_SIGMOID, ONE_SIGN_TANH)  # the lines as the rule states
    check = zigzag_check(_runs({"sigmoid": [share(r) for r in sigmoid], "tanh": [share(r) for r in tanh]}))
    assert check.verdict == verdict, check.margin
    if verdict == FAILS:  # the margin names the half that failed
        assert ("a sigmoid run has fewer than 99%" in check.margin) == any(
            r is not None and not isinstance(r, float) and _share(r) < ONE_SIGN_SIGMOID for r in sigmoid)
        assert ("a tanh run has more than 50%" in check.margin) == any(
            r is not None and not isinstance(r, float) and _share(r) > ONE_SIGN_TANH for r in tanh)


def test_activation_stats_hook_only_the_named_class():
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.Tanh())
    stats = activation_stats(model, torch.randn(8, 3), nn.ReLU)
    assert (stats.layers, stats.units) == (1, 5)
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks  # hooks removed


def test_data_with_too_few_images_per_class_is_refused(cli, tmp_path):
    code, out, err = cli(["experiment", "activations", "--size", "tiny", "--data",
                          "synthetic:classes=3,train=30,val=9,test=9", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "training images" in err and "20 per class" in err
    assert not (tmp_path / "x" / "runs").exists()


def _outcomes(val: dict, test: dict) -> list:
    """Made-up finished runs: 3 seeds per activation, each seed a hundredth of a point off the mean."""
    from cnnlab.experiments.training import TRAINED, RunOutcome

    return [RunOutcome(setting=name, seed=seed, run_dir=f"runs/{name}/seed{seed}", status=TRAINED, epochs=1,
                       val_acc=val[name] + (seed - 1) * 1e-4, test_acc=test[name] + (seed - 1) * 1e-4)
            for seed in range(3) for name in ACT_SPECS]


@pytest.mark.parametrize("gelu_test, verdict", [(0.805, "HOLDS"), (0.70, "HOLDS"), (0.90, "DOES NOT HOLD")])
def test_the_best_activation_is_chosen_on_validation_not_on_the_test_split(tmp_path, monkeypatch, gelu_test, verdict):
    """'Just use ReLU' compares ReLU's test accuracy with the activation that validates best (gelu here), not with
    the one whose test accuracy happens to be highest (elu): the test split only judges. ReLU ahead of it holds."""
    from cnnlab.experiments import RunContext, activations

    val = {name: 0.5 for name in ACT_SPECS} | {"relu": 0.85, "gelu": 0.9}
    test = {name: 0.5 for name in ACT_SPECS} | {"relu": 0.80, "elu": 0.95, "gelu": gelu_test}
    monkeypatch.setattr(activations, "train_settings", lambda ctx, configs: _outcomes(val, test))
    monkeypatch.setattr(activations, "run_measures", lambda outcome, act: dict.fromkeys(
        (*activations.MEASURES, "units_measured")))
    monkeypatch.setattr(activations, "_plots", lambda out, outcomes, rows: [])  # made-up runs have no curves
    monkeypatch.setattr(activations, "chance_level", lambda outcomes: 0.1)  # nor checkpoints with their classes
    result = activations.run_activations(RunContext(size="tiny", seeds=3, out=tmp_path, data="digits"))
    check = next(c for c in result.checks if "just use ReLU" in c.claim)
    assert "(gelu)" in check.claim and "elu" not in check.claim.replace("(gelu)", "")
    assert check.verdict == verdict, check.margin


def test_an_activation_that_diverged_on_some_seed_is_not_the_best():
    """SELU, with two of three seeds diverged, validates best on its one finished seed: the pick passes over it
    (a comparison with one seed decides nothing) and takes the best activation that finished every seed."""
    from cnnlab.experiments.training import DIVERGED, TRAINED, RunOutcome

    def runs(name, val, test, diverged=0):
        return [RunOutcome(name, seed, f"runs/{name}/seed{seed}", DIVERGED if seed < diverged else TRAINED,
                           val_acc=None if seed < diverged else val, test_acc=None if seed < diverged else test)
                for seed in range(3)]

    outcomes = runs("relu", 0.86, 0.861) + runs("selu", 0.90, 0.90, diverged=2) + runs("elu", 0.87, 0.86)
    assert best_by_validation(outcomes) == "elu"
    check = just_use_relu_check(outcomes, 0.1)
    assert "(elu)" in check.claim and check.verdict == HOLDS, check.margin
    assert best_by_validation(runs("selu", 0.90, 0.90, diverged=2)) is None
    only_diverged = just_use_relu_check(runs("relu", 0.86, 0.86, diverged=1) + runs("elu", 0.87, 0.86, diverged=1),
                                        0.1)
    assert only_diverged.verdict == INCONCLUSIVE and "every activation diverged on some seed" in only_diverged.margin


def test_relu_the_best_or_ahead_holds_whatever_the_spread():
    """ReLU compared with itself (the best by validation) said INCONCLUSIVE when its test accuracy varied by more
    than a point: a one-sided claim that cannot be behind holds."""
    from cnnlab.experiments.training import TRAINED, RunOutcome

    def runs(name, val, tests):
        return [RunOutcome(name, seed, f"runs/{name}/seed{seed}", TRAINED, val_acc=val, test_acc=test)
                for seed, test in enumerate(tests)]

    relu_best = runs("relu", 0.9, (0.85, 0.867, 0.885)) + runs("elu", 0.8, (0.8, 0.8, 0.8))
    check = just_use_relu_check(relu_best, 0.1)
    assert "(relu)" in check.claim and check.verdict == HOLDS and "best by validation itself" in check.margin
    ahead = just_use_relu_check(runs("relu", 0.8, (0.85, 0.87, 0.885)) + runs("elu", 0.9, (0.85, 0.862, 0.875)), 0.1)
    assert "(elu)" in ahead.claim and ahead.verdict == HOLDS and "ReLU is not behind" in ahead.margin, ahead.margin


def test_the_plots_name_a_setting_some_of_whose_seeds_diverged(tmp_path, monkeypatch):
    """ELU on one surviving seed of three was drawn as a bar like any other, SELU with every seed diverged as an
    empty slot: the labels say how many seeds diverged."""
    from cnnlab.experiments import activations
    from cnnlab.experiments.training import DIVERGED, TRAINED, RunOutcome, summary_rows

    def runs(name, diverged):
        return [RunOutcome(name, seed, f"runs/{name}/seed{seed}", DIVERGED if seed < diverged else TRAINED,
                           val_acc=None if seed < diverged else 0.9, test_acc=None if seed < diverged else 0.9)
                for seed in range(3)]

    outcomes = [run for name in ACT_SPECS for run in runs(name, {"elu": 2, "selu": 3}.get(name, 0))]
    rows = summary_rows(outcomes, list(ACT_SPECS), ["train_loss", "val_acc", "test_acc"])
    seen = {}
    monkeypatch.setattr(activations, "line_plot", lambda path, title, panels, **kw: seen.setdefault("curves", panels))
    monkeypatch.setattr(activations, "bar_plot", lambda path, title, labels, panels: seen.setdefault("bars", labels))
    activations._plots(tmp_path, outcomes, rows)
    assert "elu (2 of 3 diverged)" in seen["bars"] and "selu (3 of 3 diverged)" in seen["bars"]
    assert "relu" in seen["bars"]
    assert "elu (2 of 3 diverged)" in next(iter(seen["curves"].values()))
