"""Load torchvision weights into cnnlab models.

Every cnnlab model that torchvision also builds registers its layers in the same order with the
same tensor shapes (the tests prove it for each one), so a torchvision state_dict maps onto ours
position by position. Each pair is checked: equal shapes and the same tensor kind (weight, bias,
running_mean, ...). Two differences are handled on purpose and reported:

* a classifier with another class count (transfer learning): ours keeps its fresh init;
* a first conv with other input channels (grayscale): the RGB filters are summed over
  channels for 1 channel, or repeated and rescaled for other counts (as timm does), so the
  response to a gray image equals the RGB network's response to the same image in colour.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Union

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.models._meta import skip_init_on_meta
from cnnlab.models._registry import model_info


@dataclass
class LoadReport:
    """What :func:`load_torchvision_state_dict` did with each tensor."""

    loaded: int = 0  # tensors copied as they are
    skipped: list[str] = field(default_factory=list)  # classifier tensors kept fresh (class count differs)
    adapted: list[str] = field(default_factory=list)  # first-conv weights converted to in_chans


def load_torchvision_state_dict(
    model: nn.Module, state_dict: Union[Mapping[str, torch.Tensor], str, os.PathLike]
) -> LoadReport:
    """Copy a torchvision state_dict (or a local .pth / .safetensors file of one) into ``model``.

    Files are read without unpickling code (``torch.load(weights_only=True)`` or safetensors).
    Raises :class:`CnnlabError` naming the first tensor that does not fit.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _read_weights(Path(state_dict))
    name = getattr(model, "model_name", type(model).__name__)
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CnnlabError(f"The state_dict holds {len(bad)} entries that are not tensors (first: '{bad[0]}').")
    ours = model.state_dict()
    theirs = list(_in_torchvision_order(state_dict, name, model).items())
    if len(theirs) != len(ours):
        raise CnnlabError(
            f"The state_dict has {len(theirs)} tensors but {name} has {len(ours)}: it is not the "
            f"state_dict of the torchvision model that {name} mirrors. Check the architecture name and "
            "that the model is built with its default options (norm, activation, width; for googlenet, "
            "aux_logits)."
        )
    classifier_keys = _classifier_keys(model)
    in_chans = _first_conv_in_channels(model)
    report = LoadReport()
    new_state = {}
    for index, ((key, mine), (their_key, value)) in enumerate(zip(ours.items(), theirs)):
        kind, their_kind = key.rsplit(".", 1)[-1], their_key.rsplit(".", 1)[-1]
        if kind != their_kind:
            raise CnnlabError(
                f"Tensor #{index} does not line up: torchvision's '{their_key}' is a {their_kind} but "
                f"{name}'s '{key}' is a {kind}. The weights are of a different architecture."
            )
        if value.shape == mine.shape:
            new_state[key] = value
            report.loaded += 1
        elif key in classifier_keys and mine.shape[1:] == value.shape[1:]:  # another class count
            new_state[key] = mine
            report.skipped.append(key)
        elif mine.ndim == 4 and mine.shape[1] == in_chans and _same_but_dim1(mine, value):
            new_state[key] = adapt_input_conv(value, in_chans)
            report.adapted.append(key)
        else:
            raise CnnlabError(
                f"Shape mismatch at tensor #{index}: torchvision's '{their_key}' is "
                f"{tuple(value.shape)} but {name}'s '{key}' is {tuple(mine.shape)}. Build the model "
                "with the same options as the weights (default width, norm and activation)."
            )
    model.load_state_dict(new_state, strict=True)
    return report


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Convert first-conv filters (O, I, k, k) to ``in_chans`` input channels.

    For 1 channel, sum over I: a gray image g fed to the summed filter gives the same response
    as the RGB image (g, g, g) fed to the original. For other counts, tile I and rescale by
    I / in_chans so the expected response keeps its size.
    """
    out_chs, src_chs, kh, kw = weight.shape
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // src_chs)  # ceil division
    tiled = weight.repeat(1, repeats, 1, 1)[:, :in_chans]
    return tiled * (src_chs / in_chans)


def _read_weights(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise CnnlabError(f"Weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # truncated or not a safetensors file
            raise CnnlabError(f"Cannot read '{path}' as a safetensors file ({str(err).splitlines()[0]}).") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt, truncated, or holds pickled code weights_only refuses
        raise CnnlabError(
            f"Cannot read '{path}' as a weights file ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Give a torchvision .pth state_dict or a .safetensors file."
        ) from None
    if not isinstance(state, Mapping):
        raise CnnlabError(f"'{path}' holds a {type(state).__name__}, not a state_dict of tensors.")
    return state


def _first_conv_in_channels(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return -1


def _classifier_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the layers that output class logits (their size follows num_classes)."""
    layers = model.classifier_modules() if hasattr(model, "classifier_modules") else []
    ids = {id(layer) for layer in layers}
    keys = set()
    for module_name, module in model.named_modules():
        if id(module) in ids:
            keys.update(f"{module_name}.{k}" for k in module.state_dict())
    return keys


def _in_torchvision_order(
    state_dict: Mapping[str, torch.Tensor], name: str, model: nn.Module
) -> Mapping[str, torch.Tensor]:
    """Put the tensors in torchvision's registration order when their names are torchvision's.

    A .safetensors file stores its tensors sorted by name; torch.save keeps the model's order.
    The order comes from torchvision's own model built on the meta device (no memory, no init).
    torchvision's GoogLeNet files hold the auxiliary heads; they are left out when ours has none.
    """
    try:
        twin = model_info(name).torchvision
    except KeyError:
        twin = None
    if twin is None:
        return state_dict
    import torchvision

    builder = getattr(torchvision.models, twin)
    kwargs = dict(aux_logits=True, init_weights=False) if twin == "googlenet" else {}
    with torch.device("meta"), skip_init_on_meta():  # only the names matter: initialising meta tensors costs seconds
        order = list(builder(**kwargs).state_dict())
    if not set(state_dict) <= set(order):
        return state_dict  # not torchvision's names: keep the order given
    if twin == "googlenet" and not getattr(model, "aux_logits", True):
        order = [key for key in order if not key.startswith("aux")]
    return {key: state_dict[key] for key in order if key in state_dict}


def _same_but_dim1(mine: torch.Tensor, value: torch.Tensor) -> bool:
    return value.ndim == 4 and mine.shape[0] == value.shape[0] and mine.shape[2:] == value.shape[2:]
