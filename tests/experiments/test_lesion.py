"""The lesion experiment: deleting a block against independent references (a ResNet block whose branch outputs
zero, a plain net rebuilt without the block), the blocks found against He et al.'s 6n + 2 table, the subsets,
the share kept and the step share computed by hand, the verdict rules on made-up numbers, and a tiny run
through run_experiment."""

import copy
import csv
import json
import math

import pytest
import torch
from torch import nn

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import lesion
from cnnlab.experiments.preact import draw_norms
from cnnlab.experiments.training import RunOutcome, SeedStats, measure_line
from cnnlab.models import create_model
from cnnlab.run import RunFolder

NAME = "lesion"


def trained_like(net, seed=0):
    """The zoo net in eval mode with every BN's scale, shift and running statistics drawn at random, as training
    would leave them (an initial BN maps too much to 0 to tell a lesion's effect)."""
    torch.manual_seed(seed)
    model = create_model(net, num_classes=10, in_chans=1)
    draw_norms(model, torch.Generator().manual_seed(seed))
    return model.eval()


def images(seed=1):
    return torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(seed))  # (B, 1, 16, 16)


# ---------------------------------------------------------------------------------------------
# the blocks and their deletion


@pytest.mark.parametrize("net", lesion.NETS)
def test_blocks_found_are_he_et_al_s_table(net):
    """6n + 2 = 20 layers: 3 stages of n = 3 blocks; each later stage's first block halves the side and doubles
    the channels, so 9 - 2 = 7 blocks keep their input's shape, in both nets at the same places."""
    blocks = lesion.blocks_of(trained_like(net), images())
    n = (20 - 2) // 6
    assert len(blocks) == 3 * n
    assert [b.same_shape for b in blocks] == [True] * n + ([False] + [True] * (n - 1)) * 2
    assert len(lesion.deletable(blocks)) == lesion.SAME_SHAPE_BLOCKS == 7
    assert lesion.downsampling(blocks) == ([] if net == lesion.PLAIN else ["features.stage2.0", "features.stage3.0"])
    assert all(b.residual == (net == lesion.RESNET) for b in blocks)


@pytest.mark.parametrize("name", ["features.stage1.0", "features.stage2.1", "features.stage2.0", "features.stage3.0"])
def test_a_deleted_resnet_block_equals_the_block_whose_branch_outputs_zero(name):
    """Reference: the same net with the block's last BN scale and shift set to 0 (in eval mode its branch then
    outputs exactly 0, so the block gives act(shortcut(x) + 0)): equal bit for bit, at same-shape blocks and at
    the downsampling ones (option A shortcut: subsample and zero channels)."""
    model = trained_like(lesion.RESNET)
    reference = copy.deepcopy(model)
    norm = reference.get_submodule(name).conv2.norm
    with torch.no_grad():
        norm.weight.zero_()
        norm.bias.zero_()
    x = images()
    with torch.no_grad(), lesion.deleted(model, [name]):
        lesioned = model(x)
    with torch.no_grad():
        assert torch.equal(lesioned, reference(x))
        assert not torch.equal(lesioned, model(x))  # the block is back, and it mattered


def test_deleted_plain_blocks_equal_the_net_rebuilt_without_them():
    """Reference: the plain net's stem and stages run in order with the deleted blocks left out."""
    model = trained_like(lesion.PLAIN)
    gone = ["features.stage1.1", "features.stage3.2"]
    x = images()

    def by_hand(t):
        t = model.features.stem(t)
        for stage in ("stage1", "stage2", "stage3"):
            for i, block in enumerate(getattr(model.features, stage)):
                if f"features.{stage}.{i}" not in gone:
                    t = block(t)
        return model.forward_head(t)

    with torch.no_grad(), lesion.deleted(model, gone):
        lesioned = model(x)
    with torch.no_grad():
        assert torch.equal(lesioned, by_hand(x))


def test_deleted_puts_every_block_back_even_when_the_pass_fails():
    model = trained_like(lesion.RESNET)
    before = dict(model.named_modules())
    with pytest.raises(RuntimeError, match="a pass failed"):
        with lesion.deleted(model, ["features.stage1.0", "features.stage3.1"]):
            assert isinstance(model.get_submodule("features.stage1.0"), lesion.BranchRemoved)
            raise RuntimeError("a pass failed")
    assert dict(model.named_modules()).keys() == before.keys()
    assert all(module is before[name] for name, module in model.named_modules())


def test_accuracy_counts_right_answers():
    class Fixed(nn.Module):  # predicts class 1 for every image
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).repeat(len(x), 1)

    batches = [(torch.zeros(3, 1, 2, 2), torch.tensor([1, 0, 1])), (torch.zeros(1, 1, 2, 2), torch.tensor([0]))]
    assert lesion.accuracy(Fixed(), batches) == 2 / 4


# ---------------------------------------------------------------------------------------------
# subsets, share kept, steps


def test_subsets_are_all_of_them_when_few_and_a_fixed_draw_otherwise():
    names = [f"b{i}" for i in range(7)]
    assert lesion.subsets(names, 1, 7) == [(n,) for n in names]
    assert lesion.subsets(names, 7, 3) == [tuple(names)]  # C(7, 7) = 1
    drawn = lesion.subsets(names, 3, 5)  # C(7, 3) = 35 > 5
    assert len(drawn) == len(set(drawn)) == 5
    assert all(len(s) == 3 and list(s) == sorted(s, key=names.index) for s in drawn)
    assert drawn == lesion.subsets(names, 3, 5)  # the same subsets for every run
    assert lesion.subsets(names, 3, 35) == [tuple(c) for c in __import__("itertools").combinations(names, 3)]
    with pytest.raises(ValueError, match="cannot delete 8 of 7 blocks"):
        lesion.subsets(names, 8, 3)


def test_share_kept_by_hand():
    # intact 90%, chance 10%: 80 points above chance; a lesioned 50% keeps 40 of them
    assert lesion.retained(0.5, 0.9, 0.1) == pytest.approx(0.5)
    assert lesion.retained(0.9, 0.9, 0.1) == pytest.approx(1.0)
    assert lesion.retained(0.1, 0.9, 0.1) == pytest.approx(0.0)
    assert lesion.retained(0.05, 0.9, 0.1) < 0  # worse than guessing
    assert lesion.retained(0.3, 0.1, 0.1) is None  # an intact net at chance has nothing to keep


def lesions(setting="resnet20", seed=0, intact=0.9, single=(0.8, 0.7), curve=(0.75, 0.4), chance=0.1):
    names = [f"b{i}" for i in range(len(single))]
    by_k = {1: [((n,), a) for n, a in zip(names, single)]}
    by_k.update({k: [(tuple(names[:k]), a)] for k, a in enumerate(curve[1:], start=2)})
    return lesion.Lesions(setting, seed, f"runs/{setting}/seed{seed}", intact, dict(zip(names, single)), {}, by_k,
                          chance)


def test_one_run_s_measures_by_hand():
    run = lesions(intact=0.9, single=(0.8, 0.7), curve=(None, 0.3))
    # shares kept: (0.8 - 0.1) / 0.8 = 0.875 and (0.7 - 0.1) / 0.8 = 0.75, mean 0.8125
    assert run.single_share() == pytest.approx(0.8125)
    # curve: k=0 0.9, k=1 mean(0.8, 0.7) = 0.75, k=2 0.3; whole fall 0.6, largest step 0.45: share 0.75
    assert [k for k, _ in run.curve()] == [0, 1, 2]
    assert run.curve()[1][1] == pytest.approx(0.75)
    assert run.largest_step_share() == pytest.approx(0.45 / 0.6)
    flat = lesions(intact=0.9, single=(0.89, 0.88), curve=(None, 0.87))
    assert flat.largest_step_share() is None  # a 3-point fall in all: below MIN_FALL, nothing to judge


# ---------------------------------------------------------------------------------------------
# the verdict rules


def stats(*values):
    return SeedStats(tuple(values))


@pytest.mark.parametrize("values, verdict", [
    ((0.95, 0.96, 0.94), HOLDS),  # mean 0.95, above 0.9 by 0.05 > spread 0.01
    ((0.80, 0.81, 0.79), FAILS),  # below by 0.10 > spread
    ((0.85, 0.95, 0.93), INCONCLUSIVE),  # mean 0.91, above by 0.01 < spread 0.05
    ((0.99, 0.99), INCONCLUSIVE),  # 2 seeds decide nothing
])
def test_at_least_rule(values, verdict):
    check = lesion.at_least("claim", "resnet20", stats(*values), 0.9, "mean share kept")
    assert check.verdict == verdict, check.margin


@pytest.mark.parametrize("values, verdict", [
    ((0.30, 0.31, 0.29), HOLDS),
    ((0.80, 0.90, 0.85), FAILS),
    ((0.45, 0.55, 0.50), INCONCLUSIVE),
    ((0.1,), INCONCLUSIVE),
])
def test_below_rule(values, verdict):
    check = lesion.below("claim", "resnet20", stats(*values), 0.5, "largest step's share")
    assert check.verdict == verdict, check.margin


def outcome(setting, seed, val_acc):
    return RunOutcome(setting, seed, f"runs/{setting}/seed{seed}", "trained", val_acc=val_acc)


def test_checks_on_made_up_lesions():
    """ResNet runs keep 0.95 of their accuracy per deleted block and fall step by step (no step above a third of
    the fall); plain runs keep 0.1 and fall at once: (a), (b) and (c) hold; the same numbers with nets at chance are INCONCLUSIVE."""
    runs, outcomes = [], []
    for seed in range(3):
        a = 0.9 + 0.005 * seed
        runs.append(lesions(lesion.RESNET, seed, a, (0.1 + 0.95 * (a - 0.1),) * 2, (None, 0.7, 0.5, 0.3)))
        runs.append(lesions(lesion.PLAIN, seed, a, (0.1 + 0.1 * (a - 0.1),) * 2, (None, 0.1)))
        outcomes += [outcome(lesion.RESNET, seed, 0.9), outcome(lesion.PLAIN, seed, 0.9)]
    contrast, little, gradual = lesion.lesion_checks(runs, outcomes, 0.1)
    assert (contrast.verdict, little.verdict, gradual.verdict) == (HOLDS, HOLDS, HOLDS), [contrast, little, gradual]
    at_chance = [outcome(o.setting, o.seed, 0.12) for o in outcomes]
    assert all(c.verdict == INCONCLUSIVE for c in lesion.lesion_checks(runs, at_chance, 0.1))
    # a ResNet that loses most of its accuracy at the first deletion: (b) and (c) fail
    cliff = [lesions(r.setting, r.seed, r.intact, (0.2, 0.2), (None, 0.1)) if r.setting == lesion.RESNET else r
             for r in runs]
    _, little, gradual = lesion.lesion_checks(cliff, outcomes, 0.1)
    assert (little.verdict, gradual.verdict) == (FAILS, FAILS)
    # ResNet runs that all barely fall: none measured, and the margin says why, not "no finished run"
    flat = [lesions(r.setting, r.seed, 0.9, (0.89, 0.88), (None, 0.87)) if r.setting == lesion.RESNET else r
            for r in runs]
    _, _, gradual = lesion.lesion_checks(flat, outcomes, 0.1)
    assert gradual.verdict == INCONCLUSIVE and "no finished run" not in gradual.margin, gradual
    assert gradual.margin == (f"{lesion.RESNET}: none of its 3 run(s) fell {lesion.MIN_FALL * 100:g} points or more "
                              f"in all, so no step is measured: fewer than {lesion.MIN_SEEDS} seeds decide nothing")


# ---------------------------------------------------------------------------------------------
# registered, listed and run at tiny


def test_listed_by_the_command_with_its_sizes(cli):
    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    item = next(i for i in json.loads(out) if i["name"] == NAME)
    assert item["source"]["note"] == "004" and "集成" in item["source"]["quote"]
    assert item["data"] == lesion.DATA and set(item["sizes"]) == {"tiny", "quick", "full"}
    assert item["seeds"] == {"min": 1, "max": 10, "default": 3, "tiny": 1}
    assert f"the same {lesion.SAME_SHAPE_BLOCKS} places" in item["rule"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("lesion")
    return run_experiment(NAME, "tiny", out=out), out


def test_tiny_writes_checks_table_plots_and_lesion_rows(tiny):
    result, out = tiny
    assert (out / RESULT_FILE).is_file() and (out / REPORT_FILE).is_file()
    assert len(result.checks) == 3 and result.verdict == INCONCLUSIVE  # one seed decides nothing
    assert all("fewer than 3 seeds" in c.margin for c in result.checks)
    assert {p.name for p in result.plots} == {"lesion_one_block.png", "lesion_by_count.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert [run.parent.name for run in result.runs] == list(lesion.NETS)
    with open(out / TABLE_CSV) as handle:
        table = list(csv.DictReader(handle))
    for net in lesion.NETS:
        mine = [r for r in table if r["setting"] == f"lesion: {net}"]
        kinds = [r["kind"] for r in mine]
        # intact, (resnet20) 2 downsampling, 7 single, then up to 2 subsets for each k = 2..7 (C(7, 7) = 1)
        assert kinds.count("intact") == 1 and kinds.count("downsampling") == (2 if net == lesion.RESNET else 0)
        same = [r for r in mine if r["kind"] == "same shape"]
        assert [int(r["k"]) for r in same] == [1] * 7 + [k for k in range(2, 7) for _ in range(2)] + [7]
        intact = float(next(r["test_acc"] for r in mine if r["kind"] == "intact"))
        assert intact == pytest.approx(float(next(r["test_acc"] for r in table if r["setting"] == net
                                                  and r["seed"] == "0")))  # the run's own test score
        for r in same:
            expected = lesion.retained(float(r["test_acc"]), intact, 0.1)
            assert (r["share_kept"] == "") if expected is None else math.isclose(float(r["share_kept"]), expected)


def test_tiny_runs_record_degradation_s_recipe_at_16_pixels(tiny):
    result, _ = tiny
    for run in result.runs:
        config = RunFolder(run).read_config()
        assert config.model.name == run.parent.name and config.data.image_size == 16
        assert (config.optim.name, config.optim.lr, config.optim.lr_batch) == ("sgd", 0.1, 128)
        assert config.schedule.name == "cosine" and not config.aug.hflip


def test_lesion_lines_fit_80_columns():
    run = lesions(intact=0.8516, single=(0.7, 0.8))
    longest = measure_line("lesions 10 of 10", "resnet20/seed9", lesion.lesion_shown(run), 3599.0, 14)
    assert longest == ("lesions 10 of 10  resnet20/seed9  test 85.16%, one out keeps 0.86  59 min 59 s")
    assert len(longest) <= 80
    missing = measure_line("lesions 1 of 6", "plain20/seed0", None, 0.4, 14)
    assert missing == "lesions 1 of 6  plain20/seed0   unmeasured: no usable checkpoint  0.4 s"
    # an intact net barely above chance: the share kept is huge, and shown with an exponent in few columns
    barely = lesions(intact=0.1 + 1e-12, single=(0.0, 0.0), chance=0.1)
    assert lesion.lesion_shown(barely) == "test 10.00%, one out keeps -1e11"
    assert lesion.lesion_shown(lesions(intact=0.9, single=(0.0, 0.0))) == "test 90.00%, one out keeps -0.12"
