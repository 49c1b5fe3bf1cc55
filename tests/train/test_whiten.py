"""model.whiten: a first conv set to the patch-whitening filters of the training images (cnnlab.train.whiten)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.run import RunFolder
from cnnlab.train import engine
from cnnlab.train.checkpoint import load_weights
from cnnlab.train.whiten import patch_whitening_filters, whiten_first_conv

BASE = ["model.name=vgg_mini", "model.options.cfg=[[1, 16], [1, 32]]",
        "data.spec=synthetic:classes=4,train=128,val=32,test=32", "data.image_size=16", "train.batch_size=32",
        "train.epochs=2", "optim.lr=0.05", "train.deterministic=true", "log.quiet=true", "aug.preset=none"]
FIRST = "features.0.conv.weight"


def config(*extra):
    return apply_overrides(RunConfig(), [*BASE, *extra])


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


def test_a_first_conv_with_more_filters_than_directions_is_refused_with_the_limit():
    model = engine.build_run(config("model.options.cfg=[[1, 24], [1, 32]]", "data.channels=1"),
                             torch.device("cpu"))[2]
    with pytest.raises(CnnlabError, match=r"at most 18 channels") as err:
        whiten_first_conv(model, correlated_images(channels=1), "frozen")
    assert "features.0.conv has 24 filters" in str(err.value)
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


def test_a_trained_and_resumed_run_keeps_the_frozen_filters(tmp_path):
    first = engine.setup_run(config("model.whiten=frozen")).model.get_parameter(FIRST).detach().clone()
    engine.train(config("model.whiten=frozen", "train.epochs=1"), tmp_path / "run")
    result = engine.train(config("model.whiten=frozen"), tmp_path / "run", resume=True)
    assert result.final["epoch"] == 2
    weights, _ = load_weights(RunFolder(tmp_path / "run").last)
    torch.testing.assert_close(weights[FIRST].contiguous(), first.contiguous())


def test_bad_values_and_whiten_with_init_from_are_refused():
    with pytest.raises(CnnlabError, match="model.whiten"):
        config("model.whiten=yes")
    with pytest.raises(CnnlabError, match="model.init_from loads trained ones"):
        config("model.whiten=frozen", "model.init_from=somewhere")
