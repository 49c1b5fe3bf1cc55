"""Run configuration as dataclasses, one per concern, each field with its unit and reason.

Fields left ``None`` are filled later from context: the augmentation preset fills the augmentation
fields, the data source fills the image size. :func:`cnnlab.data.transforms.resolve_aug` shows the
resolved values, so a run folder always records what was actually used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DataConfig:
    """Where the images come from and how they are split."""

    spec: str = "digits"  # digits | fashion-mnist | folder:PATH | csv:FILE | synthetic
    data_dir: Optional[str] = None  # folder holding fashion-mnist's idx files (else the search path)
    image_size: Optional[int] = None  # pixels, side of the square the model sees; None: the source's own
    channels: Optional[int] = None  # 1 or 3 to convert the data; None: the source's own
    val_fraction: float = 0.1  # share of the training images held out when the source has no val split
    seed: int = 0  # seeds every split, so the same spec always gives the same images per split
    in_memory: Optional[bool] = None  # hold decoded uint8 images in one tensor; None: when it fits
    memory_limit_mb: int = 2048  # MiB the in-memory tensor may take before files are read per batch
    buckets: Optional[str] = None  # aspect-ratio buckets for varied shapes, "4:3,1:1,3:4" (width:height)


@dataclass
class AugConfig:
    """Training augmentations. ``None`` fields come from the preset, adapted to the image size."""

    preset: str = "standard"  # none | light | standard | strong
    hflip: Optional[float] = None  # probability of a horizontal flip (0 for data where it changes the label)
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
    erasing: Optional[float] = None  # probability of erasing one random box (cutout) per image
    erasing_scale: tuple[float, float] = (0.02, 0.25)  # area fraction range of the erased box
    mixup_alpha: Optional[float] = None  # mixup's Beta(alpha, alpha) (0 = off)
    cutmix_alpha: Optional[float] = None  # CutMix's Beta(alpha, alpha) (0 = off)
    mix_prob: Optional[float] = None  # probability a batch is mixed at all when mixup/CutMix are on
    label_smoothing: Optional[float] = None  # target smoothing for the loss (applied by the trainer)
