"""Evaluation images/s: cnnlab's eval path against a minimal hand-written inference loop, and TTA's cost.

Run: .venv/bin/python bench/eval_throughput.py [--model vgg_mini] [--data fashion-mnist] [--batch-size 256]
                                               [--rounds 3]

Both sides run the same model (cnnlab.create_model, seed 0, eval mode) over the same split (the
Fashion-MNIST test set, 10,000 images, by default):

(a) cnnlab: ``cnnlab.evaluate.evaluate.predict_probabilities`` over ``make_loader(train=False)``:
    batched, no_grad, log-softmax per batch, the loader's uint8 -> float normalisation included.
(b) hand loop: ``with torch.inference_mode(): for x in batches: model(x)`` over batches normalised
    before the clock starts (pre-made tensors, no loader, no softmax).

The runs alternate (a, b, a, b, ...) and each side's best counts; the ratio a / b is printed. A ratio
only means something if both sides do the same work, so one untimed pass of each then compares their
class probabilities image by image and prints the largest difference. Last, cnnlab's images/s with
each TTA mode, whose cost is about the number of views: the modes that transform the evaluated batch
(``predict_probabilities``), then resnet10crop, the lecture's ResNet test, which resizes each original
image to ResNet's short sides at this image size and cuts TenCrop from each (``resnet_crop_probabilities``,
as ``cnnlab eval --tta resnet10crop`` runs it; its resizes are part of its cost).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _machine import count, machine_line, run_main  # bench/ is on sys.path when a bench script runs


def main() -> None:
    from cnnlab.config import DataConfig
    from cnnlab.data import dataset_stats, load_source
    from cnnlab.data.loaders import make_loader
    from cnnlab.evaluate.evaluate import predict_probabilities, resnet_crop_probabilities
    from cnnlab.evaluate.tta import ALL_MODES, DEFAULT_SCALES, RESNET_MODE, resnet_short_sides, view_count
    from cnnlab.models import check_input_size, create_model
    from cnnlab.threads import keeps_thread_setting

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg_mini")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--batch-size", type=count, default=256)
    parser.add_argument("--rounds", type=count, default=3, help="alternating (cnnlab, hand loop) pairs; each side's best counts")
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]  # read before this process adds its own threads

    dataset = load_source(args.data)
    stats, _ = dataset_stats(dataset)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=dataset.num_classes, in_chans=dataset.channels).eval()
    # a model whose maps would vanish at these images is refused by name (one paragraph, exit 2), not by torch
    check_input_size(model, (dataset.channels, dataset.image_size, dataset.image_size), args.model,
                     larger=f"choose data with larger images than {args.data}'s {dataset.image_size} px")
    loader = make_loader(dataset, "test", stats, batch_size=args.batch_size, train=False)
    images = len(dataset.test)
    mean = torch.tensor(stats.mean).view(1, -1, 1, 1)
    std = torch.tensor(stats.std).view(1, -1, 1, 1)
    batches = [((chunk.float() / 255 - mean) / std) for chunk in dataset.test.images.split(args.batch_size)]
    fill = -mean.flatten() / std.flatten()

    short_sides = resnet_short_sides(dataset.image_size)  # ResNet's 224, 256, 384, 480, 640 at this size
    # resnet10crop reads the originals, as cnnlab eval does (eval_loader(originals=True)): image files are read from
    # their files rather than as the S x S squares held in memory; the built-in sets are held in memory either way
    originals = load_source(DataConfig(spec=args.data, in_memory=False))

    @keeps_thread_setting  # as run_eval: its loops follow the free cores, and the count comes back after
    def cnnlab_side(mode: str = "none") -> float:
        started = time.perf_counter()
        if mode == RESNET_MODE:
            resnet_crop_probabilities(model, originals, "test", image_size=dataset.image_size, mean=stats.mean,
                                      std=stats.std, short_sides=short_sides, flips=dataset.hflip_safe,
                                      batch_size=args.batch_size)
        else:
            predict_probabilities(model, loader, tta=mode, fill=fill, flips=dataset.hflip_safe)
        return images / (time.perf_counter() - started)

    threads = torch.get_num_threads()

    def hand_side() -> float:
        torch.set_num_threads(threads)  # torch's default, as plain PyTorch runs (cnnlab's path may lower it)
        started = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                model(x)
        return images / (time.perf_counter() - started)

    cnnlab_rates, hand_rates = [], []
    for _ in range(args.rounds):
        cnnlab_rates.append(cnnlab_side())
        hand_rates.append(hand_side())
    best_cnnlab, best_hand = max(cnnlab_rates), max(hand_rates)
    print(f"{machine_line()}; {threads} torch threads, torch {torch.__version__}; "
          f"1-min load average {load_at_start:.2f} at the start (run with nothing else on the cores)")
    print(f"{args.model} on {args.data} test ({images:,} images), batch {args.batch_size}, best of {args.rounds}:")
    print(f"  cnnlab eval path  {best_cnnlab:10,.0f} images/s  ({images / best_cnnlab:.2f} s for the split)")
    print(f"  hand loop         {best_hand:10,.0f} images/s")
    print(f"  ratio             {best_cnnlab / best_hand:10.3f}x")
    # The same model on the same images in the same order: the probabilities must agree to float rounding.
    probs, labels, _ = predict_probabilities(model, loader, fill=fill, flips=dataset.hflip_safe)
    with torch.inference_mode():
        hand_probs = torch.cat([torch.softmax(model(x).float(), dim=1) for x in batches])  # (N, K)
    gap = float((probs - hand_probs).abs().max())
    same_labels = torch.equal(labels, dataset.test.labels.long())
    print(f"  same work         largest probability difference {gap:.1e}; "
          f"labels in the split's order: {'yes' if same_labels else 'NO'}")
    print("TTA (cnnlab, one run each):")
    for mode in ALL_MODES:
        views = view_count(mode, dataset.hflip_safe, short_sides if mode == RESNET_MODE else DEFAULT_SCALES)
        rate = cnnlab_side(mode)
        what = f"; short sides {', '.join(map(str, short_sides))} px" if mode == RESNET_MODE else ""
        print(f"  {mode:12s} {views:3d} views {rate:10,.0f} images/s  ({images / rate:.1f} s for the split{what})")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    run_main(main)
