"""The `normalize` experiment: its run at tiny, what each input scaling feeds the network (against the
uint8 pixels and independently computed statistics), the sensitivity measure against a hand-written
reference, the divergence rule, and refused data."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cnnlab.config import DataConfig
from cnnlab.data import ChannelStats, load_source, resolve_normalization
from cnnlab.data.loaders import make_loader
from cnnlab.experiments import (
    HOLDS,
    INCONCLUSIVE,
    REPORT_FILE,
    RESULT_FILE,
    SETTINGS_FILE,
    TABLE_CSV,
    THREADS_KEY,
    run_experiment,
)
from cnnlab.experiments import preprocessing as experiment
from cnnlab.experiments.training import DIVERGED, RunOutcome
from cnnlab.train.checkpoint import read_model_meta


SAID: list[str] = []  # what the tiny run said, in order (run_experiment's say: what the console prints)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("normalize") / "out"
    with pytest.MonkeyPatch.context() as patch:  # tests/conftest.py's private cache, for this module's fixture too
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        return run_experiment("normalize", "tiny", out=out, say=SAID.append), out


def test_the_claim_notes_and_rules_are_said_before_the_first_run(tiny):
    """The rules are fixed before any number: the statement comes first, then torch's thread count, then one line
    per finished run (the console prints these lines as they come, and the verdicts after them)."""
    from cnnlab.experiments import VERDICT_RULE
    from cnnlab.experiments.base import statement_lines

    statement = statement_lines(experiment.NORMALIZE)
    assert statement[0].startswith("normalize: ") and experiment.NORMALIZE.claim in statement[0]
    assert experiment.NORMALIZE.source[1] in statement[1] and statement[2] == f"rule: {experiment.NORMALIZE.rule}"
    assert statement[3] == VERDICT_RULE
    assert SAID[:len(statement)] == statement
    threads = json.loads((tiny[1] / SETTINGS_FILE).read_text())[THREADS_KEY]  # as the call started
    assert SAID[len(statement)] == f"torch threads: {threads}"
    run_lines = SAID[len(statement) + 1:]
    total = len(experiment.SCALINGS)  # tiny: one seed of each scaling, the experiment's every run
    assert [line.split()[:5] for line in run_lines] == [["run", str(k), "of", str(total), f"{scaling}/seed0"]
                                                        for k, scaling in enumerate(experiment.SCALINGS, 1)]


def test_tiny_writes_its_files_runs_and_checks(tiny):
    result, out = tiny
    for name in (TABLE_CSV, RESULT_FILE, REPORT_FILE, "normalize_loss.png", "normalize_sensitivity.png"):
        assert (out / name).is_file(), name
    assert [p.name for p in result.plots] == ["normalize_loss.png", "normalize_sensitivity.png"]
    assert result.runs == [out / "runs" / scaling / "seed0" for scaling in experiment.SCALINGS]
    training, sensitivity = result.checks
    assert training.verdict == INCONCLUSIVE and "fewer than 3 seeds" in training.margin  # tiny: one seed
    assert sensitivity.verdict == HOLDS  # deterministic
    settings = [row["setting"] for row in result.rows]
    # one summary row per setting, one row per run (docs/experiments.md), then the linear classifier's
    assert settings == list(experiment.SCALINGS) * 2 + [f"linear-{s}" for s in experiment.SCALINGS]
    per_run = [row for row in result.rows if "seed" in row]
    assert [(row["setting"], row["seed"]) for row in per_run] == [(s, 0) for s in experiment.SCALINGS]
    for row, run in zip(per_run, result.runs):
        assert row["run_dir"] == str(run) and row["train_loss"] is not None
        assert row["train_loss"] == pytest.approx(result.rows[experiment.SCALINGS.index(row["setting"])]["train_loss_mean"])


def test_the_rule_says_how_many_images_the_sensitivity_reads(tiny):
    result, _ = tiny
    per_class = experiment.SIZES["tiny"][0]
    train = len(load_source(DataConfig(spec="digits", train_per_class=per_class)).train)
    used = {row["images"] for row in result.rows if row["setting"].startswith("linear-")}
    assert train < experiment.SENSITIVITY_IMAGES and used == {train}  # tiny trains on fewer: all of them are read
    assert f"on {train} training images" in result.checks[1].margin
    rule = experiment.NORMALIZE.rule
    assert (f"the runs' first {experiment.SENSITIVITY_IMAGES:,} training images, or all of them where the runs "
            "train on fewer") in rule
    assert f"over {experiment.DRAWS} random perturbations W = {experiment.SIGMA:g} N(0, 1)" in rule


def test_each_run_recorded_the_normalisation_of_its_scaling(tiny):
    _, out = tiny
    digits = load_source(DataConfig(spec="digits", train_per_class=10))
    pixels = digits.train.images.double() / 255  # (N, 1, H, W) the runs' training images on the [0, 1] scale
    expected = {"normalised": ([pixels.mean().item()], [pixels.std(unbiased=False).item()]),  # np.mean / np.std
                "unit": ([0.0], [1.0]), "raw": ([0.0], [1 / 255])}
    for scaling, (mean, std) in expected.items():
        meta, _ = read_model_meta(out / "runs" / scaling / "seed0" / "best.safetensors")
        assert meta["mean"] == pytest.approx(mean, rel=1e-4) and meta["std"] == pytest.approx(std, rel=1e-4)


@pytest.mark.parametrize("scaling", experiment.SCALINGS)
def test_what_the_network_sees_under_each_scaling(scaling):
    """raw is the stored pixels 0..255, unit those / 255, normalised (pixels / 255 - mean) / std."""
    config = DataConfig(spec="digits", **experiment.SCALING_DATA[scaling])
    dataset = load_source(config)
    pixels = dataset.train.images[:64].double()  # uint8 values as stored, (64, 1, 32, 32)
    stats = SimpleNamespace(mean=(0.3,), std=(0.4,))  # stand-in training statistics for 'dataset'
    norm = resolve_normalization(config, stats, dataset.channels)
    loader = make_loader(dataset, "train", ChannelStats(mean=tuple(norm.mean), std=tuple(norm.std), pixels=0),
                         batch_size=64, train=False, shuffle=False)
    x, _ = next(iter(loader))
    reference = {"raw": pixels, "unit": pixels / 255, "normalised": (pixels / 255 - 0.3) / 0.4}[scaling]
    assert torch.allclose(x.double(), reference, atol=1e-4)
    if scaling == "raw":
        assert x.max().item() == pytest.approx(255, abs=1e-3) and x.min().item() == 0


def test_loss_sensitivity_against_a_numpy_reference():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(50, 12, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=generator)
    measured = experiment.loss_sensitivity(x, y, 3, sigma=0.1, draws=4, seed=7)
    draws = torch.Generator().manual_seed(7)
    changes = []
    for _ in range(4):
        w = (0.1 * torch.randn(3, 12, generator=draws, dtype=torch.float64)).numpy()
        logits = x.numpy() @ w.T
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        changes.append(abs(-log_p[np.arange(50), y.numpy()].mean() - math.log(3)))
    assert measured == pytest.approx(np.mean(changes), rel=1e-10)
    # the same draws on inputs 255 times larger move the loss much more: the notes' "very sensitive"
    assert experiment.loss_sensitivity(255 * x, y, 3, sigma=0.1, draws=4, seed=7) > 10 * measured


def outcome(setting, loss, status="trained"):
    return RunOutcome(setting=setting, seed=0, run_dir="x", status=status, train_loss=loss)


def test_a_diverged_run_counts_as_a_uniform_guess():
    outcomes = [outcome("raw", 0.5), outcome("raw", None, DIVERGED), outcome("raw", math.nan), outcome("unit", 0.1)]
    stats, diverged = experiment._loss_stats(outcomes, "raw", math.log(10))
    assert stats.values == (0.5, math.log(10), math.log(10)) and diverged == 2


def test_images_too_small_for_lenet5_are_refused(cli, tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (16, 16), color=40 * i).save(tmp_path / "data" / label / f"{i}.png")
    code, _, err = cli(["experiment", "normalize", "--size", "tiny", "--data", f"folder:{tmp_path / 'data'}",
                        "--out", str(tmp_path / "x")])
    assert code == 2 and "16x16" in err and "lenet5" in err
    assert not (tmp_path / "x").exists()


def test_data_without_a_test_split_leaves_test_acc_empty_not_val(tmp_path):
    """normalize reports test accuracy but checks training loss, so it takes class folders without a test split.
    Its runs were then scored on val and the score shown as test_acc; now they are not scored there."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("a", "b", "c", "d"):  # 4 classes: tiny's 10 images per class fill one batch of 32
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(16):
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(tmp_path / "data" / label / f"{i}.png")
    result = run_experiment("normalize", "tiny", data=f"folder:{tmp_path / 'data'}", out=tmp_path / "out")
    runs = [row for row in result.rows if "seed" in row]
    assert len(runs) == len(experiment.SCALINGS)
    assert all(row["val_acc"] is not None and row["test_acc"] is None for row in runs), runs
