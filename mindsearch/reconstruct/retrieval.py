"""Retrieval-augmented reconstruction: the nearest indexed images of a brain embedding, as pixels.

MindEye1 queried LAION-5B's kNN service (dead since); here the index is a local mindsearch
collection (``mindsearch.engine.Engine``). A hit becomes pixels through its key:

- ``<dataset root>#image/<id>``: an index built from a dataset (``index build --data``): that
  dataset's images, read by id;
- ``h5:<row>`` or a relative file path: an index built from an images hdf5 / a folder: pass the
  same source as ``images=`` (a key never reaches outside that folder).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

DATASET_KEY = re.compile(r"^(?P<root>.+)#image/(?P<id>-?\d+)$")


class Retriever:
    def __init__(self, engine, index: str, *, images=None, size: int | None = None):
        self.engine, self.index, self.size = engine, index, size
        self.images_source = Path(images) if images is not None else None
        self._datasets: dict[str, object] = {}
        engine.open(index)  # fails early with the names of the indexes there are

    def search(self, embeddings: np.ndarray, run, k: int) -> list:
        """Top-``k`` hits per brain embedding (``engine.search``; the space check applies)."""
        return self.engine.search(self.index, embeddings, k=k, space=run.space, run_id=str(run.path))

    def pixels(self, hit) -> np.ndarray:
        """(3, H, W) float32 in [0, 1] for one hit."""
        engine = getattr(self, "engine", None)
        if self.images_source is None and hasattr(engine, "image_bytes"):
            # the index knows its sources (folder, hdf5, webdataset, dataset): read the original
            import io

            from PIL import Image

            data, _ = engine.image_bytes(self.index, int(hit.id))
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255
        key = hit.path or ""
        m = DATASET_KEY.match(key)
        if m:
            ds = self._dataset(m.group("root"))
            img = ds.images([int(m.group("id"))])[0]
        elif self.images_source is None:
            raise MindsearchError(f"index {self.index!r} hit {hit.id} ({key!r}) is not a dataset image; pass "
                                  "--images SRC (the folder or hdf5 the index was built from)")
        elif key.startswith("h5:"):
            img = self._h5_row(int(key[3:]))
        else:
            img = self._file(key)
        return np.asarray(img, np.float32)

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()

    def _dataset(self, root: str):
        if root not in self._datasets:
            from mindsearch.data import open_dataset

            self._datasets[root] = open_dataset(root)
        return self._datasets[root]

    def _h5_row(self, row: int) -> np.ndarray:
        import h5py

        with h5py.File(self.images_source, "r") as f:
            return np.asarray(f["images"][row], np.float32)

    def _file(self, key: str) -> np.ndarray:
        from PIL import Image

        base = self.images_source.resolve()
        path = (base / key).resolve()
        if base not in path.parents:
            raise MindsearchError(f"index key {key!r} points outside {base}", self.images_source)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255
        except OSError as exc:
            raise MindsearchError(f"cannot read the retrieved image ({exc})", path) from None
