"""Which target embeddings a dataset uses: ``DIR/targets/{name}.npy`` or an explicit ``.npy``.

Each set is three files: ``{name}.npy`` (n, tokens, dim), ``{name}_ids.npy`` (n,) image ids
and ``{name}.json`` (the embedding space record, optional for hand-made sets).
"""

from __future__ import annotations

from pathlib import Path

from mindsearch.data.arrays import Targets
from mindsearch.errors import MindsearchError


def available(root: Path) -> list[str]:
    d = Path(root) / "targets"
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.npy") if not p.stem.endswith("_ids"))


def load(npy: Path, ids=None) -> Targets:
    """A target set from its ``.npy``; ids from ``ids`` (array or path) or ``{stem}_ids.npy``."""
    from mindsearch.io import read_json

    npy = Path(npy)
    if not npy.is_file():
        raise MindsearchError("target file not found", npy)
    if ids is None:
        ids = npy.with_name(f"{npy.stem}_ids.npy")
        if not ids.is_file():
            raise MindsearchError(f"no image ids for these targets (expected {ids.name} beside it, or ids=)", npy)
    record = npy.with_suffix(".json")
    space = read_json(record) if record.is_file() else None
    if space is not None and not isinstance(space, dict):
        raise MindsearchError("space record must be a JSON object", record)
    return Targets(npy, ids, space, name=npy.stem, space_path=record if space is not None else None)


def attach(ds, targets=None, ids=None) -> None:
    """Resolve ``targets`` (None, a name, or a .npy path) and attach the set to ``ds``.

    Default: the manifest's ``targets`` key, else the only set present. Several sets and no
    default is not an error until someone asks for targets.
    """
    names = available(ds.root)
    ds.target_names = names
    if targets is None:
        wanted = ds.manifest.get("targets")
        if isinstance(wanted, str) and wanted in names:
            targets = wanted
        elif len(names) == 1:
            targets = names[0]
        elif names:
            ds.set_targets(None, f"several target sets ({', '.join(names)}): pick one with targets=NAME")
            return
        else:
            return
    targets = str(targets)
    if targets.endswith(".npy"):
        path = Path(targets)
        if not path.is_file() and not path.is_absolute() and (ds.root / path).is_file():
            path = ds.root / path
        ds.set_targets(load(path, ids))
        return
    if targets not in names:
        listed = ", ".join(names) or "none"
        raise MindsearchError(f"no target set {targets!r} (available: {listed})", ds.root / "targets")
    ds.set_targets(load(ds.root / "targets" / f"{targets}.npy", ids))
