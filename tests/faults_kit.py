"""Shared pieces of the fault suite (tests/test_faults_*.py): run the CLI in-process, check
the one error line, and fingerprint directories to prove nothing was lost or changed."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from mindsearch.cli.main import cli


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``mindsearch ARGS`` as the console script runs it."""
    capsys.readouterr()
    try:
        cli.main(args=[str(a) for a in args], prog_name="mindsearch")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(code: int, err: str, blamed) -> str:
    """Exit 2, exactly one stderr line ``error: ...``, the last one, naming ``blamed`` (a path or a
    word); progress lines before it are allowed, a traceback or click's multi-line usage is not."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Usage:" not in err, err
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert str(blamed) in errors[0], (str(blamed), errors[0])
    return errors[0]


def snapshot(root: Path, skip=(".mindsearch_cache",)) -> dict:
    """path -> sha256 of every file under ``root`` (caches excluded): equal before and after
    a refused command means nothing was lost or changed."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def npy_with_header(shape, dtype="<f4", version=(1, 0), body: bytes = b"\0" * 4096) -> bytes:
    """A .npy whose header declares ``shape`` whatever the body holds (a lying header)."""
    buf = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": tuple(shape)}
    if version == (1, 0):
        np.lib.format.write_array_header_1_0(buf, header)
    else:
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue() + body


def npy_bytes(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def edit_json(path: Path, fn) -> None:
    """Rewrite a JSON file with ``fn(obj)``: its result, or ``obj`` changed in place when it returns None."""
    obj = json.loads(Path(path).read_text())
    new = fn(obj)
    Path(path).write_text(json.dumps(obj if new is None else new))


# A simulated world small enough to build in a few seconds (20 voxels, 2x8 targets).
TINY_WORLD = ["--set", "n_shared=20", "--set", "n_unique=40", "--set", "tokens=2", "--set", "dim=8",
              "--set", "image_size=16"]


def build_world(base: Path, mindeye: bool = False) -> Path:
    """``base/sim`` (simulated dataset), ``base/ridge`` (ridge run) and optionally
    ``base/mindeye`` (an untrained tiny MindEye run with the ridge run's z-scores)."""
    import shutil

    for args in (["simulate", base / "sim", *TINY_WORLD, "--set", "n_voxels=20"],
                 ["train", "--model", "ridge", "--data", base / "sim", "--subject", "1", "--alpha", "10",
                  "--out", base / "ridge"]):
        try:
            cli.main(args=[str(a) for a in args], prog_name="mindsearch")
        except SystemExit as exc:
            assert exc.code in (0, None), args
    if mindeye:
        from mindsearch.models.factory import create_model

        config = json.loads((base / "ridge" / "config.json").read_text())
        model = create_model("tiny", {1: config["n_voxels"]}, tokens=2, dim=8)
        (base / "mindeye").mkdir()
        model.save_pretrained(base / "mindeye", extra_config=dict(config, model="mindeye", train={}))
        shutil.copy(base / "ridge" / "zscore.safetensors", base / "mindeye" / "zscore.safetensors")
    return base
