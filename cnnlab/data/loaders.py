"""One entry point for batches: :func:`make_loader` picks the fast in-memory path or file reading.

Both loaders yield ``(x, y)``: x float32 (B, C, S, S) normalised on the target device, y int64 (B,)
or soft targets (B, K) when mixup/CutMix mixed the batch. Both have ``set_epoch`` so an epoch's
order and augmentations depend only on (seed, epoch), which makes resumed runs repeat exactly.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch

from cnnlab import threads as machine  # called through the module: the tests stand in for the machine
from cnnlab.config import AugConfig
from cnnlab.data.memory import MemoryLoader, smallest_batch
from cnnlab.data.seeding import epoch_order, epoch_seed, seeded_transform
from cnnlab.data.buckets import AspectRatioBatchSampler, BucketedImageDataset, assign_buckets, bucket_shapes
from cnnlab.data.images import read_image
from cnnlab.data.sources import DataSet, Split
from cnnlab.data.stats import ChannelStats
from cnnlab.data.transforms import BatchMixer, resolve_aug
from cnnlab.devices import resolve_device
from cnnlab.errors import CnnlabError, display_name, shown_value, whole_number

MIX_STREAM = 1  # epoch_seed's stream for the mixer's draws (the order and worker seeds take stream 0)


class EpochShuffle(torch.utils.data.Sampler):
    """A split's indices in the order :func:`~cnnlab.data.seeding.epoch_order` draws for (seed, epoch): the order
    the in-memory loader yields, so that moving a split between memory and files keeps its batches.

    torch's shuffling sampler would draw from the DataLoader's generator after the workers' base seed,
    which gives another order for the same seed.
    """

    def __init__(self, count: int, seed: int):
        self.count = count
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(epoch_order(self.count, generator).tolist())


class FileDataset(torch.utils.data.Dataset):
    """Images read from files one at a time, for data too large to hold in memory.

    Each image's random transform runs under torch's global generator seeded from
    (``epoch_seed``, index): the same epoch gives the same views whatever the worker count.
    """

    def __init__(self, paths, labels: torch.Tensor, channels: int, transform):
        self.paths = list(paths)
        self.labels = labels
        self.channels = channels
        self.transform = transform
        self.epoch_seed = 0  # set by FileLoader.set_epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = read_image(self.paths[index], self.channels)  # (C, H, W) uint8, any size
        return seeded_transform(self.transform, image, self.epoch_seed, index), self.labels[index]


def _ignore_ctrl_c(worker_id: int) -> None:
    """Workers leave Ctrl-C to the main process: the terminal sends SIGINT to the whole process group,
    and a worker that died of it would end the epoch before the trainer reached its step boundary."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class FileLoader:
    """A torch DataLoader over :class:`FileDataset` with per-image torchvision transforms.

    Mixup/CutMix act on whole batches, so they run here after collation, on the target device.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, *, batch_size: int, train: bool, num_classes: int,
                 aug: Optional[AugConfig], device="cpu", seed: int = 0, num_workers: int = 0,
                 batch_sampler=None, channels_last: bool = False, shuffle: Optional[bool] = None,
                 drop_last: Optional[bool] = None):
        self.dataset = dataset
        self.device = torch.device(device)
        self.seed = seed
        self.epoch = 0
        self.generator = torch.Generator()
        self.batch_sampler = batch_sampler
        self.sampler: Optional[EpochShuffle] = None  # the shuffled order without a batch sampler
        self.channels_last = channels_last
        # The mixer has a generator of its own: the DataLoader draws its order and worker seeds from
        # `generator` at times that depend on the worker count (workers prefetch), so mixing draws taken
        # from it too would change with num_workers.
        self.mix_generator = torch.Generator()
        self.mixer = BatchMixer(aug, num_classes, generator=self.mix_generator) if train and aug is not None else None
        # Workers are started afresh each epoch (not persistent) so they see the epoch's seed. The
        # DataLoader draws its workers' base seed (and the shuffle order) from `generator`; without
        # one it would draw from torch's global generator and move the caller's random state.
        loader_args = dict(num_workers=num_workers, pin_memory=self.device.type == "cuda", generator=self.generator,
                           worker_init_fn=_ignore_ctrl_c if num_workers else None)
        if batch_sampler is not None:
            self.loader = torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **loader_args)
        else:
            shuffled = train if shuffle is None else shuffle
            self.sampler = EpochShuffle(len(dataset), seed) if shuffled else None
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, sampler=self.sampler,
                drop_last=train if drop_last is None else drop_last, **loader_args)

    def yield_order(self) -> Optional[torch.Tensor]:
        """(N,) the split's index of each image, in the order an epoch of this loader yields them (less the
        images ``drop_last`` leaves out); None when that is the split's own order (no batch sampler, no shuffle).

        Aspect-ratio buckets batch bucket by bucket, so even an unshuffled bucketed loader does not keep
        the split's order: whoever matches its rows to the split's files needs this order.
        """
        if self.batch_sampler is None:
            if self.sampler is None:
                return None
            self.sampler.set_epoch(self.epoch)
            order = torch.tensor(list(self.sampler), dtype=torch.long)
            return order[:len(self.loader) * self.loader.batch_size] if self.loader.drop_last else order
        self.batch_sampler.set_epoch(self.epoch)  # the order __iter__ yields depends only on (seed, epoch)
        return torch.tensor([index for batch in self.batch_sampler for index in batch], dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        seed = epoch_seed(self.seed, epoch)
        self.generator.manual_seed(seed)
        self.mix_generator.manual_seed(epoch_seed(self.seed, epoch, stream=MIX_STREAM))
        if hasattr(self.dataset, "epoch_seed"):
            self.dataset.epoch_seed = seed
        if self.batch_sampler is not None and hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def left_out(self) -> int:
        """Images in no batch of an epoch: the short remainders ``drop_last`` cuts (from each aspect-ratio bucket
        with a full batch, with buckets), a different few each epoch when shuffled; 0 without ``drop_last``."""
        if self.batch_sampler is not None:
            return getattr(self.batch_sampler, "left_out", 0)
        if not self.loader.drop_last:
            return 0
        return len(self.dataset) - len(self.loader) * self.loader.batch_size

    @property
    def smallest_batch(self) -> int:
        """Images in the smallest batch of an epoch (a bucket smaller than a batch gives its one short batch);
        0 for an epoch of no batch."""
        sampler = self.batch_sampler
        if sampler is not None:
            return smallest_batch([len(members) for members in getattr(sampler, "members", ())],
                                  sampler.batch_size, sampler.drop_last, keep_small=True)
        return smallest_batch([len(self.dataset)], self.loader.batch_size, self.loader.drop_last)

    def __iter__(self):
        self.set_epoch(self.epoch)  # order (self.generator) and per-image views (epoch_seed) from (seed, epoch)
        try:
            yield from self._batches()
        except CnnlabError as err:
            message = worker_message(err)
            if message is None:
                raise  # raised in this process: its message is clean already
            raise CnnlabError(message) from None

    def _batches(self):
        batches = iter(self.loader)
        try:
            for x, y in batches:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                if self.mixer:
                    x, y = self.mixer(x, y)
                yield x, y
        finally:
            # An epoch cut short (a worker's error, a stop, a caller that breaks off) leaves torch's iterator in the
            # error's traceback, a reference cycle: its workers were stopped by the garbage collector, whose
            # _shutdown_workers waited torch's full 5 s worker timeout for each (measured, 1 worker: 5.2 s, where
            # this call takes 0.01 s). An epoch that ended has shut them down already, and this does nothing.
            shutdown = getattr(batches, "_shutdown_workers", None)  # only the multi-process iterator has workers
            if shutdown is not None:
                shutdown()


# How a traceback's last line names a CnnlabError: 'cnnlab.errors.CnnlabError: <message>'
CNNLAB_ERROR_LINE = f"{CnnlabError.__module__}.{CnnlabError.__qualname__}: "


def worker_message(err: CnnlabError) -> Optional[str]:
    """The message of a CnnlabError raised in a DataLoader worker, without the worker's traceback.

    The DataLoader raises a worker's exception again in the main process as the same type, but with the
    worker's whole traceback as its message ('Caught CnnlabError in DataLoader worker process 0. Original
    Traceback ...'); the message the worker raised is what follows the traceback's last line's type name.
    None for a CnnlabError raised in this process.
    """
    text = str(err)
    if "Traceback" not in text or CNNLAB_ERROR_LINE not in text:
        return None
    return text.rsplit(CNNLAB_ERROR_LINE, 1)[1].strip()


class PerShapeTransform:
    """Picks the pipeline built for an image's (H, W): one per aspect-ratio bucket."""

    def __init__(self, transforms: dict[tuple[int, int], object]):
        self.transforms = transforms

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return self.transforms[tuple(image.shape[-2:])](image)


def bucketed_images(dataset: DataSet, part: Split, transform=None) -> BucketedImageDataset:
    """The split's files, each fitted to the shape of the aspect-ratio bucket nearest its ratio: the images a
    model trained with ``dataset.buckets`` sees. Without ``transform`` item i is the uint8 (C, H, W) image
    itself (what eval's mistakes grid draws); the loader passes the normalising pipelines."""
    shapes = bucket_shapes(dataset.buckets, dataset.image_size)  # (H, W) per bucket, about image_size² pixels
    return BucketedImageDataset(part.paths, part.labels, part.sizes, assign_buckets(part.sizes, dataset.buckets),
                                shapes, channels=dataset.channels, transform=transform)


def _bucketed_loader(dataset: DataSet, part: Split, stats: ChannelStats, aug: Optional[AugConfig], *, batch_size: int,
                     train: bool, device, seed: int, num_workers: int, channels_last: bool,
                     shuffle: Optional[bool], drop_last: Optional[bool]) -> FileLoader:
    """Batches from one aspect-ratio bucket each, every image fitted to its bucket's (H, W)."""
    from cnnlab.data.pipeline import build_sample_transform  # torchvision: only file-read data needs it

    shapes = bucket_shapes(dataset.buckets, dataset.image_size)  # (H, W) per bucket, about image_size² pixels
    pipelines = {
        shape: build_sample_transform(aug or AugConfig(preset="none"), shape, stats.mean, stats.std,
                                      train=aug is not None, channels=dataset.channels, stats=stats)
        for shape in shapes
    }
    images = bucketed_images(dataset, part, transform=PerShapeTransform(pipelines))
    # With drop_last a bucket smaller than one batch still gives its short batch (never a whole aspect
    # ratio left out); sampler.left_out counts the remainders of larger buckets, a different few each epoch.
    sampler = AspectRatioBatchSampler(images.bucket_ids, batch_size, shuffle=train if shuffle is None else shuffle,
                                      drop_last=train if drop_last is None else drop_last, seed=seed)
    return FileLoader(images, batch_size=batch_size, train=train, num_classes=dataset.num_classes, aug=aug,
                      device=device, seed=seed, num_workers=num_workers, batch_sampler=sampler,
                      channels_last=channels_last)


def _split_part(dataset: DataSet, split: str | Split) -> Split:
    """The :class:`Split` that ``split`` names (or is)."""
    if isinstance(split, Split):
        return split
    splits = dataset.splits()
    if not isinstance(split, str) or split not in splits:
        raise CnnlabError(f"The data '{display_name(dataset.spec)}' has no split {shown_value(split)}: it has "
                          f"{', '.join(splits)}. Name one of those, or pass a Split.")
    return splits[split]


def make_loader(
    dataset: DataSet,
    split: str | Split,
    stats: ChannelStats,
    *,
    batch_size: int,
    train: bool,
    aug: AugConfig | str | None = None,
    device="cpu",
    seed: int = 0,
    num_workers: int = 0,
    channels_last: bool = False,
    shuffle: Optional[bool] = None,
    drop_last: Optional[bool] = None,
):
    """Batches of one split (a name or a :class:`Split`), augmented when ``train`` and ``aug`` are set.

    In-memory splits go through :class:`~cnnlab.data.memory.MemoryLoader` (batched tensor ops on
    ``device``); file splits through :class:`FileLoader` (per-image transforms, ``num_workers``
    processes), with aspect-ratio buckets when the data was loaded with ``buckets``. ``shuffle``
    and ``drop_last`` default to ``train``; ``batch_size`` is a whole number of images (numpy's and torch's
    integers too), at least 1. The in-memory path's random crops (``scale``, ``resized``)
    cut from the stored centre S x S square, while the file path cuts them from the whole image.
    ``device``: auto, cpu, cuda or cuda:N (or a torch.device). A split name the data does not have is
    refused naming the ones it has.
    """
    part = _split_part(dataset, split)
    if not isinstance(stats, ChannelStats):  # the loaders normalise by it: None failed deep inside
        raise CnnlabError(f"make_loader normalises the images by their channel statistics, a ChannelStats, got "
                          f"{type(stats).__name__}: give it the first result of cnnlab.data.dataset_stats(dataset).")
    # Checked once for the three loaders below (each checked it its own way, or left it to torch's DataLoader);
    # an index computed with numpy or torch is the int it holds
    size = whole_number(batch_size)
    if size is None or size < 1:
        raise CnnlabError(f"batch_size={shown_value(batch_size)} must be a whole number of images, at least 1.")
    batch_size = size
    workers = whole_number(num_workers)
    if workers is None or workers < 0:
        raise CnnlabError(f"num_workers={shown_value(num_workers)} must be a whole number of worker processes, "
                          "0 or more (0 reads in this process; in-memory data uses none).")
    limit = machine.os_thread_limit() if workers and not part.in_memory else None
    if limit is not None and workers > limit:  # the loader would start them until fork failed, the machine stalled
        raise CnnlabError(f"num_workers={workers:,} (train.num_workers) is more worker processes than the operating "
                          f"system can start for this process ({limit:,}: the lowest of the kernel's pid_max and "
                          "threads-max and the user's process limit, ulimit -u). Each worker is a process that "
                          "loads whole batches: a few per core keep the model fed; 0 reads in this process.")
    num_workers = workers
    device = resolve_device(device, "device")
    resolved = None
    if train and aug is not None:
        resolved = resolve_aug(aug, dataset.image_size, dataset.channels, dataset.hflip_safe)  # idempotent
    if part.in_memory:
        return MemoryLoader(
            part.images, part.labels, batch_size=batch_size, mean=stats.mean, std=stats.std,
            num_classes=dataset.num_classes, aug=resolved, train=train, device=device, seed=seed,
            stats=stats, channels_last=channels_last, shuffle=shuffle, drop_last=drop_last,
        )
    if resolved is not None and resolved.hflip_alternate:
        raise CnnlabError("aug.hflip_alternate needs the training images in memory, where each image keeps its "
                          f"index from epoch to epoch, but the training split of {display_name(dataset.spec)} is read from files "
                          "per batch. Set data.in_memory=true (raise data.memory_limit_mb if it does not fit) or leave "
                          "aug.hflip_alternate off.")
    if dataset.buckets:
        return _bucketed_loader(dataset, part, stats, resolved, batch_size=batch_size, train=train, device=device,
                                seed=seed, num_workers=num_workers, channels_last=channels_last, shuffle=shuffle,
                                drop_last=drop_last)
    from cnnlab.data.pipeline import build_sample_transform  # torchvision: only file-read data needs it

    transform = build_sample_transform(resolved or AugConfig(preset="none"), dataset.image_size, stats.mean, stats.std,
                                       train=resolved is not None, channels=dataset.channels, stats=stats)
    files = FileDataset(part.paths, part.labels, dataset.channels, transform)
    return FileLoader(files, batch_size=batch_size, train=train, num_classes=dataset.num_classes, aug=resolved,
                      device=device, seed=seed, num_workers=num_workers, channels_last=channels_last,
                      shuffle=shuffle, drop_last=drop_last)
