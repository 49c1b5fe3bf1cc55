"""The four deterministic experiments at `tiny`: verdicts, numbers against hand formulas, files,
resume, and refused input."""

import csv
import json
import math
import re
from decimal import Decimal
from pathlib import Path

import pytest
import torch
import torchvision

from cnnlab.errors import CnnlabError
from cnnlab.experiments import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    RESULT_FILE,
    TABLE_CSV,
    TABLE_JSON,
    Check,
    combine_verdicts,
    get_experiment,
    list_experiments,
    run_experiment,
)

NAMES = ["padding-stride", "receptive-field", "complexity", "bottleneck"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Each experiment run once at tiny; shared by the tests below."""
    root = tmp_path_factory.mktemp("experiments")
    return {name: (run_experiment(name, "tiny", out=root / name), root / name) for name in NAMES}


def row(rows, **match):
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def test_list_in_order_with_claim_rule_and_sizes():
    names = [e.name for e in list_experiments()]
    assert [n for n in names if n in NAMES] == NAMES  # in the order registered, among the others
    for e in list_experiments():
        info = e.describe()
        assert info["claim"] and info["rule"] and info["source"]["quote"] and info["available"]
        assert set(info["sizes"]) == {"tiny", "quick", "full"}


# Where an experiment's own texts cite a note: "(004: ...)" inside a quote, "note 004's" or "notes 002 and 000" in
# its claim, rule, runs or a check's claim.
QUOTE_CITATION = re.compile(r"(?<![\d.])(\d{3}):")
TEXT_CITATION = re.compile(r"\bnotes? (\d{3}(?:(?:,? and |, |,? also )\d{3})*)")


def _cited(text: str) -> set[str]:
    return {note for match in TEXT_CITATION.finditer(text) for note in re.findall(r"\d{3}", match.group(1))}


def test_every_experiment_lists_every_note_its_texts_cite():
    """Every note an experiment's claim, quote, rule or runs cite is among its notes, the source's first, each
    once; the checks' own citations are the next test's."""
    for experiment in list_experiments():
        notes = experiment.cited_notes
        assert notes[0] == experiment.source[0] and len(set(notes)) == len(notes)
        assert all(re.fullmatch(r"\d{3}", note) for note in notes)
        cited = set(QUOTE_CITATION.findall(experiment.source[1]))
        for text in (experiment.claim, experiment.rule, experiment.runs):
            cited |= _cited(text)
        assert cited <= set(notes), (experiment.name, cited - set(notes))
    # Read from the notes by hand: complexity checks note 004's formulas beside note 002's sentences;
    # receptive-field's three 3x3 convs = one 7x7 is notes 002's and 000's, its two = one 5x5 note 004's.
    assert get_experiment("complexity").cited_notes[:2] == ["002", "004"]
    assert get_experiment("receptive-field").cited_notes == ["004", "002", "000"]
    assert get_experiment("bottleneck").cited_notes == ["000", "004", "003"]


def test_every_experiment_lists_every_note_its_documented_claim_cites():
    """docs/experiments.md gives each experiment's claim with its notes ("**Claim** (note 004, also 002 and
    000)", "(note 000: ...)"): each is among the notes the experiment lists."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "experiments.md").read_text()
    for experiment in list_experiments():
        section = docs.split(f"\n## {experiment.name}\n", 1)[1].split("\n## ", 1)[0]
        claim = section[section.index("**Claim**"):section.index("**Rule**")]
        cited = _cited(claim) | set(QUOTE_CITATION.findall(claim))
        assert cited and cited <= set(experiment.cited_notes), (experiment.name, cited - set(experiment.cited_notes))


def test_the_notes_listed_include_every_note_a_check_cites(results):
    """A check citing a note ("note 004 'pooling parameters = 0'") checks that note's claim: the experiment lists
    it among its notes (list --json, result.json)."""
    for name in NAMES:
        result, out = results[name]
        cited = {note for check in result.checks for note in _cited(check.claim)}
        notes = get_experiment(name).cited_notes
        assert cited <= set(notes), (name, cited - set(notes))
        assert json.loads((out / RESULT_FILE).read_text())["notes"] == notes
    assert "004" in {note for check in results["complexity"][0].checks for note in _cited(check.claim)}


def test_combine_verdicts_rule():
    h, f, i = Check("a", HOLDS, ""), Check("b", FAILS, ""), Check("c", INCONCLUSIVE, "")
    assert combine_verdicts([h, h]) == HOLDS
    assert combine_verdicts([h, i]) == INCONCLUSIVE
    assert combine_verdicts([h, i, f]) == FAILS
    assert combine_verdicts([]) == INCONCLUSIVE


def test_receptive_field_tiny(results):
    result, _ = results["receptive-field"]
    assert result.verdict == HOLDS
    c, hw = 8, 16 * 16  # tiny: C = 8 at 16x16, 'same' padding
    for layers, kernel, field in ((2, 3, 5), (1, 5, 5), (3, 3, 7), (1, 7, 7)):
        r = row(result.rows, layers=layers, kernel=kernel)
        assert r["receptive_field"] == field  # 1 + layers * (kernel - 1)
        assert r["params"] == layers * (kernel * kernel * c * c + c)  # weights + biases
        assert r["macs"] == layers * kernel * kernel * c * c * hw
    assert any("25 vs 18" in ch.margin and ch.verdict == HOLDS for ch in result.checks)


def test_padding_stride_formulas_against_torch_on_real_tensors(results):
    """Note 003's output-size formulas, checked here on real CPU tensors (F.pad then F.conv2d, not the
    experiment's meta modules) over the tiny grid, and the experiment's case counts recounted by hand."""
    from cnnlab.experiments.static import PS_SETTINGS

    result, _ = results["padding-stride"]
    assert result.verdict == HOLDS and all(ch.verdict == HOLDS for ch in result.checks)
    max_n, max_k, max_p, max_s = PS_SETTINGS["tiny"][1]
    cases = keeps = divides = 0
    for k in range(1, max_k + 1):
        weight = torch.ones(1, 1, k, k)
        for p in range(max_p + 1):
            for n in range(max(1, k - p), max_n + 1):
                x = torch.nn.functional.pad(torch.ones(1, 1, n, n), ((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
                for s in range(1, max_s + 1):
                    side = torch.nn.functional.conv2d(x, weight, stride=s).shape[-1]
                    assert side == (n - k + p + s) // s, (n, k, p, s)  # d2l: floor((n - k + p + s) / s)
                    if s == 1:
                        assert side == n - k + p + 1
                    if p == k - 1:
                        keeps += s == 1
                        if n % s == 0:
                            assert side == n // s
                            divides += 1
                    cases += 1
    agree = {r["formula"]: (r["cases"], r["agree"]) for r in result.rows if "formula" in r}
    assert agree["floor((n - k + p + s) / s)"] == (cases, cases)
    assert agree["n (s = 1, p = k - 1)"] == (keeps, keeps) and agree["n / s (p = k - 1, s divides n)"] == (divides, divides)
    assert agree["n (s = 1, torch padding='same')"] == (max_n * max_k, max_n * max_k)


def test_padding_stride_names_where_torch_puts_an_even_kernels_extra_row(results):
    """torch's padding='same' with k = 4 (3 rows in all) against the two explicit splits, on random values."""
    import warnings

    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 1, 6, 6, generator=generator), torch.randn(1, 1, 4, 4, generator=generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        same = torch.nn.functional.conv2d(x, w, padding="same")
    more_above = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (2, 1, 2, 1)), w)  # note 003: ceil(3/2) above
    more_below = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 2, 1, 2)), w)
    where = "above" if torch.allclose(same, more_above) else "below" if torch.allclose(same, more_below) else "neither"
    result, _ = results["padding-stride"]
    check = next(ch for ch in result.checks if ch.claim == "'p = k - 1 gives the output the input's shape'")
    assert f"with an even kernel's extra row {where} (same shape" in check.margin


def test_padding_stride_stacks_by_hand_and_by_torch_flop_counter(results):
    """d2l's 224x224, 5x5, 55 layers to 4x4: the sides and MACs of each stack worked out here, the MACs also
    against torch's FlopCounterMode on the experiment's own stack (2 FLOPs per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cnnlab.experiments.static import grow_stack

    result, _ = results["padding-stride"]
    c = 8  # tiny: C = 8 in and out of every conv

    def stack_by_hand(stride: int, padding: int) -> list[int]:  # padding on each side
        sides, n = [], 224
        while n > 4:
            n = (n + 2 * padding - 5) // stride + 1  # torch's documented Conv2d output size
            sides.append(n)
        return sides

    for label, stride, padding in (("stride 1, no padding", 1, 0), ("stride 2, no padding", 2, 0),
                                   ("stride 2, padding k - 1", 2, 2)):
        sides = stack_by_hand(stride, padding)
        r = row(result.rows, stack=label)
        assert r["sides"] == " ".join(map(str, sides)) and r["layers"] == len(sides) and r["final_side"] == sides[-1]
        assert r["macs"] == sum(c * c * 25 * side * side for side in sides)
        assert r["params"] == len(sides) * (25 * c * c + c)
    plain = row(result.rows, stack="stride 1, no padding")
    assert plain["layers"] == (224 - 4) // 4 == 55  # 224 - 4L = 4: d2l's 55
    assert row(result.rows, stack="stride 2, padding k - 1")["sides"] == "112 56 28 14 7 4"  # 224 = 2^5 x 7
    stack = grow_stack(c, 5, 1, 0, 224, 4)
    with FlopCounterMode(display=False) as flops, torch.device("meta"):
        stack(torch.empty(1, c, 224, 224))
    assert flops.get_total_flops() == 2 * plain["macs"]
    checks = {ch.claim: ch for ch in result.checks}
    cost = next(ch for claim, ch in checks.items() if claim.startswith("'a lot of computation"))
    assert f"(x{plain['macs'] / row(result.rows, stack='stride 2, no padding')['macs']:.0f})" in cost.margin


def test_padding_stride_refuses_what_cannot_reach_the_target_and_fails_a_wrong_formula():
    from cnnlab.experiments.static import _formula_check, _zero_pad, grow_stack

    with pytest.raises(ValueError, match="does not shrink"):
        grow_stack(1, 5, 1, 2, 16, 4)  # p = k - 1: the side stays 16
    with pytest.raises(ValueError, match="does not fit"):
        grow_stack(1, 5, 1, 0, 6, 1)  # 6 -> 2, then a 5x5 conv no longer fits
    wrong = _formula_check("x", [{"n": 5, "k": 3, "p": 0, "s": 1, "torch": 3, "formula": 4}])
    assert wrong.verdict == FAILS and "0 of 1 case equal" in wrong.margin and "torch 3, formula 4" in wrong.margin
    # no case compared decides nothing, and says so (max() of no cases raised a bare ValueError)
    empty = _formula_check("x", [])
    assert empty.verdict == INCONCLUSIVE and "nothing compared: no case" in empty.margin, empty
    # An odd total padding puts the extra row on top and the extra column left (note 003, even kernels)
    padded = _zero_pad(1)(torch.ones(1, 1, 3, 3))
    assert padded[0, 0, 0].abs().sum() == 0 and padded[0, 0, -1].abs().sum() == 3
    assert padded[0, 0, :, 0].abs().sum() == 0 and padded[0, 0, :, -1].abs().sum() == 3


@pytest.mark.parametrize("grid, input_side", [((0, 0, 0, 0), None), ((6, 3, 0, 2), 225)])
def test_padding_stride_checks_over_no_case_say_inconclusive_naming_what_was_empty(monkeypatch, tmp_path, grid,
                                                                                   input_side):
    """An empty grid (largest n, k, p, s all 0), a grid without p = k - 1 for k > 1 (p <= 0: only k = 1 keeps
    n), and an input side no power of the stride divides: each check over the empty list is INCONCLUSIVE and
    its margin names what was missing; 'p = k - 1 keeps n' and 'stride cuts multiplicatively' said DOES NOT
    HOLD (bool([]) is False) and so made the experiment's verdict DOES NOT HOLD about nothing."""
    from cnnlab.experiments import static
    from cnnlab.experiments.base import RunContext

    monkeypatch.setitem(static.PS_SETTINGS, "tiny", (2, grid))
    if input_side is not None:  # 225 = 3^2 x 5^2: no 2^L divides it
        monkeypatch.setattr(static, "D2L_INPUT_SIDE", input_side)
    result = static.run_padding_stride(RunContext(size="tiny", seeds=1, out=tmp_path))
    checks = {c.claim: c for c in result.checks}
    keeps = checks["'p = k - 1 gives the output the input's shape'"]
    stride = next(c for claim, c in checks.items() if claim.startswith("'stride cuts the output shape"))
    if input_side is None:
        formulas = [c for claim, c in checks.items() if "output is" in claim or "give n / s" in claim]
        assert len(formulas) == 3
        for check in [*formulas, keeps]:
            assert check.verdict == INCONCLUSIVE and check.margin.startswith("nothing compared: no "), check
        assert "case of the grid with p = k - 1" in keeps.margin and "padding='same'" in keeps.margin
        assert stride.verdict == HOLDS  # the stacks do not come from the grid: still decided
        assert result.verdict == INCONCLUSIVE  # nothing failed: some checks compared nothing
    else:
        sides = grid[0]  # k = 1, p = 0 alone: one case per side n
        assert keeps.verdict == HOLDS and keeps.margin.startswith(f"{sides} of {sides} cases keep n")
        assert stride.verdict == INCONCLUSIVE
        assert stride.margin == "nothing compared: no layer L where 2^L divides 225", stride


def test_a_check_over_nothing_is_inconclusive_and_never_reads_its_margin():
    """_check_over, and the bottleneck comparison that uses it: min() and pairs[0] of no pair raised a bare
    ValueError; all() of none said HOLDS."""
    from cnnlab.experiments.static import _check_over, _fewer_check

    def no_margin() -> str:
        raise AssertionError("the margin of a check over nothing was made")

    nothing = _check_over("c", {"a": [1], "b": []}, lambda: True, no_margin)
    assert nothing == Check("c", INCONCLUSIVE, "nothing compared: no b")
    assert _check_over("c", {"a": [], "b": ()}, lambda: True, no_margin).margin == "nothing compared: no a and no b"
    assert _check_over("c", {"a": [1]}, lambda: False, lambda: "1 case") == Check("c", FAILS, "1 case")
    fewer = _fewer_check("Inception", [], "params")
    assert fewer.verdict == INCONCLUSIVE and fewer.margin == "nothing compared: no module to compare"
    pair = ({"module": "m", "params": 1}, {"module": "m", "params": 2})
    assert _fewer_check("Inception", [pair], "params").verdict == HOLDS


def test_the_shrink_plot_refuses_no_stacks_with_a_clear_message(tmp_path):
    from cnnlab.experiments.static import _shrink_plot

    with pytest.raises(ValueError, match="at least one stack"):  # was an IndexError from stacks[0]
        _shrink_plot(tmp_path / "padding_stride.png", [])
    assert not (tmp_path / "padding_stride.png").exists()


def test_complexity_tiny_reports_what_does_not_hold(results):
    result, _ = results["complexity"]
    assert result.verdict == FAILS  # the notes' "AlexNet has few parameters" is wrong
    verdicts = {ch.claim: ch.verdict for ch in result.checks}
    assert verdicts["'AlexNet: few parameters'"] == FAILS
    assert verdicts["'AlexNet: little computation'"] == HOLDS
    assert verdicts["'GoogLeNet: very efficient'"] == HOLDS
    assert verdicts["AlexNet fc6 'parameters = C_in*C_out + C_out = 37,725,832'"] == FAILS
    assert verdicts["AlexNet conv1 'weights = 23,296'"] == HOLDS
    # Independent reference: torchvision's models, counted here.
    with torch.device("meta"):
        for name, builder in (("alexnet", torchvision.models.alexnet), ("resnet50", torchvision.models.resnet50)):
            expected = sum(p.numel() for p in builder().parameters())
            assert row(result.rows, model=name)["params"] == expected
    assert row(result.rows, model="alexnet")["params"] > row(result.rows, model="resnet50")["params"]


def test_complexity_counts_note_002s_dropout_masks(results):
    """Note 002: "a 4096-unit FC layer has 2^4096 ~ 10^1023 dropout masks". 4096 x log10(2) = 1233.02, so
    2^4096 is about 1.04 x 10^1233: the note's exponent is off by 210."""
    result, _ = results["complexity"]
    check = next(ch for ch in result.checks if "dropout masks" in ch.claim)
    exponent = math.floor(4096 * math.log10(2))  # an independent route: floating-point logarithm
    assert exponent == 1233 and Decimal(2) ** 4096 >= Decimal(10) ** exponent  # and by hand: 4096 x 0.30103 = 1233.0
    assert check.verdict == FAILS
    assert f"x 10^{exponent} " in check.margin and "not 1023" in check.margin and "1,234 digits" in check.margin


def test_complexity_checks_note_004_formulas_by_hand(results):
    """Note 004's counting formulas, worked by hand on AlexNet conv1 at the notes' 227x227: its parameter
    formula gives note 002's 23,296; its conv-cost formula does not give note 002's 72,855,552 MACs."""
    result, _ = results["complexity"]
    checks = {ch.claim: ch for ch in result.checks}
    params = checks["note 004 'conv parameters = kernels x kernel size x input channels + biases'"]
    assert params.verdict == HOLDS and f"= {64 * 11 * 11 * 3 + 64:,}" in params.margin and "5 of 5" in params.margin
    assert checks["note 004 'FC parameters = inputs x outputs + biases'"].verdict == HOLDS
    pooling = checks["note 004 'pooling parameters = 0'"]
    assert pooling.verdict == HOLDS and "4 AlexNet pooling layers" in pooling.margin  # 3 max pools + the adaptive one
    span, stride = 227 - 11 + 2 * 2, 4  # W - K + 2P, S
    as_noted = span ** 2 / stride * 64 * 11 ** 2  # C = (W - K + 2P)^2 / S x N x K^2
    counted = (span // stride + 1) ** 2 * 64 * 11 ** 2 * 3  # ((W - K + 2P)/S + 1)^2 x N x K^2 x C_in
    assert counted == 72_855_552 and as_noted != counted  # note 002's worked number
    cost = checks["note 004 'conv computation C = (W - K + 2P)^2 / S x N x K^2'"]
    assert cost.verdict == FAILS
    assert f"gives {int(as_noted):,}, cnnlab {counted:,} MACs" in cost.margin
    assert "matches 0 of 5" in cost.margin and "for 5 of 5" in cost.margin


def test_complexity_early_memory_share_against_module_hooks(results):
    """Notes 002 and 000: most of AlexNet's memory is in its early conv layers. The share is recounted here
    from forward hooks on the real modules, not from cnnlab's summary: every output up to the second max
    pool against every output."""
    from cnnlab.models import create_model

    result, _ = results["complexity"]
    with torch.device("meta"):
        model = create_model("alexnet").eval()
    outputs: list[tuple[str, int]] = []  # (type, fp32 bytes at batch 1) in execution order

    def hook(module, args, out):
        # Dropout in evaluation returns its input: no new tensor, no memory (cnnlab counts it so too)
        if not isinstance(module, torch.nn.Dropout):
            outputs.append((type(module).__name__, 4 * out.numel()))

    for module in model.modules():
        if not list(module.children()):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(1, 3, 227, 227, device="meta"))
    second_pool = [i for i, (kind, _) in enumerate(outputs) if kind == "MaxPool2d"][1]
    share = sum(size for _, size in outputs[:second_pool + 1]) / sum(size for _, size in outputs)
    check = next(ch for ch in result.checks if ch.claim == "'AlexNet: most memory is used in the early conv layers'")
    assert share > 0.5 and check.verdict == HOLDS
    assert check.margin.startswith(f"{share:.1%} of the activation memory") and "(2 of 5 conv layers)" in check.margin


def test_bottleneck_tiny_matches_hand_formulas(results):
    result, _ = results["bottleneck"]
    assert result.verdict == HOLDS
    hw = 28 * 28  # inception3a: C_in 192, Table 1 widths 64, 96-128, 16-32, 32; real 5x5
    reduced = 192 * 64 + 192 * 96 + 96 * 128 * 9 + 192 * 16 + 16 * 32 * 25 + 192 * 32
    naive = 192 * 64 + 192 * 128 * 9 + 192 * 32 * 25
    assert row(result.rows, module="inception3a", variant="1x1 reductions")["macs"] == reduced * hw
    assert row(result.rows, module="inception3a", variant="naive")["macs"] == naive * hw
    assert row(result.rows, module="inception3a", variant="naive")["out_chs"] == 64 + 128 + 32 + 192
    hw = 14 * 14  # residual blocks at tiny
    assert row(result.rows, variant="basic: two 3x3")["macs"] == 2 * 9 * 256 * 256 * hw
    assert row(result.rows, variant="bottleneck: 1x1-3x3-1x1")["macs"] == (256 * 64 + 9 * 64 * 64 + 64 * 256) * hw


def test_bottleneck_counts_the_parameters_the_models_own_modules_have(results):
    """Each row's parameters are those of the real modules: GoogLeNet's (paper 5x5, naive or not) and
    ResNet's blocks, and a single conv counts as a conv of GoogLeNet, bias-free with BatchNorm, as the
    Inception module's convs do."""
    from cnnlab.models import create_model

    result, _ = results["bottleneck"]

    def params(module) -> int:
        return sum(p.numel() for p in module.parameters())

    with torch.device("meta"):
        reduced = create_model("googlenet", inception_5x5_kernel=5).features.inception3a
        naive = create_model("googlenet", inception_5x5_kernel=5, naive=True).features.inception3a  # C_in 192 too
        stem_conv = create_model("googlenet").features.conv3  # one of GoogLeNet's 3x3 convs: 64 -> 192
        basic = create_model("resnet34").features.stage3[1]  # a 256-d block of two 3x3 convs
        bottleneck = create_model("resnet50").features.stage1[1]  # a 256-d bottleneck block, planes 64
    assert row(result.rows, module="inception3a", variant="1x1 reductions")["params"] == params(reduced)
    assert row(result.rows, module="inception3a", variant="naive")["params"] == params(naive)
    norm_per_channel = (params(stem_conv) - 9 * 64 * 192) / 192  # what the model adds to a conv's weights
    for kernel in (3, 5):
        counted = row(result.rows, module="inception3a", variant=f"single {kernel}x{kernel} conv")["params"]
        assert counted == kernel * kernel * 192 * 256 + norm_per_channel * 256
    assert row(result.rows, variant="basic: two 3x3")["params"] == params(basic)
    assert row(result.rows, variant="bottleneck: 1x1-3x3-1x1")["params"] == params(bottleneck)
    # the margins count the modules they compare: "over 1 module", "over 9 modules"
    margins = {check.claim: check.margin for check in result.checks}
    one_block = [margin for claim, margin in margins.items() if claim.startswith("bottleneck vs basic")]
    assert one_block and all(" over 1 module (" in margin for margin in one_block), margins
    assert all("module(s)" not in margin for margin in margins.values())


@pytest.mark.parametrize("name", NAMES)
def test_files_written(results, name):
    result, out = results[name]
    with open(out / TABLE_CSV) as handle:
        assert len(list(csv.DictReader(handle))) == len(result.rows)
    assert json.loads((out / TABLE_JSON).read_text()) == result.rows
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["verdict"] == result.verdict and saved["size"] == "tiny" and saved["seeds"] == 1
    assert saved["rule"] and saved["claim"] and saved["machine"] and saved["command"].startswith("cnnlab experiment")
    assert len(saved["checks"]) == len(result.checks)
    assert result.plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)


def test_resume_returns_kept_result(results):
    result, out = results["receptive-field"]
    before = (out / RESULT_FILE).stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("recomputed instead of resuming")

    experiment = get_experiment("receptive-field")
    original = experiment.run
    object.__setattr__(experiment, "run", fail)  # frozen dataclass: patched for this test only
    try:
        kept = run_experiment("receptive-field", "tiny", out=out)
    finally:
        object.__setattr__(experiment, "run", original)
    assert (out / RESULT_FILE).stat().st_mtime_ns == before
    assert kept.verdict == result.verdict and kept.rows == result.rows
    assert [c.margin for c in kept.checks] == [c.margin for c in result.checks]


def test_changed_settings_refused(results):
    _, out = results["bottleneck"]
    with pytest.raises(CnnlabError, match="size 'tiny' there, 'quick' now"):
        run_experiment("bottleneck", "quick", out=out)
    with pytest.raises(CnnlabError, match="experiment 'bottleneck' there"):
        run_experiment("complexity", "tiny", out=out)


def test_bad_input_lists_allowed_values(tmp_path):
    with pytest.raises(CnnlabError, match="receptive-field, complexity, bottleneck"):
        run_experiment("no-such", out=tmp_path)
    with pytest.raises(CnnlabError, match="tiny, quick, full"):
        run_experiment("complexity", "huge", out=tmp_path)
    for seeds in (0, 2, True):
        with pytest.raises(CnnlabError, match=r"takes 1 seed \(it is deterministic"):
            run_experiment("complexity", "tiny", seeds=seeds, out=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before writing anything
