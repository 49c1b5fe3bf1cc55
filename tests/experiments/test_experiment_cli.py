"""`cnnlab experiment`: the list and one run through the command, as a user types them."""

import json


def test_list_names_every_registered_experiment_with_its_claim_and_times(cli):
    from cnnlab.experiments import list_experiments

    code, out, err = cli(["experiment", "list", "--json"])
    assert code == 0, err
    items = json.loads(out)
    assert [item["name"] for item in items] == [e.name for e in list_experiments()]
    for item in items:
        assert item["claim"] and item["source"]["quote"] and item["rule"]
        assert set(item["sizes"]) == {"tiny", "quick", "full"}


def test_a_run_prints_the_verdict_the_library_writes_and_a_rerun_resumes(cli, tmp_path):
    out_dir = tmp_path / "exp"
    code, out, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out_dir), "--json"])
    assert code == 0, err
    printed = json.loads(out)
    written = json.loads((out_dir / "result.json").read_text())
    assert printed["verdict"] == written["verdict"] == "HOLDS"
    stamp = (out_dir / "result.json").stat().st_mtime_ns
    code, out, err = cli(["experiment", "receptive-field", "--size", "tiny", "--out", str(out_dir)])
    assert code == 0, err
    assert "verdict: HOLDS" in out
    assert (out_dir / "result.json").stat().st_mtime_ns == stamp  # kept, not recomputed
