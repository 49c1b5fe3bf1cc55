"""The preact experiment: the exact checks against hand-computed expectations (relu(x) for the original block
with its convs zeroed, x for the pre-activation block), the verdict rules on made-up numbers, the experiment
listed, and a tiny run through run_experiment (files, checks, the recipe the runs recorded)."""

import copy
import csv
import json

import pytest
import torch

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import preact
from cnnlab.experiments.training import SeedStats
from cnnlab.layers.residual import BasicBlock, PreActBasicBlock
from cnnlab.run import RunFolder

NAME = "preact"


def identity_block(net):
    """The zoo net's first block whose shortcut passes x unchanged."""
    return next(block for _, block in preact.zoo_blocks(net) if block.residual and block.shortcut is None)


def seeded_input(channels, seed=0):
    return torch.randn(4, channels, 5, 5, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)


# ---------------------------------------------------------------------------------------------
# the exact checks, against what the block's formula gives by hand


@pytest.mark.parametrize("mode", preact.MODES)
def test_the_original_block_with_zero_convs_returns_relu_of_x(mode):
    block = identity_block(preact.POST)
    assert isinstance(block, BasicBlock) and not block.is_preact
    zeroed = copy.deepcopy(block)
    assert preact.zero_convs(zeroed) == 2  # conv1 and conv2; the identity shortcut has none
    x = seeded_input(block.out_chs)
    out = preact.block_output(zeroed, x, mode)
    # By hand: conv1 = 0, BN(0) = its shift 0, relu 0, conv2 = 0, BN(0) = 0, so out = relu(0 + x).
    expected = torch.where(x > 0, x, torch.zeros_like(x))
    assert torch.equal(out, expected)
    assert float((out - x).abs().max()) == float(-x.min()) > 0  # max(-x) away from x: not the identity


@pytest.mark.parametrize("mode", preact.MODES)
def test_the_preact_block_with_zero_convs_returns_x_whatever_its_norms_hold(mode):
    block = identity_block(preact.PRE)
    assert isinstance(block, PreActBasicBlock) and block.is_preact
    zeroed = copy.deepcopy(block)
    preact.draw_norms(zeroed, torch.Generator().manual_seed(1))  # BN scale, shift and statistics not 1 and 0
    assert preact.zero_convs(zeroed) == 2
    x = seeded_input(block.out_chs)
    out = preact.block_output(zeroed, x, mode)
    assert torch.equal(out, x)  # x + conv2(...) with conv2 = 0: x itself, bit for bit


def test_the_original_block_is_never_negative_with_any_drawn_weights():
    block = identity_block(preact.POST)
    x = seeded_input(block.out_chs)
    for seed in range(3):
        drawn = copy.deepcopy(block)
        torch.manual_seed(seed)
        for conv in (m for m in drawn.modules() if isinstance(m, torch.nn.Conv2d)):
            torch.nn.init.normal_(conv.weight, std=0.5)
        preact.draw_norms(drawn, torch.Generator().manual_seed(seed))
        out = preact.block_output(drawn, x, "eval")
        assert float(out.min()) >= 0 > float(x.min())
        negative = x < 0
        assert torch.all((out - x)[negative] >= -x[negative])  # at least -x_i away wherever x_i < 0


def test_block_output_leaves_the_blocks_running_statistics_alone():
    block = identity_block(preact.POST)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    preact.block_output(block, seeded_input(block.out_chs) + 3.0, "train")  # a batch that would move the mean
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())


def rows_of(size="tiny"):
    return preact.exact_rows(size)


@pytest.fixture(scope="module")
def exact():
    return rows_of()


def test_exact_rows_cover_every_block_of_both_nets_in_both_modes(exact):
    for net in preact.NETS:
        blocks = [name for name, _ in preact.zoo_blocks(net)]
        assert len(blocks) == 8  # resnet18: 2 basic blocks in each of 4 stages
        for weights in ("random", "convs zeroed"):
            got = [(r["block"], r["mode"]) for r in exact if r["net"] == net and r["weights"] == weights]
            assert got == [(b, m) for b in blocks for m in preact.MODES]
    identity = {r["block"] for r in exact if r["net"] == preact.POST and r["identity_shortcut"]}
    assert len(identity) == 5  # the first block of stages 2-4 downsamples through a projection
    zeroed = [r for r in exact if r["weights"] == "convs zeroed"]
    assert all(r["convs_zeroed"] == (2 if r["identity_shortcut"] else 3) for r in zeroed)  # + the projection's conv


def test_exact_checks_hold_on_cnnlabs_blocks(exact):
    checks = [preact.non_negative_check(exact), preact.zeroed_post_check(exact), preact.zeroed_preact_check(exact)]
    assert [c.verdict for c in checks] == [HOLDS, HOLDS, HOLDS]
    assert "10 of 10 cases" in checks[2].margin


def test_exact_checks_fail_when_the_numbers_say_so(exact):
    broken = copy.deepcopy(exact)
    for r in broken:
        if r["net"] == preact.POST and r["weights"] == "random":
            r["output_min"] = -0.5  # an output below 0: a post block that could be the identity
        if r["net"] == preact.POST and r["weights"] == "convs zeroed":
            r["dist_to_relu_x"] = 1e-7
        if r["net"] == preact.PRE and r["weights"] == "convs zeroed" and r["block"].endswith(".1"):
            r["equals_x"], r["dist_to_x"] = False, 2e-7
    assert preact.non_negative_check(broken).verdict == FAILS
    assert preact.zeroed_post_check(broken).verdict == FAILS
    check = preact.zeroed_preact_check(broken)
    assert check.verdict == FAILS and "2e-07" in check.margin


def test_exact_checks_decide_nothing_on_rows_that_measure_nothing(exact):
    """No rows, or no identity-shortcut block among them: a check says what is missing (min() and max() of no
    rows raised a bare ValueError)."""
    for check in (preact.non_negative_check([]), preact.zeroed_post_check([]), preact.zeroed_preact_check([])):
        assert check.verdict == INCONCLUSIVE and "nothing measured" in check.margin, check
    projected = [r for r in exact if not r["identity_shortcut"]]  # the blocks whose shortcut is a conv
    assert projected and len(projected) < len(exact)
    for check in (preact.zeroed_post_check(projected), preact.zeroed_preact_check(projected)):
        assert check.verdict == INCONCLUSIVE and "no identity-shortcut block" in check.margin, check
    # non-negativity is measured on every block: it still decides, and says the distance could not be measured
    check = preact.non_negative_check(projected)
    assert check.verdict == HOLDS and "no identity-shortcut block" in check.margin, check
    broken = [dict(r, output_min=-0.5) if r["net"] == preact.POST else r for r in projected]
    assert preact.non_negative_check(broken).verdict == FAILS


def test_the_accuracy_plots_are_drawn_when_no_run_finished(tmp_path):
    """Every run diverged: the loss panel has no value to put on its log scale (matplotlib raised a bare
    ValueError); the plots are still written, their panels empty."""
    paths = preact._accuracy_plots(tmp_path, [])
    assert [p.name for p in paths] == ["preact_by_epoch.png", "preact_test_accuracy.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


# ---------------------------------------------------------------------------------------------
# the accuracy rule


def stats(*values):
    return SeedStats(tuple(values))


@pytest.mark.parametrize("pre, post, verdict", [
    ((0.905, 0.910, 0.915), (0.895, 0.900, 0.905), HOLDS),  # 1 point ahead, spread 0.5
    ((0.885, 0.890, 0.895), (0.895, 0.900, 0.905), FAILS),  # 1 point behind
    ((0.900, 0.905, 0.910), (0.890, 0.900, 0.910), INCONCLUSIVE),  # 0.5 ahead, spread 1
    ((0.925, 0.930, 0.935), (0.895, 0.900, 0.905), INCONCLUSIVE),  # 3 points ahead: not a small gain
    ((0.95, 0.95), (0.90, 0.90), INCONCLUSIVE),  # 2 seeds decide nothing
])
def test_small_gain_rule(pre, post, verdict):
    check = preact.small_gain(stats(*pre), stats(*post))
    assert check.verdict == verdict, check.margin


# ---------------------------------------------------------------------------------------------
# registered, listed and run at tiny


def test_listed_by_the_command_with_its_sizes(cli):
    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    item = next(i for i in json.loads(out) if i["name"] == NAME)
    assert item["source"]["note"] == "002" and "预激活" in item["source"]["quote"]
    assert item["data"] == preact.DATA and set(item["sizes"]) == {"tiny", "quick", "full"}
    assert item["seeds"] == {"min": 1, "max": 10, "default": 3, "tiny": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("preact")
    return run_experiment(NAME, "tiny", out=out), out


def test_tiny_writes_checks_table_plots_and_one_run_per_net(tiny):
    result, out = tiny
    assert (out / RESULT_FILE).is_file() and (out / REPORT_FILE).is_file()
    assert [c.verdict for c in result.checks] == [HOLDS, HOLDS, HOLDS, INCONCLUSIVE]  # one seed decides nothing
    assert "fewer than 3 seeds" in result.checks[3].margin and result.verdict == INCONCLUSIVE
    assert {p.name for p in result.plots} == {"preact_identity.png", "preact_by_epoch.png",
                                              "preact_test_accuracy.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert [run.parent.name for run in result.runs] == list(preact.NETS)
    with open(out / TABLE_CSV) as handle:
        table = list(csv.DictReader(handle))
    assert [r["setting"] for r in table[:4]] == [*preact.NETS, *preact.NETS]  # summaries, then runs
    assert len([r for r in table if r["net"]]) == len(rows_of())  # the exact checks' rows follow
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["data"] == "digits" and saved["seeds"] == 1 and len(saved["checks"]) == 4


def test_tiny_runs_record_the_shared_recipe_and_a_test_score(tiny):
    result, _ = tiny
    for run, row in zip(result.runs, result.rows[2:4]):
        config = RunFolder(run).read_config()
        assert config.model.name == run.parent.name and config.data.image_size == preact.IMAGE_SIZE
        assert (config.optim.name, config.optim.lr, config.optim.lr_batch) == ("sgd", 0.1, 128)
        assert (config.optim.momentum, config.optim.weight_decay) == (0.9, 1e-4)
        assert config.schedule.name == "cosine" and not config.aug.hflip and not config.aug.label_smoothing
        assert 0.0 <= row["test_acc"] <= 1.0  # scored on the test split
