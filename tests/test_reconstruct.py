"""Reconstruction: diffusers' strength arithmetic, best-of-N, the VD loading path on a locally saved
tiny directory, the space refusal, one-line errors, and a tiny end-to-end run writing PNGs, a
manifest and a page (rendered with Chromium when one is installed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mindsearch.cli.main import cli  # noqa: E402
from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.reconstruct import (DiffusionComponents, check_conditioning_space,  # noqa: E402
                                    img2img_timesteps, save_random_tiny_vae)
from mindsearch.reconstruct.ranking import PixelRidgeRanking, best_of, unit_rows  # noqa: E402

T, D = 3, 16


def _unipc():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                   beta_start=0.00085, beta_end=0.012)


def test_strength_runs_17_of_20_steps():
    s = _unipc()
    s.set_timesteps(20)
    full = s.timesteps.clone()
    timesteps, n = img2img_timesteps(s, 20, 0.85)
    assert n == 17 and len(timesteps) == 17  # the paper's "0.15": the blurry image sets 3 of 20 steps
    assert torch.equal(timesteps, full[3:]) and s.begin_index == 3
    assert img2img_timesteps(s, 20, 1.0)[1] == 20 and img2img_timesteps(s, 20, 0.0)[1] == 0
    assert img2img_timesteps(s, 20, 0.5)[1] == 10
    assert img2img_timesteps(s, 50, 0.75)[1] == 37  # Brain-Diffuser's t_enc 37 of 50


def test_best_of_n_picks_the_candidate_closest_to_the_brain_embedding():
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(3 * 16 * 16, T * D)).astype(np.float32)
    ranking = PixelRidgeRanking(coef, np.zeros(T * D, np.float32), {})
    images = rng.random((6, 3, 16, 16), dtype=np.float32)
    emb = ranking.embed(images)
    for target in range(6):
        brain = 3.0 * emb[target].reshape(T, D) + 0.05 * rng.normal(size=(T, D))  # scale does not matter
        scores = ranking.score(images, brain)
        assert best_of(scores) == target
        np.testing.assert_allclose(scores, unit_rows(emb) @ unit_rows(brain[None])[0], rtol=1e-4, atol=1e-5)
    assert best_of([0.1, np.nan, 0.3, 0.2]) == 2  # NaN never wins


def test_from_pretrained_on_a_saved_vd_directory(tmp_path):
    tiny = DiffusionComponents.random_tiny(T, D, seed=3)
    vd = tiny.save_pretrained(tmp_path / "vd")
    assert sorted(p.name for p in vd.iterdir()) == ["image_unet", "scheduler", "vae"]
    loaded = DiffusionComponents.from_pretrained(vd)
    assert not loaded.is_random and type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"
    assert loaded.image_size == 64 and loaded.cross_attention_dim == D
    from mindsearch.reconstruct.diffusion import generate, normalize_conditioning

    cond = normalize_conditioning(torch.randn(2, T, D))
    assert torch.allclose(cond[:, 0].norm(dim=-1), torch.ones(2), atol=1e-4)
    init = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    a = generate(tiny, cond, init_images=init, steps=4, strength=0.75, generator=torch.Generator().manual_seed(0))
    b = generate(loaded, cond, init_images=init, steps=4, strength=0.75, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_allclose(a, b, atol=1e-5)  # the same weights came back
    c = generate(loaded, cond, init_images=init, steps=4, strength=0.75, generator=torch.Generator().manual_seed(1))
    assert np.abs(a - c).mean() > 1e-3  # the seed matters
    for f in (vd / "image_unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(MindsearchError, match="safetensors"):
        DiffusionComponents.from_pretrained(vd)


def test_space_check_refuses_what_vd_does_not_condition_on():
    real_vd = SimpleNamespace(is_random=False, cross_attention_dim=768, source="vd")
    vit_l = {"name": "ViT-L-14/hidden", "model": "ViT-L-14", "layer": "hidden", "tokens": 257, "dim": 768,
             "weights": "x"}
    check_conditioning_space(vit_l, real_vd, "run")  # accepted
    for bad in ({**vit_l, "layer": "final", "tokens": 1}, {**vit_l, "model": "ViT-bigG-14"},
                {"name": "sim", "model": "sim-v1", "layer": "tokens", "tokens": 257, "dim": 768}):
        with pytest.raises(MindsearchError, match="ViT-L/14 hidden"):
            check_conditioning_space(bad, real_vd, "run")
    with pytest.raises(MindsearchError, match="width 768"):
        check_conditioning_space({**vit_l, "dim": 1024}, real_vd, "run")
    tiny = SimpleNamespace(is_random=True, cross_attention_dim=D, source="random-tiny")
    check_conditioning_space({"name": "sim", "model": "sim-v1", "tokens": T, "dim": D}, tiny, "run")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny simulated dataset, a tiny random VAE and a 1-epoch run with prior and low-level head."""
    pytest.importorskip("h5py")
    pytest.importorskip("accelerate")
    from mindsearch.engine import Engine
    from mindsearch.simulate import simulate
    from mindsearch.training.trainer import TrainConfig, train_mindeye

    root = tmp_path_factory.mktemp("recon")
    data = simulate(root / "ds", "small", n_voxels=120, n_shared=60, n_unique=90, trials_per_session=150,
                    image_size=32, tokens=T, dim=D, mc_min_draws=10, mc_max_draws=40)
    vae = save_random_tiny_vae(root / "vae")
    cfg = TrainConfig(preset="tiny", epochs=1, batch_size=16, lr=3e-3, seed=0, use_lowlevel=True,
                      use_prior=True, val_every=0)
    train_mindeye(data, [1], cfg, root / "run", progress=False, vae=vae)
    Engine(root / "idx").build_from_dataset("sim", data)
    return SimpleNamespace(root=root, data=data, vae=vae, run=root / "run", idx=root / "idx")


def _invoke(*args):
    return CliRunner().invoke(cli, ["reconstruct", *map(str, args)])


def test_reconstruct_end_to_end_writes_pngs_manifest_and_page(world, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    res = _invoke("--run", world.run, "--data", world.data, "--out", out, "--vd", "random-tiny",
                  "--vae", "random-tiny", "--samples", 2, "--steps", 4, "--limit", 2, "--index", "sim",
                  "--root", world.idx, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "RANDOM tiny" in res.output and "images/s" in res.output and "peak memory" in res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["random_components"] and m["settings"]["samples"] == 2 and m["settings"]["strength"] == 0.85
    assert m["ranking"]["name"] == "pixel-ridge" and "no image encoder" in m["ranking"]["reason"]
    assert m["conditioning"].startswith("aligned")
    assert len(m["trials"]) == 2
    for t in m["trials"]:
        assert t["image_id"] is not None and t["stem"].startswith("s01_img")
        for key in ("truth", "blurry", "chosen", "top_retrieved"):
            assert (out / t[key]).is_file(), key
        sources = [c["source"] for c in t["candidates"]]
        assert sources == ["generated", "generated", "retrieved"]  # retrieval competes in best-of-N
        scores = [c["score"] for c in t["candidates"]]
        assert t["chosen_index"] == int(np.argmax(scores))
        chosen = np.asarray(Image.open(out / t["chosen"]))
        kept = np.asarray(Image.open(out / t["candidates"][t["chosen_index"]]["path"]))
        assert np.array_equal(chosen, kept)
        assert Image.open(out / t["candidates"][0]["path"]).size == (64, 64)
        assert t["retrieved"][0]["id"] == t["candidates"][2]["image_id"]
    # the truth images are the dataset's, under the same stems as chosen/
    from mindsearch.data import open_dataset

    with open_dataset(world.data) as ds:
        want = ds.images([m["trials"][0]["image_id"]])[0]
    got = np.asarray(Image.open(out / m["trials"][0]["truth"]), np.float32).transpose(2, 0, 1) / 255
    assert np.abs(got - want).max() < 1 / 255 + 1e-6
    assert sorted(p.stem for p in (out / "truth").iterdir()) == sorted(p.stem for p in (out / "chosen").iterdir())
    page = (out / "index.html").read_text()
    assert "RANDOM tiny" in page and m["trials"][0]["chosen"] in page and "pixel-ridge" in page

    # a second run into the same OUT replaces it; the retrieve mode keeps the top hit
    res = _invoke("--run", world.run, "--data", world.data, "--out", out, "--mode", "retrieve", "--samples", 3,
                  "--limit", 2, "--index", "sim", "--root", world.idx, "--trials", "0,5", "--no-progress")
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert not (out / "candidates" / "s01_img000014").exists()
    assert [t["stem"] for t in m["trials"]] == ["s01_trial000000", "s01_trial000005"]
    for t in m["trials"]:
        assert t["chosen_index"] == 0 and len(t["candidates"]) == 3 and m["ranking"]["name"] == "index"
        assert t["candidates"][0]["image_id"] == t["retrieved"][0]["id"]

    from mindsearch.reconstruct.page import find_browser, render_png

    if find_browser() is None:
        pytest.skip("no Chromium installed to render the page")
    png = render_png(out / "index.html", tmp_path / "page.png", width=800, height=600)
    shot = np.asarray(Image.open(png).convert("RGB"), np.float32)
    assert shot.shape[:2] == (600, 800) and shot.std() > 10  # not a blank page


def test_space_refusal_and_bad_inputs_are_one_line_exit_2(world, tmp_path):
    vd = DiffusionComponents.random_tiny(T, D).save_pretrained(tmp_path / "vd")  # a real-format VD dir
    np.save(tmp_path / "v_bad.npy", np.zeros((2, 7), np.float32))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    base = ["--run", world.run, "--no-progress"]
    cases = {
        "ViT-L/14 hidden": [*base, "--data", world.data, "--out", tmp_path / "o", "--vd", vd],
        "exactly one of --voxels or --data": [*base, "--out", tmp_path / "o", "--vd", "random-tiny"],
        "has 7 voxels per trial": [*base, "--voxels", tmp_path / "v_bad.npy", "--out", tmp_path / "o",
                                   "--vd", "random-tiny"],
        "--strength must be in [0, 1]": [*base, "--data", world.data, "--out", tmp_path / "o", "--strength", 1.5],
        "--init retrieved needs --index": [*base, "--data", world.data, "--out", tmp_path / "o", "--init",
                                           "retrieved", "--vd", "random-tiny"],
        "not a previous reconstruction": [*base, "--data", world.data, "--out", tmp_path / "mine"],
        "Versatile Diffusion directory not found": [*base, "--data", world.data, "--out", tmp_path / "o",
                                                    "--vd", tmp_path / "nope"],
        "has no trial 999999": [*base, "--data", world.data, "--out", tmp_path / "o", "--vd", "random-tiny",
                                "--trials", "999999"],
        "run directory not found": ["--run", tmp_path / "norun", "--data", world.data, "--out", tmp_path / "o"],
    }
    for needle, args in cases.items():
        res = _invoke(*args)
        lines = res.output.strip().splitlines()
        assert res.exit_code == 2, (needle, res.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (needle, res.output)
        assert not (tmp_path / "o").exists()  # nothing half-written
    assert (tmp_path / "mine" / "keep.txt").is_file()


def test_reconstruct_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys\nfrom mindsearch.cli.main import main\ntry:\n    main(['reconstruct', '--help'])\n"
            "except SystemExit:\n    pass\nheavy = ('torch', 'diffusers', 'open_clip', 'lancedb', 'sklearn')\n"
            "print('HEAVY:' + ','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY:"


def test_clip_ranking_rebuilds_the_runs_encoder_and_picks_the_closest(tmp_path):
    pytest.importorskip("open_clip")
    from mindsearch.image_encoders import ImageEncoder
    from mindsearch.reconstruct.ranking import choose_ranking

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    path = tmp_path / "tiny-vit-recon.json"
    path.write_text(json.dumps(cfg))
    enc = ImageEncoder.create(path, output="hidden", weights="random:0")
    ranking = choose_ranking("auto", space=enc.space, have_blurry=False)
    assert ranking.name == "clip" and ranking.info["space"] == enc.space
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    own = ranking.embed(images)
    assert own.shape == (4, 5 * 16)  # 1 + (32/16)^2 tokens, projected to 16
    for target in range(4):
        assert best_of(ranking.score(images, own[target].reshape(5, 16))) == target
    # weights that are not the space's are refused, not silently used
    other = {**enc.space, "weights": "0123456789abcdef"}
    assert choose_ranking("auto", space=other, have_blurry=True).name == "blurry"
    with pytest.raises(MindsearchError, match="--clip PATH"):
        choose_ranking("clip", space=other, have_blurry=True)


def test_python_api_blurry_ranking_and_mindeye1_init_quirk(world):
    from mindsearch.data import open_dataset
    from mindsearch.reconstruct import ReconstructionPipeline, ReconstructionSettings
    from mindsearch.reconstruct.diffusion import CLIP_MEAN, CLIP_STD, encode_init
    from mindsearch.vae import resize_images

    st = ReconstructionSettings(samples=3, steps=2, init="blurry", init_normalization="clip", seed=5)
    pipe = ReconstructionPipeline.from_run(world.run, vd="random-tiny", vae=world.vae, ranking="blurry", settings=st)
    with open_dataset(world.data) as ds:
        voxels = ds.voxels(1, [0, 1])
    out = pipe(voxels, settings=st, progress=False, session=1)
    assert out.ranking["name"] == "blurry" and out.generated == 6 and [t.seed for t in out.trials] == [5, 6]
    for t in out.trials:  # the kept candidate correlates best with the blurry image, by hand at 32 px
        b = resize_images(t.blurry[None], 32).ravel()
        r = [np.corrcoef(resize_images(c.image[None], 32).ravel(), b)[0, 1] for c in t.candidates]
        np.testing.assert_allclose([c.score for c in t.candidates], r, atol=1e-4)
        assert t.chosen == int(np.argmax(r))
    # MindEye1 encodes the init image after CLIP mean/std normalisation, not 2x - 1
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    comp = pipe.components
    got = encode_init(comp, x, torch.Generator().manual_seed(0), "clip")
    norm = (torch.from_numpy(x) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    want = comp.vae.encode(norm).latent_dist.sample(torch.Generator().manual_seed(0)) * comp.vae.config.scaling_factor
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, encode_init(comp, x, torch.Generator().manual_seed(0), "vae"), atol=1e-3)


def test_retrieved_pixels_from_a_folder_never_leave_it(tmp_path):
    from PIL import Image

    from mindsearch.reconstruct.retrieval import Retriever

    (tmp_path / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(tmp_path / "imgs" / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    r = Retriever.__new__(Retriever)  # no index needed to resolve keys
    r.images_source, r._datasets, r.index = tmp_path / "imgs", {}, "folder"
    px = r.pixels(SimpleNamespace(path="a/x.png", id=0))
    assert px.shape == (3, 8, 8) and px.min() == 1.0
    with pytest.raises(MindsearchError, match="outside"):
        r.pixels(SimpleNamespace(path="../outside.png", id=1))
    r.images_source = None
    with pytest.raises(MindsearchError, match="--images"):
        r.pixels(SimpleNamespace(path="a/x.png", id=0))
