"""Time cnnlab.summary against torchinfo.summary on the same ResNet-152 at 3x224x224.

Run: .venv/bin/python bench/summary_vs_torchinfo.py   (needs: pip install torchinfo)
Both analyse the same model object in this process; each is timed as the best of a few runs.
"""

from __future__ import annotations

import time

import torch

import cnnlab

REPEATS = 3
INPUT = (3, 224, 224)


def best_time(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import torchinfo

    torch.manual_seed(0)
    model = cnnlab.create_model("resnet152")  # real weights on the CPU, as a user would have
    ours = best_time(lambda: cnnlab.summary(model, INPUT))
    theirs = best_time(lambda: torchinfo.summary(model, input_size=(1, *INPUT), verbose=0))
    from_name = best_time(lambda: cnnlab.summary("resnet152", INPUT))  # built on the meta device
    result = cnnlab.summary(model, INPUT)
    info = torchinfo.summary(model, input_size=(1, *INPUT), verbose=0)
    print(f"threads: {torch.get_num_threads()}")
    print(f"cnnlab.summary(model)       {ours:.3f} s   MACs {result.macs:,}  params {result.total_params:,}")
    print(f"cnnlab.summary('resnet152') {from_name:.3f} s   (includes building the model on the meta device)")
    print(f"torchinfo.summary(model)    {theirs:.3f} s   MACs {info.total_mult_adds:,}  params {info.total_params:,}")
    print(f"speed-up: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
