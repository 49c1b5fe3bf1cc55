"""The data-set report behind ``cnnlab data stats``: classes, splits, statistics, skips and buckets.

One function assembles it, so ``cnnlab data stats --json`` and Python code get the same numbers::

    from cnnlab.config import DataConfig
    from cnnlab.data import load_source
    from cnnlab.data.report import data_report

    report = data_report(load_source(DataConfig(spec="digits")))
    report["splits"]["train"]["per_class"], report["mean"], report["std"]
"""

from __future__ import annotations

from typing import Optional

from cnnlab.data.buckets import assign_buckets, bucket_shapes, max_distortion
from cnnlab.data.sources import DataSet
from cnnlab.data.stats import STD_FLOOR, dataset_stats, stats_kept, stats_path
from cnnlab.errors import display_name


def bucket_report(dataset: DataSet) -> Optional[list[dict]]:
    """Per aspect-ratio bucket of the training split: ratio, (H, W), image count and worst aspect change.

    None when the data set has no buckets. ``max_distortion_percent`` is the largest change of an
    image's aspect ratio (in %) when it is resized to its bucket's shape; 0 for an empty bucket.
    """
    if not dataset.buckets:
        return None
    sizes = dataset.train.sizes
    assigned = assign_buckets(sizes, dataset.buckets)
    shapes = bucket_shapes(dataset.buckets, dataset.image_size)
    rows = []
    for index, (ratio, (height, width)) in enumerate(zip(dataset.buckets, shapes)):
        members = [size for size, bucket in zip(sizes, assigned) if bucket == index]
        rows.append({"ratio": f"{ratio[0]}:{ratio[1]}", "height": height, "width": width, "images": len(members),
                     "max_distortion_percent": max_distortion(members, [ratio]) if members else 0.0})
    return rows


def data_report(dataset: DataSet, refresh: bool = False) -> dict:
    """Everything ``cnnlab data stats`` reports about a loaded data set, as JSON-ready values.

    Keys: spec, classes, num_classes, channels, image_size [H, W]; splits (per split: images,
    per_class counts in class order, in_memory); mean, std (per channel, [0, 1] pixel scale, over
    every training pixel) and pca_eigvals (RGB only, else None); std_at_floor, the channels (0-based)
    whose std is the floor of one grey level, 1/255 (numpy's std gives less: the channel varies less than
    that, and normalising by less would blow those differences up); stats_cache (the cache file) and
    stats_from_cache (whether the numbers were read from it; ``refresh`` recomputes them) and stats_written
    (whether they were written there now: a place that cannot be written keeps nothing); skipped
    ([{file, reason}]) and notices; buckets (:func:`bucket_report`) and
    square_distortion_percent, the worst aspect change if every training image were resized to a
    square instead (None without buckets).
    """
    stats, cached = dataset_stats(dataset, refresh=refresh)
    buckets = bucket_report(dataset)
    return {
        "spec": dataset.spec,
        "classes": list(dataset.classes),
        "num_classes": dataset.num_classes,
        "channels": dataset.channels,
        "image_size": [dataset.image_size, dataset.image_size],
        "splits": {name: {"images": len(split),
                          "per_class": split.labels.bincount(minlength=dataset.num_classes).tolist(),
                          "in_memory": split.in_memory}
                   for name, split in dataset.splits().items()},
        "mean": list(stats.mean),
        "std": list(stats.std),
"std_at_floor": [channel for channel, std in enumerate(stats.std) if std <= STD_FLOOR],
        "pca_eigvals": list(stats.pca_eigvals) if stats.pca_eigvals else None,
        "stats_cache": display_name(str(stats_path(dataset))),
        "stats_from_cache": cached,
        "stats_written": not cached and stats_kept(dataset),
        "skipped": [{"file": name, "reason": why} for name, why in dataset.skipped],
        "notices": list(dataset.notices),
        "buckets": buckets,
        "square_distortion_percent": max_distortion(dataset.train.sizes, [(1, 1)]) if buckets else None,
    }
