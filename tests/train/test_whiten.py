"""model.whiten: a first conv set to the patch-whitening filters of the training images (cnnlab.train.whiten)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.run import CHECKPOINT_LAST, RunFolder
from cnnlab.train import engine
from cnnlab.train.checkpoint import load_weights
from cnnlab.train import whiten
from cnnlab.train.whiten import patch_whitening_filters, whiten_first_conv

BASE = ["model.name=vgg_mini", "model.options.cfg=[[1, 16], [1, 32]]",
        "data.spec=synthetic:classes=4,train=128,val=32,test=32", "data.image_size=16", "train.batch_size=32",
        "train.epochs=2", "optim.lr=0.05", "train.deterministic=true", "log.quiet=true", "aug.preset=none"]
FIRST = "features.0.conv.weight"


def config(*extra):
    """BASE with ``extra`` applied over it: a key of extra's replaces BASE's, and a mapping (model.options={})
    its entries, since --set refuses a key given twice and a mapping given beside one of its entries."""
    keys = [text.partition("=")[0] for text in extra]

    def replaced(text: str) -> bool:
        base = text.partition("=")[0]
        return any(base == key or base.startswith(f"{key}.") for key in keys)

    return apply_overrides(RunConfig(), [*(text for text in BASE if not replaced(text)), *extra])


def correlated_images(n=64, channels=2, size=12, seed=0) -> torch.Tensor:
    """Images whose neighbouring pixels are correlated (a box-blurred noise), so patch directions differ."""
    noise = torch.randn(n, channels, size + 2, size + 2, generator=torch.Generator().manual_seed(seed))
    return F.avg_pool2d(noise, 3, stride=1)  # (n, channels, size, size)


def test_the_filters_whiten_the_patches_along_numpys_principal_directions():
    images = correlated_images()
    weight, variances, patches = patch_whitening_filters(images, (3, 3), out_channels=18, eps=1e-9)
    assert patches == 64 * 10 * 10  # every valid 3x3 position of 12x12 images
    # the independent reference: numpy's eigen-decomposition of the patches' second moment
    patches = F.unfold(images.double(), 3).transpose(1, 2).reshape(-1, 18).numpy()
    reference = np.linalg.eigvalsh(patches.T @ patches / len(patches))[::-1]
    np.testing.assert_allclose(variances.numpy(), reference, rtol=1e-6)
    assert weight.shape == (18, 2, 3, 3)
    torch.testing.assert_close(weight[9:], -weight[:9])  # each direction twice: +v and -v
    # The first half's outputs over every valid patch: uncorrelated, with unit variance (second moment ~ I).
    out = F.conv2d(images.double(), weight[:9].double()).transpose(0, 1).reshape(9, -1)  # (9, N*10*10)
    torch.testing.assert_close(out @ out.T / out.shape[1], torch.eye(9, dtype=torch.float64), atol=1e-4, rtol=0)


def test_fewer_filters_keep_the_largest_directions():
    images = correlated_images()
    full, _, _ = patch_whitening_filters(images, (3, 3), out_channels=36)
    half, _, _ = patch_whitening_filters(images, (3, 3), out_channels=8)
    torch.testing.assert_close(half[:4], full[:4])
    with pytest.raises(ValueError, match="must be even and at most 36"):
        patch_whitening_filters(images, (3, 3), out_channels=38)
    with pytest.raises(ValueError, match="hold no 5x5 patch"):
        patch_whitening_filters(images[:, :, :4, :4], (5, 5), out_channels=8)


def test_chunks_sum_to_the_one_product_and_sampled_patches_are_the_unfolded_ones(monkeypatch):
    images = correlated_images()
    weight, variances, patches = patch_whitening_filters(images, (3, 3), out_channels=18)
    monkeypatch.setattr(whiten, "CHUNK_VALUES", 2000)  # 1 image (100 patches x 18 values) per chunk: 64 chunks
    chunked, chunked_variances, chunked_patches = patch_whitening_filters(images, (3, 3), out_channels=18)
    assert chunked_patches == patches
    torch.testing.assert_close(chunked_variances, variances, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked, weight)
    # With every position drawn, the gathered patches are unfold's rows (in another order), dilation included.
    x = correlated_images(n=3, size=11).double()
    for dilation in ((1, 1), (2, 1)):
        grid = [11 - 2 * dilation[0], 11 - 2 * dilation[1]]
        rows = whiten._sampled_patches(x, (3, 3), dilation, grid, grid[0] * grid[1], torch.Generator())
        reference = F.unfold(x, 3, dilation=dilation).transpose(1, 2).reshape(-1, 18)
        assert torch.equal(rows.sort(dim=0).values, reference.sort(dim=0).values)


def test_large_images_give_a_bounded_random_share_of_their_patches_with_the_same_directions():
    images = correlated_images(n=40, channels=3, size=40)  # 36 x 36 = 1,296 valid 5x5 positions per image
    full, full_variances, all_patches = patch_whitening_filters(images, (5, 5), out_channels=8)
    assert all_patches == 40 * 1296
    sampled, variances, patches = patch_whitening_filters(images, (5, 5), out_channels=8, max_patches=5000, seed=1)
    assert patches == 40 * 125  # ceil(5000 / 40) positions of each image
    again, _, _ = patch_whitening_filters(images, (5, 5), out_channels=8, max_patches=5000, seed=1)
    other, _, _ = patch_whitening_filters(images, (5, 5), out_channels=8, max_patches=5000, seed=2)
    assert torch.equal(again, sampled) and not torch.equal(other, sampled)  # the seed draws the positions
    # A tenth of the patches finds the same top directions: the leading variances within 5%, and the
    # subspace of the top 3 directions (the 4th variance is a third smaller) nearly the full sample's:
    # the cosines of the principal angles between the two subspaces.
    torch.testing.assert_close(variances[:4], full_variances[:4], rtol=0.05, atol=0)
    top_full = torch.linalg.qr(full[:3].flatten(1).double().T)[0]  # (75, 3) orthonormal basis
    top_sampled = torch.linalg.qr(sampled[:3].flatten(1).double().T)[0]
    assert torch.linalg.svdvals(top_full.T @ top_sampled).min() > 0.98


def test_a_7x7_stem_on_64_pixel_images_is_whitened_from_a_bounded_sample():
    """resnet18's 3-channel 7x7 stem: all 1.0 M patches of 300 64x64 images would be 1.2 GB in float64 (at
    224x224, 280 GB), so the engine gathers WHITEN_MACS / 147^2 of them, an equal share of every image."""
    run = engine.setup_run(config("model.name=resnet18", "model.options={}", "data.image_size=64",
                                  "data.spec=synthetic:classes=4,train=300,val=8,test=8", "model.whiten=frozen"))
    report = run.whiten_report
    assert (report.layer, report.filters, report.kernel, report.images) == ("features.stem.conv", 64, (7, 7), 300)
    bound = whiten.WHITEN_MACS // 147**2
    assert report.patches == 300 * math.ceil(bound / 300) < 300 * 58 * 58  # not every one of the 3,364 positions
    assert run.model.get_parameter("features.stem.conv.weight").requires_grad is False


def test_the_sample_of_large_images_is_bounded_by_its_pixel_values():
    from cnnlab.config import DataConfig
    from cnnlab.data import dataset_stats, load_source

    dataset = load_source(DataConfig(spec="synthetic:classes=2,train=40,val=4,test=4", image_size=16))
    stats, _ = dataset_stats(dataset)
    assert len(whiten.whitening_images(dataset, stats, seed=0)) == 40  # small images: every one (up to 5,000)
    assert len(whiten.whitening_images(dataset, stats, seed=0, max_values=10 * 3 * 16 * 16 + 5)) == 10
    assert len(whiten.whitening_images(dataset, stats, seed=0, max_values=1)) == 1  # at least one


def test_a_first_conv_with_more_filters_than_directions_is_refused_with_the_limit():
    model = engine.build_run(config("model.options.cfg=[[1, 24], [1, 32]]", "data.channels=1"),
                             torch.device("cpu"))[2]
    with pytest.raises(CnnlabError, match=r"at most 18 channels") as err:
        whiten_first_conv(model, correlated_images(channels=1), "frozen")
    assert "features.0.conv has 24 filters" in str(err.value) and "(vgg_mini: model.options.cfg)" in str(err.value)
    # another model's message does not point to vgg_mini's option
    import cnnlab

    with pytest.raises(CnnlabError, match=r"at most 50 channels, or set model.whiten=none") as err:
        whiten_first_conv(cnnlab.create_model("nin", num_classes=3, in_chans=1), correlated_images(channels=1),
                          "frozen")
    assert "vgg_mini" not in str(err.value)
    fitting = engine.build_run(config("data.channels=1"), torch.device("cpu"))[2]  # 16 filters: allowed
    with pytest.raises(CnnlabError, match="cannot set features.0.conv's filters: 0 images"):
        whiten_first_conv(fitting, correlated_images(channels=1)[:0], "frozen")


def test_frozen_filters_are_whitening_filters_left_out_of_the_optimiser_and_never_trained():
    run = engine.setup_run(config("model.whiten=frozen"))
    conv = run.model.get_parameter(FIRST)
    report = run.whiten_report
    assert report.layer == "features.0.conv" and report.filters == 16 and report.images == 128
    assert report.patches == 128 * 14 * 14  # valid 3x3 positions of 16x16 images
    assert "frozen for the whole run" in report.text()
    optimised = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert id(conv) not in optimised and not conv.requires_grad
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    run.train_mode(0)  # the fine-tuning plan sets requires_grad per stage: the filters stay fixed
    assert not conv.requires_grad
    x, y = next(iter(run.train_loader))
    engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings)
    after = dict(run.model.named_parameters())
    assert torch.equal(after[FIRST], before[FIRST])
    assert not torch.equal(after["features.2.conv.weight"], before["features.2.conv.weight"])


def test_a_frozen_block_keeps_the_filters_bias_and_norm_fixed_and_backward_stops_before_it():
    run = engine.setup_run(config("model.whiten=frozen_block"))
    block = run.model.get_submodule("features.0")
    fixed = ("features.0.conv.weight", "features.0.conv.bias", "features.0.norm.weight", "features.0.norm.bias")
    assert run.whiten_report.fixed_parameters == fixed
    assert "frozen for the whole run with the rest of their block" in run.whiten_report.text()
    optimised = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert all(id(run.model.get_parameter(name)) not in optimised for name in fixed)
    reached = []
    block.register_full_backward_hook(lambda module, grad_in, grad_out: reached.append(True))
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    running_mean = block.norm.running_mean.clone()
    run.train_mode(0)  # the fine-tuning plan sets requires_grad per stage: the block stays fixed
    x, y = next(iter(run.train_loader))
    engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings)
    after = dict(run.model.named_parameters())
    assert all(torch.equal(after[name], before[name]) for name in fixed)
    assert not torch.equal(after["features.2.conv.weight"], before["features.2.conv.weight"])
    assert reached == []  # no gradient flowed into the first block: it costs no backward pass
    assert not torch.equal(block.norm.running_mean, running_mean)  # the norm still standardises each batch
    # A resumed run fixes the same parameters.
    assert whiten.resumed_whiten_report(run.model, "frozen_block").fixed_parameters == fixed


def test_a_frozen_block_needs_the_first_conv_to_open_a_conv_norm_act_block():
    from torch import nn

    from cnnlab.layers.blocks import ConvNormAct

    bare = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    preact = nn.Sequential(ConvNormAct(1, 4, 3, preact=True))  # norm -> act -> conv: the norm comes before
    for model, holder in ((bare, "Sequential"), (preact, "ConvNormAct")):
        with pytest.raises(CnnlabError, match=rf"not the first layer of such a block .*{holder} holds it.*"
                                              r"model.whiten=frozen"):
            whiten_first_conv(model, correlated_images(channels=1), "frozen_block")
    whiten_first_conv(bare, correlated_images(channels=1), "frozen")  # the filters alone: allowed


def test_trained_filters_start_whitened_and_then_train():
    run = engine.setup_run(config("model.whiten=trained"))
    conv = run.model.get_parameter(FIRST)
    # The split has 128 images (fewer than WHITEN_IMAGES), so all of them count; normalised by hand.
    images = run.dataset.train.images.float() / 255
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (run.stats.mean, run.stats.std))
    expected, _, _ = patch_whitening_filters((images - mean) / std, (3, 3), 16)
    torch.testing.assert_close(conv.detach().contiguous(), expected, atol=1e-4, rtol=1e-4)
    assert conv.requires_grad and run.whiten_report.fixed_parameters == ()
    before = conv.detach().clone()
    run.train_mode(0)
    x, y = next(iter(run.train_loader))
    engine.train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings)
    assert not torch.equal(conv.detach(), before)


def test_whitening_leaves_the_other_initial_weights_and_the_data_order_as_without_it():
    plain, whitened = engine.setup_run(config()), engine.setup_run(config("model.whiten=trained"))
    for (name, p), (_, q) in zip(plain.model.named_parameters(), whitened.model.named_parameters()):
        if name != FIRST and not name.startswith("features.0.conv."):
            assert torch.equal(p, q), name
    assert torch.equal(next(iter(plain.train_loader))[1], next(iter(whitened.train_loader))[1])


def test_a_trained_and_resumed_run_keeps_the_frozen_filters_and_reads_no_image_to_resume(tmp_path, monkeypatch,
                                                                                        capsys):
    from cnnlab.train import schedule

    first = engine.setup_run(config("model.whiten=frozen")).model.get_parameter(FIRST).detach().clone()
    real_lr_factor = schedule.lr_factor

    def stop_in_epoch_2(config, step, total, per_epoch):  # 4 steps an epoch: last.safetensors holds epoch 1
        if step == 5:
            raise KeyboardInterrupt
        return real_lr_factor(config, step, total, per_epoch)

    with monkeypatch.context() as patch:
        patch.setattr(schedule, "lr_factor", stop_in_epoch_2)
        engine.train(config("model.whiten=frozen"), tmp_path / "run")

    def no_pass(*args, **kwargs):
        raise AssertionError("a resumed run read training images to whiten filters its checkpoint holds")

    monkeypatch.setattr(whiten, "whitening_images", no_pass)
    capsys.readouterr()
    result = engine.train(RunFolder(tmp_path / "run").read_config(), tmp_path / "run", resume=True)
    assert result.final["epoch"] == 2
    assert "features.0.conv's 16 3x3 filters, whitened when the run started, come from the checkpoint; frozen" \
        in capsys.readouterr().err
    weights, _ = load_weights(RunFolder(tmp_path / "run").last)
    torch.testing.assert_close(weights[FIRST].contiguous(), first.contiguous())  # still frozen in epoch 2


def test_bad_values_and_whiten_with_init_from_are_refused():
    with pytest.raises(CnnlabError, match="model.whiten"):
        config("model.whiten=yes")
    with pytest.raises(CnnlabError, match="model.init_from loads trained ones"):
        config("model.whiten=frozen", "model.init_from=somewhere")


def test_whitening_takes_its_sample_from_aspect_ratio_buckets_of_other_shapes(tmp_path, cli):
    """With data.buckets each batch has its own height and width: the sample's batches were concatenated as they
    came, and the run ended before training with an internal error (exit 1). Each is centre-cropped to the smallest
    shape, so that its patches are still the images' own."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for label in range(2):
        folder = tmp_path / "photos" / "train" / f"c{label}"
        folder.mkdir(parents=True)
        for width, height in [(40, 30), (32, 32), (30, 40)] * 4:
            pixels = torch.randint(0, 100, (height, width, 3), dtype=torch.uint8, generator=generator) + 120 * label
            Image.fromarray(pixels.numpy()).save(folder / f"{width}x{height}-{len(list(folder.iterdir()))}.png")
    code, out, err = cli(["train", "--model", "resnet8", "--data", f"folder:{tmp_path / 'photos'}", "--epochs", "1",
                          "--batch-size", "4", "--set", "data.buckets=4:3,1:1,3:4", "--set", "data.image_size=32",
                          "--set", "data.val_fraction=0.25", "--set", "model.whiten=frozen", "--set",
                          "log.curves=false", "--quiet", "--out", str(tmp_path / "run")])
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "run" / CHECKPOINT_LAST).is_file()
