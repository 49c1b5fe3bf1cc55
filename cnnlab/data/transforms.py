"""Augmentation presets: what a run's augmentations are, checked and resolved for its images.

A preset is a starting point; any field set in :class:`~cnnlab.config.AugConfig` overrides it.
Presets adapt to the image: crops on small images are pad-and-crop shifts (the CIFAR recipe),
on large ones ResNet's short-side scale augmentation or Inception's resized crops; horizontal flips
are off for data where a mirror changes the label (digits); PCA lighting only on RGB images.

The augmentations themselves run in two pipelines: per image for images read from files
(:func:`cnnlab.data.pipeline.build_sample_transform`, torchvision v2 transforms) and per batch for data
held in memory (:class:`cnnlab.data.memory.MemoryLoader`); :class:`BatchMixer` then mixes whole batches.
This module imports no torchvision (about a second): it is read by every training run, and torchvision
is imported only where a run's augmentations need it (mixing, RandAugment, resampled crops, files).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional
from dataclasses import fields, replace

import torch

from cnnlab.config import RESNET_CROP, AugConfig, check_section_types
from cnnlab.errors import CnnlabError, counted, whole_number

PRESETS = ("none", "light", "standard", "strong")
CROPS = ("none", "translate", "resized", "scale")
# torchvision's v2.AutoAugmentPolicy values (a test compares them), named here so that checking a config
# imports no torchvision
AUTOAUGMENT_POLICIES = ("none", "imagenet", "cifar10", "svhn")
SMALL_IMAGE = 64  # pixels: at or below this side, crops are pad-and-crop shifts instead of rescaling crops


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
    # An eighth of the side: 4 pixels on 32x32 (He et al. 2016, CIFAR), round(3.5) = 4 on 28x28; at least one
    # pixel, but less than the side (a 1-pixel image cannot shift: translate 0)
    values["translate"] = min(max(1, round(image_size / 8)), image_size - 1)
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

    Idempotent: a field that is set is kept, so a resolved AugConfig (the one a run records in its
    config.yaml and checkpoints) resolves to itself and only has its values checked again.
    """
    if isinstance(aug, str):
        aug = AugConfig(preset=aug)
    if not isinstance(aug, AugConfig):
        raise CnnlabError(f"resolve_aug takes a preset name ({', '.join(PRESETS)}) or an AugConfig, got "
                          f"{type(aug).__name__} {aug!r:.60}.")
    if whole_number(image_size) is None or whole_number(image_size) < 1:
        # checked here: the presets derive their shifts from it (0 gave "translate=-1 must not be negative")
        raise CnnlabError(f"image_size must be a whole number of at least 1 (the side the model sees, in pixels), "
                          f"got {image_size!r:.60}.")
    image_size = whole_number(image_size)
    # Each field's type and finiteness, as a config file's are checked (a NaN passes every range check below and
    # turned colour jitter off in silence; '0.5' for hflip failed inside a comparison), on a copy: the caller's
    # AugConfig is left as given
    aug = replace(aug)
    check_section_types("aug", aug)  # a preset, crop or policy among its choices too
    preset = _preset_values(aug.preset, image_size, channels, hflip_safe)
    given = {f.name: getattr(aug, f.name) for f in fields(aug) if getattr(aug, f.name) is not None}
    if aug.hflip_alternate and "hflip" not in given and not hflip_safe:
        # The preset's hflip is 0 here on purpose: "set hflip=0.5" (the general advice) would mirror the labels away
        raise CnnlabError("Bad augmentation settings: aug.hflip_alternate flips every image in every other epoch, but the "
                          "presets leave horizontal flips off for this data, where a mirror image changes the label "
                          "(a mirrored digit is another symbol, or none; a mirrored gray synthetic image is another "
                          "class's). "
                          "Leave hflip_alternate off.")
    resolved = replace(aug, **{**preset, **{k: v for k, v in given.items() if k in preset}})
    _check(resolved, image_size, channels)
    return resolved


def unresolved_fields(aug: AugConfig) -> list[str]:
    """The fields of ``aug`` still left to its preset (None); empty for a resolved AugConfig."""
    return [f.name for f in fields(aug) if getattr(aug, f.name) is None]


def unused_aug_settings(aug: AugConfig, resolved: AugConfig, channels: int = 3, hflip_safe: bool = True,
                        image_size: Optional[int] = None) -> list[str]:
    """Notes on the fields set in ``aug`` that its resolution ``resolved`` (:func:`resolve_aug`) never reads,
    or that go against the data (``channels`` and ``hflip_safe`` as :func:`resolve_aug` takes them).

    ``translate`` shifts only with crop=translate, ``crop_scale`` and ``crop_ratio`` shape crop=resized only,
    ``erasing_scale`` sizes the box of erasing only,
    ``short_side`` the range of crop=scale only, ``randaugment_m`` needs ``randaugment_n`` > 0 and
    ``mix_prob`` mixup or CutMix: each set where the crop or switch it belongs to is off would change
    nothing without a word (a preset picks the crop from the image size). ``color_jitter``'s saturation
    needs RGB colour, so on other data only brightness and contrast move. An ``hflip`` above 0 on data
    whose presets leave flips off (a mirrored digit is another symbol; digits and gray synthetic data) is done as
    asked, with a note.
    An ``aug`` with no field left to its preset is a resolved record (a run's config.yaml given again). Given
    the ``image_size`` the run sees, its fields whose value is not the one its preset picks for this data count as
    set: those set in the record or by ``--set`` over it, and those its preset picked for other data (a record
    given with another ``--data``), so a repeat of a run the notes had nothing to say about stays quiet. Without
    ``image_size`` nothing is said for a record.
    """
    if not unresolved_fields(aug):
        if image_size is None:
            return []
        picked = _preset_values(aug.preset, image_size, channels, hflip_safe)
        aug = replace(aug, **{name: None for name, value in picked.items() if _same(getattr(aug, name), value)})
    notes = []
    for name, crop in (("translate", "translate"), ("crop_scale", "resized"), ("short_side", "scale")):
        if getattr(aug, name) is not None and resolved.crop != crop:
            notes.append(f"aug.{name}={getattr(aug, name)} is not used: it applies to crop={crop}, and this run's "
                         f"crop is {resolved.crop}{_crop_origin(aug, resolved)}; set aug.crop={crop} to use it")
    if list(aug.crop_ratio) != list(AugConfig.crop_ratio) and resolved.crop != "resized":
        notes.append(f"aug.crop_ratio={list(aug.crop_ratio)} is not used: it applies to crop=resized, and this run's "
                     f"crop is {resolved.crop}{_crop_origin(aug, resolved)}; set aug.crop=resized to use it")
    if list(aug.erasing_scale) != list(AugConfig.erasing_scale) and resolved.erasing == 0:
        notes.append(f"aug.erasing_scale={list(aug.erasing_scale)} is not used: random erasing is off "
                     "(aug.erasing=0); set aug.erasing (0.25 in the strong preset) to use it")
    if aug.randaugment_m is not None and resolved.randaugment_n == 0:
        notes.append(f"aug.randaugment_m={aug.randaugment_m} is not used: RandAugment is off "
                     "(aug.randaugment_n=0); set aug.randaugment_n (2 in the strong preset) to use it")
    if aug.mix_prob is not None and resolved.mixup_alpha == 0 and resolved.cutmix_alpha == 0:
        notes.append(f"aug.mix_prob={aug.mix_prob} is not used: mixup and CutMix are off (aug.mixup_alpha and "
                     "aug.cutmix_alpha are 0); set one of them to use it")
    mixing = [name for name in ("mixup_alpha", "cutmix_alpha") if getattr(aug, name) and getattr(resolved, name) > 0]
    if mixing and resolved.mix_prob == 0:  # the reverse: mixing set, and no batch ever drawn to be mixed
        notes.append(f"aug.{mixing[0]}={getattr(aug, mixing[0])} mixes no batch: aug.mix_prob=0 draws none to mix; "
                     "set aug.mix_prob above 0 (1.0 mixes every batch) to use it")
    elif aug.mix_prob == 0 and (resolved.mixup_alpha > 0 or resolved.cutmix_alpha > 0):  # over a preset's mixing
        notes.append(f"aug.mix_prob=0 mixes no batch: the '{resolved.preset}' preset's mixup (alpha "
                     f"{resolved.mixup_alpha:g}) and CutMix (alpha {resolved.cutmix_alpha:g}) are not used")
    if aug.color_jitter is not None and resolved.color_jitter > 0 and channels != 3:
        notes.append(f"aug.color_jitter={aug.color_jitter} moves brightness and contrast only: its saturation "
                     f"part needs RGB colour, and the images have {counted(channels, 'channel')}")
    if aug.hflip is not None and resolved.hflip > 0 and not hflip_safe:
        notes.append(f"aug.hflip={aug.hflip} mirrors training images, which the presets leave unflipped for this "
                     "data because a mirror image can change the label (a mirrored digit is another symbol, or "
                     "none; a mirrored gray synthetic image is another class's); set aug.hflip=0 unless every class "
                     "looks the same mirrored")
    return notes


def _same(recorded, picked) -> bool:
    """Whether a record's value is the preset's pick: a range reads back from YAML as a list, the preset's is a
    tuple."""
    if isinstance(recorded, (list, tuple)) and isinstance(picked, (list, tuple)):
        return list(recorded) == list(picked)
    return recorded == picked


def _crop_origin(aug: AugConfig, resolved: AugConfig) -> str:
    """Where the crop came from, when the person did not set it: the preset, which chose it by image size."""
    if aug.crop is not None:
        return ""
    return f" (the '{resolved.preset}' preset's choice for this image size)"


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
    if aug.autoaugment not in AUTOAUGMENT_POLICIES:
        problems.append(f"autoaugment='{aug.autoaugment}' is not one of {', '.join(AUTOAUGMENT_POLICIES)}")
    elif aug.autoaugment != "none" and aug.randaugment_n > 0:
        problems.append(f"autoaugment={aug.autoaugment} and randaugment_n={aug.randaugment_n} are two policies of "
                        "the same kind (RandAugment replaced AutoAugment's searched policy): set autoaugment=none or "
                        "randaugment_n=0")
    if not 0.0 <= aug.label_smoothing < 1.0:
        problems.append(f"label_smoothing={aug.label_smoothing} must lie in [0, 1)")
    for name in ("crop_scale", "erasing_scale"):
        low, high = getattr(aug, name)
        if not 0.0 < low <= high <= 1.0:
            problems.append(f"{name}={getattr(aug, name)} must be an area fraction range 0 < low <= high <= 1")
    # An erased box is smaller than the image each way (torchvision's rule): its sides, rounded to whole pixels,
    # are at most S - 1, so its area is below (S - 0.5)^2 of S^2. A range that starts there never draws a box that
    # fits, and erasing would do nothing in silence.
    largest = ((image_size - 0.5) / image_size) ** 2
    low = aug.erasing_scale[0]
    if aug.erasing > 0 and largest <= low <= 1.0:
        problems.append(f"erasing_scale={list(aug.erasing_scale)} draws boxes of at least {low:g} of the image, and no "
                        f"box that large fits inside a {image_size}x{image_size} image (the largest is below "
                        f"{largest:.3f}): no image would be erased; lower its first value")
    low, high = aug.crop_ratio
    if not 0.0 < low <= high:
        problems.append(f"crop_ratio={aug.crop_ratio} must be a range 0 < low <= high")
    low, high = aug.short_side
    if not RESNET_CROP <= low <= high:
        problems.append(f"short_side={aug.short_side} must be a range {RESNET_CROP} <= low <= high (pixels at a 224 crop)")
    if aug.pca_lighting > 0 and channels != 3:
        problems.append(f"pca_lighting needs RGB images but the data has {counted(channels, 'channel')}; set it to 0")
    if aug.hflip_alternate and aug.hflip != 0.5:
        problems.append(f"hflip_alternate flips each image in every other epoch, a flip rate of one half, but hflip="
                        f"{aug.hflip}; set hflip=0.5 or leave hflip_alternate off")
    if aug.crop == "translate" and aug.translate >= image_size:
        problems.append(f"translate={aug.translate} pixels is not smaller than the image side {image_size}")
    if problems:
        # each problem starts with its field's name: named as the config names it (--set aug.hflip=...)
        raise CnnlabError("Bad augmentation settings: " + "; ".join(f"aug.{problem}" for problem in problems) + ".")


def pca_lighting_offset(alpha, eigvals, eigvecs):
    """AlexNet's colour offset per image: ``eigvecs @ (alpha * eigvals)``.

    Krizhevsky et al. 2012, section 4.1: to each RGB pixel add ``[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T``
    where ``p_i, l_i`` are the eigenvectors (columns of ``eigvecs``, (3, 3)) and eigenvalues
    (``eigvals``, (3,)) of the training set's RGB covariance (pixels in [0, 1]) and ``a_i`` is drawn
    once per image from N(0, 0.1). ``alpha`` is (B, 3); returns the offsets, (B, 3).
    """
    return (alpha * eigvals) @ eigvecs.T


def short_side_sizes(short_side: tuple[int, int], image_size: int) -> list[int]:
    """ResNet's short-side range, written for a 224 crop, scaled to ``image_size`` (pixels).

    One entry per integer L in [low, high], so picking an entry uniformly draws L uniformly as in
    He et al. 2016 (L ~ U[256, 480] for 224); each entry is round(L * S / 224) and never below S.
    """
    low, high = short_side
    return [max(image_size, round(length * image_size / RESNET_CROP)) for length in range(low, high + 1)]


def augment_policy(aug: AugConfig):
    """RandAugment or AutoAugment (torchvision v2 transforms) as ``aug`` (resolved) asks, on uint8 images; None
    when both are off."""
    if aug.randaugment_n == 0 and aug.autoaugment == "none":
        return None
    from torchvision.transforms import v2  # here: only a run with either policy needs torchvision

    if aug.randaugment_n > 0:
        return v2.RandAugment(num_ops=aug.randaugment_n, magnitude=aug.randaugment_m)
    return v2.AutoAugment(v2.AutoAugmentPolicy(aug.autoaugment))


def shortest_side(size: int | tuple[int, int]) -> int:
    """A side (pixels) or the shorter of a (height, width) shape."""
    return size if isinstance(size, int) else min(size)


def check_pipeline_inputs(aug: AugConfig | None, image_size: int, channels: int, mean: Sequence[float],
                          std: Sequence[float], stats=None) -> AugConfig | None:
    """The checks both training pipelines (per image here, batched in :mod:`cnnlab.data.memory`) make first.

    ``mean``/``std`` need one value per output channel. ``aug`` (None: evaluation, nothing more to
    check) must be resolved (:func:`resolve_aug`; a hand-filled AugConfig may skip it): its values are
    checked again for ``image_size`` (short side, pixels) and ``channels``, and PCA lighting needs
    ``stats`` with the colour PCA. Returns ``aug``. Raises ValueError for an unresolved config (a
    programming error), CnnlabError for settings a person chose.
    """
    if len(mean) != channels or len(std) != channels:
        raise CnnlabError(f"Normalisation needs one mean and one std per channel ({channels}); got "
                          f"mean={tuple(mean)} and std={tuple(std)}. Recompute the statistics for this data.")
    if aug is None:
        return None
    missing = unresolved_fields(aug)
    if missing:
        raise ValueError(f"The augmentation pipelines need a resolved AugConfig (see resolve_aug); "
                         f"unset: {', '.join(missing)}")
    # Every field is set, so resolve_aug keeps them all and only runs the checks (crop name, ranges, RGB for PCA).
    aug = resolve_aug(aug, image_size, channels)
    if aug.pca_lighting > 0 and (getattr(stats, "pca_eigvals", None) is None
                                 or getattr(stats, "pca_eigvecs", None) is None):
        raise CnnlabError("pca_lighting needs the colour PCA of the training images (ChannelStats.pca_eigvals "
                          "and pca_eigvecs, computed for RGB data); compute the statistics with 3 channels "
                          "or set pca_lighting to 0.")
    return aug


class BatchMixer:
    """Mixup or CutMix on whole batches, with probability ``mix_prob`` per batch.

    torchvision's v2.MixUp / v2.CutMix do the mixing (one Beta draw per batch, as in both papers);
    with both on, one of them is picked per batch. ``__call__(x, y)`` takes x (B, C, H, W) float and
    y (B,) int64 and returns x and either y unchanged or soft targets (B, K) float.

    torchvision draws the mixing weight and the CutMix box from torch's global generator; here they
    run under a forked global state seeded from ``generator``, so a batch's mixing depends only on
    ``generator`` (reproducible per epoch) and the caller's global random state is left untouched.
    """

    def __init__(self, aug: AugConfig, num_classes: int, generator=None):
        self.mix_prob = aug.mix_prob
        self.generator = generator
        self.choices = []
        if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0:
            from torchvision.transforms import v2  # here: only a run that mixes needs torchvision
        if aug.mixup_alpha > 0:
            self.choices.append(v2.MixUp(alpha=aug.mixup_alpha, num_classes=num_classes))
        if aug.cutmix_alpha > 0:
            self.choices.append(v2.CutMix(alpha=aug.cutmix_alpha, num_classes=num_classes))

    def __bool__(self) -> bool:
        return bool(self.choices)

    def __call__(self, x, y):
        if not self.choices:
            return x, y
        draw = torch.rand(2, generator=self.generator)  # [mix or not, which mixer]
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        if draw[0].item() >= self.mix_prob:
            return x, y
        mixer = self.choices[min(int(draw[1].item() * len(self.choices)), len(self.choices) - 1)]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (torchvision draws the weight and box there): torch.manual_seed would
            # reseed every GPU as well, and fork_rng(devices=[]) does not restore them
            torch.default_generator.manual_seed(seed)
            return mixer(x, y)
