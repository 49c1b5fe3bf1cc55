"""resolve_normalization: each rule against numbers computed independently (numpy, torchvision's weights)."""

import numpy as np
import pytest
from torchvision.models import ResNet18_Weights

from cnnlab.config import DataConfig, RunConfig, apply_overrides, validate_config
from cnnlab.data.sources import load_source
from cnnlab.data.stats import (
    Normalization,
    dataset_stats,
    imagenet_mean_std,
    resolve_normalization,
    with_normalization,
)
from cnnlab.errors import CnnlabError

RGB = "synthetic:classes=3,train=60,val=12,test=12"
GRAY = "synthetic:classes=3,train=60,val=12,test=12,channels=1"
SOURCE_MEAN, SOURCE_STD = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]  # a source run's recorded preprocessing


@pytest.fixture(scope="module")
def rgb():
    data = load_source(RGB)
    return data, dataset_stats(data)[0]


@pytest.fixture(scope="module")
def gray():
    data = load_source(GRAY)
    return data, dataset_stats(data)[0]


def _imagenet_reference():
    """ImageNet's mean/std as a torchvision weights' own transforms() states them."""
    preset = ResNet18_Weights.IMAGENET1K_V1.transforms()
    return np.array(preset.mean), np.array(preset.std)


def test_dataset_is_the_training_split_statistics(rgb):
    data, stats = rgb
    pixels = data.train.images.numpy() / 255.0  # (N, 3, S, S)
    norm = resolve_normalization(DataConfig(spec=RGB), stats, 3)
    assert norm.name == "dataset"
    assert np.allclose(norm.mean, pixels.mean(axis=(0, 2, 3)), atol=1e-9)
    assert np.allclose(norm.std, pixels.std(axis=(0, 2, 3)), atol=1e-9)
    assert "training split" in norm.note and "default without model.init_from" in norm.note
    # normalised with it, the training pixels have mean 0 and std 1 per channel
    shaped = np.array(norm.mean)[None, :, None, None], np.array(norm.std)[None, :, None, None]
    normalised = (pixels - shaped[0]) / shaped[1]
    assert np.allclose(normalised.mean(axis=(0, 2, 3)), 0, atol=1e-9)
    assert np.allclose(normalised.std(axis=(0, 2, 3)), 1, atol=1e-9)
    # asked for by name, even with a source: still the data's own
    asked = resolve_normalization(DataConfig(spec=RGB, normalize="dataset"), stats, 3,
                                  source_mean=SOURCE_MEAN, source_std=SOURCE_STD)
    assert asked.name == "dataset" and asked.mean == norm.mean and "data.normalize=dataset" in asked.note


def test_source_is_the_default_with_weights(rgb):
    _, stats = rgb
    norm = resolve_normalization(DataConfig(spec=RGB), stats, 3, source_mean=SOURCE_MEAN, source_std=SOURCE_STD,
                                 source_label="runs/src")
    assert (norm.name, norm.mean, norm.std) == ("source", SOURCE_MEAN, SOURCE_STD)
    assert "runs/src" in norm.note and "weights' own preprocessing" in norm.note
    with pytest.raises(CnnlabError, match="data.normalize=source needs model.init_from"):
        resolve_normalization(DataConfig(spec=RGB, normalize="source"), stats, 3)


def test_source_channels_are_adapted(gray, rgb):
    _, gray_stats = gray
    to_gray = resolve_normalization(DataConfig(spec=GRAY), gray_stats, 1, source_mean=SOURCE_MEAN,
                                    source_std=SOURCE_STD)
    assert np.allclose(to_gray.mean, [np.mean(SOURCE_MEAN)]) and np.allclose(to_gray.std, [np.mean(SOURCE_STD)])
    assert "averaged" in to_gray.note
    _, rgb_stats = rgb
    to_rgb = resolve_normalization(DataConfig(spec=RGB), rgb_stats, 3, source_mean=[0.3], source_std=[0.25])
    assert to_rgb.mean == [0.3] * 3 and to_rgb.std == [0.25] * 3 and "repeated" in to_rgb.note
    with pytest.raises(CnnlabError, match="2 channel value"):
        resolve_normalization(DataConfig(spec=RGB), rgb_stats, 3, source_mean=[0.1, 0.2], source_std=[0.1, 0.2])


def test_imagenet_is_torchvision_preset(rgb, gray):
    mean, std = _imagenet_reference()
    assert np.allclose(imagenet_mean_std()[0], mean) and np.allclose(imagenet_mean_std()[1], std)
    norm = resolve_normalization(DataConfig(spec=RGB, normalize="imagenet"), rgb[1], 3,
                                 source_mean=SOURCE_MEAN, source_std=SOURCE_STD)
    assert norm.name == "imagenet" and np.allclose(norm.mean, mean) and np.allclose(norm.std, std)
    one = resolve_normalization(DataConfig(spec=GRAY, normalize="imagenet"), gray[1], 1)
    assert np.allclose(one.mean, [mean.mean()]) and np.allclose(one.std, [std.mean()])


def test_none_leaves_pixels_on_the_unit_scale(gray):
    norm = resolve_normalization(DataConfig(spec=GRAY, normalize="none"), gray[1], 1)
    assert (norm.name, norm.mean, norm.std) == ("none", [0.0], [1.0])
    assert "not normalising" in norm.note


def test_the_sources_values_as_a_run_records_them_are_not_called_an_override(rgb):
    """A run started from weights writes their mean/std into its config.yaml next to data.normalize=source; its
    resume reads them back and used to say they were "given" and "overriding data.normalize=source"."""
    _, stats = rgb
    norm = resolve_normalization(DataConfig(spec=RGB, normalize="source", mean=SOURCE_MEAN, std=SOURCE_STD), stats, 3)
    assert (norm.mean, norm.std) == (list(SOURCE_MEAN), list(SOURCE_STD))
    assert norm.note.startswith("normalising with the source's mean") and "overriding" not in norm.note


def test_explicit_values(rgb):
    _, stats = rgb
    norm = resolve_normalization(DataConfig(spec=RGB, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], normalize="imagenet"),
                                 stats, 3, source_mean=SOURCE_MEAN, source_std=SOURCE_STD)
    assert (norm.name, norm.mean, norm.std) == ("explicit", [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    assert "overriding data.normalize=imagenet" in norm.note
    shared = resolve_normalization(DataConfig(spec=RGB, mean=[0.5], std=[0.25]), stats, 3)
    assert shared.mean == [0.5] * 3 and shared.std == [0.25] * 3
    with pytest.raises(CnnlabError, match=r"data.mean=\[0.5, 0.5\] has 2 values; the data has 3 channel"):
        resolve_normalization(DataConfig(spec=RGB, mean=[0.5, 0.5], std=[0.2, 0.2]), stats, 3)
    with pytest.raises(CnnlabError, match="given together"):
        resolve_normalization(DataConfig(spec=RGB, mean=[0.5]), stats, 3)


@pytest.mark.parametrize("mean, std", [([0.5, 0.4, 0.3], [0.25]), ([0.5], [0.2, 0.25, 0.3])])
def test_one_value_for_all_works_for_either_key_on_its_own(rgb, mean, std):
    """docs/data.md: each key takes one value per channel or one for all; the config check used to refuse a
    per-channel mean with one std (and the reverse) as not "one value per channel"."""
    _, stats = rgb
    config = apply_overrides(RunConfig(), ["data.mean=" + ",".join(map(str, mean)),
                                           "data.std=" + ",".join(map(str, std))])
    validate_config(config)
    norm = resolve_normalization(config.data, stats, 3)
    assert norm.mean == (mean if len(mean) == 3 else mean * 3) and norm.std == (std if len(std) == 3 else std * 3)


def test_two_per_channel_lists_of_different_lengths_are_refused_by_the_config_check():
    with pytest.raises(CnnlabError, match=r"data.mean \(2 values\) and data.std \(3 values\) must each have one "
                                          r"value per channel, or one for all"):
        validate_config(apply_overrides(RunConfig(), ["data.mean=0.5,0.4", "data.std=0.2,0.25,0.3"]))


@pytest.mark.parametrize("mean, std, pattern", [
    # mmpretrain's ImageNet numbers, on the 0..255 scale: as 0..1 values every image would be nearly constant
    ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375], r"0\.\.1 pixel scale.*look like values on the 0\.\.255 "
                                                         r"scale, so divide them by 255"),
    ([0.5], [2.0], r"data.std=\[2.0\] must lie on the 0\.\.1 pixel scale"),
    ([-0.1], [0.2], r"data.mean=\[-0.1\] must lie on the 0\.\.1 pixel scale"),
])
def test_explicit_values_on_another_scale_are_refused(rgb, mean, std, pattern):
    _, stats = rgb
    with pytest.raises(CnnlabError, match=pattern):
        resolve_normalization(DataConfig(spec=RGB, mean=mean, std=std), stats, 3)
    with pytest.raises(CnnlabError, match=pattern):  # a run's config (--set, a YAML file) is refused before any data is read
        validate_config(apply_overrides(RunConfig(), [f"data.mean={mean}", f"data.std={std}"]))
    # the edges of the 0..1 scale are values a person may mean: mean 0 and std 1 leave the pixels as they are
    resolve_normalization(DataConfig(spec=RGB, mean=[0.0, 1.0, 0.5], std=[1.0, 1 / 255, 0.5]), stats, 3)


def test_with_normalization_keeps_the_colour_pca(rgb):
    _, stats = rgb
    norm = Normalization(mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], name="explicit", note="")
    replaced = with_normalization(stats, norm)
    assert replaced.mean == (0.1, 0.2, 0.3) and replaced.std == (0.4, 0.5, 0.6)
    assert replaced.pca_eigvals == stats.pca_eigvals and replaced.pca_eigvecs == stats.pca_eigvecs
    assert replaced.pixels == stats.pixels and stats.mean != replaced.mean  # the original is untouched
