"""The run folder contract (cnnlab/run.py): the names a real run writes, reading its config, rebuilding
its model, loading runs written before snapshots carried their preprocessing, and no other module
spelling a run file's name or a metadata key itself."""

import ast
import json
import shutil
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

import cnnlab
from cnnlab.config import ModelConfig, RunConfig, apply_overrides, config_to_dict
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.run import (
    BUILD_KEYS,
    CHECKPOINT_BEST,
    CHECKPOINT_LAST,
    CONFIG_FILE,
    CURVES_FILE,
    DIAGNOSIS_FILE,
    ENVIRONMENT_FILE,
    METRICS_FILE,
    PREPROCESSING_KEYS,
    REPORT_FILE,
    REPORT_HTML_FILE,
    RESUME_KEYS,
    STATUS_FILE,
    STEPS_FILE,
    SUMMARY_FILE,
    MetaKey,
    RunFolder,
    build_meta,
    build_model,
    checkpoint_meta,
    snapshot_name,
)
from cnnlab.train.checkpoint import META_SCHEMA, load_run_model, read_checkpoint_meta, save_weights, validate_meta

DATA = "synthetic:classes=3,train=64,val=16,test=16"
BASE = ["model.name=lenet5", f"data.spec={DATA}", "train.epochs=1", "train.batch_size=16", "train.threads=1",
        "log.quiet=true"]
# Two LR cycles in the one epoch's 4 steps: snapshot-1 after step 2, snapshot-2 after step 4.
SNAPSHOTS = ["schedule.name=cyclic", "schedule.cycles=2", "schedule.warmup_epochs=0", "train.snapshots=true"]
CLASSES = ["class0", "class1", "class2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder written by the training engine in-process (lenet5, 3 classes, 1 epoch, 2 snapshots)."""
    from cnnlab.train.engine import train

    config = apply_overrides(RunConfig(), BASE + SNAPSHOTS)
    folder = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    try:
        train(config, folder)
    finally:
        torch.set_num_threads(threads)
    return {"folder": RunFolder(folder), "config": config}


def _header_and_tensors(path: Path) -> tuple[dict, dict]:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata()), {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118


def _with_meta(source: Path, target: Path, meta: dict) -> Path:
    """A copy of ``source`` whose header 'meta' is ``meta`` (the tensors and their checksum unchanged)."""
    metadata, tensors = _header_and_tensors(source)
    metadata["meta"] = json.dumps(meta)
    target.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(target), metadata=metadata)
    return target


# --- the names a real run writes -----------------------------------------------------------------


def test_every_file_the_run_folder_names_is_what_a_run_writes(run):
    folder: RunFolder = run["folder"]
    written = {folder.config, folder.metrics, folder.steps, folder.last, folder.best, folder.curves, folder.summary,
               folder.report, folder.snapshot(1), folder.snapshot(2), folder.status, folder.environment}
    for path in written:
        assert path.is_file(), path
    assert {path.name for path in written} == {CONFIG_FILE, METRICS_FILE, STEPS_FILE, CHECKPOINT_LAST, CHECKPOINT_BEST,
                                               CURVES_FILE, SUMMARY_FILE, REPORT_FILE, snapshot_name(1),
                                               snapshot_name(2), STATUS_FILE, ENVIRONMENT_FILE}
    # Written by others: diagnosis.txt and report.html by `cnnlab train` (the CLI), tensorboard/ with
    # log.tensorboard, eval-*/ by `cnnlab eval`; no other file is in a run folder.
    others = {folder.diagnosis.name, folder.tensorboard.name, folder.html_report.name}
    assert {path.name for path in folder.path.iterdir()} <= {path.name for path in written} | others
    assert folder.is_run() and folder.checkpoint() == folder.best
    assert folder.snapshots() == [folder.snapshot(1), folder.snapshot(2)]
    assert folder.eval_folder("test", "flip", True) == folder.path / "eval-test-flip-ema"


def test_the_config_a_run_wrote_reads_back_as_it_trained(run):
    """config.yaml holds what the run used (the preset resolved), the same config every checkpoint records."""
    folder: RunFolder = run["folder"]
    recorded = folder.read_config()
    assert (recorded.model, recorded.train, recorded.optim) == (run["config"].model, run["config"].train,
                                                                run["config"].optim)
    assert recorded.data.spec == DATA and recorded.aug.preset == run["config"].aug.preset
    for path in (folder.last, folder.best):
        assert config_to_dict(recorded) == read_checkpoint_meta(path)[MetaKey.CONFIG], path


def test_checkpoints_hold_the_metadata_keys_and_nothing_else(run):
    folder: RunFolder = run["folder"]
    for path in (folder.last, folder.best):
        meta = read_checkpoint_meta(path, require=(*BUILD_KEYS, *PREPROCESSING_KEYS, *RESUME_KEYS, MetaKey.CONFIG))
        assert set(meta) <= set(MetaKey.all())
        assert meta[MetaKey.CLASSES] == CLASSES and meta[MetaKey.IMAGE_SIZE] == 32


def test_a_run_is_rebuilt_with_its_preprocessing(run):
    folder: RunFolder = run["folder"]
    loaded = load_run_model(folder.path)
    assert loaded.path == folder.best and loaded.weights == "raw"
    assert (loaded.model_name, loaded.num_classes, loaded.in_chans, loaded.image_size) == ("lenet5", 3, 3, 32)
    assert loaded.classes == CLASSES and len(loaded.mean) == len(loaded.std) == 3
    assert loaded.config == folder.read_config() and not loaded.model.training
    saved = safetensors.torch.load_file(str(folder.best))
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[f"model/{key}"]), key


def test_a_checkpoint_loads_alone_without_its_run_folder(run, tmp_path):
    """The normal path: a checkpoint's own metadata is enough (no config.yaml or sibling is read)."""
    alone = tmp_path / "elsewhere" / "model.safetensors"
    alone.parent.mkdir()
    shutil.copy(run["folder"].best, alone)
    loaded = load_run_model(alone)
    assert loaded.classes == CLASSES and loaded.config == run["folder"].read_config()


def test_a_snapshot_of_a_new_run_loads_alone(run, tmp_path):
    """Snapshots carry the whole checkpoint_meta, so the legacy path is not needed for new runs.
    (Holds once train/engine.py writes snapshots with cnnlab.run.checkpoint_meta.)"""
    alone = tmp_path / "elsewhere" / "snapshot.safetensors"
    alone.parent.mkdir()
    shutil.copy(run["folder"].snapshot(2), alone)
    meta = read_checkpoint_meta(alone)
    missing = [key for key in (*BUILD_KEYS, *PREPROCESSING_KEYS, MetaKey.CONFIG) if meta.get(key) is None]
    assert not missing, f"the engine's snapshots lack {missing}: write them with cnnlab.run.checkpoint_meta"
    assert load_run_model(alone).classes == CLASSES


# --- read_config errors ----------------------------------------------------------------------------


def _config_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """(run folder, regex of the message) for a run folder whose config.yaml is broken in one way."""
    folder = tmp_path / "run"
    folder.mkdir()
    config = folder / CONFIG_FILE
    if case == "no-folder":
        shutil.rmtree(folder)
        return folder, "is not a run folder: it does not exist"
    if case == "a-file":
        shutil.rmtree(folder)
        folder.write_text("not a folder")
        return folder, "is not a run folder: it is a file"
    if case == "missing":
        return folder, f"has no {CONFIG_FILE}.*'{config}' does not exist"
    if case == "a-folder":
        config.mkdir()
        return folder, "is not a file"
    if case == "not-yaml":
        config.write_text("model: [lenet5\n")
        return folder, "It must be YAML"
    if case == "binary":
        config.write_bytes(b"\xff\xfe\x00garbage")
        return folder, "It must be YAML"
    if case == "a-list":
        config.write_text("- 1\n- 2\n")
        return folder, "must be a mapping of sections"
    if case == "unknown-section":
        config.write_text("modle:\n  name: lenet5\n")
        return folder, "Unknown config section 'modle'"
    if case == "bad-value":
        config.write_text("train:\n  epochs: many\n")
        return folder, "train.epochs"
    if case in ("empty", "a-comment"):  # YAML reads both as nothing: every default, another run
        config.write_text("" if case == "empty" else "# cnnlab run config\n\n")
        return folder, "is empty"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no-folder", "a-file", "missing", "a-folder", "not-yaml", "binary", "a-list",
                                  "unknown-section", "bad-value", "empty", "a-comment"])
def test_read_config_refuses_a_broken_config_naming_the_file(tmp_path, case):
    folder, pattern = _config_case(tmp_path, case)
    with pytest.raises(CnnlabError, match=pattern) as error:
        RunFolder(folder).read_config()
    message = str(error.value)
    named = folder if case in ("no-folder", "a-file") else folder / CONFIG_FILE
    assert f"'{named}'" in message and "\n" not in message, message


# --- runs written before this change ----------------------------------------------------------------


def _old_run(run, tmp_path: Path) -> RunFolder:
    """A run folder as an older cnnlab left it: best.safetensors and config.yaml, and a snapshot whose
    metadata records only what to build and where it was taken (no classes, image size, mean/std, config)."""
    old = RunFolder(tmp_path / "old")
    old.path.mkdir()
    shutil.copy(run["folder"].best, old.best)
    shutil.copy(run["folder"].config, old.config)
    state = load_run_model(run["folder"].path).model.state_dict()
    save_weights(old.snapshot(1), state, {**build_meta("lenet5", 3, 3), MetaKey.STEP: 2, MetaKey.EPOCH: 1})
    return old


def test_a_snapshot_written_before_this_change_loads_from_its_run_folder(run, tmp_path):
    old = _old_run(run, tmp_path)
    loaded = load_run_model(old.snapshot(1))
    assert loaded.classes == CLASSES and loaded.config == old.read_config()
    best = read_checkpoint_meta(old.best)
    assert [loaded.meta[key] for key in PREPROCESSING_KEYS] == [best[key] for key in PREPROCESSING_KEYS]


def test_an_old_snapshot_taken_out_of_its_run_folder_says_what_it_lacks(run, tmp_path):
    old = _old_run(run, tmp_path)
    alone = tmp_path / "alone" / "snapshot-1.safetensors"
    alone.parent.mkdir()
    shutil.copy(old.snapshot(1), alone)
    with pytest.raises(CnnlabError, match=r"does not record classes, image_size, mean, std, and no run folder") as error:
        load_run_model(alone)
    assert str(alone) in str(error.value)


def test_an_old_run_with_a_broken_config_names_that_file(run, tmp_path):
    old = _old_run(run, tmp_path)
    old.config.write_text("modle: {}\n")
    with pytest.raises(CnnlabError, match=r"Unknown config section 'modle'") as error:
        load_run_model(old.snapshot(1))
    assert str(old.config) in str(error.value)


def test_an_old_snapshot_whose_sibling_is_damaged_names_both_files(run, tmp_path):
    old = _old_run(run, tmp_path)
    old.best.write_bytes(old.best.read_bytes()[:100])
    with pytest.raises(CnnlabError, match=r"damaged") as error:
        load_run_model(old.snapshot(1))
    assert str(old.best) in str(error.value) and str(old.snapshot(1)) in str(error.value)


def test_values_taken_from_a_sibling_are_checked_and_the_message_says_where_they_came_from(run, tmp_path):
    old = _old_run(run, tmp_path)
    meta = read_checkpoint_meta(old.best)
    _with_meta(old.best, old.best, {**meta, MetaKey.CLASSES: ["a", "b", "c", "d"], MetaKey.NUM_CLASSES: 4})
    with pytest.raises(CnnlabError, match=r"classes is .*3 distinct.*came from") as error:
        load_run_model(old.snapshot(1))
    assert str(old.best) in str(error.value)


def test_a_full_checkpoint_without_a_config_takes_the_run_config(run, tmp_path):
    """Checkpoints that predate the config in their metadata read config.yaml beside them."""
    old = RunFolder(tmp_path / "old")
    old.path.mkdir()
    shutil.copy(run["folder"].config, old.config)
    meta = read_checkpoint_meta(run["folder"].best)
    meta.pop(MetaKey.CONFIG)
    _with_meta(run["folder"].best, old.best, meta)
    assert load_run_model(old.path).config == old.read_config()


# --- the metadata contract ------------------------------------------------------------------------


def test_every_metadata_key_has_a_schema_entry_and_every_entry_a_key():
    assert set(META_SCHEMA) == set(MetaKey.all())
    assert len(MetaKey.all()) == len(set(MetaKey.all()))
    for group in (BUILD_KEYS, PREPROCESSING_KEYS, RESUME_KEYS):
        assert set(group) <= set(MetaKey.all())


def test_checkpoint_meta_passes_the_schema_and_leaves_out_what_is_not_given(tmp_path):
    config = apply_overrides(RunConfig(), BASE)
    meta = checkpoint_meta(build_meta("lenet5", 3, 3), classes=CLASSES, image_size=32, mean=(0.5,) * 3,
                           std=(0.25,) * 3, config=config, epoch=1, step=4, batch=0,
                           best={"val_acc": 0.5, "epoch": 1})
    validate_meta(tmp_path / "x.safetensors", meta, require=(*BUILD_KEYS, *PREPROCESSING_KEYS, *RESUME_KEYS))
    assert json.loads(json.dumps(meta)) == meta and MetaKey.PARTIAL not in meta
    snapshot = checkpoint_meta(build_meta("lenet5", 3, 3), classes=CLASSES, image_size=32, mean=(0.5,) * 3,
                               std=(0.25,) * 3, config=config, epoch=1, step=2)
    assert MetaKey.BATCH not in snapshot and MetaKey.BEST not in snapshot


def test_build_model_applies_the_model_config_as_create_model_does():
    section = ModelConfig(name="resnet8", norm="gn", act="gelu", drop_rate=0.2,
                          options={"in_chans": 1, "zero_init_residual": True})
    torch.manual_seed(0)
    built = build_model(section, num_classes=5, in_chans=3)  # the run's in_chans wins over the option
    torch.manual_seed(0)
    reference = create_model("resnet8", num_classes=5, in_chans=3, norm="gn", act="gelu", drop_rate=0.2,
                             zero_init_residual=True)
    assert built.in_chans == 3 and str(built) == str(reference)
    for (key, a), b in zip(built.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), key
    # A checkpoint's recorded name is built, with the section's norm/act/drop_rate.
    lenet = build_model(ModelConfig(name="resnet8", drop_rate=0.3), num_classes=5, in_chans=1, name="lenet5")
    assert lenet.model_name == "lenet5" and lenet.in_chans == 1


def test_snapshots_are_listed_by_number(tmp_path):
    folder = RunFolder(tmp_path)
    for name in (snapshot_name(10), snapshot_name(2), snapshot_name(1), snapshot_name("x"), "snapshot-.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert folder.snapshots() == [folder.snapshot(1), folder.snapshot(2), folder.snapshot(10)]


# --- one name in one place: no module but run.py spells a run file's name or indexes metadata by a literal key


PACKAGE = Path(cnnlab.__file__).parent
OWNER = PACKAGE / "run.py"
RUN_FILE_NAMES = (CONFIG_FILE, METRICS_FILE, STEPS_FILE, CHECKPOINT_LAST, CHECKPOINT_BEST, CURVES_FILE, SUMMARY_FILE,
                  REPORT_FILE, DIAGNOSIS_FILE, STATUS_FILE, ENVIRONMENT_FILE, REPORT_HTML_FILE,
                  snapshot_name("").removesuffix(".safetensors"))


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != OWNER:
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes (a docstring names files for the reader; it is not a contract)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.add(id(first.value))
    return found


def test_no_module_but_run_py_spells_a_run_file_name():
    """Every string literal outside run.py (messages and help texts included, docstrings and comments
    not) must take a run file's name from cnnlab.run instead of spelling it."""
    offenders = []
    for path, tree in _modules():
        docstrings = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                names = [name for name in RUN_FILE_NAMES if name in node.value]
                if names:
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {names} in {node.value[:60]!r}")
    assert not offenders, "spelled outside cnnlab/run.py (import the name from cnnlab.run):\n" + "\n".join(offenders)


def _literal_key(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_meta(node: ast.AST) -> bool:
    """A variable or attribute named like a checkpoint's metadata: meta, sibling_meta, loaded.meta."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "meta" or name.endswith("_meta")


def test_no_module_but_run_py_indexes_checkpoint_metadata_by_a_literal_key():
    """meta["classes"] or meta.get("epoch") outside run.py: use MetaKey (or LoadedModel's properties).
    A dict display holding two or more BUILD_KEYS, or three or more PREPROCESSING_KEYS next to a
    RESUME_KEY, as literals builds metadata by hand: use build_meta / checkpoint_meta. (Other formats
    that share a word, the export's JSON or `cnnlab data stats`, hold neither combination.)"""
    keys = set(MetaKey.all())
    offenders = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            found = None
            if isinstance(node, ast.Subscript) and _is_meta(node.value) and _literal_key(node.slice) in keys:
                found = _literal_key(node.slice)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
                  and _is_meta(node.func.value) and node.args and _literal_key(node.args[0]) in keys):
                found = _literal_key(node.args[0])
            elif isinstance(node, ast.Dict):
                literal = {_literal_key(k) for k in node.keys if k is not None}
                if (len(literal & set(BUILD_KEYS)) >= 2
                        or (len(literal & set(PREPROCESSING_KEYS)) >= 3 and literal & set(RESUME_KEYS))):
                    found = sorted(literal & keys)
            if found:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {found}")
    assert not offenders, "metadata keys spelled outside cnnlab/run.py (use cnnlab.run.MetaKey):\n" + "\n".join(offenders)


def test_same_data_reads_specs_as_the_loader_does():
    from cnnlab.data import cifar, sources
    from cnnlab.run import same_data

    for alias in sources.FASHION_KINDS:
        assert same_data(alias, "fashion-mnist") and same_data(alias.upper(), "Fashion-MNIST")
    for alias, which in cifar.CIFAR_KINDS.items():
        assert same_data(alias, which.spec) and same_data(f"{alias}:coarse", f"{which.spec}:coarse")
    assert same_data("Digits", "digits") and same_data("folder:./imgs/", "folder:imgs")
    assert same_data("csv:~/labels.csv", f"csv:{Path.home() / 'labels.csv'}")
    assert not same_data("digits", "fashion-mnist") and not same_data("folder:imgs", "folder:other")
    assert not same_data("cifar100", "cifar100:coarse") and not same_data("synthetic:classes=3", "synthetic")
    # the loader reads options without their spaces, and an eval records them so: a run trained on the spaced
    # spec never counted the eval of its own data as its test accuracy
    assert same_data("synthetic: classes=3, train=60", "synthetic:classes=3,train=60")
    assert same_data("synthetic:classes=3,,train=60,", "synthetic:classes=3,train=60")  # empty parts dropped


def test_one_data_set_spelt_several_ways_gets_one_eval_folder_and_two_folders_of_one_name_two():
    from cnnlab.run import data_slug

    spellings = ["synthetic:classes=3,train=60,test=30", "synthetic: classes=3, train=60, test=30",
                 "Synthetic:classes=3,train=60,test=30,"]
    assert {data_slug(spec) for spec in spellings} == {"synthetic-classes-3-train-60-test-30"}
    assert data_slug("CIFAR-10") == data_slug("cifar10") == "cifar10"
    assert data_slug("folder:./a/hold/") == data_slug("folder:a/hold") != data_slug("folder:b/hold")
    assert data_slug("folder:a/hold").startswith("folder-hold-")


def test_one_rule_matches_an_older_records_path_to_a_place_in_its_folder(tmp_path):
    """A ladder's transfer.json and an experiment's result files, written before their paths were kept relative
    to their folder, name a run as the first call did (from its working folder, or absolute). Both find the run
    by the end of that path (cnnlab.run.recorded_place), so a moved folder still reads its records."""
    from cnnlab.experiments.base import names_same_path
    from cnnlab.run import recorded_place
    from cnnlab.transfer import ladder

    assert recorded_place("runs/ladder/4/seed0/top", 3) == Path("4/seed0/top")
    assert recorded_place("/home/me/runs/ladder/4/seed0/top", 3) == Path("4/seed0/top")
    assert recorded_place("seed0/top", 3) == Path("seed0/top")  # shorter than the place: kept whole
    assert recorded_place("runs/ladder", 0) == Path(".")
    recorded = ["runs/ladder/4/seed0/top", "/old/home/ladder/16/seed1/all", "seed0/scratch", "elsewhere/4/seed0/top"]
    # the ladder: seconds keyed by the place the rule finds (the last record of a place wins, as in a dict)
    out = tmp_path / "moved" / "ladder"
    out.mkdir(parents=True)
    runs = [{"run_dir": path, "seconds": float(number)} for number, path in enumerate(recorded)]
    (out / ladder.RESULT_FILE).write_text(json.dumps({"runs": runs}), encoding="utf-8")
    assert ladder._seconds_of(ladder._recorded_runs(out)) == {recorded_place(path, 3): float(number)
                                             for number, path in enumerate(recorded)}
    # the experiments: a recorded path names a run in the folder when the rule gives that run's place
    for place in (Path("4/seed0/top"), Path("16/seed1/all"), Path("seed0/scratch"), Path("8/seed0/top")):
        for path in recorded:
            assert names_same_path(path, out / place, out) == (recorded_place(path, len(place.parts)) == place)
    assert names_same_path("runs/ladder/4/seed0/top", out / "4/seed0/top", out)
    assert not names_same_path("runs/ladder/4/seed1/top", out / "4/seed0/top", out)
