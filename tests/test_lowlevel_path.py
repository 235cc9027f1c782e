"""The low-level (blurry image) path: real pretrained TAEF2, diffusers VAE directories, the latent
cache, and training + encoding + decoding a run's low-level head end to end."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.vae import ImageAutoencoder, blurry_images, dataset_latents, resize_images, smooth  # noqa: E402

T, D = 3, 16


def _tiny_kl(directory):
    """A random 2x-downsampling AutoencoderKL saved as a diffusers directory (no hub, no download)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                          layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32)
    model.save_pretrained(str(directory))
    return directory


def _nsd_images(folder, n, size):
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))[:n]
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32).transpose(2, 0, 1) / 255 for f in files])
    return resize_images(imgs, size)


def test_taef2_loads_strict_and_reconstructs_real_stimuli(weights_fixtures, nsd_fixtures):
    vae = ImageAutoencoder.load(weights_fixtures)  # the folder: finds the one taef2 pair
    assert vae.space["model"] == "AutoencoderTiny" and vae.latent_channels == 32 and vae.downsample == 8
    same = ImageAutoencoder.load((weights_fixtures / "taef2_encoder.safetensors",
                                  weights_fixtures / "taef2_decoder.safetensors"))
    assert same.fingerprint == vae.fingerprint
    x = _nsd_images(nsd_fixtures / "images", 6, 128)
    z = vae.encode(x)
    assert z.shape == (6, 32, 16, 16)
    y = vae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    psnr = 10 * np.log10(1 / ((x - y) ** 2).reshape(len(x), -1).mean(1))
    # Pretrained TAEF2 gives ~28 dB here; a wrong key map or a missing mid-block pool gives noise.
    assert psnr.mean() > 20, psnr


def test_diffusers_directory_round_trips(tmp_path):
    from diffusers import AutoencoderKL

    vae = ImageAutoencoder.load(_tiny_kl(tmp_path / "vae"))
    assert vae.space["model"] == "AutoencoderKL" and vae.latent_shape(32) == (4, 16, 16)
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    z = vae.encode(x)
    ref = AutoencoderKL.from_pretrained(str(tmp_path / "vae")).eval()
    with torch.no_grad():  # MindEye1's convention: mode of encode(2x - 1), times the scaling factor
        want = ref.encode(torch.from_numpy(x) * 2 - 1).latent_dist.mode() * ref.config.scaling_factor
    np.testing.assert_allclose(z, want.numpy(), rtol=1e-4, atol=1e-5)
    y = vae.decode(z)
    assert y.shape == (3, 3, 32, 32) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(MindsearchError):
        ImageAutoencoder.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MindsearchError):
        ImageAutoencoder.load(tmp_path / "empty")


class _Images:
    """The slice of a dataset ``dataset_latents`` uses, counting image reads."""

    def __init__(self, root, n=10, size=32):
        self.root, self.has_images, self.image_file, self.reads = root, True, None, 0
        self.pixels = np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32)

    def images(self, ids):
        self.reads += 1
        return self.pixels[np.asarray(ids)]

    def fingerprint(self):
        return "fake"


def test_dataset_latents_are_cached(tmp_path, monkeypatch):
    vae = ImageAutoencoder.load(_tiny_kl(tmp_path / "vae"))
    ds = _Images(tmp_path / "data")
    ds.root.mkdir()
    calls = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda x, batch=16: calls.append(len(x)) or encode(x, batch))
    a = dataset_latents(ds, vae, [3, 1, 3], size=16)
    assert a.shape == (3, 4, 8, 8) and np.array_equal(a[0], a[2]) and calls == [2]
    cached = sorted(p.name for p in (ds.root / ".mindsearch_cache").glob("latents_*.npy"))
    assert len(cached) == 2  # latents + ids
    b = dataset_latents(ds, vae, [1, 3], size=16)
    assert calls == [2]  # read from the cache, nothing encoded
    np.testing.assert_array_equal(b, a[[1, 0]])
    c = dataset_latents(ds, vae, [0, 1, 3], size=16)  # only the new id is encoded, the cache grows
    assert calls == [2, 1] and np.array_equal(c[1:], b)
    np.testing.assert_allclose(c[0], encode(resize_images(ds.pixels[[0]], 16))[0], atol=2e-3)
    dataset_latents(ds, vae, [1], size=32)  # another size is another cache entry
    assert calls == [2, 1, 1]


@pytest.fixture
def small_dataset(tmp_path):
    pytest.importorskip("h5py")
    from mindsearch.simulate import simulate

    return simulate(tmp_path / "ds", "small", n_voxels=120, n_shared=60, n_unique=90, trials_per_session=150,
                    image_size=32, tokens=T, dim=D, mc_min_draws=10, mc_max_draws=40)


def test_train_mindeye_learns_the_vae_latents(tmp_path, small_dataset):
    pytest.importorskip("accelerate")
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.models.encoder import MindEyeModel
    from mindsearch.runs import open_run
    from mindsearch.training.trainer import TrainConfig, train_mindeye

    vae_dir = _tiny_kl(tmp_path / "vae")
    cfg = TrainConfig(preset="tiny", epochs=2, batch_size=16, lr=3e-3, seed=0, use_lowlevel=True,
                      use_prior=False, val_every=0)
    train_mindeye(small_dataset, [1], cfg, tmp_path / "run", progress=False, vae=vae_dir)
    run = open_run(tmp_path / "run")
    vae = ImageAutoencoder.load(vae_dir)
    assert run.config["lowlevel_vae"]["space"] == vae.space
    assert run.config["lowlevel_vae"]["latent_shape"] == [4, 16, 16]
    assert run.config["mindeye"]["lowlevel"]["latent_size"] == 16

    with open_dataset(small_dataset) as ds:
        train = load_split(ds, 1, "train")
        rows = np.unique(train.image_ids, return_index=True)[1][:48]
        target = dataset_latents(ds, vae, train.image_ids[rows], size=32)
    out = run.encode(train.voxels[rows], zscore=False)
    assert out["lowlevel"].shape == (len(rows), 4, 16, 16)

    torch.manual_seed(1)
    fresh = MindEyeModel(run.config["mindeye"]).eval()
    with torch.no_grad():
        before = fresh(torch.from_numpy(train.voxels[rows]), 1).lowlevel.numpy()
    l1_before, l1_after = np.abs(before - target).mean(), np.abs(out["lowlevel"] - target).mean()
    assert l1_after < 0.8 * l1_before, (l1_before, l1_after)
    assert l1_after < np.abs(target).mean()  # better than predicting zeros: it learnt the latents' statistics

    blurry = blurry_images(run, train.voxels[rows[:4]], vae, zscore=False)
    assert blurry.shape == (4, 3, 32, 32) and 0 <= blurry.min() and blurry.max() <= 1
    raw = blurry_images(run, train.voxels[rows[:4]], vae, zscore=False, blur=0)  # MindEye's raw decode
    assert np.allclose(raw, vae.decode(out["lowlevel"][:4]), atol=1e-5)
    assert np.allclose(blurry, smooth(raw), atol=1e-5) and not np.allclose(blurry, raw, atol=1e-3)
    other = tmp_path / "other"
    _tiny_kl(other)
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                  norm_num_groups=4).save_pretrained(str(other))  # other weights: refused
    with pytest.raises(MindsearchError, match="trained for VAE"):
        blurry_images(run, train.voxels[rows[:2]], other, zscore=False)


def test_cli_refuses_vae_without_images(tmp_path, small_dataset):
    from click.testing import CliRunner

    from mindsearch.cli.main import cli

    (small_dataset / "images_32_float16.hdf5").unlink()
    vae_dir = _tiny_kl(tmp_path / "vae")
    res = CliRunner().invoke(cli, ["train", "--data", str(small_dataset), "--subject", "1", "--epochs", "1",
                                   "--vae", str(vae_dir), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2, res.output
    assert "no images" in res.output


def test_smooth_is_a_gaussian_low_pass():
    rng = np.random.default_rng(0)
    noise = rng.random((2, 3, 64, 64)).astype(np.float32)
    flat = np.full((1, 3, 64, 64), 0.3, np.float32)
    out = smooth(noise)  # sigma 0.025 x 64 = 1.6 px
    assert out.shape == noise.shape and np.allclose(out.mean(), noise.mean(), atol=0.01)  # keeps the mean
    assert out.std() < 0.4 * noise.std()  # removes the speckle
    assert np.allclose(smooth(flat), flat, atol=1e-6) and smooth(noise, 0) is noise
    wider = smooth(noise, 0.05)
    assert wider.std() < out.std()
    with pytest.raises(MindsearchError, match="blur"):
        smooth(noise, -1)


def test_lowlevel_head_follows_the_seen_image(tmp_path, weights_fixtures):
    """The collapse this guards: a ridge-started run that keeps its ridge start kept the head's random
    weights, and a head trained alongside the contrastive trunk predicted about the mean latent for
    every trial (correlation with the seen image's latent ~0.01 here; 0.00 on the ``small``
    simulation). Refitted on the kept trunk, on held-out images its latents follow the seen image's."""
    pytest.importorskip("accelerate")
    pytest.importorskip("h5py")
    import json

    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.runs import open_run
    from mindsearch.simulate import simulate
    from mindsearch.training.trainer import TrainConfig, train_mindeye

    data = simulate(tmp_path / "ds", "small", n_voxels=300, n_shared=60, n_unique=240, trials_per_session=150,
                    image_size=32, tokens=T, dim=D, mc_min_draws=10, mc_max_draws=40)
    preset = tmp_path / "ridge-start.json"  # the cpu preset's shape, small
    preset.write_text(json.dumps({
        "name": "ridge-start", "block": "mindeye2", "hidden": 128, "n_blocks": 1,
        "projector": {"hidden": 32, "residual": True}, "prior": None,
        "lowlevel": {"channels": 16, "size": 4, "latent_size": 4, "decoder_channels": [32], "aux_dim": 16},
        "train": {"batch_size": 16, "lr": 1e-3, "init": "ridge_fallback", "loss": "clip", "use_prior": False}}))
    cfg = TrainConfig.for_preset(str(preset), steps=30, epochs=None, seed=0, device="cpu", lowlevel_refit_steps=300)
    summary = train_mindeye(data, [1], cfg, tmp_path / "run", progress=False, vae=weights_fixtures)
    assert summary["lowlevel_refit"]["steps"] == 300

    vae = ImageAutoencoder.load(weights_fixtures)
    with open_dataset(data) as ds:
        train = load_split(ds, 1, "train", zscore=True, average="betas")
        test = load_split(ds, 1, "test", zscore=True, average="betas")
        mean = dataset_latents(ds, vae, train.image_ids, size=32).reshape(len(train.image_ids), -1).mean(0)
        truth = dataset_latents(ds, vae, test.image_ids, size=32).reshape(len(test.image_ids), -1)
    pred = open_run(tmp_path / "run").encode(test.voxels, zscore=False, outputs=("lowlevel",))["lowlevel"]
    pred = pred.reshape(len(pred), -1)
    spread, truth_spread = pred.std(0).mean(), truth.std(0).mean()
    corr = np.mean([np.corrcoef(p - mean, t - mean)[0, 1] for p, t in zip(pred, truth)])
    assert spread > 0.1 * truth_spread, (spread, truth_spread)  # not one latent for every trial
    assert corr > 0.12, corr  # measured 0.22 (0.01 without the refit)
