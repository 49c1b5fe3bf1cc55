"""Per-channel statistics of a training split, streamed over every image, cached as JSON.

The lecture normalises each channel by the training set's mean and std, computed in advance over
the whole training split (not one batch). For RGB data the same pass gives the 3x3 colour
covariance whose eigenvectors AlexNet's PCA lighting moves along.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch

from cnnlab import cache_root
from cnnlab.data.images import read_image, resize_square
from cnnlab.data.sources import STATS_CACHE_PREFIX, DataSet, Split
from cnnlab.errors import CnnlabError
from cnnlab.io import write_json_atomic

STATS_VERSION = 1  # bump when the computation changes so old cache files are not trusted
# Pixels (per channel) per streamed step: the float64 working copy is CHUNK_PIXELS * C * 8 bytes, 96 MiB
# for RGB, whatever the image size (1,337 Fashion-MNIST images at 28x28, 83 images at 224x224).
CHUNK_PIXELS = 2**22
STD_FLOOR = 1 / 255  # smallest std reported: one grey level on the [0, 1] scale


@dataclass
class ChannelStats:
    """Mean and std per channel on the [0, 1] pixel scale, and the RGB colour PCA."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixels: int  # pixels per channel the numbers were computed over
    pca_eigvals: Optional[tuple[float, ...]] = None  # (3,), descending; variance along each eigenvector
    pca_eigvecs: Optional[list[list[float]]] = None  # (3, 3); column i is the i-th eigenvector

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ChannelStats":
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists; turn them back)."""
        eigvals = data.get("pca_eigvals")
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]), pixels=int(data["pixels"]),
                   pca_eigvals=tuple(eigvals) if eigvals is not None else None, pca_eigvecs=data.get("pca_eigvecs"))


def _chunks(split: Split, channels: int, image_size: int):
    """uint8 (n, C, S, S) chunks of the split, decoding files when it is not held in memory.

    n is set by the pixel budget :data:`CHUNK_PIXELS` (at least one image), so memory stays bounded
    at any image size.
    """
    per_chunk = max(1, CHUNK_PIXELS // (image_size * image_size))  # images
    if split.images is not None:
        for start in range(0, len(split.images), per_chunk):
            yield split.images[start : start + per_chunk]
        return
    for start in range(0, len(split.paths), per_chunk):
        paths = split.paths[start : start + per_chunk]
        yield torch.cat([resize_square(read_image(p, channels).unsqueeze(0), image_size) for p in paths])


def compute_stats(split: Split, channels: int, image_size: int) -> ChannelStats:
    """Stream over every training image: sums, sums of squares and cross products in float64.

    std is the population std over all pixels of a channel (what the lecture's np.std computes),
    at least :data:`STD_FLOOR`. Raises CnnlabError for an empty split.
    """
    if len(split) == 0:
        raise CnnlabError("Cannot compute the per-channel statistics: the training split has no images.")
    total = torch.zeros(channels, dtype=torch.float64)
    cross = torch.zeros(channels, channels, dtype=torch.float64)  # sum of x_c * x_d
    pixels = 0
    for chunk in _chunks(split, channels, image_size):
        x = chunk.to(torch.float64).div_(255).flatten(2)  # (n, C, S*S), a view of the one float copy
        total += x.sum(dim=(0, 2))
        # Per image (C, P) @ (P, C) on a transposed view, summed over the chunk: no (C, n*P) copy
        # (einsum would permute and copy the chunk first).
        cross += torch.bmm(x, x.transpose(1, 2)).sum(dim=0)
        pixels += x.shape[0] * x.shape[2]
    mean = total / pixels
    covariance = cross / pixels - torch.outer(mean, mean)  # (C, C); its diagonal is the variance
    # A channel that never varies (a blank channel, gray images stored as RGB) would divide by zero
    # when normalising: its std is floored at one grey level, so it normalises to finite values.
    std = covariance.diagonal().clamp_min(0).sqrt().clamp_min(STD_FLOOR)
    stats = ChannelStats(mean=tuple(mean.tolist()), std=tuple(std.tolist()), pixels=pixels)
    if channels == 3:
        eigvals, eigvecs = torch.linalg.eigh(covariance)  # ascending
        order = eigvals.argsort(descending=True)
        stats.pca_eigvals = tuple(eigvals[order].clamp_min(0).tolist())
        stats.pca_eigvecs = eigvecs[:, order].tolist()
    return stats


def stats_path(dataset: DataSet, run_dir: Optional[Path] = None) -> Path:
    """Cache file: in the run folder when given, else next to the data when writable, else the cache."""
    name = f"{STATS_CACHE_PREFIX}{dataset.fingerprint}.json"
    if run_dir is not None:
        return Path(run_dir) / "data-stats.json"
    if dataset.cache_dir is not None:
        return dataset.cache_dir / name
    return cache_root() / "stats" / name


def dataset_stats(dataset: DataSet, run_dir: Optional[Path] = None, refresh: bool = False) -> tuple[ChannelStats, bool]:
    """Statistics of the training split: (stats, came_from_cache). Writes the cache atomically."""
    path = stats_path(dataset, run_dir)
    if not refresh and path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("version") == STATS_VERSION and cached.get("fingerprint") == dataset.fingerprint:
                return ChannelStats.from_dict(cached["stats"]), True
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unreadable or stale cache: recompute and overwrite
    stats = compute_stats(dataset.train, dataset.channels, dataset.image_size)
    record = {"version": STATS_VERSION, "fingerprint": dataset.fingerprint, "spec": dataset.spec, "stats": stats.to_dict()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record, "the data statistics")
    except (OSError, CnnlabError):
        pass  # a read-only place only costs a recomputation next time
    return stats, False
