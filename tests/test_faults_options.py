"""Fault suite, options and output hygiene: out-of-range or colliding options are one line
``error: <command or file>: ...`` with exit 2 and nothing written; every ``--json`` output
parses as strict JSON (no NaN); a closed stdout exits 0 quietly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from faults_kit import assert_one_error, build_world, npy_with_header, run_cli, snapshot

from mindsearch.cli.common import emit_json, json_safe


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = build_world(tmp_path_factory.mktemp("opts"))
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(30, 2, 8)).astype(np.float32)
    np.save(base / "images.npy", emb)
    np.save(base / "brain.npy", emb + 0.5 * rng.normal(size=emb.shape).astype(np.float32))
    zero = emb.copy()
    zero[4] = 0
    np.save(base / "zero_row.npy", zero)
    np.save(base / "no_rows.npy", np.zeros((0, 2, 8), np.float32))
    np.save(base / "no_voxel_rows.npy", np.zeros((0, 20), np.float32))
    nan = emb.copy()
    nan[2, 1, 3] = np.nan
    np.save(base / "nan.npy", nan)
    (base / "huge.npy").write_bytes(npy_with_header((10**12, 16)))
    np.save(base / "short.npy", emb[:10])
    np.save(base / "other_dim.npy", emb[:, :, :4])
    (base / "a_file").write_text("keep me\n")
    return base


def strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def ev(*args):
    return ("eval", "retrieval", "--run", "{w}/ridge", *args)


def ev_files(brain, images="images.npy", *args):
    return ("eval", "retrieval", "--brain", f"{{w}}/{brain}", "--images", f"{{w}}/{images}", *args)


def tr(*args):
    return ("train", "--data", "{w}/sim", "--subject", "1", "--out", "{t}/out", *args)


EVAL, TRAIN, SIM = "mindsearch eval retrieval", "mindsearch train", "mindsearch simulate"

# (name, argv with {w} = world and {t} = tmp_path, what the one error line must name)
CASES = [
    ("pool_zero", ev("--pool", "0"), EVAL),
    ("pool_negative", ev("--pool", "-5"), EVAL),
    ("pool_one", ev("--pool", "1"), EVAL),
    ("pool_text", ev("--pool", "many"), EVAL),
    ("seed_negative", ev("--seed", "-1"), EVAL),
    ("seed_too_big", ev("--seed", str(2**32)), EVAL),
    ("loops_zero", ev("--loops", "0"), EVAL),
    ("loops_negative", ev("--loops", "-3"), EVAL),
    ("subject_zero", ev("--subject", "0"), EVAL),
    ("unknown_option", ev("--bogus"), EVAL),
    ("average_unknown", ev("--average", "median"), EVAL),
    ("neither_run_nor_files", ("eval", "retrieval"), "--run"),
    ("zero_embedding_row", ev_files("zero_row.npy"), "{w}/zero_row.npy"),
    ("zero_rows_file", ev_files("no_rows.npy"), "{w}/no_rows.npy"),
    ("nan_embedding", ev_files("nan.npy"), "{w}/nan.npy"),
    ("huge_header_embedding", ev_files("huge.npy"), "{w}/huge.npy"),
    ("row_count_mismatch", ev_files("short.npy"), "{w}/short.npy"),
    ("dimension_mismatch", ev_files("brain.npy", "other_dim.npy"), "{w}/brain.npy"),
    ("set_duplicates_flag", tr("--set", "epochs=3", "--epochs", "1"), "use --epochs"),
    ("set_duplicates_flag_alone", tr("--set", "batch_size=8"), "use --batch-size"),
    ("set_seed_duplicates_flag", tr("--set", "seed=3"), "use --seed"),
    ("set_not_a_number", tr("--set", "lr=abc"), "lr=abc"),
    ("set_bool_for_int", tr("--set", "accumulate=true"), "accumulate=true"),
    ("set_unknown_key", tr("--set", "learning_rate=0.1"), "learning_rate"),
    ("set_no_equals", tr("--set", "lr"), "KEY=VALUE"),
    ("set_twice", tr("--set", "lr=0.1", "--set", "lr=0.2"), "set twice"),
    ("set_nan", tr("--set", "lr=NaN"), "lr=NaN"),
    ("set_with_ridge", tr("--model", "ridge", "--set", "lr=0.1"), "ridge"),
    ("out_is_a_file", ("train", "--data", "{w}/sim", "--subject", "1", "--model", "ridge", "--out", "{w}/a_file"),
     "{w}/a_file"),
    ("epochs_zero", tr("--epochs", "0"), TRAIN),
    ("batch_size_one", tr("--batch-size", "1"), TRAIN),
    ("train_seed_negative", tr("--seed", "-1"), TRAIN),
    ("train_subject_zero", ("train", "--data", "{w}/sim", "--subject", "0", "--out", "{t}/out"), TRAIN),
    ("alpha_zero", tr("--model", "ridge", "--alpha", "0"), TRAIN),
    ("train_missing_data", ("train", "--subject", "1", "--out", "{t}/out"), TRAIN),
    ("train_data_absent", ("train", "--data", "{t}/nope", "--subject", "1", "--out", "{t}/out"), "{t}/nope"),
    ("ridge_subject_absent", ("train", "--model", "ridge", "--data", "{w}/sim", "--subject", "3", "--out", "{t}/out"),
     "{w}/sim"),
    ("sim_seed_negative", ("simulate", "{t}/sim", "--seed", "-1"), SIM),
    ("sim_set_not_int", ("simulate", "{t}/sim", "--set", "n_voxels=abc"), "n_voxels=abc"),
    ("sim_set_subjects_flag", ("simulate", "{t}/sim", "--set", "subjects=[1]"), "use --subjects"),
    ("sim_out_is_a_file", ("simulate", "{w}/a_file"), "{w}/a_file"),
    ("embed_zero_rows", ("embed", "--run", "{w}/ridge", "--voxels", "{w}/no_voxel_rows.npy", "--out", "{t}/e.npy"),
     "{w}/no_voxel_rows.npy"),
    ("unknown_command", ("evaluate",), "mindsearch"),
]


@pytest.mark.parametrize("name,argv,blamed", CASES, ids=[c[0] for c in CASES])
def test_bad_option_is_one_error(world, tmp_path, capsys, name, argv, blamed):
    fill = lambda s: s.format(w=world, t=tmp_path)  # noqa: E731
    before = snapshot(world)
    code, out, err = run_cli([fill(a) for a in argv], capsys)
    assert_one_error(code, err, fill(blamed))
    assert out == ""
    assert snapshot(world) == before
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


def test_pool_larger_than_items_shrinks_with_a_notice(world, capsys):
    code, out, err = run_cli(["eval", "retrieval", "--brain", world / "brain.npy", "--images", world / "images.npy",
                              "--pool", "300", "--loops", "3", "--json"], capsys)
    assert code == 0, err
    scores = strict_json(out)
    assert scores["pool"] == scores["n"] == 30 and scores["pool_requested"] == 300
    assert err.strip() == f"notice: {scores['notice']}"
    code, out, err = run_cli(["eval", "retrieval", "--brain", world / "brain.npy", "--images", world / "images.npy",
                              "--pool", "30", "--loops", "3", "--json"], capsys)
    assert "notice" not in strict_json(out) and err == ""


@pytest.mark.parametrize("argv", [
    ("eval", "retrieval", "--run", "{w}/ridge", "--loops", "2", "--json"),
    ("eval", "retrieval", "--brain", "{w}/brain.npy", "--images", "{w}/images.npy", "--loops", "1", "--json"),
    ("data", "inspect", "{w}/sim", "--json"),
], ids=["eval_run", "eval_files", "data_inspect"])
def test_json_outputs_are_strict_json(world, capsys, argv):
    code, out, err = run_cli([a.format(w=world) for a in argv], capsys)
    assert code == 0, err
    strict_json(out)


def test_emit_json_writes_null_for_non_finite(capsys):
    emit_json({"a": float("nan"), "b": [np.float32("inf"), np.int64(3)], "c": np.array([1.5, -np.inf]),
               "d": {"e": -math.inf, 1: True}})
    assert strict_json(capsys.readouterr().out) == {"a": None, "b": [None, 3], "c": [1.5, None],
                                                    "d": {"e": None, "1": True}}
    assert json_safe((np.nan,)) == [None]


def test_closed_stdout_exits_quietly(world):
    """`mindsearch ... --json | head -c 0`: the reader is gone before we write a byte."""
    proc = subprocess.Popen([sys.executable, "-m", "mindsearch.cli.main", "data", "inspect", str(world / "sim"),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    proc.stdout.close()  # like `head` exiting: every write now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""
