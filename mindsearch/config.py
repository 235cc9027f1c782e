"""The user's defaults: which index root, index, run and dataset a bare command uses.

One TOML file, ``$MINDSEARCH_HOME/config.toml`` (else ``~/.mindsearch/config.toml``)::

    root = "/home/me/mindsearch-demo/indexes"
    index = "sim-images"
    run = "/home/me/mindsearch-demo/runs/ridge"
    data = "/home/me/mindsearch-demo/data"

    [service]            # written by a running `mindsearch serve`, removed when it stops
    url = "http://127.0.0.1:8765"
    token = "..."

``mindsearch demo`` and ``mindsearch use`` write it; the CLI turns it into click's
``default_map``, so a flag (or a ``MINDSEARCH_<COMMAND>_<OPTION>`` variable) always wins over
it. ``MINDSEARCH_ROOT`` / ``_INDEX`` / ``_RUN`` / ``_DATA`` override single entries for every
command. Stdlib only: the CLI reads this at start-up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from mindsearch.errors import MindsearchError

KEYS = ("root", "index", "run", "data")
SERVICE_KEYS = ("url", "token")
ENV = {key: f"MINDSEARCH_{key.upper()}" for key in KEYS}


def home() -> Path:
    """mindsearch's own directory: $MINDSEARCH_HOME, else ~/.mindsearch."""
    value = os.environ.get("MINDSEARCH_HOME")
    return Path(value) if value else Path.home() / ".mindsearch"


def config_path() -> Path:
    return home() / "config.toml"


def load(*, env: bool = True) -> dict:
    """The saved defaults (``{}`` when there is no file), with MINDSEARCH_* entries on top."""
    path = config_path()
    cfg: dict = {}
    if path.is_file():
        try:
            cfg = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise MindsearchError(f"not a valid config file ({exc}); fix it or run `mindsearch use`",
                                  path) from None
    if env:
        for key, var in ENV.items():
            if os.environ.get(var):
                cfg[key] = os.environ[var]
    return cfg


def save(values: dict, *, service: dict | None | bool = False, fresh: bool = False) -> Path:
    """Merge ``values`` (None removes a key) into the file and write it atomically.

    ``service``: a dict replaces the [service] table, None removes it, False keeps it.
    ``fresh``: start from nothing (also replaces a file that does not parse).
    """
    from mindsearch.io import atomic_path

    cfg = {} if fresh else load(env=False)
    for key, value in values.items():
        if key not in KEYS:
            raise ValueError(f"unknown config key {key!r}")
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = str(value)
    if service is None:
        cfg.pop("service", None)
    elif service is not False:
        cfg["service"] = {k: str(v) for k, v in service.items() if k in SERVICE_KEYS}
    path = config_path()
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(cfg))
        tmp.chmod(0o600)  # may hold the service's bearer token
    return path


def dumps(cfg: dict) -> str:
    """TOML for our flat string keys plus one [service] table (JSON string escapes are TOML's)."""
    lines = [f"{k} = {json.dumps(str(cfg[k]))}" for k in KEYS if k in cfg]
    service = cfg.get("service") or {}
    if service:
        lines += ["", "[service]", *(f"{k} = {json.dumps(str(v))}" for k, v in service.items())]
    return "\n".join(lines) + "\n"


def default_map(cfg: dict) -> dict:
    """click ``default_map`` for the saved defaults: the root for every command that takes one,
    index / run / dataset for ``query`` only (other commands mean something else by them)."""
    root = cfg.get("root")
    rooted = _Every({"root": root} if root else {})
    query = {"root": root, "index_name": cfg.get("index"), "run_dir": cfg.get("run"), "data": cfg.get("data")}
    out = {"query": {k: v for k, v in query.items() if v}, "index": rooted, "embed": dict(rooted.value),
           "data": _Every({"data": cfg["data"]} if cfg.get("data") else {}),
           "serve": {k: v for k, v in {"root": root, "runs": cfg.get("run") and [cfg["run"]],
                                       "data": cfg.get("data")}.items() if v}}
    return out


class _Every(dict):
    """A default_map for a group: the same defaults for each of its sub-commands."""

    def __init__(self, value: dict):
        super().__init__()
        self.value = value

    def get(self, key, default=None):
        return dict(self.value)

    def __bool__(self):
        return bool(self.value)
