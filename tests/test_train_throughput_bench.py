"""bench/train_throughput.py's hand loop trains the same parameters as the engine's run does.

The bench prints speeds, which no test asserts; this checks that its two sides compare like with like
when the 'fast' model's first layer is whitened and fixed.
"""

import argparse

import pytest
import torch

from _bench import load_bench
from cnnlab.config import apply_overrides, load_config
from cnnlab.layers import fused, residual
from cnnlab.train import engine

bench = load_bench("train_throughput")


@pytest.mark.parametrize("whiten", ["frozen", "frozen_block"])
def test_the_hand_loop_fixes_the_parameters_the_engine_fixes(whiten):
    (name, options, batch, chosen), = bench.parse_models("fast", whiten)
    assert chosen == whiten
    args = argparse.Namespace(model=name, options=options, classes=10, channels=1, whiten=whiten, channels_last=True)
    hand = bench.hand_model(args, torch.device("cpu"))
    hand_fixed = {name for name, p in hand.named_parameters() if not p.requires_grad}
    config = apply_overrides(load_config(bench.FAST_RECIPE), [
        f"model.whiten={whiten}", "data.spec=synthetic:classes=10,train=64,val=32,test=32,channels=1",
        "data.image_size=28", "train.batch_size=32"])
    assert hand_fixed == set(engine.setup_run(config).whiten_report.fixed_parameters)
    assert len(hand_fixed) == (1 if whiten == "frozen" else 4)  # the filters; with their bias and norm scale, shift


def test_the_fast_model_takes_the_recipes_whitening_unless_told():
    (_, _, _, whiten), (_, _, _, plain) = bench.parse_models("fast,resnet8:128")
    assert whiten == "frozen" and plain == "none"


def test_compare_times_every_setting_for_compare_steps_steps(monkeypatch):
    # --compare is what train.precision/compile/fused_norm_act: auto rest on: each setting must train in its own
    # layout, precision, compile and fused-kernel choice, for --compare-steps timed steps after the untimed
    # warm-up, in each of --compare-rounds rounds. Three channels: with one, NCHW and NHWC strides coincide.
    calls, compiled, norms, splits = [], [], [], []
    split = residual._ZeroPadSplit.apply
    monkeypatch.setattr(residual._ZeroPadSplit, "apply", lambda *args: splits.append(args) or split(*args))

    def recording_step(model, optimizer, x, y, device, dtype):
        calls.append((model, x.is_contiguous(memory_format=torch.channels_last), dtype, fused.active()))
        norms.append(sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()))
        if dtype is None and fused.active():  # the fused path's forward: how its zero-pad shortcuts run
            splits.clear()
            model(x)
            calls[-1] += (len(splits),)

    def recording_compile(model):
        compiled.append(model)
        return model

    monkeypatch.setattr(bench, "hand_step", recording_step)
    monkeypatch.setattr(torch, "compile", recording_compile)
    args = argparse.Namespace(model="resnet8", options={}, classes=10, channels=3, image_size=12, whiten="none",
                              batch_size=4, steps=1, compare_steps=5, compare_rounds=2, channels_last=True)
    results = bench.compare_settings(args, torch.device("cpu"))
    steps = bench.WARMUP_STEPS + args.compare_steps
    assert [name for name, _, _ in results] == [
        "fp32, nchw", "fp32, nhwc (channels_last)", "fp32, nhwc, BatchNorm + ReLU fused",
        "fp32, nhwc, fused, torch's zero-pad shortcut", "fp32, nhwc, no BatchNorm or ReLU (bound)",
        "bf16 autocast, nhwc", "bf16 autocast, nhwc, BatchNorm + ReLU fused", "fp32, nhwc, torch.compile",
        "bf16 autocast, nhwc, torch.compile"]
    assert len(calls) == args.compare_rounds * len(results) * steps  # the settings take turns, round after round
    assert [call[1:] for call in calls[: len(calls) // 2]] == [call[1:] for call in calls[len(calls) // 2:]]
    settings = [calls[i * steps] for i in range(len(results))]
    assert [(layout, dtype, fuse) for _, layout, dtype, fuse, *_ in settings] == [
        (False, None, False), (True, None, False), (True, None, True), (True, None, True), (True, None, False),
        (True, torch.bfloat16, False), (True, torch.bfloat16, True), (True, None, False), (True, torch.bfloat16, False)]
    # resnet8's two zero-pad shortcuts: one node each on the fused path, torch's operators in the setting that says so
    assert [setting[4:] for setting in settings[2:4]] == [(2,), (0,)]
    assert [model for model, *_ in settings[7:]] == compiled[:2]  # the last two train the compiled forward
    # resnet8's 7 BatchNorms in every setting but the bound's, and no ReLU left there either
    assert [norms[i * steps] for i in range(len(results))] == [7, 7, 7, 7, 0, 7, 7, 7, 7]
    assert not any(isinstance(m, torch.nn.ReLU) for m in settings[4][0].modules())
    assert all(rate > 0 for _, rate, _ in results)
    assert not fused.active()  # the switch ends with its setting


def test_compare_leaves_out_the_fused_setting_for_a_model_without_batchnorm_relu_pairs(monkeypatch):
    monkeypatch.setattr(bench, "hand_step", lambda *args: None)
    args = argparse.Namespace(model="lenet5", options={}, classes=10, channels=1, image_size=28, whiten="none",
                              batch_size=4, steps=1, compare_steps=1, compare_rounds=1, channels_last=True)
    names = [name for name, _, _ in bench.compare_settings(args, torch.device("cpu"))]
    assert len(names) == 5 and not any("fused" in name or "bound" in name for name in names)


def test_compare_times_torchs_zero_pad_shortcut_only_for_a_model_that_has_one(monkeypatch):
    monkeypatch.setattr(bench, "hand_step", lambda *args: None)
    args = argparse.Namespace(model="vgg_mini", options={}, classes=10, channels=1, image_size=28, whiten="none",
                              batch_size=4, steps=1, compare_steps=1, compare_rounds=1, channels_last=True)
    names = [name for name, _, _ in bench.compare_settings(args, torch.device("cpu"))]
    assert "fp32, nhwc, BatchNorm + ReLU fused" in names and not any("shortcut" in name for name in names)


def test_operators_are_ranked_by_device_time_on_a_gpu_and_cpu_time_on_the_cpu():
    # On a GPU the CPU side of an operator is mostly its launch: a CPU-time ranking put cudaLaunchKernel on
    # top. Two made-up operators whose CPU and device times disagree must rank differently per device.
    def event(key, cpu, device, count):
        return argparse.Namespace(key=key, self_cpu_time_total=cpu, self_device_time_total=device, count=count)

    events = [event("cudaLaunchKernel", 90.0, 0.0, 40), event("aten::convolution_backward", 10.0, 300.0, 8),
              event("aten::relu", 0.0, 100.0, 8)]
    on_gpu = bench.rank_operators(events, bench.profiled_time(torch.device("cuda"))[0])
    on_cpu = bench.rank_operators(events, bench.profiled_time(torch.device("cpu"))[0])
    assert on_gpu == [("aten::convolution_backward", 0.75, 8), ("aten::relu", 0.25, 8)]
    assert on_cpu == [("cudaLaunchKernel", 0.9, 40), ("aten::convolution_backward", 0.1, 8)]


def test_the_profiled_operators_on_the_cpu_are_real_torch_operators():
    # The attribute the ranking reads must exist on torch's profiler events: a renamed attribute would
    # otherwise surface only when the bench runs.
    args = argparse.Namespace(model="resnet8", options={}, classes=10, channels=1, image_size=12, whiten="none",
                              batch_size=4, steps=bench.WARMUP_STEPS + bench.PROFILE_STEPS, channels_last=True)
    batches = bench.premade_batches(args, torch.device("cpu"))
    events, _ = bench.profiled_steps(args, batches, torch.device("cpu"), None)
    ranked = bench.rank_operators(events, bench.profiled_time(torch.device("cpu"))[0])
    shares = [share for _, share, _ in ranked]
    assert len(ranked) == bench.TOP_OPS and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert any("convolution" in name for name, _, _ in ranked)  # a conv net's training step: its convolutions


def test_the_tf32_peak_leaves_torchs_matmul_setting_as_it_found_it(monkeypatch):
    # The TF32 peak turns TF32 on for its products only: left on, every later fp32 matmul of the run
    # (and the fp32 peak of each round) would run in TF32 too.
    seen = []
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, device: seen.append(
        (dtype, torch.backends.cuda.matmul.allow_tf32)) or 1.0)
    assert torch.backends.cuda.matmul.allow_tf32 is False  # torch's default, which the bench must keep
    assert bench.tf32_matmul_peak(torch.device("cpu")) == 1.0
    assert seen == [(torch.float32, True)] and torch.backends.cuda.matmul.allow_tf32 is False


def test_compare_leaves_out_the_fused_rows_where_the_kernel_cannot_be_built(monkeypatch, capsys):
    def no_compiler(verbose=False):
        raise fused.FusedKernelUnavailable("RuntimeError: no C++ compiler")

    monkeypatch.setattr(fused, "load", no_compiler)
    monkeypatch.setattr(bench, "hand_step", lambda *args: None)
    args = argparse.Namespace(model="resnet8", options={}, classes=10, channels=1, image_size=12, whiten="none",
                              batch_size=4, steps=1, compare_steps=1, compare_rounds=1, channels_last=True)
    names = [name for name, _, _ in bench.compare_settings(args, torch.device("cpu"))]
    assert "fp32, nhwc, no BatchNorm or ReLU (bound)" in names and not any("fused" in name for name in names)
    assert "could not be built here (RuntimeError: no C++ compiler)" in capsys.readouterr().out


# What oneDNN's verbose mode writes for one convolution, and for a reorder --convs leaves out (torch 2.14.1's oneDNN)
CONV_LINE = ("onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,"
             "src:f32::blocked:acdb::f0 wei:f32:a:blocked:Acdb16a::f0 bia:undef::undef::: dst:f32::blocked:acdb::f0,"
             "attr-scratchpad:user,alg:convolution_direct,mb128_ic16oc16_ih28oh28kh3sh1dh0ph1_iw28ow28kw3sw1dw0pw1,1.72388")
REORDER_LINE = ("onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 "
                "dst:f32::blocked:Acdb16a::f0,attr-scratchpad:user,,16x16x3x3,0.00708008")


def test_convs_reads_each_convolutions_pass_shape_and_time_from_onednns_log():
    runs = bench.parse_conv_runs(["onednn_verbose,info,cpu,runtime:OpenMP", CONV_LINE, REORDER_LINE, CONV_LINE,
                                  CONV_LINE.replace("mb128_", "g4mb128_").replace("1.72388", "0.5")])
    assert [(run.kind, run.milliseconds) for run in runs] == [("forward_training", 1.72388)] * 2 + [
        ("forward_training", 0.5)]
    assert runs[0].flops == 2 * 128 * 16 * 16 * 28 * 28 * 3 * 3  # worked by hand: 2 x N x C_in x C_out x H x W x k x k
    assert runs[2].flops == runs[0].flops // 4  # each output channel of a 4-group conv sums 16 / 4 input channels
    table = bench.conv_table(runs, steps=2)
    assert [(calls, ms) for _, calls, ms, _ in table] == [(1, 1.72388), (0, 0.25)]
    assert "groups 4" in table[1][0] and "16 -> 16" in table[0][0] and "28 -> 28" in table[0][0]
    assert (runs[0].source_type, runs[0].channels_last, runs[0].bias) == ("f32", True, False)
    other = bench.parse_conv_runs([CONV_LINE.replace("src:f32::blocked:acdb", "src:bf16::blocked:abcd").replace(
        "bia:undef::undef:::", "bia:bf16::blocked:a::f0")])[0]
    assert (other.source_type, other.channels_last, other.bias) == ("bf16", False, True)
    assert other.layer != runs[0].layer  # another data type and layout: another convolution to call alone


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch was built without oneDNN")
def test_convs_finds_every_convolution_flop_torchs_flop_counter_counts():
    # A step of 3x3 convolutions (oneDNN runs those at any batch and thread count), one strided; the first one's
    # input needs no gradient, so it has no backward_data pass, and neither count may have one. No grouped conv:
    # torch 2.14.1's FlopCounterMode counts a grouped conv's weight gradient as if it had one group (g times too
    # many FLOPs; the parsing test above checks groups by hand).
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(16, 10)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 12, 12).contiguous(memory_format=torch.channels_last)
    y = torch.arange(4)

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()

    step()
    runs = bench.parse_conv_runs(bench.onednn_log(step))
    with FlopCounterMode(display=False) as counter:
        step()
    counted = sum(flops for op, flops in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert sum(run.flops for run in runs) == counted > 0
    assert [run.kind for run in runs].count("backward_data") == 2
    assert [run.kind for run in runs].count("backward_weights") == [run.kind for run in runs].count(
        "forward_training") == 3
    assert all(run.milliseconds > 0 for run in runs)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch was built without oneDNN")
def test_convs_calls_each_convolution_alone_as_the_step_ran_it():
    # --convs' second table times each convolution shape of the step on its own. Called alone, it must run the
    # very primitives the step ran: the same problem, passes, data type, layout and bias. The first conv sees one
    # channel, whose channels_last and NCHW tensors torch tells apart only by their strides; the second has no
    # bias, a stride, groups and dilation; two layers share the third's shape.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=2, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 12, 12).to(memory_format=torch.channels_last)
    y = torch.arange(4)

    def steps() -> None:
        for _ in range(2):
            torch.nn.functional.cross_entropy(model(x), y).backward()

    steps()
    runs = bench.parse_conv_runs(bench.onednn_log(steps))
    layers = bench.layer_passes(runs, steps=2)
    assert [per_step for _, _, per_step in layers] == [1, 1, 2]
    assert [sorted(kinds) for _, kinds, _ in layers][0] == ["backward_weights", "forward_training"]
    assert [conv.bias for conv, _, _ in layers] == [True, False, True]
    for conv, kinds, _ in layers:
        alone = bench.parse_conv_runs(bench.onednn_log(bench.isolated_conv(conv, kinds)))
        in_step = {(run.kind, run.layer, run.bias) for run in runs if run.layer == conv.layer}
        assert sorted((run.kind, run.layer, run.bias) for run in alone) == sorted(in_step)
    rows = bench.layer_calls(runs, steps=2)
    assert [row.per_step for row in rows] == [1, 1, 2]
    assert "groups 2" in rows[1].name and "(forward, weight gradient)" in rows[0].name
    assert all("other primitives" not in row.name and row.torch_ms > 0 and row.onednn_ms > 0 for row in rows)


def test_the_profiled_and_listed_steps_are_as_many_as_asked_even_with_few_batches(monkeypatch):
    # --convs divides what oneDNN ran by CONV_STEPS, and --steps may give fewer batches than the warm-up and
    # those steps together: the batches are taken again from the first, so every asked step runs.
    ran = []
    monkeypatch.setattr(bench, "hand_model", lambda args, device: torch.nn.Linear(2, 2))
    monkeypatch.setattr(bench, "hand_step", lambda model, optimizer, x, y, device, dtype: ran.append(int(y)))
    batches = [(torch.zeros(1, 2), torch.tensor(index)) for index in range(4)]
    run = bench.warmed_up_steps(argparse.Namespace(), batches, torch.device("cpu"), None, steps=bench.CONV_STEPS)
    assert ran == [step % 4 for step in range(bench.WARMUP_STEPS)]
    ran.clear()
    run()
    assert ran == [step % 4 for step in range(bench.WARMUP_STEPS, bench.WARMUP_STEPS + bench.CONV_STEPS)]


def test_convs_weighs_the_memory_the_fused_kernel_moves_in_a_step(capsys):
    # --convs' last lines: the fused kernel's calls in one hand-loop step (not the warm-up's), the bytes their
    # passes move, and whether the MFU goal's budget besides the convolutions can hold them at the memory's speed.
    args = argparse.Namespace(model="resnet8", options={}, classes=10, channels=1, whiten="none", channels_last=True)
    x = torch.randn(4, 1, 12, 12).contiguous(memory_format=torch.channels_last)
    batches = [(x, torch.arange(4))]
    with fused.enabled():
        events, calls = bench.profiled_steps(args, batches, torch.device("cpu"), None)
    kernel_ms = bench.norm_kernel_ms(events)
    assert len(calls) == fused.fusable_pairs(bench.hand_model(args, torch.device("cpu"))) == 7
    assert kernel_ms > 0
    moved = sum(call.step_bytes for call in calls)
    bench.print_norm_traffic(calls, kernel_ms, bandwidth=moved / 2e-3, outside=(5.0, 9.0))  # 2 ms at that speed
    lines = capsys.readouterr().out.splitlines()
    assert f"read and write {moved / 1e6:,.1f} MB a step" in lines[0] and "that is 2.00 ms" in lines[0]
    assert "3 adding a residual" in lines[0]
    assert "3.00 ms for everything else" in lines[1] and f"took {9.0 - kernel_ms:.2f} ms here" in lines[1]
    bench.print_norm_traffic(calls, kernel_ms, bandwidth=moved / 6e-3, outside=(5.0, 9.0))  # 6 ms: past the budget
    assert "out of reach" in capsys.readouterr().out
    # no budget at all (the convolutions alone exceed the goal's step): no negative budget, no advice about the norms
    bench.print_norm_traffic(calls, kernel_ms, bandwidth=moved / 2e-3, outside=(-5.0, 9.0))
    assert capsys.readouterr().out.count("\n") == 1
    with fused.enabled(False):
        _, calls = bench.profiled_steps(args, batches, torch.device("cpu"), None)
    bench.print_norm_traffic(calls, 1.0, bandwidth=1e9, outside=(5.0, 9.0))
    assert calls == [] and capsys.readouterr().out == ""  # torch's BatchNorm and ReLU: nothing of the kernel's to weigh


def test_the_mfu_goals_budget_besides_the_convolutions_is_never_negative():
    # 1 GFLOP at a 100 GFLOP/s peak: MFU 50% allows a 20 ms step
    assert "so everything else at most 5.00 ms" in bench.conv_budget_line(1e9, 15.0, 100e9)
    line = bench.conv_budget_line(1e9, 25.0, 100e9)  # it printed "everything else at most -5.00 ms"
    assert "the convolutions alone take 25.00 ms: they keep the model under the goal" in line and "-" not in line


def test_the_copy_bandwidth_counts_a_read_and_a_write_of_each_byte(monkeypatch):
    monkeypatch.setattr(bench, "COPY_MIB", 1)
    clock = iter(range(100))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 0.5)  # every copy takes 0.5 s
    assert bench.copy_bandwidth() == 2 * 2**20 / 0.5


def _stopped_train(signum, finished: bool):
    """The engine's train as a stop signal leaves it (TrainResult's own flags), without training."""

    def train(config, out, console=None, on_epoch_end=None):
        return engine.TrainResult(run_dir=out, best_val_acc=0.5, best_epoch=1, final={}, interrupted=not finished,
                                  checkpoint_saved=not finished, stop_requested=True, stop_signal=signum)

    return train


@pytest.mark.parametrize("signum, finished, code, word", [(2, False, 130, "interrupted"), (2, True, 130, "interrupted"),
                                                           (15, False, 143, "stopped by SIGTERM")])
def test_an_engine_run_a_stop_signal_ended_stops_the_bench(signum, finished, code, word, monkeypatch, capsys):
    """The engine stops at its next step on Ctrl-C or SIGTERM and returns: the bench read the cut-short run's rate
    as a measurement, exited 0 and went on with the next round."""
    monkeypatch.setattr(bench, "train", _stopped_train(signum, finished))
    monkeypatch.setattr(bench, "read_metrics", lambda path: pytest.fail("a stopped run's rate is no measurement"))
    args = argparse.Namespace(model="lenet5", options={}, whiten="none", steps=1, batch_size=16, classes=10,
                              channels=1, image_size=28, precision="fp32", channels_last=True, fused="off",
                              device="cpu")
    with pytest.raises(SystemExit) as exited:
        bench.run_main(lambda: bench.run_engine(args))
    assert exited.value.code == code
    assert capsys.readouterr().err.strip() == (f"{word} during cnnlab's engine run of lenet5: the bench stopped there; "
                                               "the lines above are what it measured.")


def test_an_interrupted_bench_prints_the_summary_of_the_models_it_measured(monkeypatch, capsys):
    import sys
    from types import SimpleNamespace

    row = {"model": "resnet8", "batch": 16, "fused": False, "engine": 100.0, "hand": 110.0, "ratio": 100 / 110,
           "mfu_engine": 0.1, "mfu_hand": 0.11, "paired_engine": 0.1, "paired_hand": 0.11, "round_peaks": (1e9, 1e9)}
    measured = []

    def bench_model(args, device, dtype, peaks):
        if measured:  # the second model's engine run is stopped by a Ctrl-C
            stopped = SimpleNamespace(interrupted=True, stop_requested=True, stop_signal=2)
            bench.stop_if_interrupted(stopped, "cnnlab's engine run of lenet5")
        measured.append(args.model)
        return row

    monkeypatch.setattr(bench, "bench_model", bench_model)
    monkeypatch.setattr(bench, "matmul_peak", lambda dtype, device: 1e9)
    monkeypatch.setattr(bench, "keep_freed_memory", lambda: "kept")  # this process's heap is left as it is
    monkeypatch.setattr(sys, "argv", ["train_throughput.py", "--models", "resnet8:16,lenet5:16", "--steps", "1"])
    with pytest.raises(SystemExit) as exited:
        bench.run_main(bench.main)
    assert exited.value.code == 130
    captured = capsys.readouterr()
    assert "goal >= 50%; interrupted: 1 of 2 models measured):" in captured.out
    assert captured.out.strip().splitlines()[-1].startswith("  resnet8    batch   16: cnnlab     100 images/s")
    assert captured.err.strip().startswith("interrupted during cnnlab's engine run of lenet5")
