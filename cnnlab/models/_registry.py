"""A small strict model registry: one decorator, ``create_model`` and ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import numbers
import os
import re
import reprlib
import typing
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from cnnlab.errors import CnnlabError, UnknownNameError, UnknownOptionError, is_finite_number, whole_number
from cnnlab.models._base import (PATH_IS_NO_MODEL, ZERO_INIT_RESIDUAL_MEANING, check_bool_option,
                                 no_residual_blocks_error)
from cnnlab.models._meta import building_on_meta, skip_init_on_meta


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    default_input: tuple[int, int, int]  # (C, H, W) the paper trains at
    min_size: int  # smallest square input (pixels) the tests and docs promise
    paper: str  # short citation of the architecture's source
    torchvision: Optional[str]  # name of the torchvision builder of the same network, if any
    # The builder takes input_size, the image side its first layer reads (an MLP's input width is fixed):
    # a training run sets it from the data and records it in model.options.
    sized_input: bool = False
    # The model takes min_size and no other side (torchvision's ViTs: one position embedding per patch of
    # that image; MaxViT: attention windows that tile that grid), so listings say "exactly", not "at least".
    exact_size: bool = False


_MODELS: dict[str, ModelInfo] = {}
TORCHVISION_PREFIX = "tv:"  # tv:NAME is torchvision's classification model NAME (cnnlab.models.tv)


@dataclass(frozen=True)
class ModelSource:
    """Models named ``PREFIX:NAME`` that come from elsewhere (``tv:`` for torchvision's, registered by
    :mod:`cnnlab.models.tv`): ``info(name)`` gives the ModelInfo, ``create(name, **options)`` the model."""

    prefix: str
    info: Callable[[str], ModelInfo]
    create: Callable[..., nn.Module]


_SOURCES: dict[str, ModelSource] = {}


def register_model_source(source: ModelSource) -> None:
    """Route every name starting with ``source.prefix`` to ``source``; a second source for a prefix is an error."""
    if source.prefix in _SOURCES:
        raise ValueError(f"model source '{source.prefix}' is registered twice")
    _SOURCES[source.prefix] = source


def is_torchvision_name(name: object) -> bool:
    """True for ``tv:NAME`` (whether or not torchvision has NAME)."""
    return isinstance(name, str) and name.startswith(TORCHVISION_PREFIX)


def _source_of(name: object) -> Optional[ModelSource]:
    if not isinstance(name, str):
        return None
    return next((source for prefix, source in _SOURCES.items() if name.startswith(prefix)), None)


def register_model(
    *,
    family: str,
    default_input: tuple[int, int, int] = (3, 224, 224),
    min_size: int = 64,
    paper: str = "",
    torchvision: Optional[str] = None,
    sized_input: bool = False,
) -> Callable:
    """Register a builder under its function name. A second builder with the same name is an error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model '{name}' is registered twice")
        _MODELS[name] = ModelInfo(name, family, builder, default_input, min_size, paper, torchvision, sized_input)
        return builder

    return decorator


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Registered model names, in natural order (resnet8 before resnet18).

    ``pattern`` is a shell-style wildcard (``*``, ``?``, ``[...]``) matched against the whole name:
    ``resnet*`` gives the names that start with resnet. A pattern without any of those characters
    matches anywhere in the name, as ``*pattern*`` would: ``resnet`` also gives ``preact_resnet18``
    and ``wide_resnet50_2``. None or "" gives every name.
    """
    if pattern is not None and not isinstance(pattern, str):
        raise CnnlabError(
            f"list_models takes a name pattern (str) such as 'resnet*', or None for every model, got "
            f"{reprlib.repr(pattern)} (of type {type(pattern).__name__})."
        )
    names = sorted(_MODELS, key=_natural_key)
    if pattern:
        pattern = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; unknown names raise an error listing the closest names.

    ``tv:NAME`` names any torchvision classification model (see :mod:`cnnlab.models.tv`).
    """
    if not isinstance(name, str):
        # a built model's repr runs over many lines: its class says what it is
        shown = f"a built {type(name).__name__} model" if isinstance(name, nn.Module) else reprlib.repr(name)
        raise CnnlabError(
            f"A model is named by a string (str) such as 'resnet18' or 'tv:resnet18', got {shown} "
            f"(of type {type(name).__name__}). Run `cnnlab models` or cnnlab.list_models() for the names."
        )
    source = _source_of(name)
    if source is not None:
        return source.info(name)
    if name not in _MODELS:
        close = closest_names(name, _MODELS)
        hint = f" Closest names: {', '.join(close)}." if close else ""
        if os.path.exists(name):  # a run folder or a weights file, given where a model's name goes
            hint += f" {PATH_IS_NO_MODEL}"
        raise UnknownNameError(
            f"Unknown model '{name}'.{hint} Run `cnnlab models` to list all {len(_MODELS)} models."
        )
    return _MODELS[name]


def closest_names(name: str, names) -> list[str]:
    """Up to five of ``names`` close to the unknown ``name``, compared without case: RESNET8 finds resnet8 (the
    names themselves are case-sensitive, as timm's are)."""
    by_lower = {known.lower(): known for known in names}
    return [by_lower[match] for match in difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.5)]


def default_input(name: str, options: Optional[Mapping[str, Any]] = None) -> tuple[int, int, int]:
    """The input (C, H, W) a model built with ``options`` is analysed at when none is given: the paper's
    size, with ``options``' in_chans and, for a model whose first layer reads a fixed side (the mlp's
    ``input_size``), that side, so the network is shown at the size it was built for rather than pooled to it;
    likewise the ``image_size`` of a model that takes one side only (torchvision's ViTs)."""
    info = model_info(name)
    options = options or {}
    channels, height, width = info.default_input
    if options.get("in_chans") is not None:
        channels = options["in_chans"]
    # The option that sets the one side a fixed-size model takes: torchvision's ViTs are built for image_size
    # (MaxViT for input_size) and refuse any other, so 224 would not even run on tv:vit_b_16,image_size=64.
    side = options.get("input_size") if info.sized_input else None
    if info.exact_size:  # a ViT's image_size, a MaxViT's input_size (a square (h, w) pair)
        side = options.get("image_size", options.get("input_size"))
        if isinstance(side, (tuple, list)) and len(side) == 2 and side[0] == side[1]:
            side = side[0]
    # A side that is not a whole number of at least 1 is left to the builder, whose message names the option.
    if isinstance(side, numbers.Integral) and not isinstance(side, bool) and side >= 1:
        height = width = int(side)
    return (channels, height, width)


def model_exists(name: str) -> bool:
    """True for a registered zoo model and for ``tv:NAME`` of a torchvision classification model."""
    try:
        model_info(name)
    except CnnlabError:
        return False
    return True


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    norm=None,
    act=None,
    drop_rate: Optional[float] = None,
    init: str = "default",
    bias_init: Optional[float] = None,
    dropout: str = "inverted",
    hidden_drop_rate: Optional[float] = None,
    stage_drop_rate: Optional[float] = None,
    **kwargs,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered name, see :func:`list_models`, or ``tv:NAME`` for torchvision's model NAME
            (:func:`cnnlab.models.tv.create_torchvision_model`, reached through its ModelSource).
        num_classes: size of the classifier output. 0 builds the model without a classifier, as
            ``model.reset_classifier(0)`` leaves it: the forward pass returns the pooled (B, num_features)
            features. Zoo models only: a ``tv:`` model keeps its classifier (features from
            :func:`cnnlab.models.pre_logits`).
        in_chans: input channels (1 for grayscale).
        norm: normalisation for every norm layer of the model (name, type or partial);
            None keeps the architecture's own choice.
        act: activation for every activation of the model; None keeps the architecture's own.
        drop_rate: dropout before the classifier; None keeps the architecture's default.
        init: weight initialisation of convs and hidden linear layers (:func:`cnnlab.models.init.apply_init`):
            ``default`` keeps the architecture's, or normal:STD, uniform:A, xavier, kaiming_in,
            kaiming_out, lecun, zeros.
        bias_init: constant for those layers' biases; None keeps them at 0.
        dropout: ``inverted`` (torch's) or ``vanilla`` (the lecture's: scaled at test time) for every
            dropout layer (:func:`cnnlab.models.dropout.apply_dropout`).
        hidden_drop_rate: dropout added after each hidden fully connected layer; None adds none.
        stage_drop_rate: dropout added after each convolutional stage; None adds none.
        **kwargs: architecture options such as ``zero_init_residual=True`` (refused for a model without
            residual blocks; ``zero_init_residual=False`` is accepted by every zoo model).
    """
    info = model_info(name)
    if whole_number(num_classes) is None or whole_number(num_classes) < 0:
        raise CnnlabError(
            f"num_classes must be a whole number of at least 1, or 0 for no classifier, got {num_classes!r}."
        )
    if whole_number(in_chans) is None or whole_number(in_chans) < 1:
        raise CnnlabError(f"in_chans must be a whole number of at least 1, got {in_chans!r}.")
    num_classes, in_chans = whole_number(num_classes), whole_number(in_chans)
    if drop_rate is not None and not (is_finite_number(drop_rate) and 0.0 <= drop_rate < 1.0):
        raise CnnlabError(
            f"drop_rate must be a drop probability in [0, 1) or None (the architecture's default), got {drop_rate!r}."
        )
    # The builders check their own options as Python ints: an integer computed with numpy (np.int64) is one.
    kwargs = {key: int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
              for key, value in kwargs.items()}
    source = _source_of(name)
    if source is not None and num_classes == 0:
        raise CnnlabError(
            f"{info.name} keeps its classifier: num_classes must be at least 1 for it (0 removes the classifier "
            "of cnnlab's own models only). Its features, the classifier's input, come from "
            "cnnlab.models.pre_logits(model, x)."
        )
    if source is None and num_classes == 0:
        # No classifier (timm's convention): build the model with one, then remove it as reset_classifier(0)
        # does, so that every architecture (a class-map conv, auxiliary heads) loses it the way it is tested to.
        # The initialisation and dropout options are applied with the classifier in place, as for any count.
        model = create_model(name, num_classes=1, in_chans=in_chans, norm=norm, act=act, drop_rate=drop_rate,
                             init=init, bias_init=bias_init, dropout=dropout, hidden_drop_rate=hidden_drop_rate,
                             stage_drop_rate=stage_drop_rate, **kwargs)
        from cnnlab.models.stages import reset_classifier

        reset_classifier(model, 0)  # a model that is not a ClassifierModel is refused, with what to use instead
        return model
    if source is not None:
        model = source.create(name, num_classes=num_classes, in_chans=in_chans, norm=norm, act=act,
                              drop_rate=drop_rate, **kwargs)
        return _finish(model, init, bias_init, dropout, hidden_drop_rate, stage_drop_rate)
    options = dict(kwargs, num_classes=num_classes, in_chans=in_chans)
    for key, value in (("norm", norm), ("act", act), ("drop_rate", drop_rate)):
        if value is not None:
            options[key] = value
    # On the meta device there are no values to initialise: skipping the initialisers makes a meta build
    # (parameter counts, summaries, input checks) ~10x faster and gives the same modules and shapes.
    try:
        with skip_init_on_meta() if building_on_meta() else nullcontext():
            model = info.builder(**options)
    except TypeError as err:
        # "keyword argument 'x'" where the builder passes x by keyword, "argument 'x'" where it passes x by position
        fixed = re.search(r"got multiple values for (?:keyword )?argument '([^']+)'", str(err))
        unexpected = re.search(r"unexpected keyword argument '([^']+)'", str(err))
        if not any(match and match.group(1) in options for match in (fixed, unexpected)):
            raise  # not an option given here: a layer the model builds (a norm or act type given) refused its own
        if fixed:
            # The builder passes this option itself: it is what makes the model that name.
            raise CnnlabError(
                f"Model '{name}' sets {fixed.group(1)} itself ({fixed.group(1)} is part of what makes it "
                f"{name}), so it cannot be given as an option: leave {fixed.group(1)} out, or build another model "
                "of its family (cnnlab models lists them)."
            ) from err
        if unexpected.group(1) == "zero_init_residual":
            # Say why: true means something, only not for a model without residual blocks
            if check_bool_option("zero_init_residual", kwargs["zero_init_residual"], ZERO_INIT_RESIDUAL_MEANING):
                raise no_residual_blocks_error(f"Model '{name}'") from err
            # False asks for no zero-initialised residual branch, which such a model has anyway: accepted on
            # every model, as the plain nets (plain20, whose builder takes it) accept it, and the model is
            # built without it. The builder refused it at its call, before drawing any weight.
            rest = {key: value for key, value in kwargs.items() if key != "zero_init_residual"}
            return create_model(name, num_classes=num_classes, in_chans=in_chans, norm=norm, act=act,
                                drop_rate=drop_rate, init=init, bias_init=bias_init, dropout=dropout,
                                hidden_drop_rate=hidden_drop_rate, stage_drop_rate=stage_drop_rate, **rest)
        raise UnknownOptionError(_unknown_option_message(name, info, unexpected.group(1)), unexpected.group(1)) from err
    model.model_name = name  # used in messages and by analysis
    model.min_size = info.min_size
    model.in_chans = in_chans  # the data loader delivers this many channels (cnnlab.data reconciles)
    return _finish(model, init, bias_init, dropout, hidden_drop_rate, stage_drop_rate)


# create_model's own keywords, which every zoo model takes (the first five reach its builder as well)
SHARED_OPTIONS = ("num_classes", "in_chans", "norm", "act", "drop_rate", "init", "bias_init", "dropout",
                  "hidden_drop_rate", "stage_drop_rate")


def _unknown_option_message(name: str, info: ModelInfo, option: str) -> str:
    """An option the builder refused, with the closest option it takes and the list of its options (torch's
    own text names the class's __init__, which is not how a user reaches the model)."""
    own = [key for key in builder_options(info) if key not in SHARED_OPTIONS]
    close = difflib.get_close_matches(option, own + list(SHARED_OPTIONS), n=1, cutoff=0.75)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    variant = f"{option}_{name}"  # resnet18,preact=true asks for the model preact_resnet18
    if variant in _MODELS:
        hint = f" {variant} is a model of its own: build it by that name."
    listed = f"Its options are {', '.join(own)}" if own else "It has no options of its own"
    return (f"Model '{name}' does not take that option: '{option}'.{hint} {listed}; every model also takes "
            f"{', '.join(SHARED_OPTIONS)}.")


def builder_options(info: ModelInfo) -> list[str]:
    """The keyword options a zoo model's builder takes: its class's constructor parameters (the builder's
    return annotation names the class) less those the builder sets itself (resnet18's block and stages).
    Only asked when an option is refused, so the tries cost nothing on a normal build."""
    try:
        cls = typing.get_type_hints(info.builder).get("return")
        inspect.signature(cls.__init__)
    except Exception:  # a builder registered without a return annotation: its options are not known
        return []

    def build_on_meta(**options) -> object:
        with torch.device("meta"), skip_init_on_meta():
            return info.builder(**options)

    return options_passed_on(build_on_meta, cls)


def options_passed_on(build: Callable[..., object], cls: type) -> list[str]:
    """The parameters of ``cls.__init__`` that ``build`` (a builder of ``cls`` that passes its keywords on)
    lets a caller set: each is tried with a placeholder value. A builder that sets the parameter itself
    refuses it at once ("got multiple values"); any other outcome (the placeholder refused as a bad value)
    means the builder passes it on. ``build`` should build on the meta device: one build per parameter.
    """
    taken = []
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        try:
            build(**{parameter.name: object()})
        except TypeError as err:
            if "multiple values" in str(err):
                continue
        except KeyError as err:
            # Python 3.11 raises the "multiple values" TypeError as a bare KeyError of the name when the call
            # runs inside an except block, as it does here while the refused option is being reported
            if err.args == (parameter.name,):
                continue
        except Exception:
            pass
        taken.append(parameter.name)
    return taken


def _finish(model: nn.Module, init: str, bias_init: Optional[float], dropout: str,
            hidden_drop_rate: Optional[float], stage_drop_rate: Optional[float]) -> nn.Module:
    """Apply the options every architecture shares, after its builder: initialisation, then dropout."""
    from cnnlab.models.dropout import apply_dropout
    from cnnlab.models.init import apply_init

    apply_init(model, init, bias_init)
    apply_dropout(model, kind=dropout, hidden_rate=hidden_drop_rate, stage_rate=stage_drop_rate)
    return model


def _natural_key(name: str) -> list:
    """Sort resnet18 before resnet101: compare digit runs as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
