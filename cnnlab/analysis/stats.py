"""Per-layer activation and gradient statistics of one forward/backward pass.

The lecture's weight-initialisation demonstration (a deep tanh net whose activations shrink to zero
with too small a scale and pile up at +-1 with too large a one) applied to any model: every
weighted layer (conv, linear) and every activation module reports the mean and std of its output,
the share of dead ReLU units or saturated tanh/sigmoid units, and, for weighted layers, the size of
its weight gradient relative to its weights.
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.layers.act import QuickGELU

# Modules whose output is the "activation" of the lecture's histograms.
RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU)
SATURATING = (nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid)
ACTIVATIONS = RELU_LIKE + SATURATING + (nn.GELU, QuickGELU, nn.SiLU, nn.ELU, nn.Mish, nn.Hardswish)
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Norm layers that can rescale what they are given to unit variance from the statistics they compute
NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
SATURATION_MARGIN = 0.01  # a share of the output range: tanh within 0.02 of +-1 (sigmoid 0.01 of 0 or 1), gradient near 0


@dataclass
class LayerStats:
    name: str  # module path, e.g. "features.stage1.0.conv1.conv"
    kind: str  # module class name
    mean: float  # of the output, over the batch and every position
    std: float
    dead: Optional[float] = None  # ReLU-like: share of units (channel x position) zero for every image
    saturated: Optional[float] = None  # tanh/sigmoid: share of outputs within SATURATION_MARGIN of a bound
    grad_ratio: Optional[float] = None  # weighted layers: ||dL/dW|| / ||W||, the size of a unit-lr update
    # weighted layers: ||dL/dW|| * ||W||, the gradient on the weight's direction. For a layer whose output a norm
    # rescales, L(cW) = L(W), so ||dL/dW|| goes as 1/||W|| and grad_ratio as 1/||W||^2: the init's scale, not the
    # backward signal; this product cancels it (a plain-110's vanishing gradient still shows)
    direction_grad: Optional[float] = None
    classifier: bool = False  # the final classifier: small by design (logits near 0 at init)
    frozen: bool = False  # a conv or linear layer whose weight does not train (requires_grad off: model.freeze)
    # a conv or linear layer whose output feeds only a norm layer that normalises it by the statistics it computes
    # (BatchNorm in training, GroupNorm, LayerNorm, InstanceNorm): its own scale reaches no later layer
    normalised: bool = False
    extra: dict = field(default_factory=dict)


def _saturated_share(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid)):
        low, high = 0.0, 1.0
    else:  # tanh, hardtanh: bounds +-1
        low, high = -1.0, 1.0
    span = (high - low) * SATURATION_MARGIN
    return ((out <= low + span) | (out >= high - span)).float().mean().item()


def _normalises(module: nn.Module) -> bool:
    """Whether a norm layer divides by statistics of its input in this pass, rather than by fixed numbers
    (BatchNorm and InstanceNorm on running statistics: eval mode, ``train.bn_eval``, frozen stages)."""
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return module.training or not module.track_running_stats
    return isinstance(module, NORMS)


def _consumers(root) -> Counter:
    """How many uses each autograd node's output has in the graph that ends at ``root`` (a node used twice by
    one operation, as in x + x, counts twice)."""
    uses: Counter = Counter()
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for following, _ in node.next_functions:
            if following is not None:
                uses[following] += 1
                stack.append(following)
    return uses


def _classifier(model: nn.Module) -> Optional[nn.Module]:
    """The model's main classifier layer (small on purpose at init), for the zoo's and torchvision's models alike;
    None for a model whose head cannot be found."""
    from cnnlab.errors import CnnlabError
    from cnnlab.models.stages import classifier_names

    try:
        names = classifier_names(model)
    except CnnlabError:
        return None
    return dict(model.named_modules()).get(names[0]) if names else None


def layer_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     train_mode: Optional[Callable[[nn.Module], None]] = None) -> list[LayerStats]:
    """Statistics of every weighted and activation layer for one batch, in forward order.

    The model runs in train mode (BatchNorm uses the batch's statistics, as the first training step
    does) on a copy-free pass; the gradients it leaves are cleared afterwards. ``train_mode`` puts the model
    in a run's first-step modes instead (default ``model.train()``): a fine-tuning run's frozen stages and
    ``train.bn_eval`` run their BatchNorm on running statistics and their dropout off. In-place activations
    (``ReLU(inplace=True)``) are read from their output, which is what the next layer sees.
    """
    rows: list[LayerStats] = []
    by_module: dict[nn.Module, LayerStats] = {}
    hooks = []
    # id of a weighted layer's output tensor -> (a weak reference to it, its row, its autograd node), for this
    # pass: a norm layer given that very tensor makes the row a candidate for `normalised`. Weak: holding every
    # output to the end of the pass would keep maps alive that nothing else needs (vgg11's peak rose 21%); a
    # dead reference cannot match a new tensor that took its id.
    outputs: dict[int, tuple[weakref.ref, LayerStats, object]] = {}
    fed_to_norm: list[tuple[LayerStats, object]] = []  # (row, the layer's output node) whose output a norm took

    def normalising(module: nn.Module, inputs) -> None:
        held = outputs.get(id(inputs[0])) if inputs else None
        if held is not None and held[0]() is inputs[0] and _normalises(module):
            fed_to_norm.append((held[1], held[2]))

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            out = output.detach().float()
            row = LayerStats(name, type(module).__name__, out.mean().item(), out.std().item(),
                             classifier=module is classifier,
                             frozen=isinstance(module, WEIGHTED) and not module.weight.requires_grad)
            if isinstance(module, RELU_LIKE) and out.dim() >= 2:
                # A unit is dead for this batch when no image activates it: (B, C, H, W) -> (C, H, W)
                row.dead = (out <= 0).all(dim=0).float().mean().item()
            if isinstance(module, SATURATING) and not isinstance(module, RELU_LIKE):  # ReLU6 is a Hardtanh
                row.saturated = _saturated_share(module, out)
            rows.append(row)
            by_module.setdefault(module, row)
            if isinstance(module, WEIGHTED):
                outputs[id(output)] = (weakref.ref(output), row, output.grad_fn)
        return hook

    classifier = _classifier(model)
    was_training = model.training
    if train_mode is None:
        model.train()
    else:
        train_mode(model)  # before the hooks: finding a model's stages runs it on shapes only
    for name, module in model.named_modules():
        if isinstance(module, WEIGHTED + ACTIVATIONS):
            hooks.append(module.register_forward_hook(record(name)))
        if isinstance(module, NORMS):
            hooks.append(module.register_forward_pre_hook(normalising))
    model.zero_grad(set_to_none=True)
    try:
        output = model(x)
        logits = output.logits if hasattr(output, "logits") else output
        loss = F.cross_entropy(logits.float(), y)
        # A layer is normalised when the norm is the only use of its output: a pre-activation ResNet's stem feeds
        # its first block's norm and, past it, the block's identity shortcut, which carries the stem's scale on
        consumers = _consumers(loss.grad_fn)
        for row, node in fed_to_norm:
            row.normalised = node is not None and consumers[node] == 1
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
        outputs.clear()
        fed_to_norm.clear()
    for module, row in by_module.items():
        if isinstance(module, WEIGHTED) and module.weight.grad is not None:
            weight_norm = module.weight.detach().norm().item()
            grad_norm = module.weight.grad.norm().item()
            row.grad_ratio = grad_norm / max(weight_norm, 1e-12)
            row.direction_grad = grad_norm * weight_norm
    model.zero_grad(set_to_none=True)
    return rows
