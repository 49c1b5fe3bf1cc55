"""Image files and pixels: decoding a file to a uint8 tensor, probing its size, resizing and channels.

Everything that reads an image file or changes a uint8 image tensor lives here, so the data
sources, the loaders, the aspect-ratio buckets, the statistics and prediction all decode and resize
one way. This module imports nothing else from cnnlab but the error type: any module of the
package may import it without making an import loop.

PIL decodes (torchvision.io's decoders are deprecated since torchvision 0.29); torchvision's v2
functional resizes, with antialiasing, as its Resize transform does on tensors, except where
enlarging a whole elongated image would cost far more memory than the crop it is cut to
(:func:`resize_and_crop`). Both are imported inside the functions that use them, so importing this
module costs neither.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError, display_name

# File name endings read as images (compared lower-case); anything else in a data folder is skipped and named.
# The raster formats Pillow decodes by itself, under each name Pillow registers for them (a JPEG may be
# .jfif or .jpe, a Netpbm file .pbm, .pgm, .ppm or .pnm); tests/data/test_images.py checks every one
# against Pillow. Formats Pillow opens only through another program (EPS through Ghostscript) or that
# are not pictures (HDF5, GRIB, MPEG) stay out.
IMAGE_EXTENSIONS = (
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")  # PIL modes that carry one colour channel
# PIL modes of floating-point pixels (a TIFF of float32). An integer format fixes its range (0..255, 0..65535);
# a float one does not (0..1, 0..255, -1..1 or any other), so its pixels have no 8-bit reading to take without
# a guess: convert('L') clips them, and a 0..1 image comes out black. Such files are refused, and a data
# source skips them with FLOAT_REASON, as it skips any file it cannot decode.
FLOAT_MODES = ("F",)
FLOAT_REASON = ("floating-point pixels (PIL mode F), whose value range the format does not define; save it as an "
                "8- or 16-bit image (e.g. scaled to 0..255 as uint8)")
SIXTEEN_BIT_MAX = 65535  # the white of a 16-bit image, read as 255


@functools.cache
def read_formats() -> tuple[str, ...]:
    """Pillow's names of the formats behind :data:`IMAGE_EXTENSIONS` ("JPEG", "PNG", ...): the only decoders
    :func:`_open_image` lets Pillow try. Without the list Pillow identifies a file by its first bytes whatever
    its name, and a PostScript file named photo.png went to Ghostscript, a program run on the user's file."""
    from PIL import Image

    extensions = Image.registered_extensions()
    return tuple(sorted({extensions[suffix] for suffix in IMAGE_EXTENSIONS}))


# Pictures whose format Pillow registers no reader for without a plugin: a phone's HEIC photo, JPEG XL, vector
# drawings and cameras' raw files (.dng, ...), told apart from files that hold no picture
PICTURES_PILLOW_DOES_NOT_KNOW = frozenset({".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                                           ".orf", ".rw2", ".raf"})


def not_image_reason(path: Path) -> str:
    """Why a data folder skips ``path``, whose ending is not in :data:`IMAGE_EXTENSIONS`: "not an image file
    (.txt)", or, for an ending Pillow registers as an image format (.eps, .psd), that cnnlab does not read
    that format, so a picture is never called "not an image"."""
    from PIL import Image

    suffix = path.suffix.lower()
    if suffix and (Image.registered_extensions().get(suffix) in Image.OPEN or suffix in PICTURES_PILLOW_DOES_NOT_KNOW):
        return f"image format not read ({path.suffix}; save it as PNG or JPEG)"
    return f"not an image file ({path.suffix or 'no extension'})"


class UnreadableImage(CnnlabError):
    """A file that opens but whose pixels cnnlab does not read; ``reason`` is the phrase a skip list shows
    after the file's name (the message names the file too). Built by :func:`_unreadable`."""

    def __init__(self, message: str, reason: str = ""):
        # One positional argument, as for any exception: a DataLoader worker's error is rebuilt in the main
        # process as type(err)(text), and one that cannot be would reach the user as a RuntimeError.
        super().__init__(message)
        self.reason = reason


def _unreadable(path, reason: str, advice: str) -> UnreadableImage:
    return UnreadableImage(f"Cannot read the image '{display_name(str(path))}': it has {reason}; {advice}.", reason)


def _too_many_pixels(err: Exception) -> str:
    """The reason for a file Pillow refuses as a possible decompression bomb, in our words: its size and the limit.

    Pillow checks width x height against 2 x ``PIL.Image.MAX_IMAGE_PIXELS`` when it reads the header, before
    any pixel is decoded, and says so in a sentence about "DOS attacks"; the count is taken from that sentence.
    """
    from PIL import Image

    limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0
    return (f"{_pixels_in(err)}, more than the {limit:,} that are decoded per image (a guard against decompression "
            "bombs, small files that expand to huge images)")


def _pixels_in(err: Exception) -> str:
    """"120 pixels": the image size in Pillow's decompression-bomb error or warning ("Image size (120 pixels)")."""
    found = re.search(r"\((\d+) pixels\)", str(err))
    return f"{int(found.group(1)):,} pixels" if found else "more pixels than the limit"


# Pillow's own warning for an image above PIL.Image.MAX_IMAGE_PIXELS (and up to twice that, where it refuses):
# "Image size (N pixels) exceeds limit of M pixels, could be decompression bomb DOS attack.", two lines on
# stderr that name neither the file nor a way out. :func:`_open_image` says it instead, naming the file.
_NOTED_LARGE: set[str] = set()  # files already named in a large-image note in this process


@contextmanager
def _pillow_warnings_named(path):
    """While cnnlab reads the image ``path``, Pillow's decompression-bomb warning is not displayed, and Pillow's
    other warnings (a palette's transparency, damaged EXIF data) are one ``note:`` line naming the file instead
    of two lines naming Pillow's source file; every other warning is displayed through the program's own
    ``warnings.showwarning``, which is put back afterwards. Python shows a warning once per place in the code
    that issues it, so the note names the first file that raised it and says that others may have it too.

    The program's warning filters are not touched. A filter (``warnings.filterwarnings``, for the rest of the
    process) would act on the program's own Pillow reads too; a ``warnings.catch_warnings`` block per image
    would put the filters back, but entering one makes Python forget which warnings it has already shown
    (every module's record of them), so a warning that repeats -- a palette image's transparency, once per
    file, or the program's own, once per step -- would be printed again after every image read.
    Displaying is the last thing Python does with a warning, after the filters: one they ignore never
    arrives here, one they make an error is raised (:func:`_open_image` says so), and one shown once is
    counted as shown. Another thread's decompression-bomb warning during the read is not displayed either.
    """
    from PIL import Image

    shown = warnings.showwarning
    pillow = os.path.dirname(Image.__file__)

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Image.DecompressionBombWarning):
            return  # _open_image says it, naming the file
        if os.path.dirname(os.path.abspath(filename)) == pillow:
            print(f"note: Pillow, reading '{display_name(str(path))}': {message} (said once: other files may have "
                  "the same)", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        if warnings.showwarning is showwarning:  # not replaced meanwhile by the program itself
            warnings.showwarning = shown


_LIBTIFF_SETTING = threading.Lock()  # one thread at a time sets and restores Pillow's module-wide setting


@contextmanager
def _libtiff_decoding():
    """Pillow's TIFF reader set to decode with libtiff while a file is opened (where it decides), then back as it
    was. Pillow's own decoder, which it takes for an uncompressed TIFF, reads one whose EXIF orientation turns it
    a quarter (5-8) as scrambled pixels: it swaps the size and fills it row by row (Pillow 13, modes L, I;16,
    RGBA, CMYK, P; a compressed TIFF, which libtiff decodes, came out right). Without libtiff nothing changes.
    The setting is Pillow's, for the whole process: threads that read images take turns (the open reads the
    header only), so that none restores it while another opens a file, nor leaves it changed."""
    from PIL import TiffImagePlugin, features

    with _LIBTIFF_SETTING:
        before = TiffImagePlugin.READ_LIBTIFF
        TiffImagePlugin.READ_LIBTIFF = before or bool(features.check("libtiff"))
        try:
            yield
        finally:
            TiffImagePlugin.READ_LIBTIFF = before


@contextmanager
def _open_image(path):
    """``with _open_image(path) as image``: ``PIL.Image.open(path)``, with Pillow's decompression-bomb warning
    replaced by one line on stderr naming the file and its size, once per file and process (a training run
    reads each file every epoch). The warning is kept back for the whole ``with`` block (decoding a GIF's
    frames can raise it too) and only there (:func:`_pillow_warnings_named`); the program's warning filters
    stay as they are, and a filter that makes the warning an error makes the file unreadable, said as such.
    DataLoader workers forked after the data was probed inherit the files already named, and stay quiet.
    """
    from PIL import Image

    if os.stat(path).st_size == 0:
        # Pillow's "cannot identify image file" does not say why; an empty file is a download or copy that
        # never finished, which the person can act on
        raise _unreadable(path, "no bytes (the file is empty: a download or copy that did not finish?)",
                          "replace it or remove it")
    with _pillow_warnings_named(path):
        try:
            with _libtiff_decoding():
                image = Image.open(path, formats=read_formats())
        except Image.DecompressionBombWarning as err:  # raised: the program's filters make the warning an error
            raise _unreadable(path, f"{_pixels_in(err)}, more than the {Image.MAX_IMAGE_PIXELS:,} at which Pillow "
                              "warns of decompression bombs, a warning this program's filters turn into an error",
                              "read it without that filter, shrink it or remove the file") from None
        with image:
            width, height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit and str(path) not in _NOTED_LARGE:
                _NOTED_LARGE.add(str(path))
                print(f"note: the image '{display_name(str(path))}' has {width * height:,} pixels ({width}x{height}), "
                      f"more than the {limit:,} at which Pillow warns of decompression bombs: it is read, slowly and "
                      f"with a large memory peak; above {2 * limit:,} pixels an image is skipped.", file=sys.stderr)
            yield image


def _integer_problem(image) -> str | None:
    """Why the integer pixels of a PIL mode 'I' image have no 8-bit reading, or None when they do.

    Mode I holds 32-bit signed integers: a 32-bit TIFF, a 16-bit PGM (Pillow scales its maxval to
    0..65535), a numpy int32 array saved by PIL. Values within 0..65535 are read as 16-bit, as before.
    Values outside have no fixed scale (a count, a depth in mm, a label id): stretching each file to its
    own range would make one image's grey level mean something else in the next, so such a file is
    refused rather than clipped to white (or, below 0, to black).
    """
    low, high = image.getextrema()
    if 0 <= low and high <= SIXTEEN_BIT_MAX:
        return None
    return (f"32-bit integer pixels (PIL mode I) from {low:,} to {high:,}, beyond 0..{SIXTEEN_BIT_MAX:,}, the "
            "16-bit range that is scaled to 0..255")


def _sixteen_bit(image) -> bool:
    """True for PIL's 16/32-bit integer gray modes (16-bit PNGs and TIFFs open as I;16, 16-bit PGMs as I)."""
    return image.mode == "I" or image.mode.startswith("I;16")


def _to_8_bit(image):
    """A 16-bit gray image as 8-bit 'L', scaled by the 16-bit depth (65535 -> 255).

    convert('L') would clip everything above 255 (white). Mode I images reach here only with values in
    0..65535 (:func:`_integer_problem`), so the clip only guards the scale.
    """
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64).clip(0, SIXTEEN_BIT_MAX)
    return Image.fromarray(np.rint(values * 255 / SIXTEEN_BIT_MAX).astype(np.uint8), mode="L")


def _check_pixels(image, path) -> None:
    """Refuse, with :class:`UnreadableImage`, an opened image whose pixels have no 8-bit reading."""
    if image.mode in FLOAT_MODES:
        raise _unreadable(path, FLOAT_REASON, "or remove the file")
    if image.mode == "I":
        problem = _integer_problem(image)
        if problem is not None:
            raise _unreadable(path, problem, "save it as an 8- or 16-bit image, scaled as you intend, or remove the "
                              "file")


def gray_palette(image) -> bool:
    """True for a palette image (PIL mode P) whose every colour in use is a grey (R = G = B).

    Pillow opens every GIF, and a PNG saved with a palette, as mode P, whatever its colours: a gray
    GIF (a face or scan data set stored as GIFs) is such an image. Its pixels hold one channel's
    information, like a mode L file, so it reads as gray; a palette with a single coloured entry in use
    does not.
    """
    if image.mode != "P":
        return False
    palette = image.getpalette()  # [r0, g0, b0, r1, g1, b1, ...]
    used = image.getcolors(256)  # [(count, palette index)]; a P image has at most 256 colours
    if palette is None or used is None:
        return False
    return all(len(set(palette[3 * index : 3 * index + 3])) <= 1 for _, index in used)


def is_gray(image) -> bool:
    """Whether an opened image holds one colour channel: a gray mode (:data:`GRAY_MODES`) or a palette of greys."""
    return image.mode in GRAY_MODES or gray_palette(image)


CHANNEL_CHOICES = (1, 3)  # what read_image delivers: gray or RGB (None: the file's own, one of these)


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Decode one image file to uint8 (C, H, W) with C = ``channels``: 1 (gray) or 3 (RGB), converted
    whatever the file holds; None keeps the file's own, 1 for a gray file (:func:`is_gray`, a GIF of greys
    included) and 3 for any other.

    The EXIF orientation is applied (a photo taken upright is delivered upright, its size after
    the rotation); 16-bit gray images are scaled to 8 bits (65535 -> 255), and so are 32-bit integer
    ones (PIL mode I) whose values lie within 0..65535. Raises CnnlabError for a ``path`` that is not a str
    or Path and for other ``channels`` (before the file is opened), and naming the file when it does not exist, is a folder or cannot be
    decoded; :class:`UnreadableImage` (a CnnlabError) when it holds floating-point pixels
    (:data:`FLOAT_MODES`), integer pixels outside 0..65535, or more pixels than Pillow's
    decompression-bomb limit.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(path, (str, os.PathLike)):  # PIL would fail on it with an AttributeError about read()
        raise CnnlabError(f"read_image takes the path of an image file (a str or Path), got {type(path).__name__} "
                          f"{path!r:.60}.")
    if isinstance(channels, bool) or channels not in (None, *CHANNEL_CHOICES):
        # PIL has no 2-channel conversion: anything but 1 went through convert("RGB") and came back with 3.
        raise CnnlabError(f"channels={channels!r}: an image is read with 1 (gray) or 3 (RGB) channels, or None for "
                          "the file's own.")
    try:
        with _open_image(path) as image:
            _check_pixels(image, path)
            upright = ImageOps.exif_transpose(image)
            if _sixteen_bit(upright):
                upright = _to_8_bit(upright)
            if channels is None:
                channels = 1 if is_gray(upright) else 3
            array = np.asarray(_converted(upright, "L" if channels == 1 else "RGB", path))
    except FileNotFoundError:
        # Not a broken file to replace: there is none (a wrong path, a dangling link, or moved since it was listed).
        raise CnnlabError(f"The image '{display_name(str(path))}' does not exist: check the path.") from None
    except IsADirectoryError:
        raise CnnlabError(f"'{display_name(str(path))}' is a folder, not an image file: name a file.") from None
    except Image.DecompressionBombError as err:
        raise _unreadable(path, _too_many_pixels(err), "shrink it or remove the file") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        suffix = Path(path).suffix
        if isinstance(err, UnidentifiedImageError) and suffix.lower() in PICTURES_PILLOW_DOES_NOT_KNOW:
            # a phone's HEIC photo named on purpose: a picture in a format not read, as a folder's skip list says
            raise _unreadable(path, f"a {suffix} picture, a format cnnlab does not read",
                              "save it as PNG or JPEG") from None
        raise CnnlabError(f"Cannot decode the image '{display_name(str(path))}': "
                          f"{display_name(str(err))}. Replace or remove the file.") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _converted(image, mode: str, path):
    """``image`` converted to ``mode`` (L or RGB). Pillow converts some modes to RGB but not straight to gray
    (CIELAB, mode LAB, as a TIFF can hold it: 'conversion from LAB to RGB not supported', said of its way to
    L): those go to gray through RGB, as an RGB file does. A mode with neither way (La) is refused with
    :class:`UnreadableImage`, so that a data source skips it when it lists the files, not mid-run."""
    try:
        return image.convert(mode)
    except ValueError:
        pass
    try:
        return image.convert("RGB").convert(mode)
    except ValueError:
        raise _unreadable(path, f"pixels in PIL mode {image.mode}, which Pillow converts neither to gray nor to RGB",
                          "save it as a gray or RGB image, or remove the file") from None


def probe_image(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) after the EXIF rotation and the PIL mode, once the whole file has decoded; "L" for a
    palette image of greys (:func:`gray_palette`), which reads as gray.

    PIL's verify() checks the structure only (a truncated JPEG passes it and fails mid-epoch), and
    leaves the image unusable; so the file is opened again and fully decoded (load). Decoding every
    file once costs time at load, but a broken file is skipped and counted here, not a crash later.
    Raises :class:`UnreadableImage` for a file read_image would refuse (its ``reason`` is the skip
    list's), and whatever PIL raises for a broken file (many types); the caller names the file.
    """
    from PIL import Image, ImageOps

    try:
        with _open_image(path) as image:
            image.verify()
        with _open_image(path) as image:
            upright = ImageOps.exif_transpose(image)  # decodes the pixels (load) and applies the orientation
            upright.load()
            _check_pixels(upright, path)
            # read_image's conversions, tried on one pixel: a file neither reading takes is skipped now
            pixel = upright.crop((0, 0, 1, 1))
            if _sixteen_bit(pixel):
                pixel = _to_8_bit(pixel)
            for mode in ("L", "RGB"):
                _converted(pixel, mode, path)
            return upright.size, "L" if gray_palette(upright) else image.mode
    except Image.DecompressionBombError as err:
        raise _unreadable(path, _too_many_pixels(err), "shrink it or remove the file") from None


def resize_square(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 batch (N, C, H, W) so the short side is ``size``, then centre-crop size x size.

    Bilinear with antialiasing, the pixels of torchvision's Resize([size]) and CenterCrop(size) on
    tensors, in chunks so a 60k-image set never needs a float copy of the whole tensor. A very
    elongated image is cropped before it is enlarged (:func:`resize_and_crop`), so its memory stays
    near the output's.
    """
    if images.shape[-2:] == (size, size):
        return images
    height, width = images.shape[-2:]
    # torchvision's rule for Resize([size]): the short side becomes size, the long one keeps the aspect
    # ratio, truncated to whole pixels.
    if height <= width:
        resized = (size, int(size * width / height))
    else:
        resized = (int(size * height / width), size)
    return resize_and_crop(images, resized, (size, size), chunk)


# Bytes of float64 pixels one chunk of crop-first resizing may hold (a few times that at the peak).
WINDOW_CHUNK_BYTES = 64 * 2**20
# Bytes of resized images one chunk of a set's resizing holds before its crops are kept.
RESIZE_CHUNK_BYTES = 64 * 2**20


def resize_and_crop(images: torch.Tensor, resized: tuple[int, int], out: tuple[int, int],
                    chunk: int = 4096, top_left: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 (N, C, h, w) resized to ``resized`` (H', W'), bilinear with antialiasing, then cropped to
    ``out`` (H, W): the pixels of torchvision's resize followed by center_crop, or by crop at ``top_left``
    (top, left) of the resized image. A box reaching past the resized image repeats its edge pixels there
    (torchvision's pad with padding_mode="edge", then crop), as ResNet's scale crop does where truncating
    the resize left the short side a pixel below the crop.

    Resizing first holds the whole enlarged image: a 100000x1 strip resized to a short side of 32 is
    3,200,000 pixels wide, over a gigabyte in the resize, for the 32 columns the crop keeps. So when
    enlarging would give more pixels than the source, than twice the output and than twice the square of
    the enlarged short side (an image more than twice as long as it is wide), only the source pixels the
    crop needs are interpolated (:func:`_crop_then_enlarge`); otherwise torchvision resizes as before. The
    short-side term keeps a crop out of a larger enlargement (ResNet's scale augmentation enlarges a 32x32
    image to up to 69x69 for its 32x32 crop) with torchvision whole, and bounds it by the enlarged square.
    """
    from torchvision.transforms.v2 import functional as F

    height, width = images.shape[-2:]
    (new_height, new_width), (out_height, out_width) = resized, out
    if top_left is None:  # torchvision's center_crop anchor
        top_left = (int(round((new_height - out_height) / 2.0)), int(round((new_width - out_width) / 2.0)))
    enlarging = new_height >= height and new_width >= width
    whole_limit = max(height * width, 2 * out_height * out_width, 2 * min(new_height, new_width) ** 2)
    if enlarging and new_height * new_width > whole_limit and images.dtype == torch.uint8:
        # the crop-first path rounds to uint8 as torch does
        return _crop_then_enlarge(images, resized, out, top_left)
    top, left = top_left
    rows = _box(top, out_height, new_height)
    columns = _box(left, out_width, new_width)
    # Each chunk's crops are written into the result: the whole set is held once, beside one chunk resized and
    # cropped (at most RESIZE_CHUNK_BYTES resized), not as a list of crops and their concatenation as well.
    batch = images.reshape(-1, *images.shape[-3:])  # (N, C, H, W), whatever leads the image's (C, H, W)
    resized_bytes = batch.shape[1] * new_height * new_width * images.element_size()  # one image resized
    step = max(1, min(chunk, RESIZE_CHUNK_BYTES // max(resized_bytes, 1)))
    result = batch.new_empty((len(batch), batch.shape[1], out_height, out_width))
    for start in range(0, len(batch), step):
        part = resize_uint8(batch[start : start + step], (new_height, new_width))
        result[start : start + step] = part.index_select(-2, rows).index_select(-1, columns)
    return result.reshape(*images.shape[:-2], out_height, out_width)


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torchvision's bilinear antialiased resize of a batch (N, C, H, W), or of one image (C, H, W), to
    ``size`` (H', W'), any dtype.

    torch 2.14's uint8 kernel fails an internal assertion ("num_channels == unpacked_output.size(0)",
    UpSampleKernelAVXAntialias.h) for a 1x1 output of more than one channel stored contiguously, so
    image_size=1 crashed on RGB data. The channels-last layout takes the kernel's other route, whose
    pixels equal resizing each channel alone; it is used for that output only.
    """
    from torchvision.transforms.v2 import functional as F

    if tuple(size) == (1, 1) and images.dtype == torch.uint8 and images.shape[-3] > 1:
        if images.ndim == 3:  # channels-last is a layout of 4-d tensors
            return resize_uint8(images.unsqueeze(0), size)[0]
        return F.resize(images.contiguous(memory_format=torch.channels_last), [1, 1], antialias=True).contiguous()
    return F.resize(images, list(size), antialias=True)


def _box(first: int, count: int, length: int) -> torch.Tensor:
    """Indices of ``count`` pixels from ``first`` along a line of ``length``; those outside repeat the edge."""
    return torch.arange(first, first + count).clamp(0, length - 1)


def _enlarge_weights(length: int, resized: int, pixels: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(start, weights (count, window)): pixel ``pixels[i]`` of a line of ``length`` pixels enlarged to
    ``resized`` (>= length) is ``weights[i] @ line[start : start + window]``.

    torch's antialiased bilinear filter (aten's upsample_bilinear2d_aa): output pixel j is centred at
    source position c = (j + 0.5) * length / resized; the source pixels from trunc(c - 0.5) up to
    trunc(c + 1.5), inside the line, weigh 1 - |x + 0.5 - c| (a triangle one pixel wide when
    enlarging), normalised to sum to 1. Only the pixels the ``count`` outputs touch are in the window.
    """
    count = len(pixels)
    scale = length / resized  # <= 1: enlarging
    centres = (pixels.to(torch.float64) + 0.5) * scale  # (count,)
    low = (centres - 0.5).trunc().clamp(min=0).long()  # trunc, not floor: aten truncates toward zero
    high = (centres + 1.5).trunc().long().clamp(max=length)
    start = int(low.min())
    window = int(high.max()) - start
    weights = torch.zeros(count, window, dtype=torch.float64)
    for tap in range(2):  # enlarging, each output pixel lies between two source pixels (one at the ends)
        pixel = low + tap  # (count,)
        inside = pixel < high
        weight = (1 - (pixel.double() + 0.5 - centres).abs()).clamp(min=0) * inside
        weights[torch.arange(count), (pixel - start).clamp(max=window - 1)] += weight
    return start, weights / weights.sum(dim=1, keepdim=True)


def _crop_then_enlarge(images: torch.Tensor, resized: tuple[int, int], out: tuple[int, int],
                       top_left: tuple[int, int] | None = None) -> torch.Tensor:
    """:func:`resize_and_crop` for an enlargement, computed on the source pixels the crop needs only.

    Each axis is a (out, window) weight matrix (:func:`_enlarge_weights`), window <= out + 2 pixels, so
    the float copy is about the output's size whatever the source's aspect ratio. torch resizes uint8
    one axis after the other, width first, rounding to uint8 after each; so does this, in float64.
    A box past the resized image's edge takes the edge pixel's weights (edge padding).
    """
    height, width = images.shape[-2:]
    (new_height, new_width), (out_height, out_width) = resized, out
    if top_left is None:  # torchvision's center_crop anchor
        top_left = (int(round((new_height - out_height) / 2.0)), int(round((new_width - out_width) / 2.0)))
    top, left = top_left
    row_start, rows = _enlarge_weights(height, new_height, _box(top, out_height, new_height))  # (out_h, window_h)
    column_start, columns = _enlarge_weights(width, new_width, _box(left, out_width, new_width))  # (out_w, window_w)
    window = images[..., row_start : row_start + rows.shape[1], column_start : column_start + columns.shape[1]]
    channels = images.shape[1]
    step = max(1, WINDOW_CHUNK_BYTES // (8 * channels * rows.shape[1] * max(columns.shape[1], out_width)))
    parts = []
    for start in range(0, len(window), step):
        part = window[start : start + step].double()  # (n, C, window_h, window_w)
        across = (part @ columns.T + 0.5).floor().clamp(0, 255)  # (n, C, window_h, out_width), rounded as uint8
        parts.append((rows @ across + 0.5).floor().clamp(0, 255).to(torch.uint8))  # (n, C, out_height, out_width)
    return torch.cat(parts)


def convert_channels(images: torch.Tensor, channels: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 (N, C, H, W) to ``channels``: gray to RGB repeats; RGB to gray uses ITU-R 601 luminance, ``chunk``
    images at a time. The result is a new tensor (unless ``channels`` is C): both are held while it is made."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        # In chunks into one uint8 result: torchvision computes the luminance in float32, 4 bytes a pixel,
        # which for a whole 50k-image set would be a larger temporary than the RGB images themselves.
        from torchvision.transforms.v2 import functional as F

        gray = torch.empty(images.shape[0], 1, *images.shape[2:], dtype=images.dtype, device=images.device)
        for start in range(0, images.shape[0], chunk):
            gray[start:start + chunk] = F.rgb_to_grayscale(images[start:start + chunk], num_output_channels=1)
        return gray
    raise CnnlabError(f"Cannot convert images with {have} channels to {channels}: use 1 (gray) or 3 (RGB).")
