"""The ridge baseline's encoder: a linear map from z-scored voxels to flattened targets.

Fitting lives in ``training.ridge``; this module only applies saved weights, so querying with
a ridge run needs numpy and safetensors, nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mindsearch.io import load_tensors


class RidgeEncoder:
    def __init__(self, coef: np.ndarray, intercept: np.ndarray, target_shape: tuple[int, int]):
        self.coef = np.asarray(coef, dtype=np.float32)  # (T*D, V)
        self.intercept = np.asarray(intercept, dtype=np.float32)  # (T*D,)
        self.target_shape = tuple(target_shape)

    @classmethod
    def load(cls, run_dir: str | Path, config: dict, device: str = "cpu") -> "RidgeEncoder":
        # numpy on the CPU whatever ``device`` says: one matrix product needs no accelerator
        from mindsearch.run_schema import check_finite, check_ridge_shapes

        path = Path(run_dir) / "model.safetensors"
        w = load_tensors(path)
        check_ridge_shapes({k: v.shape for k, v in w.items()}, config, path)
        check_finite(w, path)
        return cls(w["coef"], w["intercept"], config["target_shape"])

    def encode(self, voxels: np.ndarray, subject: int | None = None, outputs=None) -> dict:
        pred = np.asarray(voxels, dtype=np.float32) @ self.coef.T + self.intercept
        pred = pred.reshape(len(pred), *self.target_shape)
        # A linear map has one output: it is both the backbone and the retrieval embedding.
        return {"disjointed": pred, "backbone": pred}
