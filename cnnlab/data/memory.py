"""The fast path: batches cut from one uint8 tensor held on the device, augmented as whole batches.

A per-image torchvision pipeline spends most of its time in Python, once per image. Here the data
set is one uint8 tensor (N, C, H, W) moved to the device once; a batch is an index into it and every
augmentation is a handful of tensor operations on the whole batch, with per-image random parameters
drawn as vectors. The order and the meaning of every augmentation follow the per-image pipeline
(:func:`cnnlab.data.pipeline.build_sample_transform`):

    uint8 geometry (crop, flips) -> RandAugment or AutoAugment (uint8) -> float [0, 1] -> colour jitter
    -> PCA lighting -> clamp [0, 1] -> normalise (x - mean) / std -> erasing -> mixup/CutMix

Where the batched version differs from torchvision's per-image transforms it says so next to the
code; in short: crops are continuous boxes resampled with ``roi_align`` (no integer rounding of the
box), colour jitter applies brightness, contrast, saturation in that fixed order (ColorJitter shuffles
the order per image), and RandAugment (or AutoAugment) draws one operation sequence per group of
:data:`RANDAUGMENT_GROUP` images instead of one per image.

Every random number of an epoch comes from one ``torch.Generator`` seeded by (seed, epoch), so the
same seed and epoch give bit-identical batches: a resumed run repeats the interrupted epoch exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cnnlab.config import RESNET_CROP, AugConfig
from cnnlab.data.seeding import epoch_order, epoch_seed
from cnnlab.data.images import convert_channels
from cnnlab.data.transforms import (
    BatchMixer,
    augment_policy,
    check_pipeline_inputs,
    pca_lighting_offset,
)
from cnnlab.errors import CnnlabError

# RandAugment's (and AutoAugment's) operation draw is shared by this many consecutive images of a shuffled
# batch: one call of v2.RandAugment per group keeps the Python overhead at B/16 calls per batch, while the
# variety across a batch stays close to per-image draws (a batch of 256 sees 16 different draws).
RANDAUGMENT_GROUP = 16
# torchvision's RandomResizedCrop and RandomErasing try this many (area, ratio) draws before giving up.
BOX_ATTEMPTS = 10
ERASING_RATIO = (0.3, 3.3)  # RandomErasing's default aspect-ratio range (height / width), log-uniform
# ITU-R 601 luminance weights, as torchvision's rgb_to_grayscale uses them for colour jitter.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------
# batched augmentations: each takes a whole batch and per-image parameters as (B,) tensors


def translate_batch(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image by whole pixels, filling with zeros: the pad-and-random-crop of the CIFAR recipe.

    x (B, C, H, W) any dtype; dx, dy (B,) integer shifts in [-pad, pad] (positive: content moves
    right / down). ``out[b, :, i, j] = x[b, :, i - dy[b], j - dx[b]]``, 0 where that lies outside the
    image. Equals padding by ``pad`` zeros on every side and cropping H x W at top-left
    ``(pad - dy, pad - dx)``. Returns (B, C, H, W), same dtype.
    """
    batch, channels, height, width = x.shape
    if len(dx) != batch or len(dy) != batch:
        raise ValueError(f"translate_batch needs one dx and dy per image: {batch} images, {len(dx)} dx, {len(dy)} dy")
    if bool((dx.abs() > pad).any()) or bool((dy.abs() > pad).any()):
        raise ValueError(f"translate_batch shifts must lie in [-{pad}, {pad}]")
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p), zeros around
    padded_width = width + 2 * pad
    top = (pad - dy).to(device=x.device, dtype=torch.long)  # (B,) first padded row of the crop
    left = (pad - dx).to(device=x.device, dtype=torch.long)  # (B,) first padded column
    rows = top[:, None, None] + torch.arange(height, device=x.device)[None, :, None]  # (B, H, 1)
    cols = left[:, None, None] + torch.arange(width, device=x.device)[None, None, :]  # (B, 1, W)
    # One gather over each flattened padded plane, shared by the channels: exact integer copies.
    index = (rows * padded_width + cols).view(batch, 1, height * width)  # (B, 1, H*W)
    out = padded.flatten(2).gather(2, index.expand(batch, channels, height * width))  # (B, C, H*W)
    return out.view(batch, channels, height, width)


def flip_batch(x: torch.Tensor, flip: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mirror the images where ``flip`` (B,) bool is True along ``dim`` (-1 horizontal, -2 vertical)."""
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(dim), x)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample one box per image to ``size`` (height, width) with bilinear ``roi_align``.

    x (B, C, H, W) any dtype; boxes (B, 4) float pixel-edge coordinates ``(x1, y1, x2, y2)``: the box
    (0, 0, W, H) is the whole image (``aligned=True`` puts pixel centres at i + 0.5). Each output pixel
    averages ceil(box side / output side) bilinear samples per axis (``sampling_ratio=-1``), so a
    shrinking crop is averaged rather than aliased; an enlarging crop is plain bilinear interpolation
    (``align_corners=False``). Returns float32 (B, C, *size) on x's 0..255 or 0..1 scale.
    """
    from torchvision.ops import roi_align  # here: only runs with resampling crops need torchvision

    batch = x.shape[0]
    index = torch.arange(batch, device=x.device, dtype=torch.float32)[:, None]  # (B, 1) image of each box
    rois = torch.cat([index, boxes.to(device=x.device, dtype=torch.float32)], dim=1)  # (B, 5)
    return roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def scale_crop_boxes(batch: int, height: int, width: int, short_side: tuple[int, int],
                     generator: torch.Generator) -> torch.Tensor:
    """ResNet's scale augmentation on a stored S x S image: (B, 4) square boxes ``(x1, y1, x2, y2)``.

    He et al. 2016 resize the short side to L ~ U[256, 480] and take a random 224 crop. The stored
    image is the short side already at S, so that crop is a square of side S * 224 / L at a uniform
    random position, resized back to S. L is a whole number per image, as on the file path.
    """
    short = min(height, width)
    low, high = short_side
    lengths = torch.randint(low, high + 1, (batch,), generator=generator).float()  # (B,) L in pixels at 224
    side = short * RESNET_CROP / lengths  # (B,) crop side in stored pixels, <= short since L >= 224
    left = torch.rand(batch, generator=generator) * (width - side)
    top = torch.rand(batch, generator=generator) * (height - side)
    return torch.stack([left, top, left + side, top + side], dim=1)


def resized_crop_boxes(batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                       generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop's boxes for a batch: (B, 4) ``(x1, y1, x2, y2)`` in pixel-edge coordinates.

    Same sampling as torchvision's ``RandomResizedCrop.get_params``: area fraction ~ U[scale],
    log(width / height) ~ U[log ratio]; the first of :data:`BOX_ATTEMPTS` draws that fits inside the
    image is used, else the centre crop with the aspect ratio clamped into ``ratio``. Drawn for all
    images and attempts at once; box sides and positions stay real-valued (torchvision rounds them).
    """
    area = float(height * width)
    fraction = torch.empty(batch, BOX_ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch, BOX_ATTEMPTS).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()  # (B, attempts) width / height
    widths = (area * fraction * aspect).sqrt()
    heights = (area * fraction / aspect).sqrt()
    fits = (widths <= width) & (heights <= height)  # (B, attempts)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first fitting attempt (0 if none)
    box_w = widths.gather(1, first).squeeze(1)  # (B,)
    box_h = heights.gather(1, first).squeeze(1)
    # torchvision's fallback: the whole image, narrowed to the nearest allowed aspect ratio.
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fallback_w, fallback_h = float(width), width / ratio[0]
    elif image_ratio > ratio[1]:
        fallback_w, fallback_h = height * ratio[1], float(height)
    else:
        fallback_w, fallback_h = float(width), float(height)
    found = fits.any(dim=1)
    box_w = torch.where(found, box_w, torch.full_like(box_w, fallback_w))
    box_h = torch.where(found, box_h, torch.full_like(box_h, fallback_h))
    position = torch.rand(batch, 2, generator=generator)  # (B, 2) where the box sits in the free range
    left = torch.where(found, position[:, 0] * (width - box_w), (width - box_w) / 2)
    top = torch.where(found, position[:, 1] * (height - box_h), (height - box_h) / 2)
    return torch.stack([left, top, left + box_w, top + box_h], dim=1)


def erasing_boxes(batch: int, height: int, width: int, probability: float, scale: tuple[float, float],
                  generator: torch.Generator) -> torch.Tensor:
    """RandomErasing's boxes for a batch: (B, 4) integer ``(top, left, box_height, box_width)``.

    Per image with ``probability``: area fraction ~ U[scale], log(height / width) ~ U[log 0.3, log 3.3],
    sides rounded to whole pixels; the first of :data:`BOX_ATTEMPTS` draws smaller than the image is
    used, at a uniform integer position (torchvision's ``RandomErasing.get_params``). Images not erased
    get a box of height 0.
    """
    area = float(height * width)
    fraction = torch.empty(batch, BOX_ATTEMPTS).uniform_(scale[0], scale[1], generator=generator)
    log_ratio = torch.empty(batch, BOX_ATTEMPTS).uniform_(math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1]),
                                                          generator=generator)
    aspect = log_ratio.exp()  # (B, attempts) height / width
    heights = (area * fraction * aspect).sqrt().round().long()
    widths = (area * fraction / aspect).sqrt().round().long()
    fits = (heights < height) & (widths < width)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    box_h = heights.gather(1, first).squeeze(1)  # (B,)
    box_w = widths.gather(1, first).squeeze(1)
    position = torch.rand(batch, 2, generator=generator)
    top = (position[:, 0] * (height - box_h + 1)).floor().long()  # uniform over 0 .. H - h
    left = (position[:, 1] * (width - box_w + 1)).floor().long()
    erase = (torch.rand(batch, generator=generator) < probability) & fits.any(dim=1)
    box_h = torch.where(erase, box_h, torch.zeros_like(box_h))
    return torch.stack([top, left, box_h, box_w], dim=1)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) bool, True inside each image's box ``(top, left, box_height, box_width)`` (B, 4)."""
    top, left, box_h, box_w = boxes.unbind(dim=1)  # each (B,)
    rows = torch.arange(height, device=boxes.device)[None, :]  # (1, H)
    cols = torch.arange(width, device=boxes.device)[None, :]  # (1, W)
    in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])  # (B, W)
    return in_rows[:, :, None] & in_cols[:, None, :]


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luminance of float RGB images: (B, 3, H, W) -> (B, 1, H, W), computed as torchvision does."""
    red, green, blue = x.unbind(dim=1)
    return red.mul(GRAY_WEIGHTS[0]).add_(green, alpha=GRAY_WEIGHTS[1]).add_(blue, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def color_jitter_batch(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                       saturation: torch.Tensor | None = None) -> torch.Tensor:
    """torchvision's adjust_brightness, adjust_contrast, adjust_saturation with one factor per image.

    x (B, C, H, W) float in [0, 1], C = 1 or 3; factors (B,), 1 = unchanged. Brightness scales the
    image; contrast blends it with the mean of its grayscale (one number per image); saturation
    (RGB only, None to skip) blends it with its grayscale image. Each step clamps to [0, 1] as
    torchvision does. The order is fixed (brightness, contrast, saturation); ColorJitter draws a
    random order per image, which this batched version does not. Returns a new tensor.
    """
    def per_image(factor):  # (B,) -> (B, 1, 1, 1) on x's device
        return factor.to(device=x.device, dtype=x.dtype)[:, None, None, None]

    x = (x * per_image(brightness)).clamp_(0, 1)  # a new tensor; the steps below work in place on it
    if x.shape[1] == 3:
        # Mean of the grayscale image = the luminance-weighted mean of the channel means: no (B, 1, H, W) temporary.
        weights = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype)
        mean = (x.mean(dim=(2, 3)) * weights).sum(dim=1)[:, None, None, None]  # (B, 1, 1, 1)
    else:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = per_image(contrast)
    x.mul_(factor).add_(mean * (1 - factor)).clamp_(0, 1)
    if saturation is not None:
        factor = per_image(saturation)
        gray = grayscale(x).mul_(1 - factor)  # (B, 1, H, W), taken before x changes in place
        x.mul_(factor).add_(gray).clamp_(0, 1)
    return x


# ---------------------------------------------------------------------------------------------
# the loader


FLIP_HALVES_STREAM = 2**32  # epoch_seed's second key for aug.hflip_alternate's halves: beyond any epoch


def smallest_batch(group_sizes: Sequence[int], batch_size: int, drop_last: bool, keep_small: bool = False) -> int:
    """Images in the smallest batch of a pass that batches each group of ``group_sizes`` images on its own (the
    whole split is one group; aspect-ratio buckets are one each). ``drop_last`` drops each group's short
    remainder; ``keep_small`` keeps the one short batch of a group smaller than a batch all the same (the bucket
    sampler's rule: no aspect ratio is left out whole). 0 when no batch is made.

    >>> smallest_batch([10], 4, drop_last=True), smallest_batch([10], 4, drop_last=False)
    (4, 2)
    >>> smallest_batch([9, 1], 4, drop_last=True, keep_small=True), smallest_batch([3], 4, drop_last=True)
    (1, 0)
    """
    sizes = []
    for size in group_sizes:
        if size >= batch_size and (drop_last or size % batch_size == 0):
            sizes.append(batch_size)  # whole batches only
        elif size >= batch_size:
            sizes.append(size % batch_size)  # the last, short batch kept
        elif size > 0 and (keep_small or not drop_last):
            sizes.append(size)  # a group smaller than one batch: its one short batch
    return min(sizes, default=0)


class MemoryLoader:
    """Batches from one in-memory uint8 tensor, augmented with batched tensor ops on ``device``.

    ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,); both are moved to ``device`` once.
    Iterating yields ``(x, y)``: x ``dtype`` (B, C', H, W) normalised with ``mean``/``std`` (per
    output channel, [0, 1] pixel scale), y int64 (B,), or float (B, ``num_classes``) soft targets when
    mixup/CutMix mixed the batch. C' is ``channels`` when given (1 -> 3 repeats the gray channel, 3 -> 1
    takes the luminance, per batch), else C.

    ``aug`` is a resolved :class:`~cnnlab.config.AugConfig` (:func:`~cnnlab.data.transforms.resolve_aug`);
    with ``train=False`` or ``aug=None`` batches are only converted and normalised. ``shuffle`` and
    ``drop_last`` default to ``train``. ``stats`` (a ChannelStats) supplies the colour PCA
    (``pca_eigvals``, ``pca_eigvecs``) when ``aug.pca_lighting > 0``.

    Call :meth:`set_epoch` before each epoch: order and augmentation then depend only on
    (``seed``, epoch), and iterating again without it repeats the same epoch bit for bit.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, mean: Sequence[float],
                 std: Sequence[float], num_classes: int, aug: AugConfig | None = None, train: bool,
                 device="cpu", shuffle: bool | None = None, drop_last: bool | None = None, seed: int = 0,
                 stats=None, channels: int | None = None, channels_last: bool = False,
                 dtype: torch.dtype = torch.float32):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise CnnlabError(f"MemoryLoader needs the images as one uint8 tensor (N, C, H, W); got {images.dtype} "
                              f"with shape {tuple(images.shape)}. Decode them with cnnlab.data.load_source.")
        if labels.shape != (images.shape[0],):
            raise CnnlabError(f"MemoryLoader needs one label per image: {images.shape[0]} images but labels of shape "
                              f"{tuple(labels.shape)}.")
        if batch_size < 1:
            raise CnnlabError(f"batch_size={batch_size} must be at least 1 image.")
        stored_channels = images.shape[1]
        self.channels = channels or stored_channels
        if self.channels != stored_channels and {stored_channels, self.channels} != {1, 3}:
            raise CnnlabError(f"channels={channels}: {stored_channels}-channel images can be converted between 1 (gray) "
                              "and 3 (RGB) channels only.")
        # The per-image pipeline's checks: mean/std per channel, a resolved and valid aug, the PCA for lighting.
        aug = check_pipeline_inputs(aug if train else None, min(images.shape[-2:]), self.channels, mean, std, stats)
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = labels.to(self.device, torch.long)  # (N,)
        self.batch_size = int(batch_size)
        self.num_classes = num_classes
        self.train = train
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.dtype = dtype
        self.mean = torch.tensor([float(m) for m in mean], device=self.device)[None, :, None, None]  # (1, C', 1, 1)
        self.std = torch.tensor([float(s) for s in std], device=self.device)[None, :, None, None]
        # Every random draw (order, augmentation parameters, the seeds handed to torchvision) comes
        # from this CPU generator, reseeded from (seed, epoch) at the start of each pass.
        self.generator = torch.Generator()
        self.aug = aug if train else None
        self.flip_first = None  # aug.hflip_alternate: (N,) bool, which images are flipped in even epochs
        self.mixer = None
        self.policy = None  # RandAugment or AutoAugment, applied per group of images
        self.pca = None
        if self.aug is not None:
            self._prepare_augmentation(self.aug, stats)

    def _prepare_augmentation(self, aug: AugConfig, stats) -> None:
        """Build what the batched augmentations reuse; ``aug`` and ``stats`` are checked already."""
        if aug.hflip_alternate:
            # Drawn once from the seed alone, on a stream no epoch uses, so the halves stay put all run.
            halves = torch.Generator().manual_seed(epoch_seed(self.seed, FLIP_HALVES_STREAM))
            self.flip_first = self._on_device(torch.rand(len(self.labels), generator=halves) < 0.5)
        self.policy = augment_policy(aug)
        if aug.pca_lighting > 0:
            eigvals = torch.tensor(stats.pca_eigvals, dtype=torch.float32, device=self.device)  # (3,)
            eigvecs = torch.tensor(stats.pca_eigvecs, dtype=torch.float32, device=self.device)  # (3, 3) columns
            self.pca = (eigvals, eigvecs)
        mixer = BatchMixer(aug, self.num_classes, generator=self.generator)
        self.mixer = mixer if mixer else None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentations the next pass yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches per pass."""
        count = len(self.labels)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    @property
    def left_out(self) -> int:
        """Images in no batch of a pass: with ``drop_last``, the remainder that does not fill a last batch (a
        different few each epoch when shuffled); 0 without it."""
        return len(self.labels) - len(self) * self.batch_size if self.drop_last else 0

    @property
    def smallest_batch(self) -> int:
        """Images in the smallest batch of a pass: the batch size, or a last short batch's images without
        ``drop_last``; 0 for a pass of no batch."""
        return smallest_batch([len(self.labels)], self.batch_size, self.drop_last)

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        count = len(self.labels)
        if self.shuffle:
            order = epoch_order(count, self.generator).to(self.device)
        else:
            order = torch.arange(count, device=self.device)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]  # (B,)
            x = convert_channels(self.images[index], self.channels)  # (B, C', H, W) uint8
            y = self.labels[index]  # (B,)
            if self.aug is not None:
                x, y = self._augment(x, y, index)
            else:
                x = self._normalise(x.to(torch.float32).div_(255))
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x.to(self.dtype), y

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, C, H, W) on the [0, 1] scale -> (x - mean) / std."""
        return x.sub_(self.mean).div_(self.std)

    def _on_device(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.device, non_blocking=True)

    def _augment(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training batch: uint8 (B, C, H, W) -> normalised float, labels maybe soft (B, K).

        ``index`` (B,) holds the images' positions in the split (for alternating flips).
        """
        aug, generator = self.aug, self.generator
        batch, _, height, width = x.shape
        # Geometry on uint8 (exact shifts) or resampled to float on the 0..255 scale (crops).
        if aug.crop == "translate" and aug.translate > 0:
            shifts = torch.randint(-aug.translate, aug.translate + 1, (2, batch), generator=generator)  # (dx, dy)
            x = translate_batch(x, shifts[0], shifts[1], aug.translate)  # checked on the CPU, then moved
        elif aug.crop == "scale":
            boxes = scale_crop_boxes(batch, height, width, aug.short_side, generator)
            x = crop_resize(x, self._on_device(boxes), (height, width))
        elif aug.crop == "resized":
            boxes = resized_crop_boxes(batch, height, width, aug.crop_scale, aug.crop_ratio, generator)
            x = crop_resize(x, self._on_device(boxes), (height, width))
        if self.flip_first is not None:  # alternating: image i flips in even epochs iff flip_first[i]
            x = flip_batch(x, self.flip_first[index] ^ bool(self.epoch % 2), dim=-1)
        elif aug.hflip > 0:
            x = flip_batch(x, self._on_device(torch.rand(batch, generator=generator) < aug.hflip), dim=-1)
        if aug.vflip > 0:
            x = flip_batch(x, self._on_device(torch.rand(batch, generator=generator) < aug.vflip), dim=-2)
        if self.policy is not None:
            if x.is_floating_point():  # a resampled crop: back to uint8, which the policies' ops expect
                x = x.round_().clamp_(0, 255).to(torch.uint8)
            x = self._apply_policy(x)
        x = x.to(torch.float32).div_(255)  # (B, C, H, W) in [0, 1]
        if aug.color_jitter > 0:
            low, high = max(0.0, 1 - aug.color_jitter), 1 + aug.color_jitter  # ColorJitter's factor range
            factors = torch.empty(3, batch).uniform_(low, high, generator=generator)  # brightness, contrast, saturation
            saturation = factors[2] if x.shape[1] == 3 else None  # saturation needs colour
            x = color_jitter_batch(x, factors[0], factors[1], saturation)
        if self.pca is not None:
            alpha = torch.randn(batch, 3, generator=generator) * aug.pca_lighting  # (B, 3) ~ N(0, sigma)
            offset = pca_lighting_offset(self._on_device(alpha), *self.pca)  # (B, 3) RGB shift per image
            x = x.add_(offset[:, :, None, None]).clamp_(0, 1)
        x = self._normalise(x)
        if aug.erasing > 0:
            boxes = erasing_boxes(batch, height, width, aug.erasing, aug.erasing_scale, generator)
            # 0 after normalisation: the normalisation's mean (torchvision's value=0), the data's mean only with
            # data.normalize=dataset (Zhong et al. 2020); black with none, as pipeline.build_sample_transform does.
            x = x.masked_fill_(box_mask(self._on_device(boxes), height, width)[:, None], 0)
        if self.mixer is not None:
            x, y = self.mixer(x, y)  # draws from self.generator only (BatchMixer forks torch's global state)
        return x, y

    def _apply_policy(self, x: torch.Tensor) -> torch.Tensor:
        """v2.RandAugment (or v2.AutoAugment) on uint8 groups of :data:`RANDAUGMENT_GROUP` images, one op draw
        per group.

        The compromise: torchvision draws the operations per call, so images of a group share them
        (magnitudes' signs too). Batches are shuffled, so groups differ from epoch to epoch.
        """
        global_seed = int(torch.randint(2**62, (1,), generator=self.generator))
        pieces = []
        with torch.random.fork_rng(devices=[]):  # the policies draw from the global CPU generator
            torch.default_generator.manual_seed(global_seed)
            for start in range(0, x.shape[0], RANDAUGMENT_GROUP):
                pieces.append(self.policy(x[start : start + RANDAUGMENT_GROUP]))
        return torch.cat(pieces)
