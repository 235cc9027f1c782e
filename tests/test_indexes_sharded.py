"""autofaiss's large-index recipe at small scale: train on a sample, add shards in two worker
processes, merge (in memory and on disk), and compare with the single-process index."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mindsearch.indexes.errors import InputError  # noqa: E402
from mindsearch.indexes.faiss_index import load_index, new_index, search, set_search_params  # noqa: E402
from mindsearch.indexes.recall import recall_at_k  # noqa: E402
from mindsearch.indexes.sharded import build_sharded  # noqa: E402

KEY = "IVF32,Flat"


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = _unit(centres[rng.integers(0, 40, 6000)] + 0.4 * rng.normal(size=(6000, 32)))
    ids = np.arange(6000, dtype=np.int64) * 7 + 3  # ids that are not row numbers
    folder = tmp_path_factory.mktemp("shards")
    shards = []
    for i, (a, b) in enumerate([(0, 1500), (1500, 2000), (2000, 4100), (4100, 6000)]):
        np.save(folder / f"v{i}.npy", x[a:b])
        np.save(folder / f"i{i}.npy", ids[a:b])
        shards.append((folder / f"v{i}.npy", folder / f"i{i}.npy"))
    sample = x[rng.choice(6000, 2000, replace=False)]
    return x, ids, shards, sample


@pytest.mark.parametrize("ondisk", [False, True])
def test_sharded_build_equals_single_process(vectors, tmp_path, ondisk):
    x, ids, shards, sample = vectors
    rec = build_sharded(KEY, shards, tmp_path / "big.faiss", sample=sample, workers=2, ondisk=ondisk)
    assert rec["ntotal"] == rec["added"] == 6000 and rec["shards"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == (["big.faiss", "big.faiss.ivfdata"] if ondisk
                                                          else ["big.faiss"])  # no leftovers

    # The single-process index from the same sample, trained the same way.
    single = new_index(KEY, 32)
    single.train(sample)
    single.add_with_ids(x, ids)

    merged = load_index(tmp_path / "big.faiss")
    queries = _unit(x[:200] + 0.8 * np.random.default_rng(1).normal(size=(200, 32)))  # off-manifold
    for index in (single, merged):
        set_search_params(index, nprobe=8)
    i1, d1 = search(single, queries, 16)
    i2, d2 = search(merged, queries, 16)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)

    # Recall against exact search with held-out, brain-like queries is measured, not assumed.
    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    _, truth = exact.search(queries, 16)
    assert recall_at_k(i2, ids[truth], 16) > 0.8


def test_sharded_build_refuses_what_cannot_be_merged(vectors, tmp_path):
    _, _, shards, sample = vectors
    with pytest.raises(InputError, match="needs no training"):
        build_sharded("Flat", shards, tmp_path / "x.faiss", sample=sample)
    with pytest.raises(InputError):
        build_sharded("HNSW16", shards, tmp_path / "x.faiss", sample=sample)
