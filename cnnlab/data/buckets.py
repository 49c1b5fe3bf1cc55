"""Aspect-ratio buckets: images of different shapes batched without squashing them into one square.

A folder of photos holds landscape, square and portrait images. Resizing all of them to one square
stretches a 4:3 photo by a third; cropping it to a square throws a quarter of it away. Bucketing
(the lecture's "aspect ratio bucketing") sorts the images into a few buckets by aspect ratio, gives
each bucket its own (H, W) of about the same pixel count, and builds every batch from one bucket,
so the tensors of a batch still stack. A convolutional network with global pooling accepts any
(H, W), so one model trains on all buckets.

The pieces, each usable alone:

- :func:`parse_buckets` reads ``"4:3,1:1,3:4"`` (width:height) into ``[(4, 3), (1, 1), (3, 4)]``.
- :func:`bucket_shapes` gives each bucket its (height, width): area close to ``base_size**2``,
  sides multiples of ``multiple`` (32 for networks that downsample by 32).
- :func:`assign_buckets` puts each image into the bucket nearest its aspect ratio (in log ratio,
  so 2:1 and 1:2 are equally far from 1:1).
- :func:`max_distortion` says how far the worst image is from its bucket's ratio, in percent.
- :class:`AspectRatioBatchSampler` yields batches of indices from one bucket each.
- :class:`BucketedImageDataset` reads an image and fits it to its bucket's (H, W).

Example (``paths``, ``labels`` and ``sizes`` as in a file :class:`~cnnlab.data.sources.Split`)::

    ratios = parse_buckets("4:3,1:1,3:4")
    dataset = BucketedImageDataset.from_ratios(paths, labels, sizes, ratios, base_size=224, multiple=32)
    sampler = AspectRatioBatchSampler(dataset.bucket_ids, batch_size=64, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=2)  # no batch_size
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y in loader:  # x uint8 (B, C, H, W) with (H, W) the shape of one bucket
            loss = train_step(x, y)  # your step
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Optional

import torch

from cnnlab.data.seeding import epoch_seed, seeded_transform
from cnnlab.data.images import read_image, resize_and_crop, resize_uint8
from cnnlab.errors import CnnlabError, integer_text
from cnnlab.limits import MAX_IMAGE_SIDE

BUCKETS_EXAMPLE = "4:3,1:1,3:4"  # shown in error messages
FITS = ("crop", "pad", "stretch")  # how an image is made to match its bucket's (H, W)
# Tag of the sampler's random stream, above any image index (those key the per-image transform seeds).
SAMPLER_STREAM = 2**62


# ---------------------------------------------------------------------------------------------
# bucket geometry


def parse_buckets(text: str) -> list[tuple[int, int]]:
    """Read ``"W:H,W:H,..."`` into a list of (width, height) pairs of positive whole numbers.

    Spaces are ignored. Raises CnnlabError for text that is not of that form, for a zero or
    negative number, and for two buckets with the same ratio (``2:2`` repeats ``1:1``).
    """
    if not isinstance(text, str) or not text.strip():
        raise CnnlabError(
            f"buckets={text!r} is empty: give aspect ratios as width:height separated by commas, "
            f"e.g. buckets={BUCKETS_EXAMPLE!r}."
        )
    ratios: list[tuple[int, int]] = []
    seen: dict[Fraction, str] = {}  # reduced ratio -> the text that gave it, to name duplicates
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue  # a trailing or doubled comma carries no bucket
        width_text, colon, height_text = (s.strip() for s in part.partition(":"))
        numbers_ok = all(integer_text(s) is not None for s in (width_text, height_text))
        if not colon or ":" in height_text or not numbers_ok:
            raise CnnlabError(
                f"Cannot read the bucket '{part}' in buckets={text!r}: write each bucket as width:height in "
                f"whole numbers, separated by commas, e.g. buckets={BUCKETS_EXAMPLE!r}."
            )
        width, height = int(width_text), int(height_text)
        if width <= 0 or height <= 0:
            raise CnnlabError(
                f"The bucket '{part}' in buckets={text!r} has a side that is not positive: width and height "
                f"must both be at least 1, e.g. buckets={BUCKETS_EXAMPLE!r}."
            )
        ratio = Fraction(width, height)
        if ratio in seen:
            raise CnnlabError(
                f"The bucket '{part}' in buckets={text!r} has the same aspect ratio as '{seen[ratio]}': "
                "list each ratio once."
            )
        seen[ratio] = part
        ratios.append((width, height))
    if not ratios:
        raise CnnlabError(f"buckets={text!r} names no bucket: write e.g. buckets={BUCKETS_EXAMPLE!r}.")
    return ratios


def _check_ratios(ratios: Sequence[tuple[int, int]]) -> None:
    if len(ratios) == 0:
        raise CnnlabError(f"No aspect-ratio buckets were given: pass at least one (width, height), e.g. from "
                          f"parse_buckets({BUCKETS_EXAMPLE!r}).")
    for width, height in ratios:
        if width <= 0 or height <= 0:
            raise CnnlabError(f"The bucket {width}:{height} has a side that is not positive: use positive "
                              "width:height pairs.")


def _side_candidates(ideal: float, multiple: int) -> list[int]:
    """The multiples of ``multiple`` just below and just above ``ideal`` (never below ``multiple``)."""
    below = max(multiple, math.floor(ideal / multiple) * multiple)
    above = max(multiple, math.ceil(ideal / multiple) * multiple)
    return sorted({below, above})


def _shape_cost(shape: tuple[int, int], ratio: float, target_area: int) -> float:
    """|log ratio error| + |log area error| / 2 of a (height, width) against the wanted ratio and area."""
    height, width = shape
    ratio_error = abs(math.log(width / height / ratio))
    area_error = abs(math.log(height * width / target_area))
    return ratio_error + area_error / 2


def bucket_shapes(ratios: Sequence[tuple[int, int]], base_size: int, multiple: int = 8) -> list[tuple[int, int]]:
    """(height, width) in pixels for each (width, height) ratio: area near ``base_size**2``, sides multiples of ``multiple``.

    The exact shape has height ``base_size / sqrt(r)`` and width ``base_size * sqrt(r)`` for r =
    width / height (so height * width = base_size**2). Each side is then rounded down or up to a
    multiple of ``multiple``; of the four combinations the one with the smallest

        |log(ratio error)| + |log(area error)| / 2

    wins. The ratio is what buckets exist for, so it counts fully; the area error is halved because
    it is the sum of the two sides' log errors. Rounding each side on its own can wreck the ratio
    on small images: at ``base_size=32, multiple=8`` it turns 4:3 into 24x40 (5:3), where this
    choice gives 24x32 (4:3 exactly, a quarter less area).

    Raises CnnlabError when two buckets round to the same shape: they would be one bucket.
    """
    _check_ratios(ratios)
    if base_size < 1 or multiple < 1:
        raise CnnlabError(f"bucket_shapes needs a positive base_size and multiple, got base_size={base_size}, "
                          f"multiple={multiple}.")
    target_area = base_size * base_size
    shapes: list[tuple[int, int]] = []
    for width_part, height_part in ratios:
        ratio = width_part / height_part
        ideal_height, ideal_width = base_size / math.sqrt(ratio), base_size * math.sqrt(ratio)
        candidates = [(h, w) for h in _side_candidates(ideal_height, multiple)
                      for w in _side_candidates(ideal_width, multiple)]
        shapes.append(min(candidates, key=lambda shape: _shape_cost(shape, ratio, target_area)))
        height, width = shapes[-1]
        if max(height, width) > MAX_IMAGE_SIDE:  # a ratio so extreme that the long side passes cnnlab's bound
            raise CnnlabError(
                f"The bucket {width_part}:{height_part} at image size {base_size} would be {height}x{width} pixels "
                f"(height x width), above the largest side cnnlab takes ({MAX_IMAGE_SIDE:,}): give a ratio closer to "
                "square, or a smaller image size."
            )
    for first in range(len(shapes)):
        for second in range(first + 1, len(shapes)):
            if shapes[first] == shapes[second]:
                (w1, h1), (w2, h2) = ratios[first], ratios[second]
                height, width = shapes[first]
                raise CnnlabError(
                    f"The buckets {w1}:{h1} and {w2}:{h2} both round to {height}x{width} pixels (height x width) at "
                    f"image size {base_size} with sides in multiples of {multiple}: drop one of them, or use a "
                    "larger image size or a smaller multiple."
                )
    return shapes


def _log_ratios(ratios: Sequence[tuple[int, int]]) -> torch.Tensor:
    return torch.tensor([math.log(width / height) for width, height in ratios], dtype=torch.float64)  # (K,)


def _log_sizes(sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
    for index, (width, height) in enumerate(sizes):
        if width <= 0 or height <= 0:
            raise CnnlabError(f"Image {index} has size {width}x{height} (width x height): every image needs a "
                              "positive width and height.")
    return torch.tensor([math.log(width / height) for width, height in sizes], dtype=torch.float64)  # (N,)


def assign_buckets(sizes: Sequence[tuple[int, int]], ratios: Sequence[tuple[int, int]]) -> list[int]:
    """For each image (width, height) the index of the bucket whose ratio is nearest in log ratio.

    Log ratio makes the distance symmetric: a 2:1 and a 1:2 image are equally far from 1:1. A tie
    goes to the bucket listed first.
    """
    _check_ratios(ratios)
    if len(sizes) == 0:
        return []
    distance = (_log_sizes(sizes)[:, None] - _log_ratios(ratios)[None, :]).abs()  # (N, K)
    return distance.argmin(dim=1).tolist()  # argmin returns the first of equal minima


def max_distortion(sizes: Sequence[tuple[int, int]], ratios: Sequence[tuple[int, int]]) -> float:
    """The largest change of aspect ratio, in percent, over the images placed in their nearest bucket.

    For an image of ratio r in a bucket of ratio b it is ``max(r/b, b/r) - 1``: how much one side
    would be stretched against the other to fit the bucket by resizing alone (fit="stretch").
    With fit="crop" it is instead the share of the long side that the crop removes, relative to
    the part kept; with fit="pad" the share of padding. ``max_distortion(sizes, [(1, 1)])`` is the
    figure for resizing everything to a square, to compare a choice of buckets against.
    """
    if len(sizes) == 0:
        return 0.0
    buckets = assign_buckets(sizes, ratios)
    gap = (_log_sizes(sizes) - _log_ratios(ratios)[buckets]).abs()  # (N,) |log(r / b)|
    return float(gap.max().exp() - 1) * 100


# ---------------------------------------------------------------------------------------------
# batches from one bucket each


class AspectRatioBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of dataset indices, every batch from a single bucket.

    Per epoch: each bucket's indices are (with ``shuffle``) permuted and cut into batches of
    ``batch_size``; the batches of all buckets are then (with ``shuffle``) put into one random order,
    so consecutive steps see different shapes. Without ``shuffle`` batches come bucket by bucket in
    index order.

    A bucket's last, shorter batch is kept unless ``drop_last``. With ``drop_last`` it is dropped
    only from a bucket that also gave at least one full batch; a bucket holding fewer than
    ``batch_size`` images gives its one short batch, so no bucket (no aspect ratio) is ever left out
    of training. The images dropped are the remainder of a freshly shuffled bucket, so with
    ``shuffle`` a different few each epoch: over epochs every image is trained on. ``left_out`` is
    how many images one epoch leaves out; ``len`` tells how many batches there are.

    The order depends only on (``seed``, epoch): call :meth:`set_epoch` before each epoch, as with
    torch's DistributedSampler.
    """

    def __init__(self, bucket_ids: Sequence[int] | torch.Tensor, batch_size: int, *, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise CnnlabError(f"batch_size={batch_size!r} must be a positive whole number.")
        ids = torch.as_tensor(bucket_ids, dtype=torch.long).flatten()  # (N,)
        if len(ids) and int(ids.min()) < 0:
            raise CnnlabError("Bucket ids must be 0 or more (indices into the list of buckets).")
        self.bucket_ids = ids
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.epoch = 0
        # Indices of each non-empty bucket, ascending: (n_k,) per bucket k.
        self.members = [torch.nonzero(ids == bucket).flatten() for bucket in torch.unique(ids).tolist()]
        # Images per epoch in no batch: the short remainders drop_last cuts from buckets with a full batch.
        self.left_out = sum(len(members) - self._batch_count(len(members)) * batch_size
                            for members in self.members if len(members) >= batch_size) if drop_last else 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration yields."""
        self.epoch = epoch

    def _batch_count(self, size: int) -> int:
        """Batches of a bucket of ``size`` images: full ones only with drop_last, but never none."""
        if self.drop_last and size >= self.batch_size:
            return size // self.batch_size
        return math.ceil(size / self.batch_size)  # a bucket smaller than one batch gives its one short batch

    def __len__(self) -> int:
        return sum(self._batch_count(len(members)) for members in self.members)

    def __iter__(self):
        # Its own stream: FileLoader seeds its generator (mixup/CutMix draws) with epoch_seed(seed, epoch),
        # and the same seed here would hand both the same random numbers.
        generator = torch.Generator().manual_seed(epoch_seed(epoch_seed(self.seed, self.epoch), SAMPLER_STREAM))
        batches: list[list[int]] = []
        for members in self.members:
            if self.shuffle:
                members = members[torch.randperm(len(members), generator=generator)]
            for number in range(self._batch_count(len(members))):
                start = number * self.batch_size
                batches.append(members[start : start + self.batch_size].tolist())
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        yield from batches


# ---------------------------------------------------------------------------------------------
# images fitted to their bucket


def fit_to_shape(image: torch.Tensor, shape: tuple[int, int], fit: str = "crop") -> torch.Tensor:
    """Resize a uint8 (C, h, w) image to exactly ``shape`` = (H, W), bilinear with antialiasing.

    ``crop``: scale to cover (H, W) keeping the aspect ratio, then centre-crop the overhang (no
    stretching; the long side loses the ratio gap). ``pad``: scale to fit inside (H, W), then pad
    with zeros around it (nothing lost; the ratio gap becomes border). ``stretch``: resize straight
    to (H, W) (nothing lost; the ratio gap becomes distortion).
    """
    from torchvision.transforms.v2 import functional as F

    height, width = image.shape[-2:]
    target_height, target_width = shape
    if (height, width) == (target_height, target_width):
        return image
    if fit == "stretch":
        return resize_uint8(image, (target_height, target_width))
    if fit == "crop":
        scale = max(target_height / height, target_width / width)
        # Never below the target: float rounding must not leave the crop a pixel short.
        new_height = max(target_height, round(height * scale))
        new_width = max(target_width, round(width * scale))
        # Cropped before it is enlarged when that saves memory: a 100000x1 strip never becomes 3.2M pixels wide.
        return resize_and_crop(image.unsqueeze(0), (new_height, new_width), (target_height, target_width))[0]
    if fit == "pad":
        scale = min(target_height / height, target_width / width)
        new_height = min(target_height, max(1, round(height * scale)))
        new_width = min(target_width, max(1, round(width * scale)))
        resized = resize_uint8(image, (new_height, new_width))
        top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
        # F.pad takes [left, top, right, bottom]
        padding = [left, top, target_width - new_width - left, target_height - new_height - top]
        return F.pad(resized, padding, fill=0)
    raise CnnlabError(f"fit={fit!r} is not known: use one of {', '.join(FITS)}.")


class BucketedImageDataset(torch.utils.data.Dataset):
    """Images read from files and fitted to their bucket's (H, W); item ``i`` is ``(image, label)``.

    ``image`` is ``transform(fit_to_shape(read(path), shapes[bucket_ids[i]], fit))``, or the uint8
    (C, H, W) tensor itself when ``transform`` is None. ``read`` maps a path to a uint8 (C, h, w)
    tensor; the default is :func:`cnnlab.data.images.read_image` with ``channels`` channels (PIL:
    the same pixels as the other loaders and the statistics; torchvision.io's decoders are
    deprecated since torchvision 0.29). ``sizes`` are the files' (width, height) as probed when
    the split was made.

    A random ``transform`` runs under torch's global generator seeded from (``epoch_seed``, index),
    as in :class:`cnnlab.data.loaders.FileDataset`: the same epoch gives the same views whatever
    the number of workers. ``FileLoader.set_epoch`` sets ``epoch_seed``.
    """

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int] | torch.Tensor,
                 sizes: Sequence[tuple[int, int]], bucket_ids: Sequence[int], shapes: Sequence[tuple[int, int]], *,
                 channels: int = 3, read: Optional[Callable[[str | Path], torch.Tensor]] = None,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, fit: str = "crop"):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.long)  # (N,)
        self.sizes = [tuple(size) for size in sizes]
        self.bucket_ids = [int(bucket) for bucket in bucket_ids]
        self.shapes = [tuple(shape) for shape in shapes]
        counts = {"paths": len(self.paths), "labels": len(self.labels), "sizes": len(self.sizes),
                  "bucket_ids": len(self.bucket_ids)}
        if len(set(counts.values())) != 1:
            raise CnnlabError("BucketedImageDataset needs one entry per image in each of "
                              + ", ".join(f"{name} ({count})" for name, count in counts.items()) + ".")
        if self.bucket_ids and not 0 <= min(self.bucket_ids) <= max(self.bucket_ids) < len(self.shapes):
            raise CnnlabError(f"Bucket ids must lie in 0..{len(self.shapes) - 1}, one per shape; got "
                              f"{min(self.bucket_ids)}..{max(self.bucket_ids)}.")
        if fit not in FITS:
            raise CnnlabError(f"fit={fit!r} is not known: use one of {', '.join(FITS)}.")
        if read is None and channels not in (1, 3):
            raise CnnlabError(f"channels={channels}: images can be read with 1 (gray) or 3 (RGB) channels.")
        self.channels = channels
        self.read = read
        self.transform = transform
        self.fit = fit
        self.epoch_seed = 0  # set by FileLoader.set_epoch

    @classmethod
    def from_ratios(cls, paths, labels, sizes: Sequence[tuple[int, int]], ratios: Sequence[tuple[int, int]],
                    base_size: int, *, multiple: int = 8, **options) -> "BucketedImageDataset":
        """Assign each image its nearest bucket and size the buckets around ``base_size``."""
        return cls(paths, labels, sizes, assign_buckets(sizes, ratios), bucket_shapes(ratios, base_size, multiple),
                   **options)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        image = self.read(path) if self.read is not None else read_image(path, self.channels)  # (C, h, w) uint8
        image = fit_to_shape(image, self.shapes[self.bucket_ids[index]], self.fit)  # (C, H, W) of the bucket
        if self.transform is not None:
            image = seeded_transform(self.transform, image, self.epoch_seed, index)
        return image, self.labels[index]
