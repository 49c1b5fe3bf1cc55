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

All of these transform the batch the model evaluates (already resized to its size S). The lecture's test
itself is ``resnet10crop`` (:data:`RESNET_MODE`), computed from the original image rather than from that batch:
its short side resized to each of several lengths (ResNet's 224, 256, 384, 480 and 640 for a 224 model, scaled
to S), then torchvision's TenCrop of S x S (four corners, the centre, and the same five of the mirror image),
10 x (short sides) views. :func:`scale_crops` cuts one image's views; the eval reads the originals
(:func:`cnnlab.evaluate.evaluate.resnet_tta_probabilities`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

# torch is imported in the functions that compute: the CLI builds its --tta and --scales help from this module's
# constants when it starts, and `cnnlab --help` imports no torch (seconds)
if TYPE_CHECKING:
    import torch

MODES = ("none", "flip", "5crop", "10crop", "multiscale")
CORNER_MODES = ("5crop", "10crop", "multiscale")  # the modes with corner views: the ones a shift moves
# The modes above work on the evaluated batch; the experiments compare each of them. RESNET_MODE reads the
# original images instead (its own path in the eval), so it is listed apart: ALL_MODES is what --tta takes.
RESNET_MODE = "resnet10crop"
ALL_MODES = MODES + (RESNET_MODE,)
# He et al. 2016 (the lecture's ResNet test): the short sides, in pixels, for a 224 x 224 crop
RESNET_SHORT_SIDES = (224, 256, 384, 480, 640)
SHORT_SIDE_LIMIT = 4  # resnet10crop's short sides go up to 4 x the image size (ResNet's largest is 640/224 = 2.9x)
# Pixels a resized image may have before scale_crops cuts its crops from the source instead of resizing it
# whole: a 100000x1 strip resized to a short side of 91 would be 9.1 million pixels long (2.7 GB in RGB).
WHOLE_RESIZE_PIXELS = 16 * 2**20
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
    import torch.nn.functional as F

    out = []
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                                antialias=scale < 1)
        out += with_flips(_corner_views(_fit(scaled, height, width, fill), shift, fill))
    return out


def view_count(mode: str, flips: bool = True, scales: Sequence[float] = DEFAULT_SCALES) -> int:
    """Views (forward passes) per image; ``scales``: multiscale's scales, or resnet10crop's short sides."""
    per = {"none": 1, "flip": 2, "5crop": 5, "10crop": 10, "multiscale": 10, RESNET_MODE: 10}[mode]
    if not flips and mode in ("flip", "10crop", "multiscale", RESNET_MODE):
        per //= 2
    return per * (len(scales) if mode in ("multiscale", RESNET_MODE) else 1)


def resnet_short_sides(image_size: int) -> list[int]:
    """resnet10crop's default short sides for a model of ``image_size`` S: ResNet's {224, 256, 384, 480, 640}
    at the ratio S / 224, rounded (32 -> 32, 37, 55, 69, 91; 28 -> 28, 32, 48, 60, 80), none below S, each once
    (a tiny S rounds two to one length, which would count its views twice)."""
    from cnnlab.config import RESNET_CROP

    return list(dict.fromkeys(max(image_size, round(side * image_size / RESNET_CROP)) for side in RESNET_SHORT_SIDES))


def short_side_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H', W') of an image resized so its short side is ``short_side``: torchvision's rule for Resize(int),
    the long side keeping the aspect ratio, truncated to whole pixels."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def scale_crops(image: torch.Tensor, short_side: int, size: int, flips: bool = True) -> torch.Tensor:
    """uint8 (V, C, size, size): one uint8 image (C, H, W) resized so its short side is ``short_side`` (>= size,
    bilinear with antialiasing), then torchvision's TenCrop(size) of it (top-left, top-right, bottom-left,
    bottom-right, centre, then those five of the mirror image), or FiveCrop when ``flips`` is False.

    A very elongated image (resized to more than :data:`WHOLE_RESIZE_PIXELS`) has each crop cut from the source
    pixels it needs (:func:`cnnlab.data.images.resize_and_crop`, within a grey level of the whole resize).
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.data.images import resize_and_crop, resize_uint8

    height, width = image.shape[-2:]
    resized = short_side_shape(height, width, short_side)
    if resized[0] * resized[1] <= WHOLE_RESIZE_PIXELS:
        whole = resize_uint8(image, resized)
        return torch.stack(TF.ten_crop(whole, [size, size]) if flips else TF.five_crop(whole, [size, size]))
    new_height, new_width = resized
    # five_crop's anchors, in its order: the corners, then center_crop's
    anchors = [(0, 0), (0, new_width - size), (new_height - size, 0), (new_height - size, new_width - size),
               (int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0)))]
    # ten_crop crops the mirrored image (not each crop mirrored: the two centres differ where the border is odd)
    sources = [image, image.flip(-1)] if flips else [image]
    return torch.cat([resize_and_crop(source.unsqueeze(0), resized, (size, size), top_left=anchor)
                      for source in sources for anchor in anchors])


def tta_log_probabilities(model: torch.nn.Module, x: torch.Tensor, mode: str, *, fill: torch.Tensor,
                          flips: bool = True, shift: int | None = None,
                          scales: Sequence[float] = DEFAULT_SCALES) -> torch.Tensor:
    """(B, K) log of the softmax probabilities averaged over the views (model in eval mode).

    Computed as logsumexp of the views' log-softmax less log(views), so a confidently wrong image
    keeps its whole loss: the log of averaged probabilities underflows to -inf there, and a clamp
    would cap the loss and make it incomparable with the loss without TTA.
    """
    import torch

    with torch.no_grad():
        batch_views = views(x, mode, fill=fill, flips=flips, shift=shift, scales=scales)
        log_probs = torch.stack([torch.log_softmax(model(view).float(), dim=1) for view in batch_views])  # (V, B, K)
        return mean_of_probabilities(log_probs)


def mean_of_probabilities(log_probs: torch.Tensor) -> torch.Tensor:
    """log(mean over dim 0 of exp(log_probs)), exactly: (V, B, K) -> (B, K). TTA's views, an ensemble's members."""
    import torch

    return torch.logsumexp(log_probs, dim=0) - math.log(log_probs.shape[0])
