"""Saved defaults (config.toml): written atomically, read back exactly, and always beaten by
MINDSEARCH_* variables and flags."""

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from mindsearch import config
from mindsearch.cli.main import cli, defaults


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDSEARCH_HOME", str(tmp_path / "home"))
    for key in list(os.environ):
        if key.startswith("MINDSEARCH_") and key != "MINDSEARCH_HOME":
            monkeypatch.delenv(key)
    return tmp_path / "home"


def run(*args, env=None):
    """The CLI as `main()` builds it: saved defaults as default_map, MINDSEARCH_* variables."""
    return CliRunner().invoke(cli, [str(a) for a in args], default_map=defaults(), auto_envvar_prefix="MINDSEARCH",
                              env=env, catch_exceptions=False)


def test_round_trip_is_exact_and_private(home):
    tricky = 'C:\\data\\"quoted" dir\twith tab/ünïcode'
    path = config.save({"root": tricky, "index": "sim-images"}, service={"url": "http://127.0.0.1:1", "token": "t"})
    assert path == home / "config.toml"
    assert config.load() == {"root": tricky, "index": "sim-images",
                             "service": {"url": "http://127.0.0.1:1", "token": "t"}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the service token
    config.save({"index": None}, service=None)
    assert config.load() == {"root": tricky}
    assert [p.name for p in home.iterdir()] == ["config.toml"]  # no temporary left behind


def test_flags_and_variables_beat_saved_defaults(home, tmp_path, monkeypatch):
    emb = tmp_path / "q.npy"
    np.save(emb, np.ones((1, 4), np.float32))
    config.save({"root": tmp_path / "saved"})
    # No index under any of these roots: the error names the root the command actually used.
    res = run("query", "--embedding", emb)
    assert res.exit_code == 2 and str(tmp_path / "saved") in res.stderr
    assert "--root" in res.stderr and "MINDSEARCH_HOME" in res.stderr
    monkeypatch.setenv("MINDSEARCH_ROOT", str(tmp_path / "env-all"))
    res = run("query", "--embedding", emb)
    assert str(tmp_path / "env-all") in res.stderr
    res = run("query", "--embedding", emb, env={"MINDSEARCH_QUERY_ROOT": str(tmp_path / "env-query")})
    assert str(tmp_path / "env-query") in res.stderr
    res = run("query", "--embedding", emb, "--root", tmp_path / "flag",
              env={"MINDSEARCH_QUERY_ROOT": str(tmp_path / "env-query")})
    assert str(tmp_path / "flag") in res.stderr


def test_use_checks_what_it_saves(home, tmp_path):
    (tmp_path / "idx" / "pics").mkdir(parents=True)
    (tmp_path / "idx" / "pics" / "manifest.json").write_text("{}")
    res = run("use", "--run", tmp_path / "nope")
    assert res.exit_code == 2 and "not a run directory" in res.stderr
    res = run("use", "--root", tmp_path / "idx", "--index", "other")
    assert res.exit_code == 2 and "no index named 'other'" in res.stderr and "--root" in res.stderr
    assert not (home / "config.toml").exists()  # nothing half-saved
    res = run("use", "--root", tmp_path / "idx", "--index", "pics", "--json")
    assert res.exit_code == 0
    shown = json.loads(res.stdout)
    assert shown["root"] == str((tmp_path / "idx").resolve()) and shown["index"] == "pics"
    res = run("use", "--clear")
    assert "root: -" in res.stdout.replace("   ", "")


def test_a_broken_config_warns_but_does_not_lock_the_user_out(home):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("root = [unterminated\n")
    assert defaults() == {}  # the CLI itself starts, with a warning on stderr
    res = CliRunner().invoke(cli, ["use"], default_map=defaults(), catch_exceptions=False)
    assert res.exit_code == 2 and "not a valid config file" in res.stderr
    res = CliRunner().invoke(cli, ["use", "--clear"], default_map=defaults(), catch_exceptions=False)
    assert res.exit_code == 0 and config.load() == {}  # repaired
