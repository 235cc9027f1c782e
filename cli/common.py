"""Helpers shared by the command modules (stdlib + click only: imported at CLI start-up)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click


def say(msg: str) -> None:
    """Progress and diagnostics go to stderr so stdout stays parseable (tables, JSON)."""
    click.echo(msg, err=True)


def emit_json(obj, indent: int | None = None) -> None:
    """Print ``obj`` as strict JSON: NaN and Inf become null (``json`` would write bare ``NaN``)."""
    click.echo(json.dumps(json_safe(obj), indent=indent, allow_nan=False))


def json_safe(o):
    """``o`` with numpy values as Python ones, non-finite floats as None, unknown objects as str."""
    import math

    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    try:
        import numpy as np

        if isinstance(o, (np.generic, np.ndarray)):
            return json_safe(o.tolist())
    except ImportError:
        pass
    return str(o)


def parse_settings(items, kinds: dict[str, set[str]] | None = None, flags: dict[str, str] | None = None) -> dict:
    """``--set KEY=VALUE`` pairs: values are JSON when they parse (true, 3, 0.5), else strings.

    ``kinds``: key -> allowed type names ({"int", "None"}, empty = anything; ``None``: any key);
    unknown keys, values of the wrong type and keys that have their own flag (``flags``: key ->
    flag) are refused before anything is written.
    """
    import math

    from mindsearch.errors import MindsearchError

    flags = flags or {}
    out = {}
    for item in items or ():
        key, sep, text = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise MindsearchError(f"--set expects KEY=VALUE, got {item!r}")
        if key in flags:
            raise click.BadParameter(f"{key} has its own flag: use {flags[key]}", param_hint="--set")
        if kinds is not None and key not in kinds:
            raise click.BadParameter(f"unknown setting {key!r} (known: {', '.join(sorted(kinds))})",
                                     param_hint="--set")
        if key in out:
            raise click.BadParameter(f"{key} is set twice", param_hint="--set")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        allowed = kinds.get(key, set()) if kinds is not None else set()
        ok = not allowed or any((
            value is None and "None" in allowed,
            isinstance(value, bool) and "bool" in allowed,
            isinstance(value, int) and not isinstance(value, bool) and ({"int", "float"} & allowed),
            isinstance(value, float) and math.isfinite(value) and "float" in allowed,
            isinstance(value, str) and "str" in allowed,
            isinstance(value, list) and "list" in allowed,
            isinstance(value, dict) and "dict" in allowed,
        ))
        if not ok:
            raise click.BadParameter(f"{key}={text} is not {' or '.join(sorted(allowed))}", param_hint="--set")
        out[key] = value
    return out


def kinds_of(defaults: dict) -> dict[str, set[str]]:
    """Allowed type names per key from example values (None: anything)."""
    names = {bool: "bool", int: "int", float: "float", str: "str", list: "list", tuple: "list", dict: "dict"}
    return {k: ({names[type(v)]} if type(v) in names else set()) for k, v in defaults.items()}


def check_out_dir(out) -> None:
    """``--out`` must be a directory or not exist yet (a file there is refused, not replaced)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{out} exists and is not a directory", param_hint="--out")


@contextlib.contextmanager
def removed_if_failed(out):
    """Remove the ``--out`` directory a failed command created, if it is still empty."""
    path = Path(out)
    existed = path.exists()
    try:
        yield
    except BaseException:
        if not existed and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def parse_ints(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}%"


def table(rows: list[list], header: list[str]) -> str:
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cols[1:]]
    return "\n".join(lines)


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its children, in MiB."""
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * scale / (1 << 20)
