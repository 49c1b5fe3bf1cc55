"""`cnnlab check`: initial loss against ln C, per-layer statistics at init, overfitting a sample."""

import json
import math

import pytest
import torch
from torch import nn

from cnnlab.analysis.stats import LayerStats, layer_statistics
from cnnlab.config import RunConfig
from cnnlab.models import create_model
from cnnlab.tune.check import (balanced_sample, initial_loss, judge_initial_loss, judge_overfit, judge_statistics,
                               run_checks)

DIGITS = ["--model", "lenet5", "--data", "digits", "--set", "train.batch_size=32"]


@pytest.mark.parametrize(
    "loss, verdict",
    [
        (math.log(10), "PASS"),
        (math.log(10) * 1.08, "PASS"),
        (math.log(10) * 1.3, "WARN"),  # overconfident but not absurd
        (math.log(10) * 1.6, "FAIL"),  # the lecture's "far off"
        (math.log(10) * 0.7, "WARN"),
        (0.0, "FAIL"),
        (float("nan"), "FAIL"),
        (float("inf"), "FAIL"),
    ],
)
def test_initial_loss_verdicts(loss, verdict):
    result = judge_initial_loss(loss, 10)
    assert result.verdict == verdict
    assert "2.303" in result.summary  # ln 10, the expectation, is printed next to the measurement
    assert (result.remedy == "") == (verdict == "PASS")


def test_initial_loss_of_the_zoo_is_ln_c_and_a_loud_classifier_fails():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    batches = [(torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))) for _ in range(2)]
    loss = initial_loss(model, batches)
    assert abs(loss / math.log(10) - 1) < 0.1
    with torch.no_grad():
        model.fc.weight.mul_(300)  # logits in the hundreds: confidently wrong on 9 of 10 images
    loud = initial_loss(model, batches)
    assert judge_initial_loss(loud, 10).verdict == "FAIL" and loud > 1.5 * math.log(10)


def deep_tanh(scale: float, layers: int = 8, width: int = 256) -> nn.Sequential:
    """The lecture's initialisation demonstration: a deep tanh MLP with weights N(0, scale^2)."""
    torch.manual_seed(0)
    modules = []
    for _ in range(layers):
        linear = nn.Linear(width, width)
        nn.init.normal_(linear.weight, 0.0, scale)
        nn.init.zeros_(linear.bias)
        modules += [linear, nn.Tanh()]
    return nn.Sequential(*modules, nn.Linear(width, 10))


def stats_verdict(model, width=256):
    x, y = torch.randn(128, width), torch.randint(0, 10, (128,))
    return judge_statistics(layer_statistics(model, x, y))


def test_small_init_vanishes_large_init_saturates_xavier_passes():
    width = 256
    small = stats_verdict(deep_tanh(0.01))  # each layer multiplies the std by 0.01 * sqrt(256) = 0.16
    assert small.verdict == "FAIL" and "vanish" in small.summary
    large = stats_verdict(deep_tanh(1.0))  # pre-activations ~16x too large: tanh pinned at +-1
    assert large.verdict == "FAIL" and "saturated" in large.summary
    xavier = stats_verdict(deep_tanh(math.sqrt(1.0 / width) * 5 / 3))  # Xavier with tanh's gain 5/3
    assert xavier.verdict == "PASS", xavier.summary


def test_a_layer_whose_output_a_norm_rescales_is_not_compared():
    """The stem of a ResNet reads 1 channel, the convs after it read BatchNorm's unit-scale maps: their outputs sit
    10-30x apart at a correct He init, and the BatchNorm after each hands the next layer unit scale whatever its
    own. resnet18 with its He init and BatchNorm was told its activations explode and to add BatchNorm."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1)
    x, y = torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,))
    rows = layer_statistics(model, x, y)
    convs = [r for r in rows if r.kind == "Conv2d"]
    assert convs and all(r.normalised for r in convs)
    assert max(r.std for r in convs) / convs[0].std > 10  # the drift the check used to flag
    result = judge_statistics(rows)
    assert "explode" not in result.summary and "each feeds a norm that sets its scale" in result.summary
    assert "model.norm=bn" not in result.remedy


@pytest.mark.parametrize("norm, normalised", [
    (lambda: nn.BatchNorm1d(64), True), (lambda: nn.LayerNorm(64), True), (lambda: nn.GroupNorm(4, 64), True),
    (lambda: nn.BatchNorm1d(64).eval(), False),  # running statistics at init (mean 0, var 1): no rescaling
    (lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm1d(64)), False),  # the norm gets the ReLU's output
])
def test_only_a_norm_given_the_layer_s_own_output_that_rescales_it_counts(norm, normalised):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), norm(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    model[1].train = lambda mode=True: model[1]  # keep an eval() norm in eval mode while the pass trains
    rows = {row.name: row for row in layer_statistics(model, torch.randn(16, 32), torch.randint(0, 10, (16,)))}
    assert rows["0"].normalised is normalised and not rows["2"].normalised
    result = judge_statistics(list(rows.values()))
    if normalised:  # the second layer is the reference, named as such
        assert "x 2's (the first layer compared)" in result.summary and "1 that feed a norm" in result.summary


def test_a_layer_whose_output_also_goes_past_the_norm_is_compared():
    """A pre-activation ResNet's stem feeds its first block's norm and, past it, the identity shortcut: its scale
    reaches every later block, and a stem initialised 100x too large was no longer said to be."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("preact_resnet20", num_classes=10, in_chans=1)
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        stem.weight.mul_(100)
    rows = layer_statistics(model, torch.randn(8, 1, 32, 32), torch.randint(0, 10, (8,)))
    convs = [r for r in rows if r.kind == "Conv2d"]
    assert not convs[0].normalised and convs[1].normalised  # the stem also feeds the shortcut; conv1 only its norm
    result = judge_statistics(rows)
    assert result.verdict != "PASS" and "the first layer's" in result.summary, result.summary


def test_a_torchvision_model_s_classifier_is_known_and_left_out():
    """torchvision's models have no get_classifier(): their fc was compared as a hidden layer, and with every
    BatchNorm conv left out it became the reference, compared with itself."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model("tv:resnet18", num_classes=10, in_chans=1)
    rows = layer_statistics(model, torch.randn(4, 1, 32, 32), torch.randint(0, 10, (4,)))
    assert [r.name for r in rows if r.classifier] == ["fc"]
    result = judge_statistics(rows)
    assert "fc's" not in result.summary and "each feeds a norm that sets its scale" in result.summary, result.summary


def test_a_constant_reference_layer_is_flagged():
    rows = [LayerStats("0", "Linear", 0.0, 1.0, grad_ratio=0.1, normalised=True),
            LayerStats("2", "Linear", 0.0, 0.0, grad_ratio=0.1), LayerStats("4", "Linear", 0.0, 1.0, grad_ratio=0.1)]
    result = judge_statistics(rows)
    assert result.verdict == "FAIL" and "activations are constant at 2" in result.summary, result.summary


@pytest.mark.parametrize("name, flagged", [("resnet50", False), ("densenet121", False), ("plain56", True)])
def test_layers_a_norm_follows_are_compared_on_their_weights_directions(name, flagged):
    """Behind a norm, ||dL/dW|| / ||W|| goes as 1/||W||^2: a ResNet-50 at its He init spread 2.2e4x (FAIL for
    resnet101) from its channel widths alone. ||dL/dW|| x ||W|| cancels the init's scale and still shows a deep
    plain net's vanishing gradient (plain-56: 1.5e3x, plain-110 1.5e7x)."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1)
    rows = layer_statistics(model, torch.randn(16, 1, 32, 32), torch.randint(0, 10, (16,)))
    result = judge_statistics(rows)
    assert ("x between layers" in result.summary) == flagged and (result.verdict == "PASS") != flagged, result.summary
    # the summary names the measure it gives: these nets have no layer compared on ||dL/dW|| / ||W||
    assert "on the weights' directions" in result.summary
    if name != "densenet121":  # its convs come after their norms: those are compared on relative gradients
        assert "relative gradient spread" not in result.summary, result.summary


def test_a_zero_weight_behind_a_norm_is_flagged_not_a_division_by_zero():
    """A layer with zero weights that a norm follows, bypassed by a skip, still gets a gradient: its ||dL/dW|| x
    ||W|| is 0, and the spread divided by it (an internal error)."""

    class Skipped(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.stem_norm = nn.Linear(32, 64), nn.BatchNorm1d(64)
            self.branch, self.branch_norm = nn.Linear(64, 64), nn.BatchNorm1d(64)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            h = torch.relu(self.stem_norm(self.stem(x)))
            return self.head(torch.relu(h + self.branch_norm(self.branch(h))))

    torch.manual_seed(0)
    model = Skipped()
    with torch.no_grad():
        model.branch.weight.zero_()
    rows = layer_statistics(model, torch.randn(16, 32), torch.randint(0, 10, (16,)))
    result = judge_statistics(rows)
    assert result.verdict == "FAIL" and "unbounded (branch's weights are all zero)" in result.summary, result.summary


def test_relu6_is_a_relu_not_a_saturating_unit():
    """ReLU6 is a Hardtanh to torch: its outputs above 0.98 were counted as saturated tanh outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU6(), nn.Linear(64, 10))
    rows = layer_statistics(model, 4 * torch.randn(64, 32), torch.randint(0, 10, (64,)))
    relu6 = next(r for r in rows if r.kind == "ReLU6")
    assert relu6.saturated is None and relu6.dead is not None


def test_the_summary_speaks_of_the_unit_kinds_the_model_has():
    # A tanh network has no unit that can die: "dead ReLU units up to 0%" said nothing true about it
    xavier_tanh = stats_verdict(deep_tanh(math.sqrt(1.0 / 256) * 5 / 3)).summary
    assert "ReLU" not in xavier_tanh and "saturated tanh/sigmoid outputs up to" in xavier_tanh
    torch.manual_seed(0)
    relu = stats_verdict(nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10))).summary
    assert "dead ReLU units up to" in relu and "saturated" not in relu
    gelu = stats_verdict(nn.Sequential(nn.Linear(256, 64), nn.GELU(), nn.Linear(64, 10))).summary
    assert "no ReLU, tanh or sigmoid units" in gelu and "dead ReLU units up to" not in gelu


def test_dead_relus_and_blocked_gradients_are_flagged():
    torch.manual_seed(0)
    dead = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        dead[2].bias.fill_(-100.0)  # the second ReLU never fires
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))
    result = judge_statistics(layer_statistics(dead, x, y))
    assert result.verdict == "FAIL"
    assert "100% of the units after 3 never fire" in result.summary
    assert "no gradient reaches" in result.summary  # nothing flows back past a dead layer


def test_layer_statistics_match_a_hand_computation_and_leave_no_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    rows = layer_statistics(model, x, y)
    assert [r.name for r in rows] == ["0", "1", "2"]
    hidden = model[0](x)
    assert rows[0].std == pytest.approx(hidden.std().item())
    assert rows[1].mean == pytest.approx(hidden.relu().mean().item())
    assert rows[1].dead == pytest.approx((hidden <= 0).all(dim=0).float().mean().item())
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = model[0].weight.grad.norm() / model[0].weight.norm()
    assert rows[0].grad_ratio == pytest.approx(expected.item(), rel=1e-5)
    model.zero_grad(set_to_none=True)
    layer_statistics(model, x, y)
    assert all(p.grad is None for p in model.parameters())


def test_layer_statistics_run_in_the_first_steps_modes(monkeypatch):
    """Check 2 put the whole model in train mode where the first step runs frozen stages and train.bn_eval on
    BatchNorm's running statistics: its stds were 3-4x those training would see. The modes are the run's."""
    import cnnlab.tune.check as check

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[1].running_mean.fill_(3.0)  # far from the batch's: the two modes give other outputs
    x, y = 2 * torch.randn(16, 4), torch.randint(0, 2, (16,))
    held = {row.name: row for row in layer_statistics(model, x, y, train_mode=lambda m: (m.train(), m[1].eval()))}
    model.eval()
    with torch.no_grad():  # the ReLU's output with BatchNorm on its running statistics, by hand
        assert held["2"].mean == pytest.approx(model[2](model[1](model[0](x))).mean().item(), abs=1e-6)
    plain = {row.name: row for row in layer_statistics(model, x, y)}  # train mode: the batch's statistics
    assert plain["2"].mean != pytest.approx(held["2"].mean, abs=1e-3)
    seen = []
    real = check.layer_statistics
    monkeypatch.setattr(check, "layer_statistics", lambda *a, **k: seen.append(k) or real(*a, **k))
    config = RunConfig()
    config.model.name, config.data.spec = "lenet5", "digits"
    check.run_checks(config, batches=1, samples=16, steps=2)
    assert seen and callable(seen[0].get("train_mode"))  # the run's own modes (its plan), as checks 1 and 3


def test_check_2_reads_the_network_as_it_trains_after_the_head_only_epochs(tmp_path):
    """With train.probe_epochs, the first step trains the classifier alone: check 2 found every other layer
    frozen and compared nothing, for the fine-tuning set-up the docs recommend."""
    from cnnlab.config import apply_overrides
    from cnnlab.train.engine import train

    base = ["model.name=lenet5", "data.spec=synthetic:classes=3,train=48,val=12,test=12", "train.epochs=1",
            "train.batch_size=16", "log.quiet=true", "log.curves=false"]
    train(apply_overrides(RunConfig(), base), tmp_path / "source")
    config = apply_overrides(RunConfig(), [*base, f"model.init_from={tmp_path / 'source'}", "train.epochs=3",
                                           "train.probe_epochs=1"])
    statistics = run_checks(config, batches=1, samples=12, steps=2)[1]
    assert "frozen" not in statistics.summary and "4 weighted layers" in statistics.summary, statistics.summary


def test_run_checks_pass_on_lenet_digits_and_overfit_fails_at_a_tiny_lr():
    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size = "digits", "lenet5", 32
    results = run_checks(config, samples=32, steps=150)
    assert [r.verdict for r in results] == ["PASS", "PASS", "PASS"], [r.summary for r in results]
    history = results[2].details["history"]
    assert history[-1]["acc"] == 1.0 and history[-1]["step"] <= 150

    config.optim.lr = 1e-7
    stuck = run_checks(config, samples=32, steps=30)[2]
    assert stuck.verdict == "FAIL" and "barely moved" in stuck.remedy and "learning rate is too low" in stuck.remedy


def test_an_overfit_loss_that_climbs_is_called_a_learning_rate_too_high():
    def remedy(last_loss):
        history = [{"step": 0, "loss": 2.3, "acc": 0.1}, {"step": 300, "loss": last_loss, "acc": 0.9}]
        return judge_overfit(history, steps_budget=300, num_images=64, classes=10).remedy

    assert "rose" in remedy(4.8) and "too high" in remedy(4.8)  # a climb to twice the start
    assert "barely moved" in remedy(2.4) and "too low" in remedy(2.4)  # within 10% of the start: a stall
    assert "falls but too slowly" in remedy(1.0)
    assert "diverged" in remedy(float("nan"))


def test_an_overfit_loss_that_climbed_and_came_back_part_way_is_called_a_learning_rate_too_high():
    # At lr 0.7 LeNet-5 on the digits went 2.31 -> 19.7 at step 10, then down to 1.16: a run that stops there
    # ends below its start, yet raising the learning rate ("falls too slowly") is the wrong advice
    def judged(last_loss):
        history = [{"step": 0, "loss": 2.31, "acc": 0.1}, {"step": 10, "loss": 19.7, "acc": 0.2},
                   {"step": 150, "loss": 6.7, "acc": 0.5}, {"step": 300, "loss": last_loss, "acc": 0.7}]
        return judge_overfit(history, steps_budget=300, num_images=64, classes=10)

    for last_loss in (1.16, 2.2):  # below the start; within 10% of it
        result = judged(last_loss)
        assert result.verdict == "FAIL" and "rose to 19.7 at step 10" in result.remedy
        assert "too high" in result.remedy and "too slowly" not in result.remedy and "too low" not in result.remedy
    # a bump under 10% over the start is noise: the slow fall keeps its remedy
    small = [{"step": 0, "loss": 2.3, "acc": 0.1}, {"step": 10, "loss": 2.45, "acc": 0.2},
             {"step": 300, "loss": 1.0, "acc": 0.8}]
    assert "falls but too slowly" in judge_overfit(small, steps_budget=300, num_images=64, classes=10).remedy


def test_a_sample_fitted_after_the_loss_climbed_is_a_warning_not_a_pass():
    # At lr 1e4 LeNet-5 on the digits went 2.31 -> 36,691 at step 10 and still fitted the 64 images by step 60:
    # the same rate on the whole training split would not come back down
    def judged(peak):
        history = [{"step": 0, "loss": 2.31, "acc": 0.1}, {"step": 10, "loss": peak, "acc": 0.1},
                   {"step": 60, "loss": 0.0, "acc": 1.0}, {"step": 70, "loss": 50.0, "acc": 0.9}]
        return judge_overfit(history, steps_budget=300, num_images=64, classes=10)

    for peak in (36691.0, float("inf")):
        result = judged(peak)
        assert result.verdict == "WARN" and "100% of 64 images fitted after 60 steps" in result.summary
        assert f"rose to {peak:.3g} at step 10" in result.summary and "too high" in result.remedy
    assert judged(2.45).verdict == "PASS"  # a bump under 10% over the start is noise
    # only the checkpoints up to the fit count: a later climb is not what the sample's fit went through
    assert judged(2.0).verdict == "PASS" and judged(2.0).remedy == ""


def test_cli_exit_codes_and_json(cli):
    code, out, err = cli(["check", *DIGITS, "--samples", "32", "--steps", "150", "--json"])
    assert code == 0, err
    report = json.loads(out)
    assert report["verdict"] == "PASS" and [c["name"] for c in report["checks"]] == [
        "initial_loss", "init_statistics", "overfit_sample"]
    assert report["checks"][0]["details"]["expected"] == pytest.approx(math.log(10))

    code, out, err = cli(["check", *DIGITS, "--set", "optim.lr=1e-7", "--samples", "32", "--steps", "20"])
    assert code == 1  # a FAIL is a finding, not bad input
    assert "FAIL overfit_sample" in out and "remedy:" in out and "overall: FAIL" in out

    code, out, err = cli(["check", *DIGITS, "--samples", "0"])
    assert code == 2 and "--samples" in err and "Traceback" not in err


def test_overfitting_trains_through_the_engine_step_with_the_run_loss(monkeypatch):
    """The overfit loop is the engine's train_step: the loss takes train.aux_weight from the config (no
    hard-coded weight) and no label smoothing (regularisation is off for overfitting)."""
    from cnnlab.train import engine

    seen, original = [], engine.training_loss

    def recording(output, target, smoothing, aux_weight):
        seen.append((smoothing, aux_weight))
        return original(output, target, smoothing, aux_weight)

    monkeypatch.setattr(engine, "training_loss", recording)
    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size = "digits", "lenet5", 32
    config.train.aux_weight, config.aug.label_smoothing = 0.7, 0.2
    results = run_checks(config, samples=32, steps=5)
    assert len(seen) == results[2].details["history"][-1]["step"] == 5 and set(seen) == {(0.0, 0.7)}


def test_more_samples_or_batches_than_the_training_split_holds_uses_all_and_says_so(cli):
    tiny = ["--model", "lenet5", "--data", "synthetic:classes=3,train=40,val=12,test=12", "--set", "train.batch_size=16",
            "--set", "train.threads=1", "--steps", "20"]
    code, out, err = cli(["check", *tiny, "--samples", "500", "--batches", "9"])
    assert code in (0, 1)
    assert "warning: --samples 500: the training split has 40 images; the overfitting check fits all 40" in err
    assert ("warning: --batches 9: the training split gives 3 batches (40 images at batch size 16); the initial "
            "loss reads all 3") in err
    code, out, err = cli(["check", *tiny, "--samples", "500", "--batches", "9", "--json"])
    report = json.loads(out)
    overfit = next(c for c in report["checks"] if c["name"] == "overfit_sample")
    assert overfit["details"]["images"] == 40 and "--samples 500" in overfit["details"]["warnings"][0]
    assert "warning: --samples 500" in err  # stdout stays JSON, the warning goes to stderr
    code, out, err = cli(["check", *tiny, "--samples", "40", "--batches", "3"])
    assert "warning" not in err  # exactly what the split holds: nothing to say


def test_check_and_lr_find_say_when_precision_auto_steps_in_bf16(monkeypatch, capsys):
    """On a CPU with bf16 units, precision auto makes check and lr-find step in bf16 as train does: each says so."""
    from cnnlab.train import engine
    from cnnlab.tune.lr_find import lr_sweep

    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size = "synthetic:classes=3,train=48,val=12,test=12", "lenet5", 16
    for bf16_units in (False, True):
        monkeypatch.setattr(engine, "cpu_has_bf16_units", lambda: bf16_units)
        run_checks(config, samples=16, steps=2, batches=1)
        lr_sweep(config, num_steps=12)
        assert capsys.readouterr().err.count("trains in bf16 autocast here") == (2 if bf16_units else 0)


def test_a_sample_the_untrained_model_already_fits_is_no_pass():
    """A tiny sample of one class can be right before any step; reaching 100% then proves nothing."""
    from cnnlab.train.engine import setup_run
    from cnnlab.tune.check import overfit_sample, regularisation_off

    config = RunConfig()
    config.data.spec = "synthetic:classes=3,train=24,val=12,test=12"
    config.model.name, config.train.threads = "lenet5", 1
    run = setup_run(regularisation_off(config), loaders=False, deterministic=False)
    size = run.dataset.image_size
    x, y = torch.randn(4, run.dataset.channels, size, size), torch.zeros(4, dtype=torch.long)
    classifier = [m for m in run.model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        classifier.bias[0] += 20.0  # every image comes out as class 0, its label, before training
    history = overfit_sample(run, x, y, batch_size=4, steps=20)
    assert history[0]["step"] == 0 and history[0]["acc"] == 1.0 and history[-1]["step"] >= 1
    result = judge_overfit(history, steps_budget=20, num_images=4, classes=1)
    assert result.verdict == "WARN", result.summary
    assert "before the first step" in result.summary and "proves nothing about learning" in result.summary
    assert "after 0 steps" not in result.summary and "--samples" in result.remedy

    diverged = history[:1] + [{"step": 10, "loss": float("nan"), "acc": 0.0}]
    assert judge_overfit(diverged, steps_budget=20, num_images=4, classes=1).verdict == "FAIL"  # a broken run still fails


def test_the_overfit_verdicts_count_one_image_in_the_singular():
    # --samples 1: the summaries read "the one image", "of 1 image", never "all 1 images" or "1 images"
    fitted_before = [{"step": 0, "loss": 0.5, "acc": 1.0}, {"step": 10, "loss": 0.01, "acc": 1.0}]
    before = judge_overfit(fitted_before, steps_budget=20, num_images=1, classes=1).summary
    assert before.startswith("the one image was classified correctly before the first step"), before
    not_fitted = [{"step": 0, "loss": 2.3, "acc": 0.0}, {"step": 20, "loss": 2.2, "acc": 0.0}]
    failed = judge_overfit(not_fitted, steps_budget=20, num_images=1, classes=1)
    assert failed.verdict == "FAIL" and "of 1 image after 20 steps" in failed.summary, failed.summary
    assert "of 64 images after" in judge_overfit(not_fitted, steps_budget=20, num_images=64, classes=10).summary


def test_the_overfit_progress_line_counts_the_images_it_fits(cli):
    # 40 training images: --samples 500 fits all 40, and the progress line says so from the start
    code, out, err = cli(["check", "--model", "lenet5", "--data", "synthetic:classes=3,train=40,val=12,test=12",
                          "--set", "train.batch_size=16", "--set", "train.threads=1", "--steps", "5",
                          "--samples", "500"])
    assert code in (0, 1), err
    assert "checking: overfitting 40 images" in out and "overfitting 500" not in out


def test_a_sample_of_one_class_fitted_by_training_is_a_warn_not_a_pass():
    """Wrong before the first step, right after: with one class in the sample the classifier's bias alone did it."""
    history = [{"step": 0, "loss": 2.3, "acc": 0.0}, {"step": 10, "loss": 0.01, "acc": 1.0}]
    one = judge_overfit(history, steps_budget=300, num_images=8, classes=1, split_classes=10)
    assert one.verdict == "WARN" and "one class" in one.summary and "bias alone" in one.summary
    assert "--samples" in one.remedy and one.details["classes"] == 1
    only = judge_overfit(history, steps_budget=300, num_images=8, classes=1, split_classes=1)
    assert only.verdict == "WARN" and "single class" in only.remedy  # more samples cannot help there
    assert judge_overfit(history, steps_budget=300, num_images=8, classes=2).verdict == "PASS"


def test_the_overfitting_sample_takes_the_classes_in_turn():
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 3)  # one class dominates: a shuffled draw is mostly class 0
    index = balanced_sample(labels, 9, seed=0)
    assert len(set(index.tolist())) == 9 and torch.bincount(labels[index]).tolist() == [3, 3, 3]
    assert sorted(labels[index[:3]].tolist()) == [0, 1, 2]  # every class before any class's second image
    assert torch.bincount(labels[balanced_sample(labels, 11, seed=0)]).tolist() == [4, 4, 3]  # class 2 ran out
    assert len(set(labels[balanced_sample(labels, 2, seed=0)].tolist())) == 2
    assert sorted(balanced_sample(labels, 500, seed=0).tolist()) == list(range(len(labels)))  # fewer: all of them
    assert torch.equal(balanced_sample(labels, 9, seed=3), balanced_sample(labels, 9, seed=3))


def test_check_overfits_every_class_and_calls_a_one_image_sample_a_warn():
    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size, config.train.threads = "digits", "lenet5", 32, 1
    overfit = run_checks(config, samples=10, steps=150, batches=1)[2]
    assert overfit.details["classes"] == 10 and overfit.verdict == "PASS", overfit.summary
    single = run_checks(config, samples=1, steps=30, batches=1)[2]
    assert single.verdict == "WARN" and single.details["classes"] == 1, single.summary
    assert "--samples" in single.remedy


def test_a_network_starting_with_its_trained_classifier_is_not_judged_against_ln_c(tmp_path):
    """From a run trained on the same classes, model.init_from loads the classifier too: a loss far below ln C
    is what the source learnt, not a leak (it was a FAIL, exit code 1). Above chance it is still flagged, with a
    remedy about the classes and preprocessing instead of the initialisation; a fresh classifier is unchanged."""
    from cnnlab.train.engine import train

    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size = "digits", "lenet5", 32
    source = RunConfig()
    source.data, source.model, source.train.batch_size = config.data, config.model, 32
    source.train.epochs, source.log.quiet = 3, True
    config.model.init_from = str(train(source, tmp_path / "source").run_dir)
    results = run_checks(config, samples=16, steps=20)
    first = results[0]
    assert first.details["ratio"] < 0.5  # the source learnt the digits: below the FAIL line of a fresh network
    assert first.verdict == "PASS" and "comes trained from model.init_from" in first.summary, first.summary
    assert first.details["trained_classifier"] is not None

    source_text = "model.init_from 'runs/src'"
    above = judge_initial_loss(2.8, 10, trained_classifier=source_text)
    assert above.verdict == "WARN" and "data.classes" in above.remedy and "init of the last layer" not in above.remedy
    assert judge_initial_loss(4.0, 10, trained_classifier=source_text).verdict == "FAIL"
    assert judge_initial_loss(0.3, 10).verdict == "FAIL"  # a fresh classifier that low still points at a leak

    fitted = [{"step": 0, "loss": 0.05, "acc": 1.0}, {"step": 10, "loss": 0.01, "acc": 1.0}]
    warned = judge_overfit(fitted, steps_budget=10, num_images=64, classes=10, trained_classifier=source_text)
    assert warned.verdict == "WARN" and "without model.init_from" in warned.remedy


@pytest.mark.parametrize("change, pattern", [
    (lambda c: setattr(c.train, "threads", "2"), "train.threads must be int, got '2'"),
    (lambda c: setattr(c, "train", {"epochs": 1}), "The config's train section must be a TrainConfig, got dict"),
])
def test_check_and_lr_find_name_a_bad_key_of_a_config_built_in_python(change, pattern):
    """Both read train.threads before their set-up's own check: a bad value there was an internal error
    (TypeError, AttributeError) instead of a message naming the key."""
    from cnnlab.errors import CnnlabError
    from cnnlab.tune.lr_find import lr_sweep

    for run in (run_checks, lr_sweep):
        config = RunConfig()
        change(config)
        with pytest.raises(CnnlabError, match=pattern):
            run(config)


def test_initial_loss_runs_the_model_in_the_first_steps_modes(monkeypatch):
    """With train.bn_eval=all the first training step normalises with the running statistics: the initial loss
    is measured so too (it ran every BatchNorm on the batch's statistics), and equals the eval-mode loss of a
    BatchNorm-only model by hand."""
    import cnnlab.tune.check as check

    seen = []

    def spy(model, batches, train_mode=None):
        loss = initial_loss(model, batches, train_mode=train_mode)
        seen.append(([m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)], model, batches, loss))
        return loss

    monkeypatch.setattr(check, "initial_loss", spy)
    config = RunConfig()
    config.data.spec, config.model.name, config.train.batch_size, config.train.threads = "digits", "resnet8", 32, 1
    config.train.bn_eval = "all"
    check.run_checks(config, samples=4, steps=2, batches=1)
    modes, model, batches, loss = seen[0]
    assert modes and not any(modes)
    by_hand = nn.functional.cross_entropy(model.eval()(batches[0][0]), batches[0][1]).item()
    assert math.isclose(loss, by_hand, rel_tol=1e-5)
    assert not math.isclose(initial_loss(model, batches), by_hand, rel_tol=1e-3)  # plain train mode differs


@pytest.mark.parametrize("counts, named", [(dict(steps=2.5), "steps=2.5"), (dict(samples="8"), 'samples="8"'),
                                           (dict(batches=None), "batches=null"), (dict(steps=0), "steps=0")])
def test_counts_that_are_not_whole_numbers_are_refused_in_words(counts, named):
    """They used to reach the checks and fail there with TypeErrors (a slice of 8.5 images, '<' between str and
    int); refused before any set-up now, naming the value."""
    from cnnlab.errors import CnnlabError

    with pytest.raises(CnnlabError, match=f"must be whole numbers of at least 1, got {named}"):
        run_checks(RunConfig(), **counts)


def test_activations_all_zero_at_init_are_flagged_not_summarised_as_1x():
    """Zero weights make every activation 0: the summary said 'activation std 1x..1x the first layer's' (a default
    for layers with no scale to compare) and 'spread infx', and named no constant activations."""
    model = deep_tanh(0.01, layers=3)
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.zeros_(layer.weight)
    result = stats_verdict(model)
    assert result.verdict == "FAIL"
    assert "1x..1x" not in result.summary and "infx" not in result.summary
    assert "activation std not comparable (the first layer's is 0)" in result.summary
    assert "activations are constant at" in result.summary and "std 0 at init" in result.summary
    assert "relative gradient spread unbounded" in result.summary


def test_a_start_far_above_ln_c_is_the_inits_and_a_broken_step_measures_no_accuracy():
    """The loss 2e5 x ln C before any step, then NaN: the remedy said 'the learning rate is too high' and the
    summary '0.0% of 64 images', an accuracy never measured at the broken step."""
    history = [{"step": 0, "loss": 460_000.0, "acc": 0.09}, {"step": 3, "loss": math.nan, "acc": None}]
    result = judge_overfit(history, 30, 64, classes=10, num_classes=10)
    assert result.verdict == "FAIL"
    assert "the loss became nan at step 3" in result.summary and "0.0% of" not in result.summary
    assert "9.0% of 64 images fitted at best before it" in result.summary
    assert "the initialisation is off before any step" in result.remedy and "(check 1)" in result.remedy
    # from ln C, a loss that breaks is the rate's
    sane = [{"step": 0, "loss": 2.31, "acc": 0.09}, {"step": 3, "loss": math.nan, "acc": None}]
    assert judge_overfit(sane, 30, 64, classes=10, num_classes=10).remedy.startswith("The loss diverged")


def test_exploding_hidden_layers_are_named_as_the_cause_of_a_large_initial_loss(cli):
    """Check 1's remedy said to scale down the classifier when the hidden layers blew the signal up 1e6x (check 2
    saw it): it now points at those layers' init."""
    code, out, _ = cli(["check", "--model", "resnet8", "--data", "digits", "--set", "model.init=normal:1",
                        "--set", "model.norm=none", "--steps", "10", "--batches", "1", "--samples", "8", "--json"])
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["initial_loss"]["verdict"] == "FAIL" and "explode" in " ".join(checks["init_statistics"]["details"]["flags"])
    assert "activations explode in the hidden layers (check 2)" in checks["initial_loss"]["remedy"]
    assert "initialisation is off before any step" in checks["overfit_sample"]["remedy"]


def test_a_first_layer_whose_output_is_not_finite_is_not_called_std_0():
    model = deep_tanh(1e37, layers=2)  # the first layer's outputs overflow to inf, their std is nan
    result = stats_verdict(model)
    assert result.verdict == "FAIL" and "(the first layer's is not finite)" in result.summary
    assert "the first layer's is 0" not in result.summary


def test_a_loss_not_finite_before_any_step_is_the_inits_not_the_learning_rates():
    """mlp,init=normal:1e20 gives NaN at step 0: check 3 said 'fitted at best' (argmax of NaN logits) and blamed
    the learning rate, since NaN > 1.5 ln C is False."""
    history = [{"step": 0, "loss": math.nan, "acc": 0.094}, {"step": 1, "loss": math.nan, "acc": None}]
    result = judge_overfit(history, 30, 64, classes=10, num_classes=10)
    assert result.verdict == "FAIL" and "fitted at best" not in result.summary and "9.4%" not in result.summary
    assert "before the first step" in result.summary
    assert "diverged" not in result.remedy and "learning rate is not the cause" in result.remedy
    assert judge_initial_loss(math.nan, 10).remedy in result.remedy  # check 1's remedy, said once for both


def test_check_json_writes_non_finite_numbers_as_null(cli):
    """json.dumps writes NaN as a bare token, which strict JSON parsers refuse."""
    code, out, err = cli(["check", "--model", "mlp,init=normal:1e20", "--data", "digits", "--samples", "16",
                          "--steps", "5", "--set", "train.precision=fp32", "--json"])
    assert code == 1, err

    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    report = json.loads(out, parse_constant=refuse)
    assert report["checks"][0]["details"]["loss"] is None and report["checks"][2]["details"]["history"][0]["loss"] is None


def test_statistics_of_loaded_weights_do_not_recommend_an_init():
    """With model.init_from the run never uses model.init: the remedy pointed at the init scheme all the same."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[2].weight.mul_(1e3)  # the second layer explodes the activations
    rows = layer_statistics(model, torch.randn(32, 16), torch.randint(0, 3, (32,)))
    fresh = judge_statistics(rows)
    assert fresh.verdict != "PASS" and "He/Kaiming" in fresh.remedy
    loaded = judge_statistics(rows, loaded_from="model.init_from 'runs/src'")
    assert loaded.verdict == fresh.verdict and "He/Kaiming" not in loaded.remedy
    assert "loaded from model.init_from 'runs/src'" in loaded.summary and "model.init does not apply" in loaded.remedy
    assert "model.norm=bn" not in loaded.remedy  # a norm the source lacks leaves its weights without their tensors
    # check 3 too: a start loss far above ln C from loaded weights is the preprocessing's, not an init's
    high = [{"step": 0, "loss": 40.0, "acc": 0.1}, {"step": 300, "loss": 39.0, "acc": 0.1}]
    assert "He/Kaiming" in judge_overfit(high, 300, 64, classes=10, num_classes=10).remedy
    remedy = judge_overfit(high, 300, 64, classes=10, num_classes=10, loaded_from="model.init_from 'runs/src'").remedy
    assert "from the weights loaded from model.init_from 'runs/src'" in remedy and "He/Kaiming" not in remedy
    assert "model.norm=bn" not in remedy and "model.init does not apply" in remedy


def test_a_loss_that_fell_then_climbed_back_did_move():
    """mlp,width=1,depth=1: 2.303 -> 1.80 at step 20, then back to 2.30 (a dead unit) was 'barely moved: the
    learning rate is too low'."""
    history = [{"step": 0, "loss": 2.303, "acc": 0.1}, {"step": 20, "loss": 1.80, "acc": 0.3},
               {"step": 300, "loss": 2.30, "acc": 0.11}]
    remedy = judge_overfit(history, 300, 64, classes=10, num_classes=10).remedy
    assert "barely moved" not in remedy and "too low" not in remedy
    assert "fell to 1.8 at step 20" in remedy and "capacity" in remedy and "dead ReLUs" in remedy
    flat = [{"step": 0, "loss": 2.303, "acc": 0.1}, {"step": 20, "loss": 2.25, "acc": 0.1},
            {"step": 300, "loss": 2.28, "acc": 0.1}]
    assert "barely moved" in judge_overfit(flat, 300, 64, classes=10, num_classes=10).remedy


def test_frozen_layers_are_counted_as_frozen_not_as_missing():
    """With model.freeze=backbone only the classifier trains: the check said "no conv or linear layer found" of a
    resnet8, and with part of it frozen counted only the layers that train as the model's weighted layers."""
    model = create_model("resnet8", num_classes=3, in_chans=1)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())  # 7: the stem and two per block
    classifier = set(model.get_classifier().parameters())
    for p in model.parameters():
        p.requires_grad_(p in classifier)
    result = judge_statistics(layer_statistics(model, x, y))
    assert result.verdict == "PASS" and f"the other {convs} weighted layers are frozen" in result.summary
    assert "no conv or linear layer" not in result.summary and len(result.details["frozen"]) == convs
    # the last stage trains (2 convs), the rest is frozen
    for name, p in model.named_parameters():
        p.requires_grad_(p in classifier or name.startswith("features.stage3"))
    result = judge_statistics(layer_statistics(model, x, y))
    trained = sum(isinstance(m, nn.Conv2d) for m in model.features.stage3.modules())
    assert f"{trained} weighted layers that train ({convs - trained} frozen, left out):" in result.summary

    # a layer that trains but gets no gradient from the loss (an auxiliary head) is not called frozen
    class WithSide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.side, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 1), nn.Linear(4, 3)

        def get_classifier(self):
            return self.fc

        def forward(self, x):
            x = torch.relu(self.conv(x))
            self.side(x)  # computed, not in the logits
            return self.fc(x.mean((2, 3)))

    result = judge_statistics(layer_statistics(WithSide(), x, y))
    assert "frozen" not in result.summary and result.details["frozen"] == []


def test_the_layer_table_shows_the_measure_the_layers_a_norm_follows_are_judged_on():
    from dataclasses import asdict

    from cnnlab.cli import _layer_table

    rows = [asdict(LayerStats("conv", "Conv2d", 0.0, 1.0, grad_ratio=0.004, direction_grad=0.125, normalised=True)),
            asdict(LayerStats("fc", "Linear", 0.0, 1.0, grad_ratio=0.05, direction_grad=0.9))]
    table = _layer_table(rows)
    header = [column.header for column in table.columns]
    assert header[-1] == "|dW|x|W| (norm follows)"
    cells = [list(column.cells) for column in table.columns][-1]
    assert cells == ["0.125", ""]  # only for the layer a norm follows
