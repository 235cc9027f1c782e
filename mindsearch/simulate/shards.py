"""Webdataset-style tar shards written with plain ``tarfile`` (no webdataset dependency).

A webdataset sample is the set of tar members sharing a key: ``{key}.{ext}``.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np

BEHAV_COLUMNS = 17


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def png_bytes(image_chw: np.ndarray) -> bytes:
    from PIL import Image

    hwc = np.clip(np.rint(np.asarray(image_chw, np.float32).transpose(1, 2, 0) * 255), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(hwc.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def behav_row(image_id, subject, session, trial_in_session, trial, shared) -> np.ndarray:
    """MindEye2's (1, 17) float64 behav row; columns we do not simulate are -1 (NaN there)."""
    row = np.full((1, BEHAV_COLUMNS), -1.0)
    row[0, [0, 1, 2, 3, 4, 5, 16]] = [image_id, subject, session, 0, trial_in_session, trial, float(shared)]
    return row


class ShardWriter:
    """Append samples to one tar file; members get a fixed mtime so output is reproducible."""

    def __init__(self, path):
        self._tar = tarfile.open(path, "w")

    def add(self, key: str, files: dict) -> None:
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
