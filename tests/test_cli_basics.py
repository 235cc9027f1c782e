"""The CLI as users meet it: fast help, JSON that parses, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mindsearch.cli.main import cli

HEAVY = ("torch", "lancedb", "faiss", "diffusers", "open_clip", "sklearn", "h5py", "pandas")


def test_help_imports_no_heavy_library():
    code = ("import sys; from cli.main import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Commands" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"  # no heavy module was imported


def test_every_registered_command_has_help():
    runner = CliRunner()
    for name in ["eval", "train", "demo"]:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output


def test_eval_retrieval_on_arrays_json(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(400, 16)).astype(np.float32)
    brain = images + 0.3 * rng.normal(size=images.shape).astype(np.float32)
    np.save(tmp_path / "b.npy", brain)
    np.save(tmp_path / "i.npy", images)
    result = CliRunner().invoke(cli, ["eval", "retrieval", "--brain", str(tmp_path / "b.npy"),
                                      "--images", str(tmp_path / "i.npy"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    for key in ["brain_to_image_top1", "image_to_brain_top1", "brain_to_image_top1_ci95",
                "image_to_brain_top1_ci95", "full_pool_brain_to_image_top1",
                "full_pool_image_to_brain_top1", "mindeye_fwd", "mindeye_bwd", "pool", "loops",
                "seed", "n"]:
        assert key in scores
    assert scores["n"] == 400 and scores["pool"] == 300
    assert scores["brain_to_image_top1"] > 0.9  # mild noise in 16-d: easy to identify


@pytest.mark.parametrize("case", ["missing", "pickle", "mismatch"])
def test_eval_retrieval_bad_input_is_one_line_exit_2(tmp_path, case):
    b, i = tmp_path / "b.npy", tmp_path / "i.npy"
    np.save(i, np.ones((10, 4), np.float32))
    if case == "pickle":
        np.save(b, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    elif case == "mismatch":
        np.save(b, np.ones((9, 4), np.float32))
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", "eval", "retrieval", "--brain", str(b),
                           "--images", str(i)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
    if case != "mismatch":
        assert str(b) in lines[0]
