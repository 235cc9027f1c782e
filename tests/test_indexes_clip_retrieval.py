"""indexes.clip_retrieval: read a tiny generated clip-retrieval layout and index it shard by shard."""

from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)

from mindsearch.indexes import clip_retrieval as cr  # noqa: E402
from mindsearch.indexes.collection import Collection  # noqa: E402
from mindsearch.indexes.errors import InputError  # noqa: E402

D = 8


def _layout(root, sizes=(5, 3, 4)):
    rng = np.random.default_rng(0)
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    allv = []
    for k, n in enumerate(sizes):
        v = rng.standard_normal((n, D)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        v = v.astype(np.float16)  # clip-retrieval writes normalised float16
        np.save(root / "img_emb" / f"img_emb_{k:02d}.npy", v)
        pq.write_table(pa.table({"image_path": [f"/data/{k}/{i}.jpg" for i in range(n)],
                                 "caption": [f"cap {k}-{i}" for i in range(n)]}),
                       root / "metadata" / f"metadata_{k:02d}.parquet")
        allv.append(v)
    return np.concatenate(allv).astype(np.float32)


def test_reader_yields_row_aligned_shards(tmp_path):
    allv = _layout(tmp_path / "emb")
    shards = list(cr.iter_shards(tmp_path / "emb"))
    assert [s for s, _ in shards] == ["img_emb_00", "img_emb_01", "img_emb_02"]
    ids = np.concatenate([b["id"] for _, b in shards])
    np.testing.assert_array_equal(ids, np.arange(12))
    emb = np.concatenate([b["embedding"] for _, b in shards])
    assert emb.dtype == np.float32
    np.testing.assert_allclose(emb, allv / np.linalg.norm(allv, axis=1, keepdims=True), atol=1e-6)
    assert shards[1][1]["key"].to_pylist()[0] == "/data/1/0.jpg"
    assert cr.dim(tmp_path / "emb") == D
    # resume: skip finished shards, ids stay global positions
    rest = list(cr.iter_shards(tmp_path / "emb", skip={"img_emb_00"}))
    assert rest[0][1]["id"][0] == 5


def test_layout_into_collection(tmp_path):
    allv = _layout(tmp_path / "emb")
    c = Collection.create(tmp_path / "idx", "laion", {"name": "clip", "dim": D}, D,
                          extra_columns={"caption": "string"})
    for shard, batch in cr.iter_shards(tmp_path / "emb", skip=c.finished_shards):
        c.add(batch)
        c.finish_shard(shard)
    c.build_index()
    ids, _ = c.search(allv[[7]], 1)
    assert ids[0, 0] == 7
    assert c.fetch([7], ["key", "caption"]).to_pylist() == [{"id": 7, "key": "/data/1/2.jpg", "caption": "cap 1-2"}]


def test_reader_errors(tmp_path):
    with pytest.raises(InputError, match="no img_emb"):
        cr.list_shards(tmp_path)
    _layout(tmp_path / "emb")
    (tmp_path / "emb" / "metadata" / "metadata_01.parquet").unlink()
    with pytest.raises(InputError, match="metadata for shard img_emb_01 is missing"):
        list(cr.iter_shards(tmp_path / "emb"))
    pq.write_table(pa.table({"image_path": ["x"]}), tmp_path / "emb" / "metadata" / "metadata_01.parquet")
    with pytest.raises(InputError, match="not row-aligned") as e:
        list(cr.iter_shards(tmp_path / "emb"))
    assert e.value.path.endswith("metadata_01.parquet")
