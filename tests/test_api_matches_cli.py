"""The CLI displays and the library decides: the Python API gives the numbers the CLI prints.

For each piece of workflow logic that used to live in cli.py (the FLOPs conversion of `summary
--json`, the report of `data stats --json`, the narrowed space of `search --refine`), the library
function is called directly and compared with the CLI's JSON output, key for key.
"""

import json

import optuna
import pytest
import torch
import yaml
from PIL import Image

import cnnlab
from cnnlab.config import DataConfig, RunConfig
from cnnlab.data import load_source
from cnnlab.data.report import data_report
from cnnlab.tune import search

SYNTHETIC = "synthetic:classes=3,train=96,val=24,test=24"


# --- summary --json --------------------------------------------------------------------------


@pytest.mark.parametrize("units", ["macs", "flops"])
@pytest.mark.parametrize("depth", [None, 2])
def test_summary_json_is_the_librarys_to_dict(cli, units, depth):
    args = ["summary", "resnet20", "--units", units, "--json"] + (["--depth", str(depth)] if depth else [])
    code, out, err = cli(args)
    assert code == 0, err
    library = cnnlab.summary("resnet20", (3, 32, 32)).to_dict(depth, units)
    assert json.loads(out) == library
    assert library["units"] == units


def test_flops_doubles_every_multiply_add_count_and_keeps_pooling_and_element_ops():
    result = cnnlab.summary("resnet20", (3, 32, 32))
    macs, flops = result.to_dict(units="macs"), result.to_dict(units="flops")
    # a max or mean over a window is one comparison or addition per element read, not a multiply-add
    assert result.pool_ops > 0 and flops["totals"]["pool_ops"] == macs["totals"]["pool_ops"] == result.pool_ops
    assert flops["totals"]["macs"] == 2 * result.macs
    assert flops["totals"]["element_ops"] == macs["totals"]["element_ops"] == result.element_ops
    assert flops["totals"]["all_ops"] == 2 * result.macs + result.pool_ops + result.element_ops
    assert [r["pool_ops"] for r in flops["rows"]] == [r["pool_ops"] for r in macs["rows"]]
    assert [r["macs"] for r in flops["rows"]] == [2 * r["macs"] for r in macs["rows"]]
    assert macs["totals"] == result.totals()  # MACs are the unconverted numbers
    with pytest.raises(cnnlab.CnnlabError, match=r"units \(--units\) must be 'macs' or 'flops'"):
        result.to_dict(units="gflops")


def test_summary_json_in_flops_names_them_flops_and_they_match_torch_s_flop_counter(cli):
    """--units flops --json kept every count under "macs" only; "flops" now holds them (torch's FlopCounterMode
    counts the same conv and linear FLOPs), and "macs" keeps the value it had for readers of the old key."""
    from torch.utils.flop_counter import FlopCounterMode

    code, out, err = cli(["summary", "resnet20", "--units", "flops", "--json"])
    assert code == 0, err
    flops = json.loads(out)
    model = cnnlab.create_model("resnet20").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert flops["totals"]["flops"] == counter.get_total_flops()
    assert flops["totals"]["macs"] == flops["totals"]["flops"]  # the old key, as before
    assert all(row["flops"] == row["macs"] for row in flops["rows"])
    assert sum(row["flops"] for row in flops["rows"] if row["is_leaf"]) == flops["totals"]["flops"]
    code, out, err = cli(["summary", "resnet20", "--json"])  # in MACs nothing changes: no flops key
    assert code == 0 and "flops" not in json.loads(out)["totals"]


# --- data stats --json -----------------------------------------------------------------------


def test_data_stats_json_is_the_librarys_report(cli):
    code, out, err = cli(["data", "stats", "digits", "--json", "--refresh"])
    assert code == 0, err
    library = data_report(load_source(DataConfig(spec="digits")), refresh=True)
    assert json.loads(out) == library
    assert library["splits"]["train"]["images"] == 1259 and library["buckets"] is None  # the README's split
    assert sum(library["splits"]["train"]["per_class"]) == 1259


@pytest.fixture
def photo_folder(tmp_path):
    """Two classes of RGB photos in three shapes, and one file that is not an image."""
    generator = torch.Generator().manual_seed(0)
    for label, shapes in (("cat", [(40, 30), (32, 32), (30, 40)]), ("dog", [(64, 48), (48, 48), (20, 60)])):
        folder = tmp_path / "photos" / label
        folder.mkdir(parents=True)
        for copy in range(3):
            for width, height in shapes:
                pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
                Image.fromarray(pixels.numpy()).save(folder / f"{width}x{height}-{copy}.png")
    (tmp_path / "photos" / "cat" / "broken.png").write_bytes(b"not a png")
    return tmp_path / "photos"


def test_data_stats_with_buckets_and_a_skipped_file_is_the_librarys_report(cli, photo_folder):
    spec = f"folder:{photo_folder}"
    code, out, err = cli(["data", "stats", spec, "--buckets", "4:3,1:1,3:4", "--image-size", "32", "--json"])
    assert code == 0, err
    library = data_report(load_source(DataConfig(spec=spec, buckets="4:3,1:1,3:4", image_size=32)))
    cli_report = json.loads(out)
    assert cli_report.pop("stats_from_cache") is False and library.pop("stats_from_cache") is True  # the CLI wrote it
    assert cli_report.pop("stats_written") is True and library.pop("stats_written") is False  # read, not written
    assert cli_report == library
    assert [row["ratio"] for row in library["buckets"]] == ["4:3", "1:1", "3:4"]
    assert sum(row["images"] for row in library["buckets"]) == library["splits"]["train"]["images"]
    assert library["square_distortion_percent"] > max(row["max_distortion_percent"] for row in library["buckets"])
    assert any("broken.png" in row["file"] for row in library["skipped"])
    assert len(library["mean"]) == 3 and len(library["pca_eigvals"]) == 3


# --- search --refine -------------------------------------------------------------------------


def coarse_study(out):
    """A finished coarse study without training: its space and base recorded, five completed trials."""
    base = RunConfig()
    base.model.name, base.data.spec = "lenet5", SYNTHETIC
    base.train.batch_size, base.train.threads = 32, 1
    space = {"optim.lr": {"low": 1e-4, "high": 1.0, "log": True}, "model.drop_rate": {"low": 0.0, "high": 0.5},
             "train.batch_size": {"choices": [16, 32, 64]}}
    plan = search.plan_search(base, out, space=space, trials=5, epochs=1, pruner="none")
    study = search.open_study(plan.settings)
    distributions = {"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True),
                     "model.drop_rate": optuna.distributions.FloatDistribution(0.0, 0.5),
                     "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64])}
    for lr, drop, batch, acc in ((1e-2, 0.1, 32, 0.9), (3e-2, 0.2, 32, 0.8), (5e-3, 0.3, 16, 0.7),
                                 (1e-4, 0.5, 64, 0.2), (0.9, 0.0, 64, 0.1)):
        study.add_trial(optuna.trial.create_trial(params={"optim.lr": lr, "model.drop_rate": drop,
                                                          "train.batch_size": batch},
                                                  distributions=distributions, value=acc))
    return plan


def test_refined_space_from_the_library_is_the_clis(cli, tmp_path):
    out = tmp_path / "search"
    coarse = coarse_study(out)
    refinement = search.refine_search(coarse.settings.storage, "search", out)
    # the best 3 of 5 (at least REFINE_TOP_MIN), best first; twice the coarse epochs
    assert [t["val_acc"] for t in refinement.top] == [0.9, 0.8, 0.7] and refinement.epochs == 2
    assert refinement.space["train.batch_size"].choices == [16, 32]
    assert 5e-3 > refinement.space["optim.lr"].low > 1e-4 and 3e-2 < refinement.space["optim.lr"].high < 1.0
    from_library = yaml.safe_load(refinement.path.read_text())
    assert from_library == search.space_dict(refinement.space)

    code, stdout, err = cli(["search", "--model", "lenet5", "--data", SYNTHETIC, "--refine", "--trials", "1",
                             "--epochs", "1", "--out", str(out), "--json"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["space"] == search.space_dict(refinement.space)
    assert yaml.safe_load((out / "space-refine.yaml").read_text()) == from_library
    expected = {**refinement.to_dict(), "epochs": 1}  # --epochs 1 instead of the default 2
    assert report["refine"] == expected and report["study"] == "search-refine"
    assert report["trials"][0]["params"]["train.batch_size"] in (16, 32)
    lr = report["trials"][0]["params"]["optim.lr"]
    assert refinement.space["optim.lr"].low <= lr <= refinement.space["optim.lr"].high
