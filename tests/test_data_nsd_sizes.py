"""The data layer at real NSD design sizes (30,000 trials, 40 sessions, shared1000 test set)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mindsearch.data import open_dataset
from mindsearch.data.preprocess import load_split


def test_real_design_plain_dataset(tmp_path, nsd_fixtures):
    from scipy.io import loadmat

    design = loadmat(nsd_fixtures / "nsd_expdesign.mat")
    order = design["masterordering"].ravel().astype(np.int64)  # 1-based into subject's 10k images
    subjectim = design["subjectim"].astype(np.int64)
    trial = np.arange(order.size)
    table = pd.DataFrame({"subject": 1, "session": trial // 750 + 1, "trial": trial,
                          "image_id": subjectim[0, order - 1] - 1,
                          "split": np.where(order <= 1000, "test", "train")})
    table.to_parquet(tmp_path / "trials.parquet", index=False)
    np.save(tmp_path / "voxels.npy", np.random.default_rng(0).normal(size=(order.size, 4)).astype(np.float32))
    with open_dataset(tmp_path) as ds:
        t = ds.trials
        assert len(t) == 30_000 and t.session.nunique() == 40
        assert t[t.split == "test"].image_id.nunique() == 1000
        assert t.rep.max() == 2
        test = load_split(ds, 1, "test", average="betas")
        assert len(test) == 1000 and set(test.n_reps) == {3}
        train = load_split(ds, 1, "train", average="none")
        assert len(train) == 27_000 and len(train.groups) == 9000
        assert train.zscore.mean.shape == (40, 4)
