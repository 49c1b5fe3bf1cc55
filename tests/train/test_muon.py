"""Muon: the Newton-Schulz orthogonalisation, the step against torch.optim.Muon and torch.optim.SGD, and
which weights cnnlab gives it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.config import OptimConfig, RunConfig, apply_overrides, validate_config
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.train.muon import Muon, orthogonalize, shape_scale
from cnnlab.train import engine
from cnnlab.train.optim import build_optimizer, muon_weight_ids


@pytest.mark.parametrize("shape", [(64, 144), (144, 64), (16, 16)])
def test_orthogonalize_keeps_the_singular_vectors_and_evens_the_values(shape):
    torch.manual_seed(0)
    matrix = torch.randn(shape) * 1000  # the scale of the gradient does not matter
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    result = orthogonalize(matrix, steps=5)
    in_basis = u.T @ result @ vh.T  # diagonal when result = U S' V^T
    diagonal = torch.diagonal(in_basis)
    assert (in_basis - torch.diag(diagonal)).abs().max() < 1e-4
    # The quintic's known band after 5 steps: about [0.7, 1.2] (a square random matrix's smallest
    # singular value is 1/1000 of its norm, so it ends lower, still raised from 0.001 to 0.5).
    assert diagonal.min() > 0.45 and diagonal.max() < 1.2
    assert result.shape == matrix.shape and result.dtype == matrix.dtype


def test_shape_scale_enlarges_tall_matrices_only():
    assert shape_scale(torch.Size([64, 16, 3, 3])) == 1.0  # (64, 144): wide
    assert shape_scale(torch.Size([256, 16, 1, 1])) == pytest.approx(4.0)  # (256, 16): sqrt(16)
    assert shape_scale(torch.Size([10, 10])) == 1.0


def random_grads(params: list[torch.Tensor], steps: int, seed: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(steps)]


def run_steps(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads) -> None:
    for step_grads in grads:
        for param, grad in zip(params, step_grads):
            param.grad = grad.clone()
        optimizer.step()


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_groups_step_as_torch_muon(nesterov):
    """torch.optim.Muon is the reference: its momentum is an average (lerp) where ours is a sum, which
    differs by the factor 1 - momentum that the orthogonalisation divides out."""
    torch.manual_seed(1)
    ours = [torch.randn(32, 48), torch.randn(48, 32)]  # wide and tall (tall steps sqrt(48/32) farther)
    theirs = [p.clone() for p in ours]
    settings = {"lr": 0.05, "weight_decay": 0.1, "momentum": 0.9, "nesterov": nesterov}
    optimizer = Muon([{"params": ours, "muon": True, **settings}], lr=0.05, ns_dtype=torch.bfloat16)
    reference = torch.optim.Muon(theirs, **settings)
    starts = [p.clone() for p in ours]
    grads = random_grads(ours, steps=4, seed=2)
    run_steps(optimizer, ours, grads)
    run_steps(reference, theirs, grads)
    for mine, expected, start in zip(ours, theirs, starts):
        # Both orthogonalise in bf16 (8 bits of mantissa), so they agree to a few percent of the
        # distance moved; a different convention (the tall matrix's sqrt(1.5), Nesterov, the decay)
        # would be off by 20% of it or more.
        moved = (expected - start).abs().max()
        assert (mine - expected).abs().max() < 0.05 * moved


def test_sgd_groups_step_exactly_as_torch_sgd():
    torch.manual_seed(3)
    ours = [torch.randn(8, 4, 3, 3), torch.randn(8)]
    theirs = [p.clone() for p in ours]
    groups = [{"params": ours[:1], "weight_decay": 0.01}, {"params": ours[1:], "weight_decay": 0.0}]
    optimizer = Muon(groups, lr=0.1, momentum=0.9, nesterov=True)
    reference = torch.optim.SGD([{**g, "params": theirs[i:i + 1]} for i, g in enumerate(groups)],
                                lr=0.1, momentum=0.9, nesterov=True)
    grads = random_grads(ours, steps=5, seed=4)
    run_steps(optimizer, ours, grads)
    run_steps(reference, theirs, grads)
    for mine, expected in zip(ours, theirs):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-6)


def test_a_conv_step_is_orthogonal_whatever_the_gradient_scale():
    """The step of a (16, 8, 3, 3) filter bank, viewed as (16, 72), has all singular values near 1: a
    gradient 10^6 times larger moves the weights by the same amount."""
    steps = []
    for scale in (1.0, 1e6):
        weight = torch.zeros(16, 8, 3, 3)
        optimizer = Muon([{"params": [weight], "muon": True}], lr=1.0, momentum=0.0)
        torch.manual_seed(5)
        weight.grad = torch.randn(16, 8, 3, 3) * scale
        optimizer.step()
        steps.append(-weight.clone())
    singular = torch.linalg.svdvals(steps[0].reshape(16, 72))
    assert singular.min() > 0.6 and singular.max() < 1.2
    torch.testing.assert_close(steps[0], steps[1], rtol=0, atol=1e-5)


def test_hidden_conv_weights_get_muon_the_classifier_and_vectors_sgd():
    model = create_model("vgg_mini", num_classes=10, in_chans=1, cfg=[[1, 16], [1, 32]])
    optimizer = build_optimizer(model, OptimConfig(name="muon", lr=0.4, lr_batch=128, muon_lr=0.03), batch_size=256)
    by_name = {group["name"]: group for group in optimizer.param_groups}
    conv_weights = [p for m in model.modules() if isinstance(m, nn.Conv2d) for p in [m.weight]]
    classifier = model.get_classifier().weight
    assert {id(p) for p in by_name["muon"]["params"]} == {id(p) for p in conv_weights}
    assert by_name["muon"]["muon"] and not by_name["decay"]["muon"] and not by_name["no_decay"]["muon"]
    # Last, so that the range test (cnnlab lr-find) still sweeps optim.lr in the first group.
    assert optimizer.param_groups[-1] is by_name["muon"]
    assert any(p is classifier for p in by_name["decay"]["params"])
    assert all(p.ndim == 1 for p in by_name["no_decay"]["params"])
    # The Muon rate is not batch-scaled; SGD's follows lr_batch: 0.4 * 256 / 128.
    assert by_name["muon"]["peak_lr"] == pytest.approx(0.03)
    assert by_name["decay"]["peak_lr"] == pytest.approx(0.8)
    assert by_name["muon"]["momentum"] == 0.95 and by_name["decay"]["momentum"] == 0.9


def test_a_conv_classifier_and_frozen_weights_stay_out_of_muon():
    model = create_model("nin", num_classes=10, in_chans=1)  # its classifier is a 1x1 conv
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.weight.requires_grad_(False)
    chosen = muon_weight_ids(model)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Conv2d) and id(classifier.weight) not in chosen
    optimizer = build_optimizer(model, OptimConfig(name="muon"), batch_size=8)
    muon_params = next(g["params"] for g in optimizer.param_groups if g["muon"])
    assert all(p is not first.weight and p is not classifier.weight for p in muon_params)
    assert len(muon_params) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) - 2


@pytest.mark.parametrize("key, value, message", [
    ("muon_lr", 0.0, "optim.muon_lr=0.0 must be positive"),
    ("muon_momentum", 1.0, r"optim.muon_momentum=1.0 must lie in \[0, 1\)"),
    ("muon_ns_steps", 0, r"optim.muon_ns_steps=0 must lie in 1..20"),
])
def test_bad_muon_settings_are_named(key, value, message):
    config = RunConfig()
    setattr(config.optim, key, value)
    with pytest.raises(CnnlabError, match=message):
        validate_config(config)


@pytest.mark.parametrize("units, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_the_engine_orthogonalises_in_bf16_only_where_the_cpu_has_bf16_units(monkeypatch, units, expected):
    monkeypatch.setattr(engine, "cpu_has_bf16_units", lambda: units)
    config = apply_overrides(RunConfig(), ["model.name=lenet5", "data.spec=digits", "optim.name=muon"])
    run = engine.setup_run(config, "cpu", validation=False)
    assert isinstance(run.optimizer, Muon) and run.optimizer.ns_dtype == expected
