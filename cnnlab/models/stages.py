"""Stages: one way to name the parts of every model, for freezing, per-stage learning rates and transfer.

A model is ``stem``, ``stage1`` .. ``stageN`` and ``head``, and every parameter belongs to exactly one
of them, like timm's ``group_matcher``. One rule finds them for the zoo and for torchvision's models
alike, from the modules and one forward pass on the meta device (shapes only, no compute):

1. The head is every top-level child from the first pooling or classifier child on (the zoo's
   ``global_pool``, ``head``, ``fc``; torchvision's ``avgpool``, ``classifier``, ``fc``, ``heads``),
   plus auxiliary classifiers wherever they sit (``aux_heads``, ``aux1``, ``AuxLogits``).
2. The trunk is the rest. Its units are its top-level children, with a container named
   ``features``, ``trunk_output``, ``layers`` or ``blocks`` opened into its children.
3. Walking the units in order with their output resolution: a unit with parameters that lowers the
   resolution (by 1.5x or more: a stride, not a valid conv shaving a few pixels) starts a new stage;
   a parameter-free unit that lowers it (a max pool) ends the current one, and so does a unit that
   lowers it with a pool of its own and no strided conv (DenseNet's transition; a VGG block that
   pools before its norm): its convs work at the current resolution.
4. The stem: units named ``stem*``; otherwise the first group when the network opens with a
   downsampling unit (a strided or patchify conv) -- all of it when a pool closes it (ResNet's
   conv-bn-relu-maxpool), else that first unit and the single layers right after it (EfficientNet's
   conv, then its first block at the same resolution, which is stage 1). A network that opens at full
   resolution (VGG, LeNet, NiN) has an empty stem.

Families the rule would get wrong are handled explicitly, each with its reason in a comment:
the Inception stems of GoogLeNet and Inception v3, Swin's channel-last maps
and ViT's resolution-free token trunk.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError, check_type
from cnnlab.models._base import ClassifierModel, check_num_classes, eval_mode, first_conv, like_model, new_linear
from cnnlab.models._meta import shapes_on_meta

STEM = "stem"
HEAD = "head"
STAGE_PREFIX = "stage"
BACKBONE = "backbone"  # freeze choice: everything but the head
NO_FREEZE = "none"

# Top-level children where the head starts (pooling or classifier), zoo and torchvision names.
HEAD_STARTS = ("global_pool", "avgpool", "head", "heads", "fc", "classifier", "dropout", "flatten")
# Trunk containers whose children are the units (zoo and torchvision ``features``, RegNet's
# ``trunk_output``, MNASNet's ``layers``, MaxViT's ``blocks``).
TRUNK_CONTAINERS = ("features", "trunk_output", "layers", "blocks")
# A unit lowers the resolution when its output side is at most 1/1.5 of its input's: every stride-2
# step qualifies, a valid 3x3 conv (149 -> 147 in Inception v3) does not.
DOWNSAMPLE_FACTOR = 1.5
PROBE_SIDE = 224  # the probe's input side (or the model's min_size when larger): every stride is visible
FLAT = 0  # the "side" of a unit whose output is a flat (B, D) vector (an MLP's hidden layer): no resolution


@dataclass(frozen=True)
class Stage:
    """A named part of a model: dotted submodule names in model order.

    ``parameters`` lists parameters owned directly by the model or by an opened container rather than
    by one of ``modules`` (ViT's class token and position embedding); they belong to the stem.
    """

    name: str
    modules: tuple[str, ...]
    parameters: tuple[str, ...] = ()


_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def model_stages(model: nn.Module) -> list[Stage]:
    """``stem``, ``stage1`` .. ``stageN``, ``head``; every parameter in exactly one stage.

    Cached per model instance while its module structure is unchanged (a deep copy computes its own).
    """
    check_type(model, nn.Module, "model", "a torch module (cnnlab.create_model(NAME))")
    signature = _structure(model)
    cached = _CACHE.get(model)
    if cached is not None and cached[0] == signature:
        return list(cached[1])
    stages = _find_stages(model)
    _CACHE[model] = (signature, tuple(stages))
    return stages


def stage_of_parameters(model: nn.Module) -> dict[str, str]:
    """Each name of ``model.named_parameters()`` -> the name of its stage."""
    owner = {}
    for stage in model_stages(model):
        for prefix in stage.modules:
            for name, param in model.get_submodule(prefix).named_parameters(prefix=prefix):
                owner.setdefault(id(param), stage.name)
        for name in stage.parameters:
            owner.setdefault(id(model.get_parameter(name)), stage.name)
    result = {}
    for name, param in model.named_parameters():
        if id(param) not in owner:  # cannot happen: _find_stages gives every parameter a stage
            raise RuntimeError(f"parameter '{name}' has no stage")
        result[name] = owner[id(param)]
    return result


def freeze_choices(model: nn.Module) -> list[str]:
    """What ``model.freeze`` accepts: ``backbone``, ``stem`` (when it has parameters), ``stage1`` ..."""
    stages = model_stages(model)
    counts = _param_counts(model)
    choices = [BACKBONE]
    if counts.get(STEM, 0) > 0:
        choices.append(STEM)
    choices += [s.name for s in stages if s.name not in (STEM, HEAD)]
    return choices


def frozen_stage_names(model: nn.Module, freeze: Optional[str]) -> list[str]:
    """The stages ``freeze`` names: None/"none" -> []; "backbone" -> all but the head; "stem" -> the
    stem; "stageK" -> the stem and stages 1..K. Anything else raises an error listing the choices."""
    if freeze is None or freeze == NO_FREEZE:
        return []
    names = [s.name for s in model_stages(model)]
    choices = freeze_choices(model)
    if freeze not in choices:
        label = getattr(model, "model_name", type(model).__name__)
        raise CnnlabError(
            f"model.freeze '{freeze}' is not a part of {label}: choose one of {', '.join(choices)} (or none). "
            f"`cnnlab summary {label} --stages` lists each stage's modules."
        )
    if freeze == BACKBONE:
        return [n for n in names if n != HEAD]
    return names[: names.index(freeze) + 1]


def set_requires_grad(model: nn.Module, stage_names: str | Sequence[str], requires_grad: bool) -> int:
    """Set ``requires_grad`` of every parameter in the named stages (a list of names, or one name as a
    str); returns how many parameter elements (as counted by ``count_params``) changed their flag."""
    if isinstance(stage_names, str):
        stage_names = [stage_names]  # one stage; iterated, "stem" would be the stages s, t, e, m
    known = {s.name for s in model_stages(model)}
    unknown = [str(n) for n in stage_names if n not in known]
    if unknown:
        # backbone is a model.freeze value, not a stage: frozen_stage_names turns it into the stages it covers.
        hint = (f" For the {BACKBONE} (all but the head) pass frozen_stage_names(model, '{BACKBONE}')."
                if BACKBONE in unknown else "")
        raise CnnlabError(f"No stage named {', '.join(unknown)}: the stages are {', '.join(sorted(known))}.{hint}")
    wanted = set(stage_names)
    owner = stage_of_parameters(model)
    changed = 0
    for name, param in model.named_parameters():
        if owner[name] in wanted and param.requires_grad != requires_grad:
            param.requires_grad_(requires_grad)
            changed += param.numel()
    return changed


def classifier_names(model: nn.Module) -> list[str]:
    """Names of the layers that output class logits, the main classifier first (then auxiliary ones)."""
    if isinstance(model, ClassifierModel):
        wanted = [id(m) for m in model.classifier_modules()]
        by_id = {id(m): n for n, m in model.named_modules()}
        return [by_id[i] for i in wanted if i in by_id]
    main, aux = _head_children(model)
    # The last Linear or Conv2d registered: torchvision registers a head's layers in forward order.
    found = _last_weighted_layer(model, main)
    if found is None and not main:  # a model of one's own: a tutorial Net's fc1..fc3, an nn.Sequential's 0..4
        children = [name for name, _ in model.named_children()]
        raise CnnlabError(
            f"Cannot find the classifier of {_label(model)}: its head is found by the name of a top-level layer, "
            f"as the zoo's and torchvision's models name them ({', '.join(HEAD_STARTS)}), and none of its top-level "
            f"layers ({', '.join(children[:8]) or 'none'}{', ...' if len(children) > 8 else ''}) is named so. Give "
            "the classifier (or the pooling before it) one of those names, or use a zoo or torchvision model.")
    if found is None:
        raise CnnlabError(f"Cannot find the classifier of {_label(model)}: its head has no Linear or Conv2d layer.")
    auxiliary = [_last_weighted_layer(model, [prefix]) for prefix in aux]
    return [found] + [name for name in auxiliary if name is not None]


def _last_weighted_layer(model: nn.Module, prefixes: list[str]) -> Optional[str]:
    last = None
    for prefix in prefixes:
        for name, module in model.get_submodule(prefix).named_modules(prefix=prefix):
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                last = name
    return last


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Replace the classifier(s) with fresh ones of ``num_classes`` outputs (zoo and torchvision models)."""
    if isinstance(model, ClassifierModel):
        model.reset_classifier(num_classes)
        return
    check_num_classes(num_classes)
    if num_classes == 0:
        raise CnnlabError(
            f"{_label(model)} keeps a classifier: give at least 1 class, and use pre_logits(model, x) for features."
        )
    for name in classifier_names(model):
        old = model.get_submodule(name)
        if isinstance(old, nn.Linear):
            new = new_linear(old.in_features, num_classes)
        else:  # a 1x1 (or kxk) conv producing one map per class (SqueezeNet)
            new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding)
            nn.init.normal_(new.weight, 0.0, 0.01)  # small, as the zoo's classifiers: loss ln(C) at the start
            nn.init.zeros_(new.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, like_model(new, model))
    model.num_classes = num_classes


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, F): the input of the main classifier (globally pooled when it is a map)."""
    check_type(model, nn.Module, "model", "a torch module (cnnlab.create_model(NAME))")
    check_type(x, torch.Tensor, "x", "a batch of images, a tensor (B, C, H, W)")
    if isinstance(model, ClassifierModel):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    features = _run_until(model, model.get_submodule(classifier_names(model)[0]), x, entering=True)
    if features is None:
        raise CnnlabError(f"{_label(model)} never ran its classifier on the input.")
    if features.ndim == 4:  # (B, F, h, w) read by a conv classifier -> (B, F)
        features = features.mean(dim=(2, 3))
    return torch.flatten(features, 1)


def forward_trunk(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The trunk's output: ``forward_features`` of a zoo model, the last trunk unit's output otherwise."""
    if isinstance(model, ClassifierModel):
        return model.forward_features(x)
    trunk = [s for s in model_stages(model) if s.name != HEAD and s.modules]
    return _run_until(model, model.get_submodule(trunk[-1].modules[-1]), x, entering=False)


def _run_until(model: nn.Module, module: nn.Module, x: torch.Tensor, *, entering: bool) -> Optional[torch.Tensor]:
    """Run ``model`` on ``x`` up to ``module`` and return its input (``entering``) or its output; the rest
    of the forward pass is skipped. None when the forward pass never reaches ``module``."""
    captured = []

    def before(module, args):
        captured.append(args[0])
        raise _Captured()

    def after(module, args, output):
        captured.append(output)
        raise _Captured()

    handle = module.register_forward_pre_hook(before) if entering else module.register_forward_hook(after)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0] if captured else None


def stage_table(model: nn.Module) -> list[dict]:
    """One row per stage: name, modules, parameter count (for ``cnnlab summary --stages``)."""
    counts = _param_counts(model)
    return [{"stage": s.name, "modules": list(s.modules) + list(s.parameters), "params": counts.get(s.name, 0)}
            for s in model_stages(model)]


# ---------------------------------------------------------------------------------------------
# finding the stages


class _Captured(Exception):
    pass


def _label(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def _structure(model: nn.Module) -> tuple:
    return tuple((name, type(module)) for name, module in model.named_modules())


def _param_counts(model: nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    params = dict(model.named_parameters())
    for name, stage in stage_of_parameters(model).items():
        counts[stage] = counts.get(stage, 0) + params[name].numel()
    return counts


def _is_aux(name: str) -> bool:
    return name.lower().startswith("aux")


def _head_children(model: nn.Module) -> tuple[list[str], list[str]]:
    """(main head children, auxiliary head children) of the model's top level."""
    main, aux, in_head = [], [], False
    for name, _ in model.named_children():
        if _is_aux(name):
            aux.append(name)
            continue
        in_head = in_head or name in HEAD_STARTS
        if in_head:
            main.append(name)
    return main, aux


def _find_stages(model: nn.Module) -> list[Stage]:
    main, aux = _head_children(model)
    head = [n for n, _ in model.named_children() if n in main or n in aux]
    if _is_vit(model):
        groups, stem = _vit_groups(model)
    else:
        units = _trunk_units(model, set(head))
        groups, stem = _group_units(model, units)
    stages = [Stage(STEM, tuple(stem))]
    stages += [Stage(f"{STAGE_PREFIX}{i}", tuple(g)) for i, g in enumerate(groups, start=1)]
    stages.append(Stage(HEAD, tuple(head)))
    # Parameters owned by the model itself or by an opened container (ViT's class token) belong to the
    # stem, as timm puts cls_token and pos_embed there.
    covered = {id(p) for s in stages for prefix in s.modules for p in model.get_submodule(prefix).parameters()}
    loose = tuple(name for name, p in model.named_parameters() if id(p) not in covered)
    stages[0] = Stage(STEM, stages[0].modules, loose)
    return stages


def _trunk_units(model: nn.Module, head: set[str]) -> list[str]:
    units = []
    for name, child in model.named_children():
        if name in head:
            continue
        opened = isinstance(child, nn.ModuleList) or (name in TRUNK_CONTAINERS and isinstance(child, nn.Sequential))
        if opened:
            units += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            units.append(name)
    return units


def _group_units(model: nn.Module, units: list[str]) -> tuple[list[list[str]], list[str]]:
    """Split the trunk's units into stages by resolution (the module docstring's rules 3 and 4)."""
    image_side, sides = _probe_sides(model, units)
    modules = {u: model.get_submodule(u) for u in units}
    has_params = {u: any(True for _ in modules[u].parameters()) for u in units}
    pools_at_end = {u: _pools_at_its_end(modules[u]) for u in units}

    stem: list[str] = []
    rest = list(units)
    # Named stems (the zoo's stem, stem_pool; RegNet's and MaxViT's stem) are the stem.
    while rest and rest[0].rsplit(".", 1)[-1].startswith(STEM):
        stem.append(rest.pop(0))
    # GoogLeNet and Inception v3 open with plain convs and two pools before the first Inception
    # module: the papers' stem. By resolution alone it would split into two small stages.
    inception = [u for u in rest if "Inception" in type(modules[u]).__name__]
    if not stem and inception:
        first = rest.index(inception[0])
        stem, rest = rest[:first], rest[first:]
    named_stem = bool(stem)

    groups: list[list[str]] = []
    closes_first: Optional[bool] = None  # whether a pool closed the first group
    previous = image_side if not stem else _last_side(stem, sides, image_side)
    closed = False
    for unit in rest:
        side = sides.get(unit)
        lowers = side is not None and previous is not None and side * DOWNSAMPLE_FACTOR <= previous
        # A unit whose own pool lowers the resolution after unstrided convs downsamples at its end, so it
        # closes the stage before it: DenseNet's transition (norm, 1x1 conv, 2x2 average pool; timm groups
        # denseblockN with transitionN), VGG's conv -> pool -> norm -> act.
        closes = lowers and pools_at_end[unit]
        # A trunk of flat vectors (an MLP's hidden layers) has no resolution to split on: each such layer
        # with parameters is a stage of its own, as each ViT block is.
        flat = side == FLAT
        if not groups or (has_params[unit] and (closed or flat or (lowers and not closes))):
            groups.append([])
            closed = False
        groups[-1].append(unit)
        if (lowers and not has_params[unit]) or closes:
            closed = True
            if len(groups) == 1 and closes_first is None:
                closes_first = True
        if side is not None:
            previous = side

    if not named_stem and groups:
        first = groups[0]
        first_side = sides.get(first[0])
        # a unit that pools at its end (above) computes at the image's resolution: no stem
        opens_down = (first_side is not None and first_side * DOWNSAMPLE_FACTOR <= image_side
                      and not pools_at_end[first[0]])
        if opens_down and has_params[first[0]]:
            if closes_first:
                stem = groups.pop(0)  # conv, norm, act, pool: all of it
            else:
                # The downsampling conv and the single layers after it; the blocks that follow at the
                # same resolution are stage 1.
                count = 1
                while count < len(first) and not any(True for _ in modules[first[count]].children()):
                    count += 1
                stem = first[:count]
                if count == len(first):
                    groups.pop(0)
                else:
                    groups[0] = first[count:]
    return groups, stem


def _pools_at_its_end(module: nn.Module) -> bool:
    """Whether ``module`` holds a pooling layer and parameters but no strided conv: if it lowers the
    resolution, its pool does, after its convs have worked at the resolution it was given."""
    if not any(True for _ in module.parameters()):
        return False
    pools = (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
    if not any(isinstance(m, pools) for m in module.modules()):
        return False
    return not any(isinstance(m, nn.Conv2d) and max(m.stride) > 1 for m in module.modules())


def _last_side(units: list[str], sides: dict[str, int], default: int) -> int:
    known = [sides[u] for u in units if u in sides]
    return known[-1] if known else default


def _probe_sides(model: nn.Module, units: list[str]) -> tuple[int, dict[str, int]]:
    """(input side, output side of each unit) from one forward pass on the meta device."""
    side = max(PROBE_SIDE, int(getattr(model, "min_size", 0) or 0))
    found = first_conv(model)
    channels = getattr(model, "in_chans", None) or (found[1].in_channels if found else 3)
    # Swin keeps its maps channel-last, (B, H, W, C), between its layers.
    spatial = (1, 2) if type(model).__name__.startswith("SwinTransformer") else (2, 3)
    sides: dict[str, int] = {}

    def record(unit):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and unit not in sides:
                sides[unit] = max(int(output.shape[spatial[0]]), int(output.shape[spatial[1]]))
            elif isinstance(output, torch.Tensor) and output.ndim == 2 and unit not in sides:
                sides[unit] = FLAT  # (B, D): no map
        return hook

    handles = [model.get_submodule(u).register_forward_hook(record(u)) for u in units]
    x = torch.zeros((2, channels, side, side), device="meta")
    try:
        with torch.no_grad(), eval_mode(model), shapes_on_meta():
            tensors = dict(model.named_parameters(remove_duplicate=False))
            tensors.update(model.named_buffers(remove_duplicate=False))
            meta = {k: torch.empty_like(t, device="meta") for k, t in tensors.items()}
            torch.func.functional_call(model, meta, (x,), tie_weights=True, strict=False)
    except Exception as err:
        raise CnnlabError(
            f"Cannot find the stages of {_label(model)}: a {channels}x{side}x{side} probe input failed "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from None
    finally:
        for handle in handles:
            handle.remove()
    return side, sides


def _is_vit(model: nn.Module) -> bool:
    encoder = getattr(model, "encoder", None)
    return hasattr(model, "conv_proj") and isinstance(getattr(encoder, "layers", None), nn.Sequential)


def _vit_groups(model: nn.Module) -> tuple[list[list[str]], list[str]]:
    """ViT: the patch projection is the stem, each encoder block a stage (timm's ViT grouping).

    Its trunk is a sequence of tokens at one resolution, so rule 3 has nothing to split on. The final
    LayerNorm goes with the last block; the class token and position embedding join the stem as
    loose parameters.
    """
    encoder = model.encoder
    stem = ["conv_proj"] + [f"encoder.{n}" for n, m in encoder.named_children()
                            if n not in ("layers", "ln") and any(True for _ in m.parameters())]
    groups = [[f"encoder.layers.{n}"] for n, _ in encoder.layers.named_children()]
    tail = [f"encoder.{n}" for n, _ in encoder.named_children() if n == "ln"]
    if groups:
        groups[-1] += tail
    return groups, stem
