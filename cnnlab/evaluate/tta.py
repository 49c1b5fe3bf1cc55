"""Test-time augmentation: several views of each image, their softmax probabilities averaged.

The lecture's "after training" recipe (ResNet's evaluation): 10 crops (four corners, the centre,
and their mirror images) at several scales. On a 224 image the crops cut 224 from a 256 resize.
On small images (28x28, 32x32) there is no border to spare, so a "crop" is the image shifted by
``shift`` pixels towards a corner, with the edge filled with black, the pad-and-crop the
training recipe uses. At other scales the image is resized first and then cropped or padded
back to its size.

Modes (each view is a (B, C, H, W) batch, normalised like the training data):

=========== ======= ============================================================
mode        views   what
=========== ======= ============================================================
none        1       the image
flip        2       + its mirror image
5crop       5       centre + four corner shifts
10crop      10      5crop + their mirror images
multiscale  10 x S  10crop at each scale in ``scales`` (default 0.9, 1.0, 1.1)
=========== ======= ============================================================
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

MODES = ("none", "flip", "5crop", "10crop", "multiscale")
CORNER_MODES = ("5crop", "10crop", "multiscale")  # the modes with corner views: the ones a shift moves
DEFAULT_SCALES = (0.9, 1.0, 1.1)  # what multiscale resizes by: the only mode with scales
SCALE_RANGE = (0.25, 4.0)  # the scales multiscale takes: a quarter to four times the image side


def default_shift(size: int) -> int:
    """Pixels a corner view is shifted: 1/8 of the side (4 on 32x32, 28 for a 224 crop of 256)."""
    return max(1, round(size / 8))


def _corner_views(x: torch.Tensor, shift: int, fill: torch.Tensor) -> list[torch.Tensor]:
    """Centre and four corner crops of x padded by ``shift`` with ``fill`` (per channel): x's size each."""
    batch, channels, height, width = x.shape
    padded = fill.view(1, channels, 1, 1).expand(batch, channels, height + 2 * shift, width + 2 * shift).clone()
    padded[:, :, shift:shift + height, shift:shift + width] = x  # (B, C, H + 2s, W + 2s)
    views = [x]
    for top, left in ((0, 0), (0, 2 * shift), (2 * shift, 0), (2 * shift, 2 * shift)):
        views.append(padded[:, :, top:top + height, left:left + width])
    return views


def _fit(x: torch.Tensor, height: int, width: int, fill: torch.Tensor) -> torch.Tensor:
    """Centre-crop or pad (with ``fill``) x to height x width."""
    batch, channels, h, w = x.shape
    out = fill.view(1, channels, 1, 1).expand(batch, channels, height, width).clone()
    # Overlap of the two centred rectangles, in x's and out's coordinates.
    ch, cw = min(h, height), min(w, width)
    xt, xl = (h - ch) // 2, (w - cw) // 2
    ot, ol = (height - ch) // 2, (width - cw) // 2
    out[:, :, ot:ot + ch, ol:ol + cw] = x[:, :, xt:xt + ch, xl:xl + cw]
    return out


def views(x: torch.Tensor, mode: str, *, fill: torch.Tensor, flips: bool = True, shift: int | None = None,
          scales: Sequence[float] = DEFAULT_SCALES) -> list[torch.Tensor]:
    """The TTA views of a normalised batch x (B, C, H, W); ``fill`` (C,) is black in normalised units.

    ``flips=False`` leaves out mirror images (data whose labels change under a mirror, e.g. digits).
    """
    if mode not in MODES:
        raise ValueError(f"unknown TTA mode '{mode}': choose one of {', '.join(MODES)}")
    height, width = x.shape[-2:]
    shift = default_shift(min(height, width)) if shift is None else shift
    fill = fill.to(device=x.device, dtype=x.dtype)

    def with_flips(batch_views: list[torch.Tensor]) -> list[torch.Tensor]:
        return batch_views + [v.flip(-1) for v in batch_views] if flips else batch_views

    if mode == "none":
        return [x]
    if mode == "flip":
        return with_flips([x])
    if mode == "5crop":
        return _corner_views(x, shift, fill)
    if mode == "10crop":
        return with_flips(_corner_views(x, shift, fill))
    out = []
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                                antialias=scale < 1)
        out += with_flips(_corner_views(_fit(scaled, height, width, fill), shift, fill))
    return out


def view_count(mode: str, flips: bool = True, scales: Sequence[float] = DEFAULT_SCALES) -> int:
    per = {"none": 1, "flip": 2, "5crop": 5, "10crop": 10, "multiscale": 10}[mode]
    if not flips and mode in ("flip", "10crop", "multiscale"):
        per //= 2
    return per * (len(scales) if mode == "multiscale" else 1)


@torch.no_grad()
def tta_log_probabilities(model: torch.nn.Module, x: torch.Tensor, mode: str, *, fill: torch.Tensor,
                          flips: bool = True, shift: int | None = None,
                          scales: Sequence[float] = DEFAULT_SCALES) -> torch.Tensor:
    """(B, K) log of the softmax probabilities averaged over the views (model in eval mode).

    Computed as logsumexp of the views' log-softmax less log(views), so a confidently wrong image
    keeps its whole loss: the log of averaged probabilities underflows to -inf there, and a clamp
    would cap the loss and make it incomparable with the loss without TTA.
    """
    batch_views = views(x, mode, fill=fill, flips=flips, shift=shift, scales=scales)
    log_probs = torch.stack([torch.log_softmax(model(view).float(), dim=1) for view in batch_views])  # (V, B, K)
    return mean_of_probabilities(log_probs)


def mean_of_probabilities(log_probs: torch.Tensor) -> torch.Tensor:
    """log(mean over dim 0 of exp(log_probs)), exactly: (V, B, K) -> (B, K). TTA's views, an ensemble's members."""
    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
