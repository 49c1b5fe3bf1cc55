"""Per-channel statistics of a training split, streamed over every image, cached as JSON.

The lecture normalises each channel by the training set's mean and std, computed in advance over
the whole training split (not one batch). For RGB data the same pass gives the 3x3 colour
covariance whose eigenvectors AlexNet's PCA lighting moves along. :func:`resolve_normalization`
decides which mean/std a run actually uses: these, the weights' own, ImageNet's, none or explicit.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from cnnlab import cache_root
from cnnlab.config import DataConfig, notice, pixel_scale_problem
from cnnlab.data.images import read_image, resize_square
from cnnlab.data.sources import STATS_CACHE_PREFIX, DataSet, Split, display_name
from cnnlab.errors import CnnlabError, counted, is_number, shown_value
from cnnlab.io import write_json_atomic

STATS_VERSION = 1  # bump when the computation changes so old cache files are not trusted
# Pixels (per channel) per streamed step: the float64 working copy is CHUNK_PIXELS * C * 8 bytes, 96 MiB
# for RGB, whatever the image size (5,349 Fashion-MNIST images at 28x28, 83 images at 224x224).
CHUNK_PIXELS = 2**22
STD_FLOOR = 1 / 255  # smallest std reported: one grey level on the [0, 1] scale
# Largest std of values in [0, 1] (half at 0, half at 1), and a margin for float64 rounding: a cached
# std above it was not computed from pixels.
MAX_STD = 0.5 + 1e-9


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
    def from_dict(cls, data: dict, channels: int) -> "ChannelStats":
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists; turn them back), for data of ``channels``.

        Raises CnnlabError naming the first value a computation could not have given (see
        :func:`stats_problem`): a file read back may have been edited or damaged.
        """
        problem = stats_problem(data, channels)
        if problem:
            raise CnnlabError(problem)
        eigvals = data.get("pca_eigvals")
        return cls(mean=tuple(data["mean"]), std=tuple(data["std"]), pixels=int(data["pixels"]),
                   pca_eigvals=tuple(eigvals) if eigvals is not None else None, pca_eigvecs=data.get("pca_eigvecs"))


def _values_problem(values, count: int, key: str, low: float, high: float) -> str:
    """What is wrong with ``values`` as ``count`` finite numbers in [low, high]; '' when nothing."""
    if not isinstance(values, list) or not all(is_number(v) for v in values):
        return f"{key} is {shown_value(values)}, not a list of numbers"
    if len(values) != count:
        return f"{key} has {counted(len(values), 'value')} and the data {counted(count, 'channel')}"
    outside = [v for v in values if not (math.isfinite(v) and low <= v <= high)]
    if outside:
        return f"{key} holds {outside[0]!r}, outside [{low:g}, {high:g}]"
    return ""


def stats_problem(data, channels: int) -> str:
    """What in a :meth:`ChannelStats.to_dict` record no computation of ``channels``-channel data gives; '' when nothing.

    A computation gives one mean in [0, 1] and one std in [STD_FLOOR, MAX_STD] per channel (pixels are
    on the [0, 1] scale, and std is floored), a positive pixel count, and for RGB a colour PCA of 3
    non-negative eigenvalues and a 3x3 matrix of unit eigenvectors (entries in [-1, 1]).
    """
    if not isinstance(data, dict):
        return f"the statistics are {shown_value(data)}, not a mapping"
    problem = (_values_problem(data.get("mean"), channels, "mean", 0.0, 1.0)
               or _values_problem(data.get("std"), channels, "std", STD_FLOOR, MAX_STD))
    if problem:
        return problem
    pixels = data.get("pixels")
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels < 1:
        return f"pixels is {shown_value(pixels)}, not a positive count"
    if channels != 3:
        return ""
    eigvals, eigvecs = data.get("pca_eigvals"), data.get("pca_eigvecs")
    problem = _values_problem(eigvals, 3, "pca_eigvals", 0.0, math.inf)
    if problem:
        return problem
    if not isinstance(eigvecs, list) or len(eigvecs) != 3:
        return f"pca_eigvecs is {shown_value(eigvecs)}, not 3 rows of 3 numbers"
    for row in eigvecs:
        problem = _values_problem(row, 3, "a row of pca_eigvecs", -1.0, 1.0)
        if problem:
            return problem
    return ""


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
    at least :data:`STD_FLOOR`. Raises CnnlabError for an empty split, and for arguments it cannot take
    (``split`` not a :class:`Split`, ``channels`` not 1 or 3, ``image_size`` not a positive whole number, images
    held as anything but one uint8 (N, C, H, W) tensor).
    """
    if not isinstance(split, Split):
        raise CnnlabError(f"compute_stats takes one split of a loaded data set (a cnnlab.data.Split, such as "
                          f"load_source('digits').train), got {type(split).__name__} {split!r:.60}.")
    if isinstance(channels, bool) or channels not in (1, 3):
        raise CnnlabError(f"compute_stats: channels={channels!r:.60}: the images are read with 1 (gray) or 3 (RGB) "
                          "channels; give the data set's own (DataSet.channels).")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise CnnlabError(f"compute_stats: image_size={image_size!r:.60} must be a positive whole number of pixels "
                          "(the data set's DataSet.image_size).")
    if len(split) == 0:
        raise CnnlabError("Cannot compute the per-channel statistics: the training split has no images.")
    if split.images is not None and (split.images.dtype != torch.uint8 or split.images.ndim != 4):
        # float images in [0, 1] would be divided by 255 again: a mean of 0.002, a std at the floor, no error
        raise CnnlabError(f"compute_stats needs the split's images as one uint8 tensor (N, C, H, W) of 0-255 "
                          f"values, as cnnlab.data.load_source holds them; got {split.images.dtype} with shape "
                          f"{tuple(split.images.shape)}. Give uint8 images (a float image in [0, 1]: "
                          "(x * 255).round().to(torch.uint8)).")
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
        # unit columns: an entry may pass 1 by a rounding step (1.0000000000000002), which the file's check refuses
        stats.pca_eigvecs = eigvecs[:, order].clamp(-1.0, 1.0).tolist()
    return stats


def _check_dataset(function: str, dataset) -> None:
    """The refusal of a ``dataset`` argument that is not a loaded data set (a spec such as 'digits', most often),
    saying how to load one."""
    if isinstance(dataset, DataSet):
        return
    load = (f" Load it first: dataset = cnnlab.data.load_source({dataset!r:.60})." if isinstance(dataset, str) else
            " Load one with cnnlab.data.load_source(SPEC), SPEC such as 'digits' or 'folder:PATH'.")
    raise CnnlabError(f"{function} takes a loaded data set (a cnnlab.data.DataSet), got {dataset!r:.60} (of type "
                      f"{type(dataset).__name__}).{load}")


def stats_kept(dataset: DataSet, run_dir: Optional[Path] = None) -> bool:
    """Whether the cache file holds this data set's statistics (after :func:`dataset_stats`: whether they were
    kept, or a file that could not be rewritten, stale or damaged, still stands there)."""
    try:
        cached = json.loads(stats_path(dataset, run_dir).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cached, dict) and cached.get("version") == STATS_VERSION and (
        cached.get("fingerprint") == dataset.fingerprint)


def stats_path(dataset: DataSet, run_dir: Optional[Path] = None) -> Path:
    """Cache file: in the run folder when given, else next to the data when writable, else the cache."""
    _check_dataset("stats_path", dataset)
    name = f"{STATS_CACHE_PREFIX}{dataset.fingerprint}.json"
    if run_dir is not None:
        return Path(run_dir) / "data-stats.json"
    if dataset.cache_dir is not None:
        return dataset.cache_dir / name
    return cache_root() / "stats" / name


def dataset_stats(dataset: DataSet, run_dir: Optional[Path] = None, refresh: bool = False) -> tuple[ChannelStats, bool]:
    """Statistics of the training split: (stats, came_from_cache). Writes the cache atomically.

    A cache file that cannot be read, or holds values no computation gives (:func:`stats_problem`: std
    0, a NaN, another channel count), is not used: the statistics are recomputed and the file rewritten,
    with a note on stderr naming the file and what was wrong. Raises CnnlabError when ``dataset`` is not a
    loaded :class:`DataSet` (a spec such as 'digits' is loaded with :func:`cnnlab.data.load_source`).
    """
    _check_dataset("dataset_stats", dataset)
    path = stats_path(dataset, run_dir)
    damage = ""  # what was wrong with the cache file, when it could not be used
    if not refresh and path.exists() and not path.is_file():
        damage = "it is not a file (a folder, or another kind of file, stands at its name)"
    elif not refresh and path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            damage = f"it cannot be read as JSON ({err})"
        else:
            if not isinstance(cached, dict):
                damage = f"it holds {shown_value(cached)}, not a mapping"
            # Another version's or data's statistics are stale, not damaged: recomputed without a word
            elif cached.get("version") == STATS_VERSION and cached.get("fingerprint") == dataset.fingerprint:
                try:
                    return ChannelStats.from_dict(cached.get("stats"), dataset.channels), True
                except CnnlabError as err:
                    damage = str(err)
    stats = compute_stats(dataset.train, dataset.channels, dataset.image_size)
    record = {"version": STATS_VERSION, "fingerprint": dataset.fingerprint, "spec": dataset.spec, "stats": stats.to_dict()}
    written = True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record, "the data statistics")
    except (OSError, CnnlabError):
        written = False  # a read-only place only costs a recomputation next time
    if damage:
        # Values no computation gives (std 0 divides by zero, a wrong channel count) would break training
        # far from their cause, so the file is named and the statistics computed again.
        kept = (" and the file rewritten." if written else "; the file could not be rewritten, so this happens again "
                "until it is deleted or its folder is writable.")
        notice(f"the data statistics in '{display_name(str(path))}' were not used: {damage}. They were recomputed "
               f"from the training split{kept}")
    return stats, False


# ---------------------------------------------------------------------------------------------
# which mean/std a run normalises its inputs with (data.normalize, data.mean/std)


@functools.cache
def imagenet_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet's mean/std as torchvision's classification weights expect them: the defaults of its own
    preset (the ``transforms()`` of every ImageNet weights enum), read rather than typed in: (mean, std), (3,)
    each on the [0, 1] pixel scale. Read when first asked for (importing torchvision takes about a second)."""
    from torchvision.transforms._presets import ImageClassification

    defaults = inspect.signature(ImageClassification.__init__).parameters
    return tuple(defaults["mean"].default), tuple(defaults["std"].default)


@dataclass
class Normalization:
    """The per-channel mean/std a run subtracts and divides by, which rule chose them, and why."""

    mean: list[float]  # (C,) on the [0, 1] pixel scale, one per channel the model sees
    std: list[float]  # (C,)
    name: str  # dataset | source | imagenet | none | explicit
    note: str  # one sentence for the console: what was used and why

    def to_dict(self) -> dict:
        return asdict(self)


def _numbers(values) -> str:
    """'0.286' for one channel, '(0.485, 0.456, 0.406)' for several: three decimals for the console."""
    shown = [f"{float(v):.3f}" for v in values]
    return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"


def _fit_channels(values, channels: int, what: str) -> tuple[list[float], str]:
    """``values`` for ``channels`` channels, and a note on any change ('' when none).

    3 -> 1 averages: a network trained on RGB and given gray images (its first conv's filters summed
    over the input channels) sees one gray value where it saw three equal ones, so the one mean
    consistent with all three filters is their average (exact when the channel stds are equal;
    ImageNet's differ by under 3%). 1 -> 3 repeats the value: a gray network's statistics apply to
    each channel of an RGB copy alike.
    """
    values = [float(v) for v in values]
    if len(values) == channels:
        return values, ""
    if len(values) == 3 and channels == 1:
        return [sum(values) / 3], f"{what}'s 3-channel values averaged for the 1-channel data"
    if len(values) == 1 and channels == 3:
        return values * 3, f"{what}'s 1-channel value repeated for the 3-channel data"
    raise CnnlabError(f"{what} has {counted(len(values), 'channel value')} and the data {counted(channels, 'channel')}; only 3 -> 1 "
                      "(averaged) and 1 -> 3 (repeated) can be adapted. Set data.mean/data.std or "
                      "data.normalize=dataset.")


def _explicit(values, channels: int, key: str) -> list[float]:
    """data.mean or data.std: one value per channel, or one value for every channel."""
    values = [float(v) for v in values]
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise CnnlabError(f"{key}={values} has {counted(len(values), 'value')}; the data has {counted(channels, 'channel')}: give one "
                          f"value per channel ({channels}) or one value for all of them.")
    return values


def resolve_normalization(data: DataConfig, stats: ChannelStats, channels: int, *, source_mean=None, source_std=None,
                          source_label: str = "") -> Normalization:
    """The mean/std to normalise with, from ``data`` and what the run starts from.

    data.mean/std given: those (explicit). Else data.normalize: None means "source" when the weights
    the run starts from carry a mean/std (``source_mean``/``source_std``, named by ``source_label``)
    and "dataset" otherwise; "dataset" is the training split's ``stats``; "source" the source's
    preprocessing; "imagenet" torchvision's ImageNet preset; "none" mean 0 and std 1, so pixels enter
    the network as 0..1 (the lecture's "why normalise" demonstration). ``channels`` is what the model
    sees; source or ImageNet values of another channel count are adapted (see :func:`_fit_channels`).
    """
    has_source = source_mean is not None and source_std is not None
    where = f" from {source_label}" if source_label else ""
    if data.mean is not None or data.std is not None:
        if data.mean is None or data.std is None:
            raise CnnlabError("data.mean and data.std must be given together (one value per channel, or one for all).")
        mean, std = _explicit(data.mean, channels, "data.mean"), _explicit(data.std, channels, "data.std")
        if any(s <= 0 for s in std):
            raise CnnlabError(f"data.std={list(data.std)} must be positive: the inputs are divided by it.")
        problem = pixel_scale_problem(data.mean, data.std)
        if problem:
            raise CnnlabError(f"{problem}.")
        if data.normalize == "source":
            # How a run that started from weights records their preprocessing (cnnlab.train.engine's
            # _resolved_data): its resume and its repeat read the values here, not from the source.
            return Normalization(mean, std, "explicit",
                                 f"normalising with the source's mean {_numbers(mean)}, std {_numbers(std)} as "
                                 "data.mean/data.std record them (data.normalize=source)")
        over = f", overriding data.normalize={data.normalize}" if data.normalize is not None else ""
        return Normalization(mean, std, "explicit",
                             f"normalising with the given data.mean/data.std: mean {_numbers(mean)}, std {_numbers(std)}{over}")
    name = data.normalize
    why = f"data.normalize={name}"
    if name is None:
        name = "source" if has_source else "dataset"
        why = ("the weights' own preprocessing" if has_source else
               f"the weights{where} record no mean/std" if source_label else "the default without model.init_from")
    if name == "dataset":
        mean, std = [float(v) for v in stats.mean], [float(v) for v in stats.std]
        if len(mean) != channels:
            raise CnnlabError(f"The training statistics have {counted(len(mean), 'channel')} and the data {channels}: "
                              "recompute the statistics for this data.")
        return Normalization(mean, std, "dataset", f"normalising with the training split's mean {_numbers(mean)}, "
                                                   f"std {_numbers(std)} ({why})")
    if name == "source":
        if not has_source:
            raise CnnlabError("data.normalize=source needs model.init_from: the mean/std come from the weights a run "
                              "starts from, and this run starts from none (or its source records no mean/std). "
                              "Use data.normalize=dataset, imagenet or none, or give data.mean/data.std.")
        mean, mean_note = _fit_channels(source_mean, channels, "the source")
        std, _ = _fit_channels(source_std, channels, "the source")
        return Normalization(mean, std, "source", f"normalising with the source's mean {_numbers(mean)}, std "
                             f"{_numbers(std)}{where} ({why}" + (f"; {mean_note})" if mean_note else ")"))
    if name == "imagenet":
        imagenet_mean, imagenet_std = imagenet_mean_std()
        mean, mean_note = _fit_channels(imagenet_mean, channels, "ImageNet")
        std, _ = _fit_channels(imagenet_std, channels, "ImageNet")
        return Normalization(mean, std, "imagenet", f"normalising with ImageNet's mean {_numbers(mean)}, std "
                             f"{_numbers(std)} from torchvision's preset ({why}" + (f"; {mean_note})" if mean_note else ")"))
    if name == "none":
        return Normalization([0.0] * channels, [1.0] * channels, "none",
                             f"not normalising: pixels enter the network as 0..1 (mean 0, std 1; {why})")
    raise CnnlabError(f"data.normalize={name!r} is not one of dataset, source, imagenet, none (or null: source with "
                      "model.init_from, else dataset).")


def with_normalization(stats: ChannelStats, normalization: Normalization) -> ChannelStats:
    """``stats`` with the mean/std replaced by ``normalization``'s: what the loaders and checkpoint take.

    The colour PCA and pixel count stay the training split's: PCA lighting moves pixels on the
    [0, 1] scale before normalisation, so it does not depend on which mean/std follow.
    """
    return replace(stats, mean=tuple(normalization.mean), std=tuple(normalization.std))
