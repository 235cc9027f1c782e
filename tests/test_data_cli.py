"""``mindsearch data inspect``: the numbers in --json, the human table, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from test_data_build import make_mindeye1, make_mindeye2, make_plain

from mindsearch.cli.main import cli


def inspect_json(path, *extra):
    result = CliRunner().invoke(cli, ["data", "inspect", str(path), "--json", *extra])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_inspect_json_mindeye2(tmp_path):
    built = make_mindeye2(tmp_path)
    r = inspect_json(tmp_path)
    assert r["layout"] == "mindeye2" and r["subjects"] == [1, 2]
    assert r["trials"] == 72 and r["test_images"] == 4
    s1 = r["per_subject"][0]
    rows = built["design"][1]
    assert (s1["voxels"], s1["sessions"], s1["trials"], s1["test_trials"]) == (10, 3, 36, 12)
    assert s1["unique_images"] == len({row[3] for row in rows})
    counts = np.bincount(np.bincount([row[3] for row in rows])[np.unique([row[3] for row in rows])])
    assert s1["repetitions"] == {str(k): int(v) for k, v in enumerate(counts) if v}
    assert s1["repetitions"]["3"] >= 4  # every test image has 3 repetitions
    b = built["betas"][1]
    v = s1["values"]
    assert np.isclose(v["min"], b.min()) and np.isclose(v["max"], b.max())
    assert np.isclose(v["mean"], b.mean(), atol=1e-5) and np.isclose(v["std"], b.std(), atol=1e-5)
    assert r["images"]["present"] and r["images"]["shape"] == [3, 4, 5]
    t = r["targets"]
    assert t["present"] and t["shape"] == [16, 2, 6] and t["space"]["model"] == "sim-v1"
    assert t["covers_trial_images"]


def test_inspect_json_mindeye1_and_plain(tmp_path):
    make_mindeye1(tmp_path / "me1")
    r = inspect_json(tmp_path / "me1")
    assert r["layout"] == "mindeye1" and r["trials"] == 24
    assert r["per_subject"][0]["sessions"] == 1 and r["per_subject"][0]["repetitions"] == {"3": 6, "6": 1}
    assert r["images"]["shape"] == [3, 6, 7] and not r["targets"]["present"]
    built = make_plain(tmp_path / "pl")
    r = inspect_json(tmp_path / "pl")
    assert r["layout"] == "plain" and [s["voxels"] for s in r["per_subject"]] == [8, 8]
    assert np.isclose(r["per_subject"][1]["values"]["max"], built["voxels"][2].max())
    assert not r["images"]["present"]


def test_inspect_human_table(tmp_path):
    make_mindeye2(tmp_path, subjects=(1,), n_voxels=(7,))
    result = CliRunner().invoke(cli, ["data", "inspect", str(tmp_path)])
    assert result.exit_code == 0
    assert "layout    mindeye2" in result.stdout and "reps (n:images)" in result.stdout
    assert "targets   sim  16x2x6" in result.stdout


def test_data_cmd_module_is_light():
    code = "import sys, cli.data_cmd; print(sorted(m for m in ('numpy', 'pandas', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
