import json

import pytest

import cnnlab


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
    pool_line = next(line for line in out.splitlines() if line.startswith("pooling ops"))
    assert pool_line.split()[-1] == f"{cnnlab.summary('alexnet').pool_ops:,}"  # pooling ops are not doubled
    assert "all ops" in out and "AdamW" in out


def test_compare_json_and_plot(tmp_path, cli):
    plot = tmp_path / "zoo.png"
    code, out, err = cli(["compare", "lenet5", "resnet20", "--json", "--plot", str(plot)])
    assert code == 0 and f"plot written to {plot}" in err  # the JSON is the rows: where the plot went, on stderr
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["lenet5", "resnet20"]
    assert rows[1]["macs"] > rows[0]["macs"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.png"]  # no temporary file left behind
    # in FLOPs, the keys summary --json gives: macs doubled (a script reading macs got a KeyError), flops, units
    code, out, _ = cli(["compare", "lenet5", "resnet20", "--json", "--units", "flops"])
    flops = json.loads(out)
    assert code == 0 and [r["units"] for r in rows] == ["macs"] * 2 and [r["units"] for r in flops] == ["flops"] * 2
    assert [r["flops"] for r in flops] == [r["macs"] for r in flops] == [2 * r["macs"] for r in rows]
    _, single, _ = cli(["summary", "resnet20", "--json", "--units", "flops"])
    assert json.loads(single)["totals"]["flops"] == flops[1]["flops"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["summary", "alexnet", "--input", "3x22"], r"too small for alexnet: at layer 'features.*receives a 3x22 feature map"),
        (["summary", "alexnet", "--input", "axb"], "Cannot read input size"),
        (["summary", "resnet20", "--units", "gflops"], r"\(--units\) must be"),
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


def test_model_spec_sets_classes_and_channels(cli):
    """num_classes= and in_chans= in a model spec build that network, checked against independent counts."""
    import torchvision

    code, out, err = cli(["summary", "resnet18,num_classes=5", "--json"])
    assert code == 0, err
    reference = torchvision.models.resnet18(num_classes=5)  # the same network: its fc is Linear(512, 5)
    assert json.loads(out)["totals"]["params"] == sum(p.numel() for p in reference.parameters())
    # LeNet-5's first conv on 1 channel: 6 filters of 1x5x5 and 6 biases (3 channels would give 456)
    code, out, err = cli(["summary", "lenet5,in_chans=1", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"][0] == 1 and data["rows"][0]["params"] == 6 * 1 * 5 * 5 + 6
    code, out, err = cli(["build", "resnet8,num_classes=5", "--json"])
    assert code == 0, err
    assert json.loads(out)["output"] == [5] and "out_features=5," in json.loads(out)["classifier"]


def test_compare_tells_specs_with_other_classes_apart(cli):
    code, out, err = cli(["compare", "resnet8,num_classes=10", "resnet8", "--json"])
    assert code == 0, err
    ten, thousand = json.loads(out)
    features = 64  # resnet8's fc reads 64 features: each further class adds 64 weights and a bias
    assert thousand["params"] - ten["params"] == (1000 - 10) * (features + 1)


def test_summary_stages_follow_the_input(cli):
    """--stages counts the parameters for --input's channels (LeNet-5's stage1 conv: 6*1*5*5 + 6)."""
    code, out, err = cli(["summary", "lenet5", "--stages", "--input", "1x32x32", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["stages"][1]["stage"] == "stage1" and data["stages"][1]["params"] == 6 * 1 * 5 * 5 + 6
    assert data["input_size"] == [1, 32, 32]
    code, out, err = cli(["summary", "lenet5,in_chans=1", "--stages", "--json"])
    assert code == 0 and json.loads(out)["stages"][1]["params"] == 6 * 1 * 5 * 5 + 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["summary", "lenet5", "--stages", "--batch", "4"], "--stages.*--batch"),
        (["summary", "lenet5", "--stages", "--depth", "2"], "--stages.*--depth"),
        (["summary", "lenet5", "--stages", "--units", "flops"], "--stages.*--units"),
        # given at their defaults they are still given, and still do not apply
        (["summary", "lenet5", "--stages", "--batch", "1", "--units", "macs"], "--stages.*--batch, --units"),
        (["summary", "alexnet", "--stages", "--input", "1x4x4"], "receives a 4x4"),
        (["summary", "lenet5,num_classes=5", "--num-classes", "10"], "num_classes=5.*--num-classes 10"),
        (["build", "lenet5,in_chans=1", "--in-chans", "3"], "in_chans=1.*--in-chans 3"),
        # --norm and --act silently replaced the spec's own choice
        (["build", "resnet8,norm=gn:4", "--norm", "bn"], r"sets norm=gn:4 but --norm bn asks for another value"),
        (["build", "resnet8,act=leaky_relu:0.1", "--act", "relu"], r"sets act=leaky_relu:0.1 but --act relu"),
        (["summary", "lenet5,in_chans=1", "--input", "3x32x32"], "--input has 3 channels but the model takes 1"),
        # compare has no --in-chans and checks several models: the message names the one that disagrees
        (["compare", "resnet8", "lenet5,in_chans=1", "--input", "3x32x32"],
         r"the model takes 1 \(in_chans=1 in the model 'lenet5,in_chans=1'\)"),
        (["compare", "lenet5,in_chans=0", "resnet8"], "in_chans=0.*whole number from 1"),
        # a norm that needs two images: compare has no --batch to give it, so the advice names summary's
        (["compare", "resnet8,norm=bn,norm_options.track_running_stats=false", "resnet8", "--input", "1x4x4"],
         r"compare analyses every model at batch 1: analyse this one with `cnnlab summary .* --input 1x4x4 --batch 2`"),
        (["summary", "resnet8,norm=bn,norm_options.track_running_stats=false", "--input", "1x4x4"],
         r"Analyse it with a batch of 2 or more \(--batch 2"),
        (["build", "lenet5,num_classes=abc"], "num_classes='abc'.*whole number"),
    ],
)
def test_bad_model_spec_and_stage_options(args, message, cli):
    import re

    code, _, err = cli(args)
    assert code == 2 and "Traceback" not in err and re.search(message, err), err


@pytest.mark.parametrize("spec, option", [("resnet8,norm=gn:4", ["--norm", "GN:4"]),
                                          ("resnet8,act=relu", ["--act", "ReLU"]),
                                          ("resnet8,act=leaky_relu:0.1", ["--act", "Leaky-ReLU:0.10"])])
def test_a_flag_naming_the_specs_own_layer_in_another_spelling_agrees_with_it(spec, option, cli):
    """Names are read in any case everywhere: the same layer spelt otherwise was refused as another value."""
    code, out, err = cli(["build", spec, *option, "--input", "1x28x28"])
    assert code == 0 and "note:" not in err, err  # nor a note that --set gave the key twice



def test_the_mlps_input_size_option_is_analysed_at_its_side(cli):
    """mlp,input_size=28 reads 28x28 images: summary and compare build it (its option shares a name with
    summary's own input_size), and with no --input every command shows it at 28x28, not pooled from 32."""
    hidden, first = 256, "features.layer1.linear"
    code, out, err = cli(["summary", "mlp,input_size=28", "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["input_size"] == [3, 28, 28]
    layer1 = next(r for r in data["rows"] if r["name"] == first)
    assert layer1["params"] == 3 * 28 * 28 * hidden + hidden
    # a 1x32x32 input is pooled to the 28x28 the first layer reads
    code, out, err = cli(["summary", "mlp,input_size=28", "--input", "1x32x32", "--json"])
    assert code == 0, err
    assert next(r for r in json.loads(out)["rows"] if r["name"] == first)["params"] == 28 * 28 * hidden + hidden
    code, out, err = cli(["compare", "mlp,input_size=28", "mlp", "--json"])
    assert code == 0, err
    rows = json.loads(out)
    assert [r["input_size"] for r in rows] == [[3, 28, 28], [3, 32, 32]]
    assert rows[1]["params"] - rows[0]["params"] == 3 * (32 * 32 - 28 * 28) * hidden
    code, out, err = cli(["build", "mlp,input_size=28", "--json"])
    assert code == 0, err
    assert json.loads(out)["input"] == [3, 28, 28]


def test_stages_json_names_the_spec_as_the_table_and_the_layer_json_do(cli):
    """Two variants of one network (resnet8 and resnet8,se=4) are told apart in --stages --json too."""
    spec = "resnet8,se=4"
    code, out, err = cli(["summary", spec, "--stages", "--json"])
    assert code == 0, err
    stages = json.loads(out)
    code, out, err = cli(["summary", spec, "--json"])
    assert code == 0, err
    assert stages["model"] == json.loads(out)["model"] == spec
    code, out, err = cli(["summary", spec, "--stages"])
    assert code == 0 and f"{spec} at 3x32x32: stages" in out


def test_build_options_that_agree_with_the_spec_are_taken(cli):
    code, out, err = cli(["build", "resnet8,norm=gn:4", "--norm", "gn:4", "--act", "gelu", "--json"])
    assert code == 0, err
    code, same, err = cli(["build", "resnet8,norm=gn:4,act=gelu", "--json"])
    assert code == 0 and json.loads(out) == json.loads(same)


@pytest.mark.parametrize("spec, size", [("resnet18,norm=in", "1x32x32"), ("alexnet", "3x32x32")])
def test_summary_explains_a_too_small_input_as_build_does(spec, size, cli):
    """Instance norm on a 1x1 map failed in summary with torch's "when training" and a pointer to the
    minimum size the input already had; summary, compare and build now give one explanation."""
    code, _, build_err = cli(["build", spec, "--input", size])
    assert code == 2 and "is too small for" in build_err
    for args in (["summary", spec, "--input", size], ["compare", spec, "resnet8", "--input", size]):
        code, _, err = cli(args)
        assert code == 2 and err == build_err, err


def test_long_layer_names_are_printed_whole(cli):
    """torchvision's ViT names run past the column (encoder.layers.encoder_layer_11.self_attention.out_proj):
    they were cut to 'encoder.layers.encoder_laye…' in piped output; they wrap instead."""
    code, out, _ = cli(["summary", "tv:vit_b_32"])
    assert code == 0
    assert "…" not in out
    layer_column = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    assert "encoder.layers.encoder_layer_11.self_attention.out_proj" in layer_column


@pytest.mark.parametrize("size", ["3x160x160", "1x448x448"])
def test_a_vit_at_another_size_is_told_the_one_size_it_takes(size, cli):
    """torchvision's ViT takes exactly its image_size: the message sent users to `cnnlab models` for a
    minimum, as if any larger input would do."""
    channels = size.split("x")[0]
    for args in (["summary", "tv:vit_b_32", "--input", size], ["build", "tv:vit_b_32", "--input", size]):
        code, _, err = cli(args)
        assert code == 2 and "Traceback" not in err, err
        assert "takes only 224x224 images" in err and f"use a {channels}x224x224 input" in err, err
        assert "minimum" not in err, err
    # MaxViT's window partition takes only the input_size it was built for (it fails at 256 and 448 too)
    code, _, err = cli(["summary", "tv:maxvit_t", "--input", "3x160x160"])
    assert code == 2 and "takes only 224x224 images" in err and "minimum" not in err, err
    # its stride-2 stem rounds 221-223 to 224's grid, where the forward ran: refused alike, as `models` says
    for near in ("3x223x223", "3x224x221"):
        code, _, err = cli(["summary", "tv:maxvit_t", "--input", near])
        assert code == 2 and f"tv:maxvit_t cannot take a {near} input. It takes only 224x224 images" in err, err


def test_an_image_size_on_a_module_of_ones_own_is_no_limit():
    """A module that records the size it is usually trained at (image_size = 32) and pools adaptively takes any
    size: it was refused at 64x64 as if it were a ViT built for 32x32."""
    import torch.nn as nn

    import cnnlab
    from cnnlab.models import check_input_size

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.image_size = 32
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(self.features(x).flatten(1))

    assert check_input_size(Net(), (3, 64, 64)) == (10,)
    assert cnnlab.summary(Net(), (3, 64, 64)).total_params == 3 * 8 * 9 + 8 + 8 * 10 + 10
