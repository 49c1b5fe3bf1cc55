import pytest

from cnnlab.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""

    def run(args):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
            raise SystemExit(0)
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Statistics and downloads go to a per-session folder, never the user's ~/.cache."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
