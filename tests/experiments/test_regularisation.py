"""The dropout and augmentation experiments at `tiny`: files and runs, the dropout expectation test
(which must catch a dropout whose test-time rule is wrong), the sub-network ensemble against a hand
loop over the same masks, the clean training accuracy against a hand-made evaluation, the augmentation
settings, and refused data."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from cnnlab.data import load_source
from cnnlab.config import DataConfig
from cnnlab.experiments import HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments.regularisation import (
    DROPOUT_SETTINGS,
    ENSEMBLE_SEED,
    SUB_NETWORKS,
    augmentation_settings,
    draw_masks,
    dropout_moments,
    expectation_tests,
    sub_network_ensemble,
)
from cnnlab.layers.dropout import VanillaDropout
from cnnlab.run import MetaKey
from cnnlab.train.checkpoint import load_run_model


@pytest.fixture(scope="module")
def dropout(tmp_path_factory):
    out = tmp_path_factory.mktemp("dropout") / "exp"
    return run_experiment("dropout", "tiny", out=out), out


@pytest.fixture(scope="module")
def augmentation(tmp_path_factory):
    out = tmp_path_factory.mktemp("augmentation") / "exp"
    return run_experiment("augmentation", "tiny", out=out), out


def _files(result, out, plots):
    with open(out / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["size"] == "tiny" and saved["seeds"] == 1 and saved["data"] == "digits"
    assert (out / REPORT_FILE).is_file()
    assert {p.name for p in result.plots} == set(plots)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)


def test_dropout_files_and_verdicts(dropout):
    result, out = dropout
    _files(result, out, ["dropout_by_epoch.png", "dropout_gap.png"])
    verdicts = [c.verdict for c in result.checks]
    # The expectation of each kind is decided without seeds; the trained-net checks (the last two: the
    # ensemble reading, inverted then vanilla) need 3 seeds.
    assert verdicts == [HOLDS, HOLDS, INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE, INCONCLUSIVE]
    assert result.verdict == INCONCLUSIVE
    assert [c.claim.split(":")[0] for c in result.checks[4:]] == ["inverted dropout", "vanilla dropout"]
    assert all("sub-networks" in c.claim and "test pass" in c.margin for c in result.checks[4:])
    tests = [r for r in result.rows if r["setting"].startswith("expectation test")]
    assert [r["kind"] for r in tests] == ["Dropout", "Dropout", "VanillaDropout", "VanillaDropout"]
    for row in tests:
        assert row["expectation_holds"] and abs(row["z_total"]) <= 4
        assert abs(row["control_z_total"]) > 50  # the other kind's test-time rule is far off: the test has power


def test_dropout_runs_use_the_kind_and_rate(dropout):
    _, out = dropout
    for name, (kind, rate) in DROPOUT_SETTINGS.items():
        config = yaml.safe_load((out / "runs" / name / "seed0" / "config.yaml").read_text())
        assert config["model"]["dropout"] == kind and config["model"]["hidden_drop_rate"] == rate
        model = load_run_model(out / "runs" / name / "seed0").model
        drops = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        expected = nn.Dropout if kind == "inverted" else VanillaDropout
        assert [type(m) for m in drops] == ([] if rate is None else [expected] * 2)  # after each hidden layer


def test_ensemble_rows_in_the_table(dropout):
    """One row per p=0.5 run in table.csv and table.json; its test pass is the run's test_acc (the same best
    checkpoint on the same test split), and the sub-networks' numbers are consistent with each other."""
    result, out = dropout
    with open(out / TABLE_CSV) as handle:
        saved = [row for row in csv.DictReader(handle) if row["setting"].startswith("sub-network ensemble")]
    assert [row["setting"] for row in saved] == ["sub-network ensemble: inverted-p0.5",
                                                  "sub-network ensemble: vanilla-p0.5"]
    stored = json.loads((out / "table.json").read_text())
    assert sum(row["setting"].startswith("sub-network ensemble") for row in stored) == 2
    test_split = len(load_source(DataConfig(spec="digits")).test.labels)
    for row in (r for r in result.rows if r["setting"].startswith("sub-network ensemble")):
        setting = row["setting"].split(": ")[1]
        summary = next(r for r in result.rows if r["setting"] == setting and "seeds" in r)
        assert row["test_pass_acc"] == pytest.approx(summary["test_acc_mean"], abs=1e-9)
        assert row["masks"] == SUB_NETWORKS and row["images"] == test_split
        assert row["sub_acc_min"] <= row["sub_acc_mean"] <= row["sub_acc_max"]
        assert 0 <= row["test_ensemble_agreement"] <= 1


def _tiny_dropout_net():
    """Linear -> BN -> ReLU -> inverted dropout -> Linear -> ReLU -> vanilla dropout -> Linear: both of cnnlab's
    kinds, and a BatchNorm that must stay in eval mode."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5),
                          nn.Linear(12, 10), nn.ReLU(), VanillaDropout(0.3), nn.Linear(10, 4))
    with torch.no_grad():  # running statistics away from the identity, so that train-mode BN would show
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def _batches():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(40, 6, generator=generator)
    y = torch.randint(0, 4, (40,), generator=generator)
    return [(x[:25], y[:25]), (x[25:], y[25:])]  # two batches: a sub-network's mask must span both


def test_sub_network_ensemble_matches_a_hand_loop_over_the_same_masks():
    """numpy, mask by mask: each sub-network multiplies every image by its one mask, the average is of softmax
    probabilities; the test pass uses eval-mode dropout (inverted: nothing, vanilla: times 1 - p)."""
    model, batches, count = _tiny_dropout_net(), _batches(), 7
    found = sub_network_ensemble(model, batches, count, keep_probs=True)
    masks = draw_masks(model, batches[0][0], count)
    assert list(masks) == ["3", "6"] and masks["3"].shape == (count, 12) and masks["6"].shape == (count, 10)
    # The layers' own rules: inverted keeps at 1 / (1 - p), vanilla at 1; the masks are seeded and repeatable.
    assert set(masks["3"].unique().tolist()) <= {0.0, 2.0} and set(masks["6"].unique().tolist()) <= {0.0, 1.0}
    assert all(torch.equal(masks[k], draw_masks(model, batches[0][0], count)[k]) for k in masks)
    assert not torch.equal(masks["3"], draw_masks(model, batches[0][0], count, seed=ENSEMBLE_SEED + 1)["3"])

    w = {i: (model[i].weight.detach().double().numpy(), model[i].bias.detach().double().numpy()) for i in (0, 4, 7)}
    bn = model[1]
    x = torch.cat([b[0] for b in batches]).double().numpy()
    y = torch.cat([b[1] for b in batches]).numpy()

    def forward(m1, m2):
        h = x @ w[0][0].T + w[0][1]
        h = (h - bn.running_mean.double().numpy()) / np.sqrt(bn.running_var.double().numpy() + bn.eps)
        h = h * bn.weight.detach().double().numpy() + bn.bias.detach().double().numpy()
        h = np.maximum(h, 0) * m1
        h = np.maximum(h @ w[4][0].T + w[4][1], 0) * m2
        logits = h @ w[7][0].T + w[7][1]
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    test_probs = forward(1.0, 0.7)  # eval mode: inverted dropout passes through, vanilla scales by keep 0.7
    subs = [forward(masks["3"][k].double().numpy(), masks["6"][k].double().numpy()) for k in range(count)]
    mean = sum(subs) / count
    assert np.allclose(found.mean_probs.numpy(), mean, atol=1e-6)
    assert found.images == 40 and found.masks == count
    assert found.sub_accs == pytest.approx([float((p.argmax(1) == y).mean()) for p in subs], abs=1e-12)
    assert found.ensemble_acc == pytest.approx(float((mean.argmax(1) == y).mean()), abs=1e-12)
    assert found.test_pass_acc == pytest.approx(float((test_probs.argmax(1) == y).mean()), abs=1e-12)
    assert found.agreement == pytest.approx(float((mean.argmax(1) == test_probs.argmax(1)).mean()), abs=1e-12)
    # Not a vote and not averaged logits: those differ from the mean softmax on this net.
    logit_mean = np.mean([np.log(p) for p in subs], axis=0)
    assert not np.allclose(np.exp(logit_mean) / np.exp(logit_mean).sum(1, keepdims=True), mean, atol=1e-3)


def test_sub_networks_switch_only_dropout_and_leave_the_model_as_it_was():
    model, batches = _tiny_dropout_net(), _batches()
    model[5].train()  # one module in another mode: it must come back so, not be reset with the rest
    seen: dict[int, set] = {}
    for i, module in enumerate(model):
        module.register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, set()).add(m.training))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    sub_network_ensemble(model, batches, 4)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is where it was
    # Every non-dropout layer ran in eval mode only (BatchNorm on its running statistics); the dropout layers
    # ran in training mode only to draw their masks (and in eval mode for the test pass).
    assert all(seen[i] == {False} for i in (0, 1, 2, 4, 5, 7))
    assert seen[3] == {True, False} and seen[6] == {True, False}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running stats untouched
    assert [m.training for m in model] == [False] * 5 + [True] + [False] * 2
    assert isinstance(model[3], nn.Dropout) and isinstance(model[6], VanillaDropout)  # put back in their slots


def test_sub_networks_give_every_mode_back_when_the_masks_cannot_be_drawn():
    """Images the net cannot read (7 features for its 6) fail while the masks are drawn: every module still
    gets its own mode back, as after a pass that worked."""
    model = _tiny_dropout_net()
    for modes in ([True] * 8, [False] * 5 + [True] + [False] * 2):  # training; eval but one module
        for module, training in zip(model, modes):
            module.training = training
        with pytest.raises(RuntimeError):
            sub_network_ensemble(model, [(torch.randn(4, 7), torch.zeros(4, dtype=torch.long))], 2)
        assert [m.training for m in model] == modes


def test_clean_training_accuracy_matches_a_hand_evaluation(dropout):
    """The gap's training accuracy: the last weights on the 10-per-class subset, normalised by hand."""
    result, out = dropout
    row = next(r for r in result.rows if r["setting"] == "vanilla-p0.5" and "seeds" in r)  # the summary row
    run = next(r for r in result.rows if r["setting"] == "vanilla-p0.5" and "seed" in r)
    assert (run["train_clean"], run["gap"]) == (row["train_clean_mean"], row["gap_mean"])  # one seed
    loaded = load_run_model(out / "runs" / "vanilla-p0.5" / "seed0" / "last.safetensors")
    data = load_source(DataConfig(spec="digits", train_per_class=10))
    images = data.train.images.float() / 255  # (N, C, H, W) uint8 -> [0, 1]
    mean, std = torch.tensor(loaded.meta[MetaKey.MEAN]), torch.tensor(loaded.meta[MetaKey.STD])
    x = (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    with torch.no_grad():
        accuracy = float((loaded.model.eval()(x).argmax(1) == data.train.labels).float().mean())
    assert len(data.train.labels) == 100
    assert row["train_clean_mean"] == pytest.approx(accuracy, abs=1e-6)
    assert row["gap_mean"] == pytest.approx(accuracy - row["val_acc_mean"], abs=1e-6)


class WrongScaleDropout(nn.Dropout):
    """Inverted while training, but scaled by the keep probability at test time: the expectations differ."""

    def forward(self, x):
        return super().forward(x) if self.training else x * (1 - self.p)


@pytest.mark.parametrize("layer, holds", [(nn.Dropout(0.5), True), (VanillaDropout(0.3), True),
                                          (WrongScaleDropout(0.5), False), (WrongScaleDropout(0.1), False)])
def test_expectation_test_accepts_right_and_catches_wrong_dropout(layer, holds):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), layer, nn.Linear(64, 3))
    (test,) = expectation_tests(model, torch.randn(32, 8), draws=300)
    assert test.holds == holds and test.elements == 32 * 64
    assert test.p == layer.p


def test_dropout_moments_against_the_formula_and_rng_untouched():
    h = torch.linspace(0.5, 2.0, 400).view(4, 100)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    mean, var, test = dropout_moments(VanillaDropout(0.25), h, draws=2000)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is where it was
    keep = 0.75
    assert torch.allclose(test, keep * h.double())
    # Bernoulli(keep) * h: mean keep * h, variance keep * (1 - keep) * h^2 (within sampling error).
    assert float(((mean - keep * h) / h).abs().max()) < 0.06
    assert float((var / (keep * (1 - keep) * h.double() ** 2)).mean()) == pytest.approx(1.0, abs=0.05)


def test_augmentation_files_settings_and_left_out_flip(augmentation):
    result, out = augmentation
    _files(result, out, ["augmentation_gap.png", "augmentation_by_epoch.png"])
    settings = [r["setting"] for r in result.rows]
    # A summary row per setting, the left-out flip, then a row per run.
    assert settings == ["none", "shift", "erasing", "mixup", "cutmix", "strong", "flip"] + settings[:6]
    flip = result.rows[6]
    assert flip["aug"] == "left out" and "changes the label" in flip["note"]
    assert not (out / "runs" / "flip").exists()
    assert [c.verdict for c in result.checks] == [INCONCLUSIVE, INCONCLUSIVE]
    resolved = {name: yaml.safe_load((out / "runs" / name / "seed0" / "config.yaml").read_text())["aug"]
                for name in settings[:6]}
    assert resolved["none"]["crop"] == "none" and resolved["none"]["erasing"] == 0.0
    assert resolved["shift"]["crop"] == "translate" and resolved["shift"]["translate"] == 4  # 32 px / 8
    assert resolved["erasing"]["erasing"] == 0.25 and resolved["erasing"]["mixup_alpha"] == 0.0
    mixup = resolved["mixup"]
    assert (mixup["mixup_alpha"], mixup["cutmix_alpha"], mixup["mix_prob"]) == (0.2, 0.0, 1.0)
    assert (resolved["cutmix"]["mixup_alpha"], resolved["cutmix"]["cutmix_alpha"]) == (0.0, 1.0)
    assert resolved["strong"]["hflip"] == 0.0 and resolved["strong"]["randaugment_n"] == 2  # no mirrored digits
    assert all(resolved[name]["hflip"] == 0.0 for name in resolved)


def test_augmentation_settings_flip_only_where_label_preserving():
    garments = augmentation_settings(28, 1, hflip_safe=True)
    assert list(garments) == ["none", "flip", "shift", "erasing", "mixup", "cutmix", "strong"]
    assert garments["flip"] == {"preset": "none", "hflip": 0.5}
    assert garments["shift"]["translate"] == 4  # round(28 / 8), the light preset's shift
    assert "flip" not in augmentation_settings(32, 1, hflip_safe=False)


@pytest.mark.parametrize("name, needed", [("dropout", 10), ("augmentation", 10)])
def test_data_with_too_few_images_per_class_is_refused(cli, tmp_path, name, needed):
    code, _, err = cli(["experiment", name, "--size", "tiny", "--data", "synthetic:classes=3,train=15,val=9,test=9",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and f"{needed} per class" in err


def test_augmentation_refuses_images_smaller_than_its_network_takes(cli, tmp_path):
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (8, 8), color=20 * i).save(tmp_path / "data" / label / f"{i}.png")
    code, _, err = cli(["experiment", "augmentation", "--size", "tiny", "--data", f"folder:{tmp_path / 'data'}",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "8x8 pixels" in err and "vgg_mini" in err
