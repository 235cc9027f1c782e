"""Results people can trust and open (issue 11, engine side): the shortlist is independent of k, every
hit says what its score is and which query row it answers, outputs in four formats, portable
indexes, manifests read without LanceDB, index rm, and the original image of a hit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
faiss = pytest.importorskip("faiss")
faiss.omp_set_num_threads(1)

from click.testing import CliRunner  # noqa: E402

from mindsearch.cli.main import cli  # noqa: E402
from mindsearch.engine import Engine  # noqa: E402
from mindsearch.indexes.collection import Collection  # noqa: E402

T, D, N = 4, 8, 300
SPACE = {"name": "sim", "model": "sim-v1", "layer": "tokens", "weights": "x", "tokens": T, "dim": D,
         "pooling": "first"}


def cli_run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tokens_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("results") / "root"
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((N, T, D)).astype(np.float32)
    with Collection.create(root, "tok", SPACE, D, tokens_shape=(T, D)) as c:
        c.add({"tokens": tokens, "key": [f"k{i}" for i in range(N)]}, shard="0")
        c.finish_shard("0")
        c.build_index()
    queries = tokens[:3] + 0.8 * rng.standard_normal((3, T, D)).astype(np.float32)
    return root, tokens, queries


def test_top_hits_do_not_change_with_k(tokens_index):
    root, tokens, queries = tokens_index
    engine = Engine(root)
    full = engine.search("tok", queries, k=100)
    for k in (1, 5, 16, 17, 40):
        got = engine.search("tok", queries, k=k)
        for a, b in zip(got, full):
            assert [h.id for h in a] == [h.id for h in b[:k]]
            assert [h.score for h in a] == [h.score for h in b[:k]]
    kinds = [h.score_kind for h in full[0]]
    assert kinds == ["token_cosine"] * 16 + ["pooled_cosine"] * 84
    # The re-ranked head is ordered by token cosine, as computed here by hand.
    flat = tokens.reshape(N, -1) / np.linalg.norm(tokens.reshape(N, -1), axis=1, keepdims=True)
    q = queries[0].reshape(-1) / np.linalg.norm(queries[0])
    head = full[0][:16]
    np.testing.assert_allclose([h.score for h in head], flat[[h.id for h in head]] @ q, atol=1e-5)
    assert [h.score for h in head] == sorted((h.score for h in head), reverse=True)
    # A longer shortlist is its own setting and may reorder the top.
    wide = engine.search("tok", queries, k=5, shortlist=64)
    assert all(h.score_kind == "token_cosine" for b in wide for h in b)
    assert [h.query for b in full for h in b[:1]] == [0, 1, 2]
    pooled = engine.search("tok", queries, k=3, rerank=False)
    assert {h.score_kind for b in pooled for h in b} == {"pooled_cosine"}


def test_output_formats_carry_the_query_row(tokens_index, tmp_path):
    root, _, queries = tokens_index
    np.save(tmp_path / "q.npy", queries)
    base = ["query", "--embedding", tmp_path / "q.npy", "--index", "tok", "--root", root, "--k", "3"]
    lines = [json.loads(x) for x in cli_run(*base, "--json").stdout.splitlines()]
    assert [h["query"] for h in lines] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert {"rank", "id", "path", "score", "score_kind", "index", "index_version", "run", "query"} <= set(lines[0])
    csv_text = cli_run(*base, "--format", "csv").stdout
    assert csv_text.splitlines()[0].startswith("rank,id,path,score,score_kind") and len(csv_text.splitlines()) == 10
    res = cli_run(*base, "--format", "parquet", "--out", tmp_path / "hits.parquet")
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "hits.parquet")
    assert table.column("id").to_pylist() == [h["id"] for h in lines]
    assert cli_run(*base, "--format", "parquet").exit_code == 2  # needs --out
    assert "score_kind" in cli_run(*base).stdout


def test_a_moved_or_copied_index_answers_from_its_own_table(tokens_index, tmp_path):
    root, _, queries = tokens_index
    shutil.copytree(root / "tok", tmp_path / "a" / "tok")
    man = json.loads((tmp_path / "a" / "tok" / "manifest.json").read_text())
    assert man["table"]["uri"] == "lance"  # relative to the index folder
    ref = [h.id for h in Engine(root).search("tok", queries, k=5)[0]]
    shutil.move(tmp_path / "a", tmp_path / "b")  # moved: the original location is gone
    moved = Engine(tmp_path / "b")
    assert [h.id for h in moved.search("tok", queries, k=5)[0]] == ref
    # A copy grows on its own; the original is untouched.
    with moved.open("tok") as c:
        c.add({"tokens": queries[:1], "key": ["new"]}, shard="copy-only")
        c.finish_shard("copy-only")
    assert moved.search("tok", queries[:1], k=1)[0][0].path == "new"
    assert Engine(root).open("tok").count == N
    # Manifests written before paths were relative (absolute, now stale) still open.
    man = json.loads((tmp_path / "b" / "tok" / "manifest.json").read_text())
    man["table"]["uri"] = str(tmp_path / "a" / "tok" / "lance")
    del man["index"]["rows"]  # and without a rows file: rows come from LanceDB
    (tmp_path / "b" / "tok" / "manifest.json").write_text(json.dumps(man))
    old = Engine(tmp_path / "b")
    assert old.search("tok", queries[:1], k=1)[0][0].path == "new"
    assert [h.id for h in old.search("tok", queries, k=5)[1]] == [h.id for h in Engine(root).search(
        "tok", queries, k=5)[1]]


def test_list_and_info_read_manifests_without_lancedb(tokens_index, tmp_path):
    root, _, _ = tokens_index
    shutil.copytree(root / "tok", tmp_path / "r" / "tok")
    shutil.copytree(root / "tok", tmp_path / "r" / "_brain" / "brains")
    heavy = ("torch", "lancedb", "faiss", "open_clip", "sklearn", "h5py", "pandas")
    code = ("import sys; from mindsearch.cli.main import main\n"
            "for args in (['index', 'list'], ['index', 'list', '--json'], ['index', 'info', 'tok']):\n"
            f"    try:\n        main(args + ['--root', {str(tmp_path / 'r')!r}])\n"
            "    except SystemExit:\n        pass\n"
            f"print('HEAVY:' + ','.join(m for m in {heavy!r} if m in sys.modules))\n"
            "import numpy as np\n"
            f"np.save({str(tmp_path / 'q.npy')!r}, np.ones((1, {T}, {D}), np.float32))\n"
            f"try:\n    main(['query', '--embedding', {str(tmp_path / 'q.npy')!r}, '--index', 'tok', '--root', "
            f"{str(tmp_path / 'r')!r}, '--k', '2'])\nexcept SystemExit:\n    pass\n"
            "print('QUERY-LANCEDB:', 'lancedb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY:\n" in out and out.splitlines()[-1] == "QUERY-LANCEDB: False"  # a warm query needs no LanceDB
    assert "token_cosine" in out
    rows = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert [(r["name"], r["kind"], r["count"]) for r in rows] == [("tok", "images", N), ("brains", "images", N)]
    assert "tokens" in out and f"{N} x {D}" in out
    assert cli_run("index", "info", "brains", "--brain", "--json", "--root", tmp_path / "r").exit_code == 0


def test_index_rm(tokens_index, tmp_path):
    root, _, queries = tokens_index
    shutil.copytree(root / "tok", tmp_path / "r" / "tok")
    engine = Engine(tmp_path / "r")
    assert engine.search("tok", queries, k=1)
    res = cli_run("index", "rm", "tok", "--root", tmp_path / "r")
    assert res.exit_code == 0 and not (tmp_path / "r" / "tok").exists()
    with pytest.raises(Exception, match="no index named 'tok'"):
        engine.search("tok", queries, k=1)
    assert cli_run("index", "rm", "tok", "--root", tmp_path / "r").exit_code == 2


def test_hits_open_the_original_image(tmp_path):
    """Folder hits carry a file path; hdf5 hits a source reference; image_bytes reads both."""
    import h5py
    from PIL import Image

    cfg = tmp_path / "mindsearch-test-results-vit.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "patch_size": 16, "head_width": 16},
                               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                                            "layers": 1}}))
    rng = np.random.default_rng(0)
    (tmp_path / "pics").mkdir()
    pixels = (rng.random((4, 3, 24, 24))).astype(np.float16)
    for i in range(4):
        Image.fromarray((np.moveaxis(pixels[i].astype(np.float32), 0, -1) * 255).round().astype(np.uint8)).save(
            tmp_path / "pics" / f"p{i}.png")
    with h5py.File(tmp_path / "imgs.hdf5", "w") as f:
        f["images"] = pixels
    engine = Engine(tmp_path / "root")
    for name, src in (("folder", tmp_path / "pics"), ("h5", tmp_path / "imgs.hdf5")):
        engine.build_from_images(name, src, model=str(cfg), weights="random:0")
    q = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    hit = engine.search("folder", q, k=1)[0][0]
    data, ctype = engine.image_bytes("folder", hit.id)
    assert ctype == "image/png" and data == open(hit.path, "rb").read()
    hit = engine.search("h5", q, k=1)[0][0]
    assert hit.path is None and hit.source == f"{tmp_path / 'imgs.hdf5'}#images/{hit.id}"
    data, ctype = engine.image_bytes("h5", hit.id)
    import io

    got = np.asarray(Image.open(io.BytesIO(data)))
    want = np.clip(np.rint(np.moveaxis(pixels[hit.id].astype(np.float32), 0, -1) * 255), 0, 255).astype(np.uint8)
    assert ctype == "image/png" and np.array_equal(got, want)
    with pytest.raises(Exception, match="no image with id 999"):
        engine.image_bytes("h5", 999)
