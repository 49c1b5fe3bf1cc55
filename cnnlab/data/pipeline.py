"""The per-image torchvision pipeline for images read from files.

:func:`build_sample_transform` turns a resolved :class:`~cnnlab.config.AugConfig`
(:func:`cnnlab.data.transforms.resolve_aug`) into torchvision v2 transforms for one image at a time
(any size in, S x S out), plus :class:`PCALighting` (AlexNet's colour augmentation, which torchvision
lacks) and :class:`ScaleCrop` (ResNet's scale crop with torchvision's draws, cropping a very elongated
image before enlarging it). Its order is the one the in-memory batched loader
(:mod:`cnnlab.data.memory`) follows: uint8 geometry (crop, flips) -> RandAugment (uint8) -> float
[0, 1] -> colour jitter -> PCA lighting -> clamp [0, 1] -> normalise -> erasing.

It lives apart from the presets in :mod:`cnnlab.data.transforms` because importing torchvision takes
about a second: a run on in-memory data without RandAugment, crops by resampling or mixing never
imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnnlab.config import AugConfig
from cnnlab.data.images import resize_and_crop, resize_square
from cnnlab.data.transforms import augment_policy, check_pipeline_inputs, pca_lighting_offset, short_side_sizes, shortest_side
from cnnlab.errors import CnnlabError


def _is_plain_tensor(inpt: Any) -> bool:
    """A torch.Tensor that is not a tv_tensor (v2 treats the first one in a sample as the image)."""
    return type(inpt) is torch.Tensor


class PCALighting(v2.Transform):
    """AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, section 4.1) as a v2 transform.

    Works on one float RGB image (3, H, W) or a batch (..., 3, H, W) with values in [0, 1]: every
    image gets its own ``alpha ~ N(0, sigma)`` (3,) and every pixel of it moves by the same RGB offset
    :func:`pca_lighting_offset` (alpha, eigvals, eigvecs). ``eigvals`` (3,) and ``eigvecs`` (3x3,
    column i is eigenvector i) are those of :class:`~cnnlab.data.stats.ChannelStats`. The result is
    clamped back to [0, 1] unless ``clamp=False``, so the later normalisation sees valid pixels.
    Only image tensors are touched; labels, boxes and masks pass through.
    """

    # Pure tensors (the first one in a sample, by v2's rule) and tv_tensors.Image; nothing else.
    _transformed_types = (_is_plain_tensor, tv_tensors.Image)

    def __init__(self, sigma: float, eigvals: Sequence[float], eigvecs: Sequence[Sequence[float]], *,
                 clamp: bool = True):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"PCALighting: sigma={sigma} is a standard deviation and must not be negative")
        eigvals = torch.as_tensor(eigvals, dtype=torch.float32)
        eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32)
        if eigvals.shape != (3,) or eigvecs.shape != (3, 3):
            raise ValueError(f"PCALighting needs eigvals (3,) and eigvecs (3, 3); got {tuple(eigvals.shape)} "
                             f"and {tuple(eigvecs.shape)}")
        self.sigma = float(sigma)
        self.clamp = clamp
        # Buffers follow .to(device) and survive pickling into DataLoader workers.
        self.register_buffer("eigvals", eigvals, persistent=False)
        self.register_buffer("eigvecs", eigvecs, persistent=False)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # One alpha per image: the leading (batch) dimensions of the first image, then RGB.
        batch_shape = flat_inputs[0].shape[:-3] if flat_inputs else ()
        alpha = torch.randn(*batch_shape, 3) * self.sigma  # (..., 3); global RNG, seeded per DataLoader worker
        return {"alpha": alpha}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point() or inpt.ndim < 3 or inpt.shape[-3] != 3:
            raise TypeError(f"PCALighting needs float RGB images (..., 3, H, W) in [0, 1]; got dtype "
                            f"{inpt.dtype}, shape {tuple(inpt.shape)} (convert with ToDtype(scale=True) first)")
        if self.sigma == 0:
            return inpt
        eigvals = self.eigvals.to(inpt.device)
        eigvecs = self.eigvecs.to(inpt.device)
        offset = pca_lighting_offset(params["alpha"].to(inpt.device), eigvals, eigvecs)  # (..., 3)
        out = inpt.as_subclass(torch.Tensor) + offset.to(inpt.dtype)[..., :, None, None]  # (..., 3, H, W)
        if self.clamp:
            out = out.clamp_(0.0, 1.0)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class ConvertChannels(v2.Transform):
    """Bring an image (..., C, H, W) to ``channels``: gray to RGB repeats the channel, RGB to gray
    takes ITU-R 601 luminance (torchvision's rgb_to_grayscale). Same channel count: unchanged."""

    _transformed_types = (_is_plain_tensor, tv_tensors.Image)

    def __init__(self, channels: int):
        super().__init__()
        if channels not in (1, 3):
            raise CnnlabError(f"channels={channels} is not supported: use 1 (gray) or 3 (RGB).")
        self.channels = channels

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        have = inpt.shape[-3]
        if have == self.channels:
            return inpt
        if have == 1 and self.channels == 3:
            return self._call_kernel(F.grayscale_to_rgb, inpt)
        if have == 3 and self.channels == 1:
            return self._call_kernel(F.rgb_to_grayscale, inpt, num_output_channels=1)
        raise CnnlabError(f"Cannot convert an image with {have} channels to {self.channels}: "
                          "use images with 1 (gray) or 3 (RGB) channels.")


class CentreSquare(v2.Transform):
    """uint8 (C, H, W) of any size to (C, S, S): the short side resized to S and centre-cropped, by
    :func:`cnnlab.data.images.resize_square`, the in-memory store's function, so both hold the same pixels
    (and a very elongated image is cropped before it is enlarged, not enlarged whole)."""

    _transformed_types = (_is_plain_tensor, tv_tensors.Image)

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = inpt.as_subclass(torch.Tensor)
        batch = image.reshape(-1, *image.shape[-3:])  # (N, C, H, W), one image or several
        out = resize_square(batch, self.size).reshape(*image.shape[:-2], self.size, self.size)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


class ScaleCrop(v2.Transform):
    """ResNet's scale augmentation on uint8 (C, H, W) of any size: the short side resized to a length drawn
    from ``short_sides``, then a random ``size`` crop (an int S: S x S; or (H, W)).

    The draws and the pixels of torchvision's ``RandomShortestSize(short_sides)`` followed by
    ``RandomCrop(size, pad_if_needed=True, padding_mode="edge")``: the same calls on torch's global
    generator in the same order, the same truncated resize (which can leave the short side a pixel below
    the crop; that pixel repeats the edge, as RandomCrop pads it). The pixels come from
    :func:`cnnlab.data.images.resize_and_crop`, which crops a very elongated image before enlarging it:
    RandomShortestSize enlarged it whole, and a 100000x1 strip at S = 32 took gigabytes for a 32 x 32 crop.
    Images less than twice as long as wide are resized whole by torchvision, pixel for pixel as before;
    longer ones are within 1 grey level of it.
    """

    _transformed_types = (_is_plain_tensor, tv_tensors.Image)

    def __init__(self, short_sides: Sequence[int], size: int | tuple[int, int]):
        super().__init__()
        self.short_sides = list(short_sides)
        self.size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        # RandomShortestSize: one length drawn, the ratio applied to both sides and truncated.
        short = self.short_sides[int(torch.randint(len(self.short_sides), ()))]
        ratio = short / min(height, width)
        resized = (int(height * ratio), int(width * ratio))
        # RandomCrop(pad_if_needed=True): a side short of the crop by d pixels is padded by d at both ends,
        # then the offset is drawn in the padded image, rows first; here it is kept in resized coordinates.
        top_left = []
        for length, crop in zip(resized, self.size):
            pad = max(0, crop - length)
            padded = length + 2 * pad
            offset = int(torch.randint(0, padded - crop + 1, size=())) if padded > crop else 0
            top_left.append(offset - pad)
        return {"resized": resized, "top_left": tuple(top_left)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = inpt.as_subclass(torch.Tensor)
        batch = image.reshape(-1, *image.shape[-3:])  # (N, C, H, W), one image or several
        out = resize_and_crop(batch, params["resized"], self.size, top_left=params["top_left"])
        out = out.reshape(*image.shape[:-2], *self.size)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def _first_view(size: int | tuple[int, int]) -> list[v2.Transform]:
    """The S x S the in-memory store holds (:class:`CentreSquare`); a bucket's image, fitted to its (H, W)
    before the pipeline, passes the resize and crop unchanged."""
    if isinstance(size, int):
        return [CentreSquare(size)]
    return [v2.Resize(size, antialias=True), v2.CenterCrop(size)]


def build_sample_transform(aug: AugConfig, image_size: int | tuple[int, int], mean: Sequence[float],
                           std: Sequence[float], *, train: bool, channels: int, stats=None) -> v2.Compose:
    """The per-image torchvision v2 pipeline: uint8 (C, H, W) of any size -> float32 (channels, S, S).

    ``image_size`` S is a side (square output, the short side resized to S) or a (height, width)
    shape (an aspect-ratio bucket: the image, already fitted to that shape, keeps it).

    ``aug`` must be resolved (:func:`resolve_aug`); it is only read when ``train``. ``mean``/``std``
    are per channel on the [0, 1] scale; ``stats`` (:class:`~cnnlab.data.stats.ChannelStats`)
    supplies the colour PCA when ``aug.pca_lighting > 0``. The order follows the in-memory loader:
    channels -> uint8 geometry (crop, flips) -> RandAugment or AutoAugment (uint8) -> float [0, 1] -> colour
    jitter -> PCA lighting (clamped to [0, 1]) -> normalise -> random erasing. Mixup/CutMix act on
    batches (:class:`BatchMixer`). Evaluation: resize the short side to S, centre-crop S x S, normalise.
    """
    size = int(image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    checked = check_pipeline_inputs(aug if train else None, shortest_side(size), channels, mean, std, stats)
    # Channel conversion first, so every later step sees the channel count the model expects.
    steps: list[v2.Transform] = [ConvertChannels(channels)]
    if train:
        aug = checked
        steps += _geometry(aug, size)
        policy = augment_policy(aug)
        if policy is not None:
            steps.append(policy)
    else:
        # The same short-side resize and centre crop the in-memory store uses (images.resize_square).
        steps += _first_view(size)
    steps.append(v2.ToDtype(torch.float32, scale=True))  # uint8 0..255 -> float 0..1
    if train and aug.color_jitter > 0:
        jitter = aug.color_jitter
        # Saturation needs colour; on gray images it is left out (a factor range of 0 means off).
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter if channels == 3 else 0))
    if train and aug.pca_lighting > 0:
        steps.append(PCALighting(aug.pca_lighting, stats.pca_eigvals, stats.pca_eigvecs, clamp=True))
    steps.append(v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]))
    if train and aug.erasing > 0:
        # After normalisation, so the erased box holds 0: the normalisation's mean (Zhong et al. 2020 fill with
        # the data's mean), which is the training split's mean only for data.normalize=dataset (ImageNet's for
        # imagenet, black for none).
        steps.append(v2.RandomErasing(p=aug.erasing, scale=aug.erasing_scale, value=0))
    return v2.Compose(steps)


def _geometry(aug: AugConfig, size: int | tuple[int, int]) -> list[v2.Transform]:
    """uint8 crop and flips for training; output (C, S, S) (or (C, H, W) for a shape) whatever the input size."""
    steps: list[v2.Transform] = []
    if aug.crop == "resized":
        # Inception crop on the original image: area fraction and aspect ratio drawn, resized to S.
        steps.append(v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio, antialias=True))
    elif aug.crop == "scale":
        # ResNet: short side to L * S / 224, then a random S x S crop (RandomShortestSize + RandomCrop's
        # draws and pixels, cropped before enlarging where the image is very elongated).
        steps.append(ScaleCrop(short_side_sizes(aug.short_side, shortest_side(size)), size))
    else:
        # none / translate: first S x S exactly as the in-memory store holds it.
        steps += _first_view(size)
        if aug.crop == "translate" and aug.translate > 0:
            # CIFAR recipe: zero-pad `translate` pixels on each side, random S x S crop = a shift of
            # up to `translate` pixels each way with a zero border.
            steps.append(v2.RandomCrop(size, padding=aug.translate, pad_if_needed=True, fill=0))
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=aug.hflip))
    if aug.vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=aug.vflip))
    return steps
