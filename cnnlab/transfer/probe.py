"""``cnnlab probe``: a linear classifier on a trained network's pooled features.

This is the lecture's "linear classifier on the top layer": the source network (a cnnlab run, or a
torchvision weights file read by :func:`cnnlab.train.init_from.read_init_source`) stays as it was
trained, and only a logistic regression on its pooled features learns the new classes. A run's raw
weights are read, or with ``ema`` the EMA weights a run with train.ema kept.

The source sees the target data with its own preprocessing: its image size, its input channels and,
unless data.normalize says otherwise, its mean/std (:func:`cnnlab.data.stats.resolve_normalization`).
The features, the input of its classifier (:func:`cnnlab.models.stages.pre_logits`), are extracted
in eval mode without augmentation, once per split, and cached under ``cache_root()/features`` keyed by
the source file's identity (path, size, modification time), the split's content, the image size, the
aspect-ratio buckets and the normalisation. scikit-learn's LogisticRegression is fitted on standardised
features (the scaler fitted on the training split) for each C of a log grid; the C with the best
validation accuracy wins.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Optional, Sequence

import numpy as np
import torch

from cnnlab import cache_root
from cnnlab.config import DataConfig
from cnnlab.errors import CnnlabError
from cnnlab.threads import keeps_thread_setting, tick

if TYPE_CHECKING:
    from cnnlab.data import DataSet, Split
    from cnnlab.data.stats import Normalization
    from cnnlab.train.init_from import InitSource

FEATURES_VERSION = 1  # bump when extraction changes, so older cache files are not trusted
FEATURES_FOLDER = "features"  # under cnnlab.cache_root()
C_GRID = tuple(10.0**k for k in range(-3, 4))  # inverse L2 strength: 1e-3 .. 1e3, one value per decade
MAX_ITER = 2000  # lbfgs iterations per fit; a fit that needs more is reported as not converged


# ---------------------------------------------------------------------------------------------
# the source network and the target data


@dataclass
class ProbeSource:
    """The source network ready to extract features, and what identifies it in the feature cache."""

    init: InitSource  # what read_init_source found: weights, preprocessing, architecture
    model: torch.nn.Module  # the source network as trained, eval mode, on ``device``
    device: torch.device
    identity: dict  # {"path", "size", "mtime_ns", "model"}, and "weights": "ema" for its EMA: a changed file is a new source

    @property
    def model_name(self) -> str:
        return str(self.init.model_name)


def load_probe_source(source: str, model_name: Optional[str] = None, device="auto", *, ema: bool = False,
                      ema_given_as: str = "--ema") -> ProbeSource:
    """Read the source weights and build the network they belong to (``model_name``: needed for a bare
    torchvision file only; a cnnlab run records its own). ``ema``: a cnnlab run's EMA weights instead of its raw
    ones (``ema_given_as``: what the messages call the setting), refused for a source without them."""
    from cnnlab.devices import resolve_device
    from cnnlab.heap import keep_on_cpu
    from cnnlab.train.init_from import EMA_WEIGHTS, build_source_model, read_init_source

    resolved = resolve_device(str(device), "--device")
    keep_on_cpu(resolved)  # the memory a batch frees kept for the next one (cnnlab/heap.py)
    init = read_init_source(str(source), model_name, given_as="The source", ema=ema, ema_given_as=ema_given_as)
    if not init.model_name:  # a bare weights file does not say which network it belongs to
        raise CnnlabError(f"'{source}' is a torchvision weights file, which does not record its architecture: name it "
                          "with --model (transfer: --set model.name=...), e.g. tv:resnet18 or a zoo model with a "
                          "torchvision twin.")
    model = build_source_model(init, device=resolved).eval()
    path = Path(init.path)
    # the state of the file the weights were read from (a run replaces its checkpoints as it trains); a weights
    # file of another tool, which no run writes, as it is now
    size, mtime_ns = init.file_state or (path.stat().st_size, path.stat().st_mtime_ns)
    identity = {"path": str(path.resolve()), "size": size, "mtime_ns": mtime_ns, "model": init.model_name}
    if init.weights == EMA_WEIGHTS:  # other features from the same file; raw weights keep the key they always had
        identity["weights"] = EMA_WEIGHTS
    return ProbeSource(init=init, model=model, device=resolved, identity=identity)


@dataclass
class TargetData:
    """The target data as the source network sees it."""

    config: DataConfig  # the caller's, with the source's image size and channels filled in
    dataset: DataSet
    normalization: Normalization


def target_config(data: DataConfig, source: ProbeSource) -> DataConfig:
    """``data`` with the source's input channels, and its image size unless ``data.image_size`` is set. A
    ``data.channels`` the network cannot take is refused rather than replaced."""
    init = source.init
    if data.channels is not None and data.channels != init.in_chans:
        raise CnnlabError(f"data.channels={data.channels}, but the source network takes {init.in_chans}-channel "
                          "images: the target data is delivered with the source's channels, converted when it has "
                          "others. Leave out data.channels.")
    # `is None`, not `or`: image_size=0 is a value load_source refuses, not "unset"
    size = init.image_size if data.image_size is None else data.image_size
    return replace(data, image_size=size, channels=init.in_chans)


def load_target(data: DataConfig, source: ProbeSource, *, announce: bool = True) -> TargetData:
    """Load ``data`` with the source's preprocessing and check the source network accepts its image size."""
    from cnnlab.data import dataset_stats, load_source
    from cnnlab.data import sources as data_sources
    from cnnlab.data.stats import resolve_normalization
    from cnnlab.models import check_input_size

    config = target_config(data, source)
    dataset = load_source(config)
    if announce:
        data_sources.announce(dataset)
    init = source.init
    # Only data.image_size can make the size differ from the one the source trained at: the remedy names it
    # (the generic one names summary's --input, which probe and transfer do not have).
    check_input_size(source.model, (init.in_chans, dataset.image_size, dataset.image_size), source.model_name,
                     remedy=f"give a larger data.image_size, or leave it out to read the images at the source's "
                            f"{init.image_size}x{init.image_size}")
    stats, _ = dataset_stats(dataset)
    normalization = resolve_normalization(config, stats, init.in_chans, source_mean=init.mean, source_std=init.std,
                                          source_label=str(init.spec))
    return TargetData(config=config, dataset=dataset, normalization=normalization)


# ---------------------------------------------------------------------------------------------
# features, cached per split


@dataclass
class SplitFeatures:
    """One split's pooled features and labels, and where they came from."""

    features: torch.Tensor  # (N, F) float32 on the CPU
    labels: torch.Tensor  # (N,) int64
    cached: bool  # read from the feature cache instead of extracted
    seconds: float  # extraction time (0 when read from the cache)
    cache_file: Optional[Path]  # None when the cache was off or could not be written


def split_digest(split: Split, image_size: int) -> str:
    """A hash of a split's content: labels and decoded pixels, or each file's path, size and mtime."""
    digest = hashlib.sha256()
    digest.update(split.labels.to(torch.int64).numpy().tobytes())
    if split.images is not None:
        digest.update(repr(tuple(split.images.shape)).encode())
        digest.update(split.images.contiguous().numpy().tobytes())
    else:
        digest.update(f"files at {image_size}px\n".encode())
        for path in split.paths:
            stat = Path(path).stat()
            # the change time too: pixels rewritten at the same size with the old mtime put back (cp -p, rsync -a,
            # tar, touch -r) keep size and mtime, and the features of the old pixels were read back
            digest.update(f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}\n".encode())
    return digest.hexdigest()


def feature_cache_key(source: ProbeSource, split: Split, dataset: DataSet, normalization: Normalization) -> dict:
    """Everything the features of ``split`` depend on; its hash names the cache file."""
    # Aspect-ratio buckets fit each file to its bucket's shape instead of the centre square: other pixels, so
    # other features from the same files at the same image size.
    buckets = [list(ratio) for ratio in dataset.buckets] if dataset.buckets else None
    return {"version": FEATURES_VERSION, "source": source.identity, "split": split_digest(split, dataset.image_size),
            "image_size": dataset.image_size, "buckets": buckets, "channels": dataset.channels,
            "mean": [float(v) for v in normalization.mean], "std": [float(v) for v in normalization.std]}


def feature_cache_path(key: dict) -> Path:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:40]
    return cache_root() / FEATURES_FOLDER / f"{name}.safetensors"


def _read_cached(path: Path, key: dict, labels: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The cached (features, labels) when the file is there, intact and for this key; else None."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            if json.loads((handle.metadata() or {}).get("key", "null")) != key:
                return None
            features, cached_labels = handle.get_tensor("features"), handle.get_tensor("labels")
    except (OSError, ValueError, SafetensorError, json.JSONDecodeError):
        return None  # a damaged cache file is extracted again and overwritten
    if features.ndim != 2 or not torch.equal(cached_labels, labels):
        return None
    return features, cached_labels


def _write_cached(path: Path, key: dict, features: torch.Tensor, labels: torch.Tensor) -> Optional[Path]:
    """Write the cache file atomically; a read-only cache only costs an extraction next time (None)."""
    from safetensors.torch import save_file

    from cnnlab.io import atomic_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, "the feature cache", own_folder=True) as tmp:  # safetensors makes a temporary file too
            save_file({"features": features.contiguous(), "labels": labels.contiguous()}, str(tmp),
                      metadata={"key": json.dumps(key, sort_keys=True)})
    except (OSError, CnnlabError):
        return None
    return path


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F) float32, labels (N,)) over an unaugmented loader, model in eval mode."""
    from cnnlab.models.stages import pre_logits

    model.eval()
    features, labels = [], []
    for x, y in loader:  # x: (B, C, H, W) normalised, on the model's device
        tick()  # torch's CPU threads follow the cores other processes leave free
        features.append(pre_logits(model, x).float().cpu())  # (B, F)
        labels.append(y.cpu())
    if not features:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(labels)


def split_features(source: ProbeSource, target: TargetData, split: str, *, batch_size: int = 256,
                   cache: bool = True) -> SplitFeatures:
    """The pooled features of one split of the target data: read from the cache, else extracted (and cached)."""
    from cnnlab.data.loaders import make_loader
    from cnnlab.data.stats import ChannelStats

    dataset, normalization = target.dataset, target.normalization
    part = dataset.splits()[split]
    key = feature_cache_key(source, part, dataset, normalization)
    path = feature_cache_path(key)
    if cache:
        hit = _read_cached(path, key, part.labels)
        if hit is not None:
            return SplitFeatures(features=hit[0], labels=hit[1], cached=True, seconds=0.0, cache_file=path)
    stats = ChannelStats(mean=tuple(normalization.mean), std=tuple(normalization.std), pixels=0)
    loader = make_loader(dataset, part, stats, batch_size=batch_size, train=False, device=source.device)
    started = time.perf_counter()
    features, labels = extract_features(source.model, loader)
    seconds = time.perf_counter() - started
    written = _write_cached(path, key, features, labels) if cache else None
    return SplitFeatures(features=features, labels=labels, cached=False, seconds=seconds, cache_file=written)


# ---------------------------------------------------------------------------------------------
# the linear classifier


@dataclass
class ProbeFit:
    """The logistic regression chosen on the validation split, and every C tried."""

    c: float  # the chosen inverse regularisation strength
    grid: list[dict]  # per C: {"c", "train_acc", "val_acc", "iterations", "converged"}
    train_acc: float
    val_acc: float
    test_acc: Optional[float]  # None when there is no test split
    seconds: float  # scaling and every fit

    def to_dict(self) -> dict:
        return {"c": self.c, "c_grid": self.grid, "train_acc": self.train_acc, "val_acc": self.val_acc,
                "test_acc": self.test_acc, "seconds": self.seconds}


def fit_probe(features: Mapping[str, object], labels: Mapping[str, object], *, cs: Sequence[float] = C_GRID,
              max_iter: int = MAX_ITER) -> ProbeFit:
    """Fit LogisticRegression on standardised features for each C in ``cs``; keep the best on validation.

    ``features`` and ``labels`` map split names ("train", "val", optionally "test") to (N, F) and (N,)
    arrays or tensors. The features are read as float64; the StandardScaler is fitted on the training
    split only. Ties in validation accuracy go to the smaller C (the stronger regularisation). No refit
    on train+val: the chosen model is the one that was scored.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    for split in ("train", "val"):
        if split not in features or split not in labels:
            raise ValueError(f"fit_probe needs the '{split}' split's features and labels")
    x = {split: np.asarray(features[split], dtype=np.float64) for split in features}
    y = {split: np.asarray(labels[split], dtype=np.int64) for split in labels}
    for split in ("train", "val"):
        if len(y[split]) == 0:
            raise CnnlabError(f"The linear probe needs images in the {split} split, and it has none. Choose data "
                              f"with a {split} split.")
    for split, values in x.items():
        broken = int(np.count_nonzero(~np.isfinite(values).all(axis=1))) if values.ndim == 2 else 0
        if broken:  # scikit-learn would stop with its own ValueError
            raise CnnlabError(f"The source network's pooled features are not finite (NaN or infinite) for {broken} of "
                              f"the {len(values)} {split} images, so no linear classifier can be fitted on them: the "
                              "network computes no usable features in eval mode (its training blew up, or its "
                              "BatchNorm statistics overflowed). Probe a source whose `cnnlab eval` gives a finite "
                              "loss, or train it again with a lower learning rate.")
    if len(np.unique(y["train"])) < 2:
        raise CnnlabError("The linear probe needs training images of at least 2 classes; the training split has "
                          f"only class {int(y['train'][0])}. Use more training images or other classes.")
    started = time.perf_counter()
    scaler = StandardScaler().fit(x["train"])
    scaled = {split: scaler.transform(values) for split, values in x.items()}
    grid, best, best_classifier = [], None, None
    for c in sorted(float(c) for c in cs):
        classifier = LogisticRegression(C=c, max_iter=max_iter)
        # One BLAS thread: the products are (N, F) x (F, K) with F a few hundred at most, too small to
        # share. On 2 cores with another process busy, OpenBLAS's 2 spinning threads took 38 s for a fit
        # that 1 thread does in 1.6 s (29,400 x 64 features, C=0.1).
        with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("ignore", ConvergenceWarning)  # recorded per C as "converged" instead
            classifier.fit(scaled["train"], y["train"])
        iterations = int(np.max(classifier.n_iter_))
        row = {"c": c, "train_acc": _accuracy(classifier, scaled["train"], y["train"]),
               "val_acc": _accuracy(classifier, scaled["val"], y["val"]), "iterations": iterations,
               "converged": iterations < max_iter}
        grid.append(row)
        if best is None or row["val_acc"] > best["val_acc"]:  # strictly better: ties keep the smaller C
            best, best_classifier = row, classifier
    test_acc = None
    if "test" in scaled and "test" in y and len(y["test"]):
        test_acc = _accuracy(best_classifier, scaled["test"], y["test"])
    return ProbeFit(c=best["c"], grid=grid, train_acc=best["train_acc"], val_acc=best["val_acc"], test_acc=test_acc,
                    seconds=time.perf_counter() - started)


def _accuracy(classifier, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(classifier.predict(x) == y))


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class ProbeResult:
    """What ``cnnlab probe`` measured."""

    source: str  # as given
    kind: str  # "run" or "torchvision"
    model: str  # the source architecture
    data: str  # the target data spec
    classes: list[str]
    image_size: int
    channels: int
    normalization: dict  # {"name", "mean", "std", "note"}
    feature_dim: int
    images: dict[str, int]  # per split
    fit: ProbeFit
    seconds_extract: float  # 0 when every split came from the cache
    cached: bool  # every split's features were read from the cache
    cache_files: dict[str, Optional[str]] = field(default_factory=dict)  # per split
    # every file or CSV row the target data left out, {"path", "reason"} (the warning names the first few)
    skipped: list[dict] = field(default_factory=list)
    weights: str = "raw"  # which of a run's weights gave the features: "raw", or "ema" (--ema)

    @property
    def val_acc(self) -> float:
        return self.fit.val_acc

    @property
    def test_acc(self) -> Optional[float]:
        return self.fit.test_acc

    def to_dict(self) -> dict:
        return {"source": self.source, "kind": self.kind, "model": self.model, "data": self.data,
                "classes": self.classes, "image_size": self.image_size, "channels": self.channels,
                "normalization": self.normalization, "feature_dim": self.feature_dim, "images": self.images,
                **self.fit.to_dict(), "seconds": {"extract": self.seconds_extract, "fit": self.fit.seconds},
                "cached": self.cached, "cache_files": self.cache_files, "skipped": self.skipped,
                "weights": self.weights}


def normalization_dict(normalization: Normalization) -> dict:
    return {"name": normalization.name, "mean": [float(v) for v in normalization.mean],
            "std": [float(v) for v in normalization.std], "note": normalization.note}


def target_data(data) -> DataConfig:
    """The target data as a DataConfig: a spec ('digits', 'folder:PATH') as load_source takes it, or a DataConfig;
    CnnlabError for anything else."""
    from cnnlab.errors import shown_value

    if isinstance(data, str):
        return DataConfig(spec=data)
    if not isinstance(data, DataConfig):
        raise CnnlabError(f"data={shown_value(data)}: name the target data as a spec such as 'digits' or "
                          "'folder:PATH', or as a cnnlab.config.DataConfig.")
    return data


@keeps_thread_setting
def probe(source: str, data: DataConfig | str, *, model: Optional[str] = None, device="auto", batch_size: int = 256,
          cache: bool = True, ema: bool = False) -> ProbeResult:
    """Fit the linear probe of ``source``'s pooled features on ``data`` and score it on val and test.

    ``data``: a DataConfig, or a data spec such as ``"digits"`` (the defaults for every other data key).
    ``model`` names the architecture of a bare torchvision weights file (a cnnlab run records its
    own). With ``cache`` off, features are extracted afresh and not written to the cache. ``ema``: the
    features of a run's EMA weights (train.ema), not its raw ones.
    """
    from cnnlab.errors import shown_value, whole_number
    from cnnlab.train.init_from import RUN

    data = target_data(data)
    # "8" or 2.5 failed later inside a comparison or the loader; True is not 1 image
    if whole_number(batch_size) is None or batch_size < 1:
        raise CnnlabError(f"batch_size (--batch-size) must be a whole number of at least 1, got "
                          f"{shown_value(batch_size)}.")

    source_net = load_probe_source(source, model, device, ema=ema)
    if source_net.init.kind == RUN and model and model != source_net.model_name:
        raise CnnlabError(f"--model {model}: '{source}' is a cnnlab run of {source_net.model_name}, which records its "
                          "own architecture. Leave out --model: it names the architecture of a bare torchvision "
                          "weights file.")
    target = load_target(data, source_net)
    splits = list(target.dataset.splits())
    extracted = {split: split_features(source_net, target, split, batch_size=batch_size, cache=cache)
                 for split in splits}
    fit = fit_probe({split: part.features for split, part in extracted.items()},
                    {split: part.labels for split, part in extracted.items()})
    dataset = target.dataset
    return ProbeResult(
        source=str(source), kind=source_net.init.kind, model=source_net.model_name, data=dataset.spec,
        classes=list(dataset.classes), image_size=dataset.image_size, channels=dataset.channels,
        normalization=normalization_dict(target.normalization), feature_dim=int(extracted["train"].features.shape[1]),
        images={split: len(part.labels) for split, part in extracted.items()}, fit=fit,
        seconds_extract=sum(part.seconds for part in extracted.values()),
        cached=all(part.cached for part in extracted.values()),
        cache_files={split: str(part.cache_file) if part.cache_file else None for split, part in extracted.items()},
        skipped=skipped_records(dataset.skipped), weights=source_net.init.weights)


def skipped_records(skipped: Sequence[tuple[str, str]]) -> list[dict]:
    """A data set's ``skipped`` (every file or CSV row it left out, with why) as ``{"path", "reason"}`` records."""
    from cnnlab.data.sources import display_name

    return [{"path": display_name(str(name)), "reason": display_name(str(why))} for name, why in skipped]
