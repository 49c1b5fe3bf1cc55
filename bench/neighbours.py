"""Is a recipe's validation split as hard as Fashion-MNIST's test set? A nearest-neighbour check.

Run: .venv/bin/python bench/neighbours.py [--data-dir FOLDER]

Every recipe's validation score has come out 0.4-0.7 points above its test score. Two causes would
look alike: near-duplicates (a validation image whose twin is in the training part is easy), or a
test set that is simply a little harder than a split of the training images. This bench tells them
apart without training anything. Every one of the 60,000 training images is judged by the other
59,999 (leave-one-out: what any random validation split sees, on average, with about a fifth of a
3,000-image split's noise), and every test image by all 60,000. For each, it finds the nearest
training image in pixel space (Euclidean distance, pixels in [0, 1]) and prints, for both:

- the share of images with a training image closer than a few distances: near-duplicates would show
  up as more close neighbours among the training images than for the test images;
- the 1-nearest-neighbour classifier's accuracy: the same classifier and (all but one of) the same
  training images, so a gap here is a gap in difficulty.

About a minute on 2 cores (55 s on the AVX-512 EPYC: 70,000 queries against 60,000 images, one
matmul per chunk); run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from _machine import machine_line, run_main  # bench/ is on sys.path when a bench script runs
from cnnlab.config import DataConfig
from cnnlab.data.sources import load_source

CLOSE = (1.0, 2.0, 3.0)  # distances in pixel space ([0, 1] pixels; two 28x28 images differ by ~3.5 at the median)
CHUNK = 2000  # queries per matmul: (2,000 x 60,000) float32 distances, 480 MB


def nearest(queries: torch.Tensor, reference: torch.Tensor, leave_one_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest reference row: (distance (Q,), index (Q,)); rows are flattened images (Q, D), (R, D).

    ``|q - r|^2 = |q|^2 + |r|^2 - 2 q.r``, so a chunk of queries costs one matmul against the whole reference.
    ``leave_one_out``: the queries are the reference itself, and row i may not pick itself.
    """
    reference_sq = (reference * reference).sum(1)  # (R,)
    distances, indices = [], []
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start:start + CHUNK]  # (q, D)
        squared = (chunk * chunk).sum(1, keepdim=True) + reference_sq[None] - 2 * chunk @ reference.T  # (q, R)
        if leave_one_out:
            rows = torch.arange(len(chunk))
            squared[rows, start + rows] = float("inf")
        best, index = squared.min(1)
        distances.append(best.clamp_min(0).sqrt())  # rounding can leave -1e-6 for an exact duplicate
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def flat(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C*H*W) float32 in [0, 1]."""
    return images.reshape(len(images), -1).float() / 255


def split_report(name: str, distances: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor) -> dict:
    """One split's close-neighbour shares and 1-NN accuracy, as fractions."""
    report = {"split": name, "images": len(labels), "accuracy": float((predicted == labels).double().mean())}
    report["median_distance"] = float(distances.median())
    for threshold in CLOSE:
        report[f"closer_than_{threshold:g}"] = float((distances < threshold).float().mean())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the folder with the four idx files (default: the usual places)")
    args = parser.parse_args()
    # missing or corrupt files: a CnnlabError, whose message says what to do (run_main prints it, exit 2)
    data = load_source(DataConfig(spec="fashion-mnist", data_dir=args.data_dir))
    # all 60,000 training images: the loader's validation split goes back with the rest
    train_images = flat(torch.cat([data.train.images, data.val.images]))  # (60000, 784)
    train_labels = torch.cat([data.train.labels, data.val.labels])  # (60000,)
    print(f"{machine_line()}; {torch.get_num_threads()} threads; "
          f"1-min load average {os.getloadavg()[0]:.2f} (run with nothing else on the cores)")
    print(f"data: {data.spec}, {len(train_labels):,} training images, {len(data.test):,} test images")

    start = time.perf_counter()
    distances, index = nearest(train_images, train_images, leave_one_out=True)
    reports = [split_report("training (LOO)", distances, train_labels[index], train_labels)]
    distances, index = nearest(flat(data.test.images), train_images)
    reports.append(split_report("test", distances, train_labels[index], data.test.labels))
    print(f"{time.perf_counter() - start:.1f} s for the nearest-neighbour search\n")

    header = ["split", "images", "1-NN accuracy", "median distance"] + [f"closer than {t:g}" for t in CLOSE]
    print("  ".join(f"{h:>15}" for h in header))
    for report in reports:
        cells = [report["split"], f"{report['images']:,}", f"{report['accuracy']:.2%}", f"{report['median_distance']:.2f}"]
        cells += [f"{report[f'closer_than_{t:g}']:.2%}" for t in CLOSE]
        print("  ".join(f"{c:>15}" for c in cells))
    gap = reports[0]["accuracy"] - reports[1]["accuracy"]
    test_error = (reports[1]["accuracy"] * (1 - reports[1]["accuracy"]) / reports[1]["images"]) ** 0.5
    print(f"\n1-NN accuracy, training (leave-one-out) minus test: {gap * 100:+.2f} points "
          f"(one standard error of the test score: {test_error * 100:.2f})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
