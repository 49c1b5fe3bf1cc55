"""``cnnlab predict``: class names and probabilities for image files, with the training preprocessing.

The images are named as files, folders (searched recursively), patterns that no shell expanded
('photos/**/*.jpg') and CSV files that list them (the path first on each row). Each image is decoded (EXIF orientation applied), converted to the model's channels (gray <-> RGB),
resized so its short side is the training size and centre-cropped (a run trained with aspect-ratio
buckets: scaled to cover the shape of the bucket nearest the image's ratio and centre-cropped to it,
as its training and evaluation fitted images), then normalised with the training mean/std, all read
from the checkpoint. Files that cannot be decoded, other files in the
folders, broken links and anything not a regular file are skipped and listed; with no image at all
the command stops with a message instead of printing nothing. An image named more than once (twice, in a
folder and its own subfolder, by a pattern and by name) is predicted once, where it first appears.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

# The loader's rules and words for what it skips, so predict and training report a file alike.
from cnnlab.data.images import read_image, resize_square
from cnnlab.data.sources import CsvRow, display_name, image_files, not_regular_reason, skipped_text
from cnnlab.devices import resolve_device
from cnnlab.errors import CnnlabError, counted, shown_value
from cnnlab.heap import keep_on_cpu
from cnnlab.run import refuse_image
from cnnlab.threads import keeps_thread_setting, tick

# The extensions a message suggests (cnnlab.data.images.IMAGE_EXTENSIONS has them all).
IMAGE_SUFFIXES_SHOWN = (".png", ".jpg", ".bmp", ".webp")
DEFAULT_TOPK = 5  # classes listed per image when --topk is not given (top-5, as eval reports)
REPEATED_NAMED = 2  # how many repeated names the note on them gives before it only counts


def _shown(path) -> str:
    """A path as the output shows it: names that are not UTF-8 escaped (the file is read by its real path)."""
    return display_name(str(path))


def _input_list(inputs: str | Path | list[str | Path]) -> list[str | Path]:
    """The image files and folders as a list: one str or Path is one input (iterated, a string would be
    an input per character; an absolute path's first, '/', a walk of the whole file system)."""
    if isinstance(inputs, (str, os.PathLike)):
        listed = [inputs]
    elif isinstance(inputs, bytes):  # bytes iterate as numbers
        listed = None
    else:
        try:
            listed = list(inputs)
        except TypeError:
            listed = None
    if listed is None:
        raise CnnlabError(f"Name the images as a str or Path, or a list of them: got {type(inputs).__name__} "
                          f"{shown_value(inputs)}.")
    for item in listed:
        # Path('') is '.': an empty name (a shell variable that was never set) would predict every image
        # under the current folder. The current folder is predicted only when it is named, as '.'.
        if isinstance(item, str) and item == "":
            raise CnnlabError(f"An image path is empty ({shown_value(item)}): name image files or folders of images "
                              "(the current folder as '.').")
    return listed


def collect_images(inputs: str | Path | list[str | Path]) -> tuple[list[Path], list[dict]]:
    """Image files named directly or found (recursively, sorted) in folders, and what was skipped.

    ``inputs``: a list of files and folders, or one of them as a str or Path; a name that does not exist and
    holds a wildcard (``*``, ``?``, ``[``) is a pattern, replaced by what it matches, and a ``.csv`` file lists
    image files and folders, the first field of each row, relative to the CSV. A file named directly is
    tried whatever its extension. In folders only image extensions are taken; everything else is listed
    in ``skipped`` with its reason, worded as the data loader words it: other files, hidden files and
    folders, broken links (a link to itself included), anything not a regular file, links to folders (not
    followed) and folders that cannot be read. A path that does not exist at all is an error. A file reached
    more than once is taken once, where it first appears (:func:`_once_each`), and a skipped entry reached more
    than once is listed once.
    """
    files, skipped, _, _ = _collected(inputs)
    return files, skipped


def _collected(inputs: str | Path | list[str | Path]) -> tuple[list[Path], list[dict], list[Path],
                                                             Callable[[Path, str], None]]:
    """:func:`collect_images`'s files and skipped entries, the names it left out as repeats, and the function that
    lists a skipped path once (a file that then fails to decode is listed with it: named and also reached through
    its folder, where the walk skipped it, it is one file)."""
    files: list[Path] = []
    skipped: list[dict] = []
    skipped_places: set[str] = set()

    def skip(path: Path, reason: str) -> None:
        """List a skipped path once, however often it is reached (a folder and its own subfolder, a name given
        twice), as images are taken once (:func:`_once_each`): listed twice, it would count twice in the
        "skipped N files" warning. Compared as the folder entry itself (its folder resolved, its own name kept),
        not what a link points to: two broken links to one missing file are two entries."""
        place = os.path.join(os.path.realpath(path.parent), path.name)
        if place not in skipped_places:
            skipped_places.add(place)
            skipped.append({"path": _shown(path), "reason": reason})

    for item in _expanded(map(Path, _input_list(inputs))):
        if item.suffix.lower() == CSV_SUFFIX and item.is_file():
            for path in _csv_listed(item, skipped):  # its rows are files and folders, taken as if named here
                _take(path, files, skip)
        else:
            _take(item, files, skip)
    files, repeated = _once_each(files)
    return files, skipped, repeated, skip


def _once_each(files: list[Path]) -> tuple[list[Path], list[Path]]:
    """Each file once, in the order of first appearance, compared as the file each name resolves to: a name given
    twice, a folder and its own subfolder, a pattern and a name that overlap, a link and its target. Predicted
    twice, an image would also count twice in whatever the predictions are tallied into. Also returns the later
    names, left out."""
    seen: set[str] = set()
    once, repeated = [], []
    for path in files:
        resolved = os.path.realpath(path)
        if resolved in seen:
            repeated.append(path)
        else:
            seen.add(resolved)
            once.append(path)
    return once, repeated


def _take(item: Path, files: list[Path], skip: Callable[[Path, str], None]) -> None:
    """One named path: a folder's images, a file, or a skipped entry (``skip(path, reason)``); an error when
    nothing is there."""
    if item.is_dir():
        files += image_files(item, skip)
    elif item.is_file():
        files.append(item)  # named on purpose: try to decode it whatever its extension
    elif item.is_symlink() or os.path.lexists(item):
        skip(item, not_regular_reason(item))  # a broken link, a device, a pipe
    else:
        raise CnnlabError(f"'{_shown(item)}' does not exist: name image files or folders of images.")


CSV_SUFFIX = ".csv"  # a named file that lists images, one a row, instead of holding one
CSV_HEADER_NAMES = ("path", "file", "filename", "image", "image_path")  # a first row that names the path column


def _csv_listed(listing: Path, skipped: list[dict]) -> list[Path]:
    """The paths a CSV file lists: the first field of each row, relative to the CSV's folder as csv:FILE data
    reads them (other fields, such as a label or split, are not needed to predict). A header row (its first
    field 'path', 'file', 'image', ..., or the second 'label', 'class' or 'target') and blank lines are passed
    over; a row naming a missing file is skipped and listed with its line."""
    from cnnlab.data.sources import csv_records

    try:  # utf-8-sig: Excel's byte order mark; a quote never closed is refused naming its line, as csv:FILE's
        text = listing.read_bytes().decode("utf-8-sig")
        records = [(number, [field.strip() for field in row]) for number, row in csv_records(text, _shown(listing))]
    except (OSError, UnicodeDecodeError) as err:
        raise CnnlabError(f"Cannot read the CSV file '{_shown(listing)}': {display_name(str(err))}. A CSV of images "
                          "must be UTF-8 text with the image path first on each row.") from None
    paths, first_row = [], True
    for number, row in records:
        if not any(row):
            continue
        is_header = first_row and (row[0].lower() in CSV_HEADER_NAMES or
                                   (len(row) > 1 and row[1].lower() in ("label", "class", "target")))
        first_row = False
        if is_header:
            continue
        where = CsvRow(f"{_shown(listing)} line {number}")  # a row, counted apart from the files
        path = listing.parent / row[0]
        if not row[0]:
            skipped.append({"path": where, "reason": "no image path in the first field"})
        elif not os.path.lexists(path):
            skipped.append({"path": where, "reason": f"no file '{display_name(row[0])}'"})
        else:
            paths.append(path)
    return paths


GLOB_CHARACTERS = ("*", "?", "[")  # what makes a name a pattern for Python's glob


def _expanded(items):
    """Each path as given, or, for a name that does not exist and holds a wildcard, what it matches (sorted; **
    spans folders): a pattern quoted in a shell, or typed where no shell expands it, reaches cnnlab unexpanded."""
    for item in items:
        text = str(item)
        if os.path.lexists(item) or not any(char in text for char in GLOB_CHARACTERS):
            yield item
            continue
        matches = sorted(glob.glob(text, recursive=True))
        if not matches:
            raise CnnlabError(f"'{_shown(item)}' matches no file or folder: check the pattern, or name image files "
                              "or folders of images.")
        yield from map(Path, matches)


# Skipped files cnnlab predict's warning lists, one a line, before it counts the rest: a folder of thousands of
# non-images would bury the predictions (--json lists every one).
SKIPS_LISTED = 20


def skipped_count(skipped: list[dict]) -> str:
    """'2 files', or '1 file and 1 row' when rows of a CSV listing were skipped too."""
    rows = sum(1 for row in skipped if isinstance(row["path"], CsvRow))
    return " and ".join(counted(count, noun) for count, noun in ((len(skipped) - rows, "file"), (rows, "row")) if count)


def _nothing_to_predict(inputs: list[str | Path], files: list[Path], skipped: list[dict]) -> CnnlabError:
    named = ", ".join(f"'{_shown(item)}'" for item in inputs)
    # "file", not "image file": a file named on the command line is tried whatever it holds (notes.txt)
    found = (f"none of the {counted(len(files), 'file')} read could be decoded as an image" if files
             else "no image files were found")
    listed = f"; {skipped_text([(row['path'], row['reason']) for row in skipped])}" if skipped else ""
    return CnnlabError(f"Nothing to predict in {named}: {found}{listed}. Name image files "
                       f"({', '.join(IMAGE_SUFFIXES_SHOWN)}, ...) or folders that hold them.")


@torch.no_grad()
@keeps_thread_setting
def predict_files(checkpoint: str | Path, inputs: str | Path | list[str | Path], *, topk: Optional[int] = None,
                  ema: bool = False, batch_size: int = 64, device="cpu") -> dict:
    """``{"predictions": [{path, top: [{class, probability}]}], "skipped": [{path, reason}], "repeated": N,
    "repeated_names": [path], ...}``.

    ``inputs``: image files and folders, a list or one str/Path; an image reached more than once is predicted
    once, and ``repeated`` counts the names left out (``repeated_names``, in order). ``topk`` classes per image;
    None lists up to :data:`DEFAULT_TOPK` (all of a model with fewer classes). ``batch_size`` at least 1;
    ``device`` auto, cpu, cuda or cuda:N. Raises CnnlabError when an input does not exist, no image among the inputs can be
    decoded, or ``topk`` is more than the model's classes.
    """
    from cnnlab.errors import check_count
    from cnnlab.train.checkpoint import load_run_model

    if topk is not None:  # 2.5 or True failed inside torch's topk
        check_count(topk, "topk", 1, "the classes to list per image")
    check_count(batch_size, "batch_size", 1, "the images per forward pass")
    device = resolve_device(device, "device")
    keep_on_cpu(device)  # the memory a batch frees kept for the next one (cnnlab/heap.py)
    if isinstance(checkpoint, (str, os.PathLike)) and Path(checkpoint).is_file():
        # the arguments in the wrong order: said before the inputs are read (`cnnlab predict photo.png RUN` would
        # report RUN as holding no image)
        refuse_image(Path(checkpoint), "`cnnlab predict` takes the run first, then the images "
                                       "(cnnlab predict RUN IMAGE...).")
    inputs = _input_list(inputs)
    if not inputs:
        raise CnnlabError("predict_files was given no input: name image files or folders that hold them, in a list "
                          "or as one str or Path.")
    files, skipped, repeated, skip = _collected(inputs)
    if not files:
        raise _nothing_to_predict(inputs, files, skipped)
    loaded = load_run_model(checkpoint, ema=ema, device=device)
    labels = loaded.class_labels  # printable and UTF-8 whatever bytes the class folders had
    if topk is not None and topk > len(labels):
        raise CnnlabError(f"--topk {topk} is more than the {len(labels)} classes '{_shown(loaded.path)}' was "
                          f"trained on: choose --topk {len(labels)} or fewer, or leave it out to list up to {DEFAULT_TOPK}.")
    k = min(DEFAULT_TOPK, len(labels)) if topk is None else int(topk)  # a numpy integer too
    channels, size = loaded.in_chans, loaded.image_size
    fit = _image_fit(loaded)
    mean = torch.tensor(loaded.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(loaded.std, dtype=torch.float32).view(1, -1, 1, 1)

    def predict_decoded(decoded: list[tuple[Path, torch.Tensor]]) -> list[dict]:
        """The rows of some decoded images, in their order; images of one shape batch together (a bucketed
        run has one shape per bucket)."""
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for number, (_, image) in enumerate(decoded):
            by_shape.setdefault(tuple(image.shape), []).append(number)
        rows: list[Optional[dict]] = [None] * len(decoded)
        for numbers in by_shape.values():
            tick()  # torch's CPU threads follow the cores other processes leave free
            x = torch.cat([decoded[number][1] for number in numbers]).float().div(255)  # (B, C, H, W) in [0, 1]
            x = ((x - mean) / std).to(device)
            probs = torch.softmax(loaded.model(x).float(), dim=1).cpu()
            values, indices = probs.topk(k, dim=1)
            for number, row_values, row_indices in zip(numbers, values, indices):
                rows[number] = {"path": _shown(decoded[number][0]), "top": [
                    {"class": labels[i], "probability": float(p)} for p, i in zip(row_values, row_indices)]}
        return rows

    predictions = []
    for start in range(0, len(files), batch_size):
        # One batch of files decoded at a time, so a folder of many photos never sits in memory whole.
        decoded: list[tuple[Path, torch.Tensor]] = []
        for path in files[start:start + batch_size]:
            try:
                decoded.append((path, fit(read_image(path, channels))))  # (1, C, H, W)
            except CnnlabError as err:
                skip(path, display_name(str(err)))
        predictions += predict_decoded(decoded)
    if not predictions:
        raise _nothing_to_predict(inputs, files, skipped)
    return {"checkpoint": _shown(loaded.path), "model": loaded.model_name, "weights": loaded.weights,
            "image_size": size, "buckets": loaded.config.data.buckets, "channels": channels, "predictions": predictions,
            "skipped": skipped, "repeated": len(repeated), "repeated_names": [_shown(path) for path in repeated]}


def repeated_text(result: dict) -> str:
    """'skipped 3 repeated names of images named before (photos/a.png, a.png, ...): each image is predicted once':
    the names predict_files left out as repeats, counted, the first :data:`REPEATED_NAMED` of them named (each
    once: a folder given three times repeats its names twice); '' for none."""
    if not result["repeated"]:
        return ""
    names = list(dict.fromkeys(result["repeated_names"]))
    shown = ", ".join(names[:REPEATED_NAMED]) + (", ..." if len(names) > REPEATED_NAMED else "")
    return (f"skipped {counted(result['repeated'], 'repeated name')} of images named before ({shown}): each image "
            "is predicted once")


def _image_fit(loaded) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 (C, h, w) -> (1, C, H, W) as the run's evaluation shaped its images: the short side resized to the
    training size and centre-cropped to a square, or, for a run trained with aspect-ratio buckets, scaled to
    cover the shape of the bucket nearest the image's ratio and centre-cropped to it (the data loader's rule)."""
    from cnnlab.data.buckets import assign_buckets, fit_to_shape, parse_buckets
    from cnnlab.evaluate.evaluate import input_shapes

    size = loaded.image_size
    if not loaded.config.data.buckets:
        return lambda image: resize_square(image.unsqueeze(0), size)
    ratios = parse_buckets(loaded.config.data.buckets)
    shapes = input_shapes(loaded)

    def fit(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        (bucket,) = assign_buckets([(width, height)], ratios)
        return fit_to_shape(image, shapes[bucket]).unsqueeze(0)

    return fit
