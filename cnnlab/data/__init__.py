"""Data: sources, statistics, augmentations and loaders."""

from cnnlab.data.images import read_image
from cnnlab.data.sources import DataSet, Split, load_source
from cnnlab.data.stats import ChannelStats, compute_stats, dataset_stats, stats_path
from cnnlab.data.transforms import PRESETS, BatchMixer, resolve_aug

__all__ = [
    "BatchMixer",
    "ChannelStats",
    "DataSet",
    "PRESETS",
    "Split",
    "compute_stats",
    "dataset_stats",
    "load_source",
    "read_image",
    "resolve_aug",
    "stats_path",
]
