"""Checkpoints: exact round trips (weights, optimiser, EMA, RNG), atomic writes, and no unpickling."""

import json
import os
import pickle
import random

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from cnnlab.errors import CnnlabError
from cnnlab.train.checkpoint import (
    load_checkpoint,
    load_weights,
    optimizer_group_sizes,
    read_checkpoint,
    read_meta,
    save_checkpoint,
    save_weights,
)
from cnnlab.train.muon import Muon

META = {"model": "tiny", "num_classes": 4, "in_chans": 3, "epoch": 2, "step": 17,
        "config": {"optim": {"name": "sgd", "lr": 0.1}}, "classes": ["a", "b", "c", "d"], "best": {"val_acc": 0.5}}


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # (B, 8, 8, 8)
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def two_groups(model: nn.Module) -> list[dict]:
    """Decay / no-decay groups with a custom key, as cnnlab's optimiser builder makes them."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "peak_lr": 0.05}, {"params": no_decay, "weight_decay": 0.0, "peak_lr": 0.05}]


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(two_groups(model), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if name == "muon":  # the matrices by Muon, the vectors by SGD, in one optimiser
        groups = [{**group, "muon": index == 0, "weight_decay": 5e-4 if index == 0 else 0.0}
                  for index, group in enumerate(two_groups(model))]
        return Muon(groups, lr=0.05, momentum=0.9)
    return torch.optim.AdamW(two_groups(model), lr=0.01, betas=(0.9, 0.99), weight_decay=0.05)


def batches(count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 4, (4,), generator=generator))
            for _ in range(count)]


def train_steps(model, optimizer, data) -> None:
    model.train()
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


class FakeEma:
    """The shape of state an EMA helper keeps: a module state dict plus scalars."""

    def __init__(self, model: nn.Module):
        self.module = tiny_model(seed=99)
        self.module.load_state_dict(model.state_dict())
        self.updates = 0
        self.decay = 0.999

    def state_dict(self):
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state):
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
        self.decay = state["decay"]


# ---------------------------------------------------------------------------------------------
# round trips


def test_model_and_meta_round_trip_with_the_documented_layout(tmp_path):
    model = tiny_model()
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, meta=META, rng=False)
    assert path == tmp_path / "last.safetensors"
    assert read_meta(path) == META

    with safetensors.safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    assert keys == {f"model/{key}" for key in model.state_dict()}
    assert metadata["format"] == "cnnlab-checkpoint" and json.loads(metadata["meta"]) == META

    fresh = tiny_model(seed=1)
    assert load_checkpoint(path, model=fresh, expect={"model": "tiny", "num_classes": 4, "in_chans": 3}) == META
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_bf16_and_odd_tensors_round_trip(tmp_path):
    state = {
        "w": torch.randn(5, 7).to(torch.bfloat16),
        "half": torch.randn(3).half(),
        "scalar": torch.tensor(3.5),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
        "mask": torch.tensor([True, False]),
        "transposed": torch.randn(4, 6).t(),  # not contiguous
    }
    state["tied"] = state["w"]  # shares memory: safetensors alone would refuse this
    path = save_weights(tmp_path / "snap.safetensors", state, {"step": 3})
    loaded, meta = load_weights(path)
    assert meta == {"step": 3}
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


def test_channels_last_model_round_trips(tmp_path):
    model = tiny_model().to(memory_format=torch.channels_last)
    path = save_checkpoint(tmp_path / "c.safetensors", model=model, meta={}, rng=False)
    fresh = tiny_model(seed=5).to(memory_format=torch.channels_last)
    load_checkpoint(path, model=fresh)
    assert torch.equal(fresh[0].weight, model[0].weight)
    assert fresh[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["sgd", "adamw", "muon"])
def test_optimizer_resume_is_bit_identical(tmp_path, name):
    data = batches(6, seed=3)
    model = tiny_model(seed=0)
    optimizer = make_optimizer(name, model)
    train_steps(model, optimizer, data[:3])
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, optimizer=optimizer, meta=META)

    with safetensors.safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
    per_param = "exp_avg_sq" if name == "adamw" else "momentum_buffer"
    assert f"optim/state/0/{per_param}" in keys

    resumed_model = tiny_model(seed=42)  # different starting weights: all must come from the file
    resumed_optimizer = make_optimizer(name, resumed_model)
    load_checkpoint(path, model=resumed_model, optimizer=resumed_optimizer)
    assert resumed_optimizer.param_groups[0]["peak_lr"] == 0.05
    if name == "adamw":
        assert resumed_optimizer.param_groups[0]["betas"] == (0.9, 0.99)  # a tuple again, not a list

    train_steps(model, optimizer, data[3:])
    train_steps(resumed_model, resumed_optimizer, data[3:])
    for (key, original), resumed in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(original, resumed), key
    for index, state in optimizer.state_dict()["state"].items():
        resumed_state = resumed_optimizer.state_dict()["state"][index]
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed_state[key])), (index, key)


def test_ema_state_round_trips_with_its_scalars(tmp_path):
    model = tiny_model()
    ema = FakeEma(model)
    ema.updates, ema.decay = 12, 0.9998
    with torch.no_grad():
        ema.module[0].weight.mul_(0.5)
    path = save_checkpoint(tmp_path / "e.safetensors", model=model, ema=ema, meta={}, rng=False)
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert "ema/module/0.weight" in set(handle.keys())

    restored = FakeEma(tiny_model(seed=3))
    load_checkpoint(path, ema_model=restored)
    assert restored.updates == 12 and isinstance(restored.updates, int)
    assert restored.decay == 0.9998
    assert torch.equal(restored.module[0].weight, ema.module[0].weight)

    # A plain dict of tensors works as the EMA state too.
    path = save_checkpoint(tmp_path / "d.safetensors", model=model, ema=ema.module.state_dict(), meta={}, rng=False)
    assert torch.equal(read_checkpoint(path).ema["0.weight"], ema.module[0].weight)


def test_rng_states_continue_exactly(tmp_path):
    model = tiny_model()
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.rand(10), np.random.randn(3), random.gauss(0, 1)  # move on; leave numpy/python gaussians cached
    path = save_checkpoint(tmp_path / "r.safetensors", model=model, meta={}, rng=True)
    expected = (torch.rand(5), np.random.randn(5), [random.gauss(0, 1) for _ in range(5)], random.random())
    with safetensors.safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("rng/torch").dtype == torch.uint8

    torch.manual_seed(123)
    np.random.seed(456)
    random.seed(789)
    load_checkpoint(path, restore_rng=True)
    assert torch.equal(torch.rand(5), expected[0])
    assert np.array_equal(np.random.randn(5), expected[1])
    assert [random.gauss(0, 1) for _ in range(5)] == expected[2]
    assert random.random() == expected[3]


def test_an_fp16_loss_scaler_continues_where_it_stood(tmp_path, capsys):
    """GradScaler's state (fp16 training) round trips: the scale an overflow halved and the clean steps
    counted towards the next growth. On the CPU's GradScaler, whose state is the CUDA one's."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    x = torch.randn(2, 3, 8, 8)
    for factor in (float("inf"), 1.0, 1.0):  # an overflow halves the scale; two clean steps count up
        optimizer.zero_grad()
        scaler.scale(model(x).sum() * factor).backward()
        scaler.step(optimizer)
        scaler.update()
    reached = scaler.state_dict()
    assert reached["scale"] == 2.0**15 and reached["_growth_tracker"] == 2
    path = save_checkpoint(tmp_path / "s.safetensors", model=model, optimizer=optimizer, meta=META, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=3)
    load_checkpoint(path, model=tiny_model(1), scaler=fresh)
    assert fresh.state_dict() == reached

    # A disabled scaler (bf16 and fp32 runs) writes nothing, and a scaler reading such a checkpoint keeps its state.
    path = save_checkpoint(tmp_path / "n.safetensors", model=model, meta=META,
                           scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert read_checkpoint(path).scaler is None
    other = torch.amp.GradScaler("cpu", init_scale=8.0)
    capsys.readouterr()
    load_checkpoint(path, model=tiny_model(1), scaler=other)
    assert other.get_scale() == 8.0
    assert "holds no fp16 loss-scaler state" in capsys.readouterr().err  # said, not silent
    load_checkpoint(path, model=tiny_model(1), scaler=torch.amp.GradScaler("cpu", enabled=False))
    assert capsys.readouterr().err == ""  # a run without a scaler has nothing to miss


class _StateOnly:
    """What save_checkpoint asks of a scaler, with any state: a header as an editor or another program wrote it."""

    def __init__(self, state):
        self.state = state

    def is_enabled(self):
        return True

    def state_dict(self):
        return self.state


_SCALER = {"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 3}


@pytest.mark.parametrize("state, problem", [
    ({**_SCALER, "scale": "x"}, "a value is not a finite number"),
    ({**_SCALER, "scale": float("inf")}, "a value is not a finite number"),
    ({**_SCALER, "scale": 0.0}, "the scale must be above 0"),
    ({**_SCALER, "backoff_factor": 1.5}, "the backoff factor between 0 and 1"),
    ({**_SCALER, "_growth_tracker": -1}, "the growth tracker one of at least 0"),
    ({**_SCALER, "growth_interval": 1.5}, "the growth interval must be a whole number"),
    ({key: value for key, value in _SCALER.items() if key != "_growth_tracker"}, "its keys are not GradScaler's"),
    ({}, "its keys are not GradScaler's"),
    ([1, 2], "its keys are not GradScaler's"),
])
def test_a_bad_loss_scaler_header_is_refused_before_anything_is_loaded(tmp_path, state, problem):
    path = save_checkpoint(tmp_path / "odd.safetensors", model=tiny_model(), meta=META, scaler=_StateOnly(state))
    with pytest.raises(CnnlabError) as error:
        read_checkpoint(path)
    assert "odd.safetensors" in str(error.value) and "'scaler' header" in str(error.value)
    assert problem in str(error.value)
    model, scaler = tiny_model(1), torch.amp.GradScaler("cpu", init_scale=8.0)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CnnlabError):
        load_checkpoint(path, model=model, scaler=scaler)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())  # nothing changed
    assert scaler.get_scale() == 8.0
    assert read_checkpoint(save_checkpoint(tmp_path / "good.safetensors", model=tiny_model(), meta=META,
                                           scaler=_StateOnly(_SCALER))).scaler == _SCALER


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_and_map_location(tmp_path):
    torch.cuda.manual_seed_all(5)
    torch.rand(3, device="cuda")
    model = tiny_model().cuda()
    path = save_checkpoint(tmp_path / "g.safetensors", model=model, meta={}, rng=True)
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed_all(6)
    assert len(read_checkpoint(path).rng["cuda"]) == torch.cuda.device_count()
    load_checkpoint(path, restore_rng=True)
    assert torch.equal(torch.rand(5, device="cuda"), expected)
    state, _ = load_weights(path, map_location="cuda")
    assert state["0.weight"].is_cuda and torch.equal(state["0.weight"], model[0].weight)


@pytest.mark.parametrize("ema_state, message", [
    (lambda ema: {"module": {k: v for k, v in ema.module.state_dict().items() if k != "5.bias"}, "updates": 3},
     r"does not fit this run's EMA model: .* 1 missing from the checkpoint \(5.bias\)"),
    (lambda ema: {"module": ema.module.state_dict(), "updates": "many"}, "gives \"many\" as its count of updates"),
    (lambda ema: {"module": ema.module.state_dict(), "updates": 3, "decay": 2.0}, "gives 2.0 as its decay"),
    (lambda ema: {"weights": ema.module.state_dict()}, r"holds no model weights \('module'\)"),
])
def test_an_ema_state_that_does_not_fit_is_refused_before_anything_is_loaded(tmp_path, ema_state, message):
    model = tiny_model()
    optimizer = make_optimizer("sgd", model)
    train_steps(model, optimizer, batches(1, seed=0))
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, optimizer=optimizer,
                           ema=ema_state(FakeEma(model)), meta=META, rng=False)
    fresh = tiny_model(seed=1)
    fresh_optimizer = make_optimizer("sgd", fresh)
    before = {key: value.clone() for key, value in fresh.state_dict().items()}
    with pytest.raises(CnnlabError, match=message):
        load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, ema_model=FakeEma(fresh))
    assert all(torch.equal(before[key], value) for key, value in fresh.state_dict().items())  # untouched
    assert fresh_optimizer.state_dict()["state"] == {}  # the checkpoint's momentum was not loaded either


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer = make_optimizer("adamw", model)
    train_steps(model, optimizer, batches(1, seed=0))
    path = save_checkpoint(tmp_path / "last.safetensors", model=model, optimizer=optimizer, ema=FakeEma(model),
                           meta=META, rng=True)
    save_weights(tmp_path / "snap.safetensors", model.state_dict(), META)

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader unpickled something")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, forbidden)
    fresh = tiny_model(seed=1)
    load_checkpoint(path, model=fresh, optimizer=make_optimizer("adamw", fresh), ema_model=FakeEma(fresh),
                    restore_rng=True, expect={"model": "tiny"})
    read_meta(path)
    load_weights(tmp_path / "snap.safetensors")


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    model = tiny_model()
    save_checkpoint(path, model=model, meta={"epoch": 1}, rng=False)

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise RuntimeError("disk pulled out mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(RuntimeError, match="mid-write"):
        save_checkpoint(path, model=tiny_model(seed=7), meta={"epoch": 2}, rng=False)
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors"]
    assert read_meta(path) == {"epoch": 1}
    fresh = tiny_model(seed=3)
    load_checkpoint(path, model=fresh)
    assert torch.equal(fresh[0].weight, model[0].weight)


# A process killed inside safetensors' write: safetensors (0.6 on) writes a temporary file of its own, .tmpXXXXXX,
# beside the file it is given, and renames it over that file when done. Here it dies with that file half written.
KILLED_WRITER = """
import os, sys
import safetensors.torch
import torch
from cnnlab.train.checkpoint import save_checkpoint

def killed_in_save_file(tensors, filename, metadata=None):
    with open(os.path.join(os.path.dirname(filename), ".tmpK1ll3d"), "wb") as handle:
        handle.write(b"half a checkpoint")
    os._exit(9)

safetensors.torch.save_file = killed_in_save_file
save_checkpoint(sys.argv[1], model=torch.nn.Linear(2, 2), meta={"epoch": 1}, rng=False)
"""


def test_a_write_killed_inside_safetensors_leaves_only_what_the_next_writer_removes(tmp_path):
    """What a killed checkpoint write leaves is found by atomic_leftovers (the resume and a new run remove those),
    safetensors' own temporary file among it, and nothing with a name no one could tell from another program's."""
    import subprocess
    import sys

    from cnnlab.io import atomic_leftovers, remove_leftover

    path = tmp_path / "last.safetensors"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert done.returncode == 9, done.stderr
    left = atomic_leftovers(path)
    assert left and set(os.listdir(tmp_path)) == {p.name for p in left}
    assert any(p.name == ".tmpK1ll3d" for leftover in left if leftover.is_dir() for p in leftover.iterdir())
    for leftover in left:
        remove_leftover(leftover)
    assert os.listdir(tmp_path) == []


def test_unwritable_destination_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CnnlabError, match="a-file"):  # a file where the folder should be
        save_checkpoint(tmp_path / "a-file" / "last.safetensors", model=tiny_model(), meta={})


# ---------------------------------------------------------------------------------------------
# refusing bad files


def test_missing_file(tmp_path):
    for load in (load_checkpoint, read_meta, load_weights):
        with pytest.raises(CnnlabError, match="does not exist"):
            load(tmp_path / "nope.safetensors")


def _damaged_copies(good: bytes) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[-20] ^= 0xFF  # inside the tensor data, which safetensors itself does not check
    return {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "one_byte_short": good[:-1],
        "random": np.random.default_rng(0).bytes(4096),
        "flipped": bytes(flipped),
    }


@pytest.mark.parametrize("damage", ["empty", "truncated", "one_byte_short", "random", "flipped"])
def test_damaged_file_is_refused_naming_it(tmp_path, damage):
    good = save_checkpoint(tmp_path / "good.safetensors", model=tiny_model(), meta=META, rng=False).read_bytes()
    bad = tmp_path / f"{damage}.safetensors"
    bad.write_bytes(_damaged_copies(good)[damage])
    model = tiny_model(seed=4)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(CnnlabError, match=damage):
        load_checkpoint(bad, model=model)
    with pytest.raises(CnnlabError, match=damage):
        load_weights(bad)
    if damage != "flipped":  # the header is whole there; only loading the tensors finds the damage
        with pytest.raises(CnnlabError, match=damage):
            read_meta(bad)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # nothing was half-loaded


def test_a_damaged_checkpoint_points_at_the_other_one_of_its_run_and_never_at_itself(tmp_path):
    good = save_checkpoint(tmp_path / "last.safetensors", model=tiny_model(), meta=META, rng=False).read_bytes()
    (tmp_path / "best.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CnnlabError) as error:
        load_checkpoint(tmp_path / "best.safetensors", model=tiny_model())
    assert f"use the run's other checkpoint ('{tmp_path / 'last.safetensors'}')" in str(error.value)
    (tmp_path / "last.safetensors").unlink()  # nothing else to point at: a copy of the file itself
    with pytest.raises(CnnlabError, match="use an earlier copy of it, or start a new run") as error:
        load_checkpoint(tmp_path / "best.safetensors", model=tiny_model())
    assert "'best.safetensors'" not in str(error.value).split("; use ")[1]


@pytest.mark.parametrize("zipfile", [True, False])
def test_pickle_file_is_refused_with_a_clear_message(tmp_path, zipfile):
    path = tmp_path / "weights.pth"
    torch.save(tiny_model().state_dict(), path, _use_new_zipfile_serialization=zipfile)
    for load in (load_checkpoint, read_meta, load_weights):
        with pytest.raises(CnnlabError, match="pickle") as error:
            load(path)
        assert "weights.pth" in str(error.value) and "weights_only=True" in str(error.value)


def test_a_safetensors_file_cut_short_is_damaged_even_when_its_header_length_starts_like_a_pickle(tmp_path):
    """A header of 0x5280 bytes starts the file with 0x80, a pickle's first byte: cut short, the checkpoint was
    called a PyTorch pickle file, not a damaged checkpoint."""
    path = tmp_path / "best.safetensors"
    path.write_bytes((0x5280).to_bytes(8, "little") + b'{"__metadata__": {"format": "cnnlab' + b" " * 400)
    for load in (load_checkpoint, read_meta, load_weights):
        with pytest.raises(CnnlabError) as error:
            load(path)
        assert "pickle" not in str(error.value) and "damaged" in str(error.value), str(error.value)


def test_a_file_that_is_no_checkpoint_is_not_called_one_a_full_disk_damaged(tmp_path):
    """A run's metrics.csv handed over as the checkpoint was "damaged or not a safetensors file ... It may have been
    cut short by a full disk": a file neither named nor shaped as a checkpoint is not one. One named .safetensors
    is still called damaged (a cut-short header)."""
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss\n1,10,2.1\n")
    for load in (load_checkpoint, read_meta, load_weights):
        with pytest.raises(CnnlabError) as error:
            load(path)
        assert "is not a checkpoint" in str(error.value) and "full disk" not in str(error.value), str(error.value)
    named = tmp_path / "best.safetensors"
    named.write_bytes(path.read_bytes())
    with pytest.raises(CnnlabError, match="is damaged or not a safetensors file"):
        load_checkpoint(named)
    # a checkpoint cut short inside its header, under another name, still starts as one: damaged
    cut = tmp_path / "cut.weights"
    cut.write_bytes((0x400).to_bytes(8, "little") + b'{"__metadata__": {"format": "cnnlab')
    with pytest.raises(CnnlabError, match="is damaged or not a safetensors file"):
        load_checkpoint(cut)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # TorchScript is deprecated; exports still make it
def test_an_exported_model_is_named_for_what_it_is(tmp_path):
    """`cnnlab export`'s files handed to a loader: named as TorchScript or ONNX, with where the checkpoint is."""
    model = tiny_model().eval()
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 8, 8)), str(scripted))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch")  # how an ONNX ModelProto starts: ir_version, producer_name
    for path, kind in ((scripted, "TorchScript module"), (onnx, "ONNX graph")):
        for load in (load_checkpoint, read_meta, load_weights):
            with pytest.raises(CnnlabError, match=f"is an? {kind}") as error:
                load(path)
            assert "cnnlab export" in str(error.value) and "best.safetensors" in str(error.value)


def test_header_length_starting_like_a_pickle_is_still_safetensors(tmp_path):
    """A safetensors header length whose low byte is 0x80 must not be mistaken for a pickle."""
    path = tmp_path / "x.safetensors"
    for padding in range(300):
        save_weights(path, {"w": torch.ones(2)}, {"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no padding gave a header length ending in 0x80")
    assert load_weights(path)[1] == {"pad": "x" * padding}


def test_other_model_or_class_count_is_refused_saying_what_differs(tmp_path):
    meta = {"model": "resnet18", "num_classes": 100, "in_chans": 3, "epoch": 5}
    path = save_checkpoint(tmp_path / "last.safetensors", model=tiny_model(), meta=meta, rng=False)
    model = tiny_model(seed=9)
    before = model[0].weight.clone()
    with pytest.raises(CnnlabError) as error:
        load_checkpoint(path, model=model, expect={"model": "resnet20", "num_classes": 10, "in_chans": 3})
    message = str(error.value)
    assert "resnet18 with 100 classes" in message and "resnet20 with 10 classes" in message
    assert "model, num_classes" in message and "last.safetensors" in message
    assert torch.equal(model[0].weight, before)


def test_weights_that_do_not_fit_the_model_are_listed(tmp_path):
    path = save_checkpoint(tmp_path / "last.safetensors", model=tiny_model(), meta={}, rng=False)
    other = nn.Sequential(nn.Conv2d(3, 16, 3, bias=True), nn.BatchNorm2d(16))
    with pytest.raises(CnnlabError) as error:
        load_checkpoint(path, model=other)
    message = str(error.value)
    assert "0.bias" in message  # missing from the checkpoint
    assert "5.weight" in message  # the model does not have it
    assert "(8, 3, 3, 3) vs (16, 3, 3, 3)" in message  # another shape
    # The first misfit in the model's own order, with both shapes, leads the message.
    assert "the first tensor that does not fit is '0.weight', shape (16, 3, 3, 3) in the model but (8, 3, 3, 3)" in message


@pytest.mark.parametrize("meta, problem", [
    ({"num_classes": "ten"}, 'num_classes is "ten", but it must be a whole number from 1 to 1,000,000'),
    ({"num_classes": 2, "classes": ["a", "b", "c"]}, "a list of 2 distinct class names"),
    ({"in_chans": 3, "std": [0.2, -0.1, 0.2]}, "each above 0"),
    ({"epoch": 1.5}, "epoch is 1.5"),
    ({"partial": [1, 2]}, "partial is [1, 2]"),
])
def test_meta_of_the_wrong_type_or_range_is_refused_by_every_reader(tmp_path, meta, problem):
    path = save_checkpoint(tmp_path / "odd.safetensors", model=tiny_model(), meta=meta, rng=False)
    for read in (read_meta, read_checkpoint, load_weights, lambda p: load_checkpoint(p, model=tiny_model())):
        with pytest.raises(CnnlabError) as error:
            read(path)
        assert "odd.safetensors" in str(error.value) and problem in str(error.value)


def test_required_meta_keys_and_registered_model(tmp_path):
    from cnnlab.train.checkpoint import RESUME_KEYS, read_checkpoint_meta

    path = save_checkpoint(tmp_path / "last.safetensors", model=tiny_model(), meta=META, rng=False)
    assert read_checkpoint_meta(path) == META  # 'tiny' is not registered, and nothing asks to build it
    with pytest.raises(CnnlabError, match=r"batch \(.*\) is missing"):
        load_checkpoint(path, model=tiny_model(), require=RESUME_KEYS)
    with pytest.raises(CnnlabError, match='model is "tiny", which is not a registered model'):
        read_checkpoint_meta(path, require=("model",))


def test_mismatched_optimizer_and_missing_state_are_refused(tmp_path):
    model = tiny_model()
    sgd = make_optimizer("sgd", model)
    train_steps(model, sgd, batches(1, seed=0))
    path = save_checkpoint(tmp_path / "sgd.safetensors", model=model, optimizer=sgd, meta={}, rng=False)
    with pytest.raises(CnnlabError, match="trained with SGD; this run builds AdamW"):
        load_checkpoint(path, optimizer=make_optimizer("adamw", model))
    one_group = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CnnlabError, match="parameter groups") as error:
        load_checkpoint(path, optimizer=one_group)
    assert "differs from the run that saved it" in str(error.value)
    # The groups an earlier cnnlab built for the run (cnnlab.train.finetune.groups_before_head_rates) are named
    # as the cause only when the checkpoint's groups are those; other sizes remain a different model or config.
    saved_sizes = [len(group["params"]) for group in two_groups(model)]
    with pytest.raises(CnnlabError, match="differs from the run that saved it"):
        load_checkpoint(path, optimizer=one_group, earlier_group_sizes=[1, 2, 3])
    with pytest.raises(CnnlabError, match="started by an earlier cnnlab") as error:
        load_checkpoint(path, optimizer=one_group, earlier_group_sizes=saved_sizes)
    assert "no_decay_norm_bias" not in str(error.value)
    with pytest.raises(CnnlabError, match="no EMA"):
        load_checkpoint(path, ema_model=FakeEma(model))
    with pytest.raises(CnnlabError, match="no random number generator"):
        load_checkpoint(path, restore_rng=True)

    weights_only = save_checkpoint(tmp_path / "w.safetensors", model=model, meta={}, rng=False)
    with pytest.raises(CnnlabError, match="no optimiser state"):
        load_checkpoint(weights_only, optimizer=sgd)


def test_snapshots_and_checkpoints_are_told_apart(tmp_path):
    model = tiny_model()
    snapshot = save_weights(tmp_path / "snapshot-1.safetensors", model, {"step": 10})
    with pytest.raises(CnnlabError, match="weights only"):
        load_checkpoint(snapshot, model=model)
    assert read_meta(snapshot) == {"step": 10}

    # Snapshot files are plain state dicts to other tools.
    assert safetensors.torch.load_file(str(snapshot)).keys() == model.state_dict().keys()

    # load_weights takes a checkpoint's model weights, and a plain safetensors file from elsewhere.
    checkpoint = save_checkpoint(tmp_path / "last.safetensors", model=model, meta=META, rng=True)
    state, meta = load_weights(checkpoint)
    assert state.keys() == model.state_dict().keys() and meta == META
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2)}, str(plain))
    assert load_weights(plain)[1] == {}
    with pytest.raises(CnnlabError, match="not a cnnlab checkpoint"):
        load_checkpoint(plain)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    safetensors.torch.save_file({"model/w": torch.ones(1)}, str(path),
                                metadata={"format": "cnnlab-checkpoint", "version": "99", "meta": "{}"})
    with pytest.raises(CnnlabError, match="newer cnnlab"):
        load_checkpoint(path)


def test_meta_that_is_not_json_is_a_programming_error(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "x.safetensors", model=tiny_model(), meta={"when": object()})
    assert not list(tmp_path.iterdir())


def test_a_model_that_reads_its_module_versions_round_trips_with_its_ema(tmp_path):
    """torchvision's MNASNet refuses a state without module versions, and a safetensors file keeps none:
    a checkpoint of it must still load (resume, eval, and its EMA weights)."""
    import cnnlab
    from cnnlab.train.ema import ModelEma

    torch.manual_seed(0)
    model = cnnlab.create_model("tv:mnasnet0_5", num_classes=3, in_chans=1)
    ema = ModelEma(model)
    with torch.no_grad():
        for param in ema.module.parameters():
            param.add_(1.0)
    path = save_checkpoint(tmp_path / "m.safetensors", model=model, ema=ema, meta={}, rng=False)
    torch.manual_seed(1)
    fresh = cnnlab.create_model("tv:mnasnet0_5", num_classes=3, in_chans=1)
    fresh_ema = ModelEma(fresh)
    load_checkpoint(path, model=fresh, ema_model=fresh_ema)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(fresh_ema.module.state_dict().values(),
                                                  ema.module.state_dict().values()))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_optimiser_group_sizes_read_from_the_header_are_those_of_the_whole_checkpoint(tmp_path, name):
    model = tiny_model()
    optimizer = make_optimizer(name, model)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()  # state tensors (momentum, moments) to leave unread
    save_checkpoint(tmp_path / "c.safetensors", model=model, optimizer=optimizer, meta=META)
    whole = read_checkpoint(tmp_path / "c.safetensors").optimizer["param_groups"]
    assert optimizer_group_sizes(tmp_path / "c.safetensors") == [len(group["params"]) for group in whole] == [2, 3]
    save_checkpoint(tmp_path / "w.safetensors", model=model, meta=META)  # no optimiser state
    assert optimizer_group_sizes(tmp_path / "w.safetensors") is None
