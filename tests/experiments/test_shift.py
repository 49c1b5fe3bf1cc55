"""The shift experiment: its shift and receptive-field arithmetic worked by hand, the measurements against
torch's own circular padding and a network that is not equivariant, and a tiny run end to end."""

import json
import math

import pytest
import torch
from torch import nn

from cnnlab.experiments import FAILS, HOLDS, INCONCLUSIVE, RESULT_FILE, run_experiment
from cnnlab.experiments.shift import (
    EXACT_TOLERANCE,
    SHIFTS,
    Geometry,
    equivariance_check,
    equivariance_rows,
    interior_mask,
    pool_rows,
    shift_image,
)
from cnnlab.models import create_model


def test_shift_image_moves_content_and_fills_the_vacated_edge():
    image = torch.arange(1.0, 10.0).view(1, 1, 3, 3)  # [[1 2 3] [4 5 6] [7 8 9]]
    fill = torch.tensor([-1.0])
    right = shift_image(image, 0, 1, fill)
    assert right[0, 0].tolist() == [[-1, 1, 2], [-1, 4, 5], [-1, 7, 8]]
    up = shift_image(image, -1, 0, fill)
    assert up[0, 0].tolist() == [[4, 5, 6], [7, 8, 9], [-1, -1, -1]]
    assert shift_image(image, 0, 3, fill).eq(-1).all()  # moved out entirely
    assert torch.equal(shift_image(image, 0, 0, fill), image)


def test_geometry_and_interior_by_hand():
    # vgg_mini's first two stages: 3x3 conv (pad 1), 2x2 pool, 3x3 conv (pad 1)
    conv = nn.Conv2d(1, 1, 3, padding=1)
    first = Geometry().after(conv)
    assert first == Geometry(size=3, jump=1, start=-1)
    pooled = first.after(nn.MaxPool2d(2, 2))
    assert pooled == Geometry(size=4, jump=2, start=-1)
    second = pooled.after(conv)
    assert second == Geometry(size=8, jump=2, start=-3)
    # 28 pixels, shift 1: position i reads pixels i-1..i+1 of the rolled image; the wrapped pixel 0 rules out
    # i <= 1, the padding (pixel 28) i = 27: positions 2..26 remain.
    assert torch.nonzero(interior_mask(first, 1, 28, 28)).flatten().tolist() == list(range(2, 27))
    # the second conv at 14 positions, shift 2: position i reads pixels 2i-3..2i+4; 2i-3 >= 2 and 2i+4 <= 27
    assert torch.nonzero(interior_mask(second, 2, 14, 28)).flatten().tolist() == list(range(3, 12))


def test_equivariance_against_circular_padding_and_a_non_equivariant_net():
    torch.manual_seed(0)
    model = create_model("vgg_mini", in_chans=1, num_classes=10, cfg=[[1, 4], [1, 8]]).eval()
    images = torch.randn(3, 1, 16, 16)
    rows = equivariance_rows(model, images)
    assert [(r["layer"], r["axis"], r["input_shift_px"]) for r in rows] == [
        ("features.0", "width", 1), ("features.0", "height", 1), ("features.2", "width", 2), ("features.2", "height", 2)]
    assert all(r["interior_rel_error"] <= EXACT_TOLERANCE and r["circular_rel_error"] <= EXACT_TOLERANCE for r in rows)
    assert all(r["whole_map_rel_error"] > 1e-3 for r in rows)  # zero padding: the border differs
    assert equivariance_check([{"equivariance": rows}]).verdict == HOLDS

    # A side that is not a whole number of the pools' strides (18 = 4 x 4 + 2 before the third block): circular
    # padding wraps the pooled maps exactly only on the whole strides, the crop the check reads
    deeper = create_model("vgg_mini", in_chans=1, num_classes=10, cfg=[[1, 4], [1, 8], [1, 8]]).eval()
    odd = equivariance_rows(deeper, torch.randn(3, 1, 18, 18))
    assert [r["input_shift_px"] for r in odd] == [1, 1, 2, 2, 4, 4]
    assert all(r["interior_rel_error"] <= EXACT_TOLERANCE and r["circular_rel_error"] <= EXACT_TOLERANCE for r in odd)
    assert equivariance_check([{"equivariance": odd}]).verdict == HOLDS

    class AddRamp(nn.Module):  # a position-dependent term: the map no longer moves with the image
        def forward(self, x):
            return x + torch.linspace(0, 1, x.shape[-1], dtype=x.dtype)

    model.features[0].append(AddRamp())
    broken = equivariance_rows(model, images)
    assert broken[0]["interior_rel_error"] > 1e-3
    assert equivariance_check([{"equivariance": broken}]).verdict == FAILS


def test_pool_sensitivity_worked_by_hand():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Identity(), nn.MaxPool2d(2, 2))

    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 0] = 1.0  # one bright pixel in the top-left corner, black (0) around it
    [row] = pool_rows(Net(), image, torch.tensor([0.0]))
    # Before the pool: right and down move the pixel (squared difference 2 each), left and up push it out (1 each):
    # sqrt(6 / (4 directions x 1)). After the 2x2 pool: right and down stay in the same window (0), left and up
    # empty it (1 each): sqrt(2 / 4).
    assert row["rel_change_before"] == pytest.approx(math.sqrt(6 / 4))
    assert row["rel_change_after"] == pytest.approx(math.sqrt(2 / 4))
    assert row["map_side_before"] == 4 and row["map_side_after"] == 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("shift") / "exp"
    return run_experiment("shift", "tiny", out=out), out


def test_tiny_run_measures_all_three_parts(tiny):
    result, out = tiny
    saved = json.loads((out / RESULT_FILE).read_text())
    assert saved["size"] == "tiny" and saved["seeds"] == 1 and saved["data"] == "digits"
    by_claim = {c.claim[:3]: c for c in result.checks}
    # (a) is exact arithmetic, decided on one seed; (b) per pool and (c) need 3 seeds
    assert by_claim["(a)"].verdict == HOLDS
    assert [c.verdict for c in result.checks[1:]] == [INCONCLUSIVE] * 4  # three pools and the classifier
    parts = [r.get("part") for r in result.rows]
    assert parts.count("a") == 6 and parts.count("b") == 3  # 3 conv blocks x 2 axes; 3 pools
    summary = result.rows[0]
    for s in SHIFTS:
        assert 0 <= summary[f"test_acc_shift{s}_mean"] <= 1 and 0 <= summary[f"consistency_shift{s}_mean"] <= 1
    assert {p.name for p in result.plots} == {"shift_pooling.png", "shift_accuracy.png"}


def test_data_with_too_few_images_per_class_is_refused(cli, tmp_path):
    code, out, err = cli(["experiment", "shift", "--size", "tiny", "--data",
                          "synthetic:classes=3,train=30,val=9,test=9", "--out", str(tmp_path / "x")])
    assert code == 2 and "Traceback" not in err
    assert "training images" in err and "20 per class" in err
    assert not (tmp_path / "x" / "runs").exists()


def test_a_pool_s_margin_shows_enough_digits_to_read_its_verdict():
    """A lead of 0.052 over the minimum margin 0.05 read "ahead by +0.05, needed more than 0.05" beside HOLDS."""
    from cnnlab.experiments.shift import pool_checks

    measured = [{"pools": [{"pool": 2, "rel_change_after": after, "rel_change_before": before}]}
                for after, before in ((0.27, 0.322), (0.28, 0.332), (0.29, 0.342))]
    (check,) = pool_checks(measured)
    assert check.verdict == HOLDS and "ahead by +0.052, needed more than 0.050" in check.margin, check.margin
