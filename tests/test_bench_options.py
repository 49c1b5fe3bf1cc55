"""Every bench script refuses bad input with one paragraph and exit 2, prints the machine and load average,
and accepts the command lines the docs show for it.

A bench that dies with a traceback on ``--rounds 0`` or an unknown model name is as unusable as a
command that does; these run each script as a user would, with inputs it must refuse before
measuring anything.
"""

import argparse
import os
import subprocess
import sys

import pytest

from _bench import BENCH, load_bench
from cnnlab.data.sources import locate_fashion_mnist
from test_docs import BENCH as DOC_BENCH_EXAMPLES
from test_docs import words


def _bench(script: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _bench_here(script: str, *args: str, capsys) -> subprocess.CompletedProcess:
    """``script`` run with ``args`` in this process, as its ``__main__`` runs it (run_main(main), argv as
    given): the refusals below end in the parser or in cnnlab's first check, before anything is measured,
    so a fresh interpreter (3 s of imports each) would only time torch's import.
    test_a_refusal_reads_the_same_from_a_fresh_process keeps one of each kind in a real process."""
    import torch

    module = load_bench(script.removesuffix(".py"))
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(BENCH / script), *args]
    try:
        with pytest.raises(SystemExit) as exited:
            module.run_main(module.main)
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)  # as it was, should a bench set it before refusing
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, exited.value.code, captured.out, captured.err)


def _main_here(script: str, *args: str, capsys, monkeypatch) -> str:
    """``script``'s ``main`` run to its end in this process with ``args``; what it printed on stdout.

    For the benches whose output, not their process, is under test: a fresh interpreter would add torch's
    (and torchvision's) imports, seconds each time. The child processes a bench starts itself stay real, with
    OMP_NUM_THREADS=1 as the fresh bench had; test_a_refusal_reads_the_same_from_a_fresh_process runs loader.py
    by the interpreter, and cpu_heap.py's children are that script run by the interpreter."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    module = load_bench(script.removesuffix(".py"))
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng():  # a bench seeds torch's generator: the later tests in this worker keep theirs
            module.main()
    finally:
        torch.set_num_threads(threads)  # as it was: a bench's --threads sets it for the rest of the process
    return capsys.readouterr().out


def _assert_refused(done: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, nothing measured, one paragraph on stderr (argparse's usage lines, then the error)."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "\n\n" not in done.stderr.strip()  # one paragraph
    message = done.stderr.strip().splitlines()[-1]
    assert "error: " in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("script, args, words", [
    ("cli_startup.py", ["--repeats", "0"], ["--repeats", "below 1"]),
    ("contention.py", ["--repeats", "0", "--skip-fashion"], ["--repeats", "below 1"]),
    ("cpu_heap.py", ["--rounds", "0"], ["--rounds", "below 1"]),
    ("cpu_heap.py", ["--models", "resnet8:0"], ["resnet8:0", "NAME:BATCH"]),
    ("cpu_heap.py", ["--config", "nosuch.yaml"], ["nosuch.yaml", "no such file", "--no-train"]),
    ("cpu_heap.py", ["--config", "/"], ["--config /: a folder, not a file"]),
    ("cpu_heap.py", ["--no-train", "--no-hand"], ["nothing to measure"]),
    ("eval_throughput.py", ["--rounds", "0", "--data", "digits"], ["--rounds", "below 1"]),
    ("eval_throughput.py", ["--batch-size", "two"], ["--batch-size", "not a whole number"]),
    # loader.py --batch-size 0: test_a_refusal_reads_the_same_from_a_fresh_process, here and in a fresh process
    ("loader.py", ["--epochs-limit", "2"], ["--epochs-limit", "above 1"]),
    ("loader.py", ["--threads", "0"], ["--threads", "below 1"]),
    ("loader.py", ["--device", "npu"], ["--device 'npu'"]),
    ("loader.py", ["--device", "meta"], ["--device 'meta'", "cnnlab runs on"]),
    ("loader.py", ["--batch-size", "40000"], ["--batch-size 40000 makes 1 whole batch of", "at most 30,000)."]),
    ("loader.py", ["--batch-size", "20000", "--epochs-limit", "0.1"], ["times 1 of them", "at most 30,000) or a larger "
                                                                        "--epochs-limit."]),
    ("summary_vs_torchinfo.py", ["--repeats", "0"], ["--repeats", "below 1"]),
    ("summary_vs_torchinfo.py", ["--batches", "0", "4"], ["--batches", "below 1"]),
    ("train_throughput.py", ["--rounds", "0"], ["--rounds", "below 1"]),
    ("train_throughput.py", ["--steps", "-3"], ["--steps", "below 1"]),
    ("train_throughput.py", ["--models", "resnet8:big"], ["resnet8:big", "NAME:BATCH"]),
    ("train_throughput.py", ["--device", "npu"], ["--device 'npu'"]),
    ("train_throughput.py", ["--device", "mps"], ["--device 'mps'", "cnnlab runs on"]),
    ("train_throughput.py", ["--whiten", "frozen", "--models", "resnet8:64"], ["--whiten", "has no 'fast'"]),
    ("train_throughput.py", ["--compare-rounds", "0"], ["--compare-rounds", "below 1"]),
    ("train_throughput.py", ["--fused", "sometimes"], ["--fused", "sometimes"]),
    ("train_throughput.py", ["--fused", "on", "--layout", "nchw"], ["--fused on", "give --layout nhwc"]),
    ("time_to_accuracy.py", ["--baseline-goal", "91"], ["--baseline-goal", "0.91 for 91%"]),
    ("time_to_accuracy.py", ["--baseline-minutes", "0"], ["--baseline-minutes", "above 0"]),
    ("time_to_accuracy.py", ["--score-every", "0"], ["--score-every", "below 1"]),
])
def test_a_bad_option_is_refused_before_anything_is_measured(script, args, words, capsys):
    _assert_refused(_bench_here(script, *args, capsys=capsys), *words)


@pytest.mark.parametrize("script, args, words", [
    # eval_throughput.py --model nosuchnet: test_a_refusal_reads_the_same_from_a_fresh_process, here and fresh
    ("eval_throughput.py", ["--data", "nosuchdata"], ["nosuchdata", "digits, fashion-mnist"]),
    ("eval_throughput.py", ["--model", "alexnet", "--data", "digits"], ["too small for alexnet", "digits's 32 px"]),
    ("time_to_accuracy.py", ["--config", "nosuch.yaml"], ["nosuch.yaml", "does not exist"]),
    ("time_to_accuracy.py", ["--set", "train.nosuchkey=1", "--no-baseline"], ["train.nosuchkey"]),
    # a model too big for the images: found when its turn came, after the models before it had run
    ("train_throughput.py", ["--models", "fast:16,vgg16:16", "--steps", "1", "--rounds", "1", "--classes", "2"],
     ["Input 1x28x28 is too small for vgg16", "give a larger --image-size"]),
    ("cpu_heap.py", ["--no-train", "--models", "resnet8:16,vgg16:16", "--steps", "1", "--rounds", "1"],
     ["Input 1x28x28 is too small for vgg16", "name another model in --models"]),
])
def test_cnnlab_s_own_refusal_is_one_paragraph_and_exit_2(script, args, words, capsys):
    # cnnlab's message (unknown model, data spec, config file or key) as the cnnlab commands print it
    _assert_refused(_bench_here(script, *args, capsys=capsys), *words)


@pytest.mark.parametrize("script, args, words", [
    ("loader.py", ["--batch-size", "0"], ["--batch-size", "below 1"]),  # the parser's refusal
    ("eval_throughput.py", ["--model", "nosuchnet", "--data", "digits"], ["nosuchnet", "cnnlab models"]),  # cnnlab's
])
def test_a_refusal_reads_the_same_from_a_fresh_process(script, args, words, capsys):
    # what a user sees: the script run by the interpreter, its __main__ block included; and in this process, as
    # the two tests above check their cases (these two are left out of their lists: they are checked here)
    fresh = _bench(script, *args)
    _assert_refused(fresh, *words)
    here = _bench_here(script, *args, capsys=capsys)
    _assert_refused(here, *words)
    assert (here.returncode, here.stderr.strip().splitlines()[-1]) == (fresh.returncode,
                                                                       fresh.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("script, args, words", [
    # an unknown name was found only when its turn came, after the models before it were measured
    ("train_throughput.py", ["--models", "nosuch"], ["--models item 'nosuch'", "Unknown model 'nosuch'"]),
    ("train_throughput.py", ["--models", "lenet5:32,rsenet8:4"], ["'rsenet8:4'", "Closest names: resnet8"]),
    ("cpu_heap.py", ["--models", "nosuch", "--no-train"], ["--models item 'nosuch'", "Unknown model 'nosuch'"]),
    # too few synthetic images for the classes: refused by the data source after measuring, about a spec
    # ("synthetic:classes=10 with train=8") the user never wrote
    ("train_throughput.py", ["--models", "resnet8:8", "--steps", "1", "--rounds", "1"],
     ["--steps 1 of resnet8's batch 8 make 8 synthetic training images, fewer than --classes 10",
      "Raise --steps to at least 2"]),
    ("train_throughput.py", ["--models", "resnet8:2", "--steps", "10", "--compare", "--compare-steps", "1"],
     ["untimed steps and --compare-steps 1", "Raise --compare-steps to at least"]),
    ("train_throughput.py", ["--models", "resnet8:64", "--classes", "1"], ["--classes 1 is one class"]),
    ("cpu_heap.py", ["--models", "resnet8:1", "--steps", "1", "--no-train"],
     ["untimed steps and --steps 1 of resnet8's batch 1", "fewer than the 10 classes", "Raise --steps"]),
    # a recipe the train runs refuse with --epochs: said by the first train child, after the hand loop's rounds
    ("cpu_heap.py", ["--models", "resnet8:16", "--steps", "2", "--rounds", "1", "--config",
                     str(BENCH.parent / "recipes" / "lenet5-digits.yaml"), "--epochs", "1"],
     ["schedule.warmup_epochs=1.0 must be shorter than the run (train.epochs=1)"]),
])
def test_a_model_or_size_the_bench_cannot_run_is_refused_before_the_first_measurement(script, args, words, capsys):
    done = _bench_here(script, *args, capsys=capsys)
    _assert_refused(done, *words)
    assert done.stdout == ""  # not even the machine line: nothing was measured


def test_the_tutorial_baseline_is_refused_against_a_recipe_on_other_data(capsys):
    # The baseline trains on Fashion-MNIST: a recipe on digits would be timed against other data.
    done = _bench_here("time_to_accuracy.py", "--set", "data.spec=digits", capsys=capsys)
    _assert_refused(done, "data.spec='digits'", "--no-baseline")


def test_summary_bench_without_torchinfo_says_how_to_install_it():
    # torchinfo missing is a setup problem, not a crash: block its import whether or not it is installed.
    code = ("import runpy, sys; sys.modules['torchinfo'] = None; sys.path.insert(0, sys.argv[1]); "
            "sys.argv = [sys.argv[2], '--repeats', '1']; runpy.run_path(sys.argv[0], run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code, str(BENCH), str(BENCH / "summary_vs_torchinfo.py")],
                          capture_output=True, text=True, timeout=120)
    _assert_refused(done, "torchinfo", "pip install")
    assert done.stdout == ""  # refused before the first measurement


def test_loader_bench_prints_the_machine_and_the_load_average_before_and_after(capsys, monkeypatch):
    # In this process (its DataLoader workers are still processes of their own): what it prints is under test here,
    # and test_a_refusal_reads_the_same_from_a_fresh_process runs loader.py by the interpreter.
    assert locate_fashion_mnist() is not None, "Fashion-MNIST is missing: make test installs it"
    out = _main_here("loader.py", "--epochs-limit", "0.01", "--batch-size", "64", "--threads", "1", capsys=capsys,
                     monkeypatch=monkeypatch)
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "load average before: " in lines[0]
    assert lines[-1].startswith("load average after: ")
    assert "speed-up: " in lines[-2]  # the ratio of the two sides measured in this run


def test_heap_bench_runs_each_side_in_a_fresh_process_with_its_heap(capsys, monkeypatch):
    # each child checks that its heap came out as its side says (kept, or left to glibc) and exits 1 otherwise;
    # the children are fresh processes of bench/cpu_heap.py, the bench that starts them runs in this one
    out = _main_here("cpu_heap.py", "--models", "resnet8:4", "--steps", "1", "--rounds", "1", "--no-train",
                     capsys=capsys, monkeypatch=monkeypatch)
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and "load average" in lines[0]
    assert [line.split(" | ")[1] for line in lines if line.startswith("| hand loop")] == ["glibc", "kept"]
    assert lines[-2].startswith("hand loop, resnet8:4: kept / glibc ") and lines[-1].startswith("load average")


def test_heap_bench_children_get_the_heap_of_their_side(monkeypatch):
    bench = load_bench("cpu_heap")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")  # would make glibc take the user's value on both sides
    monkeypatch.setenv("CNNLAB_HEAP", "glibc")
    glibc, kept = bench.environment("glibc"), bench.environment("kept")
    assert glibc["CNNLAB_HEAP"] == "glibc" and "CNNLAB_HEAP" not in kept
    assert not any(key.startswith("MALLOC_") for key in [*glibc, *kept])


class _Parsed(Exception):
    """Raised right after a bench's parser accepted its arguments: the test stops before any measuring."""


@pytest.mark.parametrize("line", sorted({line for _, line in DOC_BENCH_EXAMPLES}))
def test_every_bench_command_in_the_docs_is_accepted_by_its_script_s_own_parser(line, monkeypatch):
    # tests/test_docs.py checks that each option's name appears in the script; this runs the script's
    # argparse parser itself on the documented line, so a value it would refuse (a choice, a count, a
    # type) or an option it spells differently fails here.
    argv = words(line)[1:]  # the script, then its arguments
    script = argv[0].removeprefix("bench/").removesuffix(".py").removesuffix(".sh")
    if script == "gpu_check":  # the shell script hands its arguments to gpu_check.py's parse_args
        assert load_bench("gpu_check").parse_args(argv[1:]) is not None
        return
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parse(parser, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(_Parsed):
        load_bench(script).main()


def test_the_shared_bench_module_imports_no_torch():
    # bench/cli_startup.py imports it and times `python -c "import torch"` against whole cnnlab processes:
    # torch loaded in the timing process itself would cost every run its memory and start-up for nothing.
    code = "import sys; sys.path.insert(0, sys.argv[1]); import _machine; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# A bench whose child process fails (a cnnlab command, the hand loop, a fresh-process timing) ends with one
# paragraph naming that command and quoting the end of its stderr: exit 2 when the child refused its input,
# else 1, never a CalledProcessError traceback. Each case runs one of the bench's own functions under its
# entry point (run_main), on input that makes the child fail at once, without measuring anything. The child is a
# real process, which is what fails; the bench that starts it runs in this process (run_main's exit and its
# message on stderr read the same here, and a fresh interpreter for it cost up to 3 s of imports).
@pytest.mark.parametrize("script, call, code, words", [
    # `cnnlab eval` on a folder that is no run: cnnlab refuses it (exit 2), and so does the bench
    ("contention", lambda bench, folder: bench.eval_rate(folder), 2, ["cnnlab eval", "refused its input", "--json"]),
    # the hand loop's child is the bench itself: an unknown model is cnnlab's refusal there too
    ("contention", lambda bench, folder: bench.hand_rate("nosuch.yaml", 1, 32), 2,
     ["--hand-loop nosuch.yaml", "refused its input", "nosuch.yaml"]),
    # a python -c child that dies with a traceback: exit 1, its status and last lines in the message
    ("summary_vs_torchinfo", lambda bench, folder: bench.first_call("cnnlab", 1, 0), 1,
     ["first cnnlab summary call", "exit status 1", "nosuchnet"]),
    ("cli_startup", lambda bench, folder: bench.run_once([sys.executable, "-m", "cnnlab", "summary", "nosuchnet"], {}),
     2, ["cnnlab summary nosuchnet", "refused its input", "nosuchnet"]),
], ids=["contention-eval_rate", "contention-hand_rate", "summary_vs_torchinfo-first_call", "cli_startup-run_once"])
def test_a_failed_child_process_is_one_paragraph_naming_the_command(script, call, code, words, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the children, as a fresh bench had it (contention unsets it)
    bench = load_bench(script)
    if script == "summary_vs_torchinfo":
        monkeypatch.setattr(bench, "MODEL", "nosuchnet")  # its first-call child builds a model no registry holds
    with pytest.raises(SystemExit) as exited:
        bench.run_main(lambda: call(bench, tmp_path))
    captured = capsys.readouterr()
    assert exited.value.code == code, captured.err
    message = captured.err.strip()
    assert message.startswith("error: the command `") and "\n\n" not in message  # one paragraph
    assert "CalledProcessError" not in message and not message.startswith("Traceback")
    for word in words:
        assert word in message, message
    # the child's own last line is quoted as it wrote it
    assert message.splitlines()[-1].startswith("  | ")
    assert captured.out == ""  # the child's output was captured (or discarded) by the bench, not printed


def test_a_child_s_message_keeps_its_last_lines_and_counts_what_it_drops():
    machine = load_bench("_machine")
    STDERR_TAIL, ChildFailed, run_child = machine.STDERR_TAIL, machine.ChildFailed, machine.run_child
    program = "import sys\nfor i in range(20): print(f'line {i}', file=sys.stderr)\nsys.exit(5)"
    with pytest.raises(ChildFailed) as failed:
        run_child([sys.executable, "-c", program], name="the twenty-line program")
    text = str(failed.value)
    assert failed.value.code == 5 and "`the twenty-line program` failed with exit status 5" in text
    quoted = [line.removeprefix("  | ") for line in text.splitlines() if line.startswith("  | ")]
    assert quoted == [f"line {i}" for i in range(20 - STDERR_TAIL, 20)]
    assert "Its stderr ends:" in text  # the earlier lines were dropped, and the heading says so


def test_cli_startup_names_the_machine_as_the_other_benches_do(monkeypatch, capsys):
    # Its first line comes from the shared helper ("machine: CPU, N cores"), not a "cpu:" line of its own.
    bench = load_bench("cli_startup")
    monkeypatch.setattr(bench, "median_time", lambda argv, repeats, fresh_cache=False: 1.0)  # nothing is timed
    monkeypatch.setattr(sys, "argv", ["cli_startup.py", "--repeats", "1"])
    bench.main()
    first = capsys.readouterr().out.splitlines()[0]
    assert first == load_bench("_machine").machine_line()
    assert first.startswith("machine: ") and (first.endswith(" cores") or first.endswith(" 1 core"))


def test_the_contention_hand_loop_trains_the_recipes_model_at_its_batch_and_precision(monkeypatch):
    """It used to train plain vgg_mini (220,954 parameters) in fp32 against the fast recipe's table (381,962) in
    bf16, so its cnnlab / hand loop ratio compared two networks. Now each side trains what the recipe trains."""
    import cnnlab.models
    import torch

    from cnnlab.config import load_config
    from cnnlab.train.engine import resolve_precision

    contention = load_bench("contention")
    monkeypatch.setattr(contention, "HAND_SECONDS", 0.0)
    monkeypatch.setattr(contention, "HAND_MIN_STEPS", 1)
    built, autocasts = [], []
    real_create, real_autocast = cnnlab.models.create_model, torch.autocast

    def create(*args, **kwargs):
        built.append(real_create(*args, **kwargs))
        return built[-1]

    def spy_autocast(device_type, dtype=None, enabled=True, **kwargs):
        autocasts.append(dtype if enabled else None)
        return real_autocast(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(cnnlab.models, "create_model", create)
    monkeypatch.setattr(torch, "autocast", spy_autocast)
    threads = torch.get_num_threads()
    try:
        assert contention.hand_loop("recipes/fashion-mnist-fast.yaml", 1, 28) > 0
    finally:
        torch.set_num_threads(threads)
    recipe = load_config(contention.ROOT / "recipes" / "fashion-mnist-fast.yaml")
    expected = real_create(recipe.model.name, num_classes=10, in_chans=1, **recipe.model.options)
    assert sum(p.numel() for p in built[0].parameters()) == sum(p.numel() for p in expected.parameters())
    assert autocasts[0] == resolve_precision(recipe.train.precision, torch.device("cpu"))
    from cnnlab.models._base import first_conv

    assert not built[0].get_parameter(f"{first_conv(built[0])[0]}.weight").requires_grad  # whitened: frozen


def test_time_to_accuracy_removes_its_temporary_folder_when_the_recipe_is_refused(tmp_path, monkeypatch, capsys):
    # The recipe's run is refused in cnnlab's first check (a model name no registry holds), after the bench made
    # the temporary folder for it (no --out): the refusal must not leave that folder behind.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    done = _bench_here("time_to_accuracy.py", "--set", "model.name=nosuchnet", "--no-baseline", capsys=capsys)
    _assert_refused(done, "nosuchnet")
    assert list(tmp_path.glob("cnnlab-tta-bench-*")) == []  # (torch may keep caches of its own there)


def test_every_document_a_bench_cites_is_in_the_repository():
    """Two docstrings sent the reader to DESIGN.md, which the repository does not hold."""
    import re

    root = BENCH.parent
    cited = {(path.name, name) for path in BENCH.iterdir() if path.suffix in (".py", ".sh")
             for name in re.findall(r"[\w./-]+\.md\b", path.read_text())}
    assert cited, "the benches cite docs/speed.md"
    assert [(script, name) for script, name in sorted(cited) if not (root / name).is_file()] == []


def test_a_ctrl_c_ends_a_bench_with_one_line_and_exit_130(capsys):
    """Outside a training run (which stops at its next step, and which the benches check), a Ctrl-C is Python's
    KeyboardInterrupt: one line after what was printed, exit 130, no traceback; a SIGTERM the engine names, 143."""
    import signal

    machine = load_bench("_machine")

    def ctrl_c():
        print("round 1: measured")
        raise KeyboardInterrupt

    for main, code, line in (
            (ctrl_c, 130, "interrupted: the bench stopped there; the lines above are what it measured."),
            (lambda: machine.stop_if_interrupted(argparse.Namespace(interrupted=True, stop_requested=True,
                                                                    stop_signal=signal.SIGTERM), "the recipe's run"),
             143, "stopped by SIGTERM during the recipe's run: the bench stopped there; the lines above are what it "
                  "measured.")):
        with pytest.raises(SystemExit) as exited:
            machine.run_main(main)
        captured = capsys.readouterr()
        assert exited.value.code == code and captured.err.strip() == line
    assert captured.out == "" and "round 1: measured" not in captured.err
    # a run that neither a signal nor its end cut short goes on
    machine.stop_if_interrupted(argparse.Namespace(interrupted=False, stop_requested=False, stop_signal=None), "")


@pytest.mark.parametrize("script", sorted(path.name for path in BENCH.glob("*.py")
                                          if path.name not in ("_machine.py", "gpu_check.py")))
def test_every_bench_run_as_a_script_ends_a_ctrl_c_with_one_line(script, capsys, monkeypatch):
    """Run as its own __main__, each bench goes through run_main: neighbours.py called main() bare, and a Ctrl-C
    in its minute-long search ended in a traceback. The Ctrl-C lands where every bench starts, in its parser.
    (gpu_check.py has its own handling, per check: tests/test_gpu_check.py.)"""
    import runpy

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", ctrl_c)
    monkeypatch.setattr(sys, "argv", [str(BENCH / script)])
    monkeypatch.syspath_prepend(str(BENCH))  # as Python puts a script's folder first: its `from _machine import`
    with pytest.raises(SystemExit) as exited:
        try:
            runpy.run_path(str(BENCH / script), run_name="__main__")
        except KeyboardInterrupt:  # through to pytest, it would end the whole session
            pytest.fail(f"{script} let the Ctrl-C through as a traceback (its __main__ does not call run_main)")
    assert exited.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted: the bench stopped there; the lines above are what it measured."
