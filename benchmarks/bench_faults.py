"""The fault suite's class table: cases tried and handled cleanly, per class of issue 10.

    python -m benchmarks.bench_faults [--out faults.json]

Runs ``tests/test_faults_*.py`` under pytest (JUnit XML), counts every test case (a parametrised
case is one case; a seeded fuzz test is one case covering its iterations) and groups them by file:
a case is *clean* when it passes, i.e. the command exited 2 with exactly one ``error:`` line naming
the file, no traceback, and nothing lost or changed (or, for the crash cases, the next run cleaned up
and completed). Prints the table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

CLASSES = {
    "test_faults_data.py": "bad data files",
    "test_faults_runs.py": "bad runs",
    "test_faults_options.py": "options and output hygiene",
    "test_faults_crash.py": "crash safety (non-index)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Write the table as JSON here.")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        *(f"tests/{name}" for name in CLASSES)], cwd=root, capture_output=True)
        seconds = time.perf_counter() - t0
        cases = ET.parse(report).getroot().iter("testcase")
        table = {label: {"cases": 0, "clean": 0, "unclean": []} for label in CLASSES.values()}
        for case in cases:
            name = Path(case.get("classname", "").replace(".", "/")).name + ".py"
            label = CLASSES.get(name)
            if label is None:
                continue
            row = table[label]
            row["cases"] += 1
            if case.find("failure") is None and case.find("error") is None and case.find("skipped") is None:
                row["clean"] += 1
            else:
                row["unclean"].append(case.get("name"))
    width = max(len(k) for k in table)
    print(f"{'class':<{width}}  cases  clean")
    for label, row in table.items():
        print(f"{label:<{width}}  {row['cases']:>5}  {row['clean']:>5}")
        for name in row["unclean"]:
            print(f"{'':<{width}}    not clean: {name}")
    print(f"({seconds:.1f} s wall on {os.cpu_count()} CPUs)")
    if args.out:
        args.out.write_text(json.dumps({"classes": table, "seconds": seconds, "cpus": os.cpu_count(),
                                        "platform": platform.platform()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
