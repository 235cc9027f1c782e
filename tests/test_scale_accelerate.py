"""`accelerate launch` runs `mindsearch train` on two CPU processes (gloo) for real.

What data-parallel arithmetic allows us to assert: each rank draws its own half of every global
batch, and DistributedDataParallel averages the two halves' gradients. The contrastive losses
(CLIP, BiMixCo, SoftCLIP) are computed within each rank's half, as in MindEye's multi-GPU runs, so
the gradient is *not* the single-process gradient of the whole batch and the weights cannot match
bit for bit. What must hold: one process writes the run (one run directory, no leftovers, a
loadable model), the step count and samples seen are those of the global batch, and the model is
as good as the single-process one (top-1 within a few points on the same validation images).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
TRAIN = ["train", "--subject", "1", "--preset", "tiny", "--epochs", "8", "--batch-size", "32",
         "--set", "use_prior=false", "--set", "loss=clip", "--set", "lr=3e-3", "--json"]


def _accelerate() -> list[str]:
    exe = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the accelerate launcher is not installed")
    # --multi_gpu is accelerate's torchrun launcher; on a machine without GPUs (and with
    # ACCELERATE_USE_CPU) the processes form a gloo group (MULTI_CPU). `--cpu` would run ONE process.
    return [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mindsearch.cli.main"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("acc") / "sim"
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", "simulate", str(out), "--preset", "small"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _train(prefix: list[str], sim: Path, out: Path) -> dict:
    proc = subprocess.run([*prefix, *TRAIN, "--data", str(sim), "--out", str(out)], capture_output=True,
                          text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone prints the summary (a second JSON document would break this parse)
    return json.loads(proc.stdout)


def test_two_processes_train_like_one(sim, tmp_path):
    one = _train([sys.executable, "-m", "mindsearch.cli.main"], sim, tmp_path / "one")
    two = _train(_accelerate(), sim, tmp_path / "two")

    # The same optimiser steps over the same global batches.
    assert two["global_step"] == one["global_step"] > 0
    assert two["steps_per_epoch"] == one["steps_per_epoch"]
    assert (two["world_size"], one["world_size"]) == (2, 1)  # really two processes
    assert two["effective_batch"] == one["effective_batch"] == 32

    # One writer: the same files as the single-process run, no temporary or checkpoint leftovers.
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]

    from mindsearch.runs import open_run

    run = open_run(tmp_path / "two")
    assert run.model_type == "mindeye" and run.n_voxels == 1500

    # As good as one process on the same 300 validation images (chance is 0.3%).
    b1 = one["val"]["mean_brain_to_image_top1"]
    b2 = two["val"]["mean_brain_to_image_top1"]
    assert b1 > 0.1 and b2 > 0.1, (b1, b2)
    assert abs(b1 - b2) < 0.06, (b1, b2)
