"""Time to test accuracy on Fashion-MNIST: a cnnlab recipe against a typical tutorial loop, in one process.

Run: .venv/bin/python bench/time_to_accuracy.py [--config recipes/fashion-mnist-fast.yaml] [--set KEY=VALUE ...]
                                                [--score-every 1] [--baseline-minutes 6] [--no-baseline]
                                                [--out FOLDER]

(a) the recipe: ``cnnlab.train.engine.train`` on the recipe's config (its own validation split held
    out of the training images). After every epoch (or every ``--score-every`` epochs, and after the
    last) the last checkpoint is scored on the 10,000 test images with the last weights and, when the
    recipe keeps them, the EMA weights, each without and with flip TTA: four passes over the test set
    per scoring, so long schedules score less often. The clock is the sum of the engine's
    ``epoch_seconds``: the training loops only, without the per-epoch validation or these test scores.
    With ``train.minutes`` set, the clock starts at the seconds the run spent timing its steps
    (``budget.json``).
(b) the baseline, a typical tutorial loop: torchvision's ``FashionMNIST`` dataset read from the same
    files, ``ToTensor`` and ``Normalize((0.5,), (0.5,))``, a shuffling ``DataLoader`` of batch 64, a
    2-conv CNN (conv 32 - pool - conv 64 - pool - fc 128 - fc 10, ReLU), Adam at 1e-3, no schedule.
    The test set is scored every EVAL_EVERY steps with the clock stopped, until it reaches
    ``--baseline-goal`` (91%, about where such a loop levels off) or ``--baseline-minutes`` of training
    have passed. The clock is read after every step, so the baseline stops within one step of its
    minutes (and the test set is scored there once more).

Both sides use torch's default threads in this one process, one after the other; run it with nothing
else on the machine (the load average is printed at the start and the end). For each threshold
(90%, 91%, and the goals 93%, 94% and 95%) it prints each side's training time to reach it (the first
evaluation at or above it) and the ratio baseline / recipe. The recipe's accuracy curve (test
accuracy at each whole minute of training, from the last evaluation before it) is printed too, and
written with every evaluation to ``OUT/time_to_accuracy.json`` (atomically: once the recipe is done, and again
after the baseline, so that a failure in the baseline keeps the recipe's curve). ``--config`` defaults to the
repository's fast recipe, found from this script's folder, so the bench runs from any folder; ``--out`` must
not hold an earlier run of the bench (OUT/run): each run trains a new one, and none can be continued.

A Ctrl-C (or SIGTERM) during the recipe's run stops it at the next step, as ``cnnlab train`` does; the bench
then prints what it scored so far, says it was interrupted, trains no baseline and exits with 130 (143 for
SIGTERM). The record keeps the scored epochs and says what was cut short.

The test split is only measured here: recipes are chosen on their validation split.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from _machine import (  # bench/ is on sys.path when a bench script runs
    Interrupted,
    count,
    cpu_name,
    fraction,
    interrupted_exit_code,
    machine_line,
    positive,
    run_main,
    stopped_word,
)
from cnnlab.config import apply_overrides, load_config
from cnnlab.data.sources import _idx_file, find_fashion_mnist
from cnnlab.evaluate.evaluate import black_fill, eval_loader, load_model, predict_probabilities, tta_settings
from cnnlab.io import check_output_folder, write_json_atomic
from cnnlab.run import RunFolder
from cnnlab.train.engine import train
from cnnlab.train.logging import budget_timing_seconds

THRESHOLDS = (0.90, 0.91, 0.93, 0.94, 0.95)  # test accuracy; 90/91% the baseline reaches, 93-95% the goals
BASELINE_BATCH = 64
BASELINE_LR = 1e-3  # Adam's default, as the tutorials leave it
EVAL_EVERY = 200  # baseline steps between test scores (938 steps per epoch at batch 64)
SEED = 0
FASHION_SPEC = "fashion-mnist"  # the data the tutorial baseline trains on
ROOT = Path(__file__).resolve().parent.parent  # the repository
DEFAULT_RECIPE = ROOT / "recipes" / "fashion-mnist-fast.yaml"  # found from here, so the default works from any folder
RUN_FOLDER = "run"  # OUT/run: the recipe's run folder
RECORD_FILE = "time_to_accuracy.json"  # OUT/time_to_accuracy.json: every evaluation of both sides


# ---------------------------------------------------------------------------------------------
# (a) the recipe


def score_checkpoint(checkpoint: Path, ema: bool) -> dict[str, float]:
    """Test accuracy of a checkpoint's last (or EMA) weights, without TTA and with flip TTA."""
    loaded = load_model(checkpoint, ema=ema)
    with contextlib.redirect_stderr(io.StringIO()):  # the data's "note: ... from FOLDER", once per score otherwise
        dataset, loader = eval_loader(loaded, split="test")
    flips, shift, _ = tta_settings(loaded, dataset, "flip")
    scores = {}
    for tta in ("none", "flip"):
        probs, labels, _ = predict_probabilities(loaded.model, loader, tta=tta, fill=black_fill(loaded.meta),
                                                 flips=flips, shift=shift)
        # in double, as cnnlab eval counts: float32 makes 9,500 of 10,000 read 0.94999999 and miss a 95% goal
        scores[tta] = (probs.argmax(dim=1) == labels).double().mean().item()
    return scores


class RecipeInterrupted(Interrupted):
    """A Ctrl-C or SIGTERM during the recipe's run: ``records`` holds the epochs scored before it (the whole run's,
    when the signal came in its last step and the run still finished, ``finished``)."""

    def __init__(self, records: list[dict], signum: Optional[int], finished: bool):
        super().__init__("the recipe's run", signum)
        self.records, self.finished = records, finished


def run_recipe(config, out: Path, score_every: int = 1) -> list[dict]:
    """Train ``config`` into ``out``; one record per scored epoch: training seconds so far and the test scores.

    Epochs ``score_every``, ``2 * score_every``, ... are scored, and the last epoch always is (with
    ``train.minutes`` the run itself decides how many epochs there are, so the last is known only when
    training ends).

    A Ctrl-C or SIGTERM stops the run at the next step boundary (the engine's own handling) and raises
    :class:`RecipeInterrupted` with the records scored so far: a run cut short is not scored again at its
    stop, whose checkpoint lies part-way through an epoch the clock has not counted.
    """
    from rich.console import Console

    folder = RunFolder(out)
    records: list[dict] = []
    clock = 0.0
    last_row: dict = {}

    def score(row: dict) -> None:
        record = {"epoch": row["epoch"], "seconds": clock, "val_acc": row["val_acc"]}
        for weights in ("last", "ema") if config.train.ema else ("last",):
            scores = score_checkpoint(folder.last, ema=weights == "ema")
            record[weights], record[f"{weights}_flip"] = scores["none"], scores["flip"]
        records.append(record)
        shown = "  ".join(f"{key} {record[key]:.2%}" for key in ("last", "last_flip", "ema", "ema_flip")
                          if key in record)
        print(f"  recipe epoch {row['epoch']:3d}  {clock:7.1f} s  test: {shown}", flush=True)

    def after_epoch(row: dict) -> None:
        nonlocal clock
        if row["epoch"] == 1 and folder.budget.is_file():  # train.minutes: its timed steps count as training
            clock = budget_timing_seconds(folder.path)
            print(f"  recipe: {clock:.1f} s of timing steps for train.minutes (budget.json)", flush=True)
        clock += row["epoch_seconds"]
        last_row.update(row)
        if row["epoch"] % score_every == 0:
            score(row)

    result = train(config, out, console=Console(file=io.StringIO()), on_epoch_end=after_epoch)
    if result.interrupted:
        raise RecipeInterrupted(records, result.stop_signal, finished=False)
    if not records or records[-1]["epoch"] != last_row["epoch"]:
        score(last_row)  # the clock still reads the last epoch's end: nothing trained since
    if result.stop_requested:  # the signal came in the last step: the run is complete, and the bench stops
        raise RecipeInterrupted(records, result.stop_signal, finished=True)
    return records


# ---------------------------------------------------------------------------------------------
# (b) the tutorial baseline


class TutorialCNN(nn.Module):
    """The 2-conv network of the typical Fashion-MNIST tutorial: (B, 1, 28, 28) -> (B, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> (B, 64, 7, 7)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def torchvision_root(source: Path, into: Path) -> Path:
    """A root folder laid out as torchvision's FashionMNIST expects (ROOT/FashionMNIST/raw/*-ubyte), unzipped
    from the idx files in ``source`` that cnnlab reads (the unpacked one where both lie there); torchvision
    reads it with download=False."""
    raw = into / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        chosen = _idx_file(source, name)
        if chosen.suffix == ".gz":
            with gzip.open(chosen, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(chosen, raw / name)
    return into


@torch.no_grad()
def tutorial_accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(dim=1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def run_baseline(source: Path, minutes: float, goal: float) -> list[dict]:
    """Train the tutorial loop until test accuracy reaches ``goal`` or ``minutes`` of training pass.

    The time limit is checked after every step (one clock read, nothing next to a step's cost), so the
    loop stops within one step of it; the test set is scored every EVAL_EVERY steps and at that stop.
    """
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    torch.manual_seed(SEED)
    records: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cnnlab-tta-bench-") as folder:
        root = torchvision_root(source, Path(folder))
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
        train_set = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
        test_set = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
        train_loader = DataLoader(train_set, batch_size=BASELINE_BATCH, shuffle=True)
        test_loader = DataLoader(test_set, batch_size=1000)
        model = TutorialCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=BASELINE_LR)
        loss_fn = nn.CrossEntropyLoss()
        limit = minutes * 60  # seconds of training
        clock, step, epoch = 0.0, 0, 0
        while clock < limit:
            epoch += 1
            started = time.perf_counter()
            for x, y in train_loader:
                loss = loss_fn(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                trained = clock + time.perf_counter() - started  # training seconds so far
                out_of_time = trained >= limit
                if step % EVAL_EVERY == 0 or out_of_time:
                    clock = trained  # the clock stops while the test set is scored
                    accuracy = tutorial_accuracy(model, test_loader)
                    records.append({"step": step, "epoch": epoch, "seconds": clock, "test": accuracy})
                    print(f"  baseline step {step:6d} (epoch {epoch})  {clock:7.1f} s  test {accuracy:.2%}",
                          flush=True)
                    if accuracy >= goal or out_of_time:
                        return records
                    started = time.perf_counter()
            clock += time.perf_counter() - started
    return records


# ---------------------------------------------------------------------------------------------
# reading the curves


def time_to(records: list[dict], key: str, threshold: float):
    """Training seconds at the first record whose ``key`` accuracy is at least ``threshold``; None if none is."""
    return next((r["seconds"] for r in records if r.get(key) is not None and r[key] >= threshold), None)


def at_minutes(records: list[dict], key: str) -> list[tuple[int, float]]:
    """(minute, accuracy of the last record at or before it) for every whole minute the records span."""
    curve = []
    for minute in range(1, int(records[-1]["seconds"] // 60) + 1):
        before = [r for r in records if r["seconds"] <= minute * 60]
        if before:
            curve.append((minute, before[-1][key]))
    return curve


def clock_text(seconds) -> str:
    if seconds is None:
        return "not reached"
    return f"{seconds:6.1f} s ({int(seconds // 60)} min {seconds % 60:04.1f} s)"


def print_results(recipe: list[dict], baseline: list[dict]) -> None:
    """The times to each threshold, the recipe's curve by the minute and both sides' final accuracy."""
    keys = [k for k in ("last", "ema", "last_flip", "ema_flip") if k in recipe[0]]
    print("\ntime to test accuracy (training seconds; the first evaluation at or above the threshold):")
    for threshold in THRESHOLDS:
        parts = [f"recipe {key} {clock_text(time_to(recipe, key, threshold))}" for key in keys]
        line = f"  {threshold:.0%}: " + "; ".join(parts)
        if baseline:
            base, mine = time_to(baseline, "test", threshold), time_to(recipe, "last", threshold)
            line += f"; baseline {clock_text(base)}"
            if base is not None and mine is not None:
                line += f"; ratio baseline / recipe (last weights) {base / mine:.1f}x"
        print(line)
    print("recipe test accuracy at each minute of training (" + ", ".join(keys) + "):")
    for minute, _ in at_minutes(recipe, "last"):
        values = [dict(at_minutes(recipe, key))[minute] for key in keys]
        print(f"  {minute:3d} min  " + "  ".join(f"{v:.2%}" for v in values))
    final = recipe[-1]
    print(f"recipe final, {final['seconds']:.1f} s of training: " + ", ".join(f"{k} {final[k]:.2%}" for k in keys))
    if baseline:
        print(f"baseline final, {baseline[-1]['seconds']:.1f} s of training: {baseline[-1]['test']:.2%}")


def write_record(out: Path, args, recipe: list[dict], baseline: list[dict], stopped: Optional[str] = None) -> None:
    """OUT/time_to_accuracy.json, written atomically: after the recipe, and again after the baseline, so that
    a failure or a stop in the baseline keeps the recipe's curve. ``stopped`` says what a stop signal cut
    short ("interrupted during the recipe's run", ...); None when nothing was."""
    record = {"machine": cpu_name(), "torch": torch.__version__, "config": args.config, "sets": args.sets,
              "recipe": recipe, "baseline": baseline, "interrupted": stopped,
              "load_average_end": os.getloadavg()[0]}
    write_json_atomic(out / RECORD_FILE, record, "the time-to-accuracy record")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_RECIPE),
                        help="the recipe to time (default: the repository's recipes/fashion-mnist-fast.yaml, found "
                             "from this script's folder, so the default works from any folder)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as cnnlab train's --set (repeatable)")
    parser.add_argument("--score-every", type=count, default=1, metavar="EPOCHS",
                        help="score the test set after every EPOCHS-th epoch and after the last (default 1)")
    parser.add_argument("--baseline-minutes", type=positive, default=6.0,
                        help="the baseline's longest training in minutes, checked after every step")
    parser.add_argument("--baseline-goal", type=fraction, default=0.91,
                        help="test accuracy at which the baseline stops (a fraction)")
    parser.add_argument("--no-baseline", action="store_true", help="train the recipe only")
    parser.add_argument("--out", default=None,
                        help=f"folder for the recipe's run (OUT/{RUN_FOLDER}) and {RECORD_FILE}; it must not hold an "
                             "earlier run of this bench (default: a temporary one, deleted at the end)")
    args = parser.parse_args()

    config = apply_overrides(load_config(args.config), args.sets)
    if not args.no_baseline and config.data.spec.strip().lower() != FASHION_SPEC:
        # The tutorial loop trains on Fashion-MNIST only: against a recipe on other data its ratio means nothing.
        parser.error(f"the recipe trains on data.spec={config.data.spec!r}, and the tutorial baseline on "
                     f"{FASHION_SPEC}, so their times to accuracy cannot be compared: add --no-baseline to time "
                     f"the recipe alone, or train it on data.spec={FASHION_SPEC}.")
    keep = args.out is not None
    if keep:
        # The bench trains a new run every time and cannot continue one: an earlier run in OUT/run would be refused
        # by the engine, after the machine line, with its advice to resume, which this bench does not offer.
        check_output_folder(args.out, "--out")
        earlier = Path(args.out) / RUN_FOLDER
        if earlier.exists() and (not earlier.is_dir() or any(earlier.iterdir())):
            parser.error(f"--out {args.out} already holds {earlier} (an earlier run of this bench, or other files): "
                         "this bench trains a new run each time and cannot continue one. Choose another --out, or "
                         f"remove {earlier} first.")
    # shown as typed, or relative to the repository when it lies there (the default: recipes/fashion-mnist-fast.yaml)
    recipe_path = Path(args.config).resolve()
    shown = str(recipe_path.relative_to(ROOT)) if recipe_path.is_relative_to(ROOT) else args.config
    out = Path(args.out) if keep else Path(tempfile.mkdtemp(prefix="cnnlab-tta-bench-"))
    try:
        print(f"{machine_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
              f"1-min load average {os.getloadavg()[0]:.2f} (run with nothing else on the cores)")
        print(f"(a) recipe {shown}{' with ' + ' '.join(args.sets) if args.sets else ''}: {config.model.name}, "
              f"{config.train.epochs} epochs, batch {config.train.batch_size}"
              + (f"; test scored every {args.score_every} epochs and after the last" if args.score_every > 1 else ""))
        stop: Optional[RecipeInterrupted] = None
        try:
            recipe = run_recipe(config, out / RUN_FOLDER, score_every=args.score_every)
        except RecipeInterrupted as stopped:
            recipe, stop = stopped.records, stopped
        what_stopped = None
        if stop is not None:
            what_stopped = (f"{stopped_word(stop.signum)} "
                            + ("after the recipe's last step (its run is complete)" if stop.finished
                               else "during the recipe's run"))
        write_record(out, args, recipe, [], what_stopped)  # the recipe's curve is kept whatever follows

        baseline: list[dict] = []
        if stop is None and not args.no_baseline:
            print(f"(b) tutorial loop: torchvision FashionMNIST, DataLoader batch {BASELINE_BATCH}, 2-conv CNN, "
                  f"Adam {BASELINE_LR:g}, test scored every {EVAL_EVERY} steps, until {args.baseline_goal:.0%} or "
                  f"{args.baseline_minutes:g} min (checked after every step)")
            baseline = run_baseline(find_fashion_mnist(config.data), args.baseline_minutes, goal=args.baseline_goal)
            write_record(out, args, recipe, baseline)

        if recipe:
            print_results(recipe, baseline)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}"
              + (f"; run and records in {out}" if keep else ""))
        if stop is not None:
            scored = (f"the {len(recipe)} scored {'epoch is' if len(recipe) == 1 else 'epochs are'} above"
                      if recipe else "no epoch was scored")
            print(f"{what_stopped}: {scored}"
                  + ("" if args.no_baseline else ", and the tutorial baseline was not trained") + ".",
                  file=sys.stderr)
            sys.exit(interrupted_exit_code(stop.signum))
    finally:
        if not keep:  # also when the recipe is refused or the run is stopped
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
