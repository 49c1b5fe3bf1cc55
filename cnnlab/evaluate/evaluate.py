"""``cnnlab eval``: a trained model's accuracy, loss, per-class scores and mistakes on one split.

A model is loaded from a run folder (its best checkpoint) or a checkpoint/weights file, with the
preprocessing it was trained with (class names, image size, channel mean/std), all read from the
checkpoint's metadata by :func:`cnnlab.train.checkpoint.load_run_model`: nothing is unpickled. Evaluation is
batched under no_grad; with ``--tta`` the softmax probabilities are averaged over the views of each image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cnnlab.data.sources import display_name  # the one rule for showing a name (undecodable bytes as \xNN)
from cnnlab.devices import resolve_device
from cnnlab.errors import (CnnlabError, check_count, display_class, first_few, is_finite_number, repeated_values,
                           shown_value, whole_number)
from cnnlab.io import check_out_is_named
from cnnlab.heap import keep_on_cpu
from cnnlab.run import (
    EVAL_CONFUSION_FILE,
    EVAL_CONFUSION_PNG,
    EVAL_METRICS_FILE,
    EVAL_MISTAKES_PNG,
    MEASURED_KEY,
    MetaKey,
    RunFolder,
    absolute_spec,
    same_data,
)
from cnnlab.threads import keeps_thread_setting, tick
# The trained model with its preprocessing (read through the run folder contract); load_model is its old name here.
from cnnlab.train.checkpoint import LoadedModel
from cnnlab.train.checkpoint import load_run_model as load_model


def check_scales(scales) -> None:
    """Refuse multiscale scales that are not a list of numbers within :data:`~cnnlab.evaluate.tta.SCALE_RANGE`
    (a string would be read one character at a time)."""
    from cnnlab.evaluate.tta import DEFAULT_SCALES, SCALE_RANGE

    low, high = SCALE_RANGE
    example = ", ".join(str(scale) for scale in DEFAULT_SCALES)
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise CnnlabError(f"scales={shown_value(scales)} must be a non-empty list of numbers, e.g. [{example}] "
                          f"(the command line's --scales {example.replace(', ', ',')}).")
    bad = [scale for scale in scales if not is_finite_number(scale) or not low <= scale <= high]
    if bad:
        raise CnnlabError(f"scales={shown_value(list(scales))}: each scale must be a number between {low:g} and "
                          f"{high:g}, got {shown_value(bad[0])}.")
    twice = repeated_values(float(scale) for scale in scales)
    if twice:  # as resnet10crop's short sides (check_short_side_list)
        raise CnnlabError(f"--scales {_listed(scales)} names the scale {twice[0]:g} more than once: its views "
                          "would count twice in the average. Name each scale once.")


def _listed(values) -> str:
    """Numbers as --scales takes them (32,37.5); anything else as Python shows it."""
    return ",".join(f"{value:g}" if is_finite_number(value) else shown_value(value) for value in values)


def check_short_side_list(short_sides) -> None:
    """Refuse resnet10crop short sides that are not a list of distinct whole numbers of pixels (32 or 32.0, as the
    command line reads it), before a model is loaded; :func:`check_short_sides_fit` then checks them against the
    model's image size."""
    from cnnlab.evaluate.tta import RESNET_MODE

    example = "32,37,55,69,91"
    if isinstance(short_sides, (str, bytes)) or not isinstance(short_sides, Sequence) or not short_sides:
        raise CnnlabError(f"scales={shown_value(short_sides)} must be a non-empty list of short sides in pixels for "
                          f"--tta {RESNET_MODE}, e.g. [{example.replace(',', ', ')}] (the command line's --scales "
                          f"{example}).")
    bad = [side for side in short_sides
           if not is_finite_number(side) or float(side) != int(float(side)) or float(side) < 1]
    if bad:
        raise CnnlabError(f"--scales {_listed(short_sides)}: --tta {RESNET_MODE} takes the short sides the "
                          f"image is resized to, in whole pixels (e.g. {example} for a 32-pixel model), got "
                          f"{shown_value(bad[0])}.")
    sides = [int(float(side)) for side in short_sides]
    twice = repeated_values(sides)
    if twice:
        raise CnnlabError(f"--scales {','.join(map(str, sides))} names the short side {twice[0]} more than once: its "
                          "views would count twice in the average. Name each short side once.")


def check_short_sides_fit(loaded: LoadedModel, short_sides) -> None:
    """Refuse resnet10crop for a run trained with aspect-ratio buckets (its crops are squares of the training
    size), and short sides below the model's image size S (no S x S crop fits) or above
    :data:`~cnnlab.evaluate.tta.SHORT_SIDE_LIMIT` times it."""
    from cnnlab.evaluate.tta import RESNET_MODE, SHORT_SIDE_LIMIT, resnet_short_sides

    size = loaded.image_size
    shapes = input_shapes(loaded)
    if shapes != [(size, size)]:
        raise CnnlabError(f"--tta {RESNET_MODE} cuts {size}x{size} squares, but '{display_name(str(loaded.path))}' "
                          f"was trained with aspect-ratio buckets and takes the shapes "
                          f"{', '.join(f'{h}x{w}' for h, w in shapes)}. Choose --tta flip, 10crop or multiscale, "
                          "which keep each bucket's shape.")
    if short_sides is None:
        return
    largest = SHORT_SIDE_LIMIT * size
    bad = [int(float(side)) for side in short_sides if not size <= int(float(side)) <= largest]
    if bad:
        default = ",".join(map(str, resnet_short_sides(size)))
        raise CnnlabError(f"--scales {bad[0]}: --tta {RESNET_MODE} resizes the image's short side to each scale and "
                          f"crops {size}x{size} from it, so each must be a whole number of pixels from {size} (the "
                          f"model's image size) to {largest} ({SHORT_SIDE_LIMIT}x it). Leave out --scales for ResNet's "
                          f"at this size, {default}.")


def black_fill(meta: dict) -> torch.Tensor:
    """(C,) the value a black pixel has after normalisation: what TTA shifts pad with."""
    mean, std = torch.tensor(meta[MetaKey.MEAN]), torch.tensor(meta[MetaKey.STD])
    return -mean / std


def eval_loader(loaded: LoadedModel, *, data: Optional[str] = None, split: str = "test", batch_size: int = 256,
                device="cpu", shown_notes: Optional[set[str]] = None, originals: bool = False):
    """The split's loader with the training preprocessing; returns (dataset, loader).

    ``originals``: image files (folder and CSV data) are listed to be read from their files, whatever
    data.in_memory says, so the split holds the originals rather than their S x S centre squares (what
    ``--tta resnet10crop`` resizes); the built-in sets are held in memory either way.

    The data's notes and skipped-file warning are printed on stderr; ``shown_notes``, the lines printed so far
    by a caller that loads the data again (run_ensemble, for each member), keeps each from being printed twice.
    """
    from cnnlab.data import load_source
    from cnnlab.data.loaders import make_loader
    from cnnlab.data.stats import ChannelStats
    from cnnlab.data.sources import announce, reorder_classes

    data_config = replace(loaded.config.data, channels=loaded.in_chans, image_size=loaded.image_size)
    if data is not None:
        # named here, read from the working folder (its path recorded absolute, as a run records its own): the
        # run's record of how its own spec was typed does not apply
        data_config = replace(data_config, spec=absolute_spec(data), spec_typed=None)
    if originals:
        data_config = replace(data_config, in_memory=False)
    dataset = load_source(data_config)
    announce(dataset, shown_notes)
    splits = dataset.splits()
    if split not in splits or len(splits[split]) == 0:
        have = ", ".join(name for name, part in splits.items() if len(part))
        raise CnnlabError(f"The data '{display_name(data_config.spec)}' has no '{split}' split: it has {have}. Choose --split.")
    order = check_classes(loaded.classes, dataset.classes, f"the data '{display_name(data_config.spec)}'",
                          display_name(str(loaded.path)))
    if order is not None:
        # The model's classes in another order: a folder sorts its class names as text (0, 1, 10, 2, ...), a CSV
        # its numeric labels as numbers, so one data set read both ways lists 11 or more numbered classes
        # differently. The labels are renumbered to the model's order, each class matched by its name.
        reorder_classes(dataset, order)
    stats = ChannelStats(mean=tuple(loaded.mean), std=tuple(loaded.std), pixels=0)
    # The run's memory format: channels_last made vgg_mini 1.3x faster to train on this CPU's oneDNN.
    channels_last = loaded.config.train.channels_last
    if channels_last:
        loaded.model.to(memory_format=torch.channels_last)
    loader = make_loader(dataset, split, stats, batch_size=batch_size, train=False, device=device,
                         channels_last=channels_last)
    return dataset, loader


def check_classes(expected: list, actual: list, what: str, source: str,
                  advice: str = "Evaluate on data with the same class folders.") -> Optional[list[int]]:
    """Refuse data whose classes are not the model's, compared as shown (:func:`~cnnlab.errors.display_class`): a
    checkpoint from an older cnnlab keeps a folder's undecodable bytes as they were read, and its accents as
    the folder spelt them, where the data source now shows them escaped and composed.
    ``advice`` ends the message: what to do instead.

    The same names in another order are matched by name: returns, for each class of ``expected`` in turn, its
    position in ``actual`` (None when the order is the same), for :func:`cnnlab.data.sources.reorder_classes`.
    """
    expected = [display_class(str(name)) for name in expected]
    actual = [display_class(str(name)) for name in actual]
    if expected == actual:
        return None
    if sorted(expected) == sorted(actual) and len(set(expected)) == len(expected):  # a permutation of unique names
        position = {name: index for index, name in enumerate(actual)}
        return [position[name] for name in expected]
    extra = sorted(set(actual) - set(expected))
    missing = sorted(set(expected) - set(actual))
    detail = "; ".join(filter(None, [f"new: {first_few(extra, 5)}" if extra else "",
                                     f"missing: {first_few(missing, 5)}" if missing else "",
                                     "a name listed more than once" if not extra and not missing else ""]))
    raise CnnlabError(f"{what} has classes that differ from those {source} was trained on ({detail}). "
                      f"{advice}")


def check_tta_options(tta: str, scales=None, shift: Optional[int] = None) -> None:
    """Refuse an unknown TTA mode, and ``scales`` or ``shift`` given to a mode that would not use them
    (they would be dropped without a word), or not a list of scales (:func:`check_scales`; resnet10crop's are
    short sides in pixels, :func:`check_short_side_list`). run_eval and run_ensemble check them before loading
    a model."""
    from cnnlab.evaluate.tta import ALL_MODES, CORNER_MODES, RESNET_MODE

    if tta not in ALL_MODES:
        raise CnnlabError(f"--tta '{tta}' is not known: choose one of {', '.join(ALL_MODES)}.")
    if scales is not None and tta not in ("multiscale", RESNET_MODE):
        raise CnnlabError(f"--scales applies only to --tta multiscale (10 crops at each scale) and {RESNET_MODE} (10 "
                          f"crops at each short side): --tta {tta} has no scales. Add one of those modes, or leave out "
                          "--scales.")
    if scales is not None and tta == RESNET_MODE:
        check_short_side_list(scales)
    elif scales is not None:
        check_scales(scales)
    corner_modes = f"{', '.join(CORNER_MODES[:-1])} and {CORNER_MODES[-1]}"
    if shift is not None and tta == RESNET_MODE:
        raise CnnlabError(f"--shift does not apply to --tta {RESNET_MODE}: its corner views are crops of the resized "
                          f"original, where each corner lies, not shifts. Leave out --shift, or choose one of --tta "
                          f"{', '.join(CORNER_MODES)}.")
    if shift is not None and tta not in CORNER_MODES:
        raise CnnlabError(f"--shift applies only to --tta {corner_modes}, whose corner views it moves: --tta {tta} has "
                          f"no corner views. Choose one of those modes, or leave out --shift.")
    if shift is not None and whole_number(shift) is not None and shift < 0:
        raise CnnlabError(f"--shift must not be negative, got {shift}.")
    if shift is not None:  # from Python: 2.5 or "2" failed inside torch, True ran as a 1-pixel shift
        check_count(shift, "shift", 0, "the pixels the corner views are shifted by")


def tta_scales(tta: str, scales=None, image_size: Optional[int] = None) -> Optional[list]:
    """The scales a TTA mode resizes by, as the reports record them: multiscale's factors (given, else the
    default), resnet10crop's short sides in pixels (given, else ResNet's for ``image_size``), None for the modes
    without scales. Without them two multiscale reports could not be told apart."""
    from cnnlab.evaluate.tta import DEFAULT_SCALES, RESNET_MODE, resnet_short_sides

    if tta == RESNET_MODE:
        return [int(float(side)) for side in scales] if scales else resnet_short_sides(image_size)
    return [float(scale) for scale in (scales or DEFAULT_SCALES)] if tta == "multiscale" else None


def input_shapes(loaded) -> list[tuple[int, int]]:
    """(H, W) of the images the model was trained and evaluated on: the square training size, or, for a run
    trained with aspect-ratio buckets, each bucket's shape (in the order of data.buckets)."""
    from cnnlab.data.buckets import bucket_shapes, parse_buckets

    size = loaded.image_size
    if not loaded.config.data.buckets:
        return [(size, size)]
    return bucket_shapes(parse_buckets(loaded.config.data.buckets), size)  # as the data loader computes them


def check_shift_fits(loaded: LoadedModel, shift: Optional[int]) -> None:
    """Refuse a corner shift as large as the model's images, or for a run trained with aspect-ratio buckets as
    the shortest side of a bucket's shape: a corner view would hold none of the image (a 4:3 bucket of a
    32-pixel run is 24x32, so a 30-pixel shift emptied its views)."""
    from cnnlab.evaluate.tta import default_shift

    size = loaded.image_size
    shapes = input_shapes(loaded)  # (H, W): the square training size, or each bucket's shape
    shortest = min(min(shape) for shape in shapes)
    if shift is not None and shift >= shortest:
        if len(shapes) == 1 and shapes[0] == (size, size):
            images = f"the {size}x{size} images"
        else:
            images = (f"the shortest side ({shortest} px) of the images, shaped "
                      f"{', '.join(f'{h}x{w}' for h, w in shapes)} by the aspect-ratio buckets,")
        raise CnnlabError(f"--shift {shift} must be smaller than {images} '{display_name(str(loaded.path))}' takes: a "
                          f"corner view shifted {shift} px holds none of the image. Choose a shift below {shortest} "
                          f"(1/8 of the side, {default_shift(size)} px, is the usual one), or leave out --shift for "
                          "the run's own training shift.")


def trained_aug(loaded: LoadedModel, image_size: int, channels: int, hflip_safe: bool):
    """The augmentation ``loaded``'s run trained with (an AugConfig, every field concrete), as its resolved config
    records it; a run written before runs recorded it has its preset expanded here for the data, as its training
    did (``image_size``, ``channels`` and ``hflip_safe`` the data's)."""
    from cnnlab.data.transforms import resolve_aug, unresolved_fields

    aug = loaded.config.aug  # resolved by the training run: every field concrete
    if unresolved_fields(aug):
        # Legacy path: a run written before runs recorded their resolved augmentation keeps the preset's
        # fields as null; expand the preset once for the data, as that run's training did.
        aug = resolve_aug(aug, image_size, channels, hflip_safe)
    return aug


def own_shift(aug, image_size: int) -> tuple[int, bool]:
    """(the corner shift in pixels an eval uses when no --shift is given, whether it is the run's own): the
    run's pad-and-crop translation (aug.crop=translate; ``aug`` as :func:`trained_aug` gives it), the shifts the
    model has learnt to ignore, else 1/8 of ``image_size``, the side of the images evaluated."""
    from cnnlab.evaluate.tta import default_shift

    if aug.crop == "translate" and aug.translate > 0:
        return int(aug.translate), True
    return default_shift(image_size), False


# The training crops that show the model its images enlarged, as resnet10crop's larger short sides do: ResNet's
# short-side scaling and Inception's random resized crop
SCALE_CROPS = ("scale", "resized")


def tta_settings(loaded: LoadedModel, dataset, tta: str, shift: Optional[int] = None) -> tuple[bool, int, list[str]]:
    """(mirror views allowed, corner shift in pixels, notes) for a model and its data.

    The shift defaults to the training run's own pad-and-crop translation (aug.crop=translate), the
    shifts the model has learnt to ignore (:func:`own_shift`). A model trained without shifts gets 1/8 of
    the side and a note: on Fashion-MNIST such a model lost 0.6 points with 1-pixel corner views (93.20 -> 92.55).
    A given shift is checked against the mode (:func:`check_tta_options`) and the image size.

    resnet10crop on a model trained without scale changes (aug.crop other than :data:`SCALE_CROPS`) gets a note
    too: its enlarged views cost the fast Fashion-MNIST recipe 4.3 points (93.59% -> 89.28%), and the same recipe
    trained with aug.crop=scale gained 1.76 (docs/evaluation.md).
    """
    from cnnlab.evaluate.tta import CORNER_MODES, RESNET_MODE

    check_tta_options(tta, shift=shift)
    check_shift_fits(loaded, shift)

    notes = []
    if shift is not None:
        shift = int(shift)  # a numpy integer too: the shift goes into the JSON report
    flips = dataset.hflip_safe
    if tta in ("flip", "10crop", "multiscale", RESNET_MODE) and not flips:
        notes.append(f"mirror views left out: a mirror image changes this data's labels ({dataset.spec})")
    if shift is None:
        aug = trained_aug(loaded, dataset.image_size, dataset.channels, dataset.hflip_safe)
        shift, trained_with_shifts = own_shift(aug, dataset.image_size)
        if not trained_with_shifts and tta in CORNER_MODES:
            notes.append(f"the model was trained without pad-and-crop shifts (aug.crop={aug.crop}), so its corner "
                         f"views, shifted {shift} px, may lower accuracy; --shift sets the size")
        if tta == RESNET_MODE and aug.crop not in SCALE_CROPS:
            notes.append(f"the model was trained without scale changes (aug.crop={aug.crop}), so the enlarged views of "
                         f"--tta {RESNET_MODE} may lower accuracy; it suits a model trained with aug.crop=scale "
                         "(ResNet's short sides)")
    return flips, shift, notes


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, loader, *, tta: str = "none", fill: torch.Tensor,
                          flips: bool = True, shift: Optional[int] = None,
                          scales=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (N, K), labels (N,), log-probs (N, K)) over a loader; TTA averages the views' probabilities
    (and the log-probabilities are their exact log, for an uncapped loss).

    Row i is the split's image i, whatever order the loader batches in (aspect-ratio buckets batch bucket
    by bucket): the mistakes' indices name the split's files, and members batched differently line up.
    Without TTA the log-probabilities are log_softmax of the logits, the numbers training's evaluate()
    used, so accuracy matches the run's metrics.csv exactly and the loss to float32 rounding (training adds
    up its batches' sums in float64, this takes one float32 mean).
    """
    from cnnlab.data.loaders import FileLoader
    from cnnlab.evaluate.tta import DEFAULT_SCALES, RESNET_MODE, tta_log_probabilities

    if tta == RESNET_MODE:  # a loader holds the images at the model's size: the mode needs the originals
        raise CnnlabError(f"--tta {RESNET_MODE} crops the original images, which a loader no longer holds: use "
                          "resnet_tta_probabilities(loaded, dataset, split, ...) for it.")
    model.eval()
    all_probs, all_logp, all_labels = [], [], []
    for x, y in loader:
        tick()  # torch's CPU threads follow the cores other processes leave free
        if tta == "none":
            logp = torch.log_softmax(model(x).float(), dim=1)
            probs = logp.exp()
        else:
            logp = tta_log_probabilities(model, x, tta, fill=fill, flips=flips, shift=shift,
                                         scales=scales or DEFAULT_SCALES)
            probs = logp.exp()
        all_probs.append(probs.cpu())
        all_logp.append(logp.cpu())
        all_labels.append(y.cpu())
    probs, labels, log_probs = torch.cat(all_probs), torch.cat(all_labels), torch.cat(all_logp)
    order = loader.yield_order() if isinstance(loader, FileLoader) else None  # (N,) split index of each row
    if order is not None and len(order) == len(labels):
        to_split = order.argsort()  # the row that holds the split's image i
        probs, labels, log_probs = probs[to_split], labels[to_split], log_probs[to_split]
    return probs, labels, log_probs


def original_images(dataset, part, start: int, stop: int) -> Iterator[torch.Tensor]:
    """uint8 (C, H, W) images ``start`` to ``stop`` of a split as the data holds them, one at a time: each file
    decoded at its own size (with the model's channels), or, for a split held in memory, the S x S square stored
    there."""
    from cnnlab.data.images import read_image

    for i in range(start, stop):
        yield part.images[i] if part.in_memory else read_image(part.paths[i], dataset.channels)


def resnet_tta_notes(dataset, split: str, image_size: int, short_sides: Sequence[int] = ()) -> list[str]:
    """What resnet10crop does with a split held in memory (the built-in sets: digits, Fashion-MNIST, CIFAR,
    synthetic): only the S x S squares are stored, and those are enlarged ([] for a split read from files).
    ``short_sides``: the lengths used; the note says what the length S does only when S is among them."""
    from cnnlab.evaluate.tta import RESNET_MODE

    if not dataset.splits()[split].in_memory:
        return []
    same = (f"; at a short side of {image_size} the five crops are one image"
            if image_size in [int(side) for side in short_sides] else "")
    return [f"the {split} images are held in memory as {image_size}x{image_size} squares (the model's size), not "
            f"as files, so --tta {RESNET_MODE} enlarges those squares to each short side{same}"]


def resnet_tta_probabilities(loaded: LoadedModel, dataset, split: str, *, short_sides: Sequence[int],
                             flips: bool = True, batch_size: int = 256,
                             device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (N, K), labels (N,), log-probs (N, K)) of ``--tta resnet10crop``: the lecture's ResNet test, with a
    trained model's image size, mean/std and memory format (:func:`resnet_crop_probabilities`).

    The data's labels are read after :func:`eval_loader` matched its classes to the model's (and converted the
    model to the run's memory format).
    """
    return resnet_crop_probabilities(loaded.model, dataset, split, image_size=loaded.image_size, mean=loaded.mean,
                                     std=loaded.std, short_sides=short_sides, flips=flips, batch_size=batch_size,
                                     device=device, channels_last=loaded.config.train.channels_last)


@torch.no_grad()
def resnet_crop_probabilities(model: torch.nn.Module, dataset, split: str, *, image_size: int,
                              mean: Sequence[float], std: Sequence[float], short_sides: Sequence[int],
                              flips: bool = True, batch_size: int = 256, device="cpu",
                              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probs (N, K), labels (N,), log-probs (N, K)) of ``--tta resnet10crop`` for any model, as
    :func:`predict_probabilities` is for the other modes.

    Each original image (:func:`original_images`) has its short side resized to each of ``short_sides``, then
    torchvision's TenCrop of ``image_size`` S is taken (FiveCrop without ``flips``;
    :func:`cnnlab.evaluate.tta.scale_crops`), each view normalised with ``mean``/``std`` (per channel, of pixels
    in [0, 1]), and the softmax probabilities of the 10 x len(short_sides) views averaged, exactly in log space as
    every TTA mode does (:func:`cnnlab.evaluate.tta.mean_of_probabilities`). ``batch_size`` images go through each
    forward pass, one view of each; ``channels_last``: the views in the memory format the model was trained in.
    """
    from torchvision.transforms.v2 import functional as TF

    from cnnlab.evaluate.tta import mean_of_probabilities, scale_crops

    part = dataset.splits()[split]
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.eval()
    all_logp = []
    for start in range(0, len(part), batch_size):
        tick()  # torch's CPU threads follow the cores other processes leave free
        # Each original is cropped at every short side as it is decoded: the batch holds its S x S crops, never
        # all its originals at once (256 photos of 12 megapixels would be about 9 GB)
        crops = [[scale_crops(image, int(short_side), image_size, flips) for short_side in short_sides]
                 for image in original_images(dataset, part, start, min(start + batch_size, len(part)))]
        view_log_probs = []
        for index in range(len(short_sides)):
            views = torch.stack([per_image[index] for per_image in crops], dim=1)  # (V, B, C, S, S) uint8
            for view in views:
                # As the eval loader's transform: uint8 -> float [0, 1] (ToDtype scale=True) -> Normalize
                x = TF.normalize(TF.to_dtype(view, torch.float32, scale=True), mean, std)
                x = x.to(device).contiguous(memory_format=memory_format)
                view_log_probs.append(torch.log_softmax(model(x).float(), dim=1).cpu())
        all_logp.append(mean_of_probabilities(torch.stack(view_log_probs)))  # (B, K)
    log_probs = torch.cat(all_logp)
    return log_probs.exp(), part.labels.clone(), log_probs


TOP_K = 5  # the second accuracy eval reports: the true class among the model's TOP_K most probable
TOP_K_KEY = f"top{TOP_K}"  # its key in the report and metrics.json, present only with more than TOP_K classes


def classification_report(probs: torch.Tensor, labels: torch.Tensor, classes: list[str],
                          log_probs: Optional[torch.Tensor] = None) -> dict:
    """Top-1 and top-5 accuracy, mean NLL loss, per-class precision/recall/F1/support and the confusion matrix.

    Top-5 (:data:`TOP_K_KEY`) is left out for a model with 5 classes or fewer: its 5 guesses would cover every
    class, and the 100% it always scores would say nothing about the model.

    ``confusion[i][j]``: images of true class i predicted as j. Precision of a class that is never
    predicted, and recall of a class with no images, are reported as 0 (sklearn's zero_division=0).
    The macro F1 averages the classes that have images in the split or were predicted (sklearn's
    ``f1_score(average="macro")``): a class the split lacks and the model never chose has no F1, and
    counting it as 0 would lower the macro F1 of a perfect model (:func:`absent_classes_note` names them).
    """
    num_classes = probs.shape[1]
    log_probs = probs.clamp_min(1e-12).log() if log_probs is None else log_probs
    predicted = probs.argmax(dim=1)
    loss = -log_probs.gather(1, labels.view(-1, 1)).mean().item()
    top_k = {}
    if num_classes > TOP_K:
        # double, as top-1: float32 would report 266/269 as 0.98884761 rather than 0.98884758
        hits = (probs.topk(TOP_K, dim=1).indices == labels.view(-1, 1)).any(dim=1)  # (N,)
        top_k[TOP_K_KEY] = hits.double().mean().item()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    true_positive = confusion.diag().double()
    predicted_count, actual_count = confusion.sum(dim=0).double(), confusion.sum(dim=1).double()
    precision = torch.where(predicted_count > 0, true_positive / predicted_count.clamp_min(1), 0.0)
    recall = torch.where(actual_count > 0, true_positive / actual_count.clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    per_class = [{"class": display_name(str(name)), "precision": precision[i].item(), "recall": recall[i].item(),
                  "f1": f1[i].item(), "support": int(actual_count[i].item())} for i, name in enumerate(classes)]
    scored = (actual_count + predicted_count) > 0  # (K,) classes with images or predictions: the ones F1 is defined for
    return {"images": int(len(labels)), "top1": (predicted == labels).double().mean().item(),
            **top_k, "loss": loss, "per_class": per_class,
            "macro_f1": f1[scored].mean().item() if scored.any() else 0.0,
            "confusion": confusion.tolist()}


def absent_classes_note(per_class: list[dict]) -> list[str]:
    """The note naming the classes a split has no images of (``per_class``: a :func:`classification_report`'s
    rows): their recall is 0 by convention, and the macro F1 leaves them out unless they were predicted. []
    when every class has images."""
    absent = [row["class"] for row in per_class if row["support"] == 0]
    if not absent:
        return []
    shown = first_few(absent, 10)
    have = "has" if len(absent) == 1 else "have"
    return [f"{len(absent)} of the {len(per_class)} classes {have} no images in this split ({shown}): their rows "
            "show recall 0, and the macro F1 counts them only where the model predicted them"]


def most_confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, count: int = 16) -> list[dict]:
    """The ``count`` (0 or more) wrong predictions with the highest predicted probability: index, true,
    predicted, probability."""
    check_count(count, "count", 0, "how many of the most confidently wrong predictions to list (0: none)")
    confidence, predicted = probs.max(dim=1)
    wrong = torch.nonzero(predicted != labels).flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "probability": float(confidence[i])} for i in order]


def save_confusion_png(confusion: list[list[int]], classes: list[str], path: str | Path, title: str) -> Path:
    """The confusion matrix as a heat map with counts (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.io import save_png

    matrix = np.asarray(confusion)
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(matrix, cmap="Blues")
    labels = [display_name(str(c))[:14] for c in classes]
    # parse_math=False: a class named '$\frac$' is a name, not TeX for matplotlib to choke on
    axis.set_xticks(range(len(classes)), labels, rotation=60, ha="right", fontsize=8, parse_math=False)
    axis.set_yticks(range(len(classes)), labels, fontsize=8, parse_math=False)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(display_name(title), fontsize=10, parse_math=False)
    if len(classes) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(len(classes)):
            for j in range(len(classes)):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                          color="white" if matrix[i, j] > threshold else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    return save_png(figure, path, "the confusion matrix")


def save_mistakes_png(images: torch.Tensor, mistakes: list[dict], classes: list[str], path: str | Path) -> Path:
    """A grid of the most confidently wrong images, each titled 'true -> predicted (p)'.

    ``images``: uint8 (C, H, W) images (a list, or an (N, C, H, W) tensor), ``images[m["index"]]`` the one
    of mistake m; their shapes may differ (aspect-ratio buckets), each is drawn as it is.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnlab.io import save_png

    columns = 4
    rows = max(1, math.ceil(len(mistakes) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, mistake in zip(axes.flat, mistakes):
        image = images[mistake["index"]]
        if image.shape[0] == 1:
            axis.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            axis.imshow(image.permute(1, 2, 0).numpy())
        true, predicted = (display_name(str(classes[mistake[key]]))[:12] for key in ("true", "predicted"))
        axis.set_title(f"{true} -> {predicted}\np = {mistake['probability']:.2f}", fontsize=8, parse_math=False)
    if not mistakes:
        axes[0][0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    figure.suptitle("most confidently wrong (true -> predicted)", fontsize=10)
    figure.tight_layout()
    return save_png(figure, path, "the mistakes grid")


def split_images(dataset, part, indices: list[int]) -> list[torch.Tensor]:
    """uint8 (C, H, W) of some images of a split, as the model saw them (before normalising): the short side
    resized and centre-cropped to the square training size, or, for data with aspect-ratio buckets, fitted to
    the shape of the image's bucket (so the images of one list may differ in shape)."""
    from cnnlab.data.images import read_image, resize_square
    from cnnlab.data.loaders import bucketed_images

    if part.in_memory:
        return list(part.images[torch.tensor(indices, dtype=torch.long)])
    if dataset.buckets:
        fitted = bucketed_images(dataset, part)  # the loader's own rule, without its normalisation
        return [fitted[i][0] for i in indices]
    return [resize_square(read_image(part.paths[i], dataset.channels).unsqueeze(0), dataset.image_size)[0]
            for i in indices]


def default_tta(loaded: LoadedModel) -> tuple[int, list[float]]:
    """(the corner shift, multiscale's scales) an eval of ``loaded`` uses when --shift and --scales are not given:
    the run's own training shift (:func:`own_shift`; the images evaluated are the model's size, whatever the data:
    :func:`eval_loader`), and :data:`~cnnlab.evaluate.tta.DEFAULT_SCALES`. Known before the data is read, so the eval
    folder is named and checked before any work."""
    from cnnlab.evaluate.tta import DEFAULT_SCALES

    # hflip_safe=True: a run from before resolved augmentations has its preset expanded without the data, and the
    # data's mirror safety changes only the preset's flips, never its crop or translation
    aug = trained_aug(loaded, loaded.image_size, loaded.in_chans, hflip_safe=True)
    return own_shift(aug, loaded.image_size)[0], [float(scale) for scale in DEFAULT_SCALES]


def default_eval_folder(loaded: LoadedModel, split: str, tta: str, ema: bool, data: Optional[str],
                        shift: Optional[int] = None, scales=None) -> Path:
    """RUN/eval-SPLIT-TTA[-ema] beside the checkpoint; -shiftN and -scalesA_B_C added when ``shift`` or ``scales``
    is given and differs from what the eval uses without it (:func:`default_tta`), -NAME when the file is not the
    run's own checkpoint (best, else last), -on-DATA when ``data`` is not the run's
    (:func:`cnnlab.run.eval_folder_name`). An eval given its mode's own settings measures what one given none
    does, so it writes to the same folder rather than a second one with the same numbers."""
    from cnnlab.evaluate.tta import RESNET_MODE, resnet_short_sides

    if shift is not None or scales is not None:
        plain_shift, plain_scales = default_tta(loaded)
        if tta == RESNET_MODE:  # its scales are short sides in pixels, ResNet's at the model's size by default
            plain_scales = [float(side) for side in resnet_short_sides(loaded.image_size)]
        if shift is not None and int(shift) == plain_shift:
            shift = None
        if scales is not None and sorted(float(scale) for scale in scales) == sorted(plain_scales):
            scales = None  # the views' probabilities are averaged: their order changes no number
    run = RunFolder(loaded.path.parent)
    try:
        own = run.checkpoint()
    except CnnlabError:  # a checkpoint file outside a run folder: there is no run's own to keep apart from
        own = None
    other_file = None if own is not None and own.resolve() == loaded.path.resolve() else loaded.path.stem
    other_data = data if data is not None and not same_data(data, loaded.config.data.spec) else None
    return run.eval_folder(split, tta, ema, other_file, other_data, shift, scales)


def _data_typed(data: Optional[str], spec: str) -> dict:
    """{"data_typed": --data as given} where the report's "data" records it otherwise (its path made absolute): a
    run older than the absolute record of its own data keeps the path as typed, from the working folder it trained
    in, and `cnnlab runs` matches an eval with it by either. Nothing otherwise."""
    return {"data_typed": data} if data is not None and data != spec else {}


def check_out_not_in_another_run(folder: Path, checkpoint: Path) -> None:
    """Refuse an eval folder (``eval-*``) inside a run folder that ``checkpoint`` is not from: `cnnlab runs` and
    that run's page read every eval folder of the run as an eval of its own weights, and would show this
    model's test accuracy as the run's."""
    from fnmatch import fnmatch

    from cnnlab.run import EVAL_FOLDER_PATTERN

    run = folder.parent
    if not fnmatch(folder.name, EVAL_FOLDER_PATTERN) or not RunFolder(run).is_run():
        return
    if checkpoint.resolve().parent == run.resolve():
        return
    raise CnnlabError(f"--out '{display_name(str(folder))}' is an eval folder of the run '{display_name(str(run))}', "
                      f"but '{display_name(str(checkpoint))}' is not one of that run's checkpoints: `cnnlab runs` and "
                      "the run's page would show its accuracy as that run's. Leave out --out to write beside the "
                      "checkpoint, or name a folder outside that run.")


def check_out_holds_only_evals(folder: Path, option: str) -> None:
    """Refuse an existing folder that holds anything an eval does not write (another run's files, a data set's
    class folders): the eval's files would be mixed in among them, and in a class folder its PNGs would become
    images of that class. An earlier eval's folder is replaced file by file."""
    from fnmatch import fnmatch

    from cnnlab.run import EVAL_FILES

    if not folder.is_dir():
        return
    # an eval's own files, and the temporary files of one killed while writing them (cnnlab.io.atomic_path)
    own = [*EVAL_FILES, *(f".{name}.*.tmp" for name in EVAL_FILES)]
    others = sorted(entry.name for entry in folder.iterdir() if not any(fnmatch(entry.name, mine) for mine in own))
    # Files by an eval's names that no eval wrote (a metrics.json of one's own, a photo named mistakes.png)
    others += [name for name in EVAL_FILES if (folder / name).exists() and not _eval_wrote(folder, name)]
    if others:
        raise CnnlabError(f"{option} '{display_name(str(folder))}' holds files an eval does not write "
                          f"({first_few(map(display_name, others), 5)}): the eval's report would be mixed in among "
                          "them, or replace them. Name a new or empty folder, or an earlier eval's folder, whose "
                          "files it replaces.")


def _eval_wrote(folder: Path, name: str) -> bool:
    """Whether ``folder``'s file ``name`` (one of EVAL_FILES) is what an eval writes there, and may be replaced: its
    metrics.json (is_eval_folder), a confusion.json with the matrix's keys, or a plot matplotlib wrote."""
    import json

    from cnnlab.io import replaceable_plot
    from cnnlab.run import EVAL_CONFUSION_FILE, EVAL_METRICS_FILE, is_eval_folder

    if name == EVAL_METRICS_FILE:
        return is_eval_folder(folder)
    if name == EVAL_CONFUSION_FILE:
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(value, dict) and all(key in value for key in ("classes", "matrix"))
    return replaceable_plot(folder / name)


@keeps_thread_setting
def run_eval(path: str | Path, *, data: Optional[str] = None, split: str = "test", tta: str = "none",
             ema: bool = False, scales=None, shift: Optional[int] = None, batch_size: int = 256,
             out: Optional[str | Path] = None, mistakes: int = 16, device="cpu") -> dict:
    """Evaluate a run or checkpoint; write metrics.json, confusion.json/.png and mistakes.png to ``out``.

    metrics.json names the checkpoint by its absolute path, what was typed beside it where that was relative
    (:func:`cnnlab.evaluate.measured.checkpoint_fields`), and records which weights it measured (``measured``: the
    checkpoint relative to ``out`` and the file's identity, :func:`cnnlab.evaluate.measured.measured_record`), so
    that a reader can tell an eval of weights a resumed run has since replaced.

    ``tta``: one of :data:`cnnlab.evaluate.tta.ALL_MODES`; ``scales``: multiscale's factors, or resnet10crop's
    short sides in pixels (:func:`resnet_tta_probabilities`; default ResNet's at the model's size).
    ``out`` defaults to ``RUN/eval-SPLIT-TTA[-ema]`` beside the checkpoint (:func:`default_eval_folder`); an empty ``out`` or the current
    folder ('.') is refused (:func:`check_out_is_named`), as run_ensemble refuses it. ``mistakes``: how many of the
    most confidently wrong images to report and draw (0 or more); ``batch_size`` at least 1; ``device``
    auto, cpu, cuda or cuda:N. Returns the report dict.
    """
    import time

    from cnnlab.evaluate.measured import checkpoint_fields, measured_record
    from cnnlab.evaluate.tta import CORNER_MODES, RESNET_MODE, view_count
    from cnnlab.io import check_output_folder, signals_held, write_json_atomic

    check_tta_options(tta, scales, shift)
    check_count(mistakes, "mistakes", 0, "how many of the most confidently wrong images to report and draw (0: none)")
    check_count(batch_size, "batch_size", 1, "the images per forward pass")
    check_out_is_named(out, f"{EVAL_METRICS_FILE}, {EVAL_CONFUSION_FILE}, {EVAL_CONFUSION_PNG} and "
                            f"{EVAL_MISTAKES_PNG}",
                       "Name a folder for them, such as 'eval-test', or leave out --out for RUN/eval-SPLIT-TTA "
                       "beside the checkpoint.")
    device = resolve_device(device, "device")
    keep_on_cpu(device)  # the memory a batch frees kept for the next one (cnnlab/heap.py)
    loaded = load_model(path, ema=ema, device=device)
    if tta == RESNET_MODE:
        check_short_sides_fit(loaded, scales)
    folder = Path(out) if out is not None else default_eval_folder(loaded, split, tta, ema, data, shift, scales)
    option = "--out" if out is not None else "The eval folder"
    if out is not None:
        check_out_not_in_another_run(folder, loaded.path)
    check_out_holds_only_evals(folder, option)
    # before the work, not after; by default the folder goes in the run's, which may be read-only
    check_output_folder(folder, option, instead="" if out is not None else
                        "Give --out a folder you can write to (by default the eval's folder is in the run's).")
    dataset, loader = eval_loader(loaded, data=data, split=split, batch_size=batch_size, device=device,
                                  originals=tta == RESNET_MODE)
    flips, shift, notes = tta_settings(loaded, dataset, tta, shift)
    scales_used = tta_scales(tta, scales, loaded.image_size)  # multiscale's factors, resnet10crop's short sides
    started = time.perf_counter()
    if tta == RESNET_MODE:
        notes += resnet_tta_notes(dataset, split, loaded.image_size, scales_used)
        probs, labels, log_probs = resnet_tta_probabilities(loaded, dataset, split, short_sides=scales_used,
                                                            flips=flips, batch_size=batch_size, device=device)
    else:
        probs, labels, log_probs = predict_probabilities(loaded.model, loader, tta=tta, fill=black_fill(loaded.meta),
                                                         flips=flips, shift=shift, scales=scales)
    seconds = time.perf_counter() - started
    report = classification_report(probs, labels, loaded.classes, log_probs)
    notes += absent_classes_note(report["per_class"])
    wrong = most_confident_mistakes(probs, labels, mistakes)
    labels_shown = loaded.class_labels  # every class name in the reports and plots: printable, UTF-8
    # Which weights were measured: a resumed run rewrites its checkpoints, and readers compare the two
    # (cnnlab.evaluate.measured)
    report.update({**checkpoint_fields(loaded.path), MEASURED_KEY: measured_record(loaded, folder),
                   "model": loaded.model_name, "weights": loaded.weights,
                   "data": dataset.spec, **_data_typed(data, dataset.spec), "split": split, "tta": tta,
                   "views": view_count(tta, flips, scales_used or ()),
                   "shift": shift if tta in CORNER_MODES else None,
                   "scales": scales_used,
                   "seconds": seconds, "images_per_second": len(labels) / max(seconds, 1e-9), "notes": notes,
                   "mistakes": [{**m, "true": labels_shown[m["true"]], "predicted": labels_shown[m["predicted"]]}
                                for m in wrong]})
    check_output_folder(folder, option, create=True)
    files = {"metrics": folder / EVAL_METRICS_FILE, "confusion": folder / EVAL_CONFUSION_FILE,
             "confusion_png": folder / EVAL_CONFUSION_PNG, "mistakes_png": folder / EVAL_MISTAKES_PNG}
    report["files"] = {name: str(p) for name, p in files.items()}
    part = dataset.splits()[split]
    images = split_images(dataset, part, [m["index"] for m in wrong])
    # the four files describe one evaluation: a Ctrl-C between two of them left an earlier eval's beside them
    with signals_held(f"its files in '{display_name(str(folder))}'"):
        write_json_atomic(files["confusion"], {"classes": labels_shown, "rows": "true class",
                                               "columns": "predicted class", "matrix": report["confusion"]},
                          "the confusion matrix")
        save_confusion_png(report["confusion"], labels_shown, files["confusion_png"],
                           f"{loaded.model_name} on {dataset.spec} {split} (tta {tta}): {report['top1']:.2%}")
        save_mistakes_png(images, [{**m, "index": k} for k, m in enumerate(wrong)], labels_shown,
                          files["mistakes_png"])
        write_json_atomic(files["metrics"], report, "the evaluation report")
    return report
