"""One data set read as a folder and as a CSV: 11 classes named 0..10, which a folder sorts as text (0, 1, 10,
2, ...) and a CSV as numbers. Eval and ensemble match the classes by name across the two orders."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import DataConfig, RunConfig, apply_overrides
from cnnlab.data import load_source
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.ensemble import run_ensemble
from cnnlab.evaluate.evaluate import (black_fill, check_classes, classification_report, eval_loader, load_model,
                                      predict_probabilities, run_eval)
from cnnlab.train.engine import train

CLASSES = 11


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """PATH/train, val, test with class folders 0..10 (each class its own grey level and stripe), and a CSV
    beside PATH listing the same files with their labels and splits, in numeric label order."""
    root = tmp_path_factory.mktemp("numbered")
    rng = np.random.default_rng(0)
    rows = []
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        for label in range(CLASSES):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 10, (12, 12), dtype=np.uint8) + 20 * label
                pixels[label % 12, :] = 255
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
                rows.append((str(folder / f"{i}.png"), str(label), split))
    table = tmp_path_factory.mktemp("listing") / "labels.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    return {"folder": f"folder:{root}", "csv": f"csv:{table}"}


def _files(spec: str):
    """The data read from its files (not decoded into memory), so that each test image keeps its path."""
    return load_source(DataConfig(spec=spec, in_memory=False))


def _train(spec: str, folder, seed: int):
    config = apply_overrides(RunConfig(), ["model.name=resnet8", f"data.spec={spec}", "data.image_size=16",
                                           "train.batch_size=8", "train.epochs=4", f"train.seed={seed}",
                                           "train.threads=1", "data.in_memory=false", "log.quiet=true"])
    threads = torch.get_num_threads()
    try:
        train(config, folder)
    finally:
        torch.set_num_threads(threads)
    return folder


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"folder": _train(data["folder"], root / "folder", 0), "csv": _train(data["csv"], root / "csv", 1)}


def test_the_two_forms_list_the_same_classes_in_another_order(data):
    # the case under test: without matching by name, eval and ensemble refused these as "another order"
    folder, table = load_source(data["folder"]).classes, load_source(data["csv"]).classes
    assert table == [str(label) for label in range(CLASSES)]
    assert folder == sorted(table) != table


@pytest.mark.parametrize("trained, other", [("folder", "csv"), ("csv", "folder")])
def test_eval_on_the_other_form_matches_the_classes_by_name(runs, data, trained, other, tmp_path):
    own = run_eval(runs[trained], out=tmp_path / "own")
    across = run_eval(runs[trained], data=data[other], out=tmp_path / "across")
    model_classes = load_model(runs[trained]).classes
    assert [row["class"] for row in across["per_class"]] == model_classes  # the model's order, not the data's
    assert across["per_class"] == own["per_class"]  # each class's images counted under its own name
    assert across["confusion"] == own["confusion"]
    assert across["top1"] == own["top1"]
    assert across["loss"] == pytest.approx(own["loss"], rel=1e-6)  # the same images, summed in another order
    # every mistake names the true class of its image: the folder the file lies in
    test = _files(data[other]).test
    for mistake in across["mistakes"]:
        assert mistake["true"] == test.paths[mistake["index"]].parent.name


def _own_probabilities(run):
    """(probs (N, K) with columns in the run's class order, the class names, the test files) on the run's own data."""
    loaded = load_model(run)
    dataset, loader = eval_loader(loaded)
    probs, _, _ = predict_probabilities(loaded.model, loader, fill=black_fill(loaded.meta))
    return probs, loaded.classes, dataset.test.paths


def test_ensemble_of_a_folder_run_and_a_csv_run_averages_each_class_by_name(runs, tmp_path):
    result = run_ensemble([runs["folder"], runs["csv"]])
    # An independent average: each member on its own form of the data, rows and columns lined up by file and name.
    folder_probs, folder_classes, folder_files = _own_probabilities(runs["folder"])
    csv_probs, csv_classes, csv_files = _own_probabilities(runs["csv"])
    rows = [csv_files.index(path) for path in folder_files]
    columns = [csv_classes.index(name) for name in folder_classes]
    mean = (folder_probs + csv_probs[rows][:, columns]) / 2
    labels = torch.tensor([folder_classes.index(path.parent.name) for path in folder_files])
    expected = classification_report(mean, labels, folder_classes)
    assert result["ensemble"]["top1"] == expected["top1"]
    assert result["ensemble"]["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert result["ensemble"]["macro_f1"] == pytest.approx(expected["macro_f1"])
    # each member's own row is its eval on this data
    for row, name in zip(result["members"], ("folder", "csv")):
        assert row["top1"] == run_eval(runs[name], data=result["data"], out=tmp_path / name)["top1"]


def test_classes_that_differ_by_name_are_still_refused():
    assert check_classes(["a", "b", "c"], ["a", "b", "c"], "the data", "m") is None
    assert check_classes(["a", "b", "c"], ["c", "a", "b"], "the data", "m") == [1, 2, 0]
    with pytest.raises(CnnlabError, match=r"new: d; missing: c\)"):
        check_classes(["a", "b", "c"], ["b", "a", "d"], "the data", "m")
    with pytest.raises(CnnlabError, match="a name listed more than once"):
        check_classes(["a", "b", "b"], ["b", "a", "a"], "the data", "m")
    # a long list is cut after five names, and says how many it left out
    with pytest.raises(CnnlabError, match=r"\(missing: 3, 4, 5, 6, 7 and 2 more\)"):
        check_classes([str(k) for k in range(10)], ["0", "1", "2"], "the data", "m")
