"""One small source run shared by the transfer tests: resnet8 trained for one epoch on gray synthetic images."""

import pytest
import torch

from cnnlab.config import RunConfig, apply_overrides
from cnnlab.train.engine import train

# The tests' target is another synthetic set (other classes and images), read at the source's 28x28 and 1 channel.
SOURCE_DATA = "synthetic:classes=4,train=64,val=16,test=16,channels=1"


@pytest.fixture(scope="session")
def source_run(tmp_path_factory):
    """A trained run folder (resnet8: BatchNorm and three stages, at its smallest input, 28x28)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:  # the session's private cache, as tests/conftest.py sets it
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        config = apply_overrides(RunConfig(), [
            "model.name=resnet8", f"data.spec={SOURCE_DATA}", "data.image_size=28", "aug.preset=none",
            "train.epochs=1", "train.batch_size=16", "optim.lr=0.05", "log.quiet=true", "log.curves=false"])
        try:
            run = train(config, tmp_path_factory.mktemp("transfer-source") / "run").run_dir
        finally:
            torch.set_num_threads(threads)
    return run


@pytest.fixture(scope="session")
def ema_source_run(tmp_path_factory):
    """The source run again with train.ema (no warm-up, so its average differs from the raw weights everywhere)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        config = apply_overrides(RunConfig(), [
            "model.name=resnet8", f"data.spec={SOURCE_DATA}", "data.image_size=28", "aug.preset=none",
            "train.epochs=1", "train.batch_size=16", "optim.lr=0.05", "log.quiet=true", "log.curves=false",
            "train.ema=true", "train.ema_warmup=false"])
        try:
            run = train(config, tmp_path_factory.mktemp("ema-source") / "run").run_dir
        finally:
            torch.set_num_threads(threads)
    return run
