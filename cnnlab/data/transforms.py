"""Augmentation presets and the per-image torchvision pipeline.

A preset is a starting point; any field set in :class:`~cnnlab.config.AugConfig` overrides it.
Presets adapt to the image: crops on small images are pad-and-crop shifts (the CIFAR recipe),
on large ones ResNet's short-side scale augmentation or Inception's resized crops; horizontal flips
are off for data where a mirror changes the label (digits); PCA lighting only on RGB images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from cnnlab.config import AugConfig
from cnnlab.errors import CnnlabError

PRESETS = ("none", "light", "standard", "strong")
CROPS = ("none", "translate", "resized", "scale")
SMALL_IMAGE = 64  # pixels: at or below this side, crops are pad-and-crop shifts instead of rescaling crops
RESNET_CROP = 224  # pixels: the crop size ResNet's short-side range [256, 480] was written for


def _preset_values(preset: str, image_size: int, channels: int, hflip_safe: bool) -> dict:
    """The preset's value for every field, adapted to the image side, channels and data set."""
    small = image_size <= SMALL_IMAGE
    off = dict(
        hflip=0.0, vflip=0.0, crop="none", translate=0, crop_scale=(0.08, 1.0), short_side=(256, 480),
        color_jitter=0.0, pca_lighting=0.0, randaugment_n=0, randaugment_m=9, erasing=0.0,
        mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0, label_smoothing=0.0,
    )
    if preset == "none":
        return off
    values = dict(off)
    values["hflip"] = 0.5 if hflip_safe else 0.0
    # 4 pixels on 32x32 (He et al. 2016, CIFAR), 3 on 28x28: an eighth of the side.
    values["translate"] = max(1, round(image_size / 8))
    values["crop"] = "translate" if small else "scale"
    if preset == "light":
        return values
    values["color_jitter"] = 0.2
    values["label_smoothing"] = 0.1
    if not small and channels == 3:
        values["pca_lighting"] = 0.1  # AlexNet's value
    if preset == "standard":
        return values
    # strong: RandAugment(2, 9) as in Cubuk et al. 2020, cutout, and mixup or CutMix on half the batches.
    values["crop"] = "translate" if small else "resized"
    values["randaugment_n"] = 2
    values["erasing"] = 0.25
    values["mixup_alpha"] = 0.2
    values["cutmix_alpha"] = 1.0
    values["mix_prob"] = 0.5
    return values


def resolve_aug(aug: AugConfig | str, image_size: int, channels: int = 3, hflip_safe: bool = True) -> AugConfig:
    """Fill every ``None`` field of ``aug`` from its preset, and check the values.

    ``image_size`` is the side the model sees (pixels); ``hflip_safe`` is False for data whose
    labels change under a mirror (digits). Returns a new AugConfig with no ``None`` left.
    """
    if isinstance(aug, str):
        aug = AugConfig(preset=aug)
    if aug.preset not in PRESETS:
        raise CnnlabError(f"Unknown augmentation preset '{aug.preset}': choose one of {', '.join(PRESETS)}.")
    preset = _preset_values(aug.preset, image_size, channels, hflip_safe)
    given = {f.name: getattr(aug, f.name) for f in fields(aug) if getattr(aug, f.name) is not None}
    resolved = replace(aug, **{**preset, **{k: v for k, v in given.items() if k in preset}})
    _check(resolved, image_size, channels)
    return resolved


def _check(aug: AugConfig, image_size: int, channels: int) -> None:
    problems = []
    for name in ("hflip", "vflip", "erasing", "mix_prob"):
        if not 0.0 <= getattr(aug, name) <= 1.0:
            problems.append(f"{name}={getattr(aug, name)} is a probability and must lie in [0, 1]")
    for name in ("color_jitter", "pca_lighting", "mixup_alpha", "cutmix_alpha", "translate", "randaugment_n"):
        if getattr(aug, name) < 0:
            problems.append(f"{name}={getattr(aug, name)} must not be negative")
    if aug.crop not in CROPS:
        problems.append(f"crop='{aug.crop}' is not one of {', '.join(CROPS)}")
    if not 0 <= aug.randaugment_m <= 30:
        problems.append(f"randaugment_m={aug.randaugment_m} must lie in 0..30")
    if not 0.0 <= aug.label_smoothing < 1.0:
        problems.append(f"label_smoothing={aug.label_smoothing} must lie in [0, 1)")
    for name in ("crop_scale", "erasing_scale"):
        low, high = getattr(aug, name)
        if not 0.0 < low <= high <= 1.0:
            problems.append(f"{name}={getattr(aug, name)} must be an area fraction range 0 < low <= high <= 1")
    low, high = aug.crop_ratio
    if not 0.0 < low <= high:
        problems.append(f"crop_ratio={aug.crop_ratio} must be a range 0 < low <= high")
    low, high = aug.short_side
    if not RESNET_CROP <= low <= high:
        problems.append(f"short_side={aug.short_side} must be a range {RESNET_CROP} <= low <= high (pixels at a 224 crop)")
    if aug.pca_lighting > 0 and channels != 3:
        problems.append(f"pca_lighting needs RGB images but the data has {channels} channel(s); set it to 0")
    if aug.crop == "translate" and aug.translate >= image_size:
        problems.append(f"translate={aug.translate} pixels is not smaller than the image side {image_size}")
    if problems:
        raise CnnlabError("Bad augmentation settings: " + "; ".join(problems) + ".")


def describe_aug(aug: AugConfig) -> dict:
    """Resolved settings as a plain dict (for run folders and ``--json``)."""
    return asdict(aug)


def pca_lighting_offset(alpha, eigvals, eigvecs):
    """AlexNet's colour offset per image: ``eigvecs @ (alpha * eigvals)``.

    Krizhevsky et al. 2012, section 4.1: to each RGB pixel add ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T``
    where ``p_i, l_i`` are the eigenvectors (columns of ``eigvecs``, (3, 3)) and eigenvalues
    (``eigvals``, (3,)) of the training set's RGB covariance (pixels in [0, 1]) and ``a_i`` is drawn
    once per image from N(0, 0.1). ``alpha`` is (B, 3); returns the offsets, (B, 3).
    """
    return (alpha * eigvals) @ eigvecs.T


class BatchMixer:
    """Mixup or CutMix on whole batches, with probability ``mix_prob`` per batch.

    torchvision's v2.MixUp / v2.CutMix do the mixing (one Beta draw per batch, as in both papers);
    with both on, one of them is picked per batch. ``__call__(x, y)`` takes x (B, C, H, W) float and
    y (B,) int64 and returns x and either y unchanged or soft targets (B, K) float.
    """

    def __init__(self, aug: AugConfig, num_classes: int, generator=None):
        from torchvision.transforms import v2

        self.mix_prob = aug.mix_prob
        self.generator = generator
        self.choices = []
        if aug.mixup_alpha > 0:
            self.choices.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
        if aug.cutmix_alpha > 0:
            self.choices.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))

    def __bool__(self) -> bool:
        return bool(self.choices)

    def __call__(self, x, y):
        import torch

        if not self.choices:
            return x, y
        draw = torch.rand(2, generator=self.generator)  # [mix or not, which mixer]
        if draw[0].item() >= self.mix_prob:
            return x, y
        mixer = self.choices[min(int(draw[1].item() * len(self.choices)), len(self.choices) - 1)]
        return mixer(x, y)
