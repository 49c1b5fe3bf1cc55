"""Parameter groups, optimiser steps against hand-written updates, and the EMA of the weights."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from cnnlab.config import OptimConfig
from cnnlab.errors import CnnlabError
from cnnlab.layers.norm import LayerNorm2d
from cnnlab.models import create_model
from cnnlab.train.ema import INITIAL_SHARE_NOTED, ModelEma, unreached_decay_note, warmup_updates
from cnnlab.train.optim import NORM_TYPES, build_optimizer, param_groups, sgd_default_lr_note


def meta_model(name: str, **kwargs) -> nn.Module:
    """Build on the meta device: shapes only, no memory or init time."""
    with torch.device("meta"):
        return create_model(name, num_classes=10, **kwargs)


def group_ids(groups: list[dict]) -> list[set[int]]:
    return [{id(p) for p in group["params"]} for group in groups]


def no_decay_ids(groups: list[dict]) -> set[int]:
    return {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}


# --- parameter groups ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lenet5", "resnet18", "convnext_tiny", "mobilenet_v2"])
def test_every_parameter_is_in_exactly_one_group(name):
    model = meta_model(name)
    groups = param_groups(model, 5e-4, True)
    ids = group_ids(groups)
    all_ids = {id(p) for p in model.parameters()}
    assert set.union(*ids) == all_ids
    assert sum(len(group["params"]) for group in groups) == len(all_ids)  # no parameter twice


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny", "mobilenet_v2"])
def test_no_decay_is_biases_norms_vectors_and_layer_scale(name):
    model = meta_model(name)
    groups = param_groups(model, 5e-4, True)
    expected = set()
    for module in model.modules():
        for pname, param in module.named_parameters(recurse=False):
            if pname == "bias" or isinstance(module, NORM_TYPES) or param.ndim == 1:
                expected.add(id(param))
    # ConvNeXt's layer scale is stored (C, 1, 1) (torchvision's layout), not 1-D: added by name here,
    # the implementation finds it by shape.
    layer_scales = [p for n, p in model.named_parameters() if n.endswith("layer_scale")]
    assert (len(layer_scales) == 18) == (name == "convnext_tiny")  # blocks (3, 3, 9, 3)
    expected |= {id(p) for p in layer_scales}
    assert no_decay_ids(groups) == expected
    # The other side, independently: exactly the conv and linear weights are decayed.
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]} == decayed
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]


def test_lenet5_groups_counted_by_hand():
    # norm 'none': 2 convs with bias + 3 linear layers (C5, F6, output) = 5 weights, 5 biases.
    groups = param_groups(meta_model("lenet5"), 1e-4, True)
    assert [(g["name"], len(g["params"])) for g in groups] == [("decay", 5), ("no_decay", 5)]
    # with BatchNorm the convs lose their bias and gain a BN scale and shift: 5 and 2*2 + 3.
    groups = param_groups(meta_model("lenet5", norm="bn"), 1e-4, True)
    assert [(g["name"], len(g["params"])) for g in groups] == [("decay", 5), ("no_decay", 7)]


def test_norms_found_by_type_whatever_their_shape_and_name():
    model = nn.Sequential()
    model.add_module("a", nn.Conv2d(3, 4, 3))
    model.add_module("b", nn.LayerNorm([4, 6, 6]))  # 3-D weight: only its type says norm
    model.add_module("c", LayerNorm2d(4))
    model.add_module("d", nn.Flatten())
    model.add_module("e", nn.Linear(144, 1))  # (1, 144) weight: a matrix despite one output
    model.add_module("f", nn.PReLU(1))
    groups = param_groups(model, 0.1, True)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model.a.weight), id(model.e.weight)}


def test_switches_put_everything_in_one_group_and_skip_frozen():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = param_groups(model, 0.1, no_decay_norm_bias=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1 and len(groups[0]["params"]) == 6
    assert len(param_groups(model, 0.0, True)) == 1
    model[0].requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, 0.1, True)) == 4


# --- optimisers against hand-written updates ----------------------------------------------------------


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def one_step(optimizer_config: OptimConfig, batch_size: int = 8):
    """(model, parameters before, gradients, optimiser) after one step on a fixed batch."""
    model = tiny_model()
    optimizer = build_optimizer(model, optimizer_config, batch_size)
    x, y = torch.randn(batch_size, 3), torch.randint(0, 2, (batch_size,))
    nn.functional.cross_entropy(model(x), y).backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    return model, before, grads, optimizer


DECAYED = {"0.weight", "3.weight"}  # the two linear weights; biases and BN scale/shift are not


def test_sgd_nesterov_step_with_weight_decay_by_hand():
    lr, momentum, wd = 0.1, 0.9, 0.01
    model, before, grads, optimizer = one_step(OptimConfig(name="sgd", lr=lr, momentum=momentum, nesterov=True,
                                                           weight_decay=wd))
    assert isinstance(optimizer, torch.optim.SGD)
    for name, param in model.named_parameters():
        d = grads[name] + (wd * before[name] if name in DECAYED else 0.0)  # L2 added to the gradient
        buffer = d  # the first step's momentum buffer is the gradient itself
        update = d + momentum * buffer  # Nesterov: look ahead along the buffer
        torch.testing.assert_close(param.detach(), before[name] - lr * update, rtol=0, atol=1e-7)


def test_adamw_step_decays_decoupled_by_hand():
    lr, wd, eps = 0.01, 0.05, 1e-8
    model, before, grads, optimizer = one_step(OptimConfig(name="adamw", lr=lr, weight_decay=wd, eps=eps))
    assert isinstance(optimizer, torch.optim.AdamW)
    for name, param in model.named_parameters():
        # After one step the bias-corrected moments are g and g^2: the Adam step is g / (|g| + eps).
        g = grads[name]
        decayed = before[name] * (1 - lr * wd) if name in DECAYED else before[name]
        torch.testing.assert_close(param.detach(), decayed - lr * g / (g.abs() + eps), rtol=0, atol=1e-7)


@pytest.mark.parametrize("config", [OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
                                    OptimConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.0),
                                    OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05)], ids=["sgd", "plain", "adamw"])
def test_cpu_weights_take_the_multi_tensor_step_and_match_the_one_tensor_step(config):
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10, in_chans=1)
    reference = copy.deepcopy(model)
    optimizer = build_optimizer(model, config, batch_size=128)
    assert optimizer.defaults["foreach"] is True
    # torch's own optimiser over the same groups, one tensor at a time: the independent reference.
    groups = [{key: value for key, value in group.items() if key != "foreach"}
              for group in build_optimizer(reference, config, batch_size=128).param_groups]
    kind = torch.optim.SGD if config.name == "sgd" else torch.optim.AdamW
    reference_optimizer = kind(groups, foreach=False)
    for step in range(4):
        generator = torch.Generator().manual_seed(step)
        for param, reference_param in zip(model.parameters(), reference.parameters()):
            param.grad = torch.randn(param.shape, generator=generator)
            reference_param.grad = param.grad.clone()
        optimizer.step()
        reference_optimizer.step()
    for param, reference_param in zip(model.parameters(), reference.parameters()):
        assert torch.equal(param, reference_param)


def test_peak_lr_follows_the_linear_scaling_rule_in_every_group():
    optimizer = build_optimizer(tiny_model(), OptimConfig(lr=0.1, lr_batch=256), batch_size=64)
    assert len(optimizer.param_groups) == 2
    for group in optimizer.param_groups:
        assert group["peak_lr"] == pytest.approx(0.025) and group["lr"] == pytest.approx(0.025)


def test_nesterov_without_momentum_is_plain_sgd():
    optimizer = build_optimizer(tiny_model(), OptimConfig(momentum=0.0, nesterov=True), 8)
    assert optimizer.param_groups[0]["nesterov"] is False


def test_unknown_optimizer_lists_the_allowed_names():
    with pytest.raises(CnnlabError, match="optim.name='lamb' is not allowed: choose one of sgd, adamw"):
        build_optimizer(tiny_model(), OptimConfig(name="lamb"), 8)


# --- EMA ------------------------------------------------------------------------------------------------


def shifted(model: nn.Module, amount: float) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(amount)


def test_first_update_with_warmup_keeps_a_tenth_of_the_copy():
    model = tiny_model()
    ema = ModelEma(model, decay=0.999, warmup=True)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    shifted(model, 1.0)
    ema.update(model)
    for name, param in ema.module.named_parameters():
        torch.testing.assert_close(param, 0.1 * start[name] + 0.9 * (start[name] + 1.0))
    assert ema.updates == 1 and ema.current_decay() == pytest.approx(2 / 11)
    ema.updates = 100_000
    assert ema.current_decay() == 0.999  # the bound once warm


def test_without_warmup_the_decay_is_constant_from_the_start():
    model = tiny_model()
    ema = ModelEma(model, decay=0.75, warmup=False)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    shifted(model, 2.0)
    ema.update(model)
    for name, param in ema.module.named_parameters():
        torch.testing.assert_close(param, 0.75 * start[name] + 0.25 * (start[name] + 2.0))


def test_a_constant_parameter_stays_constant():
    model = tiny_model()
    ema = ModelEma(model, decay=0.9, warmup=True)
    for _ in range(5):
        ema.update(model)
    for (_, a), (_, b) in zip(ema.module.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b)


def test_decay_zero_follows_the_model_exactly():
    model = tiny_model()
    ema = ModelEma(model, decay=0.0, warmup=True)
    shifted(model, 0.37)
    ema.update(model)
    for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_float_buffers_are_averaged_and_counts_copied():
    model = tiny_model().train()
    ema = ModelEma(model, decay=0.5, warmup=False)
    bn_ema, bn = ema.module[1], model[1]
    start_mean, start_var = bn_ema.running_mean.clone(), bn_ema.running_var.clone()
    model(torch.randn(16, 3) * 5 + 3)  # moves BN's running statistics
    ema.update(model)
    # BN statistics follow the averaged weights: 0.5 * old + 0.5 * new, like the parameters.
    torch.testing.assert_close(bn_ema.running_mean, 0.5 * start_mean + 0.5 * bn.running_mean)
    torch.testing.assert_close(bn_ema.running_var, 0.5 * start_var + 0.5 * bn.running_var)
    assert not torch.equal(bn_ema.running_mean, bn.running_mean)
    assert bn_ema.num_batches_tracked.item() == 1  # an integer count is copied


def test_copy_is_independent_and_in_eval_mode_without_grad():
    model = tiny_model().train()
    ema = ModelEma(model)
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.module.parameters())
    shifted(model, 1.0)
    assert not torch.equal(ema.module[0].weight, model[0].weight)


def test_ema_logits_equal_logits_of_manually_averaged_weights():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    ema = ModelEma(model, decay=0.8, warmup=True)
    # The average by hand: each parameter and float buffer d*avg + (1-d)*p with d = min(0.8, (1+t)/(10+t));
    # the integer batch count is copied.
    manual = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for t in range(12):
        x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        ema.update(model)
        d = min(0.8, (1 + t) / (10 + t))
        for name, value in model.state_dict().items():
            manual[name] = d * manual[name] + (1 - d) * value if value.is_floating_point() else value.clone()
    reference = copy.deepcopy(model)
    reference.load_state_dict(manual)
    reference.eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ema.module(x), reference(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(ema.module(x), model.eval()(x), atol=1e-3)  # it is not the raw model


def test_a_uniform_tail_is_the_plain_mean_of_the_weights_from_its_start():
    """SWA: from update 4 on, the average is the arithmetic mean of the weights after updates 4, 5, ..., 9,
    whatever the exponential average held before; updates 0-3 are the warm-up EMA as without a tail."""
    torch.manual_seed(2)
    model = tiny_model()
    ema = ModelEma(model, decay=0.99, warmup=True, uniform_from=4)
    plain = ModelEma(model, decay=0.99, warmup=True)
    seen = []
    for t in range(10):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        if t < 4:
            assert ema.current_decay() == plain.current_decay() == pytest.approx(min(0.99, (1 + t) / (10 + t)))
        else:
            assert ema.current_decay() == pytest.approx((t - 4) / (t - 3))  # 0 first: a copy
            seen.append({n: p.detach().clone() for n, p in model.named_parameters()})
        ema.update(model)
        plain.update(model)
        if t == 3:
            assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), plain.module.parameters()))
    for name, param in ema.module.named_parameters():
        torch.testing.assert_close(param, torch.stack([weights[name] for weights in seen]).mean(0))


def test_state_dict_resumes_exactly():
    model = tiny_model()
    ema = ModelEma(model, decay=0.99, warmup=True)
    for _ in range(3):
        shifted(model, 0.1)
        ema.update(model)
    resumed = ModelEma(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)), decay=0.5)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.updates == 3 and resumed.decay == 0.99 and resumed.warmup is True
    shifted(model, 0.1)
    ema.update(model)
    resumed.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values()):
        assert torch.equal(a, b)


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    from cnnlab.train.checkpoint import load_checkpoint, save_checkpoint

    model = tiny_model()
    ema = ModelEma(model, decay=0.99)
    shifted(model, 0.2)
    ema.update(model)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, ema=ema, meta={}, rng=False)
    restored = ModelEma(tiny_model(), decay=0.99)
    load_checkpoint(path, ema_model=restored)
    assert restored.updates == 1 and isinstance(restored.updates, int)
    assert torch.equal(restored.module[0].weight, ema.module[0].weight)


def test_a_different_model_is_refused():
    ema = ModelEma(tiny_model())
    with pytest.raises(ValueError, match="EMA copy has"):
        ema.update(nn.Linear(3, 2))


def test_the_warmup_reaches_the_decay_after_the_updates_the_docstring_gives():
    ema = ModelEma(tiny_model(), decay=0.999, warmup=True)
    assert warmup_updates(0.999) == pytest.approx(8990)  # (10 * 0.999 - 1) / 0.001
    ema.updates = 8989
    assert ema.current_decay() < 0.999
    ema.updates = 8990
    assert ema.current_decay() == pytest.approx(0.999)


def test_decays_the_warmup_never_reaches_average_identically_and_are_named():
    # 50 updates end at (1 + 49) / (10 + 49) = 0.847, so 0.95 and 0.99 follow the same d_t throughout.
    model = tiny_model()
    averages = [ModelEma(model, decay=decay, warmup=True) for decay in (0.95, 0.99)]
    for step in range(50):
        shifted(model, 0.01 * (step % 7))
        for ema in averages:
            ema.update(model)
    for a, b in zip(averages[0].module.parameters(), averages[1].module.parameters()):
        assert torch.equal(a, b)
    note = unreached_decay_note(0.99, True, 50)
    assert "train.ema_decay=0.99 is never reached" in note and "0.8475 at the last of its 50 updates" in note
    assert "(0.99 needs 890)" in note  # (9.9 - 1) / 0.01
    # A 17-epoch run of 210 steps an epoch (54,000 images in batches of 256): 3,570 updates end at 3570 / 3579.
    assert f"{3570 / 3579:.4f} at the last of its 3,570 updates" in unreached_decay_note(0.9995, True, 17 * 210)


def test_a_reached_decay_or_no_warmup_needs_no_note():
    assert unreached_decay_note(0.5, True, 50) is None  # reached after 8 updates
    assert unreached_decay_note(0.9, False, 50) is None  # no warm-up: 0.9^50 = 0.5% of the initial weights left
    assert unreached_decay_note(0.999, True, 8991) is None  # the last update (t = 8990) uses 0.999
    assert unreached_decay_note(0.999, True, 8990) is not None


def test_without_warmup_a_run_too_short_for_its_decay_gets_the_initial_weights_share():
    """Without the warm-up the average keeps decay^n of the weights it was copied from: the note gives that share,
    the updates the decay needs to bring it under the bound, and a decay that does so in this run."""
    model = tiny_model()
    ema = ModelEma(model, decay=0.999, warmup=False)
    shifted(model, 1.0)  # the weights move away from the copy, then stay: 18 updates with the same weights
    for _ in range(18):
        ema.update(model)
    # the EMA weights are the mix the note describes: the initial copy keeps 0.999^18 of the average
    share = 0.999 ** 18
    for averaged, now in zip(ema.module.parameters(), model.parameters()):
        assert torch.allclose(averaged, now - share * 1.0, atol=1e-5)  # initial = now - 1
    note = unreached_decay_note(0.999, False, 18)
    assert "train.ema_warmup=false" in note and f"{share:.1%} the initial" in note and "(0.999^18)" in note
    needed = math.ceil(math.log(INITIAL_SHARE_NOTED) / math.log(0.999))
    assert f"after {needed:,} updates" in note
    suggested = float(note.split("lower the decay to ")[1].split()[0])
    assert suggested ** 18 <= INITIAL_SHARE_NOTED < 0.999 ** 18
    assert unreached_decay_note(suggested, False, 18) is None  # the decay it names is one that needs no note
    # just above and below the bound
    assert unreached_decay_note(0.9, False, 28) is not None  # 0.9^28 = 5.2%
    assert unreached_decay_note(0.9, False, 29) is None  # 0.9^29 = 4.7%


def test_adamw_at_the_sgd_default_rate_gets_a_note_and_a_set_rate_does_not():
    note = sgd_default_lr_note(OptimConfig(name="adamw"))
    assert f"optim.lr={OptimConfig.lr:g}, the default rate for SGD" in note and "--lr" in note
    assert f"optim.weight_decay={OptimConfig.weight_decay:g} is SGD's default too" in note
    decayed = sgd_default_lr_note(OptimConfig(name="adamw", weight_decay=0.01))  # decay set, rate left
    assert decayed is not None and "weight_decay" not in decayed.split("'Optimisers').")[1]
    assert sgd_default_lr_note(OptimConfig(name="adamw", lr=1e-3)) is None
    assert sgd_default_lr_note(OptimConfig(name="sgd")) is None  # the rate is SGD's own
    assert sgd_default_lr_note(OptimConfig(name="muon")) is None  # optim.lr is the SGD part's rate in Muon


def test_the_decay_note_counts_the_updates_before_the_uniform_tail_only(cli, tmp_path):
    """train.swa_epochs restarts the average as a uniform one: a decay acts before that tail alone, and not at all
    when the tail is the whole run (the note counted every step, and called the decay unreached where it is unused)."""
    data = ["--model", "lenet5", "--data", "synthetic:classes=3,train=96,val=24,test=24", "--batch-size", "32",
            "--set", "train.ema=true", "--set", "train.ema_decay=0.9999", "--quiet"]
    code, _, err = cli(["train", *data, "--epochs", "2", "--set", "train.swa_epochs=2", "--out", str(tmp_path / "a")])
    assert code == 0, err
    assert "train.ema_decay=0.9999 is not used: train.swa_epochs=2 averages every one of the run's steps" in err
    assert "is never reached" not in err
    code, _, err = cli(["train", *data, "--epochs", "2", "--set", "train.swa_epochs=2",
                        "--set", "train.ema_warmup=false", "--out", str(tmp_path / "c")])
    assert code == 0 and "train.ema_decay=0.9999 is not used" in err, err  # with or without the warm-up
    code, _, err = cli(["train", *data, "--epochs", "3", "--set", "train.swa_epochs=1", "--out", str(tmp_path / "b")])
    assert code == 0, err
    assert "at the last of its 6 updates" in err  # 3 epochs of 3 steps, the last epoch's 3 the uniform tail
