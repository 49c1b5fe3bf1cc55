import json

import pytest


def test_summary_json_rows_and_totals(cli):
    code, out, _ = cli(["summary", "alexnet", "--json"])
    assert code == 0
    data = json.loads(out)
    conv1 = data["rows"][0]
    assert conv1["name"] == "features.0.conv" and conv1["output_shape"] == [64, 56, 56]
    assert conv1["macs"] == 72855552 and conv1["receptive_field"] == [11, 11] and conv1["jump"] == [4, 4]
    assert data["totals"]["params"] == 61100840 and "C_out*H'*W'" in data["conventions"]


def test_flops_are_twice_the_macs(cli):
    _, macs_out, _ = cli(["summary", "resnet20", "--json"])
    _, flops_out, _ = cli(["summary", "resnet20", "--json", "--units", "flops"])
    macs, flops = json.loads(macs_out), json.loads(flops_out)
    assert flops["totals"]["macs"] == 2 * macs["totals"]["macs"]
    assert flops["totals"]["element_ops"] == macs["totals"]["element_ops"]  # element counts stay counts
    assert [r["macs"] for r in flops["rows"]] == [2 * r["macs"] for r in macs["rows"]]


def test_summary_table_depth_batch_and_grayscale(cli):
    code, out, _ = cli(["summary", "resnet20", "--in-chans", "1", "--batch", "4", "--depth", "2"])
    assert code == 0
    assert "resnet20 at 1x32x32, batch 4" in out and "features.stage1" in out and "stage1.0.conv1" not in out
    assert "training memory" in out and "conventions" in out


def test_summary_table_shows_the_lecture_units(cli):
    code, out, _ = cli(["summary", "alexnet", "--units", "flops"])
    assert code == 0
    assert "784.0 KB" in out and "FLOPs" in out and f"{2 * 72855552:,}" in out
    assert "all ops" in out and "AdamW" in out


def test_compare_json_and_plot(tmp_path, cli):
    plot = tmp_path / "zoo.png"
    code, out, _ = cli(["compare", "lenet5", "resnet20", "--json", "--plot", str(plot)])
    assert code == 0
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["lenet5", "resnet20"]
    assert rows[1]["macs"] > rows[0]["macs"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.png"]  # no temporary file left behind


@pytest.mark.parametrize(
    "args, message",
    [
        (["summary", "alexnet", "--input", "3x22"], "layer 'features.*failed on a tensor of shape"),
        (["summary", "alexnet", "--input", "axb"], "Cannot read input size"),
        (["summary", "resnet20", "--units", "gflops"], "--units must be"),
        (["summary", "resnet20", "--depth", "0"], "--depth"),
        (["summary", "resnet20", "--batch", "0"], "--batch"),
        (["compare", "lenet5", "resnet20", "--plot", "/proc/self/status/x.png"], "status' is a file, not a folder"),
        (["compare", "lenet5", "resnet20", "--plot", "plot.jpg"], "must be a .png file"),
        (["compare", "lenet5", "resnet20", "--plot", "/sys/zoo.png"], "cannot be written: Permission denied"),
        (["compare", "lenet5"], "two or more models"),
        (["summary", "resnet20", "--in-chans", "0"], "--in-chans must be at least 1"),
    ],
)
def test_bad_input(args, message, cli):
    import re

    code, _, err = cli(args)
    assert code == 2 and "Traceback" not in err and re.search(message, err), err
