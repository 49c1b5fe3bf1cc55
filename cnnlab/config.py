"""Run configuration as dataclasses, one per concern, each field with its unit and reason.

Fields left ``None`` are filled later from context: the augmentation preset fills the augmentation
fields, the data source fills the image size. A training run expands the preset once
(:func:`cnnlab.data.transforms.resolve_aug`) and records the resolved values in its config.yaml and
checkpoints, so eval reads what was used instead of deriving it again; a resolved config resolves to
itself, so ``cnnlab train --config RUN/config.yaml`` repeats the run.

Removed keys (:data:`RENAMED_KEYS`) are still read, as the key that replaced them, with a notice.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import io
import itertools
import math
import numbers
import os
import re
import sys
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Optional

import yaml

from cnnlab.devices import device_name_problem
from cnnlab.errors import CnnlabError, counted, display_name
from cnnlab.limits import MAX_BATCH, MAX_LR, MAX_MINUTES, MAX_SEED, MAX_STEPS, MAX_WEIGHT_DECAY


@dataclass
class DataConfig:
    """Where the images come from and how they are split."""

    spec: str = "digits"  # digits | fashion-mnist | cifar10 | cifar100[:coarse] | folder:PATH | csv:FILE | synthetic
    data_dir: Optional[str] = None  # folder holding fashion-mnist's idx files or a CIFAR archive (else the search path)
    # Written by a run (record_paths): spec and data_dir as typed, where a relative path was made absolute
    # (the absolute one is what every later reader of the run opens); None where nothing was relative.
    spec_typed: Optional[str] = None
    data_dir_typed: Optional[str] = None
    image_size: Optional[int] = None  # pixels, side of the square the model sees; None: the source's own
    channels: Optional[int] = None  # 1 or 3 to convert the data; None: the source's own
    val_fraction: float = 0.1  # share of the training images held out when the source has no val split
    seed: int = 0  # seeds every split, so the same spec always gives the same images per split
    # Hold a folder's or CSV's decoded uint8 images in one tensor: None when they fit memory_limit_mb, true
    # always (refused, before decoding, when they would not fit), false never (files are read per batch)
    in_memory: Optional[bool] = None
    memory_limit_mb: int = 2048  # MiB the in-memory tensor may take before files are read per batch
    buckets: Optional[str] = None  # aspect-ratio buckets for varied shapes, "4:3,1:1,3:4" (width:height)
    # Subsets for transfer learning: which classes, and how many training images of each.
    classes: Optional[list] = None  # keep these classes (names or 0-based indices), relabelled 0..K-1 in the data's order
    train_per_class: Optional[int] = None  # seeded class-balanced subset of the training split; val and test stay whole
    # Input normalisation: preprocessing follows the weights a run starts from.
    normalize: Optional[str] = None  # dataset | source | imagenet | none; None: source with model.init_from, else dataset
    mean: Optional[list[float]] = None  # explicit per-channel mean (0..1 scale), overrides normalize (give std too)
    std: Optional[list[float]] = None  # explicit per-channel std (0..1 scale), overrides normalize (give mean too)


RESNET_CROP = 224  # pixels: the crop size ResNet's short-side range [256, 480] was written for (aug.short_side's unit)


@dataclass
class AugConfig:
    """Training augmentations. ``None`` fields come from the preset, adapted to the image size."""

    preset: str = "standard"  # none | light | standard | strong
    hflip: Optional[float] = None  # probability of a horizontal flip (0 for data where it changes the label)
    # Derandomised flips (airbench's alternating flip): a seeded random half of the images is flipped in even
    # epochs and the other half in odd ones, so every image is seen both ways in any two epochs in a row.
    # Needs hflip=0.5 and in-memory data.
    hflip_alternate: bool = False
    vflip: Optional[float] = None  # probability of a vertical flip (rarely label-preserving: off in presets)
    crop: Optional[str] = None  # none | translate (pad and crop) | resized (Inception) | scale (ResNet short side)
    translate: Optional[int] = None  # pixels each way for crop=translate (4 on 32x32, the CIFAR recipe)
    crop_scale: Optional[tuple[float, float]] = None  # area fraction range for crop=resized
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (width/height) for crop=resized
    short_side: Optional[tuple[int, int]] = None  # pixels, ResNet's L range for a 224 crop; scaled to the size
    color_jitter: Optional[float] = None  # brightness/contrast/saturation factor range 1±x (0 = off)
    pca_lighting: Optional[float] = None  # std of AlexNet's PCA colour offsets (paper 0.1; RGB only; 0 = off)
    randaugment_n: Optional[int] = None  # RandAugment: operations per image (0 = off)
    randaugment_m: Optional[int] = None  # RandAugment: magnitude, 0..30 (paper's ImageNet value 9)
    # AutoAugment (Cubuk et al. 2019): torchvision's learned policy for imagenet | cifar10 | svhn, or none. An
    # alternative to RandAugment (which replaced its policy search by two numbers): one of them at a time. No
    # preset turns it on, so it has a plain default (a config recorded before it existed reads as resolved).
    autoaugment: str = "none"
    erasing: Optional[float] = None  # probability of erasing one random box (cutout) per image
    erasing_scale: tuple[float, float] = (0.02, 0.25)  # area fraction range of the erased box
    mixup_alpha: Optional[float] = None  # mixup's Beta(alpha, alpha) (0 = off)
    cutmix_alpha: Optional[float] = None  # CutMix's Beta(alpha, alpha) (0 = off)
    mix_prob: Optional[float] = None  # probability a batch is mixed at all when mixup/CutMix are on
    # Target smoothing of the training loss (Szegedy et al. 2016), applied by the training step. The one
    # label-smoothing knob: it lives here, not under `train`, because it regularises like the augmentations
    # do and the presets set it together with them (0.1 from 'standard' up), so it resolves and is
    # recorded with them. train.label_smoothing, which used to override it, is read as this key.
    label_smoothing: Optional[float] = None


@dataclass
class ModelConfig:
    """Which network to train (names from ``cnnlab models``)."""

    name: str = "lenet5"
    norm: Optional[str] = None  # bn | gn | gn:GROUPS | ln | ln2d | in | none; None: the paper's
    act: Optional[str] = None  # relu, gelu, ...; None: the paper's
    drop_rate: Optional[float] = None  # dropout before the classifier (drop probability); None: the paper's
    options: dict = field(default_factory=dict)  # further builder options, e.g. {drop_path_rate: 0.1}
    # Normalisation options for every norm layer, e.g. {groups: 16} for gn or {eps: 1e-3, momentum: 0.01} for bn;
    # "gn:16" in model.norm is the short form of the group count. Needs model.norm.
    norm_options: dict = field(default_factory=dict)
    # Weight initialisation of convs and hidden linear layers (the classifier keeps N(0, 0.01), loss ln(C)):
    # default (He for ReLU-like activations, fan_out in convs and fan_in in linear layers; LeCun for SELU; Glorot
    # otherwise) | normal:STD | uniform:A (U(-A, A)) | xavier | kaiming_in | kaiming_out | lecun | zeros
    init: str = "default"
    bias_init: Optional[float] = None  # constant for those layers' biases (the notes' 0.01 for ReLU); None: 0
    # Dropout as torch does it (inverted: kept units scaled by 1/(1-p) while training) or as the notes teach
    # it (vanilla: no scaling while training, outputs scaled by the keep probability 1-p at test time).
    dropout: str = "inverted"  # inverted | vanilla; applies to every dropout layer of the model
    hidden_drop_rate: Optional[float] = None  # dropout added after each hidden fully connected layer; None: none added
    stage_drop_rate: Optional[float] = None  # dropout added after each convolutional stage; None: none added
    # Transfer learning: start from trained weights instead of a fresh initialisation.
    init_from: Optional[str] = None  # run folder, checkpoint, torchvision .pth/.safetensors, or 'torchvision' (its cached weights)
    init_from_typed: Optional[str] = None  # written by a run: init_from as typed, where it was relative (record_paths)
    freeze: Optional[str] = None  # none | backbone | stem | stageK (the stem and stages 1..K): no gradient, no optimiser state
    # With init_from: the classifier keeps its fresh init even when the source's classes are the run's (a new head,
    # as `cnnlab transfer`'s rungs train); false loads it then, and keeps it fresh only for other classes.
    new_head: bool = False
    # With init_from naming a cnnlab run trained with train.ema: start from its EMA weights (the average eval --ema
    # scores) instead of its raw ones. A source without EMA weights is refused.
    init_ema: bool = False
    # The first conv's filters from the training images before the first step: the top principal directions of
    # its k x k patches and their negatives, scaled to unit variance (airbench's patch whitening; cnnlab.train.whiten).
    # none | frozen (kept fixed for the run) | frozen_block (the filters' whole conv-norm-act block fixed: its bias and
    # norm too, so the block needs no backward) | trained (only the starting point)
    whiten: str = "none"


@dataclass
class OptimConfig:
    """Optimiser. The learning rate is the peak the schedule scales, for ``lr_batch`` images per step."""

    name: str = "sgd"  # sgd | adamw | muon (Muon on the hidden conv/linear weights, SGD on the rest)
    lr: float = 0.1  # peak learning rate (per lr_batch images when lr_batch is set); SGD's: set it for AdamW (~1e-3)
    # images per step lr is quoted for: lr * train.images_per_step / lr_batch (Goyal et al. 2017)
    lr_batch: Optional[int] = None
    momentum: float = 0.9  # SGD momentum (the lecture's 0.9)
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = 5e-4  # L2 factor (SGD) or decoupled decay (AdamW)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    eps: float = 1e-8  # AdamW denominator guard
    no_decay_norm_bias: bool = True  # no weight decay on norm scales/shifts and biases (they set scale, not capacity)
    grad_clip: float = 0.0  # max global L2 norm of the gradients; 0 = no clipping
    backbone_lr_mult: float = 1.0  # lr factor of the weights model.init_from loaded (the lecture's fine-tuning 1/10: 0.1)
    layer_decay: float = 1.0  # lr factor per stage below the head: k stages down gets layer_decay**k (1 = off)
    muon_lr: float = 0.02  # 'muon': peak rate of the hidden weights' orthogonalised step (not batch-scaled)
    muon_momentum: float = 0.95  # 'muon': Nesterov momentum of the hidden weights (the rest use momentum)
    muon_ns_steps: int = 5  # 'muon': Newton-Schulz iterations that orthogonalise each step


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: a pure function of the step, with optional linear warmup first."""

    name: str = "cosine"  # constant | step | cosine | cyclic | onecycle
    warmup_epochs: float = 0.0  # epochs of linear warmup from warmup_start * lr up to lr
    warmup_start: float = 0.0  # fraction of the peak lr at step 0 of the warmup
    step_epochs: list[int] = field(default_factory=lambda: [30, 60, 90])  # 'step': epochs where lr *= step_gamma
    step_gamma: float = 0.1  # 'step': factor at each of step_epochs
    min_lr_factor: float = 0.0  # 'cosine'/'cyclic': floor as a fraction of the peak
    cycles: int = 1  # 'cyclic': cosine cycles with restarts (a snapshot at the end of each)
    onecycle_pct: float = 0.25  # 'onecycle': share of the steps spent rising
    onecycle_div: float = 25.0  # 'onecycle': peak / starting lr
    onecycle_final_div: float = 1e4  # 'onecycle': starting lr / final lr (final = peak / (onecycle_div * this))


@dataclass
class TrainConfig:
    """The loop: length, batch, precision and the extras that hook into it."""

    epochs: int = 10
    # Training-time budget in minutes (null: none). Set, the run times a few steps first and trains the whole
    # epochs that fit 90% of it, at most train.epochs (cnnlab.train.budget); evaluation comes on top
    minutes: Optional[float] = None
    batch_size: int = 128  # images per forward/backward pass, a micro-batch (global: split over DDP processes)
    # Micro-batches per optimiser step (gradient accumulation, Lightning's accumulate_grad_batches): their
    # gradients add up, each loss scaled by 1/accum_steps, so one step sees accum_steps x batch_size images on
    # the memory of one batch. The schedule, warmup, EMA, SWA and step counts count optimiser steps; BatchNorm
    # still normalises each micro-batch by itself. At most the batches of an epoch (a step does not cross an
    # epoch's end). 1 = a step after every batch
    accum_steps: int = 1
    aux_weight: float = 0.3  # weight of GoogLeNet's auxiliary losses (Szegedy et al. 2015)
    # auto | fp32 | bf16 | fp16 (fp16 on CUDA only); auto: bf16 on CUDA GPUs that have it (else fp16) and on
    # CPUs with bf16 units (else fp32)
    precision: str = "auto"
    channels_last: bool = False  # NHWC memory layout (faster convs on CUDA tensor cores and oneDNN)
    # torch.compile the model: auto | on | off (true/yes read as on, false/no as off). auto runs eager everywhere:
    # compiled training measured 0.77-1.25x eager on 2-core CPUs and 0.64-1.11x on an H200 GPU (bf16), after
    # 6-48 s of compiling (bench/train_throughput.py --compare, docs/speed.md)
    compile: str = "auto"
    # BatchNorm + ReLU (+ the residual addition before it) as one CPU kernel in training: auto | on | off. auto
    # uses it where it applies: on the CPU, fp32 or bf16, with channels_last, uncompiled, for a model with
    # BatchNorm2d -> ReLU pairs (resnet8 trained 1.13-1.14x as fast on 2 cores; cnnlab/layers/fused.py, docs/speed.md).
    # It is compiled on first use (about 20 s, once per machine; needs a C++ compiler); auto goes on without it
    fused_norm_act: str = "auto"
    ema: bool = False  # keep Polyak/EMA weights and evaluate them next to the raw weights
    ema_decay: float = 0.999  # EMA decay per step (the upper bound when ema_warmup is on)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + t) / (10 + t)): a short run is not stuck near init
    swa_epochs: float = 0.0  # last epochs whose weights after every step the EMA model averages uniformly (SWA); 0 = off
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # seeds weights, order and augmentation
    deterministic: bool = False  # deterministic kernels: bit-identical repeats and resumes on CPU
    snapshots: bool = False  # save the weights at the end of every LR cycle ('cyclic') for snapshot ensembles
    sync_bn: bool = False  # DDP: synchronise BatchNorm statistics across processes
    num_workers: int = 0  # worker processes for data read from files (in-memory data needs none)
    # CPU threads for torch, fixed for the run; None: torch's default, lowered while other processes use
    # cores (cnnlab.threads: a thread sharing a busy core stalls every operator). A count above the cores the
    # process may use is applied with a note; one above what the operating system can start is refused
    threads: Optional[int] = None
    # BatchNorm layers that keep their running statistics and normalise with them while training (the
    # lecture's "train with BN in test mode" for transfer): off | all | frozen (those in frozen stages,
    # including the backbone during probe_epochs). true/yes/on read as all, false/no/off as off.
    bn_eval: str = "off"
    probe_epochs: int = 0  # epochs that train only the head first (feature extraction), then all unfrozen stages
    # Early stopping: the run ends, finished, after this many epochs in a row whose validation accuracy (the metric
    # that picks best.safetensors, the raw weights' and not the EMA's; never the test split) did not improve by more
    # than early_stop_min_delta. The head-only epochs of probe_epochs do not count towards it. 0 = off
    early_stop_patience: int = 0
    # The gain that counts as an improvement for early stopping, as a fraction of accuracy like val_acc itself:
    # 0.005 is half a point (91.0% -> 91.6% counts, 91.0% -> 91.4% does not). 0: any gain counts
    early_stop_min_delta: float = 0.0

    @property
    def images_per_step(self) -> int:
        """Images whose gradients make one optimiser step: batch_size x accum_steps (what optim.lr_batch scales by)."""
        return self.batch_size * self.accum_steps


@dataclass
class LogConfig:
    """What a run records besides checkpoints and metrics.csv."""

    quiet: bool = False  # one plain line per epoch instead of a progress bar
    tensorboard: bool = False  # also write TensorBoard event files (needs the tensorboard package)
    smoothing: int = 50  # steps in the moving average drawn over the loss curve
    curves: bool = True  # draw curves.png (matplotlib, about 0.5 s a draw); report.html draws its own curves


@dataclass
class RunConfig:
    """Everything a training run needs; saved as config.yaml in the run folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


# ---------------------------------------------------------------------------------------------
# reading, checking and writing configs

SECTIONS = {f.name: f.type for f in fields(RunConfig)}
CHOICES = {  # fields with a fixed set of values, checked with a message listing them
    ("optim", "name"): ("sgd", "adamw", "muon"),
    ("schedule", "name"): ("constant", "step", "cosine", "cyclic", "onecycle"),
    ("train", "precision"): ("auto", "fp32", "bf16", "fp16"),
    ("aug", "preset"): ("none", "light", "standard", "strong"),
    ("aug", "crop"): (None, "none", "translate", "resized", "scale"),
    ("aug", "autoaugment"): ("none", "imagenet", "cifar10", "svhn"),
    ("data", "normalize"): (None, "dataset", "source", "imagenet", "none"),
    ("train", "bn_eval"): ("off", "all", "frozen"),
    ("train", "compile"): ("auto", "on", "off"),
    ("train", "fused_norm_act"): ("auto", "on", "off"),
    ("model", "dropout"): ("inverted", "vanilla"),
    ("model", "whiten"): ("none", "frozen", "frozen_block", "trained"),
}
# model fields that are open mappings: --set model.options.NAME=VALUE sets one entry (the builder checks the names).
OPEN_MAPPINGS = ("options", "norm_options")
# Choice fields that also read a YAML boolean: (value for false, value for true).
BOOLEAN_CHOICES = {("train", "bn_eval"): ("off", "all"), ("train", "compile"): ("off", "on"),
                   ("train", "fused_norm_act"): ("off", "on")}
# The words a config file's YAML reads as a boolean, taken the same way as text (any case): --set passes these
# fields' values on as typed, and a file's `compile: yes` and `--set train.compile=yes` must mean the same.
BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


@functools.cache
def field_types(cls: type) -> types.MappingProxyType:
    """The field types of a config class, ``typing.get_type_hints(cls)`` read once: it resolves every annotation's
    text again on each call (a six-run experiment spent 1.6 s of its 12 in 3,710 of them), and a class's fields
    never change. Read-only, so that no caller changes what the next one reads."""
    return types.MappingProxyType(typing.get_type_hints(cls))


def _section_class(name: str):
    return {"model": ModelConfig, "data": DataConfig, "aug": AugConfig, "optim": OptimConfig,
            "schedule": ScheduleConfig, "train": TrainConfig, "log": LogConfig}[name]


def did_you_mean(word: str, candidates) -> str:
    """' Did you mean X?' (or 'X or Y?') naming the ``candidates`` close to the mistyped ``word``, compared
    without case (FP32 is fp32); '' when none is close. Appended to a message that lists them all."""
    by_lower = {str(candidate).lower(): str(candidate) for candidate in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(by_lower[match] for match in close)}?" if close else ""


def _key_suggestion(dotted: str) -> str:
    """' Did you mean SECTION.KEY?' for an unknown config key, naming the closest known key: within its section
    when that exists (compared by key alone: the shared 'optim.' would make every optim key look close), among
    all keys when the section is mistyped, and among the keys of that name in any section for a key written
    without its section (``lr``); '' when none is close."""
    section, dot, key = dotted.partition(".")
    names = {section: list(field_types(_section_class(section))) for section in SECTIONS}
    if section in SECTIONS:
        head, subdot, rest = key.partition(".")  # model.option.se: the mapping's name is the mistyped part
        if head in names[section]:  # the key is right, what follows it is not: optim.lr.x, model.options.
            if rest:
                return f" {section}.{head} is one value, with no keys below it: set {section}.{head}=VALUE."
            return f" Name the entry after the dot: {section}.{head}.NAME=VALUE."
        close = difflib.get_close_matches(head.lower(), names[section], n=1, cutoff=0.6)
        return f" Did you mean {section}.{close[0]}{subdot}{rest}?" if close else ""
    if not dot:  # a key without its section: lr, batch_size
        found = [f"{section}.{name}" for section, keys in names.items() for name in keys
                 if difflib.get_close_matches(dotted.lower(), [name], n=1, cutoff=0.8)]
        return f" Did you mean {' or '.join(found[:3])}?" if found else ""
    keys = [f"{section}.{name}" for section, keys in names.items() for name in keys]
    close = difflib.get_close_matches(dotted.lower(), keys, n=1, cutoff=0.6)
    return f" Did you mean {close[0]}?" if close else ""


def _plain(value):
    """``value`` with every numpy (or torch) scalar inside it made the Python number it holds, lists, tuples and
    dicts looked into. The untyped fields (model.options, model.norm_options, data.classes) take any value: a
    config built in Python from an array or a sweep hands them np.float64(0.1) or np.int64(3), which YAML cannot
    write into config.yaml and the checks of a whole number or a positive number did not take."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if type(value) not in (bool, int, float, str) and getattr(value, "ndim", None) == 0 and callable(
            getattr(value, "item", None)):
        return value.item()  # a 0-d numpy or torch value: its Python bool, int or float
    return value


def _convert(where: str, value, kind):
    """``value`` as the field type ``kind`` (from the dataclass annotation), or CnnlabError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(where, value, inner[0])
    if kind is bool:
        plain = _plain(value)  # a numpy or torch bool (a config drawn in Python: rng.random() < 0.5) as Python's
        if isinstance(plain, bool):
            return plain
    elif kind is int:
        # numbers.Integral: a numpy integer too (a config built in Python from an array or a sweep)
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif kind is float:
        number = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # a whole number past float's range (1 and 400 zeros): no finite float holds it
                number = math.inf
        elif isinstance(value, str):  # text that reads as a number ('1e-3' set from Python) is still one
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # .inf/.nan pass every range check and then wreck a run at step 2
                raise CnnlabError(f"{where} must be a finite number, got {_value_repr(value)}. Fix the value in the "
                                  "config file or --set (or where Python set it).")
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a Path in a config built in Python: data.data_dir, model.init_from
            return os.fspath(value)
    elif kind is list:  # an untyped list (data.classes): YAML's list, or --set's comma-separated text
        if isinstance(value, (list, tuple)):
            return [_plain(item) for item in value]
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        # One number (--set data.classes=3 reads as YAML's 3) is a list of one, like the text 'Bag': it is
        # then refused for naming fewer than two classes, not for its type
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return [int(value)]
    elif kind is dict or origin is dict:
        if isinstance(value, dict):
            return {key: _plain(item) for key, item in value.items()}
    elif origin in (tuple, list):
        if isinstance(value, str) and args and args[0] in (int, float):
            # --set's comma-separated text (data.mean=0.5,0.5,0.5), as data.classes takes it: each item is read
            # as YAML reads a number, so 1e-3 and 30 mean what they mean in a list
            value = [_list_item(where, item.strip(), value, kind) for item in value.split(",") if item.strip()]
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            # One number is a list of one (data.mean=0.5: one value for every channel); for a pair it is refused
            # below for its count, not its type
            value = [value]
        if isinstance(value, (list, tuple)):
            item = args[0] if args else None
            if origin is tuple and len(args) != len(value) and Ellipsis not in args:
                raise CnnlabError(f"{where} needs {len(args)} values, got {len(value)}: {list(value)!r}.")
            converted = [_convert(f"{where}[{i}]", v, item) if item else v for i, v in enumerate(value)]
            return tuple(converted) if origin is tuple else converted
    else:
        return value
    expected = getattr(kind, "__name__", str(kind))
    if value is None:  # null, ~ or an empty --set value, for a key that needs a value
        raise CnnlabError(f"{where} must be {expected}, got null (null, ~ or nothing after '='), and this key has no "
                          "'not set' value: give one, or leave the key out for its default. Fix the value in the "
                          "config file or --set (or where Python set it).")
    hint = (" YAML reads an unquoted 12, 1.5 or true as a value, not text: quote text values ('1.5')."
            if kind is str else "")
    raise CnnlabError(f"{where} must be {expected}, got {_value_repr(value)}. Fix the value in the config file or "
                      f"--set (or where Python set it).{hint}")


def _merged_example(whole_value: str, entry: str, part_value: str) -> str:
    """The mapping ``whole_value`` (as typed) with ``entry`` set to ``part_value``, written as one flow mapping:
    the single value that holds both. A dotted entry sits inside its own mappings ({a: {b: 1}})."""
    def read(text: str):
        try:
            return safe_load_unique(text)
        except (yaml.YAMLError, TooLongNumberError):  # an example: the text as typed stands in for the value
            return text

    merged = read(whole_value)
    merged = dict(merged) if isinstance(merged, dict) else {}
    inner = merged
    *outer, last = entry.split(".")
    for key in outer:
        inner[key] = dict(inner[key]) if isinstance(inner.get(key), dict) else {}
        inner = inner[key]
    inner[last] = read(part_value)
    return dump_yaml(merged, default_flow_style=True, width=math.inf).strip()


def _value_repr(value) -> str:
    """``repr(value)`` for a message, its middle left out past 80 characters (a value of thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...{text[-10:]} ({len(text):,} characters)"


def _list_item(where: str, item: str, text: str, kind) -> object:
    """One item of a list of numbers (``kind``: its annotation) written as comma-separated text, read as YAML
    reads a number; text that is none is refused with the two spellings the list takes."""
    try:
        number = safe_load_unique(item)
    except yaml.YAMLError:
        number = None
    except TooLongNumberError as err:
        raise CnnlabError(f"Cannot read {where}: {err}.") from None
    if not isinstance(number, numbers.Real) or isinstance(number, bool):
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if origin is tuple:
            example = ["0.1", "0.5"][:len(args)] if args[0] is float else ["1", "2"][:len(args)]
        else:
            example = ["0.5", "0.5", "0.5"] if args[0] is float else ["30", "60"]
        raise CnnlabError(f"{where}={text!r}: '{item}' is not a number. Give the numbers separated by commas, "
                          f"{where}={','.join(example)} on the command line, or as a YAML list "
                          f"[{', '.join(example)}].")
    return number


# Keys that were removed, each mapped to the key that replaced it. A config that still sets one (an older
# config file, --set, the config a checkpoint of an older run records) is read as the new key, with a
# notice; one that sets both to different values is refused. A null is the old default, "not set",
# and maps to nothing: every config.yaml written before a key was removed holds it as null.
RENAMED_KEYS = {
    # Label smoothing had two knobs: aug.label_smoothing (the preset's value) and train.label_smoothing
    # (None: take the preset's). aug.label_smoothing is the one kept (see AugConfig).
    "train.label_smoothing": "aug.label_smoothing",
}


# The optimiser and schedule keys that only some choices read: (section, key) -> the names (optim.name or
# schedule.name) that read it. Muon steps its other weights by SGD, with optim.momentum and optim.nesterov.
READ_BY_CHOICE: dict[tuple[str, str], tuple[str, ...]] = {
    ("optim", "momentum"): ("sgd", "muon"),
    ("optim", "nesterov"): ("sgd", "muon"),
    ("optim", "betas"): ("adamw",),
    ("optim", "eps"): ("adamw",),
    ("optim", "muon_lr"): ("muon",),
    ("optim", "muon_momentum"): ("muon",),
    ("optim", "muon_ns_steps"): ("muon",),
    ("schedule", "step_epochs"): ("step",),
    ("schedule", "step_gamma"): ("step",),
    ("schedule", "min_lr_factor"): ("cosine", "cyclic"),
    ("schedule", "cycles"): ("cyclic",),
    ("schedule", "warmup_start"): ("constant", "step", "cosine", "cyclic"),  # one-cycle rises its own way
    ("schedule", "onecycle_pct"): ("onecycle",),
    ("schedule", "onecycle_div"): ("onecycle",),
    ("schedule", "onecycle_final_div"): ("onecycle",),
}


def unread_choice_settings(config: "RunConfig", sections: tuple[str, ...] = ("optim", "schedule")) -> list[str]:
    """A note for each key of ``sections`` set away from its default that the chosen optimiser or schedule does not
    read (:data:`READ_BY_CHOICE`): ``--set optim.betas=[0.5,0.5]`` with SGD would otherwise do nothing without
    a word."""
    notes = []
    for (section, key), readers in READ_BY_CHOICE.items():
        part = getattr(config, section)
        if section not in sections or part.name in readers:
            continue
        value, default = getattr(part, key), getattr(type(part)(), key)
        if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
            value, default = list(value), list(default)  # YAML gives a list where the default is a tuple
        if value != default:
            notes.append(f"{section}.{key}={value} does nothing here: only {section}.name="
                         f"{' or '.join(readers)} reads it, and this run's is {part.name}.")
    return notes


def notice(message: str) -> None:
    """A note for the person running cnnlab, on stderr (stdout stays the command's output)."""
    print(f"note: {message}", file=sys.stderr)


def thread_setting_note(threads: Optional[int], cores: int, source: str, limit: Optional[int]) -> Optional[str]:
    """What to say about a fixed thread count (train.threads) on ``cores`` usable cores (counted by ``source``):
    None for null or a count within the cores; a note for a count above them; CnnlabError for a count above
    ``limit`` (:func:`cnnlab.threads.os_thread_limit`), which the operating system cannot start.

    Above the cores, the extra threads share cores with the others, and every operator waits at its end for
    the threads that had no core: train.threads=1000 made a digits epoch take 34 s on 2 cores (0.2 s with 2).
    The count is still applied (torch.set_num_threads takes it as given); the note says what it costs.

    >>> thread_setting_note(2, 2, "os.sched_getaffinity", None) is None
    True
    """
    if threads is None or threads <= cores:  # null, a count within the cores, or a bad value validate_config names
        return None
    fix = (f"Set train.threads to {cores} or fewer, or leave it null: cnnlab then uses the cores other processes "
           "leave free.")
    if limit is not None and threads > limit:
        raise CnnlabError(
            f"train.threads={threads} is more threads than the operating system can start for this process "
            f"({limit:,}: the lowest of the kernel's pid_max and threads-max and the user's process limit, ulimit -u); "
            f"torch would fail to create them and the process would crash. This process may use {cores} "
            f"core{'s' if cores != 1 else ''} ({source}). {fix}")
    return (f"train.threads={threads} is more than the {cores} core{'s' if cores != 1 else ''} this process may use "
            f"({source}): the extra threads share cores, and every operator waits at its end for the threads that "
            f"had no core, so the run is slower than with {cores}. {fix}")


def check_thread_setting(threads: Optional[int], announce: bool = True) -> None:
    """Checked against this machine before a run asks torch for them (train, lr-find, check): refuse a fixed
    thread count (train.threads) the operating system cannot start, and note one above the usable cores on
    stderr when ``announce`` (:func:`thread_setting_note`; one process of a DDP job speaks)."""
    from cnnlab import threads as machine  # called through the module: the tests stand in for the machine

    cores, source = machine.usable_cores()
    note = thread_setting_note(threads, cores, source, machine.os_thread_limit())
    if note and announce:
        notice(note)


class _LinesOnce(io.TextIOBase):
    """A text stream that passes each line on to ``target`` the first time it is written, as it comes."""

    def __init__(self, target, seen: set[str], shared=None) -> None:
        self.target, self.seen, self.partial = target, seen, ""
        # Lines shown by any of several processes (a multiprocessing Manager's dict): its setdefault runs in the
        # manager's process, one call at a time, so of two processes writing the same line only the first shows it
        self.shared = shared

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._pass(line)
        return len(text)

    def _pass(self, line: str) -> None:
        if line.strip() and line not in self.seen:
            self.seen.add(line)
            if self._first_among_processes(line):
                self.target.write(line + "\n")

    def _first_among_processes(self, line: str) -> bool:
        if self.shared is None:
            return True
        try:
            return self.shared.setdefault(line, os.getpid()) == os.getpid()
        except (OSError, EOFError):  # the manager is gone (the search is ending): better twice than never
            return True

    def flush(self) -> None:
        self.target.flush()

    def finish(self) -> None:
        self._pass(self.partial)
        self.partial = ""


@contextlib.contextmanager
def quiet_notes(shared=None, seen: Optional[set[str]] = None):
    """Show each stderr line once inside the block: an experiment's runs and a search's trials load the same data
    and check the same config, and each would print the same notes (the subset, where the files are) again. Lines
    pass through as they are written. ``shared``: a multiprocessing Manager's dict shared by processes that run
    side by side (a search's workers), so that a line any of them showed is not shown again by another; ``seen``:
    the lines already shown by earlier blocks of the same command (a search's earlier trials), a new set when None.

    A block inside another adds nothing: the outer one already shows each line once, and a second filter with the
    same lines would drop every line the inner one passed on. A later command in the same process (the Python
    API) starts afresh: its notes are its own, whatever an earlier command showed."""
    if isinstance(sys.stderr, _LinesOnce):
        yield
        return
    stream = _LinesOnce(sys.stderr, set() if seen is None else seen, shared)
    try:
        with contextlib.redirect_stderr(stream):
            yield
    finally:
        stream.finish()



def config_from_dict(data: dict, base: Optional[RunConfig] = None, *, template: bool = False) -> RunConfig:
    """A RunConfig from nested dicts (YAML), every key and type checked; missing keys keep ``base``'s.
    ``template``: checked as a template, not a run (see :func:`validate_config`)."""
    config = copy.deepcopy(base) if base is not None else RunConfig()
    if not isinstance(data, dict):
        raise CnnlabError(f"A config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}.")
    items = []  # (dotted key, value)
    for section, values in data.items():
        if section not in SECTIONS:
            # a mistyped section ('trian'), or a key written without its section ('lr: 0.1': optim: {lr: 0.1})
            hint = did_you_mean(section, SECTIONS)
            if not hint and isinstance(section, str) and _key_suggestion(section):
                hint = f"{_key_suggestion(section)} In a file a key goes inside its section: SECTION: {{KEY: VALUE}}."
            raise CnnlabError(f"Unknown config section '{section}': the sections are {', '.join(SECTIONS)}.{hint}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise CnnlabError(f"Config section '{section}' must be a mapping of keys to values, got {values!r}.")
        items.extend((f"{section}.{key}", value) for key, value in values.items())
    _set_values(config, items)
    validate_config(config, template=template)
    return config


def _set_values(config: RunConfig, items: list[tuple[str, object]]) -> None:
    """set_value for each (dotted key, value); removed keys (RENAMED_KEYS) last, so that a clash with the
    key that replaced them is seen whichever the file or command line gives first."""
    given = {dotted: value for dotted, value in items}
    for dotted, value in sorted(items, key=lambda item: item[0] in RENAMED_KEYS):  # stable: order kept otherwise
        if dotted in RENAMED_KEYS:
            _set_renamed(config, dotted, value, clash=given.get(RENAMED_KEYS[dotted]))
        else:
            set_value(config, dotted, value)


def set_value(config: RunConfig, dotted: str, value) -> None:
    """Set ``section.key`` on ``config`` with type checking (no range checks: see validate_config)."""
    if dotted in RENAMED_KEYS:
        _set_renamed(config, dotted, value)
        return
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise CnnlabError(f"Unknown config key '{dotted}': write SECTION.KEY with SECTION one of {', '.join(SECTIONS)}."
                          f"{_key_suggestion(dotted)}")
    part = getattr(config, section)
    hints = field_types(type(part))
    mapping, dot, name = key.partition(".")
    if section == "model" and dot and mapping in OPEN_MAPPINGS and name:  # model.options.NAME, model.norm_options.NAME
        getattr(part, mapping)[name] = value
        return
    if key not in hints:
        raise CnnlabError(f"Unknown config key '{dotted}': section '{section}' has {', '.join(hints)}."
                          f"{_key_suggestion(dotted)}")
    _set_field(part, section, key, value, hints[key])


def _set_field(part, section: str, key: str, value, kind) -> None:
    """Set one field of the section dataclass ``part`` to ``value`` read as its type ``kind``: a YAML
    boolean mapped for the choice fields that read one, the type converted, a choice checked."""
    dotted = f"{section}.{key}"
    if (section, key) in BOOLEAN_CHOICES:  # a YAML boolean, or its word as text (--set's 'yes', a quoted 'true')
        truth = BOOLEAN_WORDS.get(value.lower(), value) if isinstance(value, str) else value
        if isinstance(truth, bool):
            value = BOOLEAN_CHOICES[(section, key)][int(truth)]
    value = _convert(dotted, value, kind)
    allowed = CHOICES.get((section, key))
    if allowed is not None and value not in allowed:
        shown = ", ".join(str(a) for a in allowed if a is not None)
        hint = did_you_mean(value, [a for a in allowed if a is not None]) if isinstance(value, str) else ""
        raise CnnlabError(f"{dotted}={_value_repr(value)} is not allowed: choose one of {shown}.{hint}")
    setattr(part, key, value)


def _set_renamed(config: RunConfig, old: str, value, clash=None) -> None:
    """A removed key (:data:`RENAMED_KEYS`): set the key that replaced it, with a notice.

    ``clash`` is the value the same file or command line gives the new key (None if it gives none):
    two different values there are refused. A value the new key had before (a base config, a run's
    recorded config) is replaced, as any later setting replaces an earlier one.
    """
    new = RENAMED_KEYS[old]
    if value is None:
        return  # "not set" (see RENAMED_KEYS): nothing to carry over
    section, _, key = new.partition(".")
    value = _convert(old, value, field_types(_section_class(section))[key])
    current = getattr(getattr(config, section), key)
    if clash is not None and current != value:
        raise CnnlabError(f"The config sets both {new}={current!r} and {old}={value!r}. {old} was removed: it is "
                          f"read as {new}, so the two cannot differ. Keep only {new}.")
    notice(f"{old} is deprecated and was read as {new}={value!r}; write {new} instead.")
    set_value(config, new, value)


def _is_text_field(dotted: str) -> bool:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS:
        return False
    kind = field_types(_section_class(section)).get(key)
    return kind is str or kind == Optional[str]


MODEL_SPEC_HELP = ("NAME, or NAME,KEY=VALUE,... where KEY is a model.* key (norm, norm_options.eps, act, drop_rate, "
                   "init, ...) or else a builder option: resnet50,se=16 or googlenet,naive=true")


def model_spec_overrides(text: str) -> list[str]:
    """``--set`` texts for a model spec ``NAME,KEY=VALUE,...``: ``model.name=NAME``, then ``model.KEY=VALUE`` for
    the model section's own keys (norm, init, ...), ``model.norm_options.KEY=VALUE`` for ``norm_options.KEY=VALUE``
    and ``model.options.KEY=VALUE`` for every other key.

    The one reading of the spec the commands that take a model name share (``--model`` of train,
    ``build``, ``summary``, ``compare``). A value may hold a colon (``norm=gn:4``) but not a comma.
    """
    name, *pairs = [part.strip() for part in text.split(",")]
    if not name:
        raise CnnlabError(f"Cannot read the model '{text}': it starts with a name ({MODEL_SPEC_HELP}).")
    own = set(field_types(ModelConfig)) - {"name", *OPEN_MAPPINGS}
    sets = [f"model.name={name}"]
    given: dict[str, str] = {}  # key -> its value, so a key given twice is named rather than the last one winning
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        # model.act=gelu as --set writes it: the spec is the model section already, so the prefix names nothing more
        key = key.removeprefix("model.").strip() if key.startswith("model.") else key
        if not eq or not key:
            opened = next((earlier for earlier, value in given.items() if value.strip()[:1] in "[{"), None)
            if opened is not None:  # cfg=[[1,16],[1,32]] cut at its commas: say why, not only where
                dotted = f"model.{opened}" if opened in own else f"model.options.{opened}"
                raise CnnlabError(
                    f"The model '{text}' gives {opened} a list or mapping, which a model spec cannot hold: its "
                    f"values end at the next comma, so '{pair}' is read as the next KEY=VALUE. Set {dotted} in a "
                    f"config file, or with --set \"{dotted}=...\" where the command takes --set.")
            raise CnnlabError(f"Cannot read '{pair}' in the model '{text}': write KEY=VALUE after the name "
                              f"({MODEL_SPEC_HELP}).")
        if key in ("options", "options."):  # the config file's mapping; in a spec its keys stand alone
            raise CnnlabError(f"'{pair}' in the model '{text}': a builder option goes in the spec as its own "
                              f"KEY=VALUE ({name},se=16 or {name},drop_path_rate=0.1), not inside options=; "
                              "model.options is the config file's mapping of them.")
        key = key.removeprefix("options.").strip() if key.startswith("options.") else key
        if key == "name":
            raise CnnlabError(f"'{pair}' in the model '{text}': the model's name is what comes before the first "
                              f"comma ({name}), not an option. Write the name once, first.")
        if not value.strip():  # read as null by --set: a key left without its value is a slip, not a choice
            raise CnnlabError(f"'{pair}' in the model '{text}' has no value: write {key}=VALUE, or {key}=null to "
                              "leave it unset.")
        if key in given:
            raise CnnlabError(f"The model '{text}' gives {key} twice ({given[key].strip()} and {value.strip()}): which "
                              f"one is meant is not clear. Give {key} once.")
        option = key.removeprefix("norm_options.").strip() if key.startswith("norm_options.") else None
        if key == "norm_options" or option == "":
            # A mapping in the spec ({eps: 0.001, momentum: 0.01}) would be cut at its comma: one key per pair.
            raise CnnlabError(f"'{pair}' in the model '{text}': give each norm option as its own "
                              "norm_options.KEY=VALUE, e.g. norm_options.eps=0.001 (a value in a model spec "
                              "cannot hold a comma, so not a mapping), or set model.norm_options in a config file.")
        recorded = RECORD_KEYS.get(f"model.{key}", "").removeprefix("model.")
        problem = record_key_problem(f"model.{key}", f"'{pair}' in the model '{text}'",
                                     f"Leave {key} out of the model; `cnnlab train` takes {recorded}=PATH in its "
                                     f"model spec, and records how it was typed by itself.")
        if problem:
            raise CnnlabError(problem)
        given[key] = value
        if option is not None:
            sets.append(f"model.norm_options.{option}={value}")
        else:
            sets.append(f"model.{key}={value}" if key in own else f"model.options.{key}={value}")
    return sets


def parse_model_spec(text: str) -> ModelConfig:
    """The ModelConfig a model spec ``NAME,KEY=VALUE,...`` describes (see :func:`model_spec_overrides`)."""
    return apply_overrides(RunConfig(), model_spec_overrides(text)).model


# The first characters of a YAML value that open a list, a mapping or quoted text: a value starting so that
# does not parse is refused by --set, not read as plain text (data.classes=[0,1 would be the names '[0' and '1').
YAML_OPENERS = {"[": "a list ([)", "{": "a mapping ({)", '"': 'quoted text (")', "'": "quoted text (')"}


def apply_overrides(config: RunConfig, overrides: list[str], *, template: bool = False) -> RunConfig:
    """Apply ``--set section.key=value`` texts; values are read as YAML (0.1, true, [30, 60], null).
    ``template``: the result is checked as a template, not a run (see :func:`validate_config`). One text may be
    given alone, not in a list."""
    require_run_config(config)
    if isinstance(overrides, str):  # one --set text, not a sequence of its characters
        overrides = [overrides]
    config = copy.deepcopy(config)
    given: dict[str, str] = {}  # dotted key -> its value as typed, so a key given twice is named, not overwritten
    values: dict[str, list[str]] = {}  # dotted key -> every value given for it, as typed
    chosen: dict[str, str] = {}  # dotted key -> the --set text that holds (the last), in the order they hold
    for text in overrides:
        dotted, eq, raw = text.partition("=")
        if not eq:
            raise CnnlabError(f"Cannot read --set '{text}': write SECTION.KEY=VALUE, e.g. optim.lr=0.05.")
        dotted = dotted.strip()
        values.setdefault(dotted, []).append(raw.strip())
        # A mapping and one of its entries (model.options={} and model.options.se=16) are the same key too: the
        # one applied last would replace or edit the other, keeping or dropping the entry by their order alone
        nested = next((other for other in given if other.startswith(f"{dotted}.") or dotted.startswith(f"{other}.")),
                      None)
        if nested is not None:
            (whole, whole_value), (part, part_value) = sorted(((dotted, raw.strip()), (nested, given[nested])),
                                                              key=lambda item: len(item[0]))
            entry = part[len(whole) + 1:]
            raise CnnlabError(f"Both {whole}={whole_value} and {part}={part_value} are given (by --set or a model "
                              f"spec): the first sets all of {whole} and the second one entry of it, so which one "
                              f"holds would depend on their order. Give {whole} once with every entry it should hold "
                              f"(--set \"{whole}={_merged_example(whole_value, entry, part_value)}\"), or give only "
                              f"{part}.")
        given[dotted] = raw.strip()
        chosen.pop(dotted, None)
        chosen[dotted] = text
    # A key given again overrides (a command line edited by appending --set KEY=VALUE is a common way to change one
    # setting), as a shortcut over --set does, but never silently: one note names every value and the one that holds
    for dotted, typed in values.items():
        if len(set(typed)) > 1:
            times = "twice" if len(typed) == 2 else f"{len(typed)} times"
            listed = " and ".join(f"{dotted}={value}" for value in typed) if len(typed) == 2 else ", ".join(
                f"{dotted}={value}" for value in typed)
            notice(shorten_long_numbers(f"--set gives {dotted} {times} ({listed}): the last, {typed[-1]}, holds"))
    # Only the value that holds is read: an earlier one, however bad, was replaced (a value fixed by a later --set)
    items = [(dotted, _override_value(dotted, text)) for dotted, text in chosen.items()]  # (dotted key, value)
    preset = dict(items).get("aug.preset")  # the last one given holds
    old_preset = config.aug.preset
    # a preset that is not one (checked with the other values below) clears nothing and is refused without a note
    if (preset in CHOICES[("aug", "preset")] and preset != old_preset
            and clear_preset_values(config.aug, dict(items))):
        notice(f"aug.preset={preset} over an augmentation recorded in full (a run's recorded config, its values filled "
               f"from preset '{old_preset}'): those values are left out, and '{preset}' fills them again; set one "
               "with --set aug.KEY=VALUE to keep it")
    _set_values(config, items)
    validate_config(config, template=template)
    return config


def _override_value(dotted: str, text: str):
    """The value of one ``--set`` text (``dotted``: its key), read as YAML; text fields keep the text as typed."""
    raw = text.partition("=")[2]
    if not raw.strip():  # YAML reads it as null: a key left without its value (an unset $VAR) is a slip
        raise CnnlabError(f"--set {dotted}= gives no value (a shell variable that was not set?): write "
                          f"{dotted}=VALUE, or {dotted}=null to leave it unset.")
    problem = record_key_problem(dotted, f"--set {text.strip()}")
    if problem:
        raise CnnlabError(problem)
    stripped = raw.strip()
    # Text wrapped in quotes ('4:3', "resnet8") is read by YAML, which takes the quotes off: kept as typed,
    # model.name='resnet8' named the model 'resnet8' with its quotes, and no model has that name
    quoted = len(stripped) >= 2 and stripped[0] in "'\"" and stripped[-1] == stripped[0]
    if _is_text_field(dotted) and stripped not in ("null", "~") and not quoted:
        return stripped  # text as typed: YAML would read 4:3 as the base-60 number 243
    try:
        return safe_load_unique(raw)
    except (TooLongNumberError, YamlTooLargeError) as err:
        raise CnnlabError(f"Cannot read {dotted} (given by --set or a model spec): {err}.") from None
    except yaml.YAMLError as err:
        opened = YAML_OPENERS.get(stripped[:1])
        if opened:  # [0,1 is a list left open, not the text '[0' and '1'
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise CnnlabError(f"Cannot read --set '{text}': the value starts {opened} that YAML cannot read "
                              f"({problem}). Close it, e.g. {dotted}=[0, 1] for a list, or quote text "
                              "that holds brackets or quotes.") from None
        return raw  # other text YAML refuses (@name, a tab) is taken as typed


def clear_preset_values(aug: AugConfig, kept: Iterable[str] = ()) -> bool:
    """Before another ``aug.preset`` is set: when ``aug`` is recorded in full (every field a preset fills is set,
    as in a run's config.yaml, where the run's preset filled them), clear those fields, but the dotted keys
    ``kept`` (aug.KEY, set with the new preset), so that the new preset fills them; the recorded values would
    otherwise win over any preset, and the new one would change nothing. Returns whether it cleared them; an
    ``aug`` with fields still left to its preset (a recipe setting a few) keeps every one it sets."""
    filled = [f.name for f in fields(AugConfig) if f.default is None]  # the fields the presets fill
    if any(getattr(aug, name) is None for name in filled):
        return False
    kept = set(kept)
    for name in filled:
        if f"aug.{name}" not in kept:
            setattr(aug, name, None)
    return True


def check_section_types(section: str, part) -> None:
    """Every field of a section built in Python (``TrainConfig(bn_eval=True)``) read as a file's value would be:
    its type checked, a choice field's value among its choices, a YAML boolean mapped (bn_eval: true is
    ``all``), a whole number in a float field made a float, a Path made text. The fields are set to what
    they read as. A section read from YAML or --set has been through :func:`set_value`: nothing changes.
    """
    for key, kind in field_types(type(part)).items():
        _set_field(part, section, key, getattr(part, key), kind)


def require_run_config(config) -> None:
    """Refuse a ``config`` that is not a RunConfig (a dict, a model name, None), saying how to build one, before a
    field is read from it."""
    if not isinstance(config, RunConfig):
        raise CnnlabError(f"A run's config must be a RunConfig, got {type(config).__name__}. Build one with "
                          "RunConfig(train=TrainConfig(epochs=5), ...), or read nested dicts with "
                          "config_from_dict({'train': {'epochs': 5}}) and a YAML file with load_config(PATH) "
                          "(all in cnnlab.config).")


def _check_field_types(config: RunConfig) -> None:
    """:func:`check_section_types` for every section of ``config``, once ``config`` is a RunConfig and each
    section its dataclass: a section given as YAML's nested dict (``RunConfig(train={"epochs": 1})``) or as
    None would otherwise fail on its first field read, as an internal error far from the mistake."""
    require_run_config(config)
    for section in SECTIONS:
        part, kind = getattr(config, section), _section_class(section)
        if not isinstance(part, kind):
            raise CnnlabError(f"The config's {section} section must be a {kind.__name__}, got "
                              f"{type(part).__name__}: write RunConfig({section}={kind.__name__}(...)), leave it out "
                              f"for the defaults, or read nested dicts with config_from_dict({{'{section}': {{...}}}}) "
                              "(cnnlab.config).")
        check_section_types(section, part)


def validate_config(config: RunConfig, *, template: bool = False) -> None:
    """Type and range checks: each message names the key and the allowed values.

    ``template``: ``config`` is not a run but the base a workflow completes into runs, setting
    model.init_from in each itself (the transfer ladder's rungs). The checks that need
    model.init_from set are then left to the completed configs, each validated as a run, and so is the
    schedule (its length checks need the run's epochs, which the workflow sets); every other check applies
    as it does to a run.

    The fields' types are checked first, as a config file's are (:func:`_check_field_types`), so a
    config built in Python meets the same checks; its fields are set to what they read as.

    The one place each field's range is checked, the schedule's included (:func:`schedule_problems`).
    The augmentation's fields are checked where the preset is expanded for the data
    (:func:`cnnlab.data.transforms.resolve_aug`), as their ranges depend on the image size and channels.
    """
    _check_field_types(config)
    problems = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    t, o = config.train, config.optim
    need(1 <= t.epochs <= MAX_STEPS, f"train.epochs={t.epochs} must lie in 1..{MAX_STEPS}")
    need(t.minutes is None or 0 < t.minutes <= MAX_MINUTES,
         f"train.minutes={t.minutes:g} must lie in (0, {MAX_MINUTES:,}], or be null for no budget"
         if t.minutes is not None else "")
    need(1 <= t.batch_size <= MAX_BATCH, f"train.batch_size={t.batch_size} must lie in 1..{MAX_BATCH}")
    need(1 <= t.accum_steps <= MAX_STEPS, f"train.accum_steps={t.accum_steps} must lie in 1..{MAX_STEPS} "
         "(micro-batches of train.batch_size whose gradients make one optimiser step; 1 = a step after every batch)")
    need(o.lr > 0, f"optim.lr={o.lr} must be positive")
    for key, bound in (("lr", MAX_LR), ("muon_lr", MAX_LR), ("weight_decay", MAX_WEIGHT_DECAY)):
        value = getattr(o, key)
        need(value <= bound, f"optim.{key}={value:g} is above {bound:g}, far beyond any value that trains (torch "
             "steps float32 weights with it): check the exponent")
    need(o.lr_batch is None or o.lr_batch >= 1, f"optim.lr_batch={o.lr_batch} must be a positive batch size or null")
    need(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must not be negative")
    need(0 <= o.momentum < 1, f"optim.momentum={o.momentum} must lie in [0, 1)")
    need(o.grad_clip >= 0, f"optim.grad_clip={o.grad_clip} must not be negative (0 = off)")
    # Checked for every optimiser, as the other optim.* keys are, so a config is valid or not whatever optim.name
    # it is later run with; torch's AdamW would refuse these only when it is built, as an internal error
    need(all(0 <= beta < 1 for beta in o.betas),
         f"optim.betas={list(o.betas)} must both lie in [0, 1) (AdamW's moment decay rates; 0.9, 0.999 by default)")
    need(o.eps > 0, f"optim.eps={o.eps} must be positive (AdamW's denominator guard; 1e-8 by default)")
    need(o.muon_lr > 0, f"optim.muon_lr={o.muon_lr} must be positive")
    need(0 <= o.muon_momentum < 1, f"optim.muon_momentum={o.muon_momentum} must lie in [0, 1)")
    need(1 <= o.muon_ns_steps <= 20, f"optim.muon_ns_steps={o.muon_ns_steps} must lie in 1..20 (5 is the reference's)")
    need(0 < t.ema_decay < 1, f"train.ema_decay={t.ema_decay} must lie in (0, 1)")
    # Against train.epochs only when that is valid: else its own line says what to mend, and 0.0 would be named
    # as out of the range 0..-3
    need(t.swa_epochs >= 0 and (t.epochs < 1 or t.swa_epochs <= t.epochs),
         f"train.swa_epochs={t.swa_epochs} must lie in 0..train.epochs ({t.epochs})")
    need(t.swa_epochs == 0 or t.ema, f"train.swa_epochs={t.swa_epochs} averages into the EMA weights: set "
         "train.ema=true as well")
    need(0 <= t.aux_weight, f"train.aux_weight={t.aux_weight} must not be negative")
    need(t.num_workers >= 0, f"train.num_workers={t.num_workers} must not be negative")
    need(t.early_stop_patience >= 0, f"train.early_stop_patience={t.early_stop_patience} must not be negative (epochs "
         "without a gain in validation accuracy before the run stops; 0 = off)")
    need(0 <= t.early_stop_min_delta < 1,
         f"train.early_stop_min_delta={t.early_stop_min_delta} must lie in [0, 1): it is a fraction of accuracy, as "
         "val_acc is (0.005 = half a point)")
    need(t.early_stop_min_delta == 0 or t.early_stop_patience > 0,
         f"train.early_stop_min_delta={t.early_stop_min_delta} is the gain early stopping asks of an epoch, but early "
         "stopping is off (train.early_stop_patience=0): set train.early_stop_patience=N too, or leave the delta at 0")
    need(t.threads is None or t.threads >= 1, f"train.threads={t.threads} must be at least 1 or null")
    device_problem = device_name_problem(t.device)
    need(device_problem is None, device_problem or "")
    if t.epochs >= 1:  # else train.epochs' own line says what to mend, and a range 0..-1 would only confuse
        need(0 <= t.probe_epochs < t.epochs,
             f"train.probe_epochs={t.probe_epochs} must lie in 0..{t.epochs - 1}: the head-only phase must leave "
             "at least one epoch of fine-tuning (train.epochs)")
    need(o.backbone_lr_mult > 0, f"optim.backbone_lr_mult={o.backbone_lr_mult} must be positive (0.1: a tenth)")
    # only above 1: below, the product is under optim.lr, whose own bound is checked above (and named once)
    need(o.backbone_lr_mult <= 1 or o.lr * o.backbone_lr_mult <= MAX_LR,
         f"optim.backbone_lr_mult={o.backbone_lr_mult:g} times optim.lr={o.lr:g} is a rate above {MAX_LR:g} for the "
         "loaded weights, far beyond any that trains: check the exponent")
    need(0 < o.layer_decay <= 1, f"optim.layer_decay={o.layer_decay} must lie in (0, 1] (1 = off)")
    m = config.model
    for key in ("drop_rate", "hidden_drop_rate", "stage_drop_rate"):
        rate = getattr(m, key)
        need(rate is None or 0 <= rate < 1, f"model.{key}={rate} must lie in [0, 1) (a drop probability), or be null")
    if m.init != "default" or m.bias_init is not None:  # the scheme's grammar lives with its formulas
        from cnnlab.layers.init import check_bias_init, parse_init

        for check, value in ((parse_init, m.init), (check_bias_init, m.bias_init)):
            try:
                check(value)
            except CnnlabError as err:
                problems.append(str(err).rstrip("."))
    need("name" not in m.options, f"model.options.name={m.options.get('name')!r}: the model's name is model.name, "
         "not a builder option; leave it out of model.options")
    need(not m.norm_options or m.norm is not None,
         f"model.norm_options={m.norm_options} needs model.norm: name the norm the options are for (e.g. model.norm=gn)")
    # The norm's and activation's names, and each norm option's key and value, against the factories, before a
    # run folder is written (a bad name was refused only when the model was built: after a search's folder was)
    if m.norm is not None or m.act is not None:
        from cnnlab.layers import get_act_layer, get_norm_layer

        checks = (("norm", m.norm, lambda: get_norm_layer(m.norm, **m.norm_options)), ("act", m.act, lambda: get_act_layer(m.act)))
        for key, value, check in checks:
            if value is not None:
                try:
                    check()
                except CnnlabError as err:
                    problems.append(f"model.{key}: {str(err).rstrip('.')}")
    d = config.data
    seeds = (seed_problem("train.seed", t.seed), seed_problem("data.seed", d.seed))
    problems += [problem for problem in seeds if problem]
    # Checked for every source, not only those without a val split, where it is used (data.sources._hold_out)
    need(0.0 < d.val_fraction < 1.0, f"data.val_fraction={d.val_fraction} must lie strictly between 0 and 1")
    need(d.memory_limit_mb >= 0, f"data.memory_limit_mb={d.memory_limit_mb} must not be negative (MiB a folder's or "
         "CSV's decoded images may take in memory; 0 reads them from their files every batch)")
    need(d.train_per_class is None or d.train_per_class >= 1,
         f"data.train_per_class={d.train_per_class} must be at least 1 image per class, or null for all")
    need(d.classes is None or (isinstance(d.classes, list) and len(d.classes) >= 2),
         f"data.classes={d.classes!r} must list at least 2 classes (names or 0-based indices), or be null for all")
    need((d.mean is None) == (d.std is None), "data.mean and data.std must be given together")
    need(d.std is None or all(v > 0 for v in d.std), f"data.std={d.std} must be positive")
    if d.std is None or all(v > 0 for v in d.std):  # else the line above says what to mend
        problem = pixel_scale_problem(d.mean, d.std)
        need(not problem, problem)
    # Each key is one value per channel or one for all (repeated), independently: mean [0.5, 0.4, 0.3] with std
    # [0.25] is fine. Only two per-channel lists of different lengths cannot both fit the data's channels.
    need(d.mean is None or d.std is None or len(d.mean) == len(d.std) or 1 in (len(d.mean), len(d.std)),
         f"data.mean ({counted(len(d.mean or []), 'value')}) and data.std ({counted(len(d.std or []), 'value')}) "
         "must each have one value per channel, or one for all")
    need(config.log.smoothing >= 1, f"log.smoothing={config.log.smoothing} must be at least 1 step")
    # A template's runs get model.init_from from the workflow: its multiplier is checked in each of them.
    need(o.backbone_lr_mult == 1.0 or config.model.init_from is not None or template,
         f"optim.backbone_lr_mult={o.backbone_lr_mult} scales the rate of the weights model.init_from loads, but "
         "model.init_from is not set: set both, or leave backbone_lr_mult at 1")
    # A template's runs (the transfer ladder's) set model.new_head themselves: cnnlab.transfer.ladder refuses it.
    need(not m.new_head or m.init_from is not None or template,
         "model.new_head=true keeps the classifier of the weights model.init_from loads fresh, but model.init_from "
         "is not set: set both, or leave model.new_head out")
    # A template's runs (the transfer ladder's) take it to the rungs that start from the source.
    need(not m.init_ema or m.init_from is not None or template,
         "model.init_ema=true starts from the EMA weights of the run model.init_from names, but model.init_from is "
         "not set: set both, or leave model.init_ema out")
    need(m.whiten == "none" or m.init_from is None,
         f"model.whiten={m.whiten} sets the first conv's filters from the data, but model.init_from loads trained ones "
         "into it: use one of the two (model.whiten=none to keep the loaded filters)")
    # Snapshots are taken where a cycle of 'cyclic' ends (cnnlab.train.schedule.snapshot_steps); another
    # schedule has no cycle ends, and the run would save none without a word.
    need(not t.snapshots or config.schedule.name == "cyclic",
         f"train.snapshots=true saves the weights at the end of each cycle of schedule.name='cyclic', but "
         f"schedule.name='{config.schedule.name}' has no cycles, so no snapshot would be saved: set "
         "schedule.name=cyclic (schedule.cycles=N gives N snapshots), or train.snapshots=false")
    # the schedule runs over the fine-tuning epochs (cnnlab.train.finetune); a template's runs get their epochs
    # from the workflow (the ladder's --steps), which checks each run's schedule naming the run
    if not template and 0 <= t.probe_epochs < t.epochs:
        label = f"train.epochs - train.probe_epochs = {t.epochs - t.probe_epochs}" if t.probe_epochs else None
        problems += schedule_problems(config.schedule, t.epochs - t.probe_epochs, label)
    if problems:
        text = shorten_long_numbers("; ".join(problems))
        raise CnnlabError("Bad config: " + text + ("" if text.endswith("?") else "."))


def shorten_long_numbers(text: str) -> str:
    """``text`` with each run of more than 40 digits shortened to its first and last digits and its length: the
    range checks quote the value given, which may be a whole number of thousands of digits."""
    return re.sub(r"\d{41,}", lambda found: f"{found[0][:12]}...{found[0][-4:]} ({len(found[0]):,} digits)", text)


def seed_problem(key: str, seed: int) -> str:
    """'' when ``seed`` is one numpy, torch and Optuna all take, else the sentence that says it is not.

    The one place the seed range is checked: :func:`validate_config` (train.seed, data.seed) and
    :func:`cnnlab.data.sources.load_source` (a DataConfig built without a RunConfig) both call it.
    """
    if 0 <= seed <= MAX_SEED:
        return ""
    return f"{key}={seed} must lie between 0 and 2**32 - 1 = {MAX_SEED} (numpy's seed range)"


def pixel_scale_problem(mean, std) -> str:
    """'' when data.mean and data.std (either may be None) are on the 0..1 pixel scale cnnlab normalises on,
    else the sentence that says they are not.

    Recipes often give them on the 0..255 scale (mmpretrain's ImageNet mean [123.675, 116.28, 103.53],
    std [58.395, 57.12, 57.375]); taken as 0..1 values they turn every image into a nearly constant input,
    and the run trains badly without a word. A mean of 0..1 pixels lies in [0, 1], and their std is at
    most 0.5 (1 is allowed: mean 0, std 1 leaves the pixels as they are). The one place the rule lives:
    :func:`validate_config` and :func:`cnnlab.data.stats.resolve_normalization` (a DataConfig built in
    Python) both call it.
    """
    outside = [(key, values) for key, values in (("data.mean", mean), ("data.std", std))
               if values is not None and not all(0 <= v <= 1 for v in values)]
    if not outside:
        return ""
    given = " and ".join(f"{key}={list(values)}" for key, values in outside)
    large = any(v > 1 for _, values in outside for v in values)
    hint = (": these look like values on the 0..255 scale, so divide them by 255" if large else "")
    return (f"{given} must lie on the 0..1 pixel scale (a mean in [0, 1], a std in (0, 1]), the scale images are "
            f"normalised on{hint}")


def schedule_problems(s: ScheduleConfig, epochs: int, epochs_label: Optional[str] = None) -> list[str]:
    """What is wrong with schedule ``s`` for a run of ``epochs`` epochs: one sentence per bad field.

    ``epochs_label`` is how the messages name that length (default ``train.epochs=N``).

    The schedule's checks, written once: :func:`validate_config` includes them and
    :func:`cnnlab.train.schedule.validate_schedule` raises them alone.
    """
    names = CHOICES[("schedule", "name")]
    if s.name not in names:  # the other checks depend on the name
        close = did_you_mean(s.name, names).strip() if isinstance(s.name, str) else ""
        return [f"schedule.name='{s.name}' is not allowed: choose one of {', '.join(names)}"
                + (f" ({close[0].lower()}{close[1:]})" if close else "")]
    problems: list[str] = []
    length = epochs_label or f"train.epochs={epochs}"

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    need(s.warmup_epochs >= 0, f"schedule.warmup_epochs={s.warmup_epochs} must not be negative")
    need(s.warmup_epochs == 0 or s.warmup_epochs < epochs,
         f"schedule.warmup_epochs={s.warmup_epochs} must be shorter than the run ({length})")
    need(0 <= s.warmup_start <= 1, f"schedule.warmup_start={s.warmup_start} must lie in [0, 1] (a fraction of the peak lr)")
    need(0 < s.step_gamma <= 1, f"schedule.step_gamma={s.step_gamma} must lie in (0, 1]")
    need(0 <= s.min_lr_factor <= 1, f"schedule.min_lr_factor={s.min_lr_factor} must lie in [0, 1]")
    need(1 <= s.cycles <= MAX_STEPS, f"schedule.cycles={s.cycles} must lie in 1..{MAX_STEPS}: a cycle needs steps of "
         "its own")
    need(0 < s.onecycle_pct < 1, f"schedule.onecycle_pct={s.onecycle_pct} must lie in (0, 1)")
    need(s.onecycle_div >= 1, f"schedule.onecycle_div={s.onecycle_div} must be at least 1 (peak / starting lr)")
    need(s.onecycle_final_div >= 1,
         f"schedule.onecycle_final_div={s.onecycle_final_div} must be at least 1 (starting lr / final lr)")
    if s.name == "step":
        # Checked only for 'step': other schedules ignore step_epochs, whose default suits 90 epochs.
        milestones = list(s.step_epochs)
        need(len(milestones) > 0, "schedule.step_epochs must list at least one epoch for schedule.name='step'")
        need(all(b > a for a, b in itertools.pairwise(milestones)),
             f"schedule.step_epochs={milestones} must be strictly increasing")
        need(all(e >= 1 for e in milestones), f"schedule.step_epochs={milestones} must all be at least 1")
        need(all(e <= epochs for e in milestones),
             f"schedule.step_epochs={milestones} must not go beyond the run ({length})")
        need(all(e > s.warmup_epochs for e in milestones) or s.warmup_epochs == 0,
             f"schedule.step_epochs={milestones} must all come after the warmup (schedule.warmup_epochs={s.warmup_epochs})")
    if s.name == "onecycle" and s.warmup_epochs > 0:
        problems.append(f"schedule.warmup_epochs={s.warmup_epochs} must be 0 for schedule.name='onecycle', "
                        "which has its own rise over schedule.onecycle_pct of the steps")
    return problems


# ---------------------------------------------------------------------------------------------
# relative paths in a run's config

# The config keys that name a file or folder, each with its record of what was typed (KEY_typed).
PATH_KEYS = (("data", "spec"), ("data", "data_dir"), ("model", "init_from"))
PATH_SPEC_KINDS = ("folder", "csv")  # the data specs that end in a path: folder:PATH, csv:FILE


# Each record a run writes of how a path was typed (data.spec_typed, ...), with the key it records. A run fills
# them itself (record_paths) and a new run replaces what it is given, so a value a person sets has no effect:
# where a person types a key (--set, a model spec, a search space) they are refused (record_key_problem),
# while a run's own config.yaml, which holds them, still loads, trains again and resumes.
RECORD_KEYS = {f"{section}.{key}_typed": f"{section}.{key}" for section, key in PATH_KEYS}


def record_key_problem(dotted: str, where: str, fix: Optional[str] = None) -> Optional[str]:
    """The paragraph refusing ``dotted`` where a person typed it (``where``: "--set model.init_from_typed=x"),
    when it is one of the records a run writes (:data:`RECORD_KEYS`); None for any other key. ``fix`` replaces
    the closing sentence (what to do instead)."""
    recorded = RECORD_KEYS.get(dotted)
    if recorded is None:
        return None
    fix = fix or (f"Set {recorded} itself (a relative path is recorded this way by itself), and leave {dotted} "
                  "out.")
    return (f"{where}: {dotted} is not a setting but a run's record of how {recorded} was typed: where that was a "
            "relative path, the run makes it absolute when it starts and writes what was typed here, in its "
            f"run folder's config. A run replaces any value given for it, so setting it would do nothing. {fix}")


def path_in(section: str, key: str, value) -> Optional[tuple[str, str]]:
    """``(prefix, path)`` of a path-valued key's value (``('folder:', 'imgs')`` for data.spec folder:imgs), or
    None when it names no path (digits, init_from 'torchvision', not set)."""
    if not isinstance(value, str) or not value.strip():
        return None
    if (section, key) == ("data", "spec"):
        kind, colon, rest = value.partition(":")
        if not colon or kind.strip().lower() not in PATH_SPEC_KINDS or not rest.strip():
            return None
        return f"{kind.strip().lower()}:", rest.strip()
    if (section, key) == ("model", "init_from") and value == "torchvision":  # the word, not a path
        return None
    return "", value


def record_paths(config: RunConfig, *, resume: bool = False) -> RunConfig:
    """``config`` as a run records it: each path in data.spec, data.data_dir and model.init_from that is relative
    (to the working folder) made absolute, and what was typed kept in KEY_typed, so that eval, ensemble,
    report and a resume read the files the run read, from any working folder.

    A new run records its own paths: a KEY_typed it was given (a run's config.yaml trained again) is cleared
    where the path is absolute already, or names nothing here (the reader of the path then says what is wrong with
    it as typed, not as a run's record of a path since moved). ``resume`` keeps it: the run recorded it when it
    started.
    """
    config = copy.deepcopy(config)
    for section, key in PATH_KEYS:
        part = getattr(config, section)
        value = getattr(part, key)
        found = path_in(section, key, value)
        if (found is None or Path(found[1]).expanduser().is_absolute()
                or (not resume and not os.path.lexists(Path(found[1]).expanduser()))):
            if not resume:
                setattr(part, f"{key}_typed", None)
            continue
        prefix, path = found
        # abspath, not resolve: '..' is taken away, a link stays the link the user named
        setattr(part, key, prefix + os.path.abspath(path))
        setattr(part, f"{key}_typed", value)
    return config


def missing_recorded_path(part, key: str) -> Optional[str]:
    """The message for a path a run recorded (``part.KEY``, with ``part.KEY_typed``: see :func:`record_paths`)
    that no longer exists, naming what was typed and where it led; None when it exists or was typed absolute."""
    section = "data" if isinstance(part, DataConfig) else "model"
    typed = getattr(part, f"{key}_typed", None)
    found = path_in(section, key, getattr(part, key))
    if typed is None or found is None or os.path.lexists(found[1]):
        return None
    # --data replaces data.spec for eval, ensemble and a new run from the config; a resume reads the data it
    # started with (its config may not change), so a link is the way for it
    elsewhere = ("or make a link there to where it is now; `cnnlab eval`, `cnnlab ensemble` and a new run from the "
                 "run's config (`cnnlab train --config`) also take its new place as --data (a resumed run reads only "
                 "the data it started with)" if key == "spec" else "or make a link there to where it is now")
    return (f"{section}.{key} was typed as '{typed}' when the run started, and read from '{found[1]}' (made "
            f"absolute from the folder it was started in), which no longer exists. Put it back there, {elsewhere}.")


def config_to_dict(config: RunConfig) -> dict:
    """Nested plain dicts and lists (tuples become lists), ready for YAML or JSON."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {name: {k: plain(v) for k, v in asdict(getattr(config, name)).items()} for name in SECTIONS}


def flatten_config(config: dict, prefix: str = "") -> dict[str, object]:
    """A config as :func:`config_to_dict` gives it, flattened to dotted keys: {"optim.lr": 0.1, ...}."""
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


# Keys a resumed search or transfer ladder may set its own way: where and how fast it trains, and what it
# records besides the results, not what the runs compute
RESUME_FREE_KEYS = ("train.device", "train.threads", "log.")


def config_differences(one: RunConfig, other: RunConfig) -> dict[str, tuple]:
    """{dotted key (``optim.lr``): (its value in ``one``, in ``other``)} for every key whose values differ,
    in sorted order; a key only one config has (a model option) is None in the other."""
    flat_one, flat_other = flatten_config(config_to_dict(one)), flatten_config(config_to_dict(other))
    return {key: (flat_one.get(key), flat_other.get(key)) for key in sorted(flat_one.keys() | flat_other.keys())
            if key not in flat_one or key not in flat_other or flat_one[key] != flat_other[key]}


# A number in exponent form without a dot (1e-3, 5E-4, 1e6). PyYAML follows YAML 1.1, whose float pattern needs
# a dot, and reads these as text: every untyped value (a builder option, a norm option, a search range) then
# held the text '1e-3', and a builder refused drop_path_rate="1e-1" as no probability. YAML 1.2, and every
# other YAML reader people write configs for, reads them as numbers; cnnlab's reader and writer do too.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_FLOAT_TAG = "tag:yaml.org,2002:float"


class _NumberLoader(yaml.SafeLoader):
    """The safe loader reading 1e-3 as the number YAML 1.2 reads (:data:`_EXPONENT_FLOAT`), and a merge of several
    mappings (``<<: [*a, *b]``) as YAML defines it: a key both give takes the first one's value."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        # id(a mapping node) -> how many merged pairs lead its value once flattened: the rest are its own keys
        self.merged_pairs: dict[int, int] = {}

    def flatten_mapping(self, node) -> None:
        # YAML's merge, written out: PyYAML 6.0.4 tells the merged keys apart by the identity of their text, which
        # Python shares only for short names, so of two mappings giving 'epochs' the second's value was kept.
        # Of several merged mappings the first that gives a key wins; within one, its own keys win over what it
        # merged itself (mid: {<<: *base, epochs: 5} merged elsewhere gives 5); the node's own keys win over all.
        sources, own = [], []
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                if key_node.tag == "tag:yaml.org,2002:value":
                    key_node.tag = "tag:yaml.org,2002:str"
                own.append((key_node, value_node))
            elif isinstance(value_node, yaml.MappingNode):
                sources.append(value_node)
            elif isinstance(value_node, yaml.SequenceNode):
                for item in value_node.value:
                    if not isinstance(item, yaml.MappingNode):
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"expected a mapping for merging, but found {item.id}", item.start_mark)
                    sources.append(item)
            else:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"expected a mapping or list of mappings for merging, but found {value_node.id}",
                    value_node.start_mark)
        node.value = own  # its merge keys gone before the sources are flattened: a mapping may merge itself
        merged, taken = [], set()
        for source in sources:
            self.flatten_mapping(source)  # its own merges first: then its pairs end with the keys that win
            last = {}
            for key, value in source.value:
                last[(key.tag, key.value) if isinstance(key, yaml.ScalarNode) else id(key)] = (key, value)
            for name, pair in last.items():
                if name not in taken:
                    taken.add(name)
                    merged.append(pair)
        node.value = merged + own
        # the merged pairs come first: a key they share with the node's own is no key given twice (an alias of
        # this node, built later, must not be refused for it: _UniqueKeyLoader checks the own pairs only)
        if merged:  # flattened again (another alias reached it): no merge key is left, and the count stands
            self.merged_pairs[id(node)] = len(merged)


# The class's own copy of the resolvers, edited below: the lists it inherits are the safe loader's, which every
# other yaml.safe_load reads (PyYAML copies them only on the first add_implicit_resolver)
_NumberLoader.yaml_implicit_resolvers = {first: list(resolvers)
                                         for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

# Decimal numbers as YAML 1.2 reads them, with YAML 1.1's base-60 branch (2:30.0 read as 150.0) left out: the
# safe loader's own float pattern without it, and the exponent form above
_DECIMAL_FLOAT = re.compile(r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
for _resolvers in _NumberLoader.yaml_implicit_resolvers.values():
    _resolvers[:] = [(tag, regexp) for tag, regexp in _resolvers if tag != _FLOAT_TAG]
_NumberLoader.add_implicit_resolver(_FLOAT_TAG, _DECIMAL_FLOAT, list("-+0123456789."))
_NumberLoader.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))

# Whole numbers as YAML 1.2 reads them: decimal digits, 0x hex and 0o octal (0b binary and '_' between digits are
# kept, as PyYAML reads them). YAML 1.1, which PyYAML follows, read 010 as octal 8 and 2:30 as 150 (base 60), so
# --set train.epochs=010 trained 8 epochs; 010 is ten here, and 2:30 (like 2:30.0 above) is text, which a number
# key refuses.
_INT_TAG = "tag:yaml.org,2002:int"
_INTEGER = re.compile(r"^[-+]?(?:[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+)$")
for _resolvers in _NumberLoader.yaml_implicit_resolvers.values():  # the class's own copy, made above
    _resolvers[:] = [(tag, regexp) for tag, regexp in _resolvers if tag != _INT_TAG]
_NumberLoader.add_implicit_resolver(_INT_TAG, _INTEGER, list("-+0123456789"))


def _construct_int(loader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("-+")
    base = 10  # leading zeros are decimal: 010 is 10
    for prefix, prefix_base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if digits.startswith(prefix):
            digits, base = digits[len(prefix):], prefix_base
    try:
        return sign * int(digits, base)
    except ValueError:  # Python reads at most 4,300 decimal digits (sys.get_int_max_str_digits)
        if base != 10 or len(digits) <= sys.get_int_max_str_digits():  # not that: no digits at all ('0x_')
            raise yaml.constructor.ConstructorError(None, None, f"'{text}' has no digits to read as a whole number",
                                                    node.start_mark) from None
        # not a YAML error, which a --set value or a model spec's option would read as text instead: it is a
        # number, only far too long for any setting. The reader of a file adds its name and the line.
        raise TooLongNumberError(f"a whole number of {len(digits):,} digits ({digits[:12]}...) is longer than any "
                                 "value can be: give the value the setting needs", node.start_mark) from None


class TooLongNumberError(CnnlabError):
    """A whole number in YAML text too long for Python to read; ``line`` and ``column`` (1-based) say where."""

    def __init__(self, message: str, mark) -> None:
        super().__init__(message)
        self.line, self.column = mark.line + 1, mark.column + 1

    def where(self) -> str:
        return f"line {self.line}, column {self.column}"


_NumberLoader.add_constructor(_INT_TAG, _construct_int)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_NumberLoader):
    """:class:`_NumberLoader`, refusing a key that a mapping holds twice: PyYAML would keep the last value and
    drop the first without a word (a second ``optim:`` section would undo the first's lr). YAML's merge key
    (``<<: *defaults``) is read as YAML defines it: the mapping's own keys override the merged ones."""

    def flatten_mapping(self, node) -> None:
        # Checked where every mapping passes, a merged one too ({<<: {k: 1, k: 2}} is never built on its own)
        seen: dict = {}
        # a node flattened already (an alias reached it first): its merged pairs lead, and only the rest are its own
        own = node.value[self.merged_pairs.get(id(node), 0):]
        for key_node, _ in own:
            if key_node.tag == _MERGE_TAG:
                continue  # merged in by flatten_mapping below
            key = self.construct_object(key_node)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key is a {type(key).__name__} ({key!r:.40}): keys are names, such as 'epochs'",
                    key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}), "
                    "and only one would be kept: merge them", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        super().flatten_mapping(node)


class _ConfigDumper(yaml.SafeDumper):
    """The safe dumper, quoting text that :class:`_UniqueKeyLoader` would read as a number (a class named
    '1e3'), so that what it writes reads back as it was."""


_ConfigDumper.add_implicit_resolver(_FLOAT_TAG, _EXPONENT_FLOAT, list("-+0123456789."))
_ConfigDumper.add_implicit_resolver(_INT_TAG, _INTEGER, list("-+0123456789"))  # '0o17' quoted: it reads as 15


# The most values (list items, mapping entries, scalars) YAML text may expand to, its aliases (*name) counted each
# time they appear: a recipe holds a few hundred, and everything that reads a config (the checks, copies, config.yaml)
# walks the expansion, so nested aliases of aliases (each repeating the last ten times) took minutes and gigabytes.
MAX_YAML_VALUES = 100_000


class YamlTooLargeError(yaml.YAMLError):
    """YAML text that nests too deeply to read, or whose aliases expand too far (or into a list or mapping that
    holds itself): refused in words where the config is read, before anything walks it."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, None  # as read_error_text reads a YAML error


def _load_bounded(text: str, loader):
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 (SafeLoader subclasses)
    except RecursionError:  # PyYAML's parser and constructor recurse once per level of nesting
        raise YamlTooLargeError("its lists or mappings nest too deeply to read (hundreds of levels)") from None
    values, stack = 0, [data]
    while stack:
        value = stack.pop()
        values += 1
        if values > MAX_YAML_VALUES:
            raise YamlTooLargeError(f"it holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) are "
                                    "expanded, or a list or mapping that holds itself: a config holds a few hundred")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return data


def safe_load_unique(text: str):
    """``yaml.safe_load`` (no code runs), with a key repeated in a mapping refused (a yaml.YAMLError) and 1e-3
    read as a number, as YAML 1.2 reads it; text nested too deeply, or expanding to too many values through its
    aliases, refused too (:class:`YamlTooLargeError`)."""
    return _load_bounded(text, _UniqueKeyLoader)


def safe_load_shown(text: str):
    """``text`` read as :func:`safe_load_unique` reads it (1e-3 a number), but a key repeated in a mapping keeps
    its last value as PyYAML keeps it: for showing what a file holds that cnnlab refused, perhaps for that very
    key, where a refusal would show nothing."""
    return _load_bounded(text, _NumberLoader)


def read_error_text(err: Exception) -> str:
    """What reading a YAML file failed on, for a message: a YAML error's problem and where it is (its first line
    alone is often only the context, 'while scanning for the next token', naming neither), else the first line."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if not isinstance(err, yaml.YAMLError) or not problem:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    # A tab where YAML wants indentation is the common slip, and its problem text shows the tab as '\t'
    tabs = "; YAML indents with spaces, not tabs" if "\\t" in problem else ""
    return f"{problem}{where}{tabs}"


def dump_yaml(data, **options) -> str:
    """``yaml.safe_dump`` of ``data`` (``options`` passed on) as :func:`safe_load_unique` reads it back."""
    return yaml.dump(data, Dumper=_ConfigDumper, **options)


def load_config(path: str | Path, base: Optional[RunConfig] = None, *, template: bool = False) -> RunConfig:
    """Read a YAML config (safe loader: no code runs) into a checked RunConfig (checked as a template, not
    a run, with ``template``: see :func:`validate_config`)."""
    path = Path(path)
    if path.is_dir():
        raise CnnlabError(f"The config file '{display_name(str(path))}' is a folder, not a file: name a YAML file, "
                          "such as a recipe in recipes/, or the config file inside a run folder to repeat that run.")
    if not path.exists():
        raise CnnlabError(f"The config file '{display_name(str(path))}' does not exist.")
    if not path.is_file():  # a pipe (`--config <(...)`, a FIFO) or a device: gone, or blocking, on a second read
        raise CnnlabError(f"The config file '{display_name(str(path))}' is not a regular file (a pipe, such as the "
                          "shell's <(...), or a device): a command may read its config more than once, and a pipe "
                          "gives its text only once. Write the config to a file and name that file.")
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except YamlTooLargeError as err:  # YAML, but no config
        raise CnnlabError(f"Cannot read the config file '{display_name(str(path))}': {err.problem}.") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CnnlabError(f"Cannot read the config file '{display_name(str(path))}': "
                          f"{read_error_text(err)}. It must be YAML.") from None
    except TooLongNumberError as err:  # a value no setting can hold (a number of thousands of digits)
        raise CnnlabError(f"Cannot read the config file '{display_name(str(path))}': {err} ({err.where()}).") from None
    if data is None:  # read as every default, it would train another run than the file was meant for, silently
        raise CnnlabError(f"The config file '{display_name(str(path))}' is empty (nothing but blank lines and "
                          "comments), so it sets nothing and the run would train with every default. Name the file "
                          "that holds the settings, or leave --config out to train with the defaults ({} is a "
                          "config that sets nothing on purpose).")
    return config_from_dict(data, base, template=template)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML (atomically), loadable by load_config."""
    from cnnlab.io import write_text_atomic

    text = "# cnnlab run config: `cnnlab train --config THIS_FILE` repeats the run\n"
    text += dump_yaml(config_to_dict(config), sort_keys=False, default_flow_style=False, width=100)
    write_text_atomic(path, text, "the run config")
