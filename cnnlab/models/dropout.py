"""Dropout options every architecture shares: the kind, and dropout after hidden FC layers and stages.

``create_model`` calls :func:`apply_dropout` after every build (zoo and ``tv:`` models):

* ``kind``: ``inverted`` (torch's ``nn.Dropout``: training divides by the keep probability, test time
  does nothing) or ``vanilla`` (the lecture's first listing, :class:`~cnnlab.layers.VanillaDropout`:
  training does not scale, test time multiplies by the keep probability). Every ``nn.Dropout`` module
  of the model is swapped for the chosen class at the same rate and under the same name.
* ``hidden_rate``: one dropout after each hidden fully connected layer (after its activation when one
  follows it): AlexNet's and VGG's fc6 and fc7, LeNet's C5 and F6, an MLP's hidden layers.
* ``stage_rate``: one dropout after each convolutional stage (``stage1`` .. ``stageN`` of
  :func:`cnnlab.models.stages.model_stages`; the stem and the head are not stages), as NiN puts one
  after each of its pooling stages.

Rates are drop probabilities, like ``nn.Dropout``'s ``p`` (the lecture's listings use the keep
probability, 1 - p). Dropout is element-wise everywhere (the module docstring of
:mod:`cnnlab.layers.dropout` says why).

Parameter names never change, so checkpoints, torchvision weight mapping, freezing by stage and EMA
see the same state_dict keys. A dropout is added as a parameter-free child named ``drop_after`` of
the layer whose output it drops (``head.5.drop_after`` follows AlexNet's fc7 ReLU ``head.5``), and a
forward hook on that layer passes its output through the child. Nothing is inserted into a
Sequential, which would renumber the layers after it. The hook is a plain function that finds the
child on the module it is called for, so a deep copy (EMA) uses its own copy's dropout; ``eval()``
switches the child off; ONNX export and DDP see an ordinary hook. Where the architecture's own dropout
layer is the next layer of the same Sequential (VGG's fc6 and fc7, AlexNet's fc6, LeNet's F6, MobileNetV3's
hidden layer) or ends the stage (NiN's stages), that layer is used and its rate set instead of stacking a
second one: the more specific key wins over ``drop_rate``. A dropout further on (the mlp's, before its
classifier in another container) is left as ``drop_rate`` sets it.

Calling :func:`apply_dropout` again never stacks: a site that already has its dropout gets the new
rate, and ``kind`` converts every dropout layer (the added ones included) to that kind. A rate of 0 or
None changes nothing.

Not converted by ``kind``: dropout that a model calls functionally rather than as a module
(torchvision's DenseNet ``drop_rate`` and Swin's attention dropout, both 0 by default) and the
attention dropout inside ``nn.MultiheadAttention`` (0 in torchvision's ViT).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.layers.blocks import runs_children_in_order
from cnnlab.layers.dropout import VanillaDropout

KINDS = {"inverted": nn.Dropout, "vanilla": VanillaDropout}  # dropout kind -> the class that implements it
DROP_AFTER = "drop_after"  # name of the dropout child a layer gets when its output is dropped
_DEFAULT_KIND = "inverted"  # what every builder makes (nn.Dropout)
_KIND_ATTR = "_dropout_kind"  # set on a model once apply_dropout has converted its dropouts

# Layers that count as the activation following a hidden FC layer: torch's activation modules
# (MultiheadAttention lives in the same file but is not one) and Identity (act="identity").
ACTIVATIONS = tuple(
    cls for cls in vars(nn.modules.activation).values()
    if isinstance(cls, type) and issubclass(cls, nn.Module) and cls.__module__ == nn.modules.activation.__name__
    and cls is not nn.MultiheadAttention
) + (nn.Identity,)
# Norm layers that may sit between a hidden FC layer and its activation (the mlp's Linear -> BN -> ReLU).
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def apply_dropout(model: nn.Module, *, kind: str = "inverted", hidden_rate: Optional[float] = None,
                  stage_rate: Optional[float] = None) -> None:
    """Set the dropout kind of ``model`` and add dropout after hidden FC layers and stages, in place.

    ``kind``: ``inverted`` or ``vanilla``. ``hidden_rate`` / ``stage_rate``: drop probability in [0, 1)
    of the dropout after each hidden fully connected layer / each convolutional stage; None leaves those
    sites as they are, and 0 adds none but sets the dropouts already there to 0. Idempotent: a second call
    sets rates and kind, never a second dropout at a site.
    """
    layer_type = _layer_type(kind)
    hidden_rate = _checked_rate("hidden_drop_rate", hidden_rate)
    stage_rate = _checked_rate("stage_drop_rate", stage_rate)
    if hidden_rate is not None:
        sites = hidden_fc_sites(model)
        if not sites and hidden_rate:
            raise CnnlabError(
                f"{_label(model)} has no hidden fully connected layer in front of its classifier (linear layers "
                f"inside blocks and auxiliary heads do not count), so hidden_drop_rate {hidden_rate} cannot apply: "
                "leave model.hidden_drop_rate unset, or use model.drop_rate for dropout before the classifier."
            )
        for layer, following in sites:
            _drop_after(layer, following, hidden_rate)
    if stage_rate is not None:
        # model_stages probes the model on the meta device (~0.75 s per architecture): only here.
        for layer in stage_ends(model):
            _drop_after(layer, None, stage_rate)
    # A fresh model's dropouts are all nn.Dropout: only a vanilla call, or a model an earlier vanilla call
    # converted, needs the walk over every module (~4 ms for ResNet-152's 726), so the default costs nothing.
    if kind != _DEFAULT_KIND or getattr(model, _KIND_ATTR, _DEFAULT_KIND) != _DEFAULT_KIND:
        _convert(model, layer_type)
        setattr(model, _KIND_ATTR, kind)


def hidden_fc_sites(model: nn.Module) -> list[tuple[nn.Module, Optional[nn.Module]]]:
    """(layer whose output is dropped, the layer that runs right after it or None), one per hidden FC layer.

    A hidden FC layer is an ``nn.Linear`` that is not a classifier (``stages.classifier_names``)
    and is reached from the model through plain Sequentials only, where the order of the layers is
    the order they run in. That is every head of fully connected layers (zoo and torchvision AlexNet,
    VGG, LeNet, MobileNetV3, MaxViT, an MLP) and leaves out the linear layers inside blocks with their
    own forward (attention, transformer MLPs, ConvNeXt's channel-last pointwise layers, GoogLeNet's
    auxiliary heads). The dropped layer is the last of the norm and activation layers right after the
    Linear (Linear -> norm -> act: the act), else the Linear itself.
    """
    from cnnlab.models.stages import classifier_names

    classifiers = {id(model.get_submodule(name)) for name in classifier_names(model)}
    sites: list[tuple[nn.Module, Optional[nn.Module]]] = []

    def visit(container: nn.Module, ordered: bool) -> None:
        children = [child for child in container.children()]
        for i, child in enumerate(children):
            if isinstance(child, nn.Linear) and id(child) not in classifiers:
                # Siblings run in order only inside a Sequential; in a custom forward they need not.
                rest = children[i + 1:] if ordered else []
                layer = child
                while rest and isinstance(rest[0], NORMS + ACTIVATIONS):  # Linear -> [norm] -> [act]
                    layer = rest.pop(0)
                sites.append((layer, rest[0] if rest else None))
            elif runs_children_in_order(child):
                visit(child, ordered=True)

    visit(model, ordered=runs_children_in_order(model))
    return sites


def stage_ends(model: nn.Module) -> list[nn.Module]:
    """The layer whose output is each stage's output, for ``stage1`` .. ``stageN`` in order.

    A stage's last module, or, when that is a Sequential, its last layer (recursively): a dropout
    added to a Sequential itself would be run as one more of its layers.
    """
    from cnnlab.models.stages import HEAD, STEM, model_stages

    ends = []
    for stage in model_stages(model):
        if stage.name in (STEM, HEAD) or not stage.modules:
            continue
        name = stage.modules[-1]
        layer = model.get_submodule(name)
        while runs_children_in_order(layer) and len(layer) > 0:
            layer = layer[-1]
        ends.append(layer)
    return ends


def dropout_after(layer: nn.Module) -> Optional[nn.Dropout]:
    """The dropout :func:`apply_dropout` added after ``layer``, or None."""
    return layer._modules.get(DROP_AFTER)


# ---------------------------------------------------------------------------------------------


def _layer_type(kind: str) -> type[nn.Dropout]:
    if kind not in KINDS:
        raise CnnlabError(
            f"Unknown dropout kind {kind!r}: choose 'inverted' (torch's: scaled by 1/(1-p) while training, "
            "unchanged at test time) or 'vanilla' (the lecture's: unscaled while training, scaled by 1-p at "
            "test time), e.g. --set model.dropout=vanilla."
        )
    return KINDS[kind]


def _checked_rate(label: str, rate: Optional[float]) -> Optional[float]:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise CnnlabError(
            f"{label} must be a drop probability in [0, 1) or None, got {rate!r}: 0.5 drops half of the units "
            "while training (the lecture's keep probability p is 1 - rate)."
        )
    return float(rate)


def _drop_after(layer: nn.Module, following: Optional[nn.Module], rate: float) -> None:
    """Make ``layer``'s output pass through exactly one dropout of ``rate``."""
    if isinstance(layer, nn.Dropout):  # the site ends in a dropout already (NiN's stages)
        layer.p = rate
        return
    existing = dropout_after(layer)
    if existing is not None:  # added by an earlier call
        existing.p = rate
        return
    if isinstance(following, nn.Dropout):  # the architecture's own dropout runs next (VGG's fc6, fc7)
        following.p = rate
        return
    if rate == 0.0:  # no dropout at the site to set: none is added to drop nothing
        return
    if isinstance(layer, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
        # Such containers usually run their children in a loop: a child added here would run twice.
        raise CnnlabError(f"Cannot add dropout after a {type(layer).__name__} container ({_label(layer)}).")
    if DROP_AFTER in vars(layer) or hasattr(type(layer), DROP_AFTER):
        raise CnnlabError(f"{type(layer).__name__} already has an attribute '{DROP_AFTER}'.")
    layer.add_module(DROP_AFTER, nn.Dropout(rate))
    layer.drop_after.train(layer.training)
    layer.register_forward_hook(_run_drop_after)


def _run_drop_after(module: nn.Module, args: tuple, output):
    """Forward hook: ``module``'s output through its own ``drop_after`` child.

    A module-level function that looks the child up on the module it is called for, so a deep copy
    of the model (whose hook dictionaries share this function) runs the copy's dropout.
    """
    if not isinstance(output, torch.Tensor):  # a block returning several tensors: nothing to drop
        return output
    return module._modules[DROP_AFTER](output)


def _convert(model: nn.Module, layer_type: type[nn.Dropout]) -> None:
    """Swap every dropout module of the other kind for ``layer_type``, same rate, same name."""
    other = [t for t in KINDS.values() if t is not layer_type]
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if child is not None and type(child) in other:
                new = layer_type(child.p, inplace=child.inplace)
                new.train(child.training)
                parent._modules[name] = new  # same slot: a Sequential keeps its order and indices


def _label(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)
