"""Muon for the hidden conv and linear weights, SGD for everything else, in one optimiser.

Muon (Jordan et al. 2024, "Muon: an optimizer for hidden layers in neural networks"; the fastest
known CIFAR-10 trainings, airbench94_muon, use it for their conv filters) keeps SGD's Nesterov
momentum but replaces the step's direction by the nearest semi-orthogonal matrix: a weight of shape
(out, in, kh, kw) is viewed as the matrix (out, in * kh * kw), and its momentum M = U S V^T is
stepped along U V^T, every singular value set to about 1. So rare directions of the gradient, which
plain SGD moves by little, move as far as the dominant ones. U V^T comes from five Newton-Schulz
iterations (matrix products only, no SVD), as in torch.optim.Muon and the reference code.

torch.optim.Muon takes 2-D parameters only and leaves the rest to a second optimiser. Here one
optimiser holds both kinds, as parameter groups marked ``muon``, so the engine's schedule (which
sets ``group['lr'] = group['peak_lr'] * factor`` on every group), its checkpoints and resume work
unchanged. Which weights go where is decided in :func:`cnnlab.train.optim.param_groups`: Muon for
every conv or linear weight except the classifier's (Muon is for hidden layers; the logits layer
and the gains and biases keep SGD).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

# The quintic's coefficients from the reference implementation (and torch.optim.Muon): chosen for
# the steepest slope at 0, so 5 iterations push every singular value into about [0.7, 1.2] rather
# than converging exactly to 1, which trains as well (Jordan et al. 2024).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(matrix: torch.Tensor, steps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(m, n) -> (m, n): about U V^T for matrix = U S V^T, by ``steps`` Newton-Schulz iterations in ``dtype``.

    Each iteration maps X to a X + (b X X^T + c (X X^T)^2) X, which moves every singular value s of X
    towards 1 (s -> a s + b s^3 + c s^5) and keeps the singular vectors. Dividing by the Frobenius
    norm first puts every singular value in (0, 1]. The products run on the short side: X X^T is
    (min(m, n), min(m, n)). The result is returned in the matrix's own dtype.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # (n, m): the Gram matrix below is then the smaller (n, n)
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T  # (k, k), k = min(m, n)
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b G + c G^2, fused: no elementwise pass
        x = torch.addmm(x, polynomial, x, beta=a)  # a X + (b G + c G^2) X
    if tall:
        x = x.T
    return x.to(matrix.dtype)


def shape_scale(shape: torch.Size) -> float:
    """sqrt(max(1, out / in)) of the weight viewed as (out, in): the reference's factor that gives a tall
    matrix's update (fewer inputs than outputs, so at most ``in`` unit singular values) the same size
    per entry as a wide one's."""
    rows = shape[0]
    cols = math.prod(shape[1:])
    return math.sqrt(max(1.0, rows / cols))


class Muon(torch.optim.Optimizer):
    """Muon on the parameter groups with ``muon=True``, SGD with momentum on the others.

    Per group: ``lr``, ``weight_decay``, ``momentum`` and ``nesterov``; Muon groups also ``ns_steps``.

    - SGD groups step exactly as ``torch.optim.SGD`` (dampening 0): the weight decay is L2, added to
      the gradient, and the momentum buffer starts at the first gradient.
    - Muon groups: ``B = momentum * B + g``; the direction is ``g + momentum * B`` with Nesterov,
      else ``B``; it is viewed as (out, in * kh * kw) and orthogonalised; the weight first decays
      decoupled (``w *= 1 - lr * weight_decay``, torch.optim.Muon's convention) and then steps
      ``w -= lr * shape_scale * U V^T``.

    ``ns_dtype`` is the Newton-Schulz iterations' dtype: bf16 halves their time where the hardware
    multiplies bf16 natively (the reference code always uses bf16, for CUDA), fp32 elsewhere.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, nesterov: bool = True, ns_steps: int = 5,
                 ns_dtype: torch.dtype = torch.float32) -> None:
        defaults = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": 0.0,
                    "muon": False, "ns_steps": ns_steps}
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            nesterov = group["nesterov"] and momentum > 0
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if not group["muon"] and decay:
                    grad = grad.add(param, alpha=decay)  # L2: momentum carries the decay, as in SGD
                state = self.state[param]
                if momentum:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = grad.detach().clone()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(grad)
                    buffer = state["momentum_buffer"]
                    direction = grad.add(buffer, alpha=momentum) if nesterov else buffer
                else:
                    direction = grad
                if not group["muon"]:
                    param.add_(direction, alpha=-lr)
                    continue
                if decay:
                    param.mul_(1 - lr * decay)
                matrix = direction.reshape(direction.size(0), -1)  # (out, in * kh * kw)
                update = orthogonalize(matrix, group["ns_steps"], self.ns_dtype).view_as(param)
                param.add_(update, alpha=-lr * shape_scale(param.shape))
        return loss
