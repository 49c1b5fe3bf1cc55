"""Start a run from trained weights (``model.init_from``): read them, load what fits, rebuild the source.

``model.init_from`` names one of:

* a cnnlab run folder or one of its checkpoints (a ``.safetensors`` file ``cnnlab train`` wrote,
  with cnnlab metadata): read by the checkpoint readers, so their checks and messages apply. The
  run's architecture, preprocessing (mean/std, image size, classes) and config come with it. Its
  raw weights are read, or with ``model.init_ema`` the EMA weights a run with ``train.ema`` kept;
* a torchvision weights file: a ``.pth`` state_dict (``torch.load(weights_only=True)``, nothing is
  unpickled) or a plain ``.safetensors`` state_dict without cnnlab metadata;
* the word ``torchvision``: torchvision's default weights of the model (a zoo model's torchvision
  twin, or a ``tv:NAME`` model), taken from torchvision's own cache. Nothing is ever downloaded.

Loading (:func:`init_model_from`): a zoo model from torchvision weights maps them position by
position (:func:`cnnlab.models.torchvision_compat.load_torchvision_state_dict`); a cnnlab run, or a
``tv:`` model (whose names are torchvision's), matches by key. Either way a tensor of the same shape
loads, a classifier with another class count keeps its fresh init (skipped), a first conv with other
input channels is converted (adapted), and anything else is a CnnlabError naming the first tensor
that does not fit with both shapes: asked-for weights never silently become training from scratch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import torch
from torch import nn

from cnnlab.errors import display_class, display_name  # how messages and matches show names
from cnnlab.errors import CnnlabError
from cnnlab.models._base import first_conv, load_state
from cnnlab.models._registry import TORCHVISION_PREFIX, is_torchvision_name, model_info
from cnnlab.models.stages import classifier_names
from cnnlab.models.torchvision_compat import (
    adapt_input_conv,
    load_torchvision_state_dict,
    read_weights_file,
    torchvision_order,
    torchvision_preprocessing,
    torchvision_weights,
    torchvision_weights_file,
)
from cnnlab.run import (
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    MetaKey,
    build_model,
    checkpoint_path,
    refuse_exported_model,
)
from cnnlab.train.checkpoint import (
    CHECKPOINT_FORMAT,
    check_model_fits,
    file_format,
    load_weights,
    read_checkpoint,
    read_checkpoint_meta,
    read_model_meta,
    read_unreplaced,
)

if TYPE_CHECKING:
    from cnnlab.config import RunConfig

# InitSource.kind
RUN = "run"  # a cnnlab run folder or checkpoint
TORCHVISION = "torchvision"  # a torchvision weights file
# model.init_from's word for torchvision's own cached weights of the model
TORCHVISION_SPEC = "torchvision"
# InitSource.weights, InitReport.source_weights: which of a run's two sets of weights were read
RAW_WEIGHTS = "raw"  # the weights the optimiser trained: what a snapshot holds, and eval scores without --ema
EMA_WEIGHTS = "ema"  # the average train.ema kept beside them (model.init_ema)
# Top-level modules of torchvision's auxiliary heads: its googlenet and inception_v3 files always hold
# them (its builders drop them only after loading), so a model built without them leaves them out.
AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")

# How many names an error message lists before it says "and N more".
_NAMES_SHOWN = 5


@dataclass
class InitSource:
    """Weights a run starts from, with what they expect of the input."""

    spec: str  # what model.init_from said
    kind: str  # RUN (a cnnlab run folder/checkpoint) or TORCHVISION (a torchvision weights file)
    path: Path  # the file the weights came from
    model_name: Optional[str]  # the architecture (a run's recorded one; for torchvision files the caller's)
    state_dict: dict[str, torch.Tensor]
    mean: Optional[list[float]]  # per-channel preprocessing the weights expect (pixels/255 scale)
    std: Optional[list[float]]
    image_size: Optional[int]  # a run's input side; None for torchvision weights (the data keeps its size)
    classes: Optional[list[str]]  # output class names, when known
    in_chans: int  # input channels of the first conv
    num_classes: Optional[int]  # outputs of the classifier
    config: Optional[RunConfig] = None  # a cnnlab run's recorded config (model options)
    given_as: str = "model.init_from"  # what messages call spec: the setting or argument that named it
    weights: str = RAW_WEIGHTS  # RAW_WEIGHTS, or EMA_WEIGHTS: a run's EMA weights (model.init_ema)
    # (size in bytes, modified time in ns) of the file as it was read: what its weights are the weights of
    file_state: Optional[tuple[int, int]] = None

    @property
    def named(self) -> str:
        """"model.init_from 'runs/src'", "the source 'x.pth'": how a message mid-sentence names the weights."""
        return f"{self.given_as[:1].lower()}{self.given_as[1:]} '{display_name(self.spec)}'"

    @property
    def label(self) -> str:
        """'runs/src (resnet8)', 'torchvision (torchvision resnet18)': how messages name the source."""
        kind = self.architecture if self.kind == RUN else "torchvision " + self.architecture
        return f"{display_name(self.spec)} ({kind})"

    @property
    def architecture(self) -> str:
        """The network the weights are of: a run's model, or the torchvision builder's name."""
        return (torchvision_twin(self.model_name) if self.kind == TORCHVISION else None) or str(self.model_name)


@dataclass
class InitReport:
    """What :func:`init_model_from` did with each of the model's tensors (recorded as RUN/init.json)."""

    source: str  # model.init_from as given
    kind: str  # RUN or TORCHVISION
    path: str  # the file the weights came from
    loaded: list[str]  # the model's tensors copied from the source
    skipped: list[str]  # classifier tensors that keep their fresh init (another class count, other classes, new_head)
    adapted: list[str]  # first-conv weights converted to the model's input channels
    unused: list[str] = field(default_factory=list)  # source tensors the model has no place for (auxiliary heads)
    source_model: Optional[str] = None  # the source's architecture
    source_classes: Optional[int] = None  # the source's class count
    num_classes: Optional[int] = None  # the model's class count
    source_in_chans: Optional[int] = None  # the source's input channels
    in_chans: Optional[int] = None  # the model's input channels
    new_head: bool = False  # model.new_head: the classifier was kept fresh whatever the classes
    source_ema: bool = False  # the source run kept EMA weights (train.ema) beside its raw ones
    source_weights: str = RAW_WEIGHTS  # which of them were read: RAW_WEIGHTS, or EMA_WEIGHTS (model.init_ema)
    # the source's classes are the model's in another order (a folder sorts '10' before '2', a CSV need not): a
    # head's outputs follow the order, so it was kept fresh all the same
    reordered: bool = False

    def to_dict(self) -> dict:
        """JSON-able, with the console line under 'text'."""
        return {**asdict(self), "text": self.text()}

    def text(self) -> str:
        """One line for the console: 'loaded 60 tensors from runs/src (resnet8), kept 2 classifier tensors
        fresh (5 -> 3 classes), adapted 1 (conv1.weight: 3 -> 1 channels)'."""
        origin = self.source_model if self.kind == RUN else f"torchvision {self.source_model}"
        # The word 'torchvision' names no file: the one read from torchvision's cache is shown instead.
        where = self.path if self.source == TORCHVISION_SPEC else self.source
        if self.source_weights == EMA_WEIGHTS:
            origin += "; its EMA weights"
        elif self.source_ema:  # the weights eval and predict use unless given --ema
            origin += "; its raw weights, not the EMA weights it also kept"
        parts = [f"loaded {len(self.loaded)} tensors from {where} ({origin})"]
        if self.skipped:
            if self.new_head:
                why = "a new head: model.new_head"
            elif self.reordered:
                why = f"the same {self.num_classes} classes in another order"
            elif self.source_classes == self.num_classes:
                why = f"other classes, {self.num_classes} of them"
            else:
                why = f"{self.source_classes} -> {self.num_classes} classes"
            parts.append(f"kept {len(self.skipped)} classifier tensors fresh ({why})")
        if self.adapted:
            names = ", ".join(self.adapted)
            parts.append(f"adapted {len(self.adapted)} ({names}: {self.source_in_chans} -> {self.in_chans} channels)")
        if self.unused:
            parts.append(f"left out {len(self.unused)} auxiliary-head tensors the model does not have")
        return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# reading a source


def torchvision_twin(model_name: Optional[str]) -> Optional[str]:
    """The torchvision builder of ``model_name``: a zoo model's twin, NAME for 'tv:NAME', else None."""
    if not model_name:
        return None
    if is_torchvision_name(model_name):
        return model_name[len(TORCHVISION_PREFIX):]
    try:
        return model_info(model_name).torchvision
    except KeyError:  # an unknown name: the caller's own checks say so
        return None


# Model keys that shape the network without giving it tensors of other shapes: a source trained with other values
# loads without a misfit, and its weights then run in another network (SiLU weights under ReLU).
ARCHITECTURE_KEYS = ("act", "norm")


def architecture_notes(source: InitSource, model) -> list[str]:
    """Notes for each key of ``model`` (a ModelConfig) that builds the network otherwise than the source run
    was built (:data:`ARCHITECTURE_KEYS`); none for torchvision weights, whose network the run's own model name
    builds. Builder options and norm options are left to the tensors' fit: most of them (zero_init_residual,
    a norm's momentum) set only starting values or training behaviour, which the loaded weights replace."""
    return [f"{source.named} was trained with model.{key}={_model_value(theirs_value)}, and this run builds "
            f"{model.name} with model.{key}={_model_value(mine)}: the weights load, but run in another network "
            f"than the one they were trained in. Set model.{key}={_model_value(theirs_value)} to build that one."
            for key, theirs_value, mine in _architecture_differences(source, model)]


def architecture_remedy(source: InitSource, model) -> str:
    """For weights that do not fit ``model``: model.norm as ``source`` was trained with it, when it differs from
    this run's and the model is the source's (a norm without running statistics has no tensors where BatchNorm
    has them), as a sentence; '' otherwise. An activation has no tensors: it never makes weights fit."""
    if source.model_name != model.name:
        return ""
    differ = [difference for difference in _architecture_differences(source, model) if difference[0] == "norm"]
    if not differ:
        return ""
    keys = " and ".join(f"model.{key}={_model_value(theirs_value)}" for key, theirs_value, _ in differ)
    return f"{source.named} was trained with {keys}: set {'it' if len(differ) == 1 else 'them'} to build that network."


def _architecture_differences(source: InitSource, model) -> list[tuple[str, object, object]]:
    """(key, the source's value, this run's) of each of :data:`ARCHITECTURE_KEYS` that differs."""
    if source.config is None:
        return []
    theirs = source.config.model
    return [(key, getattr(theirs, key), getattr(model, key)) for key in ARCHITECTURE_KEYS
            if getattr(theirs, key) != getattr(model, key)]


def _model_value(value) -> str:
    """A model key's value in a note: None is the paper's choice."""
    return "null (the paper's)" if value is None else repr(value)


def read_init_source(spec: str, model_name: str, given_as: str = "model.init_from", *, ema: bool = False,
                     ema_given_as: str = "model.init_ema=true") -> InitSource:
    """Read the weights ``model.init_from`` names for a run that builds ``model_name`` (``given_as``: what
    the messages call ``spec``, e.g. probe's positional SOURCE).

    ``spec``: a run folder, a cnnlab ``.safetensors`` checkpoint, a torchvision ``.pth`` or plain
    ``.safetensors`` file, or 'torchvision' (the model's default torchvision weights, from
    torchvision's cache; never downloaded). A missing, damaged or unsafe file, a folder that is not
    a run, or weights torchvision does not have, is a CnnlabError saying what to do.

    ``ema`` (model.init_ema; ``ema_given_as``: what the messages call it): a cnnlab run's EMA weights
    instead of its raw ones. A source without them (a run without train.ema, a snapshot, torchvision
    weights) is a CnnlabError.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise CnnlabError(f"{given_as} must name the weights to start from, got {spec!r}. Give a cnnlab run "
                          "folder or checkpoint, a torchvision .pth/.safetensors file, or 'torchvision'.")
    if ema and spec == TORCHVISION_SPEC:
        raise CnnlabError(f"{ema_given_as} asks for the EMA weights of a cnnlab run trained with train.ema, but "
                          f"{given_as[:1].lower()}{given_as[1:]} is 'torchvision': torchvision's weights are one set, "
                          f"with no EMA beside them. Leave out {_setting(ema_given_as)} to start from them, or name "
                          "a cnnlab run.")
    if spec == TORCHVISION_SPEC and not model_name:  # probe and transfer with no model named
        raise CnnlabError(f"{given_as} 'torchvision' takes torchvision's weights of the model it trains, and no model "
                          "is named: name it with --model (transfer: --set model.name=...), e.g. tv:resnet18 or a zoo "
                          "model with a torchvision twin.")
    if spec == TORCHVISION_SPEC:
        tv_name = torchvision_twin(model_name)
        if tv_name is None:
            raise CnnlabError(f"{given_as} 'torchvision' takes torchvision's weights of the model, but {model_name} "
                              "is not a torchvision architecture. Pick a model torchvision also builds (`cnnlab "
                              f"models` shows each model's torchvision twin) or a {TORCHVISION_PREFIX}NAME model, or "
                              f"name a weights file or a cnnlab run as {given_as[:1].lower()}{given_as[1:]}.")
        path = torchvision_weights_file(tv_name, given_as=given_as)
        return replace(_torchvision_source(spec, path, read_weights_file(path), model_name), given_as=given_as)

    path = Path(spec).expanduser()
    if not path.exists():
        what = "is a broken link" if path.is_symlink() else "does not exist"
        raise CnnlabError(f"{given_as} '{display_name(spec)}' {what}. Name a cnnlab run folder (what `cnnlab train "
                          "--out` wrote) or one of its checkpoints, a torchvision .pth or .safetensors weights file, or "
                          "'torchvision' for torchvision's cached weights of the model; check the path.")
    try:
        if path.is_dir():
            source = _run_source(spec, checkpoint_path(path), ema, ema_given_as)
        elif not path.is_file():  # never opened: reading a pipe would wait forever
            raise CnnlabError(f"'{display_name(str(path))}' is not a regular file (a pipe, socket or device).")
        elif _is_safetensors(path):
            _check_safetensors_header(path)  # a damaged file may be any tool's, not only a run's checkpoint
            if read_checkpoint_meta(path):  # cnnlab metadata: a run's checkpoint or snapshot
                source = _run_source(spec, path, ema, ema_given_as)
            else:
                state, _ = load_weights(path)  # a plain state_dict from another tool (checksum checked if it has one)
                source = _torchvision_source(spec, path, state, model_name)
        else:
            refuse_exported_model(path)  # a run's best.pt / best.onnx would be called a damaged weights file
            source = _torchvision_source(spec, path, read_weights_file(path), model_name)
    except CnnlabError as err:
        raise CnnlabError(f"{given_as} '{display_name(spec)}' cannot be used: {err}") from None
    if ema and source.kind != RUN:
        raise CnnlabError(f"{ema_given_as} asks for the EMA weights of a cnnlab run trained with train.ema, but "
                          f"{given_as[:1].lower()}{given_as[1:]} '{display_name(spec)}' is a weights file of another "
                          f"tool: one set of weights, with no EMA beside them. Leave out {_setting(ema_given_as)} to "
                          "start from them, or name a cnnlab run.")
    return replace(source, given_as=given_as)


def _setting(given_as: str) -> str:
    """'model.init_ema' for 'model.init_ema=true': the setting itself, as a remedy names it."""
    return given_as.partition("=")[0]


def _check_safetensors_header(path: Path) -> None:
    """Refuse a .safetensors file whose header cannot be read, in words for a weights file of any tool."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.metadata()
    except Exception as err:  # safetensors raises its own error types for a bad header
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CnnlabError(f"'{display_name(str(path))}' is damaged or not a safetensors file ({reason}): it may have "
                          "been cut short by a full disk or a copy that did not finish. Copy it again from where it "
                          "came from (a run's checkpoint: from the run folder, or an earlier copy).") from None


def _is_safetensors(path: Path) -> bool:
    """Named .safetensors, or starts like one: its JSON header's length (u64, little-endian), then '{'."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        start = handle.read(9)
    header_length = int.from_bytes(start[:8], "little") if len(start) == 9 else -1
    return start[8:9] == b"{" and 0 < header_length <= path.stat().st_size - 8


def _run_source(spec: str, path: Path, ema: bool = False, ema_given_as: str = "model.init_ema=true") -> InitSource:
    """A cnnlab checkpoint: its raw weights, or with ``ema`` its EMA weights, with the run's metadata and config.

    The raw weights are what ``cnnlab eval`` and ``predict`` score unless given ``--ema``, and all a
    snapshot holds; the EMA weights (the average a run with train.ema keeps in its best and last
    checkpoints) are read only when asked for (the init note says which were read).

    The metadata and the weights are two reads of a file that a run still training may replace between them:
    they are read again until both are of one state of it (:func:`~cnnlab.train.checkpoint.read_unreplaced`),
    the state the source's ``file_state`` (which keys `cnnlab probe`'s feature cache) records."""

    def read() -> tuple[dict, RunConfig, dict[str, torch.Tensor]]:
        meta, config = read_model_meta(path)
        state = _ema_weights(path, ema_given_as, config) if ema else load_weights(path)[0]
        return meta, config, state

    (meta, config, state), (_, size, mtime_ns) = read_unreplaced(path, read, _file_state)
    return InitSource(spec=spec, kind=RUN, path=path, model_name=meta[MetaKey.MODEL], state_dict=state,
                      mean=list(meta[MetaKey.MEAN]), std=list(meta[MetaKey.STD]),
                      image_size=int(meta[MetaKey.IMAGE_SIZE]), classes=list(meta[MetaKey.CLASSES]),
                      in_chans=int(meta[MetaKey.IN_CHANS]), num_classes=int(meta[MetaKey.NUM_CLASSES]), config=config,
                      weights=EMA_WEIGHTS if ema else RAW_WEIGHTS, file_state=(size, mtime_ns))


def _file_state(path: Path) -> tuple[int, int, int]:
    """(inode, size, modified time in ns) of ``path``: a rename over it, or a write, changes it."""
    status = path.stat()
    return status.st_ino, status.st_size, status.st_mtime_ns


def _ema_weights(path: Path, ema_given_as: str, config: RunConfig) -> dict[str, torch.Tensor]:
    """The EMA weights of the checkpoint at ``path`` (its EMA state's ``module``), or a CnnlabError saying why it
    has none: a snapshot holds the raw weights alone, and a run without train.ema keeps no average."""
    remedy = f"Leave out {_setting(ema_given_as)} to start from its raw weights"
    if file_format(path) != CHECKPOINT_FORMAT:
        raise CnnlabError(f"{ema_given_as} asks for its EMA weights, but '{display_name(str(path))}' is a snapshot, "
                          f"which holds the raw weights only. {remedy}, or name the run folder (its "
                          f"{CHECKPOINT_BEST} or {CHECKPOINT_LAST} keeps the EMA of a run trained with "
                          "train.ema=true).")
    checkpoint = read_checkpoint(path)
    if checkpoint.ema is None:
        why = ("the run was trained with train.ema=false, so it kept none" if not config.train.ema
               else "the checkpoint holds none")
        raise CnnlabError(f"{ema_given_as} asks for its EMA weights, but {why}. {remedy}, or train the source with "
                          "train.ema=true.")
    state = checkpoint.ema.get("module") if isinstance(checkpoint.ema, dict) else None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CnnlabError(f"The EMA state in '{display_name(str(path))}' holds no model weights ('module'): the file "
                          f"was edited or written by another program. {remedy}.")
    return dict(state)


def _torchvision_source(spec: str, path: Path, state: Mapping[str, torch.Tensor], model_name: str) -> InitSource:
    """A torchvision state_dict for ``model_name``: ImageNet preprocessing (0.5/0.5 for GoogLeNet and
    Inception v3), the data's own image size, class count and input channels read from the tensors.

    A file whose first conv takes other than the preset's channels (a 1-channel network saved by another
    tool) records no mean/std: torchvision's weights all take RGB, so ImageNet's values would be a guess,
    and the run normalises with its training split's statistics unless data.normalize says otherwise."""
    tv_name = torchvision_twin(model_name)
    # In registration order (a .safetensors file sorts its keys): the first conv first, the classifier last.
    state = dict(torchvision_order(tv_name, state)) if tv_name else dict(state)
    if not state:
        raise CnnlabError(f"'{display_name(str(path))}' holds no tensors.")
    convs = [value for value in state.values() if value.ndim == 4]
    weights = [value for key, value in state.items() if key.endswith("weight") and value.ndim >= 2]
    if not convs:
        raise CnnlabError(f"'{display_name(str(path))}' holds no conv filters (4-D tensors), so it is not the weights "
                          "of an image classifier. Name the weights of a CNN.")
    in_chans = int(convs[0].shape[1])  # (O, I, kh, kw) of the first conv
    num_classes = int(weights[-1].shape[0])  # (K, F) or (K, F, 1, 1) of the last layer: the classifier
    mean, std = torchvision_preprocessing(tv_name)
    if in_chans != len(mean):
        mean, std = None, None
    classes = None
    if tv_name:
        categories = torchvision_weights(tv_name).meta.get("categories")
        classes = list(categories) if categories and len(categories) == num_classes else None
    return InitSource(spec=spec, kind=TORCHVISION, path=path, model_name=model_name, state_dict=state, mean=mean,
                      std=std, image_size=None, classes=classes, in_chans=in_chans, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------
# loading into a model


def init_model_from(model: nn.Module, source: InitSource, model_name: str, *,
                    classes: Optional[Sequence[str]] = None, new_head: bool = False) -> InitReport:
    """Load ``source``'s matching tensors into ``model`` (built as ``model_name``) and say what was done.

    A tensor of the same shape loads; the classifier keeps its fresh init when the class count
    differs, or, with ``classes`` (the run's class names), when a cnnlab run's classes differ, or
    always with ``new_head`` (model.new_head); a first conv with other input channels is adapted
    (:func:`adapt_input_conv`). Missing, extra or differently shaped tensors, or a cnnlab run of
    another architecture, raise a CnnlabError naming the first tensor that does not fit. Nothing
    changes in the model unless everything fits.
    """
    own = model.state_dict()
    found = first_conv(model)
    in_chans = found[1].in_channels if found else None
    report = InitReport(source=source.spec, kind=source.kind, path=str(source.path), loaded=[], skipped=[],
                        adapted=[], source_model=source.architecture, source_classes=source.num_classes,
                        num_classes=_num_classes(model), source_in_chans=source.in_chans, in_chans=in_chans,
                        new_head=new_head, source_ema=source.config is not None and source.config.train.ema,
                        source_weights=source.weights)
    if source.kind == TORCHVISION and not is_torchvision_name(model_name) and torchvision_twin(model_name):
        # A zoo model with a torchvision twin: torchvision's names are not ours, the order is the same.
        fresh_head = {key: own[key].clone() for key in _classifier_keys(model)} if new_head else {}
        try:
            loaded = load_torchvision_state_dict(model, source.state_dict)
        except CnnlabError as err:
            raise CnnlabError(f"The weights of {source.named} do not fit {model_name}: "
                              f"{err}") from None
        if fresh_head:  # the classifier as it was built, over what a same-sized torchvision head loaded
            load_state(model, {**model.state_dict(), **fresh_head})
        skipped = list(loaded.skipped) + [key for key in own if key in fresh_head and key not in loaded.skipped]
        report.skipped, report.adapted, report.unused = skipped, list(loaded.adapted), list(loaded.unused)
        report.loaded = [key for key in own if key not in set(skipped) | set(loaded.adapted)]
        return report

    theirs = source.state_dict
    classifier = _classifier_keys(model)
    found = first_conv(model)
    first_conv_key = f"{found[0]}.weight" if found else None
    # compared as shown (display_class): a source of an older cnnlab kept accents as its class folders spelt them
    names = [display_class(str(name)) for name in classes] if classes is not None else None
    theirs_named = [display_class(str(name)) for name in source.classes] if source.classes is not None else None
    other_classes = source.kind == RUN and names is not None and theirs_named is not None and names != theirs_named
    report.reordered = other_classes and sorted(names) == sorted(theirs_named)
    new_state: dict[str, torch.Tensor] = {}
    misfits = []  # the model's tensors with no fitting counterpart, in the model's order
    for key, mine in own.items():
        value = theirs.get(key)
        if value is None:
            misfits.append(key)
        elif key in classifier and value.shape[1:] == mine.shape[1:] and (
                value.shape[0] != mine.shape[0] or other_classes or new_head):
            new_state[key] = mine  # (K, F) or (K,): the new head keeps its own init
            report.skipped.append(key)
        elif value.shape == mine.shape:
            new_state[key] = value
            report.loaded.append(key)
        elif key == first_conv_key and _other_input_channels(mine, value):
            new_state[key] = adapt_input_conv(value, mine.shape[1])  # (O, I, k, k) -> (O, in_chans, k, k)
            report.adapted.append(key)
        else:
            misfits.append(key)
    extra = [key for key in theirs if key not in own]
    if source.kind == TORCHVISION:
        report.unused = [key for key in extra if key.startswith(AUX_HEAD_PREFIXES)]
        extra = [key for key in extra if key not in report.unused]
    if misfits or extra or (source.kind == RUN and source.model_name != model_name):
        raise CnnlabError(_misfit_message(source, model_name, own, misfits, extra))
    load_state(model, new_state)
    return report


def _misfit_message(source: InitSource, model_name: str, own: Mapping[str, torch.Tensor], misfits: list[str],
                    extra: list[str]) -> str:
    theirs = source.state_dict
    if misfits:
        key = misfits[0]
        if key in theirs:
            first = (f"the first tensor that does not fit is '{key}', shape {tuple(own[key].shape)} in {model_name} "
                     f"but {tuple(theirs[key].shape)} in the source")
        else:
            first = f"the first tensor that does not fit is '{key}' {tuple(own[key].shape)}, which the source lacks"
    elif extra:
        key = extra[0]
        first = (f"the first tensor that does not fit is the source's '{key}' {tuple(theirs[key].shape)}, which "
                 f"{model_name} does not have")
    else:
        first = "every tensor lines up by name and shape"
    missing = [key for key in misfits if key not in theirs]
    reshaped = [key for key in misfits if key in theirs]
    counts = []
    if missing:
        counts.append(f"{len(missing)} missing from the source ({_names(missing)})")
    if reshaped:
        counts.append(f"{len(reshaped)} with another shape ({_names(reshaped)})")
    if extra:
        counts.append(f"{len(extra)} the model does not have ({_names(extra)})")
    detail = f" Of the tensors, {'; '.join(counts)}." if counts else ""
    if source.kind == RUN and source.model_name != model_name:
        return (f"{source.given_as} '{display_name(source.spec)}' is a {source.model_name} run, but this run builds "
                f"{model_name}: {first}.{detail} Set model.name to {source.model_name} to start from it (with the same "
                "model options), or name a run of the architecture you train.")
    return (f"The weights of {source.named} do not fit {model_name}: {first}.{detail} Only a "
            "classifier with another class count and a first conv with other input channels may differ; set model.name "
            f"(now {model_name}) to the architecture the weights were trained as, with the options they were trained "
            "with, or name weights of this architecture.")


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_NAMES_SHOWN])
    return shown + (f" and {len(keys) - _NAMES_SHOWN} more" if len(keys) > _NAMES_SHOWN else "")


def _classifier_keys(model: nn.Module) -> set[str]:
    """state_dict keys of the classifier layers (their size follows num_classes)."""
    keys = set()
    modules = dict(model.named_modules())
    for name in classifier_names(model):
        keys.update(f"{name}.{key}" if name else key for key in modules[name].state_dict())
    return keys


def _other_input_channels(mine: torch.Tensor, value: torch.Tensor) -> bool:
    """Conv filters (O, I, kh, kw) that differ only in I."""
    return mine.ndim == value.ndim == 4 and mine.shape[0] == value.shape[0] and mine.shape[2:] == value.shape[2:]


def _num_classes(model: nn.Module) -> Optional[int]:
    count = getattr(model, "num_classes", None)
    if isinstance(count, int):
        return count
    names = classifier_names(model)
    if names:
        weight = getattr(dict(model.named_modules())[names[0]], "weight", None)
        return int(weight.shape[0]) if weight is not None else None
    return None


# ---------------------------------------------------------------------------------------------
# the source network itself


def build_source_model(source: InitSource, device="cpu") -> nn.Module:
    """The source network as trained, every weight loaded, in eval mode on ``device``.

    A run's model is built as :func:`cnnlab.train.checkpoint.load_run_model` builds it (its recorded
    config and metadata through :func:`cnnlab.run.build_model`, raw weights); torchvision weights
    give ``create_model(model_name)`` with the file's class count and input channels.
    """
    if source.kind == RUN:
        described = f"a {source.model_name} with {source.num_classes} classes, as its metadata says"
        try:
            model = build_model(source.config.model, num_classes=source.num_classes, in_chans=source.in_chans,
                                name=source.model_name)
        except (CnnlabError, TypeError, ValueError) as err:
            raise CnnlabError(f"Cannot build the model the checkpoint '{source.path}' records ({described}): {err} "
                              "Use a checkpoint written by `cnnlab train`.") from None
        check_model_fits(source.path, model, source.state_dict, what=described)
        load_state(model, source.state_dict)
    else:
        from cnnlab.models import create_model

        model = create_model(source.model_name, num_classes=source.num_classes, in_chans=source.in_chans)
        report = init_model_from(model, source, source.model_name)
        if report.skipped or report.adapted:  # built with the file's classes and channels: nothing may differ
            raise CnnlabError(f"'{source.path}' does not fit {source.model_name} built with its {source.num_classes} "
                              f"classes and {source.in_chans} input channels ({report.text()}). Name the weights of "
                              "this architecture.")
    return model.to(device).eval()
