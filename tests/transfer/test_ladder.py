"""`cnnlab transfer`: the ladder's runs, table, verdicts, files and resumption, on tiny sizes."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.evaluate import run_eval
from cnnlab.run import RunFolder
from cnnlab.train import engine
from cnnlab.transfer import ladder as ladder_lib
from cnnlab.transfer.ladder import RungSummary

# The target: other classes and images than the source run's (tests/transfer/conftest.py), read at its 28x28.
TARGET_DATA = "synthetic:classes=3,train=48,val=24,test=24,channels=1"
# log.curves=false: no rung draws curves.png (about half a second each), which no test here reads
SETS = [f"data.spec={TARGET_DATA}", "aug.preset=none", "train.batch_size=3", "optim.lr=0.05", "train.bn_eval=frozen",
        "log.curves=false"]
SIZES, STEPS = [2, 4], 2  # 6 and 12 training images: batches of 3, one epoch of 2 and 4 steps


def base_config() -> RunConfig:
    return apply_overrides(RunConfig(), SETS)


def run(source, out, **kwargs):
    base = base_config()
    options = dict(per_class=SIZES, seeds=1, out=out, similarity="similar", steps=STEPS)
    options.update(kwargs)
    return ladder_lib.run_transfer(str(source), base.data, base, **options)


class Said:
    """A console that keeps the ladder's lines: the counted ones (training rungs) and the probe's apart."""

    def __init__(self):
        self.lines, self.probe_lines = [], []

    def print(self, text, **_options):
        (self.probe_lines if f"/{ladder_lib.PROBE} " in text else self.lines).append(text)  # SIZE/seedK/probe


@pytest.fixture(scope="module")
def ladder(source_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        return run(source_run, out), out


def test_the_ladder_writes_its_table_verdicts_json_and_plot(ladder, source_run):
    result, out = ladder
    assert [(row.size, row.rung) for row in result.table] == [(size, rung) for size in SIZES for rung in ladder_lib.RUNGS]
    assert all(row.runs == 1 and row.failed == 0 and 0 <= row.test_mean <= 1 for row in result.table)
    assert [(v.size, v.row, v.expected) for v in result.verdicts] == [(2, "small", ["probe"]), (4, "large", ["all"])]
    for verdict in result.verdicts:
        winner, tied = ladder_lib.winners(result.table, verdict.size)
        assert verdict.winner == winner and verdict.verdict in ("agrees", "agrees (tie)", "disagrees")
    assert any(note.startswith("equal budgets") for note in result.notes)
    # the base config's train.epochs (cnnlab's default 10) is replaced by each size's budget, and a note says so
    assert {result.budgets[size].epochs for size in SIZES} == {1}
    assert "the config's train.epochs=10 is not used: the equal budgets set each training rung's epochs (per size: " \
           "2: 1, 4: 1)" in " ".join(result.notes)
    recorded = json.loads((out / ladder_lib.RESULT_FILE).read_text())
    assert recorded["finished"] and recorded["table"] == json.loads(json.dumps(result.to_dict()["table"]))
    assert len(recorded["runs"]) == len(SIZES) * len(ladder_lib.RUNGS)
    assert (out / ladder_lib.PLOT_FILE).read_bytes().startswith(b"\x89PNG")


def test_each_rung_trains_what_it_says(ladder, source_run):
    result, out = ladder
    for size in SIZES:
        budget = result.budgets[size]
        assert budget.batch_size == 3 and budget.epochs == 1 and budget.steps >= STEPS
        configs = {rung: RunFolder(out / str(size) / "seed0" / rung).read_config() for rung in ladder_lib.TRAINING_RUNGS}
        for config in configs.values():
            assert config.model.name == "resnet8" and config.data.train_per_class == size
            assert (config.data.image_size, config.data.channels) == (28, 1)  # the source's, not synthetic's 32
            assert (config.train.epochs, config.train.batch_size, config.train.seed) == (1, 3, 0)
        assert configs["scratch"].model.init_from is None and configs["scratch"].model.freeze is None
        assert configs["top"].model.init_from == str(source_run.resolve())
        assert configs["top"].model.freeze == "stage2" == result.freeze_top  # resnet8: stem, stage1..3, head
        assert configs["all"].model.freeze is None and configs["all"].optim.backbone_lr_mult == 0.1
        assert configs["top"].optim.backbone_lr_mult == 1.0


def test_a_training_rungs_accuracy_is_cnnlab_evals(ladder, tmp_path):
    result, _ = ladder
    for row in (r for r in result.runs if (r.size, r.rung) in ((2, "scratch"), (4, "all"))):
        # mistakes=0: no grid of wrong images drawn, which top1 does not read
        report = run_eval(row.run_dir, split="test", out=tmp_path / f"{row.size}-{row.rung}", mistakes=0)
        assert report["top1"] == row.test_acc


def test_a_second_call_reads_the_finished_runs_and_a_half_finished_one_resumes(ladder, source_run, monkeypatch):
    result, out = ladder
    calls = []
    real_train = engine.train

    def counting_train(config, run_dir, *, resume=False, **kwargs):
        calls.append((str(run_dir), resume))
        if resume:  # it continues as recorded: the source's image size and mean/std, the resolved augmentation
            assert config == RunFolder(run_dir).read_config()
        return real_train(config, run_dir, resume=resume, **kwargs)

    monkeypatch.setattr(engine, "train", counting_train)
    said = Said()
    again = run(source_run, out, console=said)
    assert calls == []
    # Each training rung's line says its place among the ladder's training runs (sizes x seeds x training rungs),
    # in the order they ran; read back, each still counts and says so. The probe trains no network: no number.
    planned = len(SIZES) * len(ladder_lib.TRAINING_RUNGS)
    assert [line.split("  ")[0] for line in said.lines] == [
        f"run {k} of {planned}" for k in range(1, planned + 1)], said.lines
    assert all(line.endswith("%  read back") for line in said.lines)  # in the time's place, as an experiment's
    assert [line for line in said.probe_lines if line.startswith(" " * len(f"run {planned} of {planned}  "))] == \
        said.probe_lines and len(said.probe_lines) == len(SIZES)
    # the columns aligned: each run named as its folder in the ladder's (SIZE/seedK/RUNG), then its accuracy
    assert len({re.search(r"  (test|val) \d", line).start() for line in said.lines + said.probe_lines}) == 1
    assert all((out / line.split()[4]).is_dir() for line in said.lines)
    assert {r.status for r in again.runs if r.rung != ladder_lib.PROBE} == {"read"}
    assert [(r.rung, r.test_acc) for r in again.runs] == [(r.rung, r.test_acc) for r in result.runs]
    trained = [r for r in result.runs if r.rung != ladder_lib.PROBE]
    assert [r.seconds for r in again.runs if r.rung != ladder_lib.PROBE] == [r.seconds for r in trained]  # as recorded
    # A run stopped before its report (its last checkpoint on disk) continues instead of starting again.
    RunFolder(out / "4" / "seed0" / "all").report.unlink()
    said = Said()
    resumed = run(source_run, out, console=said)
    assert calls == [(str(out / "4" / "seed0" / "all"), True)]
    assert [line.endswith("read back") for line in said.lines] == [True] * (planned - 1) + [False]  # 'all' last
    assert said.lines[-1].startswith(f"run {planned} of {planned}  4/seed0/all ")
    assert [r.test_acc for r in resumed.runs] == [r.test_acc for r in result.runs]


def test_a_call_stopped_while_it_reads_runs_back_keeps_the_records_of_the_runs_it_did_not_reach(ladder, source_run,
                                                                                                 monkeypatch):
    """Each rung rewrote transfer.json with the runs this call had reached: stopped part-way, it dropped the
    others' records, and the next call read those runs back with the sum of their epoch times (a tenth of the
    wall-clock seconds measured) without a word."""
    _, out = ladder
    before = json.loads((out / ladder_lib.RESULT_FILE).read_text())
    real_line, lines = ladder_lib.rung_line, []

    def stopped_at_the_second_line(*args, **kwargs):
        lines.append(args)
        if len(lines) == 2:
            raise KeyboardInterrupt  # as Ctrl-C, or a closed pipe, while the second run is read back
        return real_line(*args, **kwargs)

    monkeypatch.setattr(ladder_lib, "rung_line", stopped_at_the_second_line)
    with pytest.raises(KeyboardInterrupt):
        run(source_run, out, console=Said())
    monkeypatch.setattr(ladder_lib, "rung_line", real_line)
    stopped = json.loads((out / ladder_lib.RESULT_FILE).read_text())
    assert not stopped["finished"]

    def seconds(record):
        return {row["run_dir"]: row["seconds"] for row in record["runs"] if row["run_dir"]}

    assert seconds(stopped) == seconds(before)  # every training run is still on record, with its seconds
    again = run(source_run, out, console=Said())
    assert {Path(r.run_dir).relative_to(out).as_posix(): r.seconds for r in again.runs if r.run_dir} == seconds(before)
    whole = (out / ladder_lib.RESULT_FILE).read_text()  # the whole ladder's record, as the other tests read it
    try:
        # a call over fewer sizes records its own ladder only: the other size's runs are no part of it
        smaller = run(source_run, out, per_class=SIZES[:1], console=Said())
        recorded = json.loads((out / ladder_lib.RESULT_FILE).read_text())
        assert recorded["finished"] and recorded["sizes"] == SIZES[:1]
        assert {row["size"] for row in recorded["runs"]} == {SIZES[0]} and len(recorded["runs"]) == len(smaller.runs)
    finally:
        # put back as the whole ladder's call wrote it (calling it again would only read back its runs again)
        (out / ladder_lib.RESULT_FILE).write_text(whole)


def test_a_moved_ladder_reads_back_the_seconds_it_recorded_and_so_does_an_older_record(ladder, source_run, tmp_path,
                                                                                      monkeypatch):
    """transfer.json names each run's folder relative to the ladder's folder, and the seconds recorded for a run
    are found by that: a ladder moved or copied elsewhere reads them back instead of summing the runs' epoch
    times (a shorter measure: no validation or checkpoints). A transfer.json written before, which names the
    runs as the first call's working folder did, is read by the runs' places in it."""
    result, out = ladder
    recorded = json.loads((out / ladder_lib.RESULT_FILE).read_text())
    assert recorded[ladder_lib.RUN_DIRS_KEY] == ladder_lib.RUN_DIRS_RELATIVE
    places = {str(ladder_lib.run_place(r.size, r.seed, r.rung)) for r in result.runs if r.rung != ladder_lib.PROBE}
    assert {r["run_dir"] for r in recorded["runs"] if r["run_dir"]} == places
    assert recorded["files"] == {"json": ladder_lib.RESULT_FILE, "plot": ladder_lib.PLOT_FILE}  # beside it, in out
    # the result, and --json, still name the runs (and files) as the call named its folder
    assert {r.run_dir for r in result.runs if r.run_dir} == {str(out / place) for place in places}
    assert result.files == {"json": str(out / ladder_lib.RESULT_FILE), "plot": str(out / ladder_lib.PLOT_FILE)}
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("every run had finished"))
    for name, old_format in (("moved", False), ("older", True)):
        moved = tmp_path / name / "ladder"
        shutil.copytree(out, moved)
        written = json.loads((moved / ladder_lib.RESULT_FILE).read_text())
        # seconds no sum of epoch times gives, so that where they come from shows
        for number, row in enumerate(written["runs"]):
            row["seconds"] = 1000.0 + number
            if old_format and row["run_dir"]:  # as `--out runs/ladder` named it, from the working folder then
                row["run_dir"] = f"runs/ladder/{row['run_dir']}"
        if old_format:
            del written[ladder_lib.RUN_DIRS_KEY]
        (moved / ladder_lib.RESULT_FILE).write_text(json.dumps(written))
        wanted = {(row["size"], row["rung"]): row["seconds"] for row in written["runs"]
                  if row["rung"] != ladder_lib.PROBE}
        again = run(source_run, moved)
        assert {(r.size, r.rung): r.seconds for r in again.runs if r.rung != ladder_lib.PROBE} == wanted, name
        rewritten = json.loads((moved / ladder_lib.RESULT_FILE).read_text())
        assert {r["run_dir"] for r in rewritten["runs"] if r["run_dir"]} == places  # relative again, as new records


def test_a_ladder_moved_with_its_source_continues_and_other_weights_are_refused(ladder, source_run, tmp_path,
                                                                                 monkeypatch):
    """An experiment keeps its source run inside its folder (`experiment transfer`, `from-scratch`): moved or
    copied, the source's file had another path and time, and the ladder refused to continue ("other settings
    (source.path: ... given, ... recorded)"). The source is compared by the checksum of its weights; a record
    written before it had one compares the file's place, as it did."""
    _, out = ladder
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("every run had finished"))
    moved = tmp_path / "moved"
    source = shutil.copytree(source_run, moved / "source", copy_function=shutil.copy)  # new path, new times
    shutil.copytree(out, moved / "ladder")
    recorded = json.loads((out / ladder_lib.RESULT_FILE).read_text())["settings"]["source"]
    assert recorded["checksum"].startswith("crc32:")
    assert run(source, moved / "ladder").runs  # read back, nothing trained
    settings = json.loads((moved / "ladder" / ladder_lib.RESULT_FILE).read_text())["settings"]
    assert settings["source"]["checksum"] == recorded["checksum"]
    assert settings["source"]["path"] != recorded["path"]  # recorded where the source is now

    other = json.loads(json.dumps(settings))
    other["source"]["checksum"] = "crc32:00000000"  # other weights, wherever they lie
    with pytest.raises(CnnlabError, match=r'other settings \(source.checksum: "crc32:00000000" given'):
        ladder_lib._check_resume(moved / "ladder", other)

    whole = (moved / "ladder" / ladder_lib.RESULT_FILE).read_text()
    older = json.loads(whole)
    del older["settings"]["source"]["checksum"]  # as a ladder recorded its source before
    (moved / "ladder" / ladder_lib.RESULT_FILE).write_text(json.dumps(older))
    ladder_lib._check_resume(moved / "ladder", settings)  # the same file where it was: continued
    elsewhere = json.loads(json.dumps(settings))
    elsewhere["source"]["path"] = str(source_run)
    with pytest.raises(CnnlabError, match=r"other settings \(source.path: "):
        ladder_lib._check_resume(moved / "ladder", elsewhere)


def test_other_settings_in_the_same_folder_are_refused(ladder, source_run):
    _, out = ladder
    with pytest.raises(CnnlabError, match=rf"other settings \(steps: {STEPS + 1} given, {STEPS} recorded\)"):
        run(source_run, out, steps=STEPS + 1)
    base = apply_overrides(base_config(), ["optim.lr=0.01"])
    with pytest.raises(CnnlabError, match=r"other settings \(config.optim.lr: 0.01 given, 0.05 recorded\)"):
        ladder_lib.run_transfer(str(source_run), base.data, base, per_class=SIZES, seeds=1, out=out,
                                similarity="similar", steps=STEPS)


def test_a_ladder_continues_on_another_device_and_thread_count(ladder, source_run, monkeypatch):
    """Where the runs train and what they log change no result (as for a search's workers): a ladder started
    with --device auto continues with --device cpu and train.threads=1. Its new runs train with those; a run
    it left half-finished continues as its config.yaml records it, as any resumed run does."""
    result, out = ladder
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("every run had finished"))
    base = apply_overrides(base_config(), ["train.device=cpu", "train.threads=1", "log.tensorboard=true"])
    again = ladder_lib.run_transfer(str(source_run), base.data, base, per_class=SIZES, seeds=1, out=out,
                                    similarity="similar", steps=STEPS)
    assert [(r.rung, r.test_acc) for r in again.runs] == [(r.rung, r.test_acc) for r in result.runs]


def test_the_cli_prints_the_table_and_the_librarys_json(ladder, source_run, cli):
    result, out = ladder
    args = ["transfer", str(source_run), *[part for text in SETS for part in ("--set", text)], "--per-class", "2,4",
            "--seeds", "1", "--steps", str(STEPS), "--similarity", "similar", "--out", str(out)]
    code, stdout, err = cli(args)
    assert code == 0, err
    assert "2 images per class" in stdout and "winner" in stdout and "the lecture (small data, similar)" in stdout
    code, stdout, err = cli([*args, "--json"])
    assert code == 0, err
    printed = json.loads(stdout)

    def without_seconds(rows):  # the probe rung is fitted again on every call: its seconds differ
        return [{key: value for key, value in row.items() if key != "seconds_mean"} for row in rows]

    assert without_seconds(printed["table"]) == without_seconds(json.loads(json.dumps(result.to_dict()["table"])))
    assert printed["verdicts"] == json.loads(json.dumps(result.to_dict()["verdicts"]))


def recorded_optimizers(monkeypatch) -> list:
    """Each training run's optimiser, in the ladder's order (scratch, top, all), as its groups' sorted
    (lr_scale, peak_lr) pairs; filled as the runs build them."""
    from cnnlab.train import optim

    built = []
    real_build = optim.build_optimizer

    def recording_build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        built.append(sorted({(group["lr_scale"], group["peak_lr"]) for group in optimizer.param_groups}))
        return optimizer

    monkeypatch.setattr(optim, "build_optimizer", recording_build)
    return built


def three_rungs_of_digits(cli, source_run, tmp_path, *sets: str) -> str:
    """`cnnlab transfer --json` of ``source_run`` on 2 digits images of 3 classes, 2 steps a rung, with ``sets``
    as more --set texts; its stdout (the command must succeed)."""
    code, stdout, err = cli(["transfer", str(source_run), "--data", "digits", "--set", "data.classes=[0,1,2]",
                             "--set", "aug.preset=none", "--set", "train.batch_size=3", "--set", "log.curves=false",
                             *[part for text in sets for part in ("--set", text)], "--per-class", "2", "--seeds", "1",
                             "--steps", "2", "--out", str(tmp_path / "out"), "--json"])
    assert code == 0, err
    return stdout


def test_the_cli_takes_the_fine_tuning_multiplier_and_only_all_trains_with_it(source_run, cli, tmp_path, monkeypatch):
    """--set optim.backbone_lr_mult reaches the optimiser of 'all' (the ladder sets model.init_from itself, so
    the base config is not refused for lacking it); 'top' keeps its top stage at the head's rate."""
    built = recorded_optimizers(monkeypatch)
    lr, mult = 0.05, 0.3
    stdout = three_rungs_of_digits(cli, source_run, tmp_path, f"optim.lr={lr}", f"optim.backbone_lr_mult={mult}")
    scratch, top, everything = built
    assert scratch == [(1.0, lr)] and top == [(1.0, lr)]
    assert everything == [(mult, pytest.approx(lr * mult)), (1.0, lr)]  # the pretrained stages, the new head
    printed = json.loads(stdout)
    assert printed["all_lr_mult"] == mult and printed["rungs"]["all"].endswith(f"pretrained lr x {mult:g}")
    assert any(f"optim.backbone_lr_mult={mult:g} (the config's)" in note for note in printed["notes"])
    # train.bn_eval left at off: no note about it (the note where it is set: test_layer_decay_and_bn_eval_act_in_the_
    # rungs_that_start_from_the_source_only)
    assert not any("train.bn_eval" in note for note in printed["notes"]), printed["notes"]
    recorded = RunFolder(tmp_path / "out" / "2" / "seed0" / "all").read_config()
    assert recorded.optim.backbone_lr_mult == mult and recorded.model.init_from == str(source_run.resolve())


def test_all_lr_mult_1_trains_the_pretrained_weights_at_the_heads_rate(source_run, cli, tmp_path, monkeypatch):
    """optim.backbone_lr_mult=1 is its default and reads as the lecture's tenth; --all-lr-mult 1 asks for 1."""
    built = recorded_optimizers(monkeypatch)
    lr = 0.05
    args = ["transfer", str(source_run), "--data", "digits", "--set", "data.classes=[0,1,2]", "--set",
            "aug.preset=none", "--set", "train.batch_size=3", "--set", f"optim.lr={lr}", "--set", "log.curves=false",
            "--per-class", "2",
            "--seeds", "1", "--steps", "2", "--json"]
    code, stdout, err = cli([*args, "--all-lr-mult", "1", "--out", str(tmp_path / "out")])
    assert code == 0, err
    assert built[2] == [(1.0, lr)]  # 'all': the pretrained stages and the new head at one rate
    printed = json.loads(stdout)
    assert printed["all_lr_mult"] == 1 and printed["rungs"]["all"].endswith("pretrained lr x 1")
    assert any("optim.backbone_lr_mult=1 (--all-lr-mult)" in note for note in printed["notes"])
    assert RunFolder(tmp_path / "out" / "2" / "seed0" / "all").read_config().optim.backbone_lr_mult == 1.0
    # the same folder with another factor would mix two ladders: refused
    code, _, err = cli([*args, "--all-lr-mult", "0.5", "--out", str(tmp_path / "out")])
    assert code == 2 and "other settings (all_lr_mult: 0.5 given, 1.0 recorded)" in err, err
    # two knobs for one factor that disagree: refused before anything runs
    code, _, err = cli([*args, "--all-lr-mult", "1", "--set", "optim.backbone_lr_mult=0.3", "--out",
                        str(tmp_path / "both")])
    assert code == 2 and "--all-lr-mult 1 and optim.backbone_lr_mult=0.3" in err and "Traceback" not in err, err
    assert not (tmp_path / "both").exists()
    # the two ways of one factor continue each other's ladder: every rung's config is the same, so the runs the
    # one trained are read back by the other (not refused, not trained again)
    code, _, err = cli([*args, "--set", "optim.backbone_lr_mult=0.5", "--out", str(tmp_path / "half")])
    assert code == 0, err
    code, stdout, err = cli([*args, "--all-lr-mult", "0.5", "--out", str(tmp_path / "half")])
    assert code == 0 and json.loads(stdout)["all_lr_mult"] == 0.5, err
    assert {(run["rung"], run["status"]) for run in json.loads(stdout)["runs"] if run["rung"] != ladder_lib.PROBE} \
        == {(rung, "read") for rung in ladder_lib.TRAINING_RUNGS}, stdout


def test_the_library_call_takes_the_data_as_a_spec_and_the_sizes_as_text_or_one_number(ladder, source_run, tmp_path):
    """run_transfer(data="digits") failed with an AttributeError, and per_class=5 with a TypeError, where probe()
    takes a spec: a spec is read as load_source reads it, the sizes as --per-class reads them."""
    result, out = ladder
    base = base_config()
    again = ladder_lib.run_transfer(str(source_run), TARGET_DATA, base, per_class=",".join(map(str, SIZES)), seeds=1,
                                    out=out, similarity="similar", steps=STEPS)  # the same ladder: read back
    assert [run.test_acc for run in again.runs] == [run.test_acc for run in result.runs]
    assert {run.status for run in again.runs if run.rung != ladder_lib.PROBE} == {"read"}
    assert ladder_lib.parse_sizes(5) == [5]
    for wrong in (None, 2.5, [1, "x"], [2.5], [True, 3]):  # int() made [2.5] [2] and True 1 image
        with pytest.raises(CnnlabError, match="must be sizes in images per class"):
            ladder_lib.run_transfer(str(source_run), TARGET_DATA, base, per_class=wrong, seeds=1, out=tmp_path / "o",
                                    similarity=None, steps=STEPS)
    with pytest.raises(CnnlabError, match="name the target data as a spec"):
        ladder_lib.run_transfer(str(source_run), 5, base, per_class=SIZES, seeds=1, out=tmp_path / "o",
                                similarity=None, steps=STEPS)
    assert not (tmp_path / "o").exists()


def test_the_ladders_own_loops_follow_the_free_cores_and_give_the_count_back(source_run, tmp_path, monkeypatch):
    """The probe's feature extraction and the rungs' test evaluations tick outside train(): run_transfer is an
    adaptive block (cnnlab.threads), as probe() is, or they would run at the caller's count beside a busy process."""
    from cnnlab import threads

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))  # features extracted here, not read from a cache
    seen = []
    tick = threads.GOVERNOR.tick
    monkeypatch.setattr(threads.GOVERNOR, "tick", lambda: (seen.append(threads.GOVERNOR.adapting), tick())[1])
    run(source_run, tmp_path / "probe-only", rungs=(ladder_lib.PROBE,), similarity=None)
    assert seen and all(seen)


def test_the_multiplier_is_still_refused_for_a_run_without_weights():
    with pytest.raises(CnnlabError, match="backbone_lr_mult.*model.init_from is not set"):
        apply_overrides(RunConfig(), ["optim.backbone_lr_mult=0.3"])
    assert apply_overrides(RunConfig(), ["optim.backbone_lr_mult=0.3"], template=True).optim.backbone_lr_mult == 0.3


def test_budgets_give_every_size_the_same_steps():
    small, large = ladder_lib.budget_for(50, 128, 300), ladder_lib.budget_for(5000, 128, 300)
    assert (small.batch_size, small.steps_per_epoch, small.epochs, small.steps) == (50, 1, 300, 300)
    assert (large.batch_size, large.steps_per_epoch, large.epochs) == (128, 39, 8) and large.steps == 312


def summaries(size, means, std=0.0):
    return [RungSummary(size=size, rung=rung, test_mean=mean, test_std=std, val_mean=mean, seconds_mean=1.0, runs=3,
                        failed=0) for rung, mean in zip(ladder_lib.RUNGS, means)]


def test_winners_ties_and_the_lecture_verdicts():
    # scratch, probe, top, all
    table = summaries(10, [0.50, 0.80, 0.70, 0.75], std=0.01) + summaries(1000, [0.90, 0.85, 0.91, 0.95], std=0.01)
    similar = ladder_lib.verdicts(table, [10, 1000], "similar")
    assert [(v.winner, v.verdict) for v in similar] == [("probe", "agrees"), ("all", "agrees")]
    different = ladder_lib.verdicts(table, [10, 1000], "different")
    assert [(v.winner, v.verdict) for v in different] == [("probe", ladder_lib.NO_RUNG), ("all", "agrees")]
    assert different[0].lecture == "try another model or collect more data"
    # within one std of the best: a tie, which agrees when the lecture's rung is in it
    tied = summaries(10, [0.50, 0.80, 0.70, 0.79], std=0.02) + summaries(1000, [0.96, 0.85, 0.91, 0.95], std=0.02)
    verdicts = ladder_lib.verdicts(tied, [10, 1000], "similar")
    assert [(v.winner, v.tied, v.verdict) for v in verdicts] == [
        ("tie", ["probe", "all"], "agrees (tie)"), ("tie", ["scratch", "all"], "agrees (tie)")]
    assert [v.verdict for v in ladder_lib.verdicts(tied, [10, 1000], "different")] == [ladder_lib.NO_RUNG, "agrees (tie)"]
    lost = summaries(1000, [0.99, 0.85, 0.91, 0.95]) + summaries(10, [0.50, 0.60, 0.70, 0.65])
    assert [v.verdict for v in ladder_lib.verdicts(lost, [10, 1000], "similar")] == ["disagrees", "disagrees"]
    assert [v.verdict for v in ladder_lib.verdicts(lost, [10, 1000], None)] == [None, None]


@pytest.mark.parametrize("extra, pattern", [
    # synthetic data has its own validation split: nothing is held out of the training split
    (["--per-class", "2,17"], r"--per-class 17 asks for more training images than some classes of \S+ have \(in the "
                              r"training split: \S+ has its own validation split\): 'class0' has 1[0-9]"),
    (["--per-class", "2,ten"], "whole numbers separated by commas"),
    (["--similarity", "alike"], "--similarity 'alike' is not known: choose similar"),
    (["--set", "data.train_per_class=3"], "leave data.train_per_class out"),
    # a time budget would end some rungs before their --steps (equal budgets)
    (["--set", "train.minutes=0.5"], "train.minutes=0.5 is set, but the ladder gives every training rung about --steps"),
    # so would early stopping; and accumulation would make fewer optimiser steps than the budget counts
    (["--set", "train.early_stop_patience=1"], "train.early_stop_patience=1 is set, but the ladder gives every"),
    (["--set", "train.accum_steps=2"], r"train.accum_steps=2 is set, but the ladder counts each batch as an optimiser"),
    # what every rung's set-up refuses, before the first rung leaves its folder
    (["--device", "cpu", "--set", "train.precision=fp16", "--per-class", "2", "--seeds", "1", "--steps", "2"],
     "train.precision=fp16 needs a CUDA GPU"),
    (["--all-lr-mult", "0"], "--all-lr-mult 0.0 must be a positive number"),
    # the schedule is checked against each rung's epochs, not the base config's train.epochs the ladder replaces
    (["--per-class", "2", "--seeds", "1", "--steps", "8", "--set", "schedule.name=step", "--set", "train.epochs=100"],
     r"schedule.step_epochs=\[30, 60, 90\] must not go beyond the run \(the 'scratch' rung's \d+ epochs at 2 images "
     r"per class\)\. \(The ladder sets each rung's epochs from --steps"),
    # every rung trains the source run's recorded network: a model key the config sets would be dropped
    (["--set", "model.drop_rate=0.5"], r"sets model.drop_rate=0.5, but the source is a cnnlab run of resnet8"),
    # 8 steps of 2 an epoch: 4 epochs, the first of them head-only in 'top' and 'all', whose schedule then has 3
    # epochs, where a milestone at 3 never takes effect (refused only once 'top' started, after 'scratch' trained)
    (["--per-class", "2", "--seeds", "1", "--steps", "8", "--set", "schedule.name=step", "--set",
      "schedule.step_epochs=[3]"],
     r"schedule.step_epochs=\[3\] has 3, the end of the run \(the 'top' rung's 4 epochs at 2 images per class, less "
     r"its 1 head-only\).*Set the milestone to 2 or less"),
])
def test_bad_input_exits_2_before_any_run(source_run, cli, tmp_path, extra, pattern):
    import re

    out = tmp_path / "out"
    code, stdout, err = cli(["transfer", str(source_run), *[p for text in SETS for p in ("--set", text)],
                             "--out", str(out), *extra])
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(pattern, err), err
    assert not out.exists()  # refused before anything was written


def test_a_missing_source_exits_2(cli, tmp_path):
    code, _, err = cli(["transfer", str(tmp_path / "no-run"), "--data", TARGET_DATA, "--out", str(tmp_path / "out")])
    assert code == 2 and "no-run' does not exist" in err, err


def test_a_ladder_recorded_before_all_lr_mult_continues_with_the_factor_it_used(tmp_path):
    """Its transfer.json has no all_lr_mult: 'all' took the config's multiplier, or the tenth for the default 1."""
    settings = {"source": "s", "data": {}, "config": {"optim": {"backbone_lr_mult": 1.0}}, "steps": 2,
                "similarity": None, "head_first": 0.25}
    (tmp_path / ladder_lib.RESULT_FILE).write_text(json.dumps({"settings": settings}), encoding="utf-8")
    ladder_lib._check_resume(tmp_path, {**settings, "all_lr_mult": ladder_lib.LECTURE_LR_MULT})
    with pytest.raises(CnnlabError, match=r"other settings \(all_lr_mult: 1.0 given, 0.1 recorded\)"):
        ladder_lib._check_resume(tmp_path, {**settings, "all_lr_mult": 1.0})


def test_a_whitened_source_gives_the_pretrained_rungs_its_filters_as_weights(cli, tmp_path_factory, monkeypatch):
    """A source trained with model.whiten: 'top' and 'all' load its whitened first conv (model.whiten none, as
    model.init_from requires), and 'scratch' whitens its own from the target's images."""
    import io

    import torch
    from rich.console import Console

    from cnnlab.evaluate.evaluate import load_model
    from cnnlab.models._base import first_conv
    from cnnlab.train.engine import train

    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
    threads = torch.get_num_threads()
    try:
        source = train(apply_overrides(RunConfig(), [
            "model.name=resnet8", "data.spec=digits", "data.classes=[0,1,2,3,4]", "data.image_size=28",
            "data.train_per_class=8", "model.whiten=frozen", "aug.preset=none", "train.epochs=1",
            "train.batch_size=8", "log.quiet=true", "log.curves=false"]),
            tmp_path_factory.mktemp("whitened") / "source",
            console=Console(file=io.StringIO())).run_dir  # its epoch line would precede the command's JSON
    finally:
        torch.set_num_threads(threads)
    out = tmp_path_factory.mktemp("whitened-ladder") / "out"
    code, stdout, err = cli(["transfer", str(source), "--data", "digits", "--set", "data.classes=[5,6,7]",
                             "--set", "aug.preset=none", "--set", "train.batch_size=3", "--set", "log.curves=false",
                             "--per-class", "2",
                             "--seeds", "1", "--steps", "2", "--out", str(out), "--json"])
    assert code == 0, err
    assert any("model.whiten=frozen" in note for note in json.loads(stdout)["notes"])
    configs = {rung: RunFolder(out / "2" / "seed0" / rung).read_config() for rung in ("scratch", "top", "all")}
    assert configs["scratch"].model.whiten == "frozen" and configs["scratch"].model.init_from is None
    assert [configs[rung].model.whiten for rung in ("top", "all")] == ["none", "none"]

    def filters(run_dir):
        model = load_model(run_dir).model
        return first_conv(model)[1].weight.detach().cpu()

    whitened = filters(source)
    assert torch.equal(filters(out / "2" / "seed0" / "top"), whitened)  # loaded, then frozen below the top stage
    assert not torch.allclose(filters(out / "2" / "seed0" / "scratch"), whitened)  # its own, from other images


def test_model_keys_the_source_run_records_alike_or_leaves_at_the_default_are_taken(source_run):
    """A template may repeat the source's own model keys (its config.yaml) or name another model (the recipe's
    model.name, which the source's replaces); only a key set to another value than the run's is refused."""
    from cnnlab.transfer.probe import load_probe_source

    source = load_probe_source(str(source_run), device="cpu")
    own = RunFolder(source_run).read_config()
    ladder_lib.check_model_keys(own, source)
    ladder_lib.check_model_keys(apply_overrides(RunConfig(), ["model.name=vgg_mini"]), source)
    with pytest.raises(CnnlabError, match=r"model.stage_drop_rate=0.2.*Leave them out"):
        ladder_lib.check_model_keys(apply_overrides(own, ["model.stage_drop_rate=0.2"]), source)


def test_layer_decay_and_bn_eval_act_in_the_rungs_that_start_from_the_source_only(source_run, cli, tmp_path,
                                                                                   monkeypatch):
    """optim.layer_decay is discriminative fine-tuning's: 'scratch' has no pretrained stages to slow down and
    'top' trains its one unfrozen stage at the head's rate, so only 'all' takes it (with the multiplier).

    train.bn_eval: 'scratch' trains a fresh network, whose BatchNorm statistics have nothing to keep, so the ladder
    runs it at train.bn_eval=off whatever the config says, and a note says so instead of leaving the change unsaid.
    One ladder sets both: bn_eval changes BatchNorm's mode, not the optimiser's groups the decay sets."""
    built = recorded_optimizers(monkeypatch)
    lr, decay = 0.05, 0.5
    stdout = three_rungs_of_digits(cli, source_run, tmp_path, f"optim.lr={lr}", f"optim.layer_decay={decay}",
                                   "train.bn_eval=all")
    scratch, top, everything = built
    assert scratch == [(1.0, lr)] and top == [(1.0, lr)]
    # the head at lr; stage k below it (resnet8: 3 stages and the stem) at decay**k x the lecture's tenth
    expected = [(decay**k * 0.1, lr * decay**k * 0.1) for k in range(4, 0, -1)] + [(1.0, lr)]
    assert everything == [(pytest.approx(scale), pytest.approx(rate)) for scale, rate in expected]
    printed = json.loads(stdout)
    assert any(f"optim.layer_decay={decay:g}" in note and "'all' only" in note for note in printed["notes"])
    out = tmp_path / "out"
    rung_configs = {folder.parent.name: RunFolder(folder.parent).read_config() for folder in out.rglob("config.yaml")}
    assert {name: config.train.bn_eval for name, config in rung_configs.items() if name in ("scratch", "top", "all")} \
        == {"scratch": "off", "top": "all", "all": "all"}
    assert any("train.bn_eval=all acts in 'top' and 'all' only" in note for note in printed["notes"])
    # a ladder that leaves train.bn_eval off says nothing about it: checked on the ladder of
    # test_the_cli_takes_the_fine_tuning_multiplier_and_only_all_trains_with_it


@pytest.mark.parametrize("content", ["{not json", '{"settings": [1, 2]}', '{"settings": 3}'])
def test_a_transfer_json_that_cannot_be_read_is_refused_in_one_paragraph(tmp_path, content):
    (tmp_path / ladder_lib.RESULT_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(CnnlabError, match="cannot be read as a transfer result"):
        ladder_lib._check_resume(tmp_path, {"steps": 2})


def test_without_a_test_split_the_table_heads_its_two_accuracy_columns_apart(cli, monkeypatch, tmp_path):
    """On data with no test split the ladder scores on val: the table's two accuracy columns (the metric split's,
    and the best val accuracy that chose each checkpoint) keep distinct headings, and --json says the split."""
    budget = ladder_lib.budget_for(6, 3, STEPS)
    table = [RungSummary(size=2, rung=rung, test_mean=0.5, test_std=0.0, val_mean=0.5, seconds_mean=1.0, runs=1,
                         failed=0) for rung in ladder_lib.RUNGS]
    result = ladder_lib.TransferResult(
        source="src", model="resnet8", data="synthetic", classes=["a", "b", "c"], similarity=None,
        metric_split="val", sizes=[2], seeds=1, steps=STEPS, budgets={2: budget}, freeze_top="stage2",
        all_lr_mult=0.1, runs=[], table=table, verdicts=ladder_lib.verdicts(table, [2], None), notes=[],
        seconds=1.0, files={"json": "t.json", "plot": "t.png"})
    monkeypatch.setattr(ladder_lib, "run_transfer", lambda *args, **kwargs: result)
    args = ["transfer", "src", "--data", "digits", "--per-class", "2", "--out", str(tmp_path / "out")]
    code, stdout, err = cli([*args, "--json"])
    assert code == 0, err
    assert json.loads(stdout)["metric_split"] == "val"
    monkeypatch.setenv("COLUMNS", "200")  # one line per heading
    code, stdout, err = cli(args)
    assert code == 0, err
    heading = next(line for line in stdout.splitlines() if "rung" in line and "what" in line)
    cells = [cell.strip() for cell in heading.strip("┃│ ").replace("┃", "│").split("│")]
    accuracy = [cell for cell in cells if "acc" in cell]
    assert len(accuracy) == 2 and len(set(accuracy)) == 2, heading
    assert accuracy[0].startswith("val acc") and accuracy[1].startswith("best val acc")


def test_top_and_all_start_from_a_new_head_and_the_sources_backbone_even_with_the_same_classes(source_run):
    """The target has the source run's classes by name and count (synthetic's class0..class3), so model.init_from's
    own rule would load the source's classifier: the pretrained rungs train a new head on its backbone instead."""
    from cnnlab.train.engine import setup_run
    from cnnlab.train.init_from import read_init_source
    from cnnlab.transfer.probe import load_probe_source

    base = apply_overrides(RunConfig(), ["data.spec=synthetic:classes=4,train=48,val=16,test=16,channels=1",
                                         *SETS[1:]])
    source = load_probe_source(str(source_run), None, "cpu")
    theirs = read_init_source(str(source_run), "resnet8").state_dict
    budget = ladder_lib.budget_for(8, 3, STEPS)
    for rung in ("top", "all"):
        config = ladder_lib.rung_config(base, rung, source=source, source_spec=str(source_run), data=base.data,
                                        size=2, seed=0, budget=budget, freeze="stage2")
        setup = setup_run(config, "cpu", loaders=False)
        state, report = setup.model.state_dict(), setup.init_report
        assert sorted(report.skipped) == ["fc.bias", "fc.weight"], rung
        assert not torch.equal(state["fc.weight"], theirs["fc.weight"].to(state["fc.weight"].dtype)), rung
        backbone = [key for key in state if key not in report.skipped]
        assert backbone == report.loaded and all(torch.equal(state[key], theirs[key]) for key in backbone), rung
    scratch = ladder_lib.rung_config(base, "scratch", source=source, source_spec=str(source_run), data=base.data,
                                     size=2, seed=0, budget=budget, freeze="stage2")
    assert scratch.model.init_from is None and not scratch.model.new_head


@pytest.mark.parametrize("stop_in, said", [
    ("train_rung", "interrupted: no run was kept in "),  # stopped in the first rung, before its run started
    ("probe_rung", "interrupted: 1 run is kept in "),  # 'scratch' finished, stopped in the probe after it
])
def test_ctrl_c_says_what_is_kept(source_run, cli, tmp_path, monkeypatch, stop_in, said):
    """The interrupted: line used to promise "finished runs are kept" even when none had started."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ladder_lib, stop_in, stop)
    out = tmp_path / "out"
    code, _, err = cli(["transfer", str(source_run), *[p for text in SETS for p in ("--set", text)], "--per-class", "2",
                        "--seeds", "1", "--steps", str(STEPS), "--out", str(out)])
    last = err.rstrip("\n").splitlines()[-1]
    assert code == 130 and last.startswith(said + str(out)), err
    assert last.endswith("; run the same command to continue.") and "finished runs are kept" not in err, err


def _old_ladder(source_run, out, target: str) -> None:
    """A ladder as it ran before the rungs set model.new_head: 'top' and 'all' kept model.init_from's own rule (the
    source's classifier for the source's classes), and their config.yaml has no model.new_head."""
    real = ladder_lib.rung_config

    def without_new_head(*args, **kwargs):
        config = real(*args, **kwargs)
        config.model.new_head = False
        return config

    base = apply_overrides(RunConfig(), [f"data.spec={target}", *SETS[1:]])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ladder_lib, "rung_config", without_new_head)
        ladder_lib.run_transfer(str(source_run), base.data, base, per_class=[2], seeds=1, out=out, similarity=None,
                                steps=STEPS)
    for rung in ("top", "all"):
        path = RunFolder(out / "2" / "seed0" / rung).path / "config.yaml"
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if "new_head" not in line))


def test_a_resumed_ladder_refuses_old_runs_that_loaded_the_sources_head_and_retrains_them_once_deleted(
        source_run, tmp_path, monkeypatch):
    """The target has the source's classes (synthetic's class0..class3), so an old 'top' and 'all' started from the
    source's classifier: read back, they would mix with new-head runs. The ladder names them and what to do."""
    import shutil

    target = "synthetic:classes=4,train=48,val=16,test=16,channels=1"
    out = tmp_path / "out"
    _old_ladder(source_run, out, target)
    assert not json.loads((out / "2" / "seed0" / "top" / "init.json").read_text())["skipped"]  # the head loaded
    RunFolder(out / "2" / "seed0" / "all").report.unlink()  # half-finished: a resume would continue it as it was
    base = apply_overrides(RunConfig(), [f"data.spec={target}", *SETS[1:]])
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("nothing trains before the check"))

    def again():
        return ladder_lib.run_transfer(str(source_run), base.data, base, per_class=[2], seeds=1, out=out,
                                       similarity=None, steps=STEPS)

    with pytest.raises(CnnlabError) as refused:
        again()
    message = str(refused.value)
    assert message.startswith(f"'{out}' holds 2 runs of 'top' or 'all' trained before the ladder gave those rungs a "
                              "new head")
    assert f"rm -r {out / '2' / 'seed0' / 'top'} {out / '2' / 'seed0' / 'all'})" in message
    assert "run the same command again" in message and "another --out" in message

    # done as the message says: the two are trained again, with a new head; scratch is read back
    for rung in ("top", "all"):
        shutil.rmtree(out / "2" / "seed0" / rung)
    monkeypatch.undo()
    result = again()
    assert {run.rung: run.status for run in result.runs} == {"scratch": "read", "probe": "done", "top": "done",
                                                            "all": "done"}
    for rung in ("top", "all"):
        assert RunFolder(out / "2" / "seed0" / rung).read_config().model.new_head


def test_a_resumed_ladder_reads_old_runs_that_kept_the_head_fresh_for_other_classes(source_run, tmp_path,
                                                                                    monkeypatch):
    """The target has other classes than the source (3, not 4): the old 'top' and 'all' kept the classifier fresh,
    as a new head does, so they trained what the rungs train now and are read back."""
    out = tmp_path / "out"
    _old_ladder(source_run, out, TARGET_DATA)
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("every run had finished"))
    base = base_config()
    result = ladder_lib.run_transfer(str(source_run), base.data, base, per_class=[2], seeds=1, out=out,
                                     similarity=None, steps=STEPS)
    assert {run.status for run in result.runs if run.rung != ladder_lib.PROBE} == {"read"}


def _first_call_stopped(source_run, out, monkeypatch, after_run) -> dict:
    """A ladder call whose first run, once trained and passed to ``after_run(run_dir)``, asks to stop (as a Ctrl-C
    leaves a run): the call stops after it. Returns the transfer.json it left."""
    real_train = engine.train

    def stopping(*args, **kwargs):
        result = real_train(*args, **kwargs)
        after_run(args[1])
        result.stop_requested = True
        return result

    monkeypatch.setattr(engine, "train", stopping)
    with pytest.raises(KeyboardInterrupt):
        run(source_run, out, per_class=[2])
    monkeypatch.setattr(engine, "train", real_train)
    return json.loads((out / ladder_lib.RESULT_FILE).read_text())


def test_a_ctrl_c_in_a_runs_last_step_records_the_finished_run_before_stopping(source_run, tmp_path, monkeypatch):
    """Ctrl-C in the last step of 'scratch': the run finishes, and the ladder stops after it. The next call reads it
    back with the wall-clock seconds recorded for it, as every other finished run, instead of only the sum of its
    epochs' training times (which leaves out validation and checkpoints)."""
    out = tmp_path / "out"
    # as a Ctrl-C during its last step leaves it: finished, and asking to stop
    recorded = _first_call_stopped(source_run, out, monkeypatch, lambda run_dir: None)
    assert [(row["rung"], row["status"], row["run_dir"]) for row in recorded["runs"]] == [("scratch", "done",
                                                                                          "2/seed0/scratch")]
    seconds = recorded["runs"][0]["seconds"]
    assert seconds > ladder_lib._training_seconds(out / "2" / "seed0" / "scratch")

    result = run(source_run, out, per_class=[2])
    scratch = next(r for r in result.runs if r.rung == ladder_lib.SCRATCH)
    assert scratch.status == "read" and scratch.seconds == seconds
    assert scratch.test_acc == recorded["runs"][0]["test_acc"]


def test_a_run_stopped_part_way_and_continued_counts_both_calls_time(source_run, tmp_path, monkeypatch):
    """A rung a Ctrl-C stopped part-way, continued by the next call: the table gave only the second call's time
    (6.3 s for a run that took 12.4 s uninterrupted). transfer.json keeps the time before the stop, and the
    continued run's seconds add it. The stop is stood in for by a run that took 1.5 s and left its report out."""
    import time

    def part_way(run_dir):
        RunFolder(run_dir).report.unlink()  # not finished: the next call continues it from last.safetensors
        time.sleep(1.5)

    out = tmp_path / "out"
    recorded = _first_call_stopped(source_run, out, monkeypatch, part_way)
    assert [(row["rung"], row["status"]) for row in recorded["runs"]] == [("scratch", "stopped")]
    before = recorded["runs"][0]["seconds"]
    assert before >= 1.5 and recorded["finished"] is False

    result = run(source_run, out, per_class=[2])
    scratch = next(r for r in result.runs if r.rung == ladder_lib.SCRATCH)
    assert scratch.status == "done" and scratch.seconds > before  # both calls' parts
    assert all(row["status"] != "stopped" for row in json.loads((out / ladder_lib.RESULT_FILE).read_text())["runs"])


def test_the_files_the_target_data_left_out_are_counted_and_named_in_the_result(source_run, cli, tmp_path,
                                                                                 monkeypatch):
    """A folder with a file that is not an image and one that cannot be decoded: the ladder trains on the rest, and
    its result (--json, transfer.json) names both under skipped, as probe's does, with a note counting them. The
    folder is named relative to the working folder, which each rung's run records absolute: the warning is
    shown once all the same."""
    from PIL import Image

    root = tmp_path / "shapes"
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        for label in range(3):
            folder = root / split / f"shape{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                Image.new("L", (28, 28), 40 * label + 10 * index).save(folder / f"{index}.png")
    (root / "train" / "shape0" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "shape1" / "notes.txt").write_text("labels checked")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    code, stdout, err = cli(["transfer", str(source_run), "--data", "folder:shapes",
                             *[p for text in SETS[1:] for p in ("--set", text)], "--per-class", "2", "--seeds", "1",
                             "--steps", str(STEPS), "--out", str(out), "--json"])
    assert code == 0, err
    # every rung loads the data again: the warning is shown once all the same, as are the data's notes
    assert err.count("warning: skipped 2 files") == 1, err
    assert err.count("note: training subset: 2 images per class") == 1, err
    wanted = {str(root / "train" / "shape0" / "broken.png"), str(root / "train" / "shape1" / "notes.txt")}
    for result in (json.loads(stdout), json.loads((out / ladder_lib.RESULT_FILE).read_text())):
        assert {item["path"] for item in result["skipped"]} == wanted
        assert all(item["reason"] for item in result["skipped"])
        assert any(note.startswith("the target data left out 2 files (") for note in result["notes"])


@pytest.mark.parametrize("which", ["source", "other", "notes"])
def test_an_out_that_is_a_training_runs_folder_is_refused_before_anything_is_written(source_run, cli, tmp_path,
                                                                                    which):
    """--out naming the source run (or another run) used to write the ladder's runs and transfer.json into it; and
    so did any other folder that is no ladder's (an experiment's, notes), as `cnnlab experiment` refuses it."""
    source = tmp_path / "source-copy"  # copies: the session's source run stays untouched whatever happens
    shutil.copytree(source_run, source)
    out = {"source": source, "other": tmp_path / "another-run", "notes": tmp_path / "notes"}[which]
    if which == "other":
        shutil.copytree(source_run, out)
    if which == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "20").mkdir()  # a size's folder, as a ladder's: not what is refused
    before = sorted(path.name for path in out.iterdir())
    code, _, err = cli(["transfer", str(source), *[p for text in SETS for p in ("--set", text)], "--per-class", "2",
                        "--seeds", "1", "--steps", str(STEPS), "--out", str(out)])
    assert code == 2 and "Traceback" not in err, err
    said = {"source": "is the source run's folder (it has its config.yaml)",
            "other": "is a training run's folder (it has its config.yaml)",
            "notes": "holds notes.txt, which no transfer ladder writes"}[which]
    assert f"--out '{out}' {said}" in err, err
    assert sorted(path.name for path in out.iterdir()) == before


def test_a_resumed_ladder_refuses_all_runs_trained_at_the_earlier_head_rates_and_retrains_them_once_deleted(
        tmp_path, monkeypatch):
    """lenet5's head holds two hidden fully connected layers the source's weights load into. Earlier versions
    trained them at optim.lr in 'all'; read back next to runs of this version (the pretrained rate), the table
    would mix two recipes. The 'all' run's checkpoint shows it (its optimiser groups), and the ladder names it."""
    from cnnlab.train import finetune

    source = tmp_path / "lenet"
    engine.train(apply_overrides(RunConfig(), [
        "model.name=lenet5", "data.spec=synthetic:classes=4,train=32,val=8,test=8,channels=1", "data.image_size=28",
        "aug.preset=none", "train.epochs=1", "train.batch_size=16", "log.quiet=true", "log.curves=false"]), source)
    out = tmp_path / "out"
    base = base_config()

    def again():
        return ladder_lib.run_transfer(str(source), base.data, base, per_class=[2], seeds=1, out=out,
                                       similarity=None, steps=STEPS)

    original = finetune.parameter_lr_scales
    with pytest.MonkeyPatch.context() as patch:  # the earlier version: every head parameter at optim.lr
        patch.setattr(finetune, "parameter_lr_scales",
                      lambda model, plan, config, **_: original(model, plan, config, pretrained_head=False))
        again()
    monkeypatch.setattr(engine, "train", lambda *args, **kwargs: pytest.fail("nothing trains before the check"))
    with pytest.raises(CnnlabError) as refused:
        again()
    message = str(refused.value)
    all_run = out / "2" / "seed0" / "all"
    assert message.startswith(f"'{out}' holds 1 run of 'all' trained by an earlier cnnlab")
    assert f"(rm -r {all_run})" in message and "another --out" in message

    shutil.rmtree(all_run)
    monkeypatch.undo()
    result = again()
    assert {run.rung: run.status for run in result.runs} == {"scratch": "read", "probe": "done", "top": "read",
                                                            "all": "done"}
    assert not finetune.checkpoint_predates_head_rates(RunFolder(all_run).last)
    assert again() is not None  # read back: a run of this version is not refused


def test_a_ladder_recorded_before_a_config_key_was_added_continues(ladder, source_run):
    """An older transfer.json records the config without model.init_ema (and its data without a key added later,
    memory_limit_mb here): that ladder trained at their defaults."""
    result, out = ladder
    path = out / ladder_lib.RESULT_FILE
    original = path.read_text(encoding="utf-8")
    record = json.loads(original)
    try:
        del record["settings"]["config"]["model"]["init_ema"]
        del record["settings"]["data"]["memory_limit_mb"]
        path.write_text(json.dumps(record), encoding="utf-8")
        settings = ladder_lib._settings(result_source(source_run), base_config().data, base_config(), STEPS,
                                        "similar", ladder_lib.HEAD_FIRST, ladder_lib.LECTURE_LR_MULT)
        ladder_lib._check_resume(out, settings)  # the same ladder: continued
        changed = apply_overrides(base_config(), ["optim.lr=0.1"])
        with pytest.raises(CnnlabError, match=r"other settings \(config.optim.lr: 0.1 given, 0.05 recorded\)"):
            ladder_lib._check_resume(out, ladder_lib._settings(result_source(source_run), changed.data, changed,
                                                               STEPS, "similar", ladder_lib.HEAD_FIRST,
                                                               ladder_lib.LECTURE_LR_MULT))
    finally:
        path.write_text(original, encoding="utf-8")


def result_source(source_run):
    from cnnlab.transfer.probe import load_probe_source

    return load_probe_source(str(source_run), None, "cpu")


def test_model_init_ema_gives_the_probe_top_and_all_the_sources_ema_weights(ema_source_run):
    import safetensors.torch

    from cnnlab.train.engine import setup_run
    from cnnlab.transfer.probe import load_probe_source

    tensors = safetensors.torch.load_file(str(RunFolder(ema_source_run).checkpoint()))  # read without cnnlab
    raw = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
    ema = {key[len("ema/module/"):]: value for key, value in tensors.items() if key.startswith("ema/module/")}
    base = apply_overrides(base_config(), ["model.init_ema=true"], template=True)  # the rungs set model.init_from
    source = load_probe_source(str(ema_source_run), None, "cpu", ema=base.model.init_ema)
    assert all(torch.equal(value, ema[key]) for key, value in source.model.state_dict().items())  # the probe's
    assert source.identity["weights"] == "ema"  # its features are cached apart from the raw weights'
    assert "weights" not in load_probe_source(str(ema_source_run), None, "cpu").identity
    # The source run's own model.init_ema was how it started, not what the rungs start from.
    source.init.config.model.init_ema = True
    budget = ladder_lib.budget_for(6, 3, STEPS)
    for rung in ("scratch", "top", "all"):
        config = ladder_lib.rung_config(base, rung, source=source, source_spec=str(ema_source_run), data=base.data,
                                        size=2, seed=0, budget=budget, freeze="stage2")
        assert config.model.init_ema == (rung != "scratch"), rung
        if rung == "scratch":
            continue
        setup = setup_run(config, "cpu", loaders=False)
        state = setup.model.state_dict()
        assert setup.init_report.source_weights == "ema", rung
        assert all(torch.equal(state[key], ema[key]) for key in setup.init_report.loaded), rung
        assert any(not torch.equal(state[key], raw[key]) for key in setup.init_report.loaded), rung
    ladder_lib.check_model_keys(base, source)  # model.init_ema is the ladder's to pass on, not a replaced key
