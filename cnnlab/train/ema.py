"""Polyak averaging of the weights: an exponential moving average (EMA) evaluated next to the raw model.

After every optimiser step, ``ema = d * ema + (1 - d) * weight`` for each floating-point parameter.
The averaged weights sit nearer the centre of the region SGD wanders around late in training and
often evaluate better than the last iterate (Polyak & Juditsky 1992; timm's ModelEmaV3,
torchvision's reference ``--model-ema``).

Warm-up: a decay of 0.999 averages over ~1000 steps, so in a short run the average would still be
mostly the random initialisation. With ``warmup`` on, update ``t`` (0-based: the number of updates
before it) uses ``d_t = min(decay, (1 + t) / (10 + t))``, TensorFlow's
``ExponentialMovingAverage(num_updates=...)`` rule: the first update keeps 0.1 of the copy made at
construction, the tenth about 0.53, and ``decay`` itself is reached after ``(10 d - 1) / (1 - d)``
updates (8990 for 0.999).

Floating-point buffers (BatchNorm's running mean and variance) are averaged with the same weight as
the parameters, so the statistics BatchNorm normalises with belong to the averaged weights rather
than to the current ones (torchvision's reference ``AveragedModel(use_buffers=True)``, timm
ModelEmaV3's default). Copying them instead pairs the average's smaller, smoother weights with the
current weights' activation scale: on Fashion-MNIST with vgg_mini that cost the EMA model 6 points
late in a one-cycle run. Integer buffers (``num_batches_tracked``) are copied.

A uniform tail (``uniform_from``, the engine's ``train.swa_epochs``): from update ``s`` on, the
average restarts and weighs every later update equally, ``d_t = (t - s) / (t - s + 1)``: the first
of them copies the weights, the next keeps half, and so on. That is stochastic weight averaging
(Izmailov et al. 2018) sampled after every step, a long average that the warm-up above cannot give
a short run: 3,570 updates end at the decay 0.9975, an average over about 400 steps.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from cnnlab.models._base import load_state


def warmup_updates(decay: float) -> float:
    """Updates before ``(1 + t) / (10 + t)`` reaches ``decay``: ``(10 d - 1) / (1 - d)`` (8990 for 0.999)."""
    return (10.0 * decay - 1.0) / (1.0 - decay)


# The share of the weights the EMA was copied from (the random initialisation) that an average may still hold at
# the run's end unremarked: under 5%, the usual settling bound (decay^n = 0.05 after n = ln 20 / -ln d updates,
# about three spans of 1 / (1 - d) updates).
INITIAL_SHARE_NOTED = 0.05


def unreached_decay_note(decay: float, warmup: bool, updates: int) -> str | None:
    """Why a ``decay`` does not do in a run of ``updates`` steps what it says, or None where it does.

    With the warm-up, every ``decay`` above the last update's ``(1 + t) / (10 + t)`` gives the same
    average: a 17-epoch run of 3,570 updates ends at 0.9975, so 0.999 and 0.9995 train identical EMAs.
    Without it, the weights the average was copied from keep the share ``decay ** updates`` of it:
    0.999 over 18 updates ends 98% the random initialisation, so the EMA's accuracy is near chance.
    The note comes where that share is above :data:`INITIAL_SHARE_NOTED`.
    """
    if updates <= 0:
        return None
    if not warmup:
        return _initial_share_note(decay, updates)
    if updates - 1 >= warmup_updates(decay):
        return None
    last = (1.0 + (updates - 1)) / (10.0 + (updates - 1))  # d_t of the run's last update
    return (f"train.ema_decay={decay:g} is never reached in this run: with train.ema_warmup the decay of update t "
            f"is min({decay:g}, (1 + t) / (10 + t)), which comes to {last:.4f} at the last of its {updates:,} "
            f"updates ({decay:g} needs {warmup_updates(decay):,.0f}). Any decay above {last:.4f} averages the "
            f"same here; a longer average needs a longer run.")


def _initial_share_note(decay: float, updates: int) -> str | None:
    """:func:`unreached_decay_note` without the warm-up: the initial weights' share ``decay ** updates``."""
    initial = decay ** updates  # each update keeps decay of what the average held, the first copy included
    if initial <= INITIAL_SHARE_NOTED:
        return None
    needed = math.log(INITIAL_SHARE_NOTED) / math.log(decay)  # updates until decay ** n falls to the bound
    fitting = INITIAL_SHARE_NOTED ** (1.0 / updates)  # the decay whose average reaches the bound in this run
    return (f"train.ema_decay={decay:g} with train.ema_warmup=false: the EMA weights end this run still "
            f"{initial:.1%} the initial (untrained) weights, since each of its {updates:,} updates keeps {decay:g} "
            f"of the average, the initial copy's part included ({decay:g}^{updates:,}), and the EMA's scores "
            f"(ema_val_acc, the checkpoints' EMA weights) are that mixture's. At this decay the part falls under "
            f"{INITIAL_SHARE_NOTED:.0%} after {math.ceil(needed):,} updates. Turn the warm-up on "
            f"(train.ema_warmup=true, the default), lower the decay to {math.floor(fitting * 1e4) / 1e4:g} or "
            "less, or train longer.")


class ModelEma:
    """An EMA copy of ``model``: ``ema.module`` is an ordinary module in eval mode for evaluation.

    Args:
        model: the model being trained (unwrapped: not the DDP or compiled wrapper).
        decay: the EMA decay per update, the upper bound of ``d_t`` when ``warmup`` is on.
        warmup: use ``d_t = min(decay, (1 + t) / (10 + t))`` (see the module docstring).
        uniform_from: the update from which the average is uniform (``d_t = (t - s) / (t - s + 1)``);
            None keeps the exponential decay throughout.

    Call :meth:`update` after every optimiser step. :meth:`state_dict` holds the averaged weights and
    the update count, so a resumed run continues with the same ``d_t``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True,
                 uniform_from: int | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay} must lie in [0, 1].")
        if uniform_from is not None and uniform_from < 0:
            raise ValueError(f"uniform_from={uniform_from} must be an update count (0 or more) or None.")
        self.uniform_from = uniform_from
        self.module = copy.deepcopy(model).eval()  # eval: dropout off, BN uses its (copied) statistics
        self.module.requires_grad_(False)  # no autograd graph through the average
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0  # updates so far: t in d_t
        self._params = list(self.module.parameters())
        self._buffers = list(self.module.buffers())

    def current_decay(self) -> float:
        """``d_t`` for the next update."""
        if self.uniform_from is not None and self.updates >= self.uniform_from:
            averaged = self.updates - self.uniform_from  # updates already in the uniform average
            return averaged / (averaged + 1.0)
        if not self.warmup:
            return self.decay
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights and floating-point buffers into the average."""
        model_params = list(model.parameters())
        model_buffers = list(model.buffers())
        if len(model_params) != len(self._params) or len(model_buffers) != len(self._buffers):
            raise ValueError(f"The model has {len(model_params)} parameters and {len(model_buffers)} buffers; the "
                             f"EMA copy has {len(self._params)} and {len(self._buffers)}. Pass the same (unwrapped) model.")
        weight = 1.0 - self.current_decay()
        averaged, sources, copied, copy_sources = [], [], [], []
        pairs = list(zip(self._params, model_params)) + list(zip(self._buffers, model_buffers))
        for ema_tensor, tensor in pairs:
            if ema_tensor.is_floating_point():
                averaged.append(ema_tensor)
                sources.append(tensor.detach())
            else:  # an integer tensor (a step count) cannot be averaged: follow the model
                copied.append(ema_tensor)
                copy_sources.append(tensor.detach())
        if averaged:
            # ema + w * (param - ema) = d * ema + (1 - d) * param, one fused kernel per device/dtype group
            torch._foreach_lerp_(averaged, sources, weight)
        if copied:
            torch._foreach_copy_(copied, copy_sources)
        self.updates += 1

    def state_dict(self) -> dict:
        """``{'module': averaged state dict, 'updates': int, 'decay': float, 'warmup': bool}``."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned: weights (strictly), update count, decay, warmup."""
        load_state(self.module, state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
