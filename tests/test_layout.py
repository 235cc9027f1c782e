"""The house rules: one installed namespace, and imports that flow one way.

cli -> training / eval -> core (mindsearch) -> indexes. training and eval do not import each
other. Checked by walking every module's AST (imports inside functions count too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder -> (dotted package, layer). A module may import only packages of a lower layer or its own.
PACKAGES = {
    "indexes": ("mindsearch.indexes", 0),
    "mindsearch": ("mindsearch", 1),
    "training": ("mindsearch.training", 2),
    "eval": ("mindsearch.eval", 2),
    "cli": ("mindsearch.cli", 3),
}


def _package_of(module: str) -> str | None:
    """The folder a dotted module lives in ('mindsearch.indexes.x' -> 'indexes')."""
    if module != "mindsearch" and not module.startswith("mindsearch."):
        return None
    for folder, (dotted, _) in sorted(PACKAGES.items(), key=lambda kv: -len(kv[1][0])):
        if module == dotted or module.startswith(dotted + "."):
            return folder
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from mindsearch import eval` names a package too
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def violations(root: Path = ROOT) -> list[str]:
    bad: list[str] = []
    for folder, (_, layer) in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            for lineno, module in _imports(path):
                if module.split(".")[0] in {"indexes", "training", "eval", "cli", "benchmarks"}:
                    bad.append(f"{path.relative_to(root)}:{lineno}: imports top-level {module}")
                    continue
                target = _package_of(module)
                if target is None or target == folder:
                    continue
                if PACKAGES[target][1] >= layer:
                    bad.append(f"{path.relative_to(root)}:{lineno}: {folder} may not import {module}")
    return sorted(set(bad))


def test_imports_flow_one_way():
    assert violations() == []


def test_direction_check_catches_a_forbidden_import(tmp_path):
    # A copy of the tree with one upward import added must fail the check.
    for folder in PACKAGES:
        (tmp_path / folder).mkdir()
        for path in (ROOT / folder).rglob("*.py"):
            dest = tmp_path / folder / path.relative_to(ROOT / folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(path.read_text())
    assert violations(tmp_path) == []
    (tmp_path / "indexes" / "bad.py").write_text("def f():\n    from mindsearch.engine import Engine\n")
    (tmp_path / "mindsearch" / "bad.py").write_text("import mindsearch.eval.run_eval\n")
    (tmp_path / "training" / "bad.py").write_text("from mindsearch.eval import run_eval\n")
    (tmp_path / "eval" / "bad.py").write_text("from mindsearch.cli.main import main\n")
    found = {line.split(":")[0] for line in violations(tmp_path)}
    assert found == {"indexes/bad.py", "mindsearch/bad.py", "training/bad.py", "eval/bad.py"}


@pytest.mark.slow
def test_wheel_installs_one_namespace(tmp_path):
    """A non-editable install puts only `mindsearch/` into site-packages (no cli, eval, ...)."""
    # Build from a copy of the tracked files, so the checkout gets no build/ folder.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    for name in tracked.stdout.split():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    if proc.returncode != 0 and "setuptools" in proc.stderr:
        pytest.skip("setuptools>=68 not installed in this environment")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("mindsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mindsearch"}, top
    for sub in ("indexes/collection.py", "training/trainer.py", "eval/run_eval.py", "cli/main.py",
                "models/configs/tiny.json"):
        assert f"mindsearch/{sub}" in names
    assert not any("bench_" in n for n in names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert b"mindsearch.cli.main:main" in zipfile.ZipFile(wheel).read(entry[0])


def test_a_missing_optional_dependency_names_its_extra():
    from mindsearch.errors import MindsearchError, require

    assert require("json", "serve", "x").dumps([1]) == "[1]"
    with pytest.raises(MindsearchError, match=r"pip install 'mindsearch\[serve\]'"):
        require("mindsearch_no_such_module", "serve", "`mindsearch serve`")
