"""open_clip image encoders on a tiny random ViT config (no downloads), and embed_images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.image_encoders import ImageEncoder, embed_images, embed_shards  # noqa: E402
from mindsearch.image_sources import FolderSource  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
TINY_WIDE = {**TINY, "embed_dim": 24}  # same vision tower shape except the projection


@pytest.fixture(scope="session")
def tiny_cfg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "mindsearch-test-tinyvit.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_cfg):
    """A full tiny CLIP (with text tower) and its weights saved as safetensors."""
    from safetensors.torch import save_file

    from mindsearch.image_encoders import _resolve_model_name

    name = _resolve_model_name(tiny_cfg)  # registers the JSON config with open_clip
    torch.manual_seed(123)
    model = open_clip.create_model(name, pretrained=None).eval()
    path = tiny_cfg.parent / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


# ------------------------------------------------------------------------------ outputs
def test_hidden_row0_is_encode_image_over_cls_norm(tiny_cfg, tiny_model):
    model, wpath = tiny_model
    enc = ImageEncoder.create(tiny_cfg, output="hidden", weights=wpath)
    x = _images()
    h = enc.encode(x)
    assert h.dtype == np.float32 and h.shape == (4, 17, 16)  # (32/8)^2 + CLS, embed_dim
    with torch.no_grad():
        ref = model.encode_image(x).numpy()
    cls_norm = np.linalg.norm(ref, axis=-1, keepdims=True)
    np.testing.assert_allclose(h[:, 0] * cls_norm, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(h[:, 0], axis=-1), 1.0, rtol=1e-5)
    # every token is divided by the same CLS norm: the ANCHORS 2.1 alternative recipe
    v = model.visual
    with torch.no_grad():
        full = v.ln_post(v.transformer(v._embeds(x))) @ v.proj
    np.testing.assert_allclose(h * cls_norm[:, None], full.numpy(), rtol=1e-4, atol=1e-5)
    assert enc.space["pooling"] == "first" and enc.space["tokens"] == 17


def test_final_and_tokens_shapes(tiny_cfg, tiny_model):
    model, wpath = tiny_model
    x = _images(3)
    fin = ImageEncoder.create(tiny_cfg, output="final", weights=wpath)
    f = fin.encode(x)
    assert f.shape == (3, 1, 16)
    with torch.no_grad():
        np.testing.assert_allclose(f[:, 0], model.encode_image(x).numpy(), rtol=1e-5, atol=1e-6)
    tok = ImageEncoder.create(tiny_cfg, output="tokens", weights=wpath)
    t = tok.encode(x)
    assert t.shape == (3, 16, 32)  # patch tokens, no CLS, unprojected width
    assert not np.allclose(np.linalg.norm(t, axis=-1), 1.0)  # not normalised
    model.visual.output_tokens = True
    try:
        with torch.no_grad():
            _, ref = model.visual(x)
    finally:
        model.visual.output_tokens = False
    np.testing.assert_allclose(t, ref.numpy(), rtol=1e-5, atol=1e-6)
    assert tok.visual.output_tokens is False  # restored after encode
    assert (tok.space["tokens"], tok.space["dim"], tok.space["pooling"]) == (16, 32, "mean")
    assert (fin.space["tokens"], fin.space["dim"], fin.space["pooling"]) == (1, 16, "self")
    # a single image (3, H, W) is accepted
    assert fin.encode(x[0]).shape == (1, 1, 16)


def test_preprocess_is_the_eval_transform(tiny_cfg):
    from PIL import Image

    enc = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    img = Image.fromarray(np.zeros((50, 70, 3), np.uint8))
    x = enc.preprocess(img)
    assert tuple(x.shape) == (3, 32, 32)
    assert enc.image_size == (32, 32)


# ------------------------------------------------------------------------------ weights
def test_space_record_and_fingerprints(tiny_cfg, tiny_model, tmp_path, caplog):
    from safetensors.torch import save_file

    _, wpath = tiny_model
    a = ImageEncoder.create(tiny_cfg, output="hidden", weights=wpath)
    sp = a.space
    for k in ("model", "layer", "pooling", "weights", "tokens", "dim"):
        assert k in sp
    assert sp["model"] == tiny_cfg.stem and sp["layer"] == "hidden"
    from mindsearch.io import file_fingerprint

    assert sp["weights"] == file_fingerprint(wpath)
    json.dumps(sp)  # JSON-able
    # other weights -> other fingerprint (and other embeddings)
    torch.manual_seed(7)
    other = open_clip.create_model(tiny_cfg.stem, pretrained=None)
    opath = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(opath))
    b = ImageEncoder.create(tiny_cfg, output="hidden", weights=opath)
    assert b.space["weights"] != sp["weights"]
    assert not np.allclose(a.encode(_images(2)), b.encode(_images(2)))
    # random weights: explicit opt-in, a warning, seed recorded, deterministic per seed
    with caplog.at_level(logging.WARNING, logger="mindsearch"):
        r0 = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    assert r0.space["weights"] == "random:0"
    assert any("meaningless" in rec.getMessage() for rec in caplog.records)
    r0b = ImageEncoder.create(tiny_cfg, output="final", weights="random:0")
    r1 = ImageEncoder.create(tiny_cfg, output="final", weights="random:1")
    assert r1.space["weights"] == "random:1"
    x = _images(2)
    np.testing.assert_array_equal(r0.encode(x), r0b.encode(x))
    assert not np.allclose(r0.encode(x), r1.encode(x))


def test_weights_file_round_trip_and_folder(tiny_cfg, tiny_model, tmp_path):
    model, wpath = tiny_model
    x = _images(2)
    with torch.no_grad():
        ref = model.encode_image(x).numpy()
    enc = ImageEncoder.create(tiny_cfg, output="final", weights=str(wpath))
    np.testing.assert_allclose(enc.encode(x)[:, 0], ref, rtol=1e-5, atol=1e-6)
    # a folder with open_clip_model.safetensors
    d = tmp_path / "weights_dir"
    d.mkdir()
    (d / "open_clip_model.safetensors").write_bytes(Path(wpath).read_bytes())
    enc_d = ImageEncoder.create(tiny_cfg, output="final", weights=d)
    np.testing.assert_allclose(enc_d.encode(x)[:, 0], ref, rtol=1e-5, atol=1e-6)
    assert enc_d.space["weights"] == enc.space["weights"]
    # a folder with a torch .bin (loaded by open_clip with weights_only=True)
    d2 = tmp_path / "bin_dir"
    d2.mkdir()
    torch.save(model.state_dict(), d2 / "open_clip_pytorch_model.bin")
    enc_b = ImageEncoder.create(tiny_cfg, output="final", weights=d2)
    np.testing.assert_allclose(enc_b.encode(x)[:, 0], ref, rtol=1e-5, atol=1e-6)


def test_bad_weights_and_models_raise_mindsearch_error(tiny_cfg, tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MindsearchError, match="not found"):
        ImageEncoder.create(tiny_cfg, weights=tmp_path / "nope.safetensors")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(MindsearchError, match="no open_clip weights"):
        ImageEncoder.create(tiny_cfg, weights=empty)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(MindsearchError) as ei:
        ImageEncoder.create(tiny_cfg, weights=junk)
    assert ei.value.path == str(junk)
    # weights of another architecture (different projection size)
    wide_cfg = tmp_path / "mindsearch-test-tinyvit-wide.json"
    wide_cfg.write_text(json.dumps(TINY_WIDE))
    wide = ImageEncoder.create(wide_cfg, weights="random")
    assert wide.dim == 24
    torch.manual_seed(0)
    m = open_clip.create_model(wide_cfg.stem, pretrained=None)
    wp = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(wp))
    with pytest.raises(MindsearchError, match="cannot load") as ei:
        ImageEncoder.create(tiny_cfg, weights=wp)
    assert ei.value.path == str(wp)
    with pytest.raises(MindsearchError, match="unknown open_clip model"):
        ImageEncoder.create("No-Such-Model", weights="random")
    with pytest.raises(MindsearchError, match="output"):
        ImageEncoder.create(tiny_cfg, output="pooled", weights="random")
    with pytest.raises(MindsearchError, match="seed"):
        ImageEncoder.create(tiny_cfg, weights="random:x")


def test_hub_weights_offline_fail_clearly(monkeypatch):
    import open_clip.pretrained as ocp

    calls = []

    def no_network(cfg, *a, **k):
        calls.append(cfg)
        raise RuntimeError("offline (HF_HUB_OFFLINE=1)")

    monkeypatch.setattr(ocp, "download_pretrained", no_network)
    monkeypatch.setattr(open_clip, "create_model", lambda *a, **k: pytest.fail("must not build"))
    with pytest.raises(MindsearchError) as ei:
        ImageEncoder.create("ViT-L-14", output="hidden", weights=None)
    msg = str(ei.value)
    assert "--weights PATH" in msg and "random" in msg and "openai" in msg
    assert len(calls) == 1
    with pytest.raises(MindsearchError, match="no pretrained tag"):
        ImageEncoder.create("ViT-B-32", weights="hub:no-such-tag")


# ------------------------------------------------------------------------------ embed_images
def _folder(root: Path, n: int, corrupt_at: int | None = None) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"im{i:03d}.png")
    if corrupt_at is not None:
        (root / f"im{corrupt_at:03d}x.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return root


def test_embed_images_in_order_with_right_count(tiny_cfg, tmp_path):
    from PIL import Image

    root = _folder(tmp_path / "imgs", 11)
    enc = ImageEncoder.create(tiny_cfg, output="hidden", weights="random")
    src = FolderSource(root, shard_size=4)
    batches = list(embed_images(src, enc, batch_size=3, num_workers=2, progress=False))
    recs = [r for rs, _ in batches for r in rs]
    embs = np.concatenate([e for _, e in batches])
    assert [r.key for r in recs] == [f"im{i:03d}.png" for i in range(11)]
    assert embs.shape == (11, 17, 16) and embs.dtype == np.float32
    for rs, e in batches:  # batches never span shards
        assert len({r.shard_id for r in rs}) == 1 and len(rs) == len(e) <= 3
    # same numbers as preprocessing + encode by hand
    x = torch.stack([enc.preprocess(Image.open(root / "im005.png").convert("RGB"))])
    np.testing.assert_allclose(embs[5:6], enc.encode(x), rtol=1e-5, atol=1e-6)


def test_embed_images_skips_corrupt_and_strict_raises(tiny_cfg, tmp_path, caplog):
    root = _folder(tmp_path / "imgs", 5, corrupt_at=2)
    enc = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    src = FolderSource(root, shard_size=2)
    with caplog.at_level(logging.WARNING, logger="mindsearch"):
        out = list(embed_shards(src, enc, batch_size=4, num_workers=2, progress=False))
    assert [len(r) for _, r, _ in out] == [2, 1, 2]  # shard 1 = im002.png + the corrupt file
    assert all(e.shape == (len(r), 1, 16) for _, r, e in out)
    assert [s.shard_id for s, _, _ in out] == [s.shard_id for s in src.shards()]
    assert [d["key"] for d in src.skipped] == ["im002x.png"]
    assert any("im002x.png" in r.getMessage() for r in caplog.records)
    strict = FolderSource(root, shard_size=2, strict=True)
    with pytest.raises(MindsearchError, match="im002x.png"):
        list(embed_images(strict, enc, batch_size=4, num_workers=2, progress=False))


def test_embed_shards_resume_subset_and_empty_shard(tiny_cfg, tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a_bad.png").write_bytes(b"nope")
    _folder(root, 3)
    enc = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    src = FolderSource(root, shard_size=1)
    shards = src.shards()
    todo = shards[:1] + shards[2:]  # as if shard 1 were done already
    out = list(embed_shards(todo, enc, batch_size=8, num_workers=1, progress=False))
    assert [s.shard_id for s, _, _ in out] == [s.shard_id for s in todo]
    assert out[0][2].shape == (0, 1, 16)  # all-corrupt shard still reported as finished
    assert [r.key for _, rs, _ in out for r in rs] == ["im001.png", "im002.png"]


def test_embed_images_progress_bar_and_early_stop(tiny_cfg, tmp_path, capsys):
    root = _folder(tmp_path / "imgs", 9)
    enc = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    gen = embed_images(FolderSource(root), enc, batch_size=2, num_workers=2, progress=True)
    recs, emb = next(gen)
    assert len(recs) == 2
    gen.close()  # stopping early shuts the reader and the pool down cleanly
    assert "img" in capsys.readouterr().err


def test_prepare_collate_equals_preprocess(tiny_cfg):
    from PIL import Image

    enc = ImageEncoder.create(tiny_cfg, output="final", weights="random")
    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)) for i in range(3)]
    imgs.append(imgs[0].convert("L"))  # grey input still ends up RGB
    ref = torch.stack([enc.preprocess(im) for im in imgs])
    got = enc.collate([enc.prepare(im) for im in imgs])
    assert got.dtype == torch.float32 and got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name,output,shape", [
    ("ViT-L-14", "hidden", (257, 768)),   # MindEye1 target (ANCHORS 2.1)
    ("ViT-L-14", "final", (1, 768)),
    ("ViT-L-14", "tokens", (256, 1024)),  # output_tokens on L-14 is *not* the MindEye1 target
    ("ViT-bigG-14", "tokens", (256, 1664)),  # MindEye2 target
])
def test_real_architectures_space_shapes(name, output, shape):
    """Shapes of the real models, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
    enc = ImageEncoder(model.visual, model=name, output=output, weights_id="meta",
                       device="cpu", precision="fp32")
    assert (enc.space["tokens"], enc.space["dim"]) == shape
    assert enc.image_size == (224, 224)


def test_low_precision_returns_float32(tiny_cfg):
    enc = ImageEncoder.create(tiny_cfg, output="hidden", weights="random", precision="bf16")
    out = enc.encode(_images(2))
    assert out.dtype == np.float32 and out.shape == (2, 17, 16)
    np.testing.assert_allclose(np.linalg.norm(out[:, 0], axis=-1), 1.0, atol=2e-2)


def test_hub_tag_path_records_the_file_fingerprint(tiny_cfg, tiny_model, monkeypatch):
    """weights=None/'hub:TAG' with a (faked) cache hit: same space as loading that file."""
    import open_clip.pretrained as ocp

    model, wpath = tiny_model
    fake_cfg = {"hf_hub": "example/tiny/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    real_get = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: fake_cfg if (name, tag) == (tiny_cfg.stem, "faketag")
                        else real_get(name, tag))
    monkeypatch.setattr(ocp, "download_pretrained", lambda cfg, *a, **k: str(wpath))
    hub = ImageEncoder.create(tiny_cfg, output="final", weights="hub:faketag")
    local = ImageEncoder.create(tiny_cfg, output="final", weights=wpath)
    assert hub.space == local.space
    assert hub.preprocess.transforms[-1].mean == (0.5, 0.5, 0.5)  # the tag's preprocessing
    x = _images(2)
    np.testing.assert_allclose(hub.encode(x), local.encode(x), rtol=1e-6)
