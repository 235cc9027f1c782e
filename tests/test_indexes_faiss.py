"""indexes.faiss_index and indexes.recall: key choice, exact search, persistence, recall@k."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)

from mindsearch.indexes import faiss_index as fi  # noqa: E402
from mindsearch.indexes import recall  # noqa: E402
from mindsearch.indexes.errors import InputError  # noqa: E402


def _unit(rng, n, d):
    return fi.as_vectors(rng.standard_normal((n, d)))


@pytest.mark.parametrize("n,expected", [(1_000, "Flat"), (100_000, "Flat"), (2_000_000, "HNSW32")])
def test_auto_key_by_size(n, expected):
    assert fi.choose_index_key(n, 768, "auto") == expected


def test_auto_key_tight_memory_and_explicit_kinds():
    # 2M x 768 does not fit HNSW or IVF-Flat in 1 GiB: autofaiss's OPQ/IVF-HNSW/PQ tier
    key = fi.choose_index_key(2_000_000, 768, "auto", memory_budget=2**30)
    assert key.startswith("OPQ") and "IVF16384_HNSW32" in key and key.endswith("x8")
    # ANCHORS 6.3 computed example: 1M x 768 @ 1G (above the exact threshold)
    assert fi.choose_index_key(1_000_000, 768, "auto", memory_budget=10**9, exact_max=0) == \
        "OPQ256_1024,IVF16384_HNSW32,PQ256x8"
    assert fi.choose_index_key(73_000, 768, "auto", memory_budget=4 * 10**9, exact_max=0) == "HNSW32"
    assert fi.choose_index_key(5_000, 768, "auto", exact_max=0) == "HNSW15"
    assert fi.choose_index_key(73_000, 768, "flat") == "Flat"
    assert fi.choose_index_key(73_000, 768, "hnsw") == "HNSW32"
    assert fi.choose_index_key(73_000, 768, "ivf") == "IVF1024,Flat"  # 4*sqrt(73k)=1081 -> 1024
    assert fi.choose_index_key(73_000, 768, "IVF256,SQ8") == "IVF256,SQ8"


def test_exact_search_matches_numpy():
    rng = np.random.default_rng(0)
    x = _unit(rng, 500, 32)
    q = _unit(rng, 7, 32)
    ids = np.arange(500, dtype=np.int64) * 3 + 11
    index = fi.build_index(x, ids, "Flat")
    got_i, got_s = fi.search(index, q, 5)
    sims = q @ x.T
    ref = np.argsort(-sims, axis=1)[:, :5]
    np.testing.assert_array_equal(got_i, ids[ref])
    np.testing.assert_allclose(got_s, np.take_along_axis(sims, ref, axis=1), rtol=1e-5, atol=1e-5)
    # chunked brute force agrees too
    ci, cs = fi.exact_search(x, ids, q, 5, chunk=64)
    np.testing.assert_array_equal(ci, ids[ref])
    np.testing.assert_allclose(cs, got_s, atol=1e-5)


def test_ann_build_params_and_persist(tmp_path):
    rng = np.random.default_rng(1)
    x = _unit(rng, 2000, 16)
    for key, params in [("HNSW16", {"efSearch": 64}), ("IVF16,Flat", {"nprobe": 16})]:
        index = fi.build_index(x, None, key, params=params)
        assert fi.search_params(index).items() >= params.items()
        path = fi.save_index(index, tmp_path / f"{key.replace(',', '_')}.faiss")
        assert not list(tmp_path.glob(".*.tmp"))
        back = fi.load_index(path, params=params)
        i1, _ = fi.search(index, x[:10], 4)
        i2, _ = fi.search(back, x[:10], 4)
        np.testing.assert_array_equal(i1, i2)
        assert (i1[:, 0] == np.arange(10)).mean() >= 0.9
        assert fi.describe(back, key)["exact"] is False


def test_bad_vectors_raise_input_error():
    with pytest.raises(InputError, match="dimension mismatch"):
        fi.as_vectors(np.ones((2, 3)), 4)
    with pytest.raises(InputError, match="NaN"):
        fi.as_vectors(np.array([[1.0, np.nan]]), 2)
    with pytest.raises(InputError, match="all zeros"):
        fi.as_vectors(np.zeros((1, 2)), 2)
    with pytest.raises(InputError, match="not a valid faiss index key"):
        fi.new_index("NotAnIndex", 8)


def test_load_missing_or_corrupt_index(tmp_path):
    with pytest.raises(InputError) as e:
        fi.load_index(tmp_path / "nope.faiss")
    assert e.value.path == str(tmp_path / "nope.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(InputError, match="not a readable faiss index"):
        fi.load_index(bad)


def test_recall_at_k_known_answer():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, 1], [5, -1, -1, -1]])
    # query 0: {1,3,4} of 4; query 1: {5} of 4 -> (3 + 1) / 8
    assert recall.recall_at_k(found, truth, 4) == pytest.approx(0.5)
    assert recall.recall_at_k(truth, truth) == 1.0
    assert recall.recall_at_k(found[:, :2], truth[:, :2], 2) == pytest.approx(0.25)  # {} and {5}
    with pytest.raises(InputError):
        recall.recall_at_k(found, truth, 5)


def test_measure_exact_vs_exact_is_one():
    rng = np.random.default_rng(2)
    x = _unit(rng, 300, 8)
    index = fi.build_index(x, None, "Flat")
    res = recall.measure(lambda q, k: fi.search(index, q, k), lambda q, k: fi.exact_search(x, None, q, k),
                         _unit(rng, 20, 8), k=5, n_single=5, repeats=1)
    assert res["recall@5"] == 1.0 and 0 < res["p50_ms"] <= res["p99_ms"] and res["qps"] > 0
