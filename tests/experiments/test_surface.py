"""The loss-surface experiment: Li et al.'s filter normalisation against a hand computation, the weights put back
bit for bit, the slice at alpha = 0 against the plain loss, the power iteration against the largest eigenvalue of
the Hessian torch.autograd.functional.hessian builds, the verdict rules on made-up numbers, and a tiny run through
run_experiment."""

import csv
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, REPORT_FILE, RESULT_FILE, TABLE_CSV, run_experiment
from cnnlab.experiments import surface
from cnnlab.experiments.training import RunOutcome, measure_line
from cnnlab.run import RunFolder

NAME = "loss-surface"


def tiny_net(seed=0, dtype=torch.float32):
    """conv (3 filters of 1x2x2, with bias) -> BN (eval mode, running statistics drawn) -> ReLU -> linear (12 -> 2,
    with bias): 12 + 24 weights, and biases and BN parameters that a direction must leave alone."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 2, bias=True), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    norm = net[1]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
        norm.running_mean.uniform_(-0.1, 0.1)
        norm.running_var.uniform_(0.5, 2.0)
    return net.to(dtype).eval()


def tiny_batches(seed=1, n=10, batch=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 3, 3, generator=g, dtype=dtype)  # (N, 1, 3, 3)
    y = torch.randint(0, 2, (n,), generator=g)  # (N,)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)], x, y


# ---------------------------------------------------------------------------------------------
# the grid, the weights and the directions


def test_grid_is_21_points_a_tenth_apart_with_0_and_half_exact():
    alphas = surface.grid()
    assert len(alphas) == surface.GRID_POINTS == 21
    assert alphas[0] == -1.0 and alphas[-1] == 1.0 and alphas[10] == 0.0
    assert alphas[15] == 0.5 and alphas[5] == -0.5  # check (a) reads these exactly
    assert all(b - a == pytest.approx(0.1) for a, b in zip(alphas, alphas[1:]))
    with pytest.raises(ValueError, match="odd number"):
        surface.grid(20)


def test_the_weights_moved_are_the_conv_and_linear_weights_only():
    net = tiny_net()
    assert surface.surface_weights(net) == [net[0].weight, net[4].weight]


def test_filter_normalisation_by_hand():
    """Each filter of d (a conv output channel, a linear row) is the raw N(0, 1) draw times |theta_i| / |d_i|,
    computed here filter by filter; so each filter's norm equals the weight's filter norm."""
    net = tiny_net()
    weights = surface.surface_weights(net)
    directions = surface.filter_normalised(weights, torch.Generator().manual_seed(7))
    raw_draw = torch.Generator().manual_seed(7)
    for weight, d in zip(weights, directions):
        raw = torch.randn(weight.shape, generator=raw_draw)  # the same draw, in the same order
        assert d.shape == weight.shape
        for i in range(weight.shape[0]):
            w_norm = math.sqrt(sum(float(v) ** 2 for v in weight[i].detach().flatten()))
            r_norm = math.sqrt(sum(float(v) ** 2 for v in raw[i].flatten()))
            assert torch.allclose(d[i], raw[i] * (w_norm / r_norm), rtol=1e-6, atol=0)
            assert float(d[i].norm()) == pytest.approx(w_norm, rel=1e-6)
    with torch.no_grad():
        net[0].weight[1].zero_()  # a dead filter gets a zero direction, not NaN
    d = surface.filter_normalised(surface.surface_weights(net), torch.Generator().manual_seed(7))[0]
    assert torch.equal(d[1], torch.zeros_like(d[1])) and torch.isfinite(d).all()


def test_a_slice_moves_the_weights_along_d_and_leaves_biases_and_bn_alone():
    """The state seen by each forward pass of a slice: conv and linear weights at theta + alpha d, every other
    entry (conv and linear biases, BN scale, shift and running statistics) as trained."""
    net = tiny_net()
    batches, _, _ = tiny_batches(n=4)  # one batch: one forward pass per alpha
    weights = surface.surface_weights(net)
    d = surface.direction(weights, 0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(
        {k: v.clone() for k, v in module.state_dict().items()}))
    alphas = [-1.0, 0.5]
    surface.slice_losses(net, batches, weights, d, alphas)
    hook.remove()
    assert len(seen) == len(alphas)
    moved = {"0.weight": d[0], "4.weight": d[1]}
    for alpha, state in zip(alphas, seen):
        for key, value in state.items():
            if key in moved:
                assert torch.equal(value, before[key] + alpha * moved[key]), key
            else:
                assert torch.equal(value, before[key]), key  # 0.bias, 1.*, 4.bias


def test_the_weights_are_put_back_bit_for_bit_after_a_slice_and_after_an_error():
    net = tiny_net()
    batches, _, _ = tiny_batches()
    weights = surface.surface_weights(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    surface.slice_losses(net, batches, weights, surface.direction(weights, 3), surface.grid())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

    calls = []

    def fail_on_third(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a pass failed")

    hook = net.register_forward_pre_hook(fail_on_third)
    with pytest.raises(RuntimeError, match="a pass failed"):
        surface.slice_losses(net, batches, weights, surface.direction(weights, 3), surface.grid())
    hook.remove()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_alpha_0_is_the_plain_loss():
    net = tiny_net()
    batches, x, y = tiny_batches()
    weights = surface.surface_weights(net)
    alphas = surface.grid()
    losses = surface.slice_losses(net, batches, weights, surface.direction(weights, 0), alphas)
    plain = surface.mean_loss(net, batches)
    assert losses[alphas.index(0.0)] == plain  # the same weights, the same passes: bit for bit
    with torch.no_grad():
        assert plain == pytest.approx(float(F.cross_entropy(net(x), y)), rel=1e-6)  # torch's mean over one batch
    assert losses[0] != plain and losses[-1] != plain  # the slice moves


def test_second_differences_and_convexity_by_hand():
    assert surface.second_differences([4.0, 1.0, 0.0, 1.0, 4.0]) == [2.0, 2.0, 2.0]
    assert surface.second_differences([0.0, 1.0, 0.0]) == [-2.0]


# ---------------------------------------------------------------------------------------------
# sharpness


def flat_weights_loss(net, weights, x, y):
    """The mean loss as a function of the weights flattened into one vector (the Hessian's variable)."""
    names = [name for name, p in net.named_parameters() if any(p is w for w in weights)]
    shapes = [w.shape for w in weights]
    others = {name: p.detach() for name, p in net.named_parameters() if name not in names}
    buffers = dict(net.named_buffers())

    def loss(flat):
        parts, start = {}, 0
        for name, shape in zip(names, shapes):
            parts[name] = flat[start:start + shape.numel()].reshape(shape)
            start += shape.numel()
        out = torch.func.functional_call(net, {**others, **buffers, **parts}, (x,))
        return F.cross_entropy(out, y)

    return loss, torch.cat([w.detach().flatten() for w in weights])


def test_power_iteration_finds_the_hessian_s_largest_eigenvalue():
    """Reference: the full 36 x 36 Hessian of the mean loss over the weights (torch.autograd.functional.hessian), its
    eigenvalues by torch.linalg.eigvalsh; the power iteration over 3 batches gives the one of largest magnitude."""
    net = tiny_net(seed=2, dtype=torch.float64)
    batches, x, y = tiny_batches(seed=3, n=10, batch=4, dtype=torch.float64)
    weights = surface.surface_weights(net)
    loss, flat = flat_weights_loss(net, weights, x, y)
    hessian = torch.autograd.functional.hessian(loss, flat)  # (36, 36)
    assert hessian.shape == (36, 36)
    eigenvalues = torch.linalg.eigvalsh(hessian)  # ascending
    by_size = sorted(eigenvalues.tolist(), key=abs)
    largest = by_size[-1]
    assert abs(by_size[-2]) < 0.9 * abs(largest)  # a gap: the iteration converges to it, not between two
    eigen = surface.top_eigenvalue(net, batches, weights, iterations=300, seed=0)
    assert eigen.value == pytest.approx(largest, rel=1e-6)
    assert eigen.change < 1e-6 and eigen.iterations == 300
    # and the weights are as they were
    assert torch.equal(torch.cat([w.detach().flatten() for w in weights]), flat)


def test_hessian_vector_over_batches_is_the_hessian_times_v():
    net = tiny_net(seed=4, dtype=torch.float64)
    batches, x, y = tiny_batches(seed=5, n=9, batch=4, dtype=torch.float64)  # 4 + 4 + 1 images
    weights = surface.surface_weights(net)
    loss, flat = flat_weights_loss(net, weights, x, y)
    hessian = torch.autograd.functional.hessian(loss, flat)
    v = torch.randn(flat.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pieces, start = [], 0
    for w in weights:
        pieces.append(v[start:start + w.numel()].reshape(w.shape))
        start += w.numel()
    product = surface.hessian_vector(net, batches, weights, pieces)
    assert torch.allclose(torch.cat([p.flatten() for p in product]), hessian @ v, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# one run's measures and the verdict rules


def made_up(setting, seed, curvature, eigenvalue, loss=0.1, directions=2, bump=False):
    """A run whose slices are loss + curvature * alpha^2 (a bump at alpha = 0.8 when ``bump``): rise at 0.5 is
    curvature * (0.25 + 0.25) = curvature / 2."""
    alphas = surface.grid()
    slices = []
    for k in range(directions):
        losses = [loss + curvature * a * a for a in alphas]
        if bump and k == 0:
            losses[alphas.index(0.8)] += 10 * curvature
        slices.append(losses)
    return surface.Surface(setting, seed, f"runs/{setting}/seed{seed}", 100, loss, alphas, slices,
                           surface.Eigen(eigenvalue, 0.0, surface.POWER_ITERATIONS))


def test_one_run_s_measures_by_hand():
    run = made_up(surface.RESNET, 0, curvature=2.0, eigenvalue=5.0, loss=0.3)
    assert run.rise(0) == pytest.approx(1.0) and run.mean_rise() == pytest.approx(1.0)
    assert run.convex(0) and run.nonconvex() == 0
    bumped = made_up(surface.PLAIN, 0, curvature=2.0, eigenvalue=5.0, bump=True)
    assert not bumped.convex(0) and bumped.convex(1) and bumped.nonconvex() == 1


def outcome(setting, seed, val_acc):
    return RunOutcome(setting, seed, f"runs/{setting}/seed{seed}", "trained", val_acc=val_acc)


def runs_and_outcomes(resnet, plain, val_acc=0.9):
    """``resnet`` and ``plain``: per seed (curvature, eigenvalue)."""
    runs, outcomes = [], []
    for seed, ((rc, re), (pc, pe)) in enumerate(zip(resnet, plain)):
        runs += [made_up(surface.RESNET, seed, rc, re), made_up(surface.PLAIN, seed, pc, pe)]
        outcomes += [outcome(surface.RESNET, seed, val_acc), outcome(surface.PLAIN, seed, val_acc)]
    return runs, outcomes


@pytest.mark.parametrize("resnet, plain, verdicts", [
    # rises 0.5 +- 0.05 vs 2.0 +- 0.05; eigenvalues 10 +- 1 vs 40 +- 1: both HOLD
    (((0.9, 9.0), (1.0, 10.0), (1.1, 11.0)), ((3.9, 39.0), (4.0, 40.0), (4.1, 41.0)), (HOLDS, HOLDS)),
    # swapped: both fail
    (((3.9, 39.0), (4.0, 40.0), (4.1, 41.0)), ((0.9, 9.0), (1.0, 10.0), (1.1, 11.0)), (FAILS, FAILS)),
    # rise lower by 0.05, spread 0.5; eigenvalue higher by 1, spread 10: neither decides
    (((1.0, 10.0), (2.0, 20.0), (3.0, 30.0)), ((1.1, 9.0), (2.1, 19.0), (3.1, 29.0)), (INCONCLUSIVE, INCONCLUSIVE)),
    # two seeds decide nothing
    (((0.1, 1.0), (0.1, 1.0)), ((9.0, 90.0), (9.0, 90.0)), (INCONCLUSIVE, INCONCLUSIVE)),
])
def test_checks_on_made_up_numbers(resnet, plain, verdicts):
    runs, outcomes = runs_and_outcomes(resnet, plain)
    checks = surface.surface_checks(runs, outcomes, 0.1)
    assert tuple(c.verdict for c in checks) == verdicts, [c.margin for c in checks]


def test_checks_of_nets_that_learned_nothing_are_inconclusive():
    runs, outcomes = runs_and_outcomes(((0.9, 9.0), (1.0, 10.0), (1.1, 11.0)), ((3.9, 39.0), (4.0, 40.0), (4.1, 41.0)),
                                       val_acc=0.12)
    checks = surface.surface_checks(runs, outcomes, 0.1)
    assert all(c.verdict == INCONCLUSIVE and f"{surface.PLAIN} and {surface.RESNET} did not learn" in c.margin
               for c in checks)


@pytest.mark.parametrize("plain_val, verdict", [(0.24, INCONCLUSIVE), (0.31, HOLDS)])
def test_both_nets_must_have_learned_for_a_verdict_on_their_minima(plain_val, verdict):
    """The plain net at a mean 24% on 10 classes (the full run's plain56) is below chance 10% + 20 points: the
    ResNet's clearly flatter minimum decides nothing, where the shared rule (one side learned) would let it
    hold. At 31% the plain net learned and the same numbers hold."""
    runs, outcomes = runs_and_outcomes(((0.9, 9.0), (1.0, 10.0), (1.1, 11.0)), ((3.9, 39.0), (4.0, 40.0), (4.1, 41.0)))
    outcomes = [outcome(o.setting, o.seed, plain_val) if o.setting == surface.PLAIN else o for o in outcomes]
    checks = surface.surface_checks(runs, outcomes, 0.1)
    assert [c.verdict for c in checks] == [verdict, verdict], [c.margin for c in checks]
    if verdict == INCONCLUSIVE:
        assert all(f"{surface.PLAIN} did not learn" in c.margin and f"{surface.PLAIN} {plain_val * 100:.2f}%" in c.margin
                   for c in checks), [c.margin for c in checks]
    assert "Both nets learned" in surface.SURFACE.rule


def test_a_run_whose_loss_overflowed_is_left_out_and_named():
    runs, outcomes = runs_and_outcomes(((0.9, 9.0), (1.0, 10.0), (1.1, 11.0), (1.0, math.inf)),
                                       ((3.9, 39.0), (4.0, 40.0), (4.1, 41.0), (4.0, 40.0)))
    rise, sharpness = surface.surface_checks(runs, outcomes, 0.1)
    assert rise.verdict == sharpness.verdict == HOLDS
    assert "left out" not in rise.margin and "(4 seeds)" in rise.margin
    assert "(3 seeds)" in sharpness.margin and sharpness.margin.endswith("not finite: resnet56 1")


def test_a_run_at_a_saddle_is_left_out_of_the_sharpness_and_named():
    """A negative eigenvalue of largest magnitude is no minimum's curvature: counted, the ResNet's -500 would make
    its mean the lowest, "flatter" by far; left out, the two nets' positive eigenvalues decide."""
    runs, outcomes = runs_and_outcomes(((0.9, 39.0), (1.0, 40.0), (1.1, 41.0), (1.0, -500.0)),
                                       ((3.9, 39.0), (4.0, 40.0), (4.1, 41.0), (4.0, 40.0)))
    rise, sharpness = surface.surface_checks(runs, outcomes, 0.1)
    assert rise.verdict == HOLDS and "left out" not in rise.margin
    assert sharpness.verdict == INCONCLUSIVE and "(3 seeds)" in sharpness.margin, sharpness.margin
    assert sharpness.margin.endswith("negative top eigenvalue (a saddle, not a minimum): resnet56 1")
    assert "saddle" in surface.SURFACE.rule


def test_surface_line_fits_80_columns():
    run = made_up(surface.RESNET, 9, curvature=0.2345, eigenvalue=1234.5, loss=0.04123)
    line = measure_line("surface 10 of 10", "resnet56/seed9", surface.surface_shown(run), 3599.0, 14)
    assert line == "surface 10 of 10  resnet56/seed9  loss 0.0412, rise 0.117, eig 1234  59 min 59 s"
    assert len(line) <= 80
    missing = measure_line("surface 1 of 6", "plain56/seed0", None, 0.4, 14)
    assert missing == "surface 1 of 6  plain56/seed0   unmeasured: no usable checkpoint  0.4 s"
    # Huge values keep 3 significant digits (4 for the eigenvalue) and a short exponent; the line they would
    # push past 80 columns puts them under the run's name
    sharp = made_up(surface.RESNET, 9, curvature=-2.0e9, eigenvalue=-12345.6, loss=1.0e9)
    assert surface.surface_shown(sharp) == "loss 1e9, rise -1e9, eig -1.235e4"  # rise: -2e9 x (0.25 + 0.25)
    assert measure_line("surface 1 of 6", "resnet56/seed0", surface.surface_shown(sharp), 0.4, 14) == (
        "surface 1 of 6  resnet56/seed0  loss 1e9, rise -1e9, eig -1.235e4  0.4 s")
    wrapped = measure_line("surface 20 of 20", "resnet56/seed9", "loss 2.92e38, rise -5.83e38, eig -2.917e38",
                           3599.0, 14)
    assert wrapped == ("surface 20 of 20  resnet56/seed9\n"
                       "                  loss 2.92e38, rise -5.83e38, eig -2.917e38  59 min 59 s")


# ---------------------------------------------------------------------------------------------
# registered, listed and run at tiny


def test_listed_by_the_command_with_its_sizes(cli):
    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    items = json.loads(out)
    names = [i["name"] for i in items]
    assert names.index(NAME) == names.index("lesion") + 1
    item = items[names.index(NAME)]
    assert item["source"]["note"] == "004" and "损失曲面更加平滑" in item["source"]["quote"]
    assert item["notes"] == ["004"]
    assert item["data"] == surface.DATA and set(item["sizes"]) == {"tiny", "quick", "full"}
    assert item["seeds"] == {"min": 1, "max": 10, "default": 3, "tiny": 1}
    assert "-0.5" not in item["rule"] and "L(theta + 0.5 d) + L(theta - 0.5 d) - 2 L(theta)" in item["rule"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # The loss read on 8 training images instead of tiny's 32: the same mechanics (slices, power iteration, table,
    # plots) at a quarter of the Hessian-vector products' cost; the tests read the probe from surface.PROBES
    out = tmp_path_factory.mktemp("surface")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(surface.PROBES, "tiny", dataclasses.replace(surface.PROBES["tiny"], images=8))
        yield run_experiment(NAME, "tiny", out=out), out


def test_tiny_writes_checks_table_plots_and_surface_rows(tiny):
    result, out = tiny
    assert (out / RESULT_FILE).is_file() and (out / REPORT_FILE).is_file()
    assert len(result.checks) == 2 and result.verdict == INCONCLUSIVE  # one seed decides nothing
    assert all("fewer than 3 seeds" in c.margin for c in result.checks)
    assert {p.name for p in result.plots} == {"loss_slices.png", "sharpness.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in result.plots)
    assert [run.parent.name for run in result.runs] == list(surface.NETS)
    with open(out / TABLE_CSV) as handle:
        table = list(csv.DictReader(handle))
    probe = surface.PROBES["tiny"]
    for net in surface.NETS:
        slices = [r for r in table if r["setting"] == f"slice: {net}"]
        assert [int(r["direction"]) for r in slices] == list(range(probe.directions))
        for r in slices:
            losses = [float(v) for v in r["losses"].split()]
            alphas = [float(v) for v in r["alphas"].split()]
            assert len(losses) == len(alphas) == surface.GRID_POINTS
            assert int(r["images"]) == probe.images
            assert losses[alphas.index(0.0)] == pytest.approx(float(r["loss"]), rel=1e-5)  # alpha 0: the trained loss
            rise = losses[alphas.index(0.5)] + losses[alphas.index(-0.5)] - 2 * float(r["loss"])
            assert float(r["rise"]) == pytest.approx(rise, rel=1e-4, abs=1e-6)
            second = [a - 2 * b + c for a, b, c in zip(losses, losses[1:], losses[2:])]
            assert r["convex"] == str(all(s >= 0 for s in second))
        (sharp,) = [r for r in table if r["setting"] == f"sharpness: {net}"]
        assert math.isfinite(float(sharp["top_eigenvalue"]))
        assert int(sharp["power_iterations"]) == surface.PROBES["tiny"].iterations == 5  # tiny's, not quick's 20
        (summary,) = [r for r in table if r["setting"] == net and r["seeds"]]
        assert int(summary["slices"]) == probe.directions
        assert int(summary["nonconvex_slices"]) == sum(r["convex"] == "False" for r in slices)


def test_tiny_runs_record_degradation_s_recipe_at_16_pixels(tiny):
    result, _ = tiny
    for run in result.runs:
        config = RunFolder(run).read_config()
        assert config.model.name == run.parent.name and config.data.image_size == 16
        assert (config.optim.name, config.optim.lr, config.optim.lr_batch) == ("sgd", 0.1, 128)
        assert config.schedule.name == "cosine" and not config.aug.hflip
