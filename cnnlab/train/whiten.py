"""A first convolution whose filters whiten the image patches it sees (``model.whiten``).

Why. A randomly initialised first layer spends the first part of training learning to see edges
and blobs; directions of small pixel variance get small gradients, so it learns them slowly.
Fast small-image training (airbench, Keller Jordan 2024, after Coates & Ng 2011) instead sets the
first convolution's filters from the data before the first step: the principal directions of the
training images' k x k patches, each scaled by 1/sqrt(its variance), so that every filter's output
has unit variance and the filters are uncorrelated (a whitening of the patches). Each direction
is used twice, as ``+v`` and ``-v``, so that the ReLU after it keeps both signs: ``out_channels``
filters take the top ``out_channels / 2`` directions.

What. :func:`patch_whitening_filters` computes those filters from a batch of normalised images;
:func:`whiten_first_conv` writes them into a model's first ``nn.Conv2d`` (its bias, if any, set to
zero). With ``model.whiten=frozen`` the filters then stay fixed for the whole run (no gradient, no
optimiser state, see :class:`cnnlab.train.finetune.FineTunePlan`); with ``trained`` they are only
the starting point. ``frozen_block`` fixes the filters' whole conv-norm-act block: the conv's bias and
the norm's scale and shift too (at 0, 1 and 0: the norm only standardises). Then nothing before the
second conv needs a gradient, so backward stops there: the first block, at full resolution, costs
no backward pass, and the second conv no input gradient (the fast recipe trains 1.15x the images
a second in fp32). The ReLU after it loses no sign of the signal, as each direction comes with its
negative; what is lost is a learned threshold and scale per filter. A block without a norm (LeNet-5's
conv -> tanh) keeps its filters and their bias fixed.

The engine takes the patches from :data:`WHITEN_IMAGES` training images, shuffled with the run's seed
and normalised as the loaders normalise them, before the first step; a resumed run reads no image: it
loads its filters from the checkpoint like every other weight.

The covariance is the patches' second moment ``P^T P / n`` (not centred), as airbench computes it:
the images are already normalised to zero mean per channel.

Memory. Every valid patch of 5,000 images is 3.4 M patches of 9 values at 28x28, but at 3x224x224 with
a 7x7 stem it would be 240 M patches of 147 values (280 GB in float64). So the sample is bounded twice:
:func:`whitening_images` takes at most :data:`WHITEN_VALUES` pixel values (5,000 images at 28x28 or
32x32, 222 at 3x224x224), and :func:`patch_whitening_filters` sums the second moment over chunks of
images, with at most :data:`WHITEN_MACS` multiply-adds: beyond that, it gathers an equal random share
of each image's positions (drawn with the run's seed), about 200,000 patches for a 3-channel 7x7
stem. Fashion-MNIST and CIFAR-10 at 3x3 stay under both bounds and use every patch of 5,000 images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import CHOICES
from cnnlab.errors import CnnlabError
from cnnlab.models._base import first_conv

WHITEN_MODES = CHOICES[("model", "whiten")]  # none | frozen | frozen_block | trained
WHITEN_IMAGES = 5000  # training images the patch statistics come from: 3.4 M 3x3 patches at 28x28
WHITEN_VALUES = 2**25  # pixel values of the sample at most (128 MiB in float32): fewer images when they are large
WHITEN_MACS = 2**32  # multiply-adds of the second moment at most, patches x (C*kh*kw)^2 (about a second)
CHUNK_VALUES = 2**24  # float64 patch values unfolded at once (128 MiB)
WHITEN_EPS = 5e-4  # added to each variance before 1/sqrt: a near-constant direction is not blown up (airbench's value)


@dataclass(frozen=True)
class WhitenReport:
    """What :func:`whiten_first_conv` did: which layer, from how much data, and what the filters keep."""

    mode: str  # frozen | frozen_block | trained
    layer: str  # dotted name of the convolution, e.g. 'features.0.conv'
    fixed_parameters: tuple[str, ...]  # what stays fixed for the run (fixed_parameter_names): () with trained
    filters: int  # its out_channels: 2 x directions
    kernel: tuple[int, int]
    in_channels: int
    images: int  # images the patches came from; 0 for a resumed run, whose filters come from its checkpoint
    patches: int
    variances: tuple[float, ...]  # every direction's patch variance, largest first (C * kh * kw of them)

    @property
    def directions(self) -> int:
        return self.filters // 2

    @property
    def kept_share(self) -> float:
        """Share of the patch variance along the directions the filters use."""
        return sum(self.variances[: self.directions]) / sum(self.variances)

    def text(self) -> str:
        kh, kw = self.kernel
        rest = [name for name in self.fixed_parameters if name != f"{self.layer}.weight"]
        then = {"frozen": "frozen for the whole run", "trained": "trained from there",
                "frozen_block": f"frozen for the whole run with the rest of their block ({', '.join(rest) or 'nothing else'})"
                }[self.mode]
        if not self.images:
            return (f"model.whiten={self.mode}: {self.layer}'s {self.filters} {kh}x{kw} filters, whitened when the run "
                    f"started, come from the checkpoint; {then}")
        return (f"model.whiten={self.mode}: {self.layer}'s {self.filters} {kh}x{kw} filters are the top {self.directions} "
                f"principal directions of {self.patches:,} patches from {self.images:,} training images (and their "
                f"negatives), each scaled to unit output variance; they span {self.kept_share:.1%} of the patch "
                f"variance; {then}")


def patch_whitening_filters(images: torch.Tensor, kernel: tuple[int, int], out_channels: int,
                            dilation: tuple[int, int] = (1, 1), eps: float = WHITEN_EPS,
                            max_patches: Optional[int] = None, seed: int = 0):
    """Whitening filters for ``images`` (N, C, H, W), normalised as the model sees them.

    Returns ``(weight, variances, patches)``: ``weight`` (out_channels, C, kh, kw) holds the top
    ``out_channels / 2`` principal directions ``v_i`` of the images' kh x kw patches scaled by
    ``1 / sqrt(lambda_i + eps)``, followed by their negatives; ``variances`` (C * kh * kw,) are all
    the ``lambda_i``, largest first; ``patches`` is how many patches they came from: every valid
    position, or, when that is more than ``max_patches`` (default: WHITEN_MACS / (C*kh*kw)^2),
    ``ceil(max_patches / N)`` random positions of each image (without repeats; ``seed`` draws them).
    Convolving a patch with filter i gives its coordinate along ``v_i`` in units of that direction's
    standard deviation.
    """
    channels = images.shape[1]
    dims = channels * kernel[0] * kernel[1]
    if out_channels % 2 or not 2 <= out_channels <= 2 * dims:
        raise ValueError(f"out_channels={out_channels} must be even and at most {2 * dims} "
                         f"(2 x the {dims} directions of {channels}-channel {kernel[0]}x{kernel[1]} patches)")
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]  # pixels a (dilated) kernel spans
    if len(images) == 0 or any(size < span for size, span in zip(images.shape[-2:], extent)):
        raise ValueError(f"{len(images)} images of {tuple(images.shape[-2:])} pixels hold no {kernel[0]}x{kernel[1]} "
                         f"patch (dilation {tuple(dilation)})")
    grid = [size - span + 1 for size, span in zip(images.shape[-2:], extent)]  # valid positions along H, W
    positions = grid[0] * grid[1]  # L per image
    if max_patches is None:
        max_patches = max(1, WHITEN_MACS // dims**2)
    per_image = min(positions, math.ceil(max_patches / len(images)))
    generator = torch.Generator().manual_seed(seed)
    # images taken at once: their unfolded patches, or their random draws and sampled patches, in CHUNK_VALUES
    chunk = max(1, CHUNK_VALUES // (positions * dims if per_image == positions else positions + per_image * dims))
    second_moment = torch.zeros(dims, dims, dtype=torch.float64)
    patches = 0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].double()
        if per_image == positions:
            # (n, C*kh*kw, L) -> (n*L, C*kh*kw): every valid patch position of each image, one row each
            rows = F.unfold(block, kernel, dilation=dilation).transpose(1, 2).reshape(-1, dims)
        else:
            rows = _sampled_patches(block, kernel, dilation, grid, per_image, generator)
        second_moment += rows.T @ rows
        patches += len(rows)
    second_moment /= patches  # (dims, dims)
    variances, vectors = torch.linalg.eigh(second_moment)  # ascending; column i is direction i
    variances, vectors = variances.flip(0), vectors.flip(1)  # largest first
    directions = out_channels // 2
    scaled = vectors[:, :directions].T / torch.sqrt(variances[:directions, None].clamp(min=0) + eps)  # (directions, dims)
    weight = torch.cat([scaled, -scaled]).reshape(out_channels, channels, *kernel)
    return weight.float(), variances.clamp(min=0), patches


def _sampled_patches(images: torch.Tensor, kernel: tuple[int, int], dilation: tuple[int, int],
                     grid: list[int], per_image: int, generator: torch.Generator) -> torch.Tensor:
    """(n * per_image, C*kh*kw) patches of ``images`` (n, C, H, W) at ``per_image`` random valid positions of
    each image, without repeats, in F.unfold's value order (channel, then kernel row, then column). Only the
    chosen patches are gathered, so the cost follows ``per_image``, not the image size."""
    n, channels = images.shape[:2]
    (kh, kw), (dh, dw) = kernel, dilation
    keep = torch.rand(n, grid[0] * grid[1], generator=generator).argsort(dim=1)[:, :per_image]  # (n, P)
    top, left = keep // grid[1], keep % grid[1]  # (n, P) each: a patch's top-left pixel
    ys = (top[..., None] + dh * torch.arange(kh))[..., :, None]  # (n, P, kh, 1)
    xs = (left[..., None] + dw * torch.arange(kw))[..., None, :]  # (n, P, 1, kw)
    batch = torch.arange(n)[:, None, None, None]  # (n, 1, 1, 1)
    # Advanced indices split by a slice put their broadcast shape first: (n, P, kh, kw, C)
    picked = images[batch, :, ys, xs]
    return picked.permute(0, 1, 4, 2, 3).reshape(n * per_image, channels * kh * kw)


def whiten_first_conv(model: nn.Module, images: torch.Tensor, mode: str, seed: int = 0) -> WhitenReport:
    """Set ``model``'s first convolution to :func:`patch_whitening_filters` of ``images`` (N, C, H, W)
    (``seed`` draws the patch positions when the images hold more patches than it uses).

    ``mode``: ``frozen``, ``frozen_block`` or ``trained``. Freezing is the caller's
    (:attr:`WhitenReport.fixed_parameters`), so that a fine-tuning plan that sets ``requires_grad`` per stage
    each epoch keeps the filters fixed.
    """
    if mode not in WHITEN_MODES or mode == "none":
        raise CnnlabError(f"model.whiten='{mode}' must be frozen, frozen_block or trained to set the filters.")
    found = first_conv(model)
    if found is None:
        raise CnnlabError("model.whiten sets the filters of the model's first convolution, but this model has no "
                          "nn.Conv2d: set model.whiten=none.")
    name, conv = found
    fixed = fixed_parameter_names(model, mode)
    dims = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    if conv.groups != 1 or conv.out_channels % 2 or conv.out_channels > 2 * dims:
        raise CnnlabError(
            f"model.whiten needs a first convolution with an even number of filters, at most twice its "
            f"{dims} patch directions ({conv.in_channels}-channel {conv.kernel_size[0]}x{conv.kernel_size[1]} patches), "
            f"and no groups; {name} has {conv.out_channels} filters and groups={conv.groups}. Choose a first stage "
            f"of at most {2 * dims} channels{_width_option_hint(model)}, or set model.whiten=none.")
    try:
        weight, variances, patches = patch_whitening_filters(images, conv.kernel_size, conv.out_channels,
                                                             conv.dilation, seed=seed)
    except ValueError as err:
        raise CnnlabError(f"model.whiten cannot set {name}'s filters: {err}. Use larger images "
                          "(data.image_size) or set model.whiten=none.") from err
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.device))
        if conv.bias is not None:
            conv.bias.zero_()  # the filters' outputs have mean ~0 on normalised images
    return WhitenReport(mode=mode, layer=name, fixed_parameters=fixed, filters=conv.out_channels,
                        kernel=tuple(conv.kernel_size), in_channels=conv.in_channels, images=images.shape[0],
                        patches=patches, variances=tuple(float(v) for v in variances))


def resumed_whiten_report(model: nn.Module, mode: str) -> WhitenReport:
    """The report for a resumed run: its checkpoint holds the whitened filters, so no image is read; the
    report names the layer, and with ``frozen`` or ``frozen_block`` which parameters stay fixed."""
    name, conv = first_conv(model)
    return WhitenReport(mode=mode, layer=name, fixed_parameters=fixed_parameter_names(model, mode),
                        filters=conv.out_channels, kernel=tuple(conv.kernel_size), in_channels=conv.in_channels,
                        images=0, patches=0, variances=())


def _width_option_hint(model: nn.Module) -> str:
    """Where the first stage's width is set, for the models whose option the message can name: vgg_mini's table."""
    return " (vgg_mini: model.options.cfg)" if getattr(model, "model_name", None) == "vgg_mini" else ""


def fixed_parameter_names(model: nn.Module, mode: str) -> tuple[str, ...]:
    """Dotted names of the parameters ``model.whiten=mode`` keeps fixed for the run: the first conv's filters
    with ``frozen``; with ``frozen_block`` every parameter of the conv-norm-act block that conv opens (the
    filters, a bias, the norm's scale and shift, a PReLU's slopes); none with ``trained``."""
    from cnnlab.layers.blocks import ConvNormAct

    if mode not in ("frozen", "frozen_block"):
        return ()
    conv_name, _ = first_conv(model)
    if mode == "frozen":
        return (f"{conv_name}.weight",)
    block_name, _, _ = conv_name.rpartition(".")
    block = model.get_submodule(block_name) if block_name else model
    if not isinstance(block, ConvNormAct) or next(iter(block.children())) is not model.get_submodule(conv_name):
        raise CnnlabError(
            f"model.whiten=frozen_block fixes the whole conv -> norm -> act block of the first convolution, but "
            f"{conv_name} is not the first layer of such a block (cnnlab's ConvNormAct; {type(block).__name__} "
            "holds it). Use model.whiten=frozen, which fixes the filters alone.")
    return tuple(f"{block_name}.{name}" for name, _ in block.named_parameters())


def whitening_images(dataset, stats, seed: int, count: int = WHITEN_IMAGES,
                     max_values: int = WHITEN_VALUES) -> torch.Tensor:
    """Up to ``count`` training images (N, C, H, W) on the CPU, shuffled with ``seed`` and normalised as
    the loaders normalise them (no augmentation): the sample the patch statistics come from. Large
    images are fewer: at most ``max_values`` pixel values in all, and at least one image. Batches of
    aspect-ratio buckets (data.buckets) have their own heights and widths: each is centre-cropped to the
    smallest of them, whose patches are still the images' own."""
    from cnnlab.data.loaders import make_loader

    count = min(count, max(1, max_values // (dataset.channels * dataset.image_size**2)))
    loader = make_loader(dataset, "train", stats, train=False, shuffle=True, batch_size=min(count, 500),
                         seed=seed)
    batches, taken = [], 0
    for x, _ in loader:
        batches.append(x[: count - taken].float().contiguous())
        taken += len(batches[-1])
        if taken >= count:
            break
    height, width = min(x.shape[-2] for x in batches), min(x.shape[-1] for x in batches)
    return torch.cat([_centre_crop(x, height, width) for x in batches])


def _centre_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre ``height`` x ``width`` of (N, C, H, W) images at least that large."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]
