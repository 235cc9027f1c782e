"""A tiny simulated world (dataset, ridge run, index, brain store) and a real `mindsearch serve`
started on a free loopback port, for the service and config tests (not a test module)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from localproc import free_port, stop

TINY_SIM = dict(n_voxels=120, n_shared=60, n_unique=90, trials_per_session=150, image_size=32,
                tokens=3, dim=16, mc_min_draws=10, mc_max_draws=40)
INDEX = "sim"


def build_world(root: Path, *, brain_store: bool = True) -> dict:
    """simulate (tiny) + ridge + an index of the simulated images (+ the test trials as a brain store)."""
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.engine import Engine
    from mindsearch.runs import open_run
    from mindsearch.simulate import simulate
    from mindsearch.training.ridge import train_ridge

    data = simulate(root / "data", "small", seed=3, **TINY_SIM)
    train_ridge(data, 1, root / "ridge")
    engine = Engine(root / "indexes")
    engine.build_from_dataset(INDEX, data)
    if brain_store:
        run = open_run(root / "ridge")
        with open_dataset(data) as ds:
            test = load_split(ds, 1, "test", zscore=True, average="none")
        encoded = run.encode(test.voxels, zscore=False, outputs=("disjointed",))
        engine.store_brain("test-trials", run, encoded, subject=1, trials=test.trials,
                           image_ids=test.image_ids, source=str(data))
    return {"root": root, "data": Path(data).resolve(), "run": (root / "ridge").resolve(),
            "indexes": (root / "indexes").resolve()}


def cli_env(home: Path) -> dict:
    env = dict(os.environ, MINDSEARCH_HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for key in list(env):  # nothing from the developer's own shell may steer the CLI under test
        if key.startswith("MINDSEARCH_") and key != "MINDSEARCH_HOME":
            del env[key]
    return env


def mindsearch(home: Path, *args, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would (a fresh process, MINDSEARCH_HOME=home)."""
    proc = subprocess.run([sys.executable, "-m", "mindsearch.cli.main", *map(str, args)], env=cli_env(home),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"mindsearch {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@contextlib.contextmanager
def serving(home: Path, world: dict, *, token: str = "test-token", extra=(), wait_s: float = 120):
    """`mindsearch serve` in a subprocess; yields its base URL; always stopped at the end."""
    port = free_port()
    args = [sys.executable, "-m", "mindsearch.cli.main", "serve", "--root", world["indexes"], "--run", world["run"],
            "--data", world["data"], "--port", port, "--token", token, *extra]
    log = open(home / f"serve-{port}.log", "w")
    proc = subprocess.Popen([str(a) for a in args], env=cli_env(home), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited ({proc.returncode}): {(home / f'serve-{port}.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer within {wait_s}s")
            time.sleep(0.2)
        yield url
    finally:
        stop(proc)
        log.close()


def call(url: str, route: str, *, token: str | None = "test-token", body: bytes | None = None,
         content_type: str | None = None, method: str | None = None, timeout: float = 60):
    """(status, headers, parsed JSON or raw bytes) of one HTTP request."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url + route, data=body, headers=headers,
                                 method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, raw = exc.code, dict(exc.headers), exc.read()
    if hdrs.get("content-type", "").startswith("application/json"):
        return status, hdrs, json.loads(raw)
    return status, hdrs, raw


def post_json(url: str, route: str, payload, **kw):
    return call(url, route, body=json.dumps(payload).encode(), content_type="application/json", **kw)
