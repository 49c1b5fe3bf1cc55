"""Data: sources, statistics, augmentations and loaders."""

from cnnlab.data.images import read_image
from cnnlab.data.sources import DataSet, Split, apply_subsets, load_source, resolve_classes
from cnnlab.data.stats import (
    ChannelStats,
    Normalization,
    compute_stats,
    dataset_stats,
    imagenet_mean_std,
    resolve_normalization,
    stats_path,
    with_normalization,
)
from cnnlab.data.transforms import PRESETS, BatchMixer, resolve_aug

__all__ = [
    "BatchMixer",
    "ChannelStats",
    "DataSet",
    "Normalization",
    "PRESETS",
    "Split",
    "apply_subsets",
    "compute_stats",
    "dataset_stats",
    "imagenet_mean_std",
    "load_source",
    "read_image",
    "resolve_aug",
    "resolve_classes",
    "resolve_normalization",
    "stats_path",
    "with_normalization",
]
