"""cnnlab.layers.fused: BatchNorm + ReLU (+ the residual addition) as one CPU kernel in training.

The reference is torch's own BatchNorm2d, ReLU and addition: the kernel must give their outputs, gradients
and running statistics, and a network's gradients as close to a float64 computation as torch's fp32 ones
are. Every call it does not take (eval mode, bf16, NCHW, hooks, FlopCounterMode, other norms) must run
torch's modules. The speed is bench/train_throughput.py's to measure (docs/speed.md).
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.layers import BasicBlock, Bottleneck, ConvNormAct, fused, residual
from cnnlab.models import create_model
from cnnlab.train import engine

CL = torch.channels_last


@pytest.fixture(scope="module", autouse=True)
def kernel():
    """Built once per machine (about 20 s the first time; torch caches it): a test that needs it fails if it cannot
    be built, rather than skipping, since the Makefile installs the compiler."""
    module, _ = fused.load()
    return module


def counting(monkeypatch, function=fused._BatchNormReLU) -> list:
    """Every call of an autograd function (the kernel's by default), recorded by its first argument's shape."""
    calls, apply = [], function.apply
    monkeypatch.setattr(function, "apply", lambda *args: calls.append(args[0].shape) or apply(*args))
    return calls


def norm_pair(channels: int, momentum) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    """Two equal BatchNorms with a scale and shift away from torch's defaults."""
    norm = nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm, copy.deepcopy(norm)


@pytest.mark.parametrize("shape", [(4, 16, 6, 6), (3, 33, 5, 7), (6, 1, 4, 4), (4, 64, 1, 1)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_kernel_computes_what_torchs_batchnorm_addition_and_relu_compute(shape, with_residual, momentum):
    torch.manual_seed(0)
    theirs, ours = norm_pair(shape[1], momentum)
    for _ in range(3):  # three batches: the running statistics move three times (cumulatively when momentum is None)
        x = (torch.randn(shape) * 2 + 0.7).contiguous(memory_format=CL).requires_grad_()
        residual = torch.randn(shape).contiguous(memory_format=CL).requires_grad_() if with_residual else None
        expected = torch.relu(theirs(x) + (residual if with_residual else 0))
        with fused.enabled():
            got = fused.batch_norm_relu(x, ours, nn.ReLU(), residual)
        assert got is not None and got.is_contiguous(memory_format=CL)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(got > 0, expected > 0)  # the same units pass (no input sits on the ReLU's edge here)
        grad = torch.randn(shape)
        inputs = [x] + ([residual] if with_residual else [])
        expected_grads = torch.autograd.grad(expected, inputs + [theirs.weight, theirs.bias], grad)
        got_grads = torch.autograd.grad(got, inputs + [ours.weight, ours.bias], grad)
        for got_grad, expected_grad in zip(got_grads, expected_grads):
            torch.testing.assert_close(got_grad, expected_grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("where", ["x", "residual", "inf in x"])
def test_a_nan_or_inf_reaches_the_output_statistics_and_gradients_as_in_torch(where):
    """std::max(0.f, NaN) is 0: the kernel read a NaN as 0, a NaN variance as 0 (running_var stayed finite) and
    masked NaN gradients away, so a diverged network's loss stayed finite and the run that torch stops trained on.
    The same NaN pattern as torch's, everywhere."""
    torch.manual_seed(0)
    shape = (2, 3, 2, 2)
    theirs, ours = norm_pair(shape[1], 0.1)
    x = torch.randn(shape)
    residual = torch.randn(shape)
    bad = float("inf") if where == "inf in x" else float("nan")
    (residual if where == "residual" else x)[1, 0, 1, 1] = bad
    x = x.contiguous(memory_format=CL).requires_grad_()
    residual = residual.contiguous(memory_format=CL).requires_grad_() if where == "residual" else None
    expected = torch.relu(theirs(x) + (residual if residual is not None else 0))
    with fused.enabled():
        got = fused.batch_norm_relu(x, ours, nn.ReLU(), residual)
    assert got is not None
    assert torch.equal(got.isnan(), expected.isnan()) and bool(expected.isnan().any())
    torch.testing.assert_close(got, expected, equal_nan=True)
    torch.testing.assert_close(ours.running_var, theirs.running_var, equal_nan=True)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, equal_nan=True)
    inputs = [x] + ([residual] if residual is not None else [])
    grad = torch.randn(shape)
    expected_grads = torch.autograd.grad(expected, inputs + [theirs.weight, theirs.bias], grad)
    got_grads = torch.autograd.grad(got, inputs + [ours.weight, ours.bias], grad)
    for got_grad, expected_grad in zip(got_grads, expected_grads):
        assert torch.equal(got_grad.isnan(), expected_grad.isnan()), (got_grad, expected_grad)
        torch.testing.assert_close(got_grad, expected_grad, equal_nan=True, rtol=1e-4, atol=1e-5)


def test_a_norm_without_a_batch_count_updates_as_torchs_does():
    """num_batches_tracked may be None (torch's BatchNorm allows it): the kernel's update failed on it."""
    for momentum in (0.1, None):
        theirs, ours = norm_pair(3, momentum)
        theirs.num_batches_tracked = ours.num_batches_tracked = None
        x = torch.randn(2, 3, 3, 3).contiguous(memory_format=CL)
        expected = torch.relu(theirs(x))
        with fused.enabled():
            got = fused.batch_norm_relu(x, ours, nn.ReLU())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
        assert ours.num_batches_tracked is None


def test_second_derivatives_are_refused_not_read_as_zero():
    """once_differentiable refused them only where its error node was reached: the second derivative with
    respect to x and the scale came back None (allow_unused), and a network's Hessian-vector products missed the
    norms' part in silence."""
    from cnnlab.errors import CnnlabError

    _, norm = norm_pair(4, 0.1)
    x = torch.randn(8, 4, 3, 3).contiguous(memory_format=CL).requires_grad_()
    with fused.enabled():
        y = fused.batch_norm_relu(x, norm, nn.ReLU())
    assert y is not None
    with pytest.raises(CnnlabError, match="has no second derivatives .* train.fused_norm_act=off"):
        torch.autograd.grad((y ** 3).sum(), [x, norm.weight], create_graph=True)
    with fused.enabled():  # a first derivative is as before
        y = fused.batch_norm_relu(x, norm, nn.ReLU())
    assert all(grad is not None for grad in torch.autograd.grad((y ** 3).sum(), [x, norm.weight]))


@pytest.mark.parametrize("shape, mean", [((16, 8, 12, 12), 1000.0), ((8, 32, 3, 3), -300.0), ((64, 4, 2, 2), 0.0)])
def test_statistics_are_as_exact_as_torchs(shape, mean):
    # var = E[x^2] - E[x]^2 cancels catastrophically in float32 when the mean dwarfs the spread (a mean of 1000,
    # a spread of 1); the kernel sums x minus the first row's value. The reference is torch's BatchNorm in float64;
    # the kernel's errors must be no larger than those of torch's float32 BatchNorm (a float32 mean of 1000 alone is
    # off by up to 3e-5).
    torch.manual_seed(0)
    theirs, ours = norm_pair(shape[1], 0.1)
    reference = copy.deepcopy(theirs).double()
    x = (torch.randn(shape) + mean).contiguous(memory_format=CL)
    exact = torch.relu(reference(x.double()))
    torch_error = (torch.relu(theirs(x)).double() - exact).abs().max()
    with fused.enabled():
        fused_error = (fused.batch_norm_relu(x, ours, nn.ReLU()).double() - exact).abs().max()
    assert fused_error <= 2 * torch_error + 1e-6, (fused_error, torch_error)
    torch_var_error = (theirs.running_var.double() - reference.running_var).abs().max()
    assert (ours.running_var.double() - reference.running_var).abs().max() <= 2 * torch_var_error + 1e-7


@pytest.mark.parametrize("with_residual", [False, True])
def test_bf16_maps_are_as_close_to_float64_as_torchs_bf16(with_residual):
    # Under bf16 autocast the conv hands BatchNorm bf16 maps; torch rounds the norm's output, the sum and the ReLU's
    # gradient to bf16 one after another, the kernel computes in float and rounds once. Both against float64.
    torch.manual_seed(0)
    shape = (16, 16, 10, 10)
    theirs, ours = norm_pair(16, 0.1)
    reference = copy.deepcopy(theirs).double()
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    residual = None
    if with_residual:
        residual = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    extra = [residual] if with_residual else []
    torch_out = torch.relu(theirs(x) + (residual if with_residual else 0))
    with fused.enabled():
        fused_out = fused.batch_norm_relu(x, ours, nn.ReLU(), residual)
    # float64 leaves of their own: a gradient that flowed back to the bf16 leaves would be rounded to bf16
    x64 = x.detach().double().requires_grad_()
    extra64 = [residual.detach().double().requires_grad_()] if with_residual else []
    exact = torch.relu(reference(x64) + (extra64[0] if with_residual else 0))
    assert fused_out.dtype == torch.bfloat16 and fused_out.is_contiguous(memory_format=CL)
    grad = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=CL)
    exact_grads = torch.autograd.grad(exact, [x64] + extra64 + [reference.weight, reference.bias], grad.double())
    torch_grads = torch.autograd.grad(torch_out, [x] + extra + [theirs.weight, theirs.bias], grad)
    fused_grads = torch.autograd.grad(fused_out, [x] + extra + [ours.weight, ours.bias], grad)

    def error(got, want):
        return ((got.double() - want).norm() / want.norm()).item()

    assert error(fused_out, exact) <= 2 * error(torch_out, exact) + 1e-6
    for fused_grad, torch_grad, exact_grad in zip(fused_grads, torch_grads, exact_grads):
        assert error(fused_grad, exact_grad) <= 2 * error(torch_grad, exact_grad) + 1e-6
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)


def float64_gradient_error(model: nn.Module, reference: nn.Module) -> float:
    """The largest relative error of ``model``'s gradients against the float64 ``reference``'s, over parameters."""
    return max(((p.grad.double() - q.grad).norm() / q.grad.norm()).item()
               for p, q in zip(model.parameters(), reference.parameters()) if q.grad.norm() > 0)


def gradients_three_ways(module: nn.Module, x: torch.Tensor) -> tuple[nn.Module, nn.Module, nn.Module, list]:
    """(torch's fp32 copy, the fused copy, the float64 copy) after one backward of a fixed random projection of
    the output, and the fused copy's kernel calls' shapes."""
    torch_copy, fused_copy, reference = module, copy.deepcopy(module), copy.deepcopy(module).double()
    weights = torch.randn(copy.deepcopy(module)(x).shape, generator=torch.Generator().manual_seed(1))
    (torch_copy(x) * weights).sum().backward()
    (reference(x.double()) * weights.double()).sum().backward()
    calls = []
    apply = fused._BatchNormReLU.apply
    with pytest.MonkeyPatch.context() as patch, fused.enabled():
        patch.setattr(fused._BatchNormReLU, "apply", lambda *args: calls.append(args[0].shape) or apply(*args))
        (fused_copy(x) * weights).sum().backward()
    return torch_copy, fused_copy, reference, calls


@pytest.mark.parametrize("name, build, shape, pairs", [
    # stem + 3 basic blocks x (conv1's pair, the tail: conv2's norm + the zero-pad shortcut + the block's ReLU)
    ("resnet8", lambda: create_model("resnet8", num_classes=10, in_chans=3), (8, 3, 16, 16), 1 + 3 * 2),
    # a bottleneck: two pairs, then the tail over the projection shortcut (a conv and a norm of its own)
    ("bottleneck", lambda: Bottleneck(16, 8, stride=2), (8, 16, 10, 10), 3),
    ("basic block, projection", lambda: BasicBlock(16, 32, stride=2), (8, 16, 10, 10), 2),
])
def test_networks_gradients_are_as_close_to_float64_as_torchs(name, build, shape, pairs):
    torch.manual_seed(0)
    module = build().to(memory_format=CL).train()
    x = torch.randn(shape).contiguous(memory_format=CL)
    torch_copy, fused_copy, reference, calls = gradients_three_ways(module, x)
    assert len(calls) == pairs == fused.fusable_pairs(module)
    torch_error = float64_gradient_error(torch_copy, reference)
    fused_error = float64_gradient_error(fused_copy, reference)
    assert fused_error <= 2 * torch_error + 1e-6, (fused_error, torch_error)
    for ours, theirs in zip(fused_copy.buffers(), torch_copy.buffers()):  # running statistics, batches counted
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-4, atol=1e-5)


def test_a_network_under_bf16_autocast_is_as_close_to_float64_as_torchs():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=3).to(memory_format=CL).train()
    twin, reference = copy.deepcopy(model), copy.deepcopy(model).double()
    x = torch.randn(16, 3, 16, 16).contiguous(memory_format=CL)
    weights = torch.randn(16, 10)
    (reference(x.double()) * weights.double()).sum().backward()
    for net, on in ((model, False), (twin, True)):
        with fused.enabled(on), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        (out.float() * weights).sum().backward()
    assert float64_gradient_error(twin, reference) <= 2 * float64_gradient_error(model, reference)


def test_a_few_sgd_steps_train_the_same_weights():
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=4, in_chans=1).to(memory_format=CL).train()
    twin = copy.deepcopy(model)
    batches = [(torch.randn(16, 1, 12, 12).contiguous(memory_format=CL), torch.randint(0, 4, (16,))) for _ in range(4)]
    losses = {}
    for label, net, on in (("torch", model, False), ("fused", twin, True)):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        with fused.enabled(on):
            for x, y in batches:
                loss = F.cross_entropy(net(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.setdefault(label, []).append(loss.item())
    assert losses["fused"] == pytest.approx(losses["torch"], rel=1e-4)
    for ours, theirs in zip(twin.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-3, atol=1e-4)


def backward_nodes(output: torch.Tensor) -> set[str]:
    """The names of every autograd node ``output``'s graph holds."""
    seen, names, todo = set(), set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def zero_pad_block_and_input(block_type=BasicBlock, seed=0) -> tuple[nn.Module, torch.Tensor]:
    """A block whose zero-pad shortcut subsamples and adds channels (16 -> 32, stride 2), with an input."""
    torch.manual_seed(seed)
    block = block_type(16, 8 if block_type is Bottleneck else 32, stride=2, shortcut="zero_pad")
    with torch.no_grad():  # norms away from 1 and 0, so the branch's gradient is not the shortcut's
        for norm in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return block.to(memory_format=CL).train(), torch.randn(8, 16, 9, 9).contiguous(memory_format=CL)


def torchs_shortcut(block: nn.Module) -> nn.Module:
    """``block`` with a no-op hook on its shortcut: the fused path then runs the shortcut by torch's operators."""
    block.shortcut.register_forward_hook(lambda *args: None)
    return block


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("block_type", [BasicBlock, Bottleneck])
def test_a_zero_pad_shortcut_runs_as_one_node_and_gives_torchs_gradients_bit_for_bit(monkeypatch, block_type,
                                                                                      kernel):
    # Both runs are on the fused path, the kernel on or declined; what differs is only how the shortcut's gradient
    # meets the branch's (9x9 maps: the odd size's last row and column land too).
    if not kernel:
        monkeypatch.setattr(fused, "batch_norm_relu", lambda *args, **kwargs: None)
    block, x = zero_pad_block_and_input(block_type)
    twin = torchs_shortcut(copy.deepcopy(block))
    weights = torch.randn(block(x).shape)
    grads = {}
    for label, net in (("split", block), ("torch", twin)):
        x_in = x.clone().requires_grad_()
        with fused.enabled():
            out = net(x_in)
        nodes = backward_nodes(out)
        assert ("_ZeroPadSplitBackward" in nodes) == (label == "split") != ("AvgPool2DBackward0" in nodes), nodes
        (out * weights).sum().backward()
        grads[label] = [x_in.grad] + [p.grad for p in net.parameters()]
    for ours, theirs in zip(grads["split"], grads["torch"]):
        assert torch.equal(ours, theirs)
    # its output is channels_last at odd sizes too, as the kernel reads its residual (else copied every step)
    assert residual._ZeroPadSplit.apply(x, 2, 16)[1].is_contiguous(memory_format=CL)


def test_the_zero_pad_node_runs_only_where_the_kernel_would(monkeypatch):
    splits = counting(monkeypatch, residual._ZeroPadSplit)
    block, x = zero_pad_block_and_input()
    with fused.enabled():
        block(x.requires_grad_())
        assert len(splits) == 1
        block(x.detach())  # no gradient to take
        with torch.no_grad():
            block(x)
        copy.deepcopy(block).to(memory_format=torch.contiguous_format)(x.contiguous())  # NCHW: the kernel declines
        block.eval()(x)  # eval mode: torch's modules, for tracing and export too
    assert len(splits) == 1


def test_a_branch_that_does_not_start_with_a_conv_keeps_torchs_shortcut():
    # The node adds into the gradient its branch hands back; only a conv's (or a pad's) backward makes that a
    # fresh tensor. Here the branch first adds a tensor made before the block: the addition's backward hands one
    # gradient to both its inputs, and an in-place add would reach that tensor's gradient too.
    class Shifted(nn.Module):
        def __init__(self, inner: nn.Module, shift: torch.Tensor) -> None:
            super().__init__()
            self.inner, self.shift = inner, shift

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x + self.shift)

    block, x = zero_pad_block_and_input()
    twin = torchs_shortcut(copy.deepcopy(block))
    grads = {}
    for label, net in (("block", block), ("torch", twin)):
        base = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).contiguous(memory_format=CL)
        base.requires_grad_()
        net.conv1 = Shifted(net.conv1, base * 1.0)
        with fused.enabled():
            out = net(x.clone().requires_grad_())
        assert "_ZeroPadSplitBackward" not in backward_nodes(out)
        out.sum().backward()
        grads[label] = base.grad
    assert torch.equal(grads["block"], grads["torch"])


def test_a_hook_that_keeps_the_branchs_gradient_sees_it_unchanged():
    # The node adds into the gradient its branch's first conv hands back; a backward hook on that block may keep
    # that very tensor, so there the shortcut runs torch's operators.
    block, x = zero_pad_block_and_input()
    twin = copy.deepcopy(block)
    kept = {}
    for label, net, on in (("torch", block, False), ("fused", twin, True)):
        net.conv1.register_full_backward_hook(lambda module, grad_in, grad_out, label=label: kept.update({
            label: grad_in[0]}))
        with fused.enabled(on):
            out = net(x.clone().requires_grad_())
        assert "_ZeroPadSplitBackward" not in backward_nodes(out)
        out.sum().backward()
    torch.testing.assert_close(kept["fused"], kept["torch"], rtol=1e-4, atol=1e-5)


def test_second_derivatives_go_through_the_zero_pad_node():
    # Norms held in eval mode while the block trains (train.bn_eval): the kernel declines them and torch's norms
    # have second derivatives, while the node still runs the shortcut; it must have them too.
    block, x = zero_pad_block_and_input()
    for norm in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.eval()
    twin = copy.deepcopy(block)
    second = {}
    for label, net, on in (("torch", block, False), ("split", twin, True)):
        x_in = x.clone().requires_grad_()
        with fused.enabled(on):
            out = net(x_in)
        assert ("_ZeroPadSplitBackward" in backward_nodes(out)) == on
        grad, = torch.autograd.grad((out ** 2).sum(), x_in, create_graph=True)
        second[label] = torch.autograd.grad((grad ** 2).sum(), x_in)[0]
    torch.testing.assert_close(second["split"], second["torch"], rtol=1e-4, atol=1e-5)
    assert second["torch"].abs().max() > 0


@pytest.mark.parametrize("name, options, pairs", [
    ("resnet8", {}, 1 + 3 * 2),
    ("resnet50", {}, 1 + 16 * 3),  # stem + 16 bottlenecks x (two pairs, the tail)
    ("resnet8", {"se": 4}, 1 + 3),  # SE sits between the last norm and the addition: no tail, conv1 pairs stay
    ("resnet8", {"drop_path_rate": 0.1}, 1 + 3),  # so does stochastic depth
    ("resnet8", {"norm": "gn"}, 0),
    ("resnet8", {"act": "gelu"}, 0),
    ("preact_resnet18", {}, 0),  # norm -> act -> conv: the activation's output feeds a conv, not a sum
    ("vgg_mini", {"cfg": [[1, 16], [1, 64], [1, 128], [1, 256]], "pool_before_norm": True}, 4),
    ("lenet5", {}, 0),
])
def test_pairs_are_counted_from_the_architecture(name, options, pairs):
    assert fused.fusable_pairs(create_model(name, num_classes=10, in_chans=1, **options)) == pairs


def test_a_model_uses_the_kernel_for_each_pair_and_torch_everywhere_else(monkeypatch):
    calls = counting(monkeypatch)
    model = create_model("resnet8", num_classes=10, in_chans=1).to(memory_format=CL).train()
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=CL)
    model(x)
    assert calls == []  # off unless switched on
    with fused.enabled():
        model(x)
        assert len(calls) == 7
        calls.clear()
        copy.deepcopy(model).to(memory_format=torch.contiguous_format)(x)  # NCHW maps: torch's kernels
        assert calls == []
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)  # bf16 maps, as autocast hands them over: the kernel too
        assert len(calls) == 7
        calls.clear()
        copy.deepcopy(model).double()(x.double())  # float64 maps and norms: torch's kernels
        assert calls == []
        model.eval()
        expected = model(x)
    assert calls == [] and not fused.active()
    assert torch.equal(expected, model(x))  # eval mode is torch's computation, bit for bit


def test_recording_lists_each_kernel_call_with_its_map_and_residual():
    # bench/train_throughput.py --convs weighs the memory the kernel moves from these records. The reference:
    # each BatchNorm's input as forward pre-hooks see it in torch's run (hooks make every pair torch's), and
    # which norms end a residual block.
    model = create_model("resnet8", num_classes=10, in_chans=1).to(memory_format=CL).train()
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=CL)
    tails = {id(block.fusable_tail().norm) for block in model.modules()
             if callable(getattr(block, "fusable_tail", None)) and block.fusable_tail() is not None}
    seen = []
    hooks = [norm.register_forward_pre_hook(lambda norm, args: seen.append(
        fused.KernelCall(args[0].shape, args[0].dtype, id(norm) in tails)))
        for norm in model.modules() if isinstance(norm, nn.BatchNorm2d)]
    model(x)
    for hook in hooks:
        hook.remove()
    with fused.enabled():
        model(x)  # outside recording(): nothing is kept
        with fused.recording() as calls:
            with fused.recording() as inner:
                model(x)
            assert inner == seen
            model(x).sum().backward()  # backward runs no new calls
            model.eval()
            model(x)  # torch's modules: not the kernel's calls
        assert fused._recorded is None
    assert calls == seen  # the outer recording keeps its own calls, not the inner one's
    assert len(seen) == 7 and sum(call.residual for call in seen) == 3
    # Worked by hand from fused_norm_act.cpp's passes: forward reads x twice and writes y, backward reads the
    # gradient and x twice and writes the input gradient; a residual adds one read forward, and backward reads y
    # twice and writes the residual's gradient. 4 B per fp32 element, 2 per bf16.
    elements = 4 * 16 * 12 * 12
    assert fused.KernelCall(torch.Size([4, 16, 12, 12]), torch.float32, False).step_bytes == elements * 4 * (3 + 5)
    assert fused.KernelCall(torch.Size([4, 16, 12, 12]), torch.bfloat16, True).step_bytes == elements * 2 * (4 + 8)


def test_hooks_see_the_modules_they_observe_run(monkeypatch):
    calls = counting(monkeypatch)
    model = create_model("resnet8", num_classes=10, in_chans=1).to(memory_format=CL).train()
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=CL)
    seen = []
    handle = model.features.stem.act.register_forward_hook(lambda *args: seen.append("stem act"))
    with fused.enabled():
        model(x)
    assert seen == ["stem act"] and len(calls) == 6  # only the observed pair runs torch's modules
    handle.remove()
    calls.clear()
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)  # a global hook: every module
    try:
        with fused.enabled():
            model(x)
    finally:
        handle.remove()
    assert calls == []


def test_flop_counting_and_other_norms_see_torchs_operators(monkeypatch):
    calls = counting(monkeypatch)
    model = create_model("resnet8", num_classes=10, in_chans=1).to(memory_format=CL).train()
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=CL)
    counts = []
    for on in (False, True):
        with fused.enabled(on), FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        counts.append(counter.get_flop_counts())
    assert counts[0] == counts[1] and calls == []
    sync = nn.SyncBatchNorm(16).train()  # a subclass: not the module the kernel reproduces
    with fused.enabled():
        assert fused.batch_norm_relu(torch.randn(2, 16, 4, 4).contiguous(memory_format=CL), sync, nn.ReLU()) is None


def test_without_gradients_it_updates_the_running_statistics_as_torch_does():
    # SWA's BatchNorm recalibration runs training-mode forwards under no_grad with momentum None
    torch.manual_seed(0)
    theirs, ours = norm_pair(8, None)
    conv_theirs = ConvNormAct(3, 8).to(memory_format=CL).train()
    conv_ours = copy.deepcopy(conv_theirs)
    conv_theirs.norm, conv_ours.norm = theirs, ours
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(4, 3, 6, 6).contiguous(memory_format=CL)
            expected = conv_theirs(x)
            with fused.enabled():
                torch.testing.assert_close(conv_ours(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == 3


TINY = ["model.name=resnet8", "data.spec=synthetic:classes=3,train=64,val=32,test=32,channels=1", "data.image_size=12",
        "train.batch_size=16", "train.epochs=1", "train.device=cpu", "train.channels_last=true", "train.precision=fp32",
        "log.quiet=true", "log.curves=false"]


def test_training_uses_it_where_auto_applies_and_records_it(tmp_path, capsys):
    results = {}
    for setting in ("auto", "off"):
        config = apply_overrides(RunConfig(), TINY + [f"train.fused_norm_act={setting}"])
        result = engine.train(config, tmp_path / setting)
        environment = json.loads((tmp_path / setting / "environment.json").read_text())
        results[setting] = (environment["fused_norm_act"], result)
        assert not fused.active()  # the switch ends with the run
    assert results["auto"][0] is True and results["off"][0] is False
    assert "BatchNorm + ReLU run as one CPU kernel in training (7 pairs)" in capsys.readouterr().err
    assert results["auto"][1].final["val_loss"] == pytest.approx(results["off"][1].final["val_loss"], rel=1e-3)


def test_a_run_that_diverges_stops_with_the_kernel_as_without_it(tmp_path):
    """With the kernel the NaN never reached the loss (it read NaN as 0): a run at lr 1e4 ended 'finished', exit 0,
    with NaN weights, where torch's layers stop it as diverged."""
    for setting in ("on", "off"):
        config = apply_overrides(RunConfig(), TINY + [f"train.fused_norm_act={setting}", "optim.lr=10000",
                                                      "train.epochs=3"])
        with pytest.raises(engine.NonFiniteLossError):
            engine.train(config, tmp_path / setting)


def test_auto_trains_with_torchs_kernels_where_it_does_not_apply():
    model = create_model("resnet8", num_classes=3, in_chans=1)
    cpu = torch.device("cpu")
    assert engine.resolve_fused_norm_act("auto", cpu, None, True, model) == (
        True, "BatchNorm + ReLU run as one CPU kernel in training (7 pairs)")  # built already: no seconds to tell
    assert engine.resolve_fused_norm_act("auto", cpu, torch.bfloat16, True, model)[0]  # bf16 autocast's maps too
    for device, dtype, channels_last in ((torch.device("cuda"), None, True), (cpu, None, False)):
        assert engine.resolve_fused_norm_act("auto", device, dtype, channels_last, model) == (False, None)
    lenet = create_model("lenet5", num_classes=3)
    assert engine.resolve_fused_norm_act("auto", cpu, None, True, lenet) == (False, None)
    assert engine.resolve_fused_norm_act("auto", cpu, None, True, model, compiled=True) == (False, None)
    with pytest.raises(CnnlabError, match=r"needs the device is the CPU \(this run trains on cuda\)"):
        engine.resolve_fused_norm_act("on", torch.device("cuda"), None, True, model)
    with pytest.raises(CnnlabError, match=r"needs train.compile is off \(a compiled model runs inductor's kernels\)"):
        engine.resolve_fused_norm_act("on", cpu, None, True, model, compiled=True)


def test_a_kernel_that_cannot_be_built_is_named_and_auto_goes_on_without_it(monkeypatch):
    def no_compiler(verbose=False):
        raise fused.FusedKernelUnavailable("RuntimeError: no C++ compiler")

    monkeypatch.setattr(fused, "load", no_compiler)
    model = create_model("resnet8", num_classes=3, in_chans=1)
    on, note = engine.resolve_fused_norm_act("auto", torch.device("cpu"), None, True, model)
    assert not on and "could not be built here (RuntimeError: no C++ compiler)" in note
    with pytest.raises(CnnlabError, match="train.fused_norm_act=on: .* could not be built here .*no C\\+\\+ compiler"):
        engine.resolve_fused_norm_act("on", torch.device("cpu"), None, True, model)


def test_a_failed_build_is_not_tried_again_in_the_same_process(monkeypatch):
    attempts = []

    def failing_build(**kwargs):
        attempts.append(kwargs["name"])
        raise RuntimeError("Error building extension 'cnnlab_fused_norm_act': g++: not found")

    monkeypatch.setattr(fused, "_kernel", None)
    monkeypatch.setattr(fused, "_failure", None)
    monkeypatch.setattr("torch.utils.cpp_extension.load", failing_build)
    for _ in range(2):
        with pytest.raises(fused.FusedKernelUnavailable, match="RuntimeError: Error building .* g\\+\\+: not found"):
            fused.load()
    assert len(attempts) == 1


def test_loading_it_prints_nothing_about_cuda():
    # Importing torch's extension builder logs "No CUDA runtime is found" on a machine without a GPU: a line on every
    # CPU training run's screen that says nothing about a CPU kernel. A fresh process: the import happens once.
    code = "from cnnlab.layers import fused; fused.load()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "CUDA" not in done.stderr, done.stderr


@pytest.mark.parametrize("settings, trained_pairs", [([], "all"), (["train.bn_eval=all"], 0),
                                                      (["model.freeze=stage2", "train.bn_eval=frozen"], "some")])
def test_pairs_whose_batchnorm_train_bn_eval_keeps_in_eval_mode_are_not_counted(settings, trained_pairs):
    """The kernel is a training kernel: a BatchNorm that train.bn_eval keeps in eval mode never runs it. The note
    said "7 pairs" with bn_eval=all, where none ran fused, and train.fused_norm_act=on was accepted."""
    from cnnlab.train.finetune import fine_tune_plan

    model = create_model("resnet8", num_classes=3)
    config = apply_overrides(RunConfig(), ["model.name=resnet8", *settings])
    in_eval = engine.eval_mode_norms(model, fine_tune_plan(model, config))
    every = fused.fusable_pairs(model)
    counted_pairs = fused.fusable_pairs(model, in_eval)
    # what runs in eval mode, counted independently: the pairs' norms left in training mode by the plan's apply
    fine_tune_plan(model, config).apply(model, fine_tune_plan(model, config).probe_epochs)
    trained = sum(1 for module in model.modules() if getattr(module, "norm_then_act", False)
                  and fused.fusable(module.norm, module.act) and module.norm.training)
    trained += sum(1 for module in model.modules() if callable(getattr(module, "fusable_tail", None))
                   and module.fusable_tail() is not None and module.fusable_tail().norm.training)
    assert counted_pairs == trained
    assert {"all": counted_pairs == every, 0: counted_pairs == 0, "some": 0 < counted_pairs < every}[trained_pairs]
    if counted_pairs == 0:
        with pytest.raises(CnnlabError, match="or train.bn_eval keeps each in eval mode"):
            engine.resolve_fused_norm_act("on", torch.device("cpu"), None, True, model, in_eval=in_eval)


def test_a_failed_build_says_why_not_the_compiler_s_command_line():
    """torch's message starts with the whole command line: cut at 300 characters, the note said
    "[1/2] c++ -MMD -MF ... -isystem /work/main/.venv/lib/python3.11/site-pa" and never "c++: not found"."""
    command = "[1/2] c++ -MMD -MF fused_norm_act.o.d " + " ".join(f"-isystem /long/include/path/{i}" for i in range(40))
    message = (f"Error building extension 'cnnlab_fused_norm_act_0bc099b7': {command}\n"
               "/bin/sh: 1: c++: not found\nninja: build stopped: subcommand failed.\n")
    said = fused.build_failure(message)
    assert said == "Error building extension 'cnnlab_fused_norm_act_0bc099b7'; /bin/sh: 1: c++: not found"
    assert fused.build_failure("[Errno 28] No space left on device") == "[Errno 28] No space left on device"
    assert len(fused.build_failure("x" * 1000)) == fused.REASON_CHARS


def test_a_user_without_a_home_builds_and_caches_under_the_temporary_folder(monkeypatch, tmp_path):
    """HOME unset and no passwd entry (docker run --user 12345): Path.home() raised, an internal error in train,
    models and data stats, and torch's default ~/.cache/torch_extensions became a folder named '~' here."""
    import pwd
    import tempfile

    import cnnlab

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("CNNLAB_CACHE", raising=False)
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cnnlab.cache_root() == tmp_path / f"cnnlab-cache-{os.getuid()}"
    folder = fused._build_directory("kernel")
    assert folder == str(tmp_path / f"cnnlab-cache-{os.getuid()}" / "torch_extensions" / "kernel")
    assert Path(folder).is_dir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fused._build_directory("kernel") is None  # torch's own choice where there is a home
