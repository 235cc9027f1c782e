"""Image sources: folder / HDF5 / webdataset shards, stable shard ids, corrupt-image handling."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mindsearch.errors import MindsearchError
from mindsearch.image_sources import (
    FolderSource,
    HDF5Source,
    WebDatasetSource,
    open_source,
)


def _png_bytes(seed: int, size=(12, 10), fmt="PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_folder(root: Path, n: int = 5, corrupt: bool = True) -> Path:
    """n PNGs (a/…, b/c/…, top level), one corrupt .png, one non-image file."""
    root.mkdir(parents=True, exist_ok=True)
    subdirs = ["", "a", "b/c"]
    for i in range(n):
        d = root / subdirs[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:02d}.png").write_bytes(_png_bytes(i, size=(12 + i, 10)))
    if corrupt:
        good = _png_bytes(99)
        (root / "a" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    (root / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------ folder
def test_folder_shards_sorted_and_stable(tmp_path):
    root = make_folder(tmp_path / "imgs", n=5, corrupt=False)
    src = FolderSource(root, shard_size=2)
    assert src.files == sorted(src.files)
    assert len(src.files) == 5 and all(f.endswith(".png") for f in src.files)
    shards = src.shards()
    assert [s.size for s in shards] == [2, 2, 1]
    assert len(src) == 5
    again = FolderSource(root, shard_size=2).shards()
    assert [s.shard_id for s in shards] == [s.shard_id for s in again]
    assert len({s.shard_id for s in shards}) == 3
    recs = list(src)
    assert [r.key for r in recs] == src.files
    r = recs[0]
    assert r.image.mode == "RGB" and (r.width, r.height) == r.image.size
    assert r.shard_id == shards[0].shard_id and r.id is None
    assert Path(r.meta["path"]).is_file()
    # a changed file list changes that shard's id (so resume does not trust it)
    # sorted: a/img01 a/img04 | b/c/img02 img00 | img03  -> adding img00a changes shard 2 only
    (root / "img00a.png").write_bytes(_png_bytes(7))
    changed = FolderSource(root, shard_size=2).shards()
    assert [s.shard_id for s in changed[:2]] == [s.shard_id for s in shards[:2]]
    assert changed[2].shard_id != shards[2].shard_id


def test_folder_corrupt_image_is_skipped_and_reported(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs", n=5, corrupt=True)
    src = FolderSource(root, shard_size=4)
    with caplog.at_level(logging.WARNING, logger="mindsearch"):
        recs = list(src)
    assert len(recs) == 5
    assert "a/broken.png" not in [r.key for r in recs]
    assert len(src.skipped) == 1
    assert src.skipped[0]["key"] == "a/broken.png"
    assert src.skipped[0]["path"].endswith("broken.png")
    assert any("broken.png" in rec.getMessage() for rec in caplog.records)


def test_folder_strict_raises_naming_the_file(tmp_path):
    root = make_folder(tmp_path / "imgs", n=3, corrupt=True)
    src = FolderSource(root, strict=True)
    with pytest.raises(MindsearchError) as ei:
        list(src)
    assert "broken.png" in str(ei.value)
    assert ei.value.path.endswith("broken.png")


def test_folder_errors(tmp_path):
    with pytest.raises(MindsearchError):
        FolderSource(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MindsearchError, match="no image files"):
        FolderSource(tmp_path / "empty")


# ------------------------------------------------------------------------------ hdf5
def _write_h5(path: Path, n=5, h=16, w=12, name="images"):
    import h5py

    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (n, 3, h, w)).astype(np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=(u8 / 255.0).astype(np.float16))
    return u8


def test_hdf5_source_rows_keys_pixels(tmp_path):
    path = tmp_path / "images_16_float16.hdf5"
    u8 = _write_h5(path, n=5)
    src = HDF5Source(path, shard_size=2, read_block=3)
    shards = src.shards()
    assert [s.shard_id for s in shards] == ["h5-0-2", "h5-2-4", "h5-4-5"]
    recs = list(src)
    assert [r.key for r in recs] == [f"h5:{i}" for i in range(5)]
    assert [r.id for r in recs] == list(range(5))
    assert (recs[0].width, recs[0].height) == (12, 16)
    np.testing.assert_array_equal(np.asarray(recs[3].image), np.moveaxis(u8[3], 0, -1))
    sub = HDF5Source(path, rows=[4, 1], shard_size=10)
    assert [r.id for r in sub] == [1, 4]
    assert len(sub) == 2


def test_hdf5_source_errors(tmp_path):
    bad = tmp_path / "x.hdf5"
    bad.write_bytes(b"not hdf5 at all")
    with pytest.raises(MindsearchError, match="HDF5"):
        HDF5Source(bad)
    other = tmp_path / "other.hdf5"
    _write_h5(other, name="pixels")
    with pytest.raises(MindsearchError, match="no 'images' dataset"):
        HDF5Source(other)
    import h5py

    flat = tmp_path / "flat.hdf5"
    with h5py.File(flat, "w") as f:
        f.create_dataset("images", data=np.zeros((3, 10), np.float16))
    with pytest.raises(MindsearchError, match=r"\(N, 3, H, W\)"):
        HDF5Source(flat)
    ok = tmp_path / "ok.hdf5"
    _write_h5(ok, n=2)
    with pytest.raises(MindsearchError, match="out of range"):
        HDF5Source(ok, rows=[99])


def test_hdf5_nonfinite_row_is_skipped(tmp_path, caplog):
    import h5py

    p = tmp_path / "nan.hdf5"
    data = np.full((3, 3, 8, 8), 0.5, np.float16)
    data[1, 0, 0, 0] = np.nan
    with h5py.File(p, "w") as f:
        f.create_dataset("images", data=data)
    src = HDF5Source(p)
    with caplog.at_level(logging.WARNING, logger="mindsearch"):
        assert [r.id for r in src] == [0, 2]
    assert src.skipped[0]["key"] == "h5:1"


# ------------------------------------------------------------------------------ webdataset
def _add(tf: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _npy(value) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def make_tars(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "0.tar", "w") as tf:
        for i in range(3):
            key = f"sample{i:04d}"
            _add(tf, f"{key}.jpg", _png_bytes(i, fmt="JPEG"))
            _add(tf, f"{key}.coco73k.npy", _npy([[100 + i]]))
            _add(tf, f"{key}.json", b'{"caption": "c%d"}' % i)
        _add(tf, "nometa0001.behav.npy", _npy([1.0]))  # no image: ignored
        _add(tf, "broken0001.png", b"\x89PNG\r\n\x1a\n garbage")
    with tarfile.open(root / "10.tar", "w") as tf:
        _add(tf, "x/a.webp", _png_bytes(5, fmt="WEBP"))
    with tarfile.open(root / "2.tar", "w") as tf:
        _add(tf, "b.png", _png_bytes(6))
    return root


def test_webdataset_source(tmp_path, caplog):
    root = make_tars(tmp_path / "wds")
    src = WebDatasetSource(root)
    shards = src.shards()
    assert len(shards) == 3  # one shard per tar, natural order
    assert [s.shard_id.split("-")[1] for s in shards] == ["0.tar", "2.tar", "10.tar"]
    with caplog.at_level(logging.WARNING, logger="mindsearch"):
        recs = list(src)
    keys = [r.key for r in recs]
    assert keys == ["0.tar:sample0000", "0.tar:sample0001", "0.tar:sample0002", "2.tar:b", "10.tar:x/a"]
    assert [r.id for r in recs[:3]] == [100, 101, 102]
    assert recs[0].meta["json"] == {"caption": "c0"}
    assert recs[3].id is None and recs[3].image.mode == "RGB"
    assert [s["key"] for s in src.skipped] == ["0.tar:broken0001"]
    assert "0.tar" in src.skipped[0]["path"]
    assert any("broken0001" in r.getMessage() for r in caplog.records)
    with pytest.raises(MindsearchError, match="broken0001"):
        list(WebDatasetSource(root / "0.tar", strict=True))


def test_webdataset_truncated_tar_keeps_earlier_samples(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i in range(4):
            _add(tf, f"s{i}.png", _png_bytes(i, size=(64, 64)))
    data = buf.getvalue()
    (root / "t.tar").write_bytes(data[: int(len(data) * 0.6)])
    src = WebDatasetSource(root)
    recs = list(src)
    assert 1 <= len(recs) < 4
    assert [r.key for r in recs] == [f"t.tar:s{i}" for i in range(len(recs))]
    assert len(src.skipped) == 1 and src.skipped[0]["path"].endswith("t.tar")


def test_open_source_autodetects(tmp_path):
    folder = make_folder(tmp_path / "imgs", n=2, corrupt=False)
    assert isinstance(open_source(folder), FolderSource)
    tars = make_tars(tmp_path / "wds")
    assert isinstance(open_source(tars), WebDatasetSource)
    assert isinstance(open_source(tars / "0.tar"), WebDatasetSource)
    ds = tmp_path / "dataset"
    ds.mkdir()
    _write_h5(ds / "coco_images_224_float16.hdf5", n=2)
    src = open_source(ds)
    assert isinstance(src, HDF5Source) and src.path.name == "coco_images_224_float16.hdf5"
    with pytest.raises(MindsearchError):
        open_source(tmp_path / "nothing")
