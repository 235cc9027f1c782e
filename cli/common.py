"""Helpers shared by the command modules (stdlib + click only: imported at CLI start-up)."""

from __future__ import annotations

import json

import click


def say(msg: str) -> None:
    """Progress and diagnostics go to stderr so stdout stays parseable (tables, JSON)."""
    click.echo(msg, err=True)


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, default=_default))


def _default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    return str(o)


def parse_ints(text: str | None) -> list[int] | None:
    if text is None or text == "":
        return None
    try:
        return [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def parse_settings(items) -> dict:
    """``--set KEY=VALUE`` pairs (repeatable) -> a dict; values are JSON when they parse
    (``true``, ``3``, ``0.5``, ``[1, 2]``), else plain strings."""
    from mindsearch.errors import MindsearchError

    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise MindsearchError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


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
