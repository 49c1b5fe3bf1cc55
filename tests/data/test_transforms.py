"""Augmentation presets, AlexNet PCA lighting, the per-image v2 pipeline and batch mixing.

References are independent of the code under test: hand loops for the AlexNet formula, hand
normalisation of known pixels, explicit shifts/flips of the input, torchvision's documented
luminance weights, and pixel bookkeeping for mixup/CutMix.
"""

import pickle
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
from torchvision import tv_tensors

from cnnlab.config import AugConfig
from cnnlab.data.sources import resize_square
from cnnlab.data.stats import ChannelStats
from cnnlab.data.pipeline import PCALighting, build_sample_transform
from cnnlab.data.transforms import (
    AUTOAUGMENT_POLICIES,
    PRESETS,
    BatchMixer,
    pca_lighting_offset,
    resolve_aug,
    short_side_sizes,
    unresolved_fields,
    unused_aug_settings,
)
from cnnlab.errors import CnnlabError

DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
MEAN3 = (0.485, 0.456, 0.406)
STD3 = (0.229, 0.224, 0.225)
# An orthonormal basis (columns) and descending eigenvalues, like ChannelStats of real RGB data.
EIGVECS = [[0.5774, -0.7071, 0.4082], [0.5774, 0.0, -0.8165], [0.5774, 0.7071, 0.4082]]
EIGVALS = (0.2175, 0.0188, 0.0045)


def rgb_stats() -> ChannelStats:
    return ChannelStats(mean=MEAN3, std=STD3, pixels=1, pca_eigvals=EIGVALS, pca_eigvecs=EIGVECS)


def random_image(channels: int, height: int, width: int, low: int = 0) -> torch.Tensor:
    return torch.randint(low, 256, (channels, height, width), dtype=torch.uint8)


def aug_from_none(**overrides) -> AugConfig:
    """Everything off, then only ``overrides`` on: isolates one augmentation."""
    return replace(resolve_aug("none", 32), **overrides)


def hand_normalise(image: torch.Tensor, mean, std) -> torch.Tensor:
    """(x / 255 - mean) / std per channel, for a uint8 (C, H, W) image."""
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    return (image.double() / 255 - mean.double()) / std.double()


# ---------------------------------------------------------------------------------------------
# resolve_aug


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_small_images_get_translate_crops_of_an_eighth_of_the_side(size):
    for preset in ("light", "standard", "strong"):
        aug = resolve_aug(preset, size, channels=1)
        assert aug.crop == "translate"
        assert aug.translate == max(1, round(size / 8))  # 4 on 28 and 32 (the CIFAR recipe)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_resolves_at_the_smallest_image_sides(preset):
    # the preset's own values must pass its checks: a 1-pixel side cannot take a 1-pixel shift
    for size in (1, 2, 3):
        aug = resolve_aug(preset, size, channels=1)
        assert aug.translate < size


@pytest.mark.parametrize("aug, size, message", [
    ("light", 0, "image_size must be a whole number of at least 1.*got 0"),  # was "translate=-1 must not be negative"
    ("light", "32", "image_size must be a whole number of at least 1.*got '32'"),  # was a TypeError in a comparison
    (5, 32, r"resolve_aug takes a preset name \(none, light, standard, strong\) or an AugConfig, got int 5"),
])
def test_resolve_aug_names_an_argument_it_cannot_take(aug, size, message):
    with pytest.raises(CnnlabError, match=message):
        resolve_aug(aug, size)


def test_bad_settings_are_named_as_the_config_names_them(cli):
    """`--set aug.hflip=2` was answered "hflip=2.0 ...", `--set data.image_size=0` "image_size=0 ...": the key
    to fix is named with its section."""
    from cnnlab.config import AugConfig, DataConfig
    from cnnlab.data import load_source

    with pytest.raises(CnnlabError, match=r"Bad augmentation settings: aug.hflip=2.0 is a probability .*; "
                                          r"aug.label_smoothing=1.0 must lie in \[0, 1\)"):
        resolve_aug(AugConfig(preset="light", hflip=2.0, label_smoothing=1.0), 32)
    for field, words in ((dict(image_size=0), "data.image_size=0 must be a positive number of pixels"),
                         (dict(channels=2), r"data.channels=2: images can be delivered with 1 \(gray\) or 3")):
        with pytest.raises(CnnlabError, match=words):
            load_source(DataConfig(spec="digits", **field))
    code, _, err = cli(["check", "--data", "digits", "--set", "data.image_size=0"])
    assert code == 2 and "data.image_size=0 must be a positive number of pixels" in err, err


def test_large_images_get_rescaling_crops():
    assert resolve_aug("light", 224).crop == "scale"
    assert resolve_aug("standard", 224).crop == "scale"
    assert resolve_aug("strong", 224).crop == "resized"
    assert resolve_aug("none", 224).crop == "none"


def test_hflip_only_when_a_mirror_keeps_the_label():
    assert resolve_aug("standard", 32, hflip_safe=True).hflip == 0.5
    assert resolve_aug("standard", 32, hflip_safe=False).hflip == 0.0
    assert resolve_aug("strong", 224, hflip_safe=False).hflip == 0.0
    assert resolve_aug("standard", 32).vflip == 0.0  # vertical flips are never in a preset


def test_alternating_flips_on_data_a_mirror_relabels_do_not_advise_flipping():
    # digits: the preset's hflip is 0 because a mirrored digit is another symbol; "set hflip=0.5" would be wrong advice
    with pytest.raises(CnnlabError, match="mirror image changes the label") as refused:
        resolve_aug(AugConfig(preset="standard", hflip_alternate=True), 32, channels=1, hflip_safe=False)
    assert "hflip=0.5" not in str(refused.value)
    # a person who sets hflip=0.5 on such data anyway has chosen flips: alternating them is allowed
    assert resolve_aug(AugConfig(hflip=0.5, hflip_alternate=True), 32, channels=1, hflip_safe=False).hflip == 0.5
    with pytest.raises(CnnlabError, match="set hflip=0.5"):  # elsewhere a flip rate the person chose is the problem
        resolve_aug(AugConfig(hflip=0.2, hflip_alternate=True), 32, channels=1, hflip_safe=True)


def test_pca_lighting_only_on_large_rgb_images():
    assert resolve_aug("standard", 224, channels=3).pca_lighting == 0.1  # AlexNet's value
    assert resolve_aug("standard", 224, channels=1).pca_lighting == 0.0
    assert resolve_aug("standard", 32, channels=3).pca_lighting == 0.0
    assert resolve_aug("light", 224, channels=3).pca_lighting == 0.0


def test_none_preset_turns_everything_off():
    aug = resolve_aug("none", 224)
    assert (aug.hflip, aug.crop, aug.color_jitter, aug.pca_lighting, aug.randaugment_n, aug.erasing) == (
        0.0, "none", 0.0, 0.0, 0, 0.0)
    assert (aug.mixup_alpha, aug.cutmix_alpha, aug.label_smoothing) == (0.0, 0.0, 0.0)


def test_strong_preset_turns_on_randaugment_erasing_and_mixing():
    aug = resolve_aug("strong", 32)
    assert (aug.randaugment_n, aug.randaugment_m) == (2, 9)
    assert aug.erasing > 0 and aug.mixup_alpha > 0 and aug.cutmix_alpha > 0
    assert 0 < aug.mix_prob < 1


@pytest.mark.parametrize("preset", PRESETS)
def test_resolved_config_has_no_unset_field_and_resolving_again_keeps_it(preset):
    aug = resolve_aug(preset, 224, channels=3)
    assert all(getattr(aug, f.name) is not None for f in fields(aug))
    assert resolve_aug(aug, 224, channels=3) == aug


def test_explicit_fields_override_the_preset():
    aug = resolve_aug(AugConfig(preset="strong", hflip=0.0, crop="scale", erasing=0.0, color_jitter=0.4), 224)
    assert (aug.hflip, aug.crop, aug.erasing, aug.color_jitter) == (0.0, "scale", 0.0, 0.4)
    assert aug.randaugment_n == 2  # unset fields still come from the preset
    aug = resolve_aug(AugConfig(preset="none", vflip=0.5, translate=2, crop="translate"), 32)
    assert (aug.vflip, aug.translate, aug.crop, aug.hflip) == (0.5, 2, "translate", 0.0)


@pytest.mark.parametrize(
    "field, value, size, channels",
    [
        ("hflip", 1.5, 32, 3),
        ("vflip", -0.1, 32, 3),
        ("erasing", 2.0, 32, 3),
        ("mix_prob", -1.0, 32, 3),
        ("color_jitter", -0.2, 32, 3),
        ("mixup_alpha", -1.0, 32, 3),
        ("translate", -1, 32, 3),
        ("crop", "zoom", 32, 3),
        ("randaugment_m", 31, 32, 3),
        ("label_smoothing", 1.0, 32, 3),
        ("crop_scale", (0.5, 0.2), 32, 3),
        ("erasing_scale", (0.0, 0.2), 32, 3),
        ("crop_ratio", (2.0, 1.0), 32, 3),
        ("short_side", (100, 200), 224, 3),
        ("pca_lighting", 0.1, 224, 1),
    ],
)
def test_bad_values_name_the_field(field, value, size, channels):
    with pytest.raises(CnnlabError, match=field):
        resolve_aug(AugConfig(preset="light", **{field: value}), size, channels=channels)


def test_translate_must_be_smaller_than_the_image():
    with pytest.raises(CnnlabError, match="translate"):
        resolve_aug(AugConfig(preset="none", crop="translate", translate=28), 28, channels=1)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(CnnlabError, match="heavy") as error:
        resolve_aug("heavy", 32)
    assert all(name in str(error.value) for name in PRESETS)


# ---------------------------------------------------------------------------------------------
# PCA lighting


def test_pca_offset_matches_the_alexnet_formula_written_as_loops():
    torch.manual_seed(0)
    alpha = torch.randn(5, 3) * 0.1
    eigvals = torch.tensor(EIGVALS)
    eigvecs = torch.tensor(EIGVECS)
    got = pca_lighting_offset(alpha, eigvals, eigvecs)
    # Krizhevsky et al. 2012: add [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T to each RGB pixel.
    expected = torch.zeros(5, 3)
    for image in range(5):
        for colour in range(3):
            for component in range(3):
                expected[image, colour] += (
                    EIGVECS[colour][component] * alpha[image, component].item() * EIGVALS[component])
    assert got.shape == (5, 3)
    torch.testing.assert_close(got, expected)


def test_pca_lighting_shifts_every_pixel_of_an_image_by_one_offset():
    torch.manual_seed(1)
    sigma = 0.1
    lighting = PCALighting(sigma, EIGVALS, EIGVECS)
    images = torch.full((400, 3, 4, 5), 0.5)  # constant, far from the clamp at 0 and 1
    out = lighting(images)
    shift = out - images  # (B, 3, 4, 5)
    per_image = shift[:, :, :1, :1]  # (B, 3, 1, 1): the offset of the top-left pixel
    torch.testing.assert_close(shift, per_image.expand_as(shift))
    # The offset lies in the eigenvector basis: recover alpha = (P^T offset) / lambda per image.
    eigvecs = torch.tensor(EIGVECS)
    alpha = (per_image.flatten(1) @ eigvecs) / torch.tensor(EIGVALS)  # (B, 3)
    torch.testing.assert_close(pca_lighting_offset(alpha, torch.tensor(EIGVALS), eigvecs), per_image.flatten(1))
    # One draw per image and component, each ~ N(0, sigma).
    assert alpha.unique(dim=0).shape[0] == len(images)
    assert alpha.std(dim=0).sub(sigma).abs().max() < 0.2 * sigma
    assert alpha.mean(dim=0).abs().max() < 0.2 * sigma


def test_pca_lighting_with_sigma_zero_is_the_identity():
    images = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(PCALighting(0.0, EIGVALS, EIGVECS)(images), images, rtol=0, atol=0)


def test_pca_lighting_clamps_and_touches_only_images():
    image = tv_tensors.Image(torch.ones(3, 4, 4))
    label = torch.tensor(7)
    out, out_label = PCALighting(5.0, (1.0, 1.0, 1.0), torch.eye(3).tolist())(image, label)
    assert isinstance(out, tv_tensors.Image)
    assert out.min() >= 0 and out.max() <= 1
    assert out_label is label
    with pytest.raises(TypeError, match="float"):
        PCALighting(0.1, EIGVALS, EIGVECS)(torch.zeros(3, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# build_sample_transform


@pytest.mark.parametrize("channels, mean, std", [(3, MEAN3, STD3), (1, (0.3,), (0.2,))])
def test_eval_of_a_square_image_is_exactly_the_normalised_pixels(channels, mean, std):
    image = random_image(channels, 16, 16)
    transform = build_sample_transform(AugConfig(), 16, mean, std, train=False, channels=channels)
    out = transform(image)
    assert out.dtype == torch.float32 and out.shape == (channels, 16, 16)
    torch.testing.assert_close(out.double(), hand_normalise(image, mean, std), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 40, 90), (3, 90, 40), (3, 17, 17)])
def test_eval_of_any_size_matches_the_in_memory_store(shape):
    image = random_image(*shape)
    transform = build_sample_transform(AugConfig(), 24, MEAN3, STD3, train=False, channels=3)
    stored = resize_square(image.unsqueeze(0), 24)[0]  # what the in-memory loader holds
    torch.testing.assert_close(transform(image).double(), hand_normalise(stored, MEAN3, STD3), rtol=0, atol=1e-6)


def test_training_with_preset_none_equals_eval():
    image = random_image(3, 50, 30)
    train = build_sample_transform(resolve_aug("none", 24), 24, MEAN3, STD3, train=True, channels=3)
    evaluate = build_sample_transform(AugConfig(), 24, MEAN3, STD3, train=False, channels=3)
    torch.testing.assert_close(train(image), evaluate(image), rtol=0, atol=0)


@pytest.mark.parametrize("field, dim", [("hflip", -1), ("vflip", -2)])
def test_flip_probability_one_always_mirrors(field, dim):
    image = random_image(3, 16, 16)
    transform = build_sample_transform(aug_from_none(**{field: 1.0}), 16, MEAN3, STD3, train=True, channels=3)
    expected = hand_normalise(image.flip(dim), MEAN3, STD3)
    for _ in range(3):
        torch.testing.assert_close(transform(image).double(), expected, rtol=0, atol=1e-6)


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved by (dy, dx) pixels with a zero border, the same size."""
    out = torch.zeros_like(image)
    height, width = image.shape[-2:]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = image[
        :, max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)]
    return out


def test_translate_is_a_shift_with_a_zero_border():
    torch.manual_seed(2)
    size, pad = 12, 3
    image = random_image(3, size, size, low=1)  # no zero pixels, so the border is recognisable
    transform = build_sample_transform(aug_from_none(crop="translate", translate=pad), size, (0.0,) * 3, (1.0,) * 3,
                                       train=True, channels=3)
    seen = set()
    for _ in range(40):
        out = transform(image)
        assert out.shape == (3, size, size)
        matches = [(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)
                   if torch.allclose(out.double(), shifted(image, dy, dx).double() / 255, atol=1e-6)]
        assert len(matches) == 1, "the output is not a shifted copy of the input"
        seen.add(matches[0])
    assert len(seen) > 5  # the shift is random


def test_short_side_sizes_scale_resnet_range_to_the_image():
    assert short_side_sizes((256, 480), 224) == list(range(256, 481))
    sizes = short_side_sizes((256, 480), 32)
    assert len(sizes) == 480 - 256 + 1  # one entry per L, so L is uniform
    assert (min(sizes), max(sizes)) == (round(256 / 7), round(480 / 7))  # L * 32 / 224 = L / 7


@pytest.mark.parametrize("crop", ["scale", "resized"])
@pytest.mark.parametrize("shape", [(3, 40, 90), (3, 90, 40), (3, 33, 33), (3, 10, 20), (1, 24, 25)])
def test_rescaling_crops_give_the_model_size_from_any_input(crop, shape):
    channels = shape[0]
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.5,), (0.25,))
    transform = build_sample_transform(aug_from_none(crop=crop), 24, mean, std, train=True, channels=channels)
    for _ in range(5):
        out = transform(random_image(*shape))
        assert out.shape == (channels, 24, 24) and out.dtype == torch.float32


def test_scale_crop_with_the_smallest_range_keeps_a_square_image():
    # L = 224 scales the short side to S itself, so the S x S crop of an S x S image is all of it.
    image = random_image(3, 20, 20)
    transform = build_sample_transform(aug_from_none(crop="scale", short_side=(224, 224)), 20, MEAN3, STD3,
                                       train=True, channels=3)
    torch.testing.assert_close(transform(image).double(), hand_normalise(image, MEAN3, STD3), rtol=0, atol=1e-6)
    # RandomShortestSize truncates: a short side of 77 or 154 scaled by 20 / h becomes 19 pixels.
    truncated = [height for height in (77, 154) if int(height * (20 / height)) < 20]
    assert truncated == [77, 154]
    for height in [20, 21, *truncated]:
        assert transform(random_image(3, height, 160)).shape == (3, 20, 20)


def _torchvision_scale_crop(aug: AugConfig, size: int):
    """The scale crop as torchvision composes it, the reference: the whole image resized, then cropped."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomShortestSize(short_side_sizes(aug.short_side, size), antialias=True),
                       v2.RandomCrop(size, pad_if_needed=True, padding_mode="edge")])


@pytest.mark.parametrize("height, width, size, tolerance", [
    # below 2:1 the enlarged image is resized whole, as torchvision does: the same pixels
    (32, 32, 32, 0), (30, 40, 32, 0), (40, 30, 32, 0), (375, 500, 224, 0), (90, 160, 64, 0), (28, 28, 24, 0),
    (77, 160, 20, 0), (154, 300, 20, 0),  # truncation leaves some short sides one pixel short: edge repeated
    # longer ones are cropped first: torch's uint8 kernel rounds its weights to 16-bit fixed point, this
    # path keeps them in float64, so a few pixels differ by 1 grey level
    (12, 40, 32, 1), (3, 100, 32, 1), (200, 11, 64, 1), (1, 300, 32, 1), (77, 400, 20, 1),
])
def test_scale_crop_draws_and_pixels_are_torchvision_s(height, width, size, tolerance):
    """Same seeds, same crops: the draws are torchvision's in the same order, and the global generator is left
    where torchvision leaves it; the pixels are equal, or within 1 grey level where cropped first."""
    aug = aug_from_none(crop="scale")
    transform = build_sample_transform(aug, size, (0.0,) * 3, (1.0,) * 3, train=True, channels=3)
    reference = _torchvision_scale_crop(aug, size)
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(height * width),
                          dtype=torch.uint8)
    for seed in range(12):
        torch.manual_seed(seed)
        out = (transform(image) * 255).round().to(torch.int32)  # mean 0, std 1: the pixels / 255
        after = torch.rand(1)
        torch.manual_seed(seed)
        expected = reference(image).to(torch.int32)
        assert torch.equal(torch.rand(1), after)  # the same number of draws
        assert out.shape == expected.shape == (3, size, size)
        assert (out - expected).abs().max() <= tolerance


def test_resized_crop_of_the_whole_area_keeps_a_square_image():
    image = random_image(3, 20, 20)
    aug = aug_from_none(crop="resized", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    transform = build_sample_transform(aug, 20, MEAN3, STD3, train=True, channels=3)
    torch.testing.assert_close(transform(image).double(), hand_normalise(image, MEAN3, STD3), rtol=0, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_gray_input_for_an_rgb_model_repeats_the_channel(train):
    gray = random_image(1, 16, 16)
    aug = resolve_aug("light", 16) if train else AugConfig()
    transform = build_sample_transform(aug, 16, (0.5,) * 3, (0.25,) * 3, train=train, channels=3)
    out = transform(gray)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=0)
    if not train:
        torch.testing.assert_close(out[0].double(), hand_normalise(gray, (0.5,), (0.25,))[0], rtol=0, atol=1e-6)


def test_rgb_input_for_a_gray_model_takes_the_luminance():
    rgb = random_image(3, 16, 16)
    transform = build_sample_transform(AugConfig(), 16, (0.0,), (1.0,), train=False, channels=1)
    out = transform(rgb)
    assert out.shape == (1, 16, 16)
    # ITU-R 601 luma (torchvision uses 0.2989 for red), truncated to uint8.
    red, green, blue = rgb.double()
    luma = (0.299 * red + 0.587 * green + 0.114 * blue) / 255
    assert (out[0].double() - luma).abs().max() <= 1.5 / 255


@pytest.mark.parametrize("normalize", ["none", "imagenet", "dataset"])
def test_the_erased_box_holds_the_normalisation_mean_black_without_normalisation(normalize):
    """docs/data.md says what erasing fills with for each data.normalize: the mean it normalises with,
    which is black for none (not the data's mean)."""
    from cnnlab.config import DataConfig
    from cnnlab.data.stats import resolve_normalization

    stats = ChannelStats(mean=(0.3, 0.5, 0.7), std=(0.2, 0.2, 0.2), pixels=1)
    norm = resolve_normalization(DataConfig(normalize=normalize), stats, 3)
    transform = build_sample_transform(aug_from_none(erasing=1.0, erasing_scale=(0.1, 0.2)), 16, norm.mean, norm.std,
                                       train=True, channels=3)
    torch.manual_seed(0)
    out = transform(random_image(3, 16, 16, low=1))  # no black pixel but the erased ones
    pixels = out * torch.tensor(norm.std)[:, None, None] + torch.tensor(norm.mean)[:, None, None]  # back to 0..1
    erased = (out == 0).all(dim=0)
    assert erased.any()
    fill = pixels[:, erased].mean(dim=1)
    expected = {"none": (0.0, 0.0, 0.0), "dataset": stats.mean}.get(normalize, norm.mean)
    torch.testing.assert_close(fill, torch.tensor(expected, dtype=fill.dtype), rtol=0, atol=1e-6)
    text = " ".join(DATA_DOC.read_text(encoding="utf-8").split())
    assert "erasing (filled with 0 after normalisation" in text and "and black with `none`" in text


def test_erasing_with_probability_one_leaves_one_zero_box():
    torch.manual_seed(3)
    size = 32
    aug = aug_from_none(erasing=1.0, erasing_scale=(0.05, 0.2))
    transform = build_sample_transform(aug, size, MEAN3, STD3, train=True, channels=3)
    for _ in range(10):
        # No pixel normalises to exactly 0 (mean * 255 is not an integer), so zeros are the erased box,
        # and they are zeros only if erasing runs after normalisation.
        image = random_image(3, size, size)
        out = transform(image)
        zero = (out == 0).all(dim=0)  # (S, S): erased in every channel
        rows = zero.any(dim=1).nonzero().flatten()
        cols = zero.any(dim=0).nonzero().flatten()
        assert len(rows) > 0, "nothing was erased"
        box = torch.zeros_like(zero)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(zero, box), "the erased pixels are not one rectangle"
        assert 0.03 <= zero.float().mean().item() <= 0.25  # the area fraction range, with rounding slack
        expected = hand_normalise(image, MEAN3, STD3)
        torch.testing.assert_close(out[:, ~zero].double(), expected[:, ~zero], rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_every_augmentation_together_gives_finite_images(channels):
    torch.manual_seed(4)
    mean, std = (MEAN3, STD3) if channels == 3 else ((0.5,), (0.25,))
    aug = replace(resolve_aug("strong", 64, channels=channels), color_jitter=0.4, vflip=0.5,
                  pca_lighting=0.1 if channels == 3 else 0.0)
    stats = rgb_stats() if channels == 3 else None
    transform = build_sample_transform(aug, 64, mean, std, train=True, channels=channels, stats=stats)
    pickle.loads(pickle.dumps(transform))  # DataLoader workers started with spawn need this
    for shape in [(channels, 64, 64), (channels, 80, 50), (3, 70, 70), (1, 70, 70)]:
        out = transform(random_image(*shape))
        assert out.shape == (channels, 64, 64) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_pca_lighting_inside_the_pipeline_acts_on_the_0_1_scale_before_normalising():
    torch.manual_seed(5)
    image = torch.randint(80, 176, (3, 16, 16), dtype=torch.uint8)  # mid-range, away from the clamp
    # Only the first component, (1, 1, 1) / sqrt(3): on the [0, 1] scale every channel moves equally;
    # had the offset been added after normalising, channels with different std would not.
    eigvecs = [  # orthonormal columns: grey axis, red-green, yellow-blue
        [3 ** -0.5, 2 ** -0.5, 6 ** -0.5],
        [3 ** -0.5, -(2 ** -0.5), 6 ** -0.5],
        [3 ** -0.5, 0.0, -2 * 6 ** -0.5],
    ]
    stats = ChannelStats(mean=MEAN3, std=STD3, pixels=1, pca_eigvals=(0.2, 0.0, 0.0), pca_eigvecs=eigvecs)
    transform = build_sample_transform(aug_from_none(pca_lighting=0.5), 16, MEAN3, STD3, train=True, channels=3,
                                       stats=stats)
    out = transform(image).double() * torch.tensor(STD3).view(3, 1, 1) + torch.tensor(MEAN3).view(3, 1, 1)
    shift = out - image.double() / 255  # (3, 16, 16) on the [0, 1] scale
    assert shift.abs().max() > 1e-3
    torch.testing.assert_close(shift, shift[:1, :1, :1].expand_as(shift), rtol=0, atol=1e-5)


def test_pca_lighting_without_the_colour_pca_is_a_user_error():
    aug = replace(resolve_aug("standard", 224), crop="none")
    with pytest.raises(CnnlabError, match="pca_lighting"):
        build_sample_transform(aug, 224, MEAN3, STD3, train=True, channels=3, stats=None)
    gray_stats = ChannelStats(mean=MEAN3, std=STD3, pixels=1)
    with pytest.raises(CnnlabError, match="pca_lighting"):
        build_sample_transform(aug, 224, MEAN3, STD3, train=True, channels=3, stats=gray_stats)


def test_pipeline_refuses_unresolved_or_bad_settings():
    with pytest.raises(ValueError, match="resolve_aug"):
        build_sample_transform(AugConfig(), 32, MEAN3, STD3, train=True, channels=3)
    with pytest.raises(CnnlabError, match="hflip"):
        build_sample_transform(aug_from_none(hflip=2.0), 32, MEAN3, STD3, train=True, channels=3)
    with pytest.raises(CnnlabError, match="mean"):
        build_sample_transform(AugConfig(), 32, (0.5,), (0.2,), train=False, channels=3)


# ---------------------------------------------------------------------------------------------
# BatchMixer


def mixer(**overrides) -> BatchMixer:
    return BatchMixer(aug_from_none(**overrides), num_classes=8, generator=torch.Generator().manual_seed(0))


def test_mixer_is_off_without_alphas():
    off = mixer(mix_prob=1.0)
    assert not off
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8)
    assert off(x, y) == (x, y)


def test_mix_prob_zero_never_mixes():
    mix = mixer(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=0.0)
    x, y = torch.rand(8, 3, 4, 4), torch.arange(8)
    for _ in range(20):
        out_x, out_y = mix(x, y)
        assert out_y.dtype == torch.int64 and torch.equal(out_y, y) and torch.equal(out_x, x)


def test_mix_prob_sets_the_share_of_mixed_batches():
    mix = mixer(mixup_alpha=1.0, mix_prob=0.3)
    x, y = torch.rand(8, 1, 2, 2), torch.arange(8)
    mixed = sum(mix(x, y)[1].ndim == 2 for _ in range(400))
    assert 0.22 < mixed / 400 < 0.38


def test_mixup_rows_are_the_convex_combinations_their_targets_say():
    torch.manual_seed(6)
    mix = mixer(mixup_alpha=0.4, mix_prob=1.0)
    x, y = torch.rand(8, 3, 5, 5), torch.arange(8)  # class k is image k, so targets index images
    for _ in range(5):
        out_x, soft = mix(x, y)
        assert soft.shape == (8, 8) and soft.dtype.is_floating_point
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
        assert (soft >= 0).all()
        lam = soft[0, 0]
        # Each row mixes its own image (weight lam) with the previous one in the batch (1 - lam).
        expected_weights = lam * torch.eye(8) + (1 - lam) * torch.eye(8).roll(-1, dims=1)
        torch.testing.assert_close(soft, expected_weights)
        # The images are the same combinations: out = W @ x, with W = the soft targets.
        torch.testing.assert_close(out_x.flatten(1), soft @ x.flatten(1))


def test_cutmix_weights_equal_the_pasted_area():
    torch.manual_seed(7)
    mix = mixer(cutmix_alpha=1.0, mix_prob=1.0)
    x, y = torch.rand(8, 3, 10, 10), torch.arange(8)  # continuous values: every pixel's source is unique
    pasted_any = False
    for _ in range(10):
        out_x, soft = mix(x, y)
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(8))
        for row in range(8):
            previous = (row - 1) % 8
            own = (out_x[row] == x[row]).all(dim=0)  # (H, W)
            pasted = (out_x[row] == x[previous]).all(dim=0)
            assert (own ^ pasted).all(), "every pixel comes from exactly one of the two images"
            fraction = pasted.float().mean()
            torch.testing.assert_close(soft[row, previous], fraction)
            torch.testing.assert_close(soft[row, row], 1 - fraction)
            pasted_any = pasted_any or fraction > 0
    assert pasted_any


def test_both_mixers_are_used_when_both_are_on():
    torch.manual_seed(8)
    mix = mixer(mixup_alpha=1.0, cutmix_alpha=1.0, mix_prob=1.0)
    x, y = torch.rand(8, 3, 6, 6), torch.arange(8)
    kinds = set()
    for _ in range(40):
        out_x, _ = mix(x, y)
        # CutMix copies pixels exactly; mixup blends every pixel of both images.
        copied = ((out_x == x) | (out_x == x.roll(1, dims=0))).all()
        kinds.add("cutmix" if copied else "mixup")
    assert kinds == {"cutmix", "mixup"}


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("size, channels, hflip_safe", [(8, 1, False), (28, 1, True), (32, 3, True), (96, 1, False),
                                                        (224, 3, True)])
def test_a_resolved_augmentation_resolves_to_itself(preset, size, channels, hflip_safe, tmp_path):
    """A run records the resolved augmentation; `cnnlab train --config RUN/config.yaml` resolves it again."""
    from cnnlab.config import RunConfig, load_config, save_config
    from cnnlab.data.transforms import unresolved_fields

    resolved = resolve_aug(preset, size, channels, hflip_safe)
    assert unresolved_fields(AugConfig(preset=preset)) and not unresolved_fields(resolved)
    assert resolve_aug(resolved, size, channels, hflip_safe) == resolved
    # ... and so does the copy in a run folder's config.yaml (YAML writes the tuples as lists)
    save_config(RunConfig(aug=resolved), tmp_path / "config.yaml")
    recorded = load_config(tmp_path / "config.yaml").aug
    assert recorded == resolved and resolve_aug(recorded, size, channels, hflip_safe) == resolved


def test_settings_the_resolved_augmentation_never_reads_are_noted():
    # 32 px: the standard preset crops by translation, so a ResNet short-side range changes nothing
    given = AugConfig(short_side=(256, 300), crop_scale=(0.5, 1.0), translate=2, randaugment_m=5, mix_prob=0.3)
    notes = unused_aug_settings(given, resolve_aug(given, 32))
    assert len(notes) == 4 and not any("translate=2" in note for note in notes)  # translate is this crop's
    assert any("short_side=(256, 300) is not used" in note and "preset's choice" in note for note in notes)
    assert any("crop_scale=(0.5, 1.0) is not used" in note for note in notes)
    assert any("randaugment_m=5 is not used" in note for note in notes)
    assert any("mix_prob=0.3 is not used" in note for note in notes)
    # at 224 px the preset's crop is scale: now the shift is the unused one, the short side is read
    large = unused_aug_settings(given, resolve_aug(given, 224))
    assert any("translate=2 is not used" in note for note in large)
    assert not any("short_side" in note for note in large)
    # each switched on where it belongs: nothing to say
    used = AugConfig(preset="strong", crop="resized", crop_scale=(0.5, 1.0), randaugment_m=5, mix_prob=0.3)
    assert unused_aug_settings(used, resolve_aug(used, 224)) == []
    # a resolved record (a run's config.yaml) has every field filled by its preset: nothing is said for it
    resolved = resolve_aug(given, 32)
    assert unused_aug_settings(resolved, resolve_aug(resolved, 32)) == []
    # the reverse of an unused mix_prob: mixing set, and mix_prob=0 draws no batch to mix
    never = AugConfig(cutmix_alpha=1.0, mix_prob=0.0)
    assert unused_aug_settings(never, resolve_aug(never, 28, 1), 1) == [
        "aug.cutmix_alpha=1.0 mixes no batch: aug.mix_prob=0 draws none to mix; set aug.mix_prob above 0 (1.0 mixes "
        "every batch) to use it"]
    assert unused_aug_settings(AugConfig(cutmix_alpha=1.0), resolve_aug(AugConfig(cutmix_alpha=1.0), 28, 1), 1) == []


def test_the_resized_crop_s_ratio_and_the_erased_box_s_size_are_noted_where_unused():
    given = AugConfig(crop_ratio=(0.5, 2.0), erasing_scale=(0.1, 0.2))
    notes = unused_aug_settings(given, resolve_aug(given, 32))  # standard at 32 px: translate crop, no erasing
    assert [note.split(" is not used")[0] for note in notes] == ["aug.crop_ratio=[0.5, 2.0]",
                                                                 "aug.erasing_scale=[0.1, 0.2]"]
    used = AugConfig(preset="strong", crop="resized", crop_ratio=(0.5, 2.0), erasing_scale=(0.1, 0.2))
    assert unused_aug_settings(used, resolve_aug(used, 224)) == []


def test_a_training_run_announces_unused_augmentation_settings():
    from cnnlab.config import RunConfig
    from cnnlab.train.engine import build_run

    config = RunConfig()
    config.data.spec = "synthetic:classes=2,train=4,val=2,test=2"
    config.aug = AugConfig(mix_prob=0.3)
    dataset, _, _, aug = build_run(config, torch.device("cpu"))
    assert aug.mix_prob == 0.3 and any("mix_prob=0.3 is not used" in note for note in dataset.notices)


def test_a_flip_on_digits_and_a_saturation_on_gray_data_are_noted():
    # digits: the presets leave flips off (a mirrored digit is another symbol); asked for, a flip is done with a note
    flipped = AugConfig(preset="light", hflip=0.5)
    digits = unused_aug_settings(flipped, resolve_aug(flipped, 28, 1, hflip_safe=False), 1, hflip_safe=False)
    assert any("aug.hflip=0.5 mirrors" in note and "another symbol" in note for note in digits)
    assert resolve_aug(flipped, 28, 1, hflip_safe=False).hflip == 0.5  # done as asked, not refused
    assert unused_aug_settings(flipped, resolve_aug(flipped, 28, 1), 1) == []  # data that mirrors safely
    off = AugConfig(preset="light", hflip=0.0)
    assert unused_aug_settings(off, resolve_aug(off, 28, 1, hflip_safe=False), 1, hflip_safe=False) == []
    # gray data: colour jitter's saturation part is left out of both pipelines, so a set jitter says so
    jitter = AugConfig(preset="none", color_jitter=0.4)
    gray = unused_aug_settings(jitter, resolve_aug(jitter, 28, 1), 1)
    assert len(gray) == 1 and "saturation" in gray[0] and "1 channel" in gray[0]
    assert unused_aug_settings(jitter, resolve_aug(jitter, 32, 3), 3) == []
    assert unused_aug_settings(AugConfig(preset="standard"), resolve_aug("standard", 28, 1), 1) == []  # preset's own


def test_a_training_run_on_digits_notes_a_flip_asked_for():
    from cnnlab.config import RunConfig
    from cnnlab.train.engine import build_run

    config = RunConfig()
    config.data.spec = "digits"
    config.aug = AugConfig(preset="light", hflip=0.5)
    dataset, _, _, aug = build_run(config, torch.device("cpu"))
    assert aug.hflip == 0.5 and any("aug.hflip=0.5 mirrors" in note for note in dataset.notices)


def test_per_image_pipeline_applies_autoaugment_as_torchvision_does():
    from torchvision.transforms import v2

    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    aug = replace(resolve_aug("none", 16), autoaugment="svhn")
    pipeline = build_sample_transform(aug, 16, MEAN3, STD3, train=True, channels=3)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out = pipeline(image)
        torch.manual_seed(seed)
        expected = v2.AutoAugment(v2.AutoAugmentPolicy.SVHN)(image).float() / 255
        expected = (expected - torch.tensor(MEAN3)[:, None, None]) / torch.tensor(STD3)[:, None, None]
        assert torch.allclose(out, expected, atol=1e-6)
        changed += not torch.equal(expected, (image.float() / 255 - torch.tensor(MEAN3)[:, None, None])
                                   / torch.tensor(STD3)[:, None, None])
    assert changed  # some draw changed the image


def test_unknown_autoaugment_policy_is_refused_with_the_list():
    with pytest.raises(CnnlabError, match="aug.autoaugment='mnist' is not allowed: choose one of none, imagenet, cifar10, svhn"):
        resolve_aug(AugConfig(autoaugment="mnist"), 32)


def test_autoaugment_and_randaugment_are_one_or_the_other():
    with pytest.raises(CnnlabError, match="autoaugment=cifar10 and randaugment_n=2"):
        resolve_aug(AugConfig(preset="strong", autoaugment="cifar10"), 32)
    assert resolve_aug(AugConfig(preset="strong", autoaugment="cifar10", randaugment_n=0), 32).autoaugment == "cifar10"
    assert resolve_aug("strong", 32).autoaugment == "none"  # no preset turns it on


def test_a_resolved_record_written_before_autoaugment_existed_still_reads_as_resolved():
    """A config.yaml recorded before aug.autoaugment existed has no such key: it reads as resolved (no notes
    about the preset's values it holds), with AutoAugment off as that run trained."""
    from cnnlab.config import RunConfig, config_from_dict, config_to_dict

    config = RunConfig()
    config.aug = resolve_aug("standard", 28, channels=1, hflip_safe=False)
    recorded = config_to_dict(config)
    del recorded["aug"]["autoaugment"]
    aug = config_from_dict(recorded).aug
    assert unresolved_fields(aug) == [] and aug.autoaugment == "none"
    assert unused_aug_settings(aug, resolve_aug(aug, 28, channels=1, hflip_safe=False), channels=1,
                               hflip_safe=False) == []


def test_autoaugment_policies_are_torchvisions():
    """The names checked without importing torchvision are exactly v2.AutoAugmentPolicy's, which the pipelines build."""
    from torchvision.transforms import v2

    assert AUTOAUGMENT_POLICIES == ("none",) + tuple(policy.value for policy in v2.AutoAugmentPolicy)


def test_gray_synthetic_data_is_not_flipped_as_a_mirror_makes_it_another_class():
    """Class k's stripes lie at k x 180/N degrees, and a mirror puts them at (N - k) x 180/N: in gray, where every
    class has the same mean colour, a flipped image is class N - k's. The default preset flipped it, and a run
    that reaches 100% without flips ended near 50%."""
    from cnnlab.data.sources import load_source, synthetic_images

    gray = load_source("synthetic:classes=10,train=20,val=10,test=10,channels=1")
    assert not gray.hflip_safe and resolve_aug("standard", gray.image_size, 1, gray.hflip_safe).hflip == 0.0
    assert load_source("synthetic:classes=10,train=20,val=10,test=10").hflip_safe  # the hue names the class
    # the premise, measured: a mirrored class-k image is nearer class (N - k)'s mean image than its own class's
    images, labels = synthetic_images(2000, 10, 32, 1, seed=0)
    spectra = torch.fft.rfft2(images.float()[:, 0]).abs()  # (N, 32, 17): stripe angle, not phase
    centroids = torch.stack([spectra[labels == k].mean(0) for k in range(10)])
    mirrored = torch.fft.rfft2(images.float()[:, 0].flip(-1)).abs()
    nearest = torch.cdist(mirrored.flatten(1), centroids.flatten(1)).argmin(1)
    assert (nearest == (10 - labels) % 10).float().mean() > 0.9


@pytest.mark.parametrize("field, value", [("color_jitter", float("nan")), ("mixup_alpha", float("inf")),
                                          ("translate", 2.5), ("hflip", "often")])
def test_resolve_aug_checks_types_and_finiteness_as_a_config_file_s_are(field, value):
    """A NaN passed every range check and turned colour jitter off in silence; an inf or a fraction of a pixel
    failed inside torch."""
    with pytest.raises(CnnlabError, match=rf"aug\.{field}"):
        resolve_aug(AugConfig(preset="none", **{field: value}), 32)


def test_an_erasing_range_whose_boxes_never_fit_is_refused():
    """A box is smaller than the image each way: at 32 x 32 its area is below (31.5 / 32)^2 = 0.969 of the image,
    so erasing_scale=(1.0, 1.0) erased nothing, with no word."""
    with pytest.raises(CnnlabError, match=r"no box that large fits inside a 32x32 image \(the largest is below 0\.969"):
        resolve_aug(AugConfig(preset="none", erasing=1.0, erasing_scale=(0.97, 1.0)), 32)
    assert resolve_aug(AugConfig(preset="none", erasing=1.0, erasing_scale=(0.96, 1.0)), 32).erasing == 1.0
    assert resolve_aug(AugConfig(preset="none", erasing=0.0, erasing_scale=(1.0, 1.0)), 32).erasing == 0.0  # off


def test_a_record_given_again_is_quiet_and_what_is_set_over_it_gets_its_notes():
    """`cnnlab train --config RUN/config.yaml --set aug.hflip=0.5` on digits said nothing (a resolved record was
    never looked at), where the same setting on a new run gets its mirror note; a repeat of the record stays quiet,
    as does a record of a run whose settings the notes had nothing to say about."""
    record = resolve_aug(AugConfig(), 28, channels=1, hflip_safe=False)  # what a digits run writes
    assert unused_aug_settings(record, record, 1, False, 28) == []
    for changed, said in ((dict(hflip=0.5), "aug.hflip=0.5 mirrors training images"),
                          (dict(mix_prob=0.5), "aug.mix_prob=0.5 is not used: mixup and CutMix are off"),
                          (dict(crop="none", translate=3), "aug.translate=3 is not used: it applies to crop=translate")):
        over = resolve_aug(replace(record, **changed), 28, channels=1, hflip_safe=False)
        notes = unused_aug_settings(over, over, 1, False, 28)
        assert len(notes) == 1 and notes[0].startswith(said), notes
        assert unused_aug_settings(over, over, 1, False) == []  # without the image size: records are not looked at
    # a record of other data (64 px RGB photos, flips on) given with digits: its flip is named
    photos = resolve_aug(AugConfig(), 64, channels=3, hflip_safe=True)
    notes = unused_aug_settings(photos, photos, 1, False, 28)
    assert any(note.startswith(f"aug.hflip={photos.hflip} mirrors training images") for note in notes), notes
