"""The in-memory loader: exact eval normalisation, epoch reproducibility, and each batched augmentation
checked against a hand-made result or torchvision's per-image functional ops."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from cnnlab.config import RESNET_CROP
from cnnlab.data.memory import (
    ERASING_RATIO,
    MemoryLoader,
    color_jitter_batch,
    crop_resize,
    flip_batch,
    resized_crop_boxes,
    scale_crop_boxes,
    translate_batch,
)
from cnnlab.data.sources import convert_channels
from cnnlab.data.transforms import resolve_aug
from cnnlab.errors import CnnlabError

MEAN3, STD3 = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
# A made-up colour PCA: orthonormal columns, descending variances (the ChannelStats layout).
PCA_STATS = SimpleNamespace(
    pca_eigvals=(0.05, 0.01, 0.002),
    pca_eigvecs=[[1 / math.sqrt(3), 1 / math.sqrt(2), 1 / math.sqrt(6)],
                 [1 / math.sqrt(3), 0.0, -2 / math.sqrt(6)],
                 [1 / math.sqrt(3), -1 / math.sqrt(2), 1 / math.sqrt(6)]],
)


def random_images(count, channels=3, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return images, labels


def only(**fields):
    """A resolved AugConfig with every augmentation off except ``fields``."""
    return replace(resolve_aug("none", 32, 3), **fields)


def normalised(images, mean, std):
    mean = torch.tensor(mean)[None, :, None, None]
    std = torch.tensor(std)[None, :, None, None]
    return (images.float() / 255 - mean) / std


def one_batch(loader):
    return next(iter(loader))


def all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_eval_output_is_exactly_the_normalised_images_in_order():
    images, labels = random_images(50)
    loader = MemoryLoader(images, labels, batch_size=16, mean=MEAN3, std=STD3, num_classes=10, train=False)
    assert len(loader) == 4  # 16 + 16 + 16 + 2: the last batch is kept in eval
    x, y = all_batches(loader)
    assert x.dtype == torch.float32 and torch.equal(x, normalised(images, MEAN3, STD3))
    assert torch.equal(y, labels)


def test_every_sample_once_per_shuffled_epoch_and_labels_follow_images():
    count = 300
    index = torch.arange(count)
    # Image i carries i in its two pixels (low and high byte), its label is i: a batch shows the pairing.
    images = torch.stack([index % 256, index // 256], dim=1).to(torch.uint8).view(count, 1, 1, 2)
    loader = MemoryLoader(images, index, batch_size=64, mean=(0.0,), std=(1.0,), num_classes=count,
                          train=False, shuffle=True)
    assert len(loader) == math.ceil(count / 64)
    x, y = all_batches(loader)
    pixels = (x * 255).round().long().view(count, 2)
    seen = pixels[:, 0] + 256 * pixels[:, 1]
    assert torch.equal(seen, y)  # labels follow their images
    assert not torch.equal(y, index)  # shuffled
    assert torch.equal(y.sort().values, index)  # each exactly once


def test_training_drops_the_last_partial_batch_by_default():
    images, labels = random_images(50)
    loader = MemoryLoader(images, labels, batch_size=16, mean=MEAN3, std=STD3, num_classes=10,
                          aug=only(hflip=0.5), train=True)
    assert len(loader) == 3
    assert [len(y) for _, y in loader] == [16, 16, 16]
    assert len(set(torch.cat([y for _, y in loader]).tolist())) <= 48


EVERYTHING = dict(crop="translate", translate=2, hflip=0.5, vflip=0.5, color_jitter=0.3, pca_lighting=0.1,
                  randaugment_n=2, erasing=0.5, mixup_alpha=0.2, cutmix_alpha=1.0, mix_prob=0.5)


def make_everything_loader(seed=0):
    images, labels = random_images(96, size=12)
    return MemoryLoader(images, labels, batch_size=32, mean=MEAN3, std=STD3, num_classes=10,
                        aug=only(**EVERYTHING), train=True, seed=seed, stats=PCA_STATS)


def test_same_seed_and_epoch_give_bit_identical_batches_and_epochs_differ():
    first, second = make_everything_loader(), make_everything_loader()
    first.set_epoch(3)
    second.set_epoch(3)
    global_state = torch.get_rng_state()
    run_a = list(first)
    torch.manual_seed(12345)  # the global generator must not matter
    run_b = list(second)
    run_again = list(first)  # no set_epoch in between: the same epoch again
    for (xa, ya), (xb, yb), (xc, yc) in zip(run_a, run_b, run_again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(xa, xc) and torch.equal(ya, yc)
    torch.set_rng_state(global_state)
    first.set_epoch(4)
    assert not torch.equal(one_batch(first)[0], run_a[0][0])
    assert not torch.equal(one_batch(make_everything_loader(seed=1))[0], one_batch(make_everything_loader())[0])


def test_the_loader_leaves_the_global_random_state_alone():
    loader = make_everything_loader()
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_loaders_leave_the_accelerators_random_state_alone(monkeypatch):
    # torch.manual_seed reseeds every CUDA device too; the loaders' draws are all on the CPU, so a batch must
    # not reset the generator that dropout on the GPU draws from (fork_rng(devices=[]) does not restore it).
    from cnnlab.data.seeding import seeded_transform

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    loader = make_everything_loader()  # mixup or CutMix on half the batches, RandAugment, erasing
    assert loader.mixer is not None and isinstance(loader.policy, v2.RandAugment)
    list(loader)
    seeded_transform(lambda image: image + torch.rand(image.shape), torch.zeros(2, 3), seed=5, index=1)
    assert reseeded == []


def test_hflip_and_vflip_with_probability_one_mirror_exactly():
    images, labels = random_images(20)
    for field, dim in (("hflip", -1), ("vflip", -2)):
        loader = MemoryLoader(images, labels, batch_size=20, mean=MEAN3, std=STD3, num_classes=10,
                              aug=only(**{field: 1.0}), train=True, shuffle=False)
        x, _ = one_batch(loader)
        assert torch.equal(x, normalised(images.flip(dim), MEAN3, STD3))


def flipped_in_epochs(loader, images, epochs):
    """(epochs, N) bool: whether each image (its label is its index) came out mirrored in each epoch."""
    rows = []
    for epoch in epochs:
        loader.set_epoch(epoch)
        x, y = all_batches(loader)
        mirrored = torch.zeros(len(images), dtype=torch.bool)
        for out, index in zip(x, y):
            image = images[index : index + 1]  # (1, C, H, W)
            plain, flipped = normalised(image, MEAN3, STD3)[0], normalised(image.flip(-1), MEAN3, STD3)[0]
            assert torch.equal(out, plain) != torch.equal(out, flipped)  # one or the other, exactly
            mirrored[index] = torch.equal(out, flipped)
        rows.append(mirrored)
    return torch.stack(rows)


def alternating_loader(images, seed=0, **fields):
    return MemoryLoader(images, torch.arange(len(images)), batch_size=25, mean=MEAN3, std=STD3,
                        num_classes=len(images), aug=only(hflip=0.5, hflip_alternate=True, **fields), train=True,
                        seed=seed)


def test_alternating_flips_show_each_image_both_ways_in_any_two_epochs():
    images, _ = random_images(200)
    loader = alternating_loader(images)
    mirrored = flipped_in_epochs(loader, images, range(5))
    assert torch.equal(mirrored[1], ~mirrored[0]) and torch.equal(mirrored[2], mirrored[0])
    assert torch.equal(mirrored[3], mirrored[1]) and torch.equal(mirrored[4], mirrored[0])
    assert 70 <= int(mirrored[0].sum()) <= 130  # a random half (binomial 200, 1/2: sd 7)
    # The halves depend on the seed alone, and the order still changes from epoch to epoch.
    assert torch.equal(flipped_in_epochs(alternating_loader(images), images, [0])[0], mirrored[0])
    assert not torch.equal(flipped_in_epochs(alternating_loader(images, seed=1), images, [0])[0], mirrored[0])
    loader.set_epoch(0)
    first = one_batch(loader)[1]
    loader.set_epoch(2)
    assert not torch.equal(one_batch(loader)[1], first)
    # The other augmentations still draw per batch: shifts on top of the alternating flips.
    shifted = alternating_loader(images, crop="translate", translate=2)
    shifted.set_epoch(0)
    x, y = all_batches(shifted)
    assert not torch.equal(x, normalised(images[y], MEAN3, STD3))


def test_alternating_flips_need_a_flip_rate_of_one_half():
    with pytest.raises(CnnlabError, match="hflip_alternate flips each image in every other epoch.*hflip=0.3"):
        resolve_aug(replace(resolve_aug("none", 32, 3), hflip=0.3, hflip_alternate=True), 32, 3)


def test_flip_batch_matches_torchvision_per_image():
    images, _ = random_images(10)
    mask = torch.tensor([True, False] * 5)
    flipped = flip_batch(images, mask)
    for image, out, flip in zip(images, flipped, mask):
        assert torch.equal(out, F.horizontal_flip(image) if flip else image)


def test_translate_batch_is_a_zero_filled_shift():
    images, _ = random_images(3, size=6)
    dx, dy, pad = torch.tensor([2, -1, 0]), torch.tensor([1, 0, -2]), 2
    shifted = translate_batch(images, dx, dy, pad)
    for image, out, right, down in zip(images, shifted, dx.tolist(), dy.tolist()):
        expected = torch.zeros_like(image)
        for row in range(6):
            for col in range(6):
                if 0 <= row - down < 6 and 0 <= col - right < 6:
                    expected[:, row, col] = image[:, row - down, col - right]
        assert torch.equal(out, expected)
    assert shifted[0, :, 0, :].eq(0).all() and shifted[0, :, :, :2].eq(0).all()  # border of the (2, 1) shift


def test_translate_batch_matches_torchvision_pad_and_crop():
    images, _ = random_images(16, size=10)
    pad = 3
    generator = torch.Generator().manual_seed(1)
    dx, dy = torch.randint(-pad, pad + 1, (2, 16), generator=generator)
    shifted = translate_batch(images, dx, dy, pad)
    for image, out, right, down in zip(images, shifted, dx.tolist(), dy.tolist()):
        # RandomCrop(padding=pad) with the crop's top-left corner at (pad - dy, pad - dx).
        reference = F.crop(F.pad(image, [pad] * 4, fill=0), top=pad - down, left=pad - right, height=10, width=10)
        assert torch.equal(out, reference)


def test_translate_batch_refuses_shifts_beyond_the_padding():
    images, _ = random_images(1)
    with pytest.raises(ValueError):
        translate_batch(images, torch.tensor([3]), torch.tensor([0]), 2)


def test_translate_in_the_loader_shifts_each_image_within_range():
    images, labels = random_images(40, channels=1, size=10)
    images = images.clamp(min=1)  # no zero pixels inside, so the zero border shows the shift
    pad = 2
    loader = MemoryLoader(images, labels, batch_size=40, mean=(0.0,), std=(1.0,), num_classes=10,
                          aug=only(crop="translate", translate=pad), train=True, shuffle=False)
    x, _ = one_batch(loader)
    shifts = [(right, down) for right in range(-pad, pad + 1) for down in range(-pad, pad + 1)]
    found = []
    for image, out in zip(images, x):
        candidates = [
            (right, down) for right, down in shifts
            if torch.equal(translate_batch(image[None], torch.tensor([right]), torch.tensor([down]), pad)[0].float() / 255, out)
        ]
        assert len(candidates) == 1
        found.append(candidates[0])
    assert len(set(found)) > 5  # per-image offsets, not one per batch


def test_crop_resize_of_the_whole_image_is_bilinear_interpolation():
    images, _ = random_images(4, size=8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(4, 1)
    enlarged = crop_resize(images, boxes, (16, 16))
    reference = torch.nn.functional.interpolate(images.float(), size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(enlarged, reference, atol=1e-3)


def test_crop_resize_of_an_integer_box_at_its_own_size_is_a_plain_crop():
    images, _ = random_images(4, size=12)
    boxes = torch.tensor([[2.0, 3.0, 8.0, 9.0], [0.0, 0.0, 6.0, 6.0], [6.0, 6.0, 12.0, 12.0], [1.0, 5.0, 7.0, 11.0]])
    crops = crop_resize(images, boxes, (6, 6))
    for image, crop, (left, top, _, _) in zip(images, crops, boxes.long().tolist()):
        assert torch.allclose(crop, F.crop(image, top, left, 6, 6).float(), atol=1e-3)


@pytest.mark.parametrize("crop", ["scale", "resized"])
def test_crops_keep_a_constant_image_constant_and_a_ramp_monotone(crop):
    size = 32
    aug = only(crop=crop)
    constant = torch.full((16, 1, size, size), 100, dtype=torch.uint8)
    labels = torch.zeros(16, dtype=torch.long)
    loader = MemoryLoader(constant, labels, batch_size=16, mean=(0.0,), std=(1.0,), num_classes=2, aug=aug, train=True)
    x, _ = one_batch(loader)
    assert torch.allclose(x, torch.full_like(x, 100 / 255), atol=1e-5)
    ramp = (torch.arange(size) * 8).to(torch.uint8).expand(16, 1, size, size).contiguous()  # grows to the right
    loader = MemoryLoader(ramp, labels, batch_size=16, mean=(0.0,), std=(1.0,), num_classes=2, aug=aug, train=True)
    x, _ = one_batch(loader)
    assert (x.diff(dim=-1) >= -1e-6).all()  # still increasing left to right
    assert (x.diff(dim=-2).abs() <= 1e-6).all()  # still constant down each column
    assert not torch.allclose(x, ramp.float() / 255)  # and actually cropped


def test_resized_crop_boxes_follow_randomresizedcrop_sampling():
    height, width, scale, ratio = 20, 30, (0.2, 0.6), (3 / 4, 4 / 3)
    boxes = resized_crop_boxes(2000, height, width, scale, ratio, torch.Generator().manual_seed(0))
    left, top, right, bottom = boxes.unbind(dim=1)
    assert (left >= 0).all() and (top >= 0).all() and (right <= width + 1e-4).all() and (bottom <= height + 1e-4).all()
    box_w, box_h = right - left, bottom - top
    fraction = box_w * box_h / (height * width)
    assert (fraction >= scale[0] - 1e-5).all() and (fraction <= scale[1] + 1e-5).all()
    aspect = box_w / box_h
    assert (aspect >= ratio[0] - 1e-4).all() and (aspect <= ratio[1] + 1e-4).all()
    assert fraction.std() > 0.05 and left.std() > 1  # spread, not one box


def test_scale_crop_boxes_are_squares_of_side_s_times_224_over_l():
    size, short_side = 64, (256, 480)
    boxes = scale_crop_boxes(1000, size, size, short_side, torch.Generator().manual_seed(0))
    side = boxes[:, 2] - boxes[:, 0]
    assert torch.allclose(side, boxes[:, 3] - boxes[:, 1])
    assert (side >= size * RESNET_CROP / short_side[1] - 1e-4).all()
    assert (side <= size * RESNET_CROP / short_side[0] + 1e-4).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size + 1e-4).all()


def test_erasing_with_probability_one_zeroes_one_box_per_image_of_the_configured_area():
    size, scale = 32, (0.1, 0.2)
    images = torch.full((64, 3, size, size), 200, dtype=torch.uint8)
    labels = torch.zeros(64, dtype=torch.long)
    loader = MemoryLoader(images, labels, batch_size=64, mean=MEAN3, std=STD3, num_classes=2,
                          aug=only(erasing=1.0, erasing_scale=scale), train=True)
    x, _ = one_batch(loader)
    erased = (x == 0).all(dim=1)  # (B, H, W); the unerased pixels are nonzero after normalisation
    assert torch.equal((x == 0).any(dim=1), erased)  # every channel of a pixel together
    shapes = set()
    for mask in erased:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        box_h, box_w = len(rows), len(cols)
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all() and mask.sum() == box_h * box_w  # a rectangle
        # Sides are rounded to whole pixels: the area may miss the range by at most half a pixel per side.
        fraction = box_h * box_w / size**2
        assert scale[0] - 1 / size <= fraction <= scale[1] + 1 / size + 1 / size**2
        ratio = box_h / box_w
        assert ERASING_RATIO[0] * 0.8 <= ratio <= ERASING_RATIO[1] * 1.25
        shapes.add((box_h, box_w))
    assert len(shapes) > 5


def test_erasing_probability_is_per_image():
    images = torch.full((256, 1, 16, 16), 200, dtype=torch.uint8)
    loader = MemoryLoader(images, torch.zeros(256, dtype=torch.long), batch_size=256, mean=(0.0,), std=(1.0,),
                          num_classes=2, aug=only(erasing=0.5), train=True)
    x, _ = one_batch(loader)
    share = (x == 0).flatten(1).any(dim=1).float().mean().item()
    assert 0.35 < share < 0.65


def test_gray_images_become_rgb_by_repeating_and_rgb_becomes_gray_by_luminance():
    gray, labels = random_images(10, channels=1)
    loader = MemoryLoader(gray, labels, batch_size=10, mean=MEAN3, std=STD3, num_classes=10, train=False, channels=3)
    x, _ = one_batch(loader)
    assert torch.equal(x, normalised(gray.expand(-1, 3, -1, -1), MEAN3, STD3))
    rgb, labels = random_images(10, channels=3)
    loader = MemoryLoader(rgb, labels, batch_size=10, mean=(0.5,), std=(0.25,), num_classes=10, train=False, channels=1)
    x, _ = one_batch(loader)
    assert x.shape == (10, 1, 8, 8)
    assert torch.equal(x, normalised(convert_channels(rgb, 1), (0.5,), (0.25,)))
    luminance = (rgb.float() * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(dim=1, keepdim=True)
    difference = (x * 0.25 + 0.5) * 255 - luminance
    # torchvision truncates the luminance to a whole number (down by < 1) and weighs red 0.2989, not 0.299.
    assert difference.min() > -1.05 and difference.max() < 0.05
    with pytest.raises(CnnlabError):
        MemoryLoader(rgb, labels, batch_size=10, mean=MEAN3, std=STD3, num_classes=10, train=False, channels=1)


def test_mixup_and_cutmix_give_soft_targets_that_sum_to_one():
    images, labels = random_images(64)
    for fields in (dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0)):
        loader = MemoryLoader(images, labels, batch_size=32, mean=MEAN3, std=STD3, num_classes=10,
                              aug=only(mix_prob=1.0, **fields), train=True, shuffle=False)
        x, y = one_batch(loader)
        assert y.shape == (32, 10) and y.is_floating_point()
        assert torch.allclose(y.sum(dim=1), torch.ones(32))
        assert torch.equal(y.argmax(dim=1) == labels[:32], y.max(dim=1).values >= 0.5)  # own label dominates or not
        assert not torch.equal(x, normalised(images[:32], MEAN3, STD3))
    loader = MemoryLoader(images, labels, batch_size=32, mean=MEAN3, std=STD3, num_classes=10,
                          aug=only(mixup_alpha=0.4, mix_prob=0.0), train=True)
    assert one_batch(loader)[1].dtype == torch.long  # mix_prob 0: never mixed


def test_colour_jitter_zero_is_the_identity():
    images, labels = random_images(20)
    args = dict(batch_size=20, mean=MEAN3, std=STD3, num_classes=10, shuffle=False)
    jittered, _ = one_batch(MemoryLoader(images, labels, aug=only(color_jitter=0.0), train=True, **args))
    plain, _ = one_batch(MemoryLoader(images, labels, train=False, **args))
    assert torch.equal(jittered, plain)
    x = images.float() / 255
    ones = torch.ones(20)
    assert torch.allclose(color_jitter_batch(x, ones, ones, ones), x, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_matches_torchvision_per_image(channels):
    images, _ = random_images(12, channels=channels)
    x = images.float() / 255
    generator = torch.Generator().manual_seed(2)
    brightness, contrast, saturation = torch.empty(3, 12).uniform_(0.5, 1.5, generator=generator)
    out = color_jitter_batch(x, brightness, contrast, saturation if channels == 3 else None)
    for image, result, b, c, s in zip(x, out, brightness.tolist(), contrast.tolist(), saturation.tolist()):
        reference = F.adjust_contrast(F.adjust_brightness(image, b), c)
        if channels == 3:
            reference = F.adjust_saturation(reference, s)
        assert torch.allclose(result, reference, atol=1e-5)


def test_colour_jitter_in_the_loader_changes_images_per_image():
    images, labels = random_images(32)
    loader = MemoryLoader(images, labels, batch_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, num_classes=10,
                          aug=only(color_jitter=0.4), train=True, shuffle=False)
    x, _ = one_batch(loader)
    assert x.min() >= 0 and x.max() <= 1
    ratio = x.mean(dim=(1, 2, 3)) / (images.float() / 255).mean(dim=(1, 2, 3))
    assert ratio.std() > 0.02


def test_pca_lighting_adds_one_colour_offset_per_image():
    generator = torch.Generator().manual_seed(3)
    images = torch.randint(100, 150, (16, 3, 8, 8), dtype=torch.uint8, generator=generator)  # far from clamping
    labels = torch.zeros(16, dtype=torch.long)
    args = dict(batch_size=16, mean=(0.0,) * 3, std=(1.0,) * 3, num_classes=2, shuffle=False)
    lit, _ = one_batch(MemoryLoader(images, labels, aug=only(pca_lighting=0.1), train=True, stats=PCA_STATS, **args))
    offset = lit - images.float() / 255  # (B, 3, H, W)
    per_image = offset[:, :, :1, :1]
    assert torch.allclose(offset, per_image.expand_as(offset), atol=1e-5)  # the same shift at every pixel
    assert per_image.abs().max() > 1e-3 and per_image.flatten(1).std(dim=0).max() > 1e-4
    with pytest.raises(CnnlabError):
        MemoryLoader(images, labels, aug=only(pca_lighting=0.1), train=True, stats=None, **args)


def test_randaugment_runs_on_uint8_after_a_resampled_crop():
    images, labels = random_images(40, size=16)
    loader = MemoryLoader(images, labels, batch_size=40, mean=MEAN3, std=STD3, num_classes=10,
                          aug=only(crop="resized", randaugment_n=2, randaugment_m=15), train=True)
    x, _ = one_batch(loader)
    assert x.shape == (40, 3, 16, 16) and torch.isfinite(x).all()


def test_output_options_dtype_and_channels_last():
    images, labels = random_images(8)
    loader = MemoryLoader(images, labels, batch_size=8, mean=MEAN3, std=STD3, num_classes=10, train=False,
                          channels_last=True, dtype=torch.bfloat16)
    x, _ = one_batch(loader)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, normalised(images, MEAN3, STD3).to(torch.bfloat16))


def test_bad_inputs_raise_cnnlab_errors():
    images, labels = random_images(8)
    with pytest.raises(CnnlabError):
        MemoryLoader(images.float(), labels, batch_size=8, mean=MEAN3, std=STD3, num_classes=10, train=False)
    with pytest.raises(CnnlabError):
        MemoryLoader(images, labels[:4], batch_size=8, mean=MEAN3, std=STD3, num_classes=10, train=False)
    with pytest.raises(CnnlabError):
        MemoryLoader(images, labels, batch_size=0, mean=MEAN3, std=STD3, num_classes=10, train=False)
    with pytest.raises(CnnlabError):
        MemoryLoader(images, labels, batch_size=8, mean=(0.5,), std=(0.2,), num_classes=10, train=False)


def test_memory_loader_and_per_image_pipeline_share_their_checks():
    from cnnlab.data.pipeline import build_sample_transform

    images, labels = random_images(8, size=8)
    bad = [
        (only(crop="translate", translate=8), "translate=8 pixels is not smaller"),  # not checked here before
        (only(crop="zoom"), "crop='zoom'"),
        (only(pca_lighting=0.1), "colour PCA"),
    ]
    for aug, message in bad:
        messages = []
        with pytest.raises(CnnlabError, match=message) as error:
            MemoryLoader(images, labels, batch_size=4, mean=MEAN3, std=STD3, num_classes=10, aug=aug, train=True)
        messages.append(str(error.value))
        with pytest.raises(CnnlabError, match=message) as error:
            build_sample_transform(aug, 8, MEAN3, STD3, train=True, channels=3)
        messages.append(str(error.value))
        assert messages[0] == messages[1]
    with pytest.raises(ValueError, match="resolve_aug"):
        MemoryLoader(images, labels, batch_size=4, mean=MEAN3, std=STD3, num_classes=10,
                     aug=replace(only(), hflip=None), train=True)


@pytest.mark.parametrize("policy", ["imagenet", "cifar10", "svhn"])
def test_autoaugment_applies_torchvisions_policy_per_group_of_images(policy):
    """The batch equals torchvision's v2.AutoAugment applied by hand to each group of RANDAUGMENT_GROUP images,
    seeded as the loader documents (one global seed per batch drawn from the epoch's generator)."""
    from cnnlab.data.memory import RANDAUGMENT_GROUP
    from cnnlab.data.seeding import epoch_seed

    images, labels = random_images(40, size=16)
    loader = MemoryLoader(images, labels, batch_size=40, mean=MEAN3, std=STD3, num_classes=10,
                          aug=only(autoaugment=policy), train=True, shuffle=False, seed=3)
    x, _ = one_batch(loader)
    generator = torch.Generator().manual_seed(epoch_seed(3, 0))
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    by_hand = v2.AutoAugment(v2.AutoAugmentPolicy(policy))
    expected = torch.cat([by_hand(images[start : start + RANDAUGMENT_GROUP])
                          for start in range(0, 40, RANDAUGMENT_GROUP)])
    assert torch.equal(x, normalised(expected, MEAN3, STD3))
    assert not torch.equal(expected, images)  # the policy changed some images

