"""The CLI as users meet it: fast help, JSON that parses, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from mindsearch.cli.main import cli

HEAVY = ("torch", "lancedb", "faiss", "diffusers", "open_clip", "sklearn", "h5py", "pandas")


def _help_in_fresh_process(*args: str) -> list[str]:
    code = ("import sys; from mindsearch.cli.main import main\n"
            f"try:\n    main({list(args) + ['--help']!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()


def test_help_imports_no_heavy_library():
    lines = _help_in_fresh_process()
    assert any("Commands" in line for line in lines)
    assert lines[-1] == "HEAVY:"  # no heavy module was imported


def _all_commands(group, prefix=()):
    """Every (sub)command path below a click group, registered lazily or not."""
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_registered_command_has_help():
    from mindsearch.cli.main import COMMANDS

    paths = list(_all_commands(cli))
    assert {p[0] for p in paths} == set(COMMANDS)  # every registered command is reachable
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage: " in result.output and path[-1] in result.output


@pytest.mark.parametrize("name", ["query", "index", "train", "eval"])
def test_command_help_imports_no_heavy_library(name):
    assert _help_in_fresh_process(name)[-1] == "HEAVY:"


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
