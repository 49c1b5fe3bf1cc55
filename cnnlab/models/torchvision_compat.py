"""Load torchvision weights into cnnlab models.

Every cnnlab model that torchvision also builds registers its layers in the same order with the
same tensor shapes (the tests prove it for each one), so a torchvision state_dict maps onto ours
position by position. Each pair is checked: equal shapes and the same tensor kind (weight, bias,
running_mean, ...). Two differences are handled on purpose and reported:

* a classifier with another class count (transfer learning): ours keeps its fresh init;
* a first conv with other input channels (grayscale): the RGB filters are summed over
  channels for 1 channel, or repeated and rescaled for other counts (as timm does), so the
  response to a gray image equals the RGB network's response to the same image in colour.

It also finds torchvision's own weights on disk (:func:`torchvision_weights_file`: torchvision's
cache, never a download) and says what preprocessing they expect (:func:`torchvision_preprocessing`).
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

from cnnlab.errors import CnnlabError, display_name
from cnnlab.models._base import first_conv, load_state, not_a_module_error
from cnnlab.models._meta import meta_build
from cnnlab.models._registry import model_info


# How a cnnlab checkpoint names its network's tensors ('model/features.stem.conv.weight'): cnnlab.train.checkpoint
# writes and reads them by it. Kept here, below training, so that a checkpoint given as torchvision's weights is
# told apart.
CHECKPOINT_MODEL_PREFIX = "model/"


@dataclass
class LoadReport:
    """What :func:`load_torchvision_state_dict` did with each tensor."""

    loaded: int = 0  # tensors copied as they are
    skipped: list[str] = field(default_factory=list)  # classifier tensors kept fresh (class count differs)
    adapted: list[str] = field(default_factory=list)  # first-conv weights converted to in_chans
    unused: list[str] = field(default_factory=list)  # the file's auxiliary-head tensors a model without them leaves out


def load_torchvision_state_dict(
    model: nn.Module, state_dict: Union[Mapping[str, torch.Tensor], str, os.PathLike]
) -> LoadReport:
    """Copy a torchvision state_dict (or a local .pth / .safetensors file of one) into ``model``.

    Files are read without unpickling code (``torch.load(weights_only=True)`` or safetensors).
    Raises :class:`CnnlabError` naming the first tensor that does not fit.
    """
    if not isinstance(model, nn.Module):
        raise not_a_module_error("load_torchvision_state_dict", model)
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = read_weights_file(state_dict)
    if not isinstance(state_dict, Mapping):
        raise CnnlabError(f"load_torchvision_state_dict takes a state_dict (a mapping of names to tensors) or the path "
                          f"of a .pth or .safetensors file of one, got {type(state_dict).__name__}.")
    name = getattr(model, "model_name", type(model).__name__)
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CnnlabError(f"The state_dict holds {len(bad)} entries that are not tensors (first: '{bad[0]}').")
    ours = model.state_dict()
    # torch copies into a meta tensor as a no-op (a warning each), and out of one not at all: refused, not reported
    # as loaded
    if any(tensor.is_meta for tensor in ours.values()):
        raise CnnlabError(f"{name} is built on the meta device (shapes only, no storage), so there is nothing to copy "
                          "the weights into. Build it with cnnlab.create_model(NAME, ...), which gives it memory, then "
                          "load them.")
    if any(tensor.is_meta for tensor in state_dict.values()):
        raise CnnlabError("The state_dict's tensors are on the meta device (shapes only, no values): there are no "
                          "weights to copy. Load the state_dict of a model built with its weights, or its file.")
    if any(key.startswith(CHECKPOINT_MODEL_PREFIX) for key in state_dict):
        raise CnnlabError(f"The state_dict is a cnnlab run's checkpoint (its tensors are named "
                          f"'{CHECKPOINT_MODEL_PREFIX}...'), not torchvision's weights. Start a run from it with "
                          "model.init_from=RUN (cnnlab train --set model.init_from=RUN), or evaluate it with "
                          "`cnnlab eval RUN`.")
    read, ordered = _in_torchvision_order(state_dict, name, model)
    _refuse_unknown_names(state_dict, read, name)
    theirs = list(ordered.items())
    classifier_keys = _classifier_keys(model)
    found = first_conv(model)
    in_chans = found[1].in_channels if found else -1
    if len(theirs) != len(ours):
        first = _first_misfit(ours, theirs, name, classifier_keys, in_chans)
        of = (f"the torchvision model that {name} mirrors" if _twin(name) else
              f"a model laid out as {name} ({name} mirrors no torchvision model)")
        raise CnnlabError(
            f"The state_dict has {len(theirs)} tensors but {name} has {len(ours)}: it is not the "
            f"state_dict of {of} ({first}). "
            "Check the architecture name and that the model is built with its default options (norm, "
            "activation, width; for googlenet, aux_logits)."
        )
    # the file's tensors left out (GoogLeNet's aux heads), by the names they were read under (a prefix dropped)
    report = LoadReport(unused=[key for key in read if key not in ordered])
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
    load_state(model, new_state)
    return report


def _refuse_unknown_names(state_dict: Mapping[str, torch.Tensor], read: Mapping[str, torch.Tensor],
                          name: str) -> None:
    """A CnnlabError naming the tensors that are not torchvision's, for a state_dict most of whose names are
    those of the torchvision model ``name`` mirrors but not in that model's order (a .safetensors file stores
    its tensors sorted): it cannot be put in that order, and paired by position the first tensor was blamed as of
    "a different architecture". A state_dict whose known names come in the model's order (torch.save keeps it) is
    paired by position as given: a fine-tuned head ('fc.1.weight') lines up, and another model's weights are
    named by their first misfit. ``read``: :func:`torchvision_order`'s result, ``state_dict`` itself when its
    names are not all torchvision's."""
    twin = _twin(name)
    order = torchvision_names(twin) if twin else None
    names = set(order or ())
    unknown = [key for key in state_dict if key not in names]
    if read is not state_dict or not unknown or len(unknown) * 2 > len(state_dict):
        return  # in torchvision's order already, or names of another kind altogether
    if [key for key in state_dict if key in names] == [key for key in order if key in state_dict]:
        return  # the known names in the model's order: the file's own order pairs by position
    shown = ", ".join(f"'{display_name(key)}'" for key in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
    raise CnnlabError(f"The state_dict holds {len(unknown)} of {len(state_dict)} tensors whose names are not "
                      f"torchvision's {twin}'s ({shown}), which {name} mirrors, and its tensors are not in that model's "
                      "order (a .safetensors file sorts them), so they cannot be paired with it. If they are another "
                      "model's weights, build that model; if they are a changed head or extra tensors, remove them, "
                      "or save the state_dict with torch.save in its model's order (read by position).")


def _first_misfit(ours: Mapping[str, torch.Tensor], theirs: list, name: str, classifier_keys: set[str],
                  in_chans: int) -> str:
    """'the first tensor that does not fit is ...' for two state dicts of different lengths paired by
    position: the first pair of another kind or shape (beyond what loading adapts), else the first extra."""
    for index, ((key, mine), (their_key, value)) in enumerate(zip(ours.items(), theirs)):
        fits = key.rsplit(".", 1)[-1] == their_key.rsplit(".", 1)[-1] and (
            value.shape == mine.shape
            or (key in classifier_keys and mine.shape[1:] == value.shape[1:])
            or (mine.ndim == 4 and mine.shape[1] == in_chans and _same_but_dim1(mine, value)))
        if not fits:
            return (f"the first tensor that does not fit is #{index}: torchvision's '{their_key}' "
                    f"{tuple(value.shape)} against {name}'s '{key}' {tuple(mine.shape)}")
    if len(theirs) > len(ours):
        their_key, value = theirs[len(ours)]
        return (f"the first tensor that does not fit is torchvision's '{their_key}' {tuple(value.shape)}, beyond "
                f"{name}'s last")
    key = list(ours)[len(theirs)]
    return (f"the first tensor that does not fit is {name}'s '{key}' {tuple(ours[key].shape)}, beyond the "
            "state_dict's last")


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


def read_weights_file(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """A state_dict of tensors from a torchvision ``.pth`` (``torch.load(weights_only=True)``) or a
    plain ``.safetensors`` file; a CnnlabError saying what is wrong and what to do otherwise."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CnnlabError(f"The weights file '{display_name(str(path))}' {what}. Name a torchvision .pth state_dict or a "
                          ".safetensors file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # truncated or not a safetensors file
            raise CnnlabError(f"Cannot read '{display_name(str(path))}' as a safetensors file ({str(err).splitlines()[0]}): it is "
                              "damaged or cut short. Copy it again from its source.") from None
    else:
        try:
            with warnings.catch_warnings():
                # torch warns about a pickle protocol it did not write (a pickle.dump file) before refusing it:
                # the refusal below says what is wrong, the warning would only add lines about torch's internals
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, truncated, or holds pickled objects weights_only refuses
            raise CnnlabError(
                f"Cannot read '{display_name(str(path))}' as a weights file: {_load_failure(err)}. Give a torchvision .pth that holds "
                "only a state_dict of tensors, or a .safetensors file; if you trust a file that holds a whole model, "
                "load it yourself and save its state_dict() on its own."
            ) from None
    if not isinstance(state, Mapping):
        raise CnnlabError(f"'{display_name(str(path))}' holds a {type(state).__name__}, not a state_dict of tensors. Save the model's "
                          "state_dict() (torch.save(model.state_dict(), path)) and give that file.")
    bad = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CnnlabError(f"'{display_name(str(path))}' holds {len(bad)} entries that are not tensors "
                          f"(first: '{bad[0]}'), so it is not a state_dict (a training checkpoint with optimiser state?). "
                          "Save the model's state_dict() on its own and give that file.")
    return dict(state)



def _load_failure(err: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in a clause (torch's own text is a page long)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours part of its message
    # torch names a refused global in two ways: one it does not allow (a class of a pickled model), and one
    # whose module it blocks outright (os.system, the code a malicious file would run)
    refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)|unsupported GLOBAL ([\w.]+) whose module", text)
    if refused:
        return (f"it holds a pickled {refused.group(1) or refused.group(2)}, a Python object rather than tensors, "
                "and objects are never unpickled here because unpickling runs whatever code the file names")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = detail.group(1) if detail else (text.strip().splitlines() or [type(err).__name__])[0]
    return f"it is damaged or not a PyTorch weights file ({type(err).__name__}: {_first_sentence(reason)})"


def _first_sentence(text: str, limit: int = 160) -> str:
    """torch's reason up to its first full stop, and within ``limit`` characters cut at a word ("..." marks it)."""
    text = text.strip()
    end = text.find(". ")
    if end != -1:
        text = text[:end]
    if len(text) <= limit:
        return text.rstrip(".")
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def _classifier_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the layers that output class logits (their size follows num_classes)."""
    layers = model.classifier_modules() if hasattr(model, "classifier_modules") else []
    ids = {id(layer) for layer in layers}
    keys = set()
    for module_name, module in model.named_modules():
        if id(module) in ids:
            keys.update(f"{module_name}.{k}" for k in module.state_dict())
    return keys


def _twin(name: str) -> Optional[str]:
    """The torchvision model the cnnlab model ``name`` mirrors, or None."""
    try:
        return model_info(name).torchvision
    except KeyError:
        return None


def _in_torchvision_order(
    state_dict: Mapping[str, torch.Tensor], name: str, model: nn.Module
) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
    """(the tensors as :func:`torchvision_order` reads them, those ``model`` takes): in torchvision's registration
    order when their names are torchvision's.

    torchvision's GoogLeNet and Inception v3 files hold the auxiliary heads (:data:`AUXILIARY_PREFIXES`); they
    are left out when ours has none.
    """
    twin = _twin(name)
    if twin is None:
        return state_dict, state_dict
    read = ordered = torchvision_order(twin, state_dict)
    if twin in AUXILIARY_PREFIXES and not getattr(model, "aux_logits", True):
        # in torchvision's order or in the file's own (a fine-tuned head's other names), the aux heads go
        ordered = {key: value for key, value in read.items() if not key.startswith(AUXILIARY_PREFIXES[twin])}
    return read, ordered


# The names of the auxiliary heads' tensors in torchvision's GoogLeNet and Inception v3 (and their files)
AUXILIARY_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


@functools.lru_cache(maxsize=None)
def torchvision_names(tv_name: str) -> Optional[tuple[str, ...]]:
    """The state_dict names of torchvision's ``tv_name`` in registration order (with GoogLeNet's and Inception's
    auxiliary heads), from the model built on the meta device (no memory, no init); None for a name torchvision
    does not build."""
    import torchvision

    kwargs = dict(aux_logits=True, init_weights=False) if tv_name in TRANSFORM_INPUT_MODELS else {}
    try:
        # Only the names matter: initialising meta tensors costs seconds. meta_build, not torch.device("meta"):
        # RegNet's builder reads values of tensors it computes, which a meta tensor does not have.
        with meta_build():
            return tuple(torchvision.models.get_model(tv_name, **kwargs).state_dict())
    except ValueError:  # not a torchvision model name
        return None


# torchvision's DenseNet weight files (2017) name a dense layer's parts 'norm.1', 'conv.2'...: torchvision's own
# densenet._load_state_dict renames them to 'norm1', 'conv2' with this pattern before loading
DENSENET_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def torchvision_order(tv_name: str, state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """``state_dict`` in the registration order of torchvision's ``tv_name`` when its names are that model's.

    A .safetensors file stores its tensors sorted by name; torch.save keeps the model's order. The names are
    first read as torch and torchvision read them when they load such a file: a prefix on every name (a
    DataParallel's 'module.') is dropped, DenseNet's older names are renamed (:data:`DENSENET_LEGACY_KEY`),
    and a BatchNorm saved before torch 0.4.1, without ``num_batches_tracked``, gets it at 0 (as BatchNorm's own
    loading sets it). A state dict with other names is returned as given.
    """
    order = torchvision_names(tv_name)
    if order is None:
        return state_dict
    names = set(order)
    state = dict(state_dict)
    heads = {key.split(".", 1)[0] for key in state}
    if len(heads) == 1 and not names & set(state) and all("." in key for key in state):
        # one prefix on every name and none of torchvision's: DataParallel's 'module.', or a wrapper's attribute
        state = {key.split(".", 1)[1]: value for key, value in state.items()}
    if tv_name.startswith("densenet"):
        state = {DENSENET_LEGACY_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    for key in order:
        stem = key[:-len("num_batches_tracked")]
        if key.endswith(".num_batches_tracked") and key not in state and stem + "running_mean" in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    if not set(state) <= names:
        return state_dict  # not torchvision's names: keep the order given
    return {key: state[key] for key in order if key in state}


# torchvision models whose pretrained weights expect ``transform_input``: their builders re-normalise
# ImageNet-normalised input to (x - 0.5) / 0.5 per channel before the first conv (the weights come from
# TensorFlow ports). A model without that step must be fed images normalised that way itself.
TRANSFORM_INPUT_MODELS = ("googlenet", "inception_v3")
TRANSFORM_INPUT_MEAN = TRANSFORM_INPUT_STD = 0.5


def torchvision_weights(tv_name: str, weights: Optional[str] = None):
    """torchvision's weights entry (``ResNet18_Weights.IMAGENET1K_V1``...) for the model ``tv_name``:
    ``weights`` names one ('IMAGENET1K_V2' or 'ResNet50_Weights.IMAGENET1K_V2'), None its DEFAULT."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(tv_name)
    except (ValueError, KeyError):
        raise CnnlabError(f"torchvision has no model '{tv_name}', so it has no weights for it. `cnnlab models "
                          "--torchvision` lists the torchvision classifiers.") from None
    if weights is None:
        return enum.DEFAULT
    member = weights.rpartition(".")[2]
    if member not in enum.__members__:
        raise CnnlabError(f"torchvision's {tv_name} has no weights '{weights}'; it has "
                          f"{', '.join(enum.__members__)}.")
    return enum[member]


def torchvision_weights_file(tv_name: str, weights: Optional[str] = None, given_as: str = "model.init_from") -> Path:
    """Where torchvision keeps its weights of ``tv_name`` once downloaded (torch.hub's cache,
    ``torch.hub.get_dir()/checkpoints/<file name from the URL>``), checked to be there.

    This never downloads: a missing file is a CnnlabError naming the path and the URL to fetch it from, and
    ``given_as`` (the setting or argument that asked for 'torchvision') as where a file's path may go instead.
    """
    entry = torchvision_weights(tv_name, weights)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(entry.url).path)
    if not path.is_file():
        raise CnnlabError(
            f"torchvision's weights for {tv_name} ({type(entry).__name__}.{entry.name}) are not on this machine: "
            f"expected '{display_name(str(path))}', which torchvision would fetch from {entry.url}. cnnlab never downloads; "
            "download the file elsewhere and put it at that path, or give the file's path as "
            f"{given_as[:1].lower()}{given_as[1:]} instead."
        )
    return path


def torchvision_preprocessing(tv_name: Optional[str], weights: Optional[str] = None) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std), 0..1 scale, that torchvision's weights of ``tv_name`` expect.

    Read from the weights' own transforms (ImageNet statistics for the classifiers); GoogLeNet and
    Inception v3 expect ``transform_input``'s 0.5 / 0.5 instead (see :data:`TRANSFORM_INPUT_MODELS`).
    ``tv_name`` None (a model without a torchvision twin) takes ResNet-50's preset, torchvision's
    ImageNet statistics.
    """
    if tv_name in TRANSFORM_INPUT_MODELS:
        channels = len(torchvision_weights(tv_name, weights).transforms().mean)
        return [TRANSFORM_INPUT_MEAN] * channels, [TRANSFORM_INPUT_STD] * channels
    preset = torchvision_weights(tv_name or "resnet50", weights if tv_name else None).transforms()
    return [float(v) for v in preset.mean], [float(v) for v in preset.std]


def _same_but_dim1(mine: torch.Tensor, value: torch.Tensor) -> bool:
    return value.ndim == 4 and mine.shape[0] == value.shape[0] and mine.shape[2:] == value.shape[2:]
