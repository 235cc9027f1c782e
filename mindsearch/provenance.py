"""What a run records about how it was made: package versions, host, time."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

PACKAGES = ("mindsearch", "torch", "numpy", "scikit-learn", "h5py", "lancedb", "faiss-cpu",
            "open_clip_torch", "diffusers", "accelerate")


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def stamp() -> dict:
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions()}
