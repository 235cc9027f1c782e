"""Fault suite, bad runs: a doctored config.json, model.safetensors or zscore.safetensors is
one line ``error: <the file that is wrong>: ...`` with exit 2 (no traceback, nothing changed),
whatever the model type; a seeded fuzz of config values accepts or refuses, never crashes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from faults_kit import TINY_WORLD, assert_one_error, build_world, edit_json, run_cli, snapshot
from safetensors.numpy import load_file, save_file

from mindsearch.errors import MindsearchError
from mindsearch.runs import open_run

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny simulated dataset, a ridge run on it and an (untrained) MindEye run beside it."""
    return build_world(tmp_path_factory.mktemp("runs"), mindeye=True)


def config(r):
    return r / "config.json"


def weights(r):
    return r / "model.safetensors"


def zscore(r):
    return r / "zscore.safetensors"


def cfg(fn):
    """Damage: edit config.json with fn(obj); blame config.json."""
    def damage(r):
        edit_json(config(r), fn)
        return config(r)
    return damage


def tensors(path_of, fn, blame=None):
    """Damage: rewrite a safetensors file with fn(dict); blame it (or ``blame(r)``)."""
    def damage(r):
        t = dict(load_file(str(path_of(r))))
        fn(t)
        save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, str(path_of(r)))
        return (blame or path_of)(r)
    return damage


def raw(path_of, data: bytes | None, blame=None):
    def damage(r):
        if data is None:
            path_of(r).unlink()
        else:
            path_of(r).write_bytes(data(path_of(r).read_bytes()) if callable(data) else data)
        return (blame or path_of)(r)
    return damage


def setitem(key, value):
    return lambda c: c.__setitem__(key, value)


def delitem(key, section=None):
    def fn(c):
        (c[section] if section else c).pop(key)
    return fn


def set_in(section, key, value):
    return lambda c: c.setdefault(section, {}).__setitem__(key, value)


def scale(key, factor):
    return lambda t: t.__setitem__(key, t[key] * factor)


def poke(key, value, index=0):
    def fn(t):
        arr = np.array(t[key], copy=True)
        arr.reshape(-1)[index] = value
        t[key] = arr
    return fn


def reshape_first(key, n):
    return lambda t: t.__setitem__(key, t[key][..., :n] if t[key].ndim > 1 else t[key][:n])


def swap_weights(src):
    """Damage: this run's model.safetensors replaced by the other model type's."""
    def damage(r):
        shutil.copy(r.parent / src / "model.safetensors", weights(r))
        return weights(r)
    return damage


# (name, which run, damage(run) -> blamed file, what the message must say)
CASES = [
    ("subject_list", "ridge", cfg(setitem("subject", [1])), 'subject must be an integer'),
    ("subject_string", "ridge", cfg(setitem("subject", "1")), 'subject must be an integer'),
    ("subject_bool", "ridge", cfg(setitem("subject", True)), 'subject must be an integer'),
    ("subject_zero", "ridge", cfg(setitem("subject", 0)), 'subject must be an integer >= 1'),
    ("space_string", "ridge", cfg(setitem("space", "sim")), 'space must be null or an object'),
    ("space_tokens_string", "ridge", cfg(set_in("space", "tokens", "two")), 'space.tokens must be'),
    ("target_shape_vs_space", "ridge", cfg(setitem("target_shape", [7, 7])), 'disagrees with the space'),
    ("target_shape_scalar", "ridge", cfg(setitem("target_shape", 16)), 'target_shape must be a list'),
    ("target_shape_vs_weights", "ridge", lambda r: (edit_json(config(r), lambda c: c.update(
        target_shape=[3, 3], space=dict(c["space"], tokens=3, dim=3))), weights(r))[1], 'coef has shape'),
    ("top_level_list", "ridge", cfg(lambda c: []), 'must be a JSON object, got list'),
    ("top_level_string", "ridge", cfg(lambda c: "run"), 'must be a JSON object, got str'),
    ("config_not_json", "ridge", raw(config, b"{'format': 1"), 'not valid JSON'),
    ("config_empty", "ridge", raw(config, b""), 'not valid JSON'),
    ("config_binary", "ridge", raw(config, bytes(range(256))), 'not valid JSON'),
    ("config_missing", "ridge", raw(config, None), 'file not found'),
    ("config_deep_nesting", "ridge", raw(config, b"[" * 100000 + b"]" * 100000), 'RecursionError'),
    ("format_wrong", "ridge", cfg(setitem("format", "mindsearch-run/9")), 'not a mindsearch run'),
    ("model_unknown", "ridge", cfg(setitem("model", "resnet")), "unknown model type 'resnet'"),
    ("model_list", "ridge", cfg(setitem("model", ["ridge"])), 'unknown model type'),
    ("n_voxels_string", "ridge", cfg(setitem("n_voxels", "20")), 'n_voxels must be an integer'),
    ("n_voxels_vs_subjects", "ridge", cfg(setitem("n_voxels", 19)), 'but n_voxels is 19'),
    ("subjects_bad_keys", "ridge", cfg(setitem("subjects", {"one": 20})), 'subjects must be'),
    ("train_not_object", "ridge", cfg(setitem("train", "fast")), 'train must be'),
    ("data_path_number", "ridge", cfg(set_in("data", "path", 5)), 'data.path must be'),
    ("subject_missing", "ridge", cfg(delitem("subject")), 'subject is missing'),
    ("n_voxels_missing", "ridge", cfg(delitem("n_voxels")), 'n_voxels is missing'),
    ("ridge_without_target_shape", "ridge", cfg(delitem("target_shape")), 'target_shape is missing'),
    ("mindeye_weights_under_ridge", "ridge", swap_weights("mindeye"), "no 'coef' or 'intercept' tensor"),
    ("ridge_config_says_mindeye", "ridge", cfg(setitem("model", "mindeye")), "mindeye (the model's architecture)"),
    ("prior_sample_steps_many", "mindeye", cfg(set_in("train", "prior_sample_steps", "many")),
     'prior_sample_steps must be'),
    ("prior_sample_steps_zero", "mindeye", cfg(set_in("train", "prior_sample_steps", 0)),
     'prior_sample_steps must be'),
    ("mindeye_block_missing_tokens", "mindeye", cfg(delitem("tokens", "mindeye")), 'mindeye.tokens is missing'),
    ("mindeye_block_voxels_mismatch", "mindeye", cfg(lambda c: c["mindeye"].__setitem__("n_voxels", {"1": 7})),
     'mindeye.n_voxels has 7'),
    ("mindeye_under_ridge_label", "mindeye", lambda r: (edit_json(config(r), setitem("model", "ridge")), weights(r))[1],
     "no 'coef' or 'intercept' tensor"),
    ("weights_missing", "ridge", raw(weights, None, blame=lambda r: r), 'no model.safetensors'),
    ("weights_garbage", "ridge", raw(weights, bytes(range(256)) * 4), 'not a readable safetensors'),
    ("weights_truncated", "ridge", raw(weights, lambda b: b[: len(b) // 2]), 'not a readable safetensors'),
    ("weights_huge_header_length", "ridge", raw(weights, (10**15).to_bytes(8, "little") + b"{}"),
     'not a readable safetensors'),
    ("coef_missing", "ridge", tensors(weights, lambda t: t.pop("coef")), "no 'coef' tensor"),
    ("coef_vs_n_voxels", "ridge", tensors(weights, reshape_first("coef", 19)), 'coef has shape (16, 19)'),
    ("coef_nan", "ridge", tensors(weights, poke("coef", np.nan)), "tensor 'coef' holds 1 NaN"),
    ("intercept_inf", "ridge", tensors(weights, poke("intercept", np.inf)), "tensor 'intercept' holds 1 NaN/Inf"),
    ("mindeye_weights_nan", "mindeye", tensors(weights, lambda t: poke(sorted(t)[0], np.nan)(t)), 'holds 1 NaN/Inf'),
    ("mindeye_weights_wrong_shape", "mindeye",
     tensors(weights, lambda t: t.__setitem__(sorted(k for k in t if k.endswith("weight"))[0], np.ones((3, 3), "f4"))),
     'weights do not match the config'),
    ("zscore_mean_shape", "ridge", tensors(zscore, reshape_first("mean", 5)), 'mean has shape (1, 5)'),
    ("zscore_global_mean_shape", "ridge", tensors(zscore, reshape_first("global_mean", 5)), 'global_mean has shape (5,)'),
    ("zscore_std_zero", "ridge", tensors(zscore, scale("std", 0.0)), 'std has 20 value(s) <= 0'),
    ("zscore_global_std_nan", "ridge", tensors(zscore, poke("global_std", np.nan)), 'global_std holds non-finite'),
    ("zscore_missing_key", "ridge", tensors(zscore, lambda t: t.pop("sessions")), 'lacks sessions'),
    ("zscore_garbage", "ridge", raw(zscore, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"), 'not a readable safetensors'),
    ("zscore_nan_weights_blame_zscore", "mindeye", tensors(zscore, poke("mean", np.nan)), 'mean holds non-finite'),
]


@pytest.mark.parametrize("name,which,damage,says", CASES, ids=[c[0] for c in CASES])
def test_bad_run_is_one_error_naming_the_file(world, tmp_path, capsys, name, which, damage, says):
    for other in ("ridge", "mindeye"):
        shutil.copytree(world / other, tmp_path / other)
    run = tmp_path / which
    blamed = damage(run)
    before = snapshot(run)
    code, out, err = run_cli(["eval", "retrieval", "--run", run, "--data", world / "sim", "--loops", "2"], capsys)
    line = assert_one_error(code, err, blamed if blamed == run else f"{blamed}:")
    assert says in line
    assert out == ""
    assert snapshot(run) == before


def test_run_on_other_data_is_refused(world, tmp_path, capsys):
    """eval --run on a dataset with another voxel count names that dataset's voxel file."""
    code, _, err = run_cli(["simulate", tmp_path / "other", *TINY_WORLD, "--set", "n_voxels=21"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["eval", "retrieval", "--run", world / "ridge", "--data", tmp_path / "other"], capsys)
    assert_one_error(code, err, tmp_path / "other" / "betas_all_subj01_fp32_renorm.hdf5")
    code, _, err = run_cli(["eval", "retrieval", "--run", world / "ridge", "--subject", "2"], capsys)
    assert_one_error(code, err, world / "ridge" / "config.json")


def test_untouched_runs_still_work(world, capsys):
    for which in ("ridge", "mindeye"):
        code, out, err = run_cli(["eval", "retrieval", "--run", world / which, "--loops", "2", "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["n"] > 0


# ----------------------------------------------------------------------------- seeded fuzz

VALUES = [None, True, 0, -1, 1, 7, 10**30, 1.5, float("nan"), "", "x", "many", [], [1], [7, 7], {}, {"a": 1},
          {"1": "x"}, {"tokens": "two"}]


def test_fuzz_run_config(world, tmp_path):
    """Random keys of config.json set to random values: open + encode succeed or raise
    MindsearchError, never anything else."""
    rng = np.random.default_rng(7)
    run = tmp_path / "ridge"
    shutil.copytree(world / "ridge", run)
    original = json.loads(config(run).read_text())
    keys = [k for k in original if k not in ("versions", "created")]
    voxels = np.zeros((2, original["n_voxels"]), np.float32)
    for _ in range(80):
        c = json.loads(json.dumps(original))
        for _ in range(rng.integers(1, 3)):
            key = keys[rng.integers(len(keys))]
            target = c
            if isinstance(c[key], dict) and c[key] and rng.random() < 0.5:
                target, key = c[key], list(c[key])[rng.integers(len(c[key]))]
            target[key] = VALUES[rng.integers(len(VALUES))]
        config(run).write_text(json.dumps(c))
        try:
            open_run(run).encode(voxels)
        except MindsearchError:
            pass
