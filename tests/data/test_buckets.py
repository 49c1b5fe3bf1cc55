"""Aspect-ratio buckets: parsing, shapes, nearest-bucket assignment, one-bucket batches through a real
DataLoader with exact coverage and per-(seed, epoch) order, and less distortion than one square."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from cnnlab.data.buckets import (
    AspectRatioBatchSampler,
    BucketedImageDataset,
    assign_buckets,
    bucket_shapes,
    fit_to_shape,
    max_distortion,
    parse_buckets,
)
from cnnlab.errors import CnnlabError

RATIOS = [(4, 3), (1, 1), (3, 4)]  # width:height, the order of parse_buckets("4:3,1:1,3:4")
# (width, height) of the generated files and the bucket each belongs in: 20x60 (1:3) is nearest 3:4.
FILE_SIZES = [(40, 30), (30, 40), (32, 32), (64, 48), (20, 60)]
FILE_BUCKETS = [0, 2, 1, 0, 2]
COPIES = 3  # files per size, so buckets hold several images and batches of 2 leave partial ones


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """PNG files of the FILE_SIZES shapes, COPIES each, random RGB content: (paths, sizes)."""
    root = tmp_path_factory.mktemp("bucket-images")
    generator = torch.Generator().manual_seed(0)
    paths, sizes = [], []
    for copy in range(COPIES):
        for width, height in FILE_SIZES:
            pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
            path = root / f"{width}x{height}-{copy}.png"
            # PIL, not torchvision.io.write_png: torchvision's image IO is deprecated since 0.29.
            Image.fromarray(pixels.numpy()).save(path)
            paths.append(path)
            sizes.append((width, height))
    return paths, sizes


def bucket_of_each(sizes):
    return [FILE_BUCKETS[FILE_SIZES.index(size)] for size in sizes]


# ---------------------------------------------------------------------------------------------
# parse_buckets


def test_parse_buckets_reads_width_height_pairs():
    assert parse_buckets("4:3,1:1,3:4") == RATIOS
    assert parse_buckets(" 16:9 , 1:1,") == [(16, 9), (1, 1)]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("", "empty"),
        ("  ", "empty"),
        (",", "no bucket"),
        ("4x3", "'4x3'"),
        ("four:three", "'four:three'"),
        ("4:3:2", "'4:3:2'"),
        ("1.5:1", "'1.5:1'"),
        ("4:", "'4:'"),
        ("0:1", "not positive"),
        ("4:-3", "not positive"),
        ("²:1", "'²:1'"),  # a digit to str.isdigit, not a number to int()
        ("--4:3", "'--4:3'"),
        ("4:3,1:1,4:3", "same aspect ratio"),
        ("1:1,2:2", "same aspect ratio as '1:1'"),
    ],
)
def test_parse_buckets_rejects_bad_text_with_a_message(text, named):
    with pytest.raises(CnnlabError) as error:
        parse_buckets(text)
    assert named in str(error.value)


# ---------------------------------------------------------------------------------------------
# bucket_shapes


@pytest.mark.parametrize(("base", "multiple"), [(224, 32), (64, 8), (32, 8), (100, 1)])
def test_bucket_shapes_are_multiples_with_area_near_base_squared(base, multiple):
    ratios = [(4, 3), (1, 1), (3, 4), (16, 9), (1, 2)]
    shapes = bucket_shapes(ratios, base, multiple)
    assert len(shapes) == len(ratios)
    for (ratio_w, ratio_h), (height, width) in zip(ratios, shapes):
        assert height % multiple == 0 and width % multiple == 0
        # Each side is the multiple just below or above the exact side, so the area lies within
        # one multiple per side of base**2.
        ideal_h, ideal_w = base * math.sqrt(ratio_h / ratio_w), base * math.sqrt(ratio_w / ratio_h)
        assert abs(height - ideal_h) < multiple and abs(width - ideal_w) < multiple
        assert (ideal_h - multiple) * (ideal_w - multiple) < height * width < (ideal_h + multiple) * (ideal_w + multiple)
        # Landscape stays landscape, portrait portrait.
        assert (width > height) == (ratio_w > ratio_h) and (width < height) == (ratio_w < ratio_h)


def test_bucket_shapes_at_imagenet_size_keep_area_and_ratio_close():
    shapes = bucket_shapes(RATIOS + [(16, 9)], 224, 32)
    assert shapes[1] == (224, 224)
    for (ratio_w, ratio_h), (height, width) in zip(RATIOS + [(16, 9)], shapes):
        assert abs(height * width / 224**2 - 1) < 0.1
        assert abs(math.log(width / height * ratio_h / ratio_w)) < 0.02


def test_bucket_shapes_prefer_the_ratio_over_rounding_each_side():
    # 4:3 at 32 px: exact sides 27.7 x 36.9; rounding each to a multiple of 8 gives 24x40 (5:3).
    (height, width), = bucket_shapes([(4, 3)], 32, 8)
    assert (height, width) == (24, 32)
    naive = (round(32 / math.sqrt(4 / 3) / 8) * 8, round(32 * math.sqrt(4 / 3) / 8) * 8)
    assert naive == (24, 40)


def test_bucket_shapes_refuse_buckets_that_round_to_one_shape():
    with pytest.raises(CnnlabError, match="both round to 32x32"):
        bucket_shapes([(1, 1), (17, 16)], 32, 8)
    with pytest.raises(CnnlabError, match="positive"):
        bucket_shapes(RATIOS, 0, 8)


def test_bucket_shapes_refuse_a_ratio_whose_long_side_passes_the_largest_image_side():
    # 1000000:1 at 256: the ideal width is 256 * 1000 = 256,000 pixels, far past 16,384
    with pytest.raises(CnnlabError, match=r"1000000:1 at image size 256 would be 8x256000 pixels.*16,384"):
        bucket_shapes([(1, 1), (1_000_000, 1)], 256, 8)
    assert bucket_shapes([(1, 1), (64, 1)], 256, 8)[1] == (32, 2048)  # 64:1 is extreme but fits


# ---------------------------------------------------------------------------------------------
# assign_buckets and max_distortion


def test_assign_buckets_picks_the_nearest_ratio(image_files):
    _, sizes = image_files
    assert assign_buckets(sizes, RATIOS) == bucket_of_each(sizes)
    assert assign_buckets([], RATIOS) == []


def test_assign_buckets_measures_distance_in_log_ratio():
    # 1.8:1 is nearer 1:1 in plain ratio (0.8 vs 1.2) but nearer 3:1 in log ratio (0.59 vs 0.51).
    assert assign_buckets([(180, 100)], [(1, 1), (3, 1)]) == [1]
    # Log ratio is symmetric: 2:1 and 1:2 are equally far from 1:1, a tie goes to the first bucket.
    assert assign_buckets([(2, 1), (1, 2)], [(1, 1), (4, 1), (1, 4)]) == [0, 0]


def test_buckets_distort_less_than_one_square(image_files):
    _, sizes = image_files
    bucketed = max_distortion(sizes, RATIOS)
    square = max_distortion(sizes, [(1, 1)])
    # Worst cases by hand: 20x60 (1:3) in 3:4 is stretched 0.75 / (1/3) = 2.25 times; in 1:1, 3 times.
    assert bucketed == pytest.approx((3 / 4) / (20 / 60) * 100 - 100)
    assert square == pytest.approx(60 / 20 * 100 - 100)
    assert bucketed < square
    # Measured on the stretched pixels too: fitting a 64x48 image to its bucket keeps its ratio exactly.
    shapes = bucket_shapes(RATIOS, 32, 8)
    height, width = shapes[assign_buckets([(64, 48)], RATIOS)[0]]
    assert width / height == 64 / 48


# ---------------------------------------------------------------------------------------------
# AspectRatioBatchSampler


def synthetic_ids(counts=(7, 10, 4), seed=0):
    """Bucket ids with ``counts[k]`` members of bucket k, scattered over the index range."""
    ids = torch.cat([torch.full((count,), bucket) for bucket, count in enumerate(counts)])
    return ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))].tolist()


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("batch_size", [1, 3, 4, 10, 50])
@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_covers_every_index_once_in_one_bucket_batches(batch_size, shuffle):
    ids = synthetic_ids()
    sampler = AspectRatioBatchSampler(ids, batch_size, shuffle=shuffle, drop_last=False, seed=1)
    batches = epoch_batches(sampler, 0)
    assert len(batches) == len(sampler) == sum(math.ceil(c / batch_size) for c in (7, 10, 4))
    assert sorted(i for batch in batches for i in batch) == list(range(len(ids)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        assert len({ids[i] for i in batch}) == 1


@pytest.mark.parametrize("batch_size", [1, 3, 5, 8])
def test_sampler_drop_last_drops_only_remainders_of_buckets_with_a_full_batch(batch_size):
    counts = (7, 10, 4)
    ids = synthetic_ids(counts)
    sampler = AspectRatioBatchSampler(ids, batch_size, shuffle=True, drop_last=True, seed=2)
    batches = epoch_batches(sampler, 3)
    # A bucket with a full batch gives only full batches; a smaller one gives its one short batch.
    expected = {bucket: [batch_size] * (c // batch_size) if c >= batch_size else [c] for bucket, c in enumerate(counts)}
    assert len(batches) == len(sampler) == sum(len(sizes) for sizes in expected.values())
    for bucket, sizes in expected.items():
        assert sorted(len(b) for b in batches if ids[b[0]] == bucket) == sizes
    assert all(len({ids[i] for i in batch}) == 1 for batch in batches)
    used = [i for batch in batches for i in batch]
    left_out = sum(c % batch_size for c in counts if c >= batch_size)
    assert len(used) == len(set(used)) == len(ids) - left_out and sampler.left_out == left_out


def test_sampler_drop_last_trains_every_bucket_and_rotates_remainders():
    # Bucket 1 (3 images) is smaller than a batch of 4: drop_last used to leave it out of every epoch.
    ids = synthetic_ids(counts=(9, 3))
    sampler = AspectRatioBatchSampler(ids, 4, shuffle=True, drop_last=True, seed=0)
    assert sampler.left_out == 1  # 9 = 2 x 4 + 1
    small = {i for i in range(len(ids)) if ids[i] == 1}
    seen = set()
    for epoch in range(12):
        used = {i for batch in epoch_batches(sampler, epoch) for i in batch}
        assert small <= used  # every image of the small bucket, every epoch
        seen |= used
    assert seen == set(range(len(ids)))  # the large bucket's left-out image differs between epochs
    assert AspectRatioBatchSampler(ids, 4, drop_last=False).left_out == 0


def test_sampler_order_depends_only_on_seed_and_epoch():
    ids = synthetic_ids()
    sampler = AspectRatioBatchSampler(ids, 3, shuffle=True, seed=7)
    first = epoch_batches(sampler, 4)
    assert epoch_batches(sampler, 4) == first
    assert epoch_batches(AspectRatioBatchSampler(ids, 3, shuffle=True, seed=7), 4) == first  # a fresh sampler
    assert epoch_batches(sampler, 5) != first
    assert epoch_batches(AspectRatioBatchSampler(ids, 3, shuffle=True, seed=8), 4) != first


def test_sampler_shuffle_mixes_buckets_and_indices():
    ids = synthetic_ids(counts=(30, 30, 30))
    sampler = AspectRatioBatchSampler(ids, 3, shuffle=True, seed=0)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        order = [ids[batch[0]] for batch in batches]
        # Grouped bucket by bucket there would be 2 changes of bucket between steps; mixed, many.
        changes = sum(a != b for a, b in zip(order, order[1:]))
        assert changes > 10
        # Within a bucket the images are shuffled too: batches are not runs of consecutive members.
        bucket_batches = sorted((batch for batch in batches if ids[batch[0]] == 0), key=min)
        members = [i for batch in bucket_batches for i in batch]
        assert members != sorted(members)


def test_sampler_without_shuffle_goes_bucket_by_bucket_in_index_order():
    ids = synthetic_ids()
    sampler = AspectRatioBatchSampler(ids, 4, shuffle=False)
    batches = epoch_batches(sampler, 0)
    assert epoch_batches(sampler, 9) == batches
    flat = [i for batch in batches for i in batch]
    expected = [i for bucket in range(3) for i in range(len(ids)) if ids[i] == bucket]
    assert flat == expected


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_sampler_rejects_a_bad_batch_size(batch_size):
    with pytest.raises(CnnlabError, match="batch_size"):
        AspectRatioBatchSampler([0, 1], batch_size)


# ---------------------------------------------------------------------------------------------
# fitting an image to its bucket


def test_fit_gives_the_exact_shape_for_any_image_size():
    generator = torch.Generator().manual_seed(0)
    for height, width in [(30, 40), (40, 30), (7, 61), (61, 7), (24, 32), (33, 33)]:
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        for shape in [(24, 32), (32, 32), (32, 24)]:
            for fit in ("crop", "pad", "stretch"):
                out = fit_to_shape(image, shape, fit)
                assert out.shape == (3, *shape) and out.dtype == torch.uint8


def rows_gradient(height, width):
    """uint8 (1, height, width) whose value is 50 + 4 * row: constant along each row."""
    rows = 50 + 4 * torch.arange(height, dtype=torch.uint8)
    return rows[None, :, None].expand(1, height, width).contiguous()


def test_fit_crop_keeps_proportions_and_cuts_the_overhang():
    image = rows_gradient(40, 30)  # portrait 3:4 into a square bucket
    out = fit_to_shape(image, (32, 32), "crop")
    # Scaled by 32/30 to 43 rows, 5 cut above and 6 below: the top row shows about row 5 / (32/30).
    assert float(out[0, 0].float().mean()) == pytest.approx(50 + 4 * 5 * 30 / 32, abs=4)
    stretched = fit_to_shape(image, (32, 32), "stretch")
    assert float(stretched[0, 0].float().mean()) < 55  # stretching keeps the top row
    # Rows stay rows (no mixing along the width) in both.
    assert torch.equal(out, out[:, :, :1].expand_as(out))
    # Same-ratio images are a plain resize: no crop at all.
    same = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fit_to_shape(same, (24, 32), "crop"), F.resize(same, [24, 32], antialias=True))


def test_fit_pad_keeps_everything_inside_a_zero_border():
    image = rows_gradient(40, 30)
    out = fit_to_shape(image, (32, 32), "pad")
    # Scaled by 32/40 to 32x24, centred: 4 zero columns each side.
    assert torch.all(out[:, :, :4] == 0) and torch.all(out[:, :, -4:] == 0)
    assert torch.all(out[:, :, 4:-4] >= 50)


def test_fit_rejects_an_unknown_mode():
    with pytest.raises(CnnlabError, match="crop, pad, stretch"):
        fit_to_shape(torch.zeros(1, 4, 5, dtype=torch.uint8), (8, 8), "squash")


# ---------------------------------------------------------------------------------------------
# BucketedImageDataset through a DataLoader


def make_dataset(image_files, **options):
    paths, sizes = image_files
    labels = list(range(len(paths)))  # label = index, so a batch tells which images it holds
    return BucketedImageDataset.from_ratios(paths, labels, sizes, RATIOS, 32, multiple=8, **options)


@pytest.mark.parametrize("shuffle", [True, False])
def test_dataloader_batches_hold_one_bucket_of_equal_shapes_and_cover_every_image(image_files, shuffle):
    dataset = make_dataset(image_files)
    shapes = bucket_shapes(RATIOS, 32, 8)
    assert dataset.bucket_ids == bucket_of_each(image_files[1])
    sampler = AspectRatioBatchSampler(dataset.bucket_ids, 2, shuffle=shuffle, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0)
    seen = []
    for x, y in loader:
        buckets = {dataset.bucket_ids[i] for i in y.tolist()}
        assert len(buckets) == 1
        (bucket,) = buckets
        assert x.dtype == torch.uint8 and x.shape == (len(y), 3, *shapes[bucket])
        seen += y.tolist()
    assert len(seen) == len(dataset) and sorted(seen) == list(range(len(dataset)))
    assert len(loader) == len(sampler) == sum(math.ceil(count / 2) for count in (2 * COPIES, COPIES, 2 * COPIES))


def test_dataset_decodes_the_files_exactly(image_files):
    paths, _ = image_files
    dataset = make_dataset(image_files, fit="stretch")
    index = FILE_SIZES.index((64, 48))  # 4:3 file in the 24x32 bucket: a plain half-size resize
    with Image.open(paths[index]) as png:
        original = torch.from_numpy(np.asarray(png.convert("RGB")).copy()).permute(2, 0, 1)  # (3, 48, 64)
    image, label = dataset[index]
    assert int(label) == index
    assert torch.equal(image, F.resize(original, [24, 32], antialias=True))


def test_dataset_reads_gray_and_applies_the_transform_after_fitting(image_files):
    shapes_seen = []

    def to_float(image):
        shapes_seen.append(tuple(image.shape))
        return image.float() / 255

    dataset = make_dataset(image_files, channels=1, transform=to_float)
    image, _ = dataset[FILE_SIZES.index((20, 60))]
    assert image.dtype == torch.float32 and image.shape == (1, 32, 24)
    assert shapes_seen == [(1, 32, 24)]  # the transform saw the bucket's shape, not the file's


def test_dataset_random_transform_repeats_per_epoch_seed(image_files):
    dataset = make_dataset(image_files, transform=lambda image: image.float() + torch.rand(image.shape))
    dataset.epoch_seed = 11
    first = dataset[0][0]
    assert torch.equal(dataset[0][0], first)
    dataset.epoch_seed = 12
    assert not torch.equal(dataset[0][0], first)


def test_dataset_custom_reader_and_bad_inputs(image_files, tmp_path):
    paths, sizes = image_files
    gray = BucketedImageDataset(paths[:1], [0], sizes[:1], [0], [(24, 32)],
                                read=lambda path: torch.full((1, 30, 40), 9, dtype=torch.uint8))
    assert torch.equal(gray[0][0], torch.full((1, 24, 32), 9, dtype=torch.uint8))
    with pytest.raises(CnnlabError, match="one entry per image"):
        BucketedImageDataset(paths, [0], sizes, [0] * len(paths), [(24, 32)])
    with pytest.raises(CnnlabError, match="Bucket ids"):
        BucketedImageDataset(paths[:1], [0], sizes[:1], [3], [(24, 32)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    dataset = BucketedImageDataset([broken], [0], [(4, 4)], [0], [(8, 8)])
    with pytest.raises(CnnlabError, match="broken.png"):
        dataset[0]


def test_dataset_reads_other_formats(tmp_path):
    path = tmp_path / "image.bmp"
    Image.new("RGB", (30, 40), (10, 20, 30)).save(path)
    dataset = BucketedImageDataset([path], [0], [(30, 40)], [0], [(32, 24)])
    image, _ = dataset[0]
    assert image.shape == (3, 32, 24)
    assert image[:, 16, 12].tolist() == [10, 20, 30]


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_fit_to_a_single_pixel_works_for_rgb(fit):
    # torch's uint8 antialiased kernel asserted for a 1x1 output of 3 channels; each channel alone is the reference
    image = torch.randint(0, 256, (3, 12, 9), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    one = fit_to_shape(image, (1, 1), fit)
    each = torch.cat([fit_to_shape(image[c : c + 1], (1, 1), fit) for c in range(3)])
    assert one.shape == (3, 1, 1) and torch.equal(one, each)
