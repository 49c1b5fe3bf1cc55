"""Optimisers: SGD with (Nesterov) momentum, AdamW or Muon, with weight decay only where it belongs.

Weight decay pulls weights towards 0 to limit what the network can fit. On the weights of conv and
linear layers that is the point; on a normalisation layer's scale and shift, on biases and on
per-channel scales such as ConvNeXt's layer scale it only changes the scale of a feature, which the
next normalisation undoes or the network has to fight, so they are left undecayed (Goyal et al.
2017, section 5.1; timm's ``param_groups_weight_decay``; torchvision's ``--norm-weight-decay 0``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from cnnlab.config import CHOICES, OptimConfig
from cnnlab.errors import CnnlabError
from cnnlab.layers.norm import (
    GroupNormAuto,
    InstanceNormAffine,
    LayerNorm2d,
    LayerNormCHW,
)
from cnnlab.models.stages import classifier_names
from cnnlab.train.muon import Muon
from cnnlab.train.schedule import scaled_lr

OPTIMIZERS: tuple[str, ...] = CHOICES[("optim", "name")]  # sgd, adamw, muon

# Normalisation layers, detected by type (never by the name a model gives them). _NormBase covers
# BatchNorm1d/2d/3d, SyncBatchNorm and InstanceNorm*; cnnlab's own norms subclass torch's and are
# named here as well so the list says what it covers.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.RMSNorm,
    nn.LocalResponseNorm,
    LayerNorm2d,
    LayerNormCHW,
    GroupNormAuto,
    InstanceNormAffine,
)

# Layers whose ``weight`` is a kernel or matrix whatever its shape: Linear(512, 1) has a (1, 512)
# weight that is still a matrix to decay, not a per-channel vector.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.conv._ConvNd,
    nn.Linear,
    nn.Bilinear,
    nn.Embedding,
)


def _is_per_channel(param: torch.Tensor) -> bool:
    """At most one dimension longer than 1: a vector, perhaps stored broadcastable as (C, 1, 1)."""
    return sum(1 for size in param.shape if size > 1) <= 1


def _no_decay_ids(model: nn.Module) -> set[int]:
    """``id`` of every parameter that weight decay should skip.

    A parameter is skipped when any of these holds:

    - it belongs to a normalisation layer (NORM_TYPES), whatever its shape (LayerNorm over
      (C, H, W) has a 3-D scale);
    - it is registered under the name ``bias`` on its module;
    - it has at most one dimension (timm's rule ``param.ndim <= 1``): covers biases and norm scales
      again, and LayerScale gammas stored as (C,) (timm's ConvNeXt), PReLU slopes and scalars;
    - it is a per-channel vector stored broadcastable, e.g. (C, 1, 1), on a module that is not a
      conv/linear layer: ConvNeXt's layer scale in torchvision's layout (and cnnlab's), which the
      ``ndim <= 1`` rule alone would miss.
    """
    skipped: set[int] = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_TYPES)
        is_weight_layer = isinstance(module, WEIGHT_LAYERS)
        for name, param in module.named_parameters(recurse=False):
            if (is_norm or name == "bias" or param.ndim <= 1
                    or (not is_weight_layer and _is_per_channel(param))):
                skipped.add(id(param))
    return skipped


def muon_weight_ids(model: nn.Module) -> set[int]:
    """``id`` of every weight Muon steps: the weights of the conv and linear layers, except the classifier's
    (Muon orthogonalises the updates of hidden layers; the logits layer keeps SGD, as in the reference)."""
    classifiers = {id(model.get_submodule(name)) for name in classifier_names(model)}
    return {id(module.weight) for module in model.modules()
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and id(module) not in classifiers
            and module.weight is not None and module.weight.ndim >= 2}


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool = True,
                 lr_scales: Optional[dict[int, float]] = None, muon: Optional[set[int]] = None) -> list[dict]:
    """The model's trainable parameters split into a decayed and an undecayed group.

    Returns ``[{'params': [...], 'weight_decay': weight_decay, 'name': 'decay', 'lr_scale': 1.0},
    {'params': [...], 'weight_decay': 0.0, 'name': 'no_decay', 'lr_scale': 1.0}]``, dropping an empty
    group (all in one group when ``no_decay_norm_bias`` is off or ``weight_decay`` is 0). Every
    trainable parameter is in exactly one group, in ``model.parameters()`` order (shared parameters
    once); frozen ones (``requires_grad=False``) are left out, as timm does, so fine-tuning a part of a
    network does not make the optimiser keep state for the rest.

    ``lr_scales`` (``id(parameter)`` -> factor of the peak learning rate; fine-tuning's per-stage
    rates) splits each group further by factor, named like ``'decay x0.1'``.

    ``muon`` (the ``id`` of each weight :func:`muon_weight_ids` chose) moves those weights into a last
    group named ``'muon'`` with ``'muon': True`` (decayed by ``weight_decay``); every other group has
    ``'muon': False``.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias or weight_decay == 0:
        groups = [{"params": trainable, "weight_decay": weight_decay, "name": "all"}]
    else:
        skipped = _no_decay_ids(model)
        decay = [p for p in trainable if id(p) not in skipped]
        no_decay = [p for p in trainable if id(p) in skipped]
        groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
                  {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    # The Muon group goes last (the rate a run records and the range test sweeps is found by lr_scale, not place).
    muon = muon or set()
    groups = [{**group, "params": [p for p in group["params"] if id(p) not in muon], "muon": False}
              for group in groups] + [{"params": [p for p in trainable if id(p) in muon],
                                       "weight_decay": weight_decay, "name": "muon", "muon": True}]
    scaled = []
    for group in groups:
        factors = sorted({lr_scales[id(p)] for p in group["params"]}, reverse=True) if lr_scales else [1.0]
        for factor in factors:  # the fastest-learning parameters (the head) first
            params = [p for p in group["params"] if not lr_scales or lr_scales[id(p)] == factor]
            name = group["name"] if len(factors) == 1 and factor == 1.0 else f"{group['name']} x{factor:g}"
            scaled.append({**group, "params": params, "name": name, "lr_scale": factor})
    return [group for group in scaled if group["params"]]


def recorded_group(optimizer: torch.optim.Optimizer) -> dict:
    """The parameter group whose rate a run records as ``lr`` (metrics.csv, steps.csv, the charts): the first at
    the peak rate itself (``lr_scale`` 1, not Muon's), the one that holds the classifier, at optim.lr times the
    schedule; the first group where none is (an optimiser built elsewhere)."""
    return next((group for group in optimizer.param_groups
                 if group.get("lr_scale", 1.0) == 1.0 and not group.get("muon", False)), optimizer.param_groups[0])


# Optimisers that divide each step by a running estimate of the gradient's scale (Adam's second moment), so that a
# weight moves by about lr per step whatever its gradient's size: their useful rates are far below SGD's
ADAPTIVE_OPTIMIZERS: tuple[str, ...] = ("adamw",)


def sgd_default_lr_note(optim: OptimConfig) -> Optional[str]:
    """A note when an adaptive optimiser (AdamW) runs at SGD's default rate ``optim.lr=0.1``, or None.

    The defaults of ``optim.lr`` and ``optim.weight_decay`` are SGD's. They are kept for AdamW rather than
    swapped for AdamW's own, because a config file that names ``optim.name: adamw`` and leaves ``lr`` out
    would then train differently from the day it was written. timm's train.py, too, keeps one base rate for
    every optimiser (0.1 per 256 images, square-root scaled for adaptive ones) and leaves AdamW's rate to
    ``--lr``. A rate of 0.1 steps every AdamW weight by about 0.1 a step, so the value left unchanged is said
    before the run. The text is the same for every run, so a search or an experiment shows it once
    (:func:`cnnlab.config.quiet_notes`)."""
    if optim.name not in ADAPTIVE_OPTIMIZERS or optim.lr != OptimConfig.lr:
        return None
    decay = ""
    if optim.weight_decay == OptimConfig.weight_decay:
        decay = (f" optim.weight_decay={OptimConfig.weight_decay:g} is SGD's default too: AdamW multiplies its "
                 "decoupled decay by the rate, so at lr=1e-3 it barely decays (torch.optim.AdamW's default is "
                 "weight_decay=0.01).")
    return (f"optim.name={optim.name} runs at optim.lr={OptimConfig.lr:g}, the default rate for SGD: {optim.name} "
            f"scales each weight's step to about lr whatever the gradient's size, so {OptimConfig.lr:g} moves the "
            "weights far too much and training stalls or diverges. Set optim.lr (--lr), for instance to 1e-3, "
            f"torch.optim.AdamW's default (docs/training.md, 'Optimisers').{decay}")


def build_optimizer(model: nn.Module, optim: OptimConfig, batch_size: int,
                    lr_scales: Optional[dict[int, float]] = None,
                    ns_dtype: torch.dtype = torch.float32) -> torch.optim.Optimizer:
    """SGD (momentum, optionally Nesterov), AdamW or Muon over :func:`param_groups`, at the peak learning rate.

    The peak lr is :func:`~cnnlab.train.schedule.scaled_lr` (linear scaling rule when
    ``optim.lr_batch`` is set), times the group's ``lr_scale`` (see :func:`param_groups`); each group
    stores it as ``group['peak_lr']`` and the engine sets
    ``group['lr'] = group['peak_lr'] * lr_factor(...)`` before every step. The Muon group's peak is
    ``optim.muon_lr`` times its ``lr_scale``: its step is an orthogonalised direction of a fixed size,
    so its rate does not scale with the batch, and ``ns_dtype`` is the dtype of its Newton-Schulz
    iterations (:class:`~cnnlab.train.muon.Muon`).

    Weight decay: SGD adds ``weight_decay * w`` to the gradient (L2, so momentum carries it); AdamW
    decays decoupled from the adaptive step, ``w -= lr * weight_decay * w`` (Loshchilov & Hutter
    2019, torch's convention: the decay follows the lr schedule because it is multiplied by lr).
    """
    if optim.name not in OPTIMIZERS:
        raise CnnlabError(f"optim.name='{optim.name}' is not allowed: choose one of {', '.join(OPTIMIZERS)}.")
    muon = muon_weight_ids(model) if optim.name == "muon" else None
    groups = param_groups(model, optim.weight_decay, optim.no_decay_norm_bias, lr_scales, muon)
    if not groups:
        raise CnnlabError("The model has no trainable parameters (all have requires_grad=False): nothing to train.")
    peak = scaled_lr(optim, batch_size)
    for group in groups:
        group["peak_lr"] = (optim.muon_lr if group["muon"] else peak) * group["lr_scale"]
        # each group at its own peak from the start: a caller that steps without setting the rates (cnnlab check's
        # overfit run, a train_step loop of one's own) stepped every group at the optimiser's one lr
        group["lr"] = group["peak_lr"]
    # torch steps CPU weights one tensor at a time unless told otherwise (its default multi-tensor step is for
    # CUDA). The multi-tensor ("foreach") step does the same arithmetic in a few calls over all the tensors, and
    # gives the same weights bit for bit (tests/train/test_optim_ema.py): about 0.05 ms a step less for resnet8.
    foreach = True if all(p.device.type == "cpu" for group in groups for p in group["params"]) else None
    if optim.name == "sgd":
        # torch refuses Nesterov without momentum; with momentum 0 plain SGD is what was meant.
        return torch.optim.SGD(groups, lr=peak, momentum=optim.momentum,
                               nesterov=optim.nesterov and optim.momentum > 0, foreach=foreach)
    if optim.name == "muon":
        for group in groups:
            if group["muon"]:
                group.update(momentum=optim.muon_momentum, ns_steps=optim.muon_ns_steps)
        return Muon(groups, lr=peak, momentum=optim.momentum, nesterov=optim.nesterov, ns_dtype=ns_dtype)
    return torch.optim.AdamW(groups, lr=peak, betas=tuple(optim.betas), eps=optim.eps, foreach=foreach)

