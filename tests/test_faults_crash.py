"""Fault suite, crash safety (outside indexes): a ``kill -9`` at chosen points of ``simulate``
and ``train`` (MINDSEARCH_TEST_KILL_AT) leaves the previous output untouched, and the next
run removes the dead process's hidden temporaries and completes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from faults_kit import TINY_WORLD, run_cli, snapshot

from mindsearch.data import open_dataset
from mindsearch.indexes.io import _owner  # noqa: E402  (the temporary names under test)
from mindsearch.io import KILL_AT_ENV, atomic_path, clean_stale, save_tensors

SIM = [*TINY_WORLD, "--set", "n_voxels=20"]


def killed(args, label):
    """Run ``mindsearch ARGS`` in a child that SIGKILLs itself at ``label``."""
    env = {**os.environ, KILL_AT_ENV: label, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", *map(str, args)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


@pytest.mark.parametrize("label", ["simulate:subject", "rename:sim"])
def test_killed_simulate_is_cleaned_by_the_next_run(tmp_path, capsys, label):
    killed(["simulate", tmp_path / "sim", *SIM], label)
    assert not (tmp_path / "sim").exists()
    assert len(leftovers(tmp_path, "sim")) == 1  # what used to stay forever (up to 55 MiB)
    code, _, err = run_cli(["simulate", tmp_path / "sim", *SIM], capsys)
    assert code == 0, err
    assert leftovers(tmp_path, "sim") == []
    with open_dataset(tmp_path / "sim") as ds:
        assert ds.subjects == [1] and ds.has_targets


def test_killed_forced_simulate_keeps_the_old_dataset(tmp_path, capsys):
    code, _, err = run_cli(["simulate", tmp_path / "sim", *SIM], capsys)
    assert code == 0, err
    before = snapshot(tmp_path / "sim")
    killed(["simulate", tmp_path / "sim", *SIM, "--seed", "1", "--force"], "simulate:manifest")
    assert snapshot(tmp_path / "sim") == before
    assert len(leftovers(tmp_path, "sim")) == 1


def test_killed_training_save_is_cleaned_by_the_next_run(tmp_path, capsys):
    base = tmp_path
    code, _, err = run_cli(["simulate", base / "sim", *SIM], capsys)
    assert code == 0, err
    args = ["train", "--model", "ridge", "--data", base / "sim", "--subject", "1", "--alpha", "10",
            "--out", base / "run2"]
    killed(args, "rename:run2")
    assert not (base / "run2").exists() and len(leftovers(base, "run2")) == 1
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert leftovers(base, "run2") == [] and (base / "run2" / "model.safetensors").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    """The mechanism behind `train`'s `.model.safetensors.*.tmp`: host + pid in the name."""
    host = _owner().rsplit("-", 1)[0]
    dead = tmp_path / f".model.safetensors.{host}-{_dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".model.safetensors.{host}-{os.getppid()}.abcd1234.tmp"
    remote = tmp_path / f".model.safetensors.otherhost-{_dead_pid()}.abcd1234.tmp"
    legacy = tmp_path / ".model.safetensors.abcd1234.tmp"
    other_file = tmp_path / f".model.json.{host}-{_dead_pid()}.abcd1234.tmp"
    for p in (dead, live, remote, legacy, other_file):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"x" * 100)
    save_tensors(tmp_path / "model.safetensors", {"w": __import__("numpy").ones(3, "f4")})
    assert not dead.exists()
    assert live.exists() and remote.exists() and legacy.exists() and other_file.exists()
    assert clean_stale(tmp_path / "model.json") == [other_file]


def test_interrupted_directory_swap_restores_the_old_version(tmp_path):
    """Killed between `OUT -> .OUT.old` and `tmp -> OUT`: the old version comes back."""
    out = tmp_path / "ds"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.txt").write_text("v1")
    os.replace(out, tmp_path / ".ds.old")  # the state a kill between the two renames leaves
    clean_stale(out)
    assert (out / "a.txt").read_text() == "v1" and not (tmp_path / ".ds.old").exists()
