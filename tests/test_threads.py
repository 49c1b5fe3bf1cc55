"""torch's CPU threads on a shared machine (cnnlab.threads): the counters, the rule, the governor and the runs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from cnnlab import threads
from cnnlab.config import RunConfig, apply_overrides, thread_setting_note
from cnnlab.errors import CnnlabError
from cnnlab.run import RunFolder
from cnnlab.threads import CpuSample, ThreadGovernor, busy_seconds, choose_threads, other_cores

SYNTHETIC = "synthetic:classes=3,train=96,val=32,test=32,channels=1"

# Two CPUs of /proc/stat, 100 ticks a second: user nice system idle iowait irq softirq steal guest guest_nice.
STAT_BEFORE = """cpu  300 0 100 900 0 0 0 0 0 0
cpu0 100 0 50 400 0 0 0 0 0 0
cpu1 200 0 50 500 0 0 0 0 0 0
intr 12345
"""
STAT_AFTER = """cpu  500 0 120 1000 0 0 0 0 0 0
cpu0 180 0 55 420 0 5 5 900 0 0
cpu1 290 0 60 600 10 0 0 0 0 0
intr 12346
"""


@pytest.fixture
def torch_threads():
    """Each test starts at 2 torch threads (the suite may run at 1) and gets its setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class FakeCpu:
    """A clock that moves ``window`` seconds each time it is read, and counters where our own process used one
    core and the other processes ``others[k]`` cores during the k-th window between two samples."""

    def __init__(self, others: list[float], window: float = 0.5):
        self.others, self.window = list(others), window
        self.time = 100.0
        self.now = CpuSample(time=self.time, busy=1000.0, own=10.0)
        self.started = False

    def clock(self) -> float:
        self.time += self.window
        return self.time

    def __call__(self) -> CpuSample:
        if not self.started:  # the first look: the window starts here
            self.started = True
            self.now = CpuSample(time=self.time, busy=self.now.busy, own=self.now.own)
            return self.now
        share = self.others.pop(0) if self.others else 0.0
        elapsed = self.time - self.now.time
        self.now = CpuSample(time=self.time, busy=self.now.busy + (1.0 + share) * elapsed,
                             own=self.now.own + 1.0 * elapsed)
        return self.now


def test_busy_seconds_counts_user_nice_system_irq_softirq_of_the_given_cores():
    # cpu0: 100 + 0 + 50 + 0 + 0 = 150 ticks busy; cpu1: 250 (idle, iowait and steal never count)
    assert busy_seconds(STAT_BEFORE, [0], 100) == pytest.approx(1.5)
    assert busy_seconds(STAT_BEFORE, [0, 1], 100) == pytest.approx(4.0)
    # after: cpu0 180 + 55 + 5 + 5 = 245 (its 900 steal ticks ignored); cpu1 290 + 60 = 350 (iowait ignored)
    assert busy_seconds(STAT_AFTER, [0, 1], 100) == pytest.approx(5.95)
    assert busy_seconds(STAT_AFTER, [1], 100) == pytest.approx(3.5)
    assert busy_seconds(STAT_AFTER, [7], 100) == 0.0  # a core the text does not list


def test_other_cores_is_the_busy_time_that_was_not_ours_per_second():
    before = CpuSample(time=10.0, busy=4.0, own=1.0)
    after = CpuSample(time=12.0, busy=7.0, own=2.0)  # 3 s busy in 2 s, 1 s of it ours: others used 1 core
    assert other_cores(before, after) == pytest.approx(1.0)
    assert other_cores(before, CpuSample(time=12.0, busy=4.5, own=2.0)) == 0.0  # tick rounding: never negative
    assert other_cores(before, before) == 0.0


@pytest.mark.parametrize("ceiling, cores, others, quota, expected", [
    (2, 2, 0.0, None, 2),  # idle: torch's setting
    (2, 2, 0.29, None, 2),  # a light background process leaves the core free
    (2, 2, 0.31, None, 1),  # more than 1 - FREE_SHARE of a core: taken
    (2, 2, 0.67, None, 1),  # a busy loop sharing 2 cores with our 2 spinning threads gets 2/3 of a core
    (2, 2, 1.0, None, 1),
    (2, 2, 2.0, None, 1),  # never below one thread
    (8, 8, 2.2, None, 6),  # 2.2 cores used: two taken, 0.2 of a third leaves it free
    (8, 8, 2.4, None, 5),  # 2.4: three taken
    (4, 16, 3.0, None, 4),  # the ceiling holds when more cores are free
    (8, 64, 30.0, 4.0, 4),  # a container limited to 4 cores on a busy 64-core host: its quota
    (8, 8, 0.0, 2.5, 2),  # a fractional quota rounds down
])
def test_choose_threads(ceiling, cores, others, quota, expected):
    assert choose_threads(ceiling, cores, others, quota) == expected


def test_governor_lowers_the_threads_while_a_core_is_taken_and_raises_them_again(torch_threads):
    fake = FakeCpu(others=[1.0, 1.0, 0.0, 0.0])
    governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=2, quota=None, window=0.3)
    with governor.adaptive():
        governor.tick()  # the first look starts the window
        assert torch.get_num_threads() == 2 and governor.ceiling is None
        governor.tick()  # the other process used a core
        assert torch.get_num_threads() == 1 and governor.ceiling == 2
        governor.tick()
        assert torch.get_num_threads() == 1
        governor.tick()  # the core is free again: back to the ceiling
        assert torch.get_num_threads() == 2
    assert [count for _, count in governor.changes] == [1, 2]


def test_time_at_counts_integrates_the_changes():
    assert threads.time_at_counts(0.0, 2, [], 4.0) == {2: 4.0}
    assert threads.time_at_counts(0.0, 2, [(3.0, 1), (4.5, 2)], 10.0) == {2: 8.5, 1: 1.5}
    assert threads.time_at_counts(5.0, 1, [(6.0, 4), (9.0, 1)], 9.0) == {4: 3.0, 1: 1.0}
    assert threads.time_at_counts(1.0, 2, [], 1.0) == {}  # nothing happened


def test_governor_waits_a_whole_window_between_looks(torch_threads):
    fake = FakeCpu(others=[1.0, 1.0, 1.0], window=0.1)
    governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=2, quota=None, window=0.25)
    with governor.adaptive():
        governor.tick()
        governor.tick()
        governor.tick()  # 0.2 s since the first look: too soon to judge
        assert torch.get_num_threads() == 2
        governor.tick()  # 0.3 s: a whole window
        assert torch.get_num_threads() == 1


def test_a_thread_count_the_user_sets_becomes_the_ceiling(torch_threads):
    fake = FakeCpu(others=[0.0, 0.0, 0.0, 2.0])
    governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=8, quota=None, window=0.3)
    with governor.adaptive():
        governor.tick()
        governor.tick()
        assert torch.get_num_threads() == 2  # idle: the ceiling, never more
        torch.set_num_threads(4)  # the user's own setting between two looks
        governor.tick()
        assert governor.ceiling == 4 and torch.get_num_threads() == 4
        governor.tick()  # two cores taken: 6 free, ceiling 4
        assert torch.get_num_threads() == 4


def test_pinned_block_never_changes_and_restores_the_setting(torch_threads):
    fake = FakeCpu(others=[1.0] * 10)
    governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=2, quota=None, window=0.3)
    with governor.adaptive():
        governor.tick()
        governor.tick()
        assert torch.get_num_threads() == 1  # lowered
        with governor.pin() as fixed:  # deterministic: the ceiling, whatever the load
            assert fixed == 2 and torch.get_num_threads() == 2
            for _ in range(3):
                governor.tick()
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1  # what it was before the block
        with governor.pin(3) as fixed:  # train.threads=3
            governor.tick()
            assert fixed == 3 and torch.get_num_threads() == 3
        assert torch.get_num_threads() == 1


def test_run_threads_pins_only_for_a_set_count_or_a_fixed_run(torch_threads):
    with threads.run_threads(None):
        assert threads.GOVERNOR.pinned == 0
    with threads.run_threads(1):
        assert threads.GOVERNOR.pinned == 1 and torch.get_num_threads() == 1
    with threads.run_threads(None, fixed=True):
        assert threads.GOVERNOR.pinned == 1 and torch.get_num_threads() == 2
    assert threads.GOVERNOR.pinned == 0 and torch.get_num_threads() == 2


def test_an_adaptive_block_gives_back_the_setting_it_found(torch_threads):
    fake = FakeCpu(others=[1.0] * 10)
    governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=2, quota=None, window=0.3)
    with governor.adaptive():
        governor.tick()
        governor.tick()
        assert torch.get_num_threads() == 1  # lowered inside: a core is taken
    assert torch.get_num_threads() == 2  # the caller's setting after the block, though the core is still taken
    governor.tick()
    governor.tick()
    assert torch.get_num_threads() == 2  # outside any block (the caller's own loop) the count stays the caller's
    with governor.adaptive():
        governor.tick()
        assert torch.get_num_threads() == 1
        with governor.adaptive():  # a block inside another (train() inside run_experiment)
            governor.tick()
        assert torch.get_num_threads() == 2  # the lowered count was not the setting either
    with governor.adaptive():
        torch.set_num_threads(3)  # the caller's own change inside the block stays
    assert torch.get_num_threads() == 3


def test_threads_text():
    assert threads.threads_text({2: 3.0}) == "2"
    assert threads.threads_text({2: 8.14, 1: 3.2}) == "2 for 8.1 s, 1 for 3.2 s (other processes were using cores)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the counters are Linux's /proc/stat")
def test_a_real_busy_process_takes_a_thread_away(torch_threads):
    """The real counters: a busy loop in another process makes the governor drop to one thread."""
    if len(threads.process_cores()) < 2:
        pytest.fail("this test needs at least 2 CPUs to share (CI has 2)")
    governor = ThreadGovernor(cores=2, quota=None, window=0.3)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with governor.adaptive():
            governor.tick()
            deadline = time.monotonic() + 20  # a loop bound for a stalled machine, not a timing assertion
            while torch.get_num_threads() == 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # idle here: the busy loop is the only other work
                governor.tick()
            assert torch.get_num_threads() == 1
    finally:
        busy.kill()
        busy.wait()
    assert governor.ceiling == 2
    assert torch.get_num_threads() == 2  # given back after the block


def _config(*overrides: str) -> RunConfig:
    return apply_overrides(RunConfig(), ["model.name=lenet5", f"data.spec={SYNTHETIC}", "train.epochs=1",
                                         "train.batch_size=16", "log.quiet=true", *overrides])


def test_training_follows_the_free_cores_and_reports_it(tmp_path, monkeypatch, torch_threads):
    from cnnlab.train.engine import train

    # Another process takes a core for the first three windows, then leaves.
    seen = _fake_machine(monkeypatch, others=[1.0, 1.0, 1.0] + [0.0] * 1000)
    train(_config(), tmp_path / "run")
    assert 1 in seen and seen[-1] == 2  # lowered while the core was taken, back up once it was free
    report = RunFolder(tmp_path / "run").report.read_text()
    assert "threads" in report and "(other processes were using cores)" in report
    assert " 1 for " in report and "2 for " in report


def test_a_run_gives_back_the_count_it_lowered(tmp_path, monkeypatch, torch_threads):
    from cnnlab.train.engine import train

    seen = _fake_machine(monkeypatch, others=[1.0] * 1000)  # a core taken throughout, and after the run
    train(_config(), tmp_path / "run")
    assert seen[-1] == 1  # the last step ran at one thread
    assert torch.get_num_threads() == 2  # the caller's code after train() gets its own setting back


def test_train_threads_and_deterministic_runs_keep_one_count(tmp_path, monkeypatch, torch_threads):
    from cnnlab.train.engine import train

    for overrides, expected in ((["train.threads=1"], 1), (["train.deterministic=true"], 2)):
        seen = _fake_machine(monkeypatch, others=[1.0] * 1000)
        out = tmp_path / f"run-{expected}"
        train(_config(*overrides), out)
        assert set(seen) == {expected}  # every step at the one count, although a core was taken throughout
        assert torch.get_num_threads() == 2  # restored after the run
        lines = [line for line in RunFolder(out).report.read_text().splitlines() if line.startswith("threads")]
        assert lines and lines[0].split() == ["threads", str(expected)]


def test_a_loop_of_train_step_from_python_keeps_the_callers_count(monkeypatch, torch_threads):
    """train_step and evaluate tick, but in the caller's own loop no block would give a lowered count back."""
    from cnnlab.train.engine import evaluate, setup_run, train_step

    run = setup_run(_config())
    seen = _fake_machine(monkeypatch, others=[1.0] * 1000)  # a core taken throughout
    for x, y in run.train_loader:
        train_step(run.model, x, y, run.optimizer, run.scaler, run.step_settings)
    evaluate(run.model, run.val_loader)
    assert len(seen) > 3 and set(seen) == {2}
    assert torch.get_num_threads() == 2


def _fake_machine(monkeypatch, others: list[float]) -> list:
    """The process's governor on a FakeCpu whose other processes take ``others`` cores, window by window;
    returns the list each tick appends the thread count to."""
    fake = FakeCpu(others=others, window=0.05)
    monkeypatch.setattr(threads.GOVERNOR, "sample", fake)
    monkeypatch.setattr(threads.GOVERNOR, "clock", fake.clock)
    monkeypatch.setattr(threads.GOVERNOR, "window", 0.04)
    monkeypatch.setattr(threads.GOVERNOR, "_last", None)
    seen: list = []
    monkeypatch.setattr(threads.GOVERNOR, "tick", _recording(threads.GOVERNOR.tick, seen))
    return seen


def _recording(tick, seen: list):
    """tick, then note the thread count the next computation runs with."""

    def recorded() -> None:
        tick()
        seen.append(torch.get_num_threads())

    return recorded


def test_a_thread_count_within_the_cores_is_left_alone_and_one_above_them_is_named():
    assert thread_setting_note(None, 4, "os.sched_getaffinity", 1000) is None
    assert thread_setting_note(4, 4, "os.sched_getaffinity", 1000) is None
    note = thread_setting_note(6, 4, "os.sched_getaffinity", 1000)
    assert "train.threads=6" in note and "4 cores" in note and "os.sched_getaffinity" in note
    assert "4 or fewer" in note


def test_a_thread_count_the_operating_system_cannot_start_is_refused():
    with pytest.raises(CnnlabError, match=r"train.threads=50000 .*\(32,768.*2 cores.*2 or fewer"):
        thread_setting_note(50000, 2, "os.sched_getaffinity", 32768)


def test_the_usable_cores_are_the_affinity_lowered_to_the_container_quota(monkeypatch):
    monkeypatch.setattr(threads, "process_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(threads, "cpu_quota", lambda: None)
    assert threads.usable_cores() == (4, "os.sched_getaffinity")
    monkeypatch.setattr(threads, "cpu_quota", lambda: 2.5)
    cores, source = threads.usable_cores()
    assert cores == 2 and "quota of 2.5" in source


def test_a_run_with_more_threads_than_cores_says_so_once_and_keeps_the_count(tmp_path, monkeypatch, capsys,
                                                                             torch_threads):
    from cnnlab.train.engine import train

    monkeypatch.setattr(threads, "usable_cores", lambda: (1, "os.sched_getaffinity"))
    seen = _fake_machine(monkeypatch, others=[0.0] * 1000)
    train(_config("train.threads=2"), tmp_path / "over")
    assert set(seen) == {2}  # the count asked for is applied, not lowered
    assert capsys.readouterr().err.count("train.threads=2 is more than the 1 core this process may use") == 1
    train(_config("train.threads=1"), tmp_path / "within")
    assert "train.threads" not in capsys.readouterr().err


def test_the_cli_refuses_a_thread_count_the_operating_system_cannot_start(tmp_path, monkeypatch, cli):
    monkeypatch.setattr(threads, "os_thread_limit", lambda: 3)
    started = []
    monkeypatch.setattr(threads.GOVERNOR, "pin", lambda count=None: started.append(count))
    code, out, err = cli(["train", "--model", "lenet5", "--data", SYNTHETIC, "--epochs", "1", "--out",
                          str(tmp_path / "run"), "--set", "train.threads=4", "--quiet"])
    assert code == 2 and "train.threads=4 is more threads than the operating system can start" in err
    assert "Traceback" not in err and not started


def test_eval_ensemble_predict_probe_and_experiments_give_back_the_thread_count_they_lowered(torch_threads, tmp_path,
                                                                                             monkeypatch):
    # Their loops lower the count while another process holds a core; they left it lowered for the caller, where
    # train(), run_checks and lr_sweep put it back. An experiment's own loops (the init experiment's forward
    # passes) tick outside any train().
    from PIL import Image

    from cnnlab.experiments import run_experiment
    from cnnlab.evaluate.ensemble import run_ensemble
    from cnnlab.evaluate.evaluate import run_eval
    from cnnlab.evaluate.predict import predict_files
    from cnnlab.train.engine import train
    from cnnlab.transfer.probe import probe

    data = "synthetic:classes=3,train=48,val=12,test=12"
    config = apply_overrides(RunConfig(), ["model.name=lenet5", f"data.spec={data}", "train.epochs=1",
                                           "train.batch_size=16", "log.quiet=true", "log.curves=false"])
    train(config, tmp_path / "run")
    train(apply_overrides(config, ["train.seed=1"]), tmp_path / "other")
    images = [tmp_path / f"{k}.png" for k in range(3)]
    for k, path in enumerate(images):
        Image.new("RGB", (32, 32), (10, 80 * k, 30)).save(path)
    calls = {
        "run_eval": lambda: run_eval(tmp_path / "run", out=tmp_path / "eval", batch_size=4),
        "run_ensemble": lambda: run_ensemble([tmp_path / "run", tmp_path / "other"],
                                             out=tmp_path / "ensemble.json", batch_size=4),
        "predict_files": lambda: predict_files(tmp_path / "run", images, batch_size=1),
        "probe": lambda: probe(str(tmp_path / "run"), data, batch_size=4, cache=False),
        "run_experiment": lambda: run_experiment("init", size="tiny", out=tmp_path / "init", say=lambda line: None),
    }
    for name, call in calls.items():
        fake = FakeCpu(others=[1.0] * 1000, window=0.5)  # another process holds a core throughout
        governor = ThreadGovernor(sample=fake, clock=fake.clock, cores=2, quota=None, window=0.3)
        monkeypatch.setattr(threads, "GOVERNOR", governor)
        torch.set_num_threads(2)
        call()
        assert (1 in [count for _, count in governor.changes]), f"{name}: its loop never lowered the count"
        assert torch.get_num_threads() == 2, name
