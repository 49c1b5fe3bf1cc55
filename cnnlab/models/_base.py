"""The interface every cnnlab model shares, weight initialisation, and input-size checks.

A model is ``features`` (a convolutional trunk, input (B, C, H, W) -> (B, F, h, w)) followed by a
head: ``global_pool`` -> flatten -> ``head`` (pre-logits layers: dropout, hidden FC layers or a
norm) -> ``fc`` (the classifier). Transfer learning swaps ``fc`` with :meth:`reset_classifier`.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
from collections import OrderedDict
from contextlib import contextmanager, nullcontext
from typing import Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from cnnlab.errors import (CnnlabError, InputTooSmallError, counted, is_finite_number, is_out_of_memory,
                           shown_value, whole_number)
from cnnlab.layers.act import RELU_FAMILY, ActLayer, act_base
from cnnlab.layers.init import KAIMING_IN, KAIMING_OUT, LECUN, RELU_GAIN, XAVIER, InitScheme, init_weight_
from cnnlab.models._meta import shapes_on_meta


class AuxLogits(NamedTuple):
    """Training-mode output of a model with auxiliary classifiers (GoogLeNet).

    ``logits`` is the main head's (B, num_classes); ``aux`` holds each auxiliary head's
    (B, num_classes), earliest in the network first. A trainer adds ``weight * CE(aux_i)``.
    """

    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...]


class ClassifierModel(nn.Module):
    """Base class: ``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``.

    Subclasses build ``self.features``, ``self.global_pool``, ``self.head`` and ``self.fc`` and set
    ``self.num_features`` (the width ``fc`` reads) and ``self.num_classes``.
    """

    num_classes: int
    num_features: int

    def build_head(
        self,
        num_features: int,
        num_classes: int,
        *,
        drop_rate: float = 0.0,
        head: Optional[nn.Module] = None,
        pool_size: int = 1,
    ) -> None:
        """Attach the tail every model shares: adaptive average pooling to ``pool_size``, the
        pre-logits ``head`` (default: dropout of ``drop_rate``) and the classifier ``fc`` reading
        ``num_features``. Called after ``features``, so ``fc`` is the last registered module.
        """
        self.global_pool = nn.AdaptiveAvgPool2d(pool_size)  # (B, F, h, w) -> (B, F, p, p)
        if head is None:
            head = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = head
        self.num_features = num_features
        self.num_classes = num_classes
        self.fc = new_linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, F, h, w) feature map before pooling."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, F, h, w) feature map -> (B, num_classes) logits, or the (B, F') pre-logits vector."""
        x = self.global_pool(x)
        x = torch.flatten(x, 1)
        x = self.head(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final classifier layer (``fc``)."""
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a freshly initialised one of ``num_classes`` outputs.

        ``num_classes=0`` removes it: the model then returns pre-logit features.
        """
        num_classes = check_num_classes(num_classes)
        self.num_classes = num_classes
        self.fc = like_model(new_linear(self.num_features, num_classes), self)

    def classifier_modules(self) -> list[nn.Module]:
        """Every layer that outputs class logits (the main classifier, auxiliary heads' last layers)."""
        return [self.fc]


def first_conv(model: nn.Module) -> Optional[tuple[str, nn.Conv2d]]:
    """(dotted name, module) of the conv that reads the image: the first ``nn.Conv2d`` registered (every
    zoo and torchvision classifier registers its modules in the order its forward runs them); None if
    the model has none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)`` for tensors that are ``model``'s own: a checkpoint
    cnnlab wrote of this network, or weights whose every shape was matched to it.

    Such a state is a plain dict: a safetensors file, or a dict rebuilt tensor by tensor, carries no
    module versions (``state_dict()._metadata``), and a module that reads its version takes a missing one
    for an old layout (torchvision's MNASNet refuses it outright). The tensors fit this model, so they
    load with its own versions.
    """
    ordered = OrderedDict(state)
    ordered._metadata = {name: {"version": module._version} for name, module in model.named_modules()}
    model.load_state_dict(ordered, strict=True)


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` for :meth:`ClassifierModel.reset_classifier` as an int (numpy and torch integers too)."""
    whole = whole_number(num_classes)
    if whole is None or whole < 0:
        raise CnnlabError(
            f"num_classes must be a whole number of at least 0 (0 removes the classifier), got {num_classes!r}."
        )
    return whole


def check_whole_option(key: str, value, minimum: int, meaning: str) -> int:
    """A builder's integer option (``growth_rate``, ``fc_width``, ...) as an int, or a CnnlabError naming it.

    A zero or negative width would otherwise build layers with no channels and fail far from the option
    (a division by zero in the initialiser), which reads as a bug rather than as bad input.
    """
    whole = whole_number(value)
    if whole is None or whole < minimum:
        raise CnnlabError(f"{key}={shown_value(value)} must be a whole number of at least {minimum} ({meaning}).")
    return whole


def check_positive_option(key: str, value, meaning: str, *, maximum: Optional[float] = None) -> float:
    """A builder's real-valued option that must be above 0 (and at most ``maximum``), or a CnnlabError naming it."""
    if not is_finite_number(value) or value <= 0 or (maximum is not None and value > maximum):
        upper = f" and at most {maximum:g}" if maximum is not None else ""
        raise CnnlabError(f"{key}={shown_value(value)} must be a number above 0{upper} ({meaning}).")
    return float(value)


def check_rate_option(key: str, value, meaning: str) -> float:
    """A builder's probability option (``drop_path_rate``, ``aux_drop_rate``) as a float in [0, 1), or a
    CnnlabError naming it (a text or None otherwise failed in a comparison deep in the builder)."""
    if not is_finite_number(value) or not 0.0 <= value < 1.0:
        raise CnnlabError(f"{key}={shown_value(value)} must be a probability in [0, 1) ({meaning}).")
    return float(value)


def check_bool_option(key: str, value, meaning: str) -> bool:
    """A builder's true/false option, or a CnnlabError naming it (a 1 or a "yes" is not taken for true)."""
    if not isinstance(value, bool):
        raise CnnlabError(f"{key}={shown_value(value)} must be true or false ({meaning}).")
    return value


DROP_PATH_MEANING = "stochastic depth of the last residual block, the earlier blocks' rising linearly to it"
ZERO_INIT_RESIDUAL_MEANING = "start every residual branch at zero so that each residual block begins as the identity"
# The models whose builders take zero_init_residual (tests/models/test_resnet.py checks this list against the zoo)
RESIDUAL_MODELS = ("the resnet, preact_resnet, resnext and wide_resnet models, the CIFAR resnets (resnet8 to "
                   "resnet110, preact_resnet20 to preact_resnet1001), mobilenet_v2 or convnext_tiny")


def no_residual_blocks_error(model: str, instead: str = "") -> CnnlabError:
    """The refusal of zero_init_residual=true for ``model`` (its name in the message), which has no residual
    blocks: the option would change nothing, and silence would let a user believe it had. ``instead``: the
    advice, by default any model that has residual blocks."""
    instead = instead or f"build a model with residual blocks: {RESIDUAL_MODELS}"
    return CnnlabError(f"{model} has no residual blocks (no shortcut connections): zero_init_residual=true, which "
                       f"would {ZERO_INIT_RESIDUAL_MEANING} (Goyal et al. 2017), would change nothing. Leave the "
                       f"option out, or {instead}.")


def check_zero_init_residual(value, has_residual_blocks: bool, model: str, instead: str = "") -> bool:
    """The zero_init_residual option as a bool; true is refused for a model without residual blocks
    (:func:`no_residual_blocks_error`)."""
    value = check_bool_option("zero_init_residual", value, ZERO_INIT_RESIDUAL_MEANING)
    if value and not has_residual_blocks:
        raise no_residual_blocks_error(model, instead)
    return value


def like_model(layer: nn.Module, model: nn.Module) -> nn.Module:
    """Move a new layer to the device and floating dtype of the model's parameters."""
    reference = next(model.parameters(), None)
    if reference is None:
        return layer
    return layer.to(device=reference.device, dtype=reference.dtype)


def new_linear(in_features: int, num_classes: int) -> nn.Module:
    """A classifier layer initialised like the rest of the zoo, or Identity for 0 classes."""
    if num_classes == 0:
        return nn.Identity()
    fc = nn.Linear(in_features, num_classes)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    return fc


def init_weights(model: nn.Module, act_layer: ActLayer) -> None:
    """Initialise convs for the activation that follows them; norms to identity; classifiers small.

    ReLU-family activations get He (Kaiming) normal init, std = sqrt(2 / fan_out) (He et al.
    2015): the factor 2 compensates for the half of the signal a ReLU zeroes, which keeps the
    activation variance constant through depth. SELU gets LeCun normal, std = 1 / sqrt(fan_in): with
    it a SELU network is self-normalising, activations are pulled to mean 0 and variance 1 at every
    layer (Klambauer et al. 2017). Other activations (tanh, sigmoid, identity) get Glorot normal with
    the gain torch computes for them (Glorot & Bengio 2010). Hidden linear layers get the same rule
    (He in fan_in mode); the classifiers (``classifier_modules()``) get N(0, 0.01), so the untrained
    model's loss is ln(C) (`cnnlab check` tests both). The formulas live in :mod:`cnnlab.layers.init`.
    """
    base = act_base(act_layer)
    if isinstance(base, type) and issubclass(base, RELU_FAMILY):
        conv_scheme, linear_scheme, gain = InitScheme(KAIMING_OUT), InitScheme(KAIMING_IN), RELU_GAIN
    elif base is nn.SELU:
        # Glorot with torch's SELU gain 3/4 gives Var(w) = 0.56 / fan for a square layer: the signal
        # shrinks at every layer instead of settling at the fixed point (0, 1) SELU was built around.
        conv_scheme = linear_scheme = InitScheme(LECUN)
        gain = 1.0
    else:
        gain_name = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(base, "linear")
        conv_scheme = linear_scheme = InitScheme(XAVIER)
        gain = nn.init.calculate_gain(gain_name)
    classifiers = {id(layer) for layer in _classifier_layers(model)}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if id(module) in classifiers:
                # Classifiers (the main fc, GoogLeNet's auxiliary ones, NiN's class-map conv) start small,
                # so the untrained model is unsure of every class and its loss is ln(C).
                nn.init.normal_(module.weight, 0.0, 0.01)
            elif isinstance(module, nn.Conv2d):
                init_weight_(module.weight, conv_scheme, gain)
            else:
                # Hidden layers keep the activation scale: with N(0, 0.01) LeNet-5's tanh layers shrank
                # the signal 100x in two layers (the lecture's vanishing-activation demonstration).
                init_weight_(module.weight, linear_scheme, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
            if module.bias is not None:  # norm_options.bias=false keeps the scale and drops the shift
                nn.init.zeros_(module.bias)


def _classifier_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that output class logits: ``classifier_modules()`` of a ClassifierModel, else ``fc``."""
    if isinstance(model, ClassifierModel):
        return model.classifier_modules()
    fc = getattr(model, "fc", None)
    return [fc] if fc is not None else []


def zero_init_residual_branches(model: nn.Module) -> int:
    """Zero the last norm weight (or last conv, when the branch has no norm) of every residual
    branch, so each residual block starts as the identity (Goyal et al. 2017). Returns how many
    blocks were changed. Blocks opt in by defining ``zero_init_last()``.
    """
    count = 0
    for module in model.modules():
        if hasattr(module, "zero_init_last"):
            module.zero_init_last()
            count += 1
    return count


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil: bool = False) -> int:
    """Spatial output size of a conv or pool: floor((size + 2p - d(k-1) - 1) / s) + 1."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    steps = math.ceil(span / stride) if ceil else span // stride
    return steps + 1


# the advice of `cnnlab build` and `cnnlab summary` (--input), and of their functions (input_size)
LARGER_INPUT = "use a larger input (--input; input_size in Python) or resize the images"


# Said of a file or folder given where a model or a model's name goes
PATH_IS_NO_MODEL = ("It is a file or folder: a run's model loads from its folder with `cnnlab eval`, `cnnlab predict` "
                    "or model.init_from, and torchvision weights with cnnlab.load_torchvision_state_dict.")


def not_a_module_error(function: str, model) -> CnnlabError:
    """The refusal of a ``model`` argument that is not a built model (a name, most often), saying how to build one."""
    if isinstance(model, (str, os.PathLike)) and os.path.exists(model):  # a run folder or a weights file
        build = f" {PATH_IS_NO_MODEL} An architecture is built with cnnlab.create_model(NAME, ...)."
    elif isinstance(model, str):  # a name, most often (create_model says which names there are)
        build = f" Build it first: model = cnnlab.create_model({model!r}, ...)."
    else:
        build = " Build one with cnnlab.create_model(NAME, ...)."
    return CnnlabError(f"{function} takes a built model (a torch nn.Module), got {model!r:.60} (of type "
                       f"{type(model).__name__}).{build}")


def check_input_size(model: nn.Module, input_size: Sequence[int], model_name: Optional[str] = None, *,
                     remedy: Optional[str] = None, larger: str = LARGER_INPUT) -> tuple[int, ...]:
    """Run one forward pass at ``input_size`` = (C, H, W) and return the output shape.

    When the input is too small, raises :class:`InputTooSmallError` naming the layer where the
    feature map would vanish; ``remedy`` replaces the message's advice (a larger input, another
    model) where the caller knows better what to do, and ``larger`` only its first part, how to give a
    larger input in the caller's words (a training run sets data.image_size, not --input). Any other input the model cannot take (C
    channels for a model built for another ``in_chans``) raises :class:`CnnlabError` naming the layer
    that failed and the shape it received; so does an ``input_size`` that is not three whole numbers
    of at least 1. Works on the meta device (no memory, no compute) when the model's parameters live
    there, otherwise on a batch of two zero images in eval mode, on the device and in the floating
    dtype of the model's tensors (the CPU and fp32 for a model without any).
    """
    if not isinstance(model, nn.Module):
        raise not_a_module_error("check_input_size", model)
    label = model_name or getattr(model, "model_name", None) or type(model).__name__
    if (not isinstance(input_size, (tuple, list)) or len(input_size) != 3
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_size)):
        raise CnnlabError(
            f"The input size for {label} must be (C, H, W), three whole numbers of at least 1 (channels, height, "
            f"width), got {input_size!r}."
        )
    input_size = tuple(int(v) for v in input_size)
    refuse_other_side(model, input_size, label)
    tensors = list(itertools.chain(model.parameters(), model.buffers()))
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    x = torch.zeros((2, *input_size), device=device, dtype=dtype)  # batch 2: BatchNorm in any mode accepts it
    last = {}  # name, module and input shape of the last leaf layer entered

    def before(name):
        def hook(module, args):
            shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None
            last.update(name=name, module=module, shape=shape)
            if shape is not None and len(shape) == 4 and min(shape[2:]) < 1:
                raise _Vanished()
            if isinstance(module, nn.modules.instancenorm._InstanceNorm) and shape and shape[2] * shape[3] == 1:
                raise _Vanished()  # instance statistics of one pixel: torch refuses, and they mean nothing
        return hook

    def after(name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) < 1:
                last.update(name=name, module=module)
                raise _Vanished()
        return hook

    handles = []
    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_pre_hook(before(name)))
            handles.append(module.register_forward_hook(after(name)))
    try:
        with torch.no_grad(), eval_mode(model), shapes_on_meta() if x.is_meta else nullcontext():
            out = model(x)
    except (_Vanished, RuntimeError, ValueError, AssertionError, IndexError) as err:
        if is_out_of_memory(err):
            raise  # the machine's or the device's limit, not the input's shape
        if isinstance(err, _Vanished) or _vanishes_here(last):
            raise InputTooSmallError(_too_small_message(model, input_size, last, model_name, remedy, larger)) from None
        raise CnnlabError(_cannot_take_message(model, label, input_size, last, err)) from err
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(out, AuxLogits):
        out = out.logits
    return tuple(out.shape[1:])


@contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode and afterwards restore each module's own flag (a frozen
    BatchNorm inside a training model stays frozen)."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


class _Vanished(Exception):
    pass


def _vanishes_here(last: dict) -> bool:
    """True when the last layer entered is a conv/pool whose output size would be < 1."""
    module, shape = last.get("module"), last.get("shape")
    if module is None or shape is None or len(shape) != 4:
        return False
    if not hasattr(module, "kernel_size"):
        return False
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    kernel, stride = pair(module.kernel_size), pair(module.stride or module.kernel_size)
    padding, dilation = pair(module.padding), pair(getattr(module, "dilation", 1))
    if isinstance(padding[0], str):  # padding="same" never shrinks
        return False
    ceil = bool(getattr(module, "ceil_mode", False))
    return any(
        output_size(shape[2 + i], kernel[i], stride[i], padding[i], dilation[i], ceil) < 1 for i in range(2)
    )


def too_small_message(model: nn.Module, input_size, layer: str, module: nn.Module, shape, model_name: str) -> Optional[str]:
    """What :func:`check_input_size` says when ``module`` (the layer named ``layer``, entered with a tensor of
    ``shape`` (B, C, H, W)) failed because the map reaching it is too small: its output would vanish, or
    instance norm would get one pixel. None when that is not why it failed. For other forwards over the
    model (cnnlab.summary's) to explain a small input in the same words."""
    last = {"name": layer, "module": module, "shape": shape}
    one_pixel = (isinstance(module, nn.modules.instancenorm._InstanceNorm) and shape is not None and len(shape) == 4
                 and shape[2] * shape[3] == 1)
    if one_pixel or _vanishes_here(last):
        return _too_small_message(model, input_size, last, model_name)
    return None


def _too_small_message(model, input_size, last, model_name, remedy: Optional[str] = None,
                       larger: str = LARGER_INPUT) -> str:
    zoo_name = model_name or getattr(model, "model_name", None)
    name = zoo_name or type(model).__name__
    module = last.get("module")
    shape = last.get("shape")
    # a module analysed on its own (cnnlab.summary(nn.Conv2d(...), ...)) is the layer, and has no name in itself
    where = f"layer '{last['name']}' ({type(module).__name__})" if last.get("name") else \
        f"its own {type(module).__name__}"
    if shape is not None and len(shape) == 4:
        where += f", which receives a {shape[2]}x{shape[3]} feature map,"
    problem = "the feature map would vanish (output size below 1)"
    remedies = larger
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        problem = "instance normalisation would have a single pixel to normalise"
        remedies += ", or choose a norm other than 'in'"
    if zoo_name:  # a model of one's own is what it is: another model is no fix for it
        small = [m for m in SMALL_IMAGE_MODELS if m != name]
        remedies += f", or pick a model made for small images ({', '.join(small)})"
    size = "x".join(str(v) for v in input_size)
    min_size = getattr(model, "min_size", None)
    hint = ""
    if min_size and min(input_size[1:]) < min_size:
        hint = f" {name} is meant for inputs of at least {min_size}x{min_size}."
    elif min_size and isinstance(module, nn.modules.instancenorm._InstanceNorm):
        # the input meets the minimum, which is one for norms that can take a 1x1 map: saying it again contradicts
        hint = (f" {name}'s minimum of {min_size}x{min_size} holds for norms that can take a 1x1 map; instance "
                "normalisation needs at least 2x2 pixels in every map it normalises.")
    return f"Input {size} is too small for {name}: at {where} {problem}.{hint} To fix it, {remedy or remedies}."


def _cannot_take_message(model: nn.Module, name: str, input_size, last: dict, err: Exception) -> str:
    """A forward that failed for a reason other than size: the layer, the shape it got, torch's words,
    and, when the first conv reads another number of channels than the input has, that."""
    size = "x".join(str(v) for v in input_size)
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = "before any layer ran"
    if last.get("module") is not None:
        shape = last.get("shape")
        got = f" on a {'x'.join(map(str, shape[1:]))} input per image" if shape and len(shape) > 1 else ""
        where = f"in layer '{last['name']}' ({type(last['module']).__name__}){got}"
    message = f"{name} cannot take a {size} input: it failed {where} ({detail})."
    conv = first_conv(model)
    side = fixed_input_side(model)
    if side is not None and side < 1:
        message += f" It was built for {side}x{side} images, which no image is: its image_size option is out of range."
    elif conv is not None and conv[1].in_channels != input_size[0]:
        reads = conv[1].in_channels
        message += (
            f" Its first conv ('{conv[0]}') reads {counted(reads, 'channel')} and the input has {input_size[0]}: "
            f"build the model with in_chans={input_size[0]} or give it {reads}-channel images."
        )
    elif size_fits(model, input_size):
        message += " " + SIZE_FITS_REMEDY
    else:
        message += " " + input_size_remedy(model, input_size)
    return message


# The last sentence of a message about a forward that failed on an input within the sizes the model records that
# it takes (size_fits): advice to use another size would send the person after a cause that is not there.
SIZE_FITS_REMEDY = ("The input is within the sizes the model takes, so the cause lies elsewhere: an option it was "
                    "built with may be out of its range (a width or channel count of 0, a probability outside [0, 1], "
                    "an option that needs 3-channel images).")


def size_fits(model: nn.Module, input_size) -> bool:
    """Whether ``input_size`` (C, H, W) is one the model takes by its recorded size limits: its one fixed side, or
    at least its minimum. False when it records neither (nothing to go by)."""
    side = fixed_input_side(model)
    if side is not None:
        return tuple(input_size[1:]) == (side, side)
    min_size = getattr(model, "min_size", None)
    return isinstance(min_size, int) and min(input_size[1:]) >= min_size


def fixed_input_side(model: nn.Module) -> Optional[int]:
    """The one image side a model takes, for a model built for exactly one size (torchvision's
    VisionTransformer keeps it as ``image_size`` and refuses any other: its position embedding has one
    entry per patch of that image; a ``tv:`` MaxViT has it as ``fixed_side``), else None."""
    side = getattr(model, "image_size", None)
    if side is None:  # cnnlab records it on a tv: MaxViT, which is built for one size but keeps no attribute of it
        side = getattr(model, "fixed_side", None)
    return side if isinstance(side, int) and not isinstance(side, bool) else None


def refuse_other_side(model: nn.Module, input_size: Sequence[int], label: str) -> None:
    """Refuse (C, H, W) for a ``tv:`` MaxViT (``fixed_side``, which cnnlab records on it) when H x W is not the
    square it was built for: its stride-2 stem rounds 221-223 to 224's grid and runs, on windows laid out for
    the size it was built for, so it is refused as `cnnlab models` promises. torchvision's ViT refuses any other
    side itself; an ``image_size`` on a module of one's own is only the size it is usually given, not a limit."""
    side = getattr(model, "fixed_side", None)
    if isinstance(side, int) and side >= 1 and tuple(input_size[1:]) != (side, side):
        size = "x".join(str(v) for v in input_size)
        raise CnnlabError(f"{label} cannot take a {size} input. {input_size_remedy(model, input_size)}")


def input_size_remedy(model: nn.Module, input_size) -> str:
    """The last sentence of a message about an input the model could not take: the one size it needs, or
    where to read its minimum. A fixed-size model pointed to a minimum would be tried at larger sizes too."""
    side = fixed_input_side(model)
    if side is not None and tuple(input_size[1:]) != (side, side):
        return (f"It takes only {side}x{side} images (it was built for that size): use a "
                f"{input_size[0]}x{side}x{side} input.")
    min_size = getattr(model, "min_size", None)
    if isinstance(min_size, int):
        listing = "cnnlab models --torchvision" if str(getattr(model, "model_name", "")).startswith("tv:") else "cnnlab models"
        return (f"Use an input size the model supports: at least {min_size}x{min_size} (`{listing}` lists each "
                "model's minimum).")
    return "Use an input size the model supports."


SMALL_IMAGE_MODELS = ("lenet5", "nin", "resnet20", "mobilenet_v2")
