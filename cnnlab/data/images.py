"""Image files and pixels: decoding a file to a uint8 tensor, probing its size, resizing and channels.

Everything that reads an image file or changes a uint8 image tensor lives here, so the data
sources, the loaders, the aspect-ratio buckets, the statistics and prediction all decode and resize
one way. This module imports nothing else from cnnlab but the error type: any module of the
package may import it without making an import loop.

PIL decodes (torchvision.io's decoders are deprecated since torchvision 0.29); torchvision's v2
functional resizes, with antialiasing, as its Resize transform does on tensors. Both are imported
inside the functions that use them, so importing this module costs neither.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnnlab.errors import CnnlabError

# File name endings read as images (compared lower-case); anything else in a data folder is skipped and named.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")  # PIL modes that carry one colour channel
# PIL modes of floating-point pixels (a TIFF of float32). An integer format fixes its range (0..255, 0..65535);
# a float one does not (0..1, 0..255, -1..1 or any other), so its pixels have no 8-bit reading to take without
# a guess: convert('L') clips them, and a 0..1 image comes out black. Such files are refused, and a data
# source skips them with FLOAT_REASON, as it skips any file it cannot decode.
FLOAT_MODES = ("F",)
FLOAT_REASON = ("floating-point pixels (PIL mode F), whose value range the format does not define; save it as an "
                "8- or 16-bit image (e.g. scaled to 0..255 as uint8)")


def _sixteen_bit(image) -> bool:
    """True for PIL's 16/32-bit integer gray modes (16-bit PNGs open as I;16 or I)."""
    return image.mode == "I" or image.mode.startswith("I;16")


def _to_8_bit(image):
    """A 16-bit gray image as 8-bit 'L', scaled (65535 -> 255); convert('L') would clip everything above 255."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64).clip(0, 65535)
    return Image.fromarray(np.rint(values / 257).astype(np.uint8), mode="L")


CHANNEL_CHOICES = (1, 3)  # what read_image delivers: gray or RGB (None: the file's own, one of these)


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Decode one image file to uint8 (C, H, W) with C = ``channels``: 1 (gray) or 3 (RGB), converted
    whatever the file holds; None keeps the file's own, 1 for a gray file and 3 for any other.

    The EXIF orientation is applied (a photo taken upright is delivered upright, its size after
    the rotation); 16-bit gray images are scaled to 8 bits. Raises CnnlabError for other ``channels``
    (before the file is opened), and naming the file when it does not exist, is a folder, cannot be
    decoded, or holds floating-point pixels (:data:`FLOAT_MODES`).
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(channels, bool) or channels not in (None, *CHANNEL_CHOICES):
        # PIL has no 2-channel conversion: anything but 1 went through convert("RGB") and came back with 3.
        raise CnnlabError(f"channels={channels!r}: an image is read with 1 (gray) or 3 (RGB) channels, or None for "
                          "the file's own.")
    try:
        with Image.open(path) as image:
            if image.mode in FLOAT_MODES:
                raise CnnlabError(f"Cannot read the image '{path}': it has {FLOAT_REASON}, or remove the file.")
            upright = ImageOps.exif_transpose(image)
            if _sixteen_bit(upright):
                upright = _to_8_bit(upright)
            if channels is None:
                channels = 1 if upright.mode in GRAY_MODES else 3
            array = np.asarray(upright.convert("L" if channels == 1 else "RGB"))
    except FileNotFoundError:
        # Not a broken file to replace: there is none (a wrong path, a dangling link, or moved since it was listed).
        raise CnnlabError(f"The image '{path}' does not exist: check the path.") from None
    except IsADirectoryError:
        raise CnnlabError(f"'{path}' is a folder, not an image file: name a file.") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CnnlabError(f"Cannot decode the image '{path}': {err}. Replace or remove the file.") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def probe_image(path: Path) -> tuple[tuple[int, int], str]:
    """(width, height) after the EXIF rotation and the PIL mode, once the whole file has decoded.

    PIL's verify() checks the structure only (a truncated JPEG passes it and fails mid-epoch), and
    leaves the image unusable; so the file is opened again and fully decoded (load). Decoding every
    file once costs time at load, but a broken file is skipped and counted here, not a crash later.
    Raises whatever PIL raises for a broken file (many types); the caller names the file.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)  # decodes the pixels (load) and applies the orientation
        upright.load()
        return upright.size, image.mode


def resize_square(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize a uint8 batch (N, C, H, W) so the short side is ``size``, then centre-crop size x size.

    Bilinear with antialiasing (the same as torchvision's Resize on tensors), in chunks so a 60k-image
    set never needs a float copy of the whole tensor.
    """
    from torchvision.transforms.v2 import functional as F

    if images.shape[-2:] == (size, size):
        return images
    out = []
    for start in range(0, len(images), chunk):
        part = F.resize(images[start : start + chunk], [size], antialias=True)
        out.append(F.center_crop(part, [size, size]))
    return torch.cat(out)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) to ``channels``: gray to RGB repeats; RGB to gray uses ITU-R 601 luminance."""
    from torchvision.transforms.v2 import functional as F

    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        return F.rgb_to_grayscale(images, num_output_channels=1)
    raise CnnlabError(f"Cannot convert images with {have} channels to {channels}: use 1 (gray) or 3 (RGB).")
