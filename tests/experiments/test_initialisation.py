"""`init` and `residual-init` at tiny: verdicts, the numbers against independent references (the notes'
own numpy code, hand-built residual stacks), the identity property of zero-init, and the files."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.experiments import HOLDS, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments.initialisation import (
    INIT_WIDTH,
    NOTES_BATCH,
    NOTES_DEPTH,
    SCHEMES,
    init_spec,
    notes_input,
)

WIDTH = INIT_WIDTH["tiny"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("init")
    return {name: (run_experiment(name, "tiny", out=root / name), root / name) for name in ("init", "residual-init")}


def rows_of(rows, **match):
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


# --- init -------------------------------------------------------------------------------------


def test_init_every_check_holds_at_tiny(results):
    result, _ = results["init"]
    assert result.verdict == HOLDS
    assert [c.verdict for c in result.checks] == [HOLDS] * 8
    claims = " ".join(c.claim for c in result.checks)
    for words in ("tanh, N(0, 0.01)", "tanh, N(0, 0.05)", "tanh, Xavier", "ReLU, Xavier", "ReLU, Kaiming", "He et al."):
        assert words in claims
    assert len(result.rows) == 2 * len(SCHEMES) * NOTES_DEPTH


def _notes_numpy(act: str, std, seed: int) -> list[float]:
    """The notes' code: dims = [W] * 7; x = randn(16, W); W = std * randn(Din, Dout); x = act(x.dot(W))."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((NOTES_BATCH, WIDTH))
    stds = []
    for _ in range(NOTES_DEPTH):
        w = std(WIDTH) * rng.standard_normal((WIDTH, WIDTH))
        x = x.dot(w)
        x = np.tanh(x) if act == "tanh" else np.maximum(0, x)
        stds.append(float(x.std()))
    return stds


NOTES_STDS = {  # the notes' formulas, fixed stds scaled to keep Din * sigma^2 at the tiny width
    "N(0, 0.01)": lambda din: 0.01 * math.sqrt(4096 / din),
    "N(0, 0.05)": lambda din: 0.05 * math.sqrt(4096 / din),
    "Xavier": lambda din: 1 / math.sqrt(din),
    "Kaiming": lambda din: math.sqrt(2 / din),
}


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_init_std_per_layer_matches_the_notes_numpy_code(results, act):
    result, _ = results["init"]
    for label, formula in NOTES_STDS.items():
        reference = np.array([_notes_numpy(act, formula, seed) for seed in range(8)])  # (seeds, layers)
        mean, spread = reference.mean(axis=0), reference.std(axis=0, ddof=1)
        measured = np.array([r["std"] for r in rows_of(result.rows, act=act, scheme=label)])
        # cnnlab's net draws other random numbers: within 4 spreads of the notes' code (and 3% of the value)
        assert np.all(np.abs(measured - mean) <= 4 * spread + 0.03 * mean), (act, label, measured, mean, spread)


def test_model_init_draws_the_notes_formulas(results):
    """The weights cnnlab's mlp gets from model.init have the std the table records (sample std within 2%)."""
    from cnnlab.models import create_model

    result, _ = results["init"]
    for label, scheme, fixed in SCHEMES:
        spec = init_spec(scheme, fixed, WIDTH)
        model = create_model("mlp", num_classes=10, in_chans=1, input_size=int(math.isqrt(WIDTH)), depth=2,
                             width=WIDTH, act="relu", init=spec, bias_init=0.0)
        weight = model.features.layer2.linear.weight.detach()
        expected = NOTES_STDS[label](WIDTH)
        assert float(weight.std()) == pytest.approx(expected, rel=0.02)
        assert rows_of(result.rows, act="relu", scheme=label)[0]["weight_std"] == pytest.approx(expected, rel=1e-9)
        assert float(model.features.layer2.linear.bias.detach().abs().max()) == 0.0  # the notes' x.dot(W) has no bias


def test_init_tanh_saturation_and_relu_zero_share(results):
    result, _ = results["init"]
    saturated = rows_of(result.rows, act="tanh", scheme="N(0, 0.05)")
    assert all(r["near_one_share"] > 0.5 for r in saturated)  # most |a| > 0.9
    for r in rows_of(result.rows, act="relu"):
        assert r["zero_share"] + r["local_grad"] == pytest.approx(1.0)  # a ReLU output is 0 or its gradient is 1


def test_notes_input_is_the_notes_batch():
    x = notes_input(WIDTH)
    assert x.shape == (NOTES_BATCH, 1, 16, 16)
    with pytest.raises(ValueError):
        notes_input(300)  # not a square: the mlp could not read it as one image


# --- residual-init ------------------------------------------------------------------------------


def test_residual_init_every_check_holds_at_tiny(results):
    result, _ = results["residual-init"]
    assert result.verdict == HOLDS
    assert [c.verdict for c in result.checks] == [HOLDS] * 10
    assert len(result.rows) == 10 * 27  # 10 nets of 27 blocks


def test_zero_init_blocks_are_exactly_the_identity(results):
    result, _ = results["residual-init"]
    for net in ("resnet56", "preact_resnet56"):
        for norm in ("bn", "none"):
            rows = rows_of(result.rows, net=net, norm=norm, zero_init=True)
            identity = [r for r in rows if r["identity_shortcut"]]
            assert len(identity) == 25  # 27 blocks less the two that downsample
            assert all(r["out_equals_in"] and r["out_over_in"] == 1.0 for r in identity)
            off = rows_of(result.rows, net=net, norm=norm, zero_init=False)
            assert not any(r["out_equals_in"] for r in off)


def test_zero_init_stage_is_the_identity_independently():
    """Built here: with zero_init_residual the first stage of resnet56 returns the stem's output unchanged."""
    from cnnlab.models import create_model

    torch.manual_seed(3)
    model = create_model("resnet56", num_classes=10, zero_init_residual=True).train()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        stem = model.features.stem(x)
        assert torch.equal(model.features.stage1(stem), stem)
        model_plain = create_model("resnet56", num_classes=10).train()
        stem = model_plain.features.stem(x)
        assert not torch.equal(model_plain.features.stage1(stem), stem)


def _preact_stack_growth(blocks: int, chs: int, side: int, batch: int, seed: int) -> float:
    """A pre-activation residual stack written by hand: x += conv(relu(conv(relu(x)))), MSRA
    (std sqrt(2 / (9 C))), no norm, no bias. Returns the geometric mean of Var(out) / Var(in)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chs, side, side, generator=generator)
    std = math.sqrt(2 / (9 * chs))
    logs = []
    for _ in range(blocks):
        w1 = torch.randn(chs, chs, 3, 3, generator=generator) * std
        w2 = torch.randn(chs, chs, 3, 3, generator=generator) * std
        out = x + F.conv2d(F.relu(F.conv2d(F.relu(x), w1, padding=1)), w2, padding=1)
        logs.append(math.log(out.var().item() / x.var().item()))
        x = out
    return math.exp(sum(logs) / len(logs))


def test_preact_no_norm_growth_matches_a_hand_built_stack(results):
    result, _ = results["residual-init"]
    rows = rows_of(result.rows, net="preact_resnet56", norm="none", zero_init=False)[:9]  # stage 1: 16 ch, 16x16
    measured = math.exp(sum(math.log(r["out_over_in"]) for r in rows[1:]) / 8)  # block 1 reads the stem: left out
    references = [_preact_stack_growth(8, 16, 16, 8, seed) for seed in range(4)]
    reference = math.exp(sum(math.log(v) for v in references) / len(references))
    assert 1.5 < reference < 2.2  # the notes' doubling, a little less: zero padding at the borders
    assert measured == pytest.approx(reference, rel=0.2)


@pytest.mark.parametrize("name,plots", [("init", 3), ("residual-init", 1)])
def test_files_written(results, name, plots):
    result, out = results[name]
    with open(out / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["verdict"] == HOLDS and saved["seeds"] == 1 and saved["data"] is None
    assert len(result.plots) == plots
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert not result.runs  # nothing trained: no comparison page


def test_deterministic_experiments_refuse_data_and_seeds(tmp_path):
    with pytest.raises(CnnlabError, match="uses no data"):
        run_experiment("init", "tiny", out=tmp_path / "a", data="digits")
    with pytest.raises(CnnlabError, match="deterministic"):
        run_experiment("residual-init", "tiny", seeds=3, out=tmp_path / "b")
