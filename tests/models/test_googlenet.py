"""GoogLeNet: auxiliary classifiers, the Inception table, and the 5x5-branch option."""

import functools

import torch
from torch import nn

import cnnlab
from cnnlab.layers.inception import InceptionBlock, InceptionWidths
from cnnlab.models import AuxLogits
from cnnlab.models.googlenet import AUX_TAPS, GOOGLENET_STAGES


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def inception_blocks(model):
    return {name: m for name, m in model.features.named_children() if isinstance(m, InceptionBlock)}


def test_train_mode_returns_main_and_two_aux_logits_eval_mode_a_tensor():
    torch.manual_seed(0)
    model = cnnlab.create_model("googlenet", num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out = model(x)
    assert isinstance(out, AuxLogits)
    assert out.logits.shape == (2, 7)
    assert len(out.aux) == 2 and all(a.shape == (2, 7) for a in out.aux)
    # Each head is trained through its own loss: its gradient reaches the trunk below its tap.
    out.aux[0].sum().backward()
    assert model.features.inception4a.branch1.conv.weight.grad.abs().sum() > 0
    assert model.features.inception4b.branch1.conv.weight.grad is None  # above the first tap
    model.eval()
    with torch.no_grad():
        plain = model(x)
        assert isinstance(plain, torch.Tensor) and plain.shape == (2, 7)
        # forward_features is the final map in both modes
        assert model.forward_features(x).shape == (2, 1024, 2, 2)
    model.train()
    assert model.forward_features(x).shape == (2, 1024, 2, 2)


def test_aux_heads_read_4a_and_4d_earliest_first():
    model = cnnlab.create_model("googlenet")
    blocks = inception_blocks(model)
    assert list(model.aux_heads) == list(AUX_TAPS) == ["inception4a", "inception4d"]
    for name, head in model.aux_heads.items():
        assert head.conv.conv.in_channels == blocks[name].out_chs  # 512 after 4a, 528 after 4d
    assert model.aux_heads["inception4a"].conv.conv.in_channels == 512


def test_without_aux_logits_train_mode_gives_a_tensor_and_fewer_params():
    with_aux = cnnlab.create_model("googlenet")
    model = cnnlab.create_model("googlenet", aux_logits=False).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)
    aux_params = count_params(with_aux.aux_heads)
    assert aux_params > 0 and count_params(model) == count_params(with_aux) - aux_params


def test_inception_channels_follow_table_1():
    model = cnnlab.create_model("googlenet")
    blocks = inception_blocks(model)
    rows = [row for stage in GOOGLENET_STAGES for row in stage]
    assert list(blocks) == [name for name, *_ in rows]
    for name, ch1, red3, ch3, red5, ch5, proj in rows:
        assert blocks[name].out_chs == ch1 + ch3 + ch5 + proj
        assert blocks[name].branch2[0].out_channels == red3 and blocks[name].branch3[0].out_channels == red5
    assert model.num_features == blocks["inception5b"].out_chs == 1024
    x = torch.randn(1, 192, 8, 8)
    assert blocks["inception3a"](x).shape == (1, 256, 8, 8)  # 64 + 128 + 32 + 32


def test_5x5_kernel_option_builds_the_papers_branch():
    default = cnnlab.create_model("googlenet")
    paper = cnnlab.create_model("googlenet", inception_5x5_kernel=5)
    for model, kernel in ((default, 3), (paper, 5)):
        for block in inception_blocks(model).values():
            conv = block.branch3[1].conv
            assert conv.kernel_size == (kernel, kernel) and conv.padding == (kernel // 2, kernel // 2)
    # Only the 5x5 convs' weights grow: reduce * out * (25 - 9) more per Inception module.
    extra = sum(red5 * ch5 * (5 * 5 - 3 * 3) for stage in GOOGLENET_STAGES for _, _, _, _, red5, ch5, _ in stage)
    assert count_params(paper) - count_params(default) == extra
    assert paper(torch.randn(2, 3, 64, 64)).logits.shape == (2, 1000)


def test_reset_classifier_resets_aux_heads_too():
    model = cnnlab.create_model("googlenet")
    model.reset_classifier(3)
    out = model.train()(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 3) and all(a.shape == (2, 3) for a in out.aux)


def test_without_a_classifier_train_mode_gives_the_features_like_eval_mode():
    # A feature extractor is fine-tuned in train mode: it must give the pooled features there too,
    # not auxiliary "logits" that are the aux heads' hidden layers.
    x = torch.randn(2, 3, 32, 32)
    for model in (cnnlab.create_model("googlenet", num_classes=0), cnnlab.create_model("googlenet")):
        model.reset_classifier(0)
        out = model.train()(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, model.num_features)
        assert model.eval()(x).shape == (2, model.num_features)
    model.reset_classifier(4)  # a classifier again: the auxiliary heads are back
    out = model.train()(x)
    assert isinstance(out, AuxLogits) and out.logits.shape == (2, 4) and all(a.shape == (2, 4) for a in out.aux)


def test_default_norm_is_batchnorm_with_eps_1e3_and_grayscale_min_size_works():
    model = cnnlab.create_model("googlenet", in_chans=1, num_classes=4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-3 for m in norms)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))  # BN follows every conv
    size = cnnlab.model_info("googlenet").min_size
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 4)


def test_inception_block_takes_norm_and_act_types():
    group_norm = functools.partial(nn.GroupNorm, 2)  # GroupNorm(2 groups, channels)
    block = InceptionBlock(16, InceptionWidths(4, 4, 8, 2, 4, 4), group_norm, nn.SiLU)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in block.modules())
    assert sum(isinstance(m, nn.SiLU) for m in block.modules()) == 6  # one per conv
    assert block(torch.randn(1, 16, 5, 5)).shape == (1, 20, 5, 5)
