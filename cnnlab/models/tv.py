"""Any torchvision classification model as ``tv:NAME`` (``tv:efficientnet_b0``, ``tv:vit_b_16``, ...).

``create_model("tv:NAME", num_classes=K, in_chans=C)`` calls ``torchvision.models.get_model(NAME,
weights=None, num_classes=K)``: torchvision's own modules and its own random initialisation, so a
state_dict of torchvision's weights loads into the model unchanged. cnnlab adds what its other
commands read: ``model_name``, ``in_chans``, ``min_size`` and ``num_classes``. For ``in_chans`` other
than 3 the first conv is rebuilt for that many channels, its random RGB filters converted with
:func:`~cnnlab.models.torchvision_compat.adapt_input_conv` (the rule that also adapts pretrained
weights), so a grayscale image meets the same filters the RGB network had.

Stages, the classifier and pre-logit features of these models come from
:mod:`cnnlab.models.stages`, which works for the zoo and torchvision alike.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import typing
from contextlib import nullcontext
from typing import Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UnknownNameError, UnknownOptionError
from cnnlab.models._base import (RESIDUAL_MODELS, ZERO_INIT_RESIDUAL_MEANING, check_bool_option, first_conv,
                                 fixed_input_side)
from cnnlab.models._meta import building_on_meta, meta_build
from cnnlab.models._registry import (
    TORCHVISION_PREFIX,
    ModelInfo,
    ModelSource,
    closest_names,
    is_torchvision_name,
    options_passed_on,
    register_model_source,
)
from cnnlab.models.torchvision_compat import adapt_input_conv

PREFIX = TORCHVISION_PREFIX
FAMILY = "torchvision"
# The smallest square cnnlab promises for a torchvision model whose weights' metadata allows less:
# 32 is what the zoo's ImageNet models promise (a 32x downsampling trunk still has a 1x1 map).
SMALLEST_SIDE = 32
# torchvision's GoogLeNet and Inception v3 options that change the network: no auxiliary heads (the
# engine trains the main head), no custom init (torchvision's FutureWarning asks for a choice), and
# no input transform (the 0.5/0.5 renormalisation is the data normalisation's job in cnnlab).
INCEPTION_OPTIONS = dict(aux_logits=False, init_weights=False, transform_input=False)
INCEPTION_FAMILY = ("googlenet", "inception_v3")
AUX_LOGITS_MEANING = "torchvision's auxiliary classifiers, which cnnlab leaves out"


@functools.lru_cache(maxsize=None)
def _classification_names() -> tuple[str, ...]:
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def list_torchvision_models(pattern: Optional[str] = None) -> list[str]:
    """``tv:NAME`` for every torchvision classification model, sorted; ``pattern`` as in
    :func:`~cnnlab.models.list_models` (a wildcard, or without one a part of the name), matched with or
    without the ``tv:`` prefix."""
    import fnmatch

    if pattern is not None and not isinstance(pattern, str):
        raise CnnlabError(
            f"list_torchvision_models takes a name pattern (str) such as 'resnet*', or None for every model, "
            f"got {pattern!r:.60} (of type {type(pattern).__name__})."
        )

    names = [PREFIX + name for name in _classification_names()]
    if pattern:
        pattern = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n[len(PREFIX):], pattern)]
    return names


def torchvision_name(name: str) -> str:
    """``tv:resnet18`` -> ``resnet18``; an unknown name raises an error listing the closest ones."""
    bare = name[len(PREFIX):] if is_torchvision_name(name) else name
    known = _classification_names()
    if bare not in known:
        close = closest_names(bare, known)
        hint = f" Closest names: {', '.join(PREFIX + c for c in close)}." if close else ""
        raise UnknownNameError(
            f"Unknown torchvision model '{name}'.{hint} Run `cnnlab models --torchvision` to list all "
            f"{len(known)} torchvision classification models."
        )
    return bare


@functools.lru_cache(maxsize=None)
def torchvision_model_info(name: str) -> ModelInfo:
    """The registry entry of ``tv:NAME``: sizes from torchvision's weights metadata and the builder."""
    import torchvision.models

    bare = torchvision_name(name)
    weights = torchvision.models.get_model_weights(bare).DEFAULT
    crop = getattr(weights.transforms(), "crop_size", None)  # the side the weights were evaluated at
    default_side = int(crop[0]) if crop else 224
    min_side = max(SMALLEST_SIDE, int(weights.meta.get("min_size", (1, 1))[0]))
    fixed = _fixed_side(bare)
    if fixed is not None:  # a ViT built without weights takes exactly its image_size
        min_side = default_side = fixed
    return ModelInfo(
        name=PREFIX + bare,
        family=FAMILY,
        builder=functools.partial(_build, bare),
        default_input=(3, default_side, default_side),
        min_size=min_side,
        paper=str(weights.meta.get("recipe", "")),
        torchvision=bare,
        exact_size=fixed is not None,
    )


# The input_size torchvision's MaxViT builders use when none is given (torchvision.models.maxvit._maxvit)
MAXVIT_INPUT_SIZE = (224, 224)


def _fixed_side(bare: str, **kwargs) -> Optional[int]:
    """The one input side a model accepts when its builder fixes it, else None.

    torchvision's VisionTransformer keeps its ``image_size`` (its weights' metadata gives the size of the
    weights, 518 for vit_h_14, not the 224 of a model built without them); MaxViT is built for its
    ``input_size`` (its attention windows tile that grid and no other: 256 and even 448 fail on maxvit_t).
    Swin's smallest side comes from its metadata, and it takes larger ones. Building every model here would
    double the cost of a listing.
    """
    import torchvision.models

    module = torchvision.models.get_model_builder(bare).__module__
    if module.endswith(".maxvit"):
        return _square_side(kwargs.get("input_size", MAXVIT_INPUT_SIZE))
    if not module.endswith(".vision_transformer"):
        return None
    with meta_build():
        model = _get_model(bare, num_classes=1)
    size = getattr(model, "image_size", None)
    return int(size) if isinstance(size, int) else None


def _square_side(size) -> Optional[int]:
    """``size`` (an int, or an (h, w) pair) as one side when it is square, else None."""
    if isinstance(size, (tuple, list)) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return int(size) if isinstance(size, int) and not isinstance(size, bool) else None


def create_torchvision_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    norm=None,
    act=None,
    drop_rate: Optional[float] = None,
    **kwargs,
) -> nn.Module:
    """Build ``tv:NAME`` with torchvision's random init; see the module docstring.

    ``drop_rate`` sets the probability of the dropout layers in the classifier head; ``kwargs`` go to
    torchvision's builder (``stochastic_depth_prob=0.1``, ...), except ``weights`` (and the old
    ``pretrained``), refused: weights come from ``model.init_from`` or a state_dict loaded afterwards.
    ``norm`` and ``act`` are zoo options: a torchvision model keeps its own.
    """
    info = torchvision_model_info(name)
    given_weights = [key for key in ("weights", "pretrained") if key in kwargs]
    if given_weights:
        raise CnnlabError(
            f"{info.name} is built with torchvision's random initialisation; {given_weights[0]}= is not an option of "
            "create_model. A run takes weights from model.init_from (a torchvision .pth or .safetensors file, or "
            "init_from=torchvision for the default weights in torchvision's cache); in Python, load a torchvision "
            "state_dict into the model: model.load_state_dict(torch.load(path, weights_only=True))."
        )
    if norm is not None or act is not None:
        raise CnnlabError(
            f"{info.name} keeps torchvision's own normalisation and activation: leave norm and act unset "
            "(they choose the layers of cnnlab's own models)."
        )
    if "zero_init_residual" in kwargs:
        kwargs = _zero_init_residual_option(info.name, kwargs)
    model = info.builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    model.model_name = info.name
    # A ViT built with another image_size (a MaxViT with another input_size) takes that side only, not the
    # default build's
    if _takes_one_size(model):
        model.fixed_side = _square_side(kwargs.get("input_size", MAXVIT_INPUT_SIZE))
    fixed = fixed_input_side(model)
    model.min_size = info.min_size if fixed is None else fixed
    model.in_chans = in_chans
    model.num_classes = num_classes
    if drop_rate is not None:
        set_head_dropout(model, drop_rate)
    return model


def _takes_one_size(model: nn.Module) -> bool:
    """A MaxViT: built for one input_size, which it does not keep as an attribute."""
    return type(model).__module__.endswith(".maxvit")


def _zero_init_residual_option(name: str, kwargs: dict) -> dict:
    """``kwargs`` with zero_init_residual checked as on the zoo's models: false, which asks for nothing, is
    accepted by every model and left out (torchvision's default where a builder takes it); true goes to
    the builders that take it (torchvision's ResNets) and is refused by the others with what to use instead.
    """
    if check_bool_option("zero_init_residual", kwargs["zero_init_residual"], ZERO_INIT_RESIDUAL_MEANING):
        if _takes_zero_init_residual(torchvision_name(name)):
            return kwargs
        raise CnnlabError(
            f"{name} has no zero_init_residual option: zero_init_residual=true, which would "
            f"{ZERO_INIT_RESIDUAL_MEANING} (Goyal et al. 2017), is taken among torchvision's models only by its "
            "ResNets (tv:resnet18 to tv:resnet152, tv:resnext*, tv:wide_resnet*). Leave the option out, or build "
            f"one of those or one of cnnlab's models with residual blocks: {RESIDUAL_MODELS}."
        )
    return {key: value for key, value in kwargs.items() if key != "zero_init_residual"}


def _takes_zero_init_residual(bare: str) -> bool:
    """Whether torchvision's builder of ``bare`` takes zero_init_residual: its ResNet class is the one that
    does (the builders take ``**kwargs``, so their signatures do not say)."""
    import torchvision.models

    return torchvision.models.get_model_builder(bare).__module__ == torchvision.models.resnet.__name__


def _build(bare: str, *, num_classes: int, in_chans: int, **kwargs) -> nn.Module:
    """torchvision's model (on the meta device inside ``with torch.device("meta")``), ``in_chans`` inputs."""
    on_meta = building_on_meta()
    with meta_build() if on_meta else nullcontext():
        model = _get_model(bare, num_classes=num_classes, **kwargs)
        if in_chans != 3:
            replace_first_conv(model, in_chans)
    return model.to("meta") if on_meta else model


def _get_model(bare: str, **kwargs) -> nn.Module:
    import torchvision.models

    if bare in INCEPTION_FAMILY:
        if "aux_logits" in kwargs and check_bool_option("aux_logits", kwargs["aux_logits"], AUX_LOGITS_MEANING):
            # In training mode the model would return torchvision's (logits, aux1, aux2) tuple, which no cnnlab
            # command reads: training ended in an internal error at its first step
            raise CnnlabError(
                f"tv:{bare} is built without its auxiliary classifiers: aux_logits=true would make it return "
                "torchvision's tuple of main and auxiliary logits while training, and cnnlab trains, checks and "
                "evaluates the main classifier only. Leave aux_logits out (or false); cnnlab's own googlenet,aux_logits=true "
                "trains with the paper's auxiliary losses.")
        kwargs = {**INCEPTION_OPTIONS, **kwargs}
    side = kwargs.get("input_size")
    if isinstance(side, int) and not isinstance(side, bool) and torchvision.models.get_model_builder(
            bare).__module__.endswith(".maxvit"):
        kwargs["input_size"] = (side, side)  # MaxViT indexes an (h, w) pair; input_size=448 means a square
    # MobileNetV3 and ConvNeXt end their constructors in **kwargs, which takes any name without a word: a
    # misspelt option (dropuot=0.1) would build the default network. Such a name is refused here as torchvision
    # refuses it for the other models.
    swallowed = _swallowed_options(bare, kwargs)
    if swallowed:
        raise UnknownOptionError(_unknown_option_message(bare, swallowed[0]), swallowed[0])
    written = _written_object_option(bare, kwargs)
    if written:
        raise CnnlabError(_written_object_message(bare, written, kwargs[written]))
    out_of_range = _out_of_range_option(bare, kwargs)
    if out_of_range:
        raise CnnlabError(out_of_range)
    try:
        model = torchvision.models.get_model(bare, weights=None, **kwargs)
    except TypeError as err:
        # "unexpected keyword argument": the class has no such parameter; "multiple values for (keyword)
        # argument": the builder sets it itself (tv:resnet18's block and layers, tv:vit_b_16's patch_size)
        unknown = re.search(r"(unexpected keyword |multiple values for (?:keyword )?)argument '([^']+)'", str(err))
        if not unknown:  # a value of the wrong type that torchvision's code tripped over
            raise CnnlabError(f"torchvision's {bare} could not be built with the options "
                              f"{_shown_options(kwargs)}: {err}. Check the type of each value.") from None
        option, set_by_builder = unknown.group(2), unknown.group(1).startswith("multiple")
        raise UnknownOptionError(_unknown_option_message(bare, option, set_by_builder), option) from None
    except (ValueError, AssertionError, RuntimeError, ArithmeticError) as err:
        # torchvision validates options such as aux_logits; a RuntimeError is torch's, from a layer the options
        # made impossible (a negative dimension), an ArithmeticError the init of a layer they left no fan-out
        # (stem_width=1: a division by zero). Without options, the build failing is a bug.
        options_given = set(kwargs) - {"num_classes"} - set(INCEPTION_OPTIONS)
        if isinstance(err, (RuntimeError, ArithmeticError)) and not options_given:
            raise
        # torchvision's text can run over lines and end in a full stop or "!": one sentence of the message here
        reason = " ".join(str(err).split()).rstrip(".!")
        # the options the caller gave: num_classes is always passed, and is named only when nothing else was
        given = sorted(key for key in kwargs if key != "num_classes") or sorted(kwargs)
        shown = ", ".join(f"{key}={kwargs[key]!r:.40}" for key in given)
        raise CnnlabError(f"torchvision's {bare} refused the option{'s' if len(given) > 1 else ''} {shown}: "
                          f"{reason}.") from None
    # A width the options rounded down to nothing (mlp_ratio=0.0001: a hidden layer of 0 units) builds, and fails
    # only at the first forward pass, where it reads as the input's fault
    empty = next((name for name, tensor in model.named_parameters() if tensor.numel() == 0), None)
    if empty is not None:
        raise CnnlabError(f"torchvision's {bare} built with {_shown_options(kwargs)} has a layer with no units: "
                          f"'{empty}' is {'x'.join(map(str, model.get_parameter(empty).shape))}. An option is too "
                          "small for any layer to keep a unit: raise it.")
    return model


# torchvision's numeric options that must lie in a range, by name: torchvision checks none of them when it builds.
# A rate or probability out of [0, 1] failed at the first forward pass, reported as the input's fault; a width
# multiplier of 0 or less built MobileNet's narrowest network (each layer's channels rounded up to 8) in silence;
# a negative stem width ended in torch's "negative dimension".
PROBABILITY_OPTIONS = ("dropout", "attention_dropout", "mlp_dropout", "dropout_aux", "drop_rate",
                       "stochastic_depth_prob")
POSITIVE_OPTIONS = ("width_mult", "mlp_ratio", "expansion_ratio", "squeeze_ratio", "bn_size", "groups",
                    "width_per_group", "stem_width", "round_nearest", "representation_size", "image_size")


def _out_of_range_option(bare: str, kwargs: dict) -> Optional[str]:
    """Why the first numeric option of ``kwargs`` out of its range (:data:`PROBABILITY_OPTIONS` in [0, 1],
    :data:`POSITIVE_OPTIONS` above 0 and finite) is refused; None when every one is within it. Values of other types are
    left to torchvision, whose error names them."""
    for key, value in kwargs.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in PROBABILITY_OPTIONS and not 0 <= value <= 1:
            return (f"tv:{bare}'s option {key}={value!r} must lie between 0 and 1: it is a probability (of dropping "
                    "a unit or a residual branch while training). torchvision does not check it when it builds.")
        if key in POSITIVE_OPTIONS and not 0 < value < math.inf:
            return (f"tv:{bare}'s option {key}={value!r} must be above 0 and finite: it sets a width or a size of the "
                    "network. torchvision does not check it when it builds.")
    return None


def _written_object_option(bare: str, kwargs: dict) -> Optional[str]:
    """The first option in ``kwargs`` that asks for a Python object (norm_layer: a class or a function) but holds
    text, a number or a list of them, as a model spec or a config writes values; None when there is none."""
    objects = set(_python_object_options(bare)) if kwargs else set()
    written = [key for key, value in kwargs.items() if key in objects and _plain_data(value)]
    # among the options the builder leaves to the caller: tv:resnet18's block is set by its builder
    return next((key for key in written if key in _builder_options(bare)), None)


def _plain_data(value) -> bool:
    """Whether ``value`` is what YAML or a model spec can hold: text, a number, a bool, or a list or dict of them."""
    if isinstance(value, (list, tuple)):
        return all(_plain_data(item) for item in value)
    if isinstance(value, dict):
        return all(_plain_data(item) for item in value.values())
    return isinstance(value, (str, int, float, bool))


def _written_object_message(bare: str, option: str, value) -> str:
    return (f"torchvision's {bare} option {option} takes a Python object (a class or a function), which a model "
            f"spec or a config cannot write: {option}={value!r:.40}. Leave it out (the model keeps torchvision's "
            f"choice); in Python, cnnlab.models.create_model('tv:{bare}', {option}=...) passes one.")


def _unknown_option_message(bare: str, option: str, set_by_builder: bool = False) -> str:
    """An option torchvision's builder refused, with the closest option it takes and their list. The builders
    take ``**kwargs`` and pass them to their class, so the options are that class's constructor parameters
    the builder leaves to the caller (tv:resnet18 sets block and layers itself: ``set_by_builder`` says so)."""
    from cnnlab.models._registry import SHARED_OPTIONS

    # An option named as one of create_model's own (dropout: inverted or vanilla) never reaches the builder
    # (num_classes is set by the run), so it is not listed as one to give
    builder_options = _builder_options(bare)
    options = [name for name in builder_options if name not in SHARED_OPTIONS]
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.75)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    # Options whose values are Python objects (a norm layer's class, a list of block builders) cannot be written
    # in a model spec or a config: listed apart, for create_model's callers
    objects = set(_python_object_options(bare))
    written = [name for name in options if name not in objects]
    listed = f" Its options are {', '.join(written)}." if written else ""
    python_only = [name for name in options if name in objects]
    if python_only:
        verb = "takes a Python object" if len(python_only) == 1 else "take Python objects"
        listed += (f" {', '.join(python_only)} {verb} (a class or a function), which only "
                   "cnnlab.models.create_model can pass.")
    shadowed = ""
    if "dropout" in builder_options:
        shadowed = (" torchvision's dropout option cannot be given here: dropout is cnnlab's choice of inverted or "
                    "vanilla dropout for every layer, and drop_rate sets the rate of the dropout before the "
                    "classifier.")
    own = f" torchvision's builder of {bare} sets {option} itself." if set_by_builder else ""
    return f"torchvision's {bare} does not take that option: '{option}'.{own}{hint}{listed}{shadowed}"


# Options a builder reads into its layer configuration before the class sees the rest, for the classes whose
# constructors take **kwargs: the function that reads them, in the class's module (its keyword parameters but the
# first, the architecture's name, are the options).
CONFIG_READERS = {"MobileNetV3": "_mobilenet_v3_conf"}


def _class_taking_any_keyword(bare: str) -> Optional[type]:
    """The class torchvision's builder of ``bare`` returns (its return annotation) when the class's constructor
    ends in ``**kwargs``, which accepts an option of any name; None for the other models."""
    import torchvision.models

    try:
        cls = typing.get_type_hints(torchvision.models.get_model_builder(bare)).get("return")
        parameters = inspect.signature(cls.__init__).parameters.values()
    except Exception:  # no return annotation: torchvision's own TypeError names a wrong option there
        return None
    return cls if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters) else None


def _swallowed_options(bare: str, kwargs: dict) -> list[str]:
    """The names in ``kwargs`` that the model's ``**kwargs`` would take and ignore: none of its options."""
    if not set(kwargs) - {"num_classes"} or _class_taking_any_keyword(bare) is None:
        return []  # a plain build asks nothing (the options' list costs a meta build per candidate)
    known = set(_builder_options(bare)) | {"num_classes"}
    return [name for name in kwargs if name not in known]


def _config_options(cls: type) -> list[str]:
    """The options :data:`CONFIG_READERS` names for ``cls`` (width_mult, reduced_tail, dilated for MobileNetV3)."""
    import sys

    reader = getattr(sys.modules.get(cls.__module__), CONFIG_READERS.get(cls.__name__, ""), None)
    if reader is None:
        return []
    parameters = list(inspect.signature(reader).parameters.values())[1:]
    return [parameter.name for parameter in parameters
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]


@functools.lru_cache(maxsize=None)
def _builder_options_cached(bare: str) -> tuple[str, ...]:
    import torchvision.models

    fixed = INCEPTION_OPTIONS if bare in INCEPTION_FAMILY else {}

    def build_on_meta(**options) -> nn.Module:
        with meta_build():
            return torchvision.models.get_model(bare, weights=None, **{**fixed, **options})

    try:
        cls = type(build_on_meta())
    except Exception:  # not buildable with its defaults: the options are not known
        return ()
    return tuple(_config_options(cls)) + tuple(options_passed_on(build_on_meta, cls))


@functools.lru_cache(maxsize=None)
def _python_object_options(bare: str) -> tuple[str, ...]:
    """The constructor parameters of ``bare``'s class whose annotation asks for a class, a function or a config
    object (norm_layer, block_type, inception_blocks, conv_stem_configs): none of them can be written as text."""
    import torchvision.models

    try:
        cls = typing.get_type_hints(torchvision.models.get_model_builder(bare)).get("return")
        parameters = inspect.signature(cls.__init__).parameters.values()
    except Exception:  # no return annotation: nothing known to leave apart
        return ()
    marks = ("Callable", "Module", "Type[", "type[", "Config")
    return tuple(parameter.name for parameter in parameters
                 if any(mark in str(parameter.annotation) for mark in marks))


def _builder_options(bare: str) -> list[str]:
    """The options torchvision's builder of ``bare`` takes (one meta build per candidate, once per model)."""
    return list(_builder_options_cached(bare))


def _shown_options(kwargs: dict) -> str:
    return ", ".join(f"{key}={value!r:.40}" for key, value in sorted(kwargs.items()) if key != "num_classes")


def first_conv_name(model: nn.Module) -> str:
    """Name of the conv that reads the image (:func:`cnnlab.models._base.first_conv`)."""
    found = first_conv(model)
    if found is None:
        raise CnnlabError(f"{getattr(model, 'model_name', type(model).__name__)} has no Conv2d to read the image.")
    return found[0]


def replace_first_conv(model: nn.Module, in_chans: int) -> nn.Conv2d:
    """Rebuild the first conv for ``in_chans`` input channels, its filters adapted from the RGB ones."""
    name = first_conv_name(model)
    old = model.get_submodule(name)
    new = nn.Conv2d(
        in_chans, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, groups=old.groups, bias=old.bias is not None, padding_mode=old.padding_mode,
        device=old.weight.device, dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(old.weight, in_chans))  # (O, 3, k, k) -> (O, in_chans, k, k)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)
    return new


def set_head_dropout(model: nn.Module, drop_rate: float) -> int:
    """Set every dropout layer of the model's head to ``drop_rate``; returns how many there are.

    A model whose head has no dropout (torchvision's ResNets) accepts 0 and refuses a positive rate
    rather than silently ignoring it.
    """
    from cnnlab.models.stages import HEAD, model_stages

    head = next(stage for stage in model_stages(model) if stage.name == HEAD)
    layers = [m for prefix in head.modules for m in model.get_submodule(prefix).modules()
              if isinstance(m, nn.Dropout)]
    if not layers and drop_rate > 0:
        raise CnnlabError(
            f"{getattr(model, 'model_name', type(model).__name__)} has no dropout before its classifier, so "
            f"drop_rate {drop_rate} cannot apply: leave model.drop_rate unset."
        )
    for layer in layers:
        layer.p = float(drop_rate)
    return len(layers)


register_model_source(ModelSource(PREFIX, torchvision_model_info, create_torchvision_model))
