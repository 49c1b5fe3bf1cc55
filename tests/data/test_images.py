"""cnnlab.data.images: decoding, probing, resizing and channel conversion of images, one implementation."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import DataConfig
from cnnlab.data import buckets, images, loaders, memory, sources
from cnnlab.errors import CnnlabError

DATA_DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def _save(path, array, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def test_read_image_gives_uint8_chw_with_the_asked_channels(tmp_path):
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)  # (H, W, 3)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    path = _save(tmp_path / "a.png", rgb)
    colour = images.read_image(path, 3)
    assert colour.dtype == torch.uint8 and colour.shape == (3, 6, 10)
    assert colour[:, 0, 0].tolist() == [200, 100, 50]
    gray = images.read_image(path, 1)
    assert gray.shape == (1, 6, 10)
    assert gray[0, 0, 0].item() == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)  # PIL's ITU-R 601 'L'


def test_sixteen_bit_gray_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", values)
    assert images.read_image(path, 1)[0].tolist() == [[0, 1, 255]]  # clipping would give 0, 255, 255


def test_undecodable_file_is_named_in_the_error(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png")
    with pytest.raises(CnnlabError, match="broken.png"):
        images.read_image(path, 3)
    with pytest.raises(Exception):
        images.probe_image(path)


def test_an_empty_file_is_called_empty_when_read_and_when_skipped_from_a_folder(tmp_path):
    empty = tmp_path / "a" / "empty.png"
    for label in ("a", "b"):
        for i in range(2):
            _save(tmp_path / label / f"{i}.png", np.full((4, 4), 60 * i, dtype=np.uint8))
    empty.write_bytes(b"")
    with pytest.raises(CnnlabError, match=r"'.*empty.png': it has no bytes \(the file is empty"):
        images.read_image(empty, 3)
    data = sources.load_source(DataConfig(spec=f"folder:{tmp_path}", val_fraction=0.5))
    assert dict(data.skipped)[str(empty)].startswith("no bytes (the file is empty")


def test_probe_reports_the_upright_size_and_the_mode(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": stored 40x20 is shown 20x40
    path = _save(tmp_path / "photo.png", np.zeros((20, 40, 3), dtype=np.uint8), exif=exif)
    assert images.probe_image(path) == ((20, 40), "RGB")
    assert images.read_image(path, 3).shape == (3, 40, 20)
    gray = _save(tmp_path / "gray.png", np.zeros((5, 7), dtype=np.uint8))
    size, mode = images.probe_image(gray)
    assert size == (7, 5) and mode in images.GRAY_MODES


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "RGB"])
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_an_uncompressed_tiff_turned_by_its_orientation_reads_as_a_compressed_one(tmp_path, mode, orientation):
    """Pillow's own decoder of uncompressed TIFFs read one whose orientation turns it a quarter as scrambled pixels
    (the size swapped, rows filled from the stored ones): a 16-bit scanner image, upright, came out as noise that
    no rotation of the picture matched, where its LZW copy read right. Both now read as the picture turned."""
    rng = np.random.default_rng(orientation)
    shape = {"L": (24, 20), "I;16": (24, 20), "RGBA": (24, 20, 4), "RGB": (24, 20, 3)}[mode]
    stored = rng.integers(0, 65536 if mode == "I;16" else 256, shape).astype(np.uint16 if mode == "I;16" else np.uint8)
    picture = Image.fromarray(stored, mode if mode == "RGBA" else None)
    turn = {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}[orientation]
    upright = picture.transpose(turn)  # what the file shows, 24 wide and 20 high
    for compression in ("raw", "tiff_lzw"):
        path = tmp_path / f"{compression}.tif"
        picture.save(path, tiffinfo={0x0112: orientation}, compression=compression)
        assert images.probe_image(path)[0] == (24, 20)
        if mode == "I;16":  # read_image scales 16 bits to 8 (65535 -> 255) as it does for any 16-bit file
            png = tmp_path / "upright.png"
            upright.save(png)
            expected = images.read_image(png)
        else:
            expected = torch.from_numpy(np.array(upright.convert("RGB" if mode != "L" else "L")))
            expected = expected.unsqueeze(0) if mode == "L" else expected.permute(2, 0, 1)
        assert torch.equal(images.read_image(path), expected), compression
    from PIL import TiffImagePlugin

    assert TiffImagePlugin.READ_LIBTIFF is False  # Pillow's own setting, as it was


def test_resize_square_scales_the_short_side_then_centre_crops():
    batch = torch.zeros(2, 3, 20, 40, dtype=torch.uint8)  # (N, C, H, W), landscape
    batch[..., :, 10:30] = 255  # a bright centre band as wide as the crop keeps
    out = images.resize_square(batch, 10)  # 20x40 -> 10x20 -> centre 10x10 (the band; edges antialiased)
    assert out.shape == (2, 3, 10, 10) and out.dtype == torch.uint8
    assert out[..., 1:-1].min() == 255 and out.float().mean() > 240  # uncropped, the dark half would show
    same = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    assert images.resize_square(same, 8) is same  # already the size: no copy


def test_convert_channels_both_ways():
    gray = torch.tensor([0, 60, 128, 250], dtype=torch.uint8).reshape(1, 1, 2, 2)
    rgb = images.convert_channels(gray, 3)
    assert rgb.shape == (1, 3, 2, 2) and all(torch.equal(rgb[:, c], gray[:, 0]) for c in range(3))
    back = images.convert_channels(rgb, 1)  # equal channels: the luminance is the value (weights sum to 1)
    assert back.shape == (1, 1, 2, 2) and (back.int() - gray.int()).abs().max() <= 1
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[:, 0] = 200
    assert abs(images.convert_channels(red, 1).item() - 0.299 * 200) <= 1  # ITU-R 601 weight of red
    with pytest.raises(CnnlabError, match="channels"):
        images.convert_channels(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), 3)


def test_every_reader_uses_the_one_implementation():
    """sources, loaders, buckets and the memory loader hold images.py's functions, not copies."""
    assert sources.read_image is images.read_image and loaders.read_image is images.read_image
    assert buckets.read_image is images.read_image
    assert sources.resize_square is images.resize_square
    assert sources.convert_channels is images.convert_channels and memory.convert_channels is images.convert_channels
    assert sources.IMAGE_EXTENSIONS is images.IMAGE_EXTENSIONS


def test_float_images_are_refused_and_skipped_with_the_reason_not_read_as_black(tmp_path):
    values = np.random.default_rng(0).random((6, 6), dtype=np.float32)  # floats in [0, 1): convert('L') gives 0
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    with Image.open(tmp_path / "float.tif") as image:
        assert image.mode == "F"  # the file really holds floats
    with pytest.raises(CnnlabError, match="float.tif': it has floating-point pixels"):
        images.read_image(tmp_path / "float.tif", 1)
    gray = np.random.default_rng(1).integers(0, 256, (6, 6), dtype=np.uint8)
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for index in range(3):
            Image.fromarray(gray).save(tmp_path / "data" / label / f"{index}.png")
    (tmp_path / "float.tif").rename(tmp_path / "data" / "a" / "float.tif")
    data = sources.load_source(f"folder:{tmp_path / 'data'}")
    assert len(data.train) + len(data.val) == 6  # the float file is not among the images
    assert data.skipped == [(str(tmp_path / "data" / "a" / "float.tif"), images.FLOAT_REASON)]
    assert data.channels == 1


def test_read_image_refuses_channels_it_cannot_deliver_and_keeps_the_file_s_own_with_none(tmp_path):
    rgb = _save(tmp_path / "rgb.png", np.zeros((4, 5, 3), dtype=np.uint8))
    gray = _save(tmp_path / "gray.png", np.zeros((4, 5), dtype=np.uint8))
    for channels in (2, 4, 0, True, "3"):  # 2 used to come back as 3 channels
        with pytest.raises(CnnlabError, match="1 \\(gray\\) or 3 \\(RGB\\)"):
            images.read_image(rgb, channels)
    assert images.read_image(rgb, None).shape == (3, 4, 5)
    assert images.read_image(gray, None).shape == (1, 4, 5)  # a gray file stays gray
    assert images.read_image(gray).shape == (1, 4, 5) and images.read_image(gray, 3).shape == (3, 4, 5)


@pytest.mark.parametrize("path", [5, None, b"x.png", ["a.png"]])
def test_read_image_names_what_its_path_argument_takes(path):
    """A number used to reach PIL and fail with an AttributeError about read()."""
    with pytest.raises(CnnlabError) as err:
        images.read_image(path)
    message = str(err.value)
    assert message.startswith("read_image takes the path of an image file (a str or Path)")
    assert type(path).__name__ in message


def test_a_missing_file_or_a_folder_is_not_called_undecodable(tmp_path):
    """Replacing or removing a file that does not exist is no advice: the message says what the path is."""
    missing = tmp_path / "gone.png"
    with pytest.raises(CnnlabError, match="does not exist") as err:
        images.read_image(missing, 3)
    assert str(missing) in str(err.value) and "decode" not in str(err.value)
    with pytest.raises(CnnlabError, match="is a folder, not an image file") as err:
        images.read_image(tmp_path, 3)
    assert "decode" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# deep integer pixels, decompression bombs


def test_sixteen_bit_tiff_and_pgm_are_scaled_by_the_sixteen_bit_depth(tmp_path):
    values = np.array([[0, 257, 1000, 32896, 65535]], dtype=np.uint16)
    expected = np.rint(values / 257).astype(np.uint8).tolist()  # 65535 -> 255; 1000 -> 4
    tiff = _save(tmp_path / "deep.tif", values)  # PIL writes 16 bits per sample, opens it as I;16
    pgm = _save(tmp_path / "deep.pgm", values)  # a 16-bit PGM opens as mode I
    for path, mode in ((tiff, "I;16"), (pgm, "I")):
        with Image.open(path) as image:
            assert image.mode == mode
        assert images.read_image(path, 1)[0].tolist() == expected
        assert images.read_image(path, 3)[1].tolist() == expected
    # A 32-bit TIFF (mode I) whose values lie within 0..65535 is read as 16-bit, as before.
    within = _save(tmp_path / "within.tif", values.astype(np.int32))
    with Image.open(within) as image:
        assert image.mode == "I" and image.tag_v2[258] == (32,)
    assert images.read_image(within, 1)[0].tolist() == expected


@pytest.mark.parametrize("values, shown", [([0, 70000, 4_000_000], "from 0 to 4,000,000"),
                                           ([-100, 0, 30000], "from -100 to 30,000")])
def test_thirty_two_bit_pixels_beyond_sixteen_bits_are_refused_not_read_as_white(tmp_path, values, shown):
    """Values above 65535 were clipped to white (and below 0 to black): their scale is not the file's to give."""
    path = _save(tmp_path / "wide.tif", np.array([values], dtype=np.int32))
    with Image.open(path) as image:
        assert image.mode == "I" and image.tag_v2[258] == (32,)  # the file really holds 32-bit integers
    with pytest.raises(CnnlabError, match="wide.tif': it has 32-bit integer pixels") as err:
        images.read_image(path, 1)
    assert shown in str(err.value) and "8- or 16-bit" in str(err.value)
    # A DataLoader worker's error is rebuilt in the main process as type(err)(text): it must stay a CnnlabError.
    rebuilt = type(err.value)(str(err.value))
    assert isinstance(rebuilt, CnnlabError) and str(rebuilt) == str(err.value)
    gray = np.random.default_rng(1).integers(0, 256, (6, 6), dtype=np.uint8)
    for label in ("a", "b"):
        for index in range(3):
            _save(tmp_path / "data" / label / f"{index}.png", gray)
    path.rename(tmp_path / "data" / "a" / "wide.tif")
    data = sources.load_source(f"folder:{tmp_path / 'data'}")
    assert len(data.train) + len(data.val) == 6
    ((skipped, reason),) = data.skipped
    assert skipped == str(tmp_path / "data" / "a" / "wide.tif")
    assert reason.startswith("32-bit integer pixels (PIL mode I)") and shown in reason


def test_a_decompression_bomb_is_skipped_with_its_size_and_the_limit_in_one_line(tmp_path, monkeypatch):
    """Pillow's own text ('could be decompression bomb DOS attack') used to be the reason users saw."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)  # Pillow refuses above twice this: 100 pixels
    small = np.zeros((7, 7), dtype=np.uint8)  # 49 pixels: below the limit, and no warning
    for label in ("a", "b"):
        for index in range(3):
            _save(tmp_path / "data" / label / f"{index}.png", small)
    big = _save(tmp_path / "data" / "b" / "big.png", np.zeros((12, 10), dtype=np.uint8))  # 120 pixels
    with pytest.raises(CnnlabError) as err:
        images.read_image(big, 1)
    message = str(err.value)
    assert "big.png': it has 120 pixels, more than the 100 that are decoded per image" in message
    assert "DOS" not in message and "\n" not in message
    data = sources.load_source(f"folder:{tmp_path / 'data'}")
    assert len(data.train) + len(data.val) == 6
    ((skipped, reason),) = data.skipped
    assert skipped == str(big) and reason.startswith("120 pixels, more than the 100 that are decoded per image")
    assert "DOS" not in reason and "DecompressionBombError" not in reason


def test_pillow_s_warnings_become_one_line_naming_the_file(tmp_path, monkeypatch, capfd):
    """Between Pillow's limit and twice it an image is read, and Pillow printed its 'DOS attack' warning; its
    other warnings came as two lines naming Pillow's source file and not the image."""
    import warnings

    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)  # Pillow warns above 50 pixels, refuses above 100
    monkeypatch.setattr(images, "_NOTED_LARGE", set())
    large = _save(tmp_path / "large.png", np.zeros((8, 10), dtype=np.uint8))  # 80 pixels
    # A palette image with its transparency as bytes: Pillow warns (UserWarning) when it is converted.
    palette = PILImage.new("P", (5, 5))  # 25 pixels: below the limit
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.info["transparency"] = b"\x80\xff"  # half-transparent black: kept as bytes
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        assert images.read_image(large, 1).shape == (1, 8, 10)
        images.probe_image(large)
        images.read_image(large, 1)  # read again (the next epoch): no second note
        images.read_image(tmp_path / "palette.png", 3)
        images.read_image(large, 1)
        images.read_image(tmp_path / "palette.png", 3)  # a repeated warning is still shown once, as Python does
        warnings.warn("the program's own")
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and "large.png" in lines[0] and "palette.png" in lines[1]
    assert "80 pixels (10x8), more than the 50" in lines[0] and "above 100 pixels an image is skipped" in lines[0]
    assert lines[1].startswith("note: Pillow, reading '") and "Palette images with Transparency" in lines[1]
    assert "other files may have the same" in lines[1]
    # neither reached the program's warning hook; a warning of its own does, as before
    assert [str(w.message) for w in caught] == ["the program's own"]


def test_reading_images_leaves_the_program_s_warning_filters_and_hook_as_they_were(tmp_path, monkeypatch, capfd):
    """cnnlab added a process-wide filter for Pillow's decompression-bomb warning at its first image read, so the
    program's own Pillow reads lost that warning too, and its filter list changed under it."""
    import warnings

    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)  # Pillow warns above 50 pixels, refuses above 100
    monkeypatch.setattr(images, "_NOTED_LARGE", set())
    large = _save(tmp_path / "data" / "a" / "large.png", np.zeros((8, 10), dtype=np.uint8))  # 80 pixels
    for label in ("a", "b"):
        for index in range(3):
            _save(tmp_path / "data" / label / f"{index}.png", np.full((7, 7), 30 * index, dtype=np.uint8))
    # Imported first, outside the check: a folder source's first import of torchvision.models imports torch._dynamo
    # and sympy, whose import adds its own 'once' filter, the imported package's doing, not cnnlab's (in a test
    # process that imported them before, this test passed; alone, it failed)
    import torchvision.models  # noqa: F401

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # the program's own choice: see every warning, every time
        filters, hook = list(warnings.filters), warnings.showwarning
        assert images.read_image(large, 1).shape == (1, 8, 10)  # read by cnnlab: a note, no Pillow warning
        images.probe_image(large)
        data = sources.load_source(f"folder:{tmp_path / 'data'}")
        assert len(data.train) + len(data.val) == 7
        assert warnings.filters == filters and warnings.showwarning is hook
        assert not [w for w in caught if issubclass(w.category, PILImage.DecompressionBombWarning)]
        with PILImage.open(large):  # the program's own read still gets Pillow's warning, as its filter asks
            pass
        assert [w for w in caught if issubclass(w.category, PILImage.DecompressionBombWarning)]
    assert "note: the image" in capfd.readouterr().err
    # A program that makes warnings errors: the image is not read by accident, and the message says why
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CnnlabError, match=r"large.png': it has 80 pixels, more than the 50 at which Pillow warns "
                                              r"of decompression bombs, a warning this program's filters turn into an "
                                              r"error"):
            images.read_image(large, 1)
        with pytest.raises(PILImage.DecompressionBombWarning):
            PILImage.open(large)


# ---------------------------------------------------------------------------------------------
# resizing: crop before enlarging


def _resize_then_crop(batch, size):
    """The old resize_square, the reference: torchvision resizes the whole image, then centre-crops."""
    from torchvision.transforms.v2 import functional as F

    return F.center_crop(F.resize(batch, [size], antialias=True), [size, size])


@pytest.mark.parametrize("height, width, size", [
    (30, 40, 32), (40, 30, 32), (16, 9, 224), (100, 150, 224), (40, 90, 24), (3, 4, 32),  # usual ratios
])
def test_resize_square_of_usual_images_is_torchvision_s_exactly(height, width, size):
    """Images whose enlarged copy is no larger than twice the output still go through torchvision whole."""
    batch = torch.randint(0, 256, (2, 3, height, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.equal(images.resize_square(batch, size), _resize_then_crop(batch, size))


@pytest.mark.parametrize("height, width, size", [
    (12, 40, 32), (7, 50, 24), (50, 7, 24), (1, 300, 32), (3, 100, 32), (5, 17, 64), (200, 11, 64),  # elongated
])
@pytest.mark.parametrize("pattern", ["noise", "edges"])
def test_crop_first_resizing_is_within_one_grey_level_of_resizing_whole(height, width, size, pattern):
    """The crop-first path uses torch's filter weights in float64; torch's uint8 kernel rounds them to 16-bit
    fixed point, so a few sums that fall next to .5 round the other way: 1 grey level, never more."""
    generator = torch.Generator().manual_seed(height * width)
    batch = torch.randint(0, 256, (2, 3, height, width), generator=generator, dtype=torch.uint8)
    if pattern == "edges":
        batch = (batch > 127).to(torch.uint8) * 255  # hard edges: the largest steps between neighbours
    out = images.resize_square(batch, size)
    assert out.shape == (2, 3, size, size) and out.dtype == torch.uint8
    assert (out.int() - _resize_then_crop(batch, size).int()).abs().max() <= 1


def test_crop_first_also_matches_on_usual_ratios():
    """The crop-first arithmetic itself, forced on images resize_square leaves to torchvision."""
    for height, width, size in ((30, 40, 32), (9, 16, 32), (40, 30, 64)):
        batch = torch.randint(0, 256, (1, 3, height, width), generator=torch.Generator().manual_seed(1),
                              dtype=torch.uint8)
        resized = (size, int(size * width / height)) if height <= width else (int(size * height / width), size)
        out = images._crop_then_enlarge(batch, resized, (size, size))
        assert (out.int() - _resize_then_crop(batch, size).int()).abs().max() <= 1


STRIP_MEMORY = """
import os
import resource
import sys
import traceback

import torch

from cnnlab.config import AugConfig
from cnnlab.data.buckets import fit_to_shape
from cnnlab.data.images import resize_square
from cnnlab.data.pipeline import build_sample_transform
from cnnlab.data.transforms import resolve_aug

strip = torch.randint(0, 256, (1, 3, 1, 100_000), dtype=torch.uint8)  # a 100000x1 image, 300 KB
evaluate = build_sample_transform(AugConfig(), 32, (0.5,) * 3, (0.25,) * 3, train=False, channels=3)
# ResNet's scale crop: the short side to up to 69 (480 * 32 / 224), a strip 6,900,000 pixels wide whole
scale = resolve_aug(AugConfig(preset="none", crop="scale"), 32, 3)
train = build_sample_transform(scale, 32, (0.5,) * 3, (0.25,) * 3, train=True, channels=3)
steps = {"resize_square": lambda image: resize_square(image, 32), "fit_to_shape": lambda image: fit_to_shape(image[0], (24, 32)),
         "eval_transform": lambda image: evaluate(image[0]), "train_scale_crop": lambda image: train(image[0])}
for name in sys.argv[1:]:
    # Each step in a child process of its own: its high-water mark starts at the child's own size (Linux does
    # not carry the parent's peak over a fork), so no other step's peak can hide this one's.
    read, write = os.pipe()
    sys.stdout.flush()  # a child must not print the lines this process has buffered so far again
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            step = steps[name]
            step(torch.zeros(1, 3, 40, 30, dtype=torch.uint8))  # the kernels loaded before measuring
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux: the peak so far
            step(strip)
            os.write(write, str((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024).encode())
        except BaseException:
            traceback.print_exc()  # to stderr, which the test shows; the step's line then says it failed
            sys.stderr.flush()
            os._exit(1)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        raised = pipe.read()
    _, status = os.waitpid(child, 0)
    print(name, raised if os.waitstatus_to_exitcode(status) == 0 and raised else f"failed ({status})")
"""
STRIP_STEPS = ["resize_square", "fit_to_shape", "eval_transform", "train_scale_crop"]


def test_a_long_strip_is_cropped_before_it_is_enlarged(tmp_path):
    """A 100000x1 image resized to a short side of 32 was 3,200,000 pixels wide: 0.9 GB here, 1.4 GB in predict.

    Peak memory is a process's high-water mark, so each step runs in a process of its own that reads it before
    and after; the step may raise it by at most 64 MB. The steps' processes are forked from one interpreter that
    imported torch and cnnlab once (a fresh interpreter per step cost 4 s each).
    """
    import os
    import subprocess
    import sys

    script = tmp_path / "strip.py"
    script.write_text(STRIP_MEMORY)
    done = subprocess.run([sys.executable, str(script), *STRIP_STEPS], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    raised = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
    assert list(raised) == STRIP_STEPS, done.stdout + done.stderr
    for step in STRIP_STEPS:
        assert raised[step].isdigit(), f"{step}: {raised[step]}\n{done.stderr}"
        assert int(raised[step]) < 64, f"{step} raised the peak memory by {raised[step]} MB"


# ---------------------------------------------------------------------------------------------
# PNGs of fewer significant bits (sBIT)


def _png_with_sbit(path, values, bits):
    """A 16-bit gray PNG whose sBIT chunk says ``bits`` significant bits (Pillow writes it, but does not read it)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"sBIT", bytes([bits]))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path, pnginfo=info)
    assert b"sBIT\x0c" in path.read_bytes()
    return path


def test_a_twelve_bit_png_is_read_by_its_sixteen_bit_samples_as_the_png_specification_stores_them(
        tmp_path, monkeypatch):
    """The PNG specification has an encoder scale 12-bit samples up to 0..65535 and record 12 in sBIT: such a
    file reads white at 4095. Scaling by the sBIT depth instead would clip it to white from 4095/65535 up.
    A file of raw 0..4095 values carries the same sBIT, so it reads dark; docs/data.md's fix scales it up."""
    raw = np.array([[0, 1000, 2048, 4095]], dtype=np.uint16)  # 12-bit values
    scaled = (raw << 4) | (raw >> 8)  # left bit replication, the specification's scaling: 4095 -> 65535
    conforming = _png_with_sbit(tmp_path / "conforming.png", scaled, 12)
    expected = np.rint(raw.astype(np.float64) * 255 / 4095).astype(np.uint8)
    assert np.abs(images.read_image(conforming, 1)[0].numpy().astype(int) - expected).max() <= 1
    unscaled = _save(tmp_path / "raw12" / "a" / "unscaled.png", raw)
    assert images.read_image(unscaled, 1)[0].tolist() == [[0, 4, 8, 16]]  # 4095 / 65535 of white: dark
    # The example in docs/data.md, run where its folder is
    example = next(block for block in re.findall(r"```python\n(.*?)```", DATA_DOC.read_text(), re.DOTALL)
                   if "raw12" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/data.md", "exec"), {})
    assert images.read_image(unscaled, 1)[0].tolist() == expected.tolist()


@pytest.mark.parametrize("height, width", [(17, 20), (20, 17), (8, 8), (3, 2)])
def test_rgb_images_resize_to_a_single_pixel(tmp_path, height, width):
    # torch's uint8 antialiased kernel failed an internal assertion for a 1x1 output of 3 contiguous channels,
    # so image_size=1 ended in an internal error on RGB data; resizing each channel alone is the reference
    batch = torch.randint(0, 256, (2, 3, height, width), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    one = images.resize_square(batch, 1)
    each = torch.cat([images.resize_square(batch[:, c : c + 1], 1) for c in range(3)], dim=1)
    assert one.shape == (2, 3, 1, 1) and one.is_contiguous() and torch.equal(one, each)
    for label in ("a", "b"):
        for i in range(2):
            _save(tmp_path / label / f"{i}.png", batch[i].permute(1, 2, 0).numpy())
    data = sources.load_source(DataConfig(spec=f"folder:{tmp_path}", image_size=1, val_fraction=0.5))
    assert data.train.images.shape == (2, 3, 1, 1)


def test_every_image_ending_is_one_pillow_opens():
    """IMAGE_EXTENSIONS names only endings Pillow registers for a format it can open."""
    known = Image.registered_extensions()
    assert all(known.get(suffix) in Image.OPEN for suffix in images.IMAGE_EXTENSIONS)


@pytest.mark.parametrize("suffix, mode", [(".jfif", "RGB"), (".jpe", "RGB"), (".pbm", "1"), (".pgm", "L"),
                                          (".ppm", "RGB"), (".pnm", "RGB"), (".tga", "RGB"), (".dib", "RGB")])
def test_a_folder_reads_every_name_pillow_writes_for_its_formats(tmp_path, suffix, mode):
    """A .jfif photo or a .pbm scan is read, not skipped as "not an image"."""
    folder = tmp_path / "cls"
    folder.mkdir()
    Image.new(mode, (5, 4), 1 if mode == "1" else 200).save(folder / f"a{suffix}")
    skipped = []
    found = sources.image_files(folder, lambda path, reason: skipped.append(reason))
    assert [path.name for path in found] == [f"a{suffix}"] and skipped == []
    assert images.read_image(found[0], 3).shape == (3, 4, 5)


def test_a_skipped_file_is_called_an_image_only_when_pillow_knows_its_format(tmp_path):
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "layers.psd").write_bytes(b"8BPS")
    skipped = {}
    sources.image_files(tmp_path, lambda path, reason: skipped.update({path.name: reason}))
    assert skipped["notes.txt"] == "not an image file (.txt)"
    assert skipped["layers.psd"].startswith("image format not read (.psd")
    # a phone's photo, whose format Pillow registers no reader for without a plugin, is a picture too
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    sources.image_files(tmp_path, lambda path, reason: skipped.update({path.name: reason}))
    assert skipped["IMG_0001.HEIC"].startswith("image format not read (.HEIC")


def test_a_file_under_an_image_s_name_is_decoded_only_by_the_formats_cnnlab_reads(tmp_path, monkeypatch):
    # A PostScript file named photo.png: Pillow identifies files by their first bytes, and without a list of
    # formats it opened this one as EPS and ran Ghostscript on it to read the pixels.
    from PIL import EpsImagePlugin

    ghostscript_runs = []

    def ghostscript(*args, **kwargs):
        ghostscript_runs.append(args)
        raise OSError("Ghostscript is not run in this test")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "picture.eps")
    disguised = tmp_path / "data" / "a" / "photo.png"
    disguised.parent.mkdir(parents=True)
    disguised.write_bytes((tmp_path / "picture.eps").read_bytes())
    with pytest.raises(CnnlabError, match=r"Cannot decode the image '.*photo.png': cannot identify image file"):
        images.read_image(disguised)
    for label in ("a", "b"):
        for index in range(3):
            _save(tmp_path / "data" / label / f"real{index}.png", np.zeros((8, 8), dtype=np.uint8))
    data = sources.load_source(DataConfig(spec=f"folder:{tmp_path / 'data'}", image_size=8))
    assert "cannot be decoded" in dict(data.skipped)[str(disguised)]
    assert ghostscript_runs == [] and len(data.train) + len(data.val) == 6
    assert {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"} <= set(images.read_formats()) and "EPS" not in images.read_formats()


def test_a_cielab_tiff_reads_as_gray_through_its_rgb_as_pillow_converts_it(tmp_path):
    """Pillow converts LAB to RGB but not straight to gray: the gray reading goes through RGB (such a file was
    skipped from a gray data set read into memory, and stopped a run that read it per batch)."""
    lab = Image.new("LAB", (8, 6), (180, 150, 100))
    path = tmp_path / "a" / "lab.tif"
    path.parent.mkdir()
    lab.save(path)
    colour = images.read_image(path, 3)
    gray = images.read_image(path, 1)
    assert colour.shape == (3, 6, 8) and gray.shape == (1, 6, 8)
    r, g, b = lab.convert("RGB").getpixel((0, 0))
    assert colour[:, 0, 0].tolist() == [r, g, b]
    assert gray[0, 0, 0].item() == round(0.299 * r + 0.587 * g + 0.114 * b)  # PIL's ITU-R 601 'L'
    assert images.probe_image(path) == ((8, 6), "LAB")


def test_a_mode_pillow_converts_neither_to_gray_nor_to_rgb_is_refused_at_the_probe(tmp_path, monkeypatch):
    """A file of such a mode (Pillow's premultiplied La) is skipped when its folder is listed, named with the
    mode, rather than found unreadable mid-run."""
    from PIL import ImageOps

    path = _save(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    monkeypatch.setattr(ImageOps, "exif_transpose", lambda image: Image.new("La", image.size))
    with pytest.raises(images.UnreadableImage, match="pixels in PIL mode La, which Pillow converts neither to gray"):
        images.probe_image(path)


def test_threads_that_open_images_at_once_keep_pillow_s_tiff_setting_for_each_open():
    """Pillow's libtiff setting is module-wide: a thread that restored it while another was still opening a file
    left that one to Pillow's own decoder (a rotated TIFF read scrambled, 1 read in 3,000 with two threads), and
    could leave it changed for the process. One thread at a time sets and restores it."""
    import threading

    from PIL import TiffImagePlugin

    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def first():
        with images._libtiff_decoding():
            a_inside.set()
            b_inside.wait(0.5)  # the second thread gets in here only if nothing keeps it out
        a_done.set()

    def second():
        a_inside.wait(5)
        with images._libtiff_decoding():
            b_inside.set()
            a_done.wait(0.5)  # by now the first thread has restored the setting, were both inside at once
            seen.append(TiffImagePlugin.READ_LIBTIFF)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] and TiffImagePlugin.READ_LIBTIFF is False


def test_a_heic_photo_named_on_purpose_is_a_picture_in_a_format_not_read(tmp_path):
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    with pytest.raises(images.UnreadableImage, match=r"a \.HEIC picture, a format cnnlab does not read; save it as "
                                                     r"PNG or JPEG"):
        images.read_image(path)


def test_resizing_takes_one_image_or_batches_with_more_leading_dimensions_as_before():
    """The resize writes its chunks into one (N, C, H, W) result: one image (C, H, W) and a batch of batches keep
    their own leading dimensions, with each image's pixels as resized alone."""
    x = torch.randint(0, 256, (2, 5, 3, 20, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert images.resize_square(x[0, 0], 16).shape == (3, 16, 16)
    assert images.resize_and_crop(x[0, 0], (16, 24), (16, 16)).shape == (3, 16, 16)
    both = images.resize_square(x, 16)
    assert both.shape == (2, 5, 3, 16, 16)
    assert torch.equal(both[1, 3], images.resize_square(x[1, 3], 16))
    assert torch.equal(both[1], images.resize_square(x[1], 16))
    assert images.resize_square(x[0, :0], 16).shape == (0, 3, 16, 16)  # no images: none resized
