"""Image metrics of reconstructions (``mindsearch eval recon``): each metric against a value worked
out by hand or against MindEye's evaluation code written out literally, weights loading (random
torchvision networks saved to files: no download), skips, pairing, bad inputs, the HTML page."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")

from mindsearch.cli.main import cli  # noqa: E402
from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.eval.recon_metrics import (  # noqa: E402
    METRICS, correlation_distance, image_metrics, load_pairs, read_image, two_way_identification)

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def _flat(rgb, size=8):
    return np.broadcast_to(np.asarray(rgb, np.float32)[:, None, None], (3, size, size)).copy()


def _random_images(n, size=32, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def _save_png(path, image):
    from PIL import Image

    Image.fromarray((np.clip(image.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)).save(path)


# ------------------------------------------------------------------------------ two-way, by hand
def test_two_way_by_hand():
    a = np.array([1., -1, 0, 0])
    c = np.array([0., 0, 1, -1])
    b = a + np.sqrt(3) * c  # corr(a, b) = 0.5, corr(a, c) = 0, corr(b, c) = 0.866
    reals, preds = np.stack([a, b, c]), np.stack([a, a, c])
    # recon 0 = a: truth 0 (r=1) beats both others -> 1; recon 1 = a: its truth b has r=.5, truth a
    # has r=1 (not below), truth c has r=0 (below) -> 1/2; recon 2 = c: r=1 with its own -> 1
    np.testing.assert_allclose(two_way_identification(reals, preds), [1, 0.5, 1])


def test_two_way_matches_mindeye_code_identity_and_shuffle(monkeypatch):
    import mindsearch.eval.recon_metrics as rm

    monkeypatch.setattr(rm, "CHUNK_VALUES", 4000)  # many column chunks, as 184,512-wide features get
    rng = np.random.default_rng(1)
    reals = rng.normal(size=(300, 50))
    preds = reals + rng.normal(size=(300, 50)) * 2
    r = np.corrcoef(reals, preds)[:300, 300:]  # MindEye's two_way_identification, verbatim
    want = np.mean(np.sum(r < np.diag(r), 0)) / 299
    np.testing.assert_allclose(rm.correlate(rm.standardise(reals), rm.standardise(preds)), r, atol=1e-6)
    assert two_way_identification(reals, preds).mean() == pytest.approx(want, abs=1e-12)
    assert two_way_identification(reals, reals).mean() == 1.0
    shuffled = two_way_identification(reals, reals[rng.permutation(300)]).mean()
    assert abs(shuffled - 0.5) < 0.05, shuffled
    from scipy.spatial.distance import correlation

    d = correlation_distance(reals[:5], preds[:5])
    np.testing.assert_allclose(d, [correlation(reals[i], preds[i]) for i in range(5)], atol=1e-6)


# ------------------------------------------------------------------------------ pixels, by hand
def test_pixcorr_and_ssim_by_hand_on_flat_images():
    red, green, gray = (1, 0, 0), (0, 1, 0), (0.3, 0.3, 0.3)
    truth = np.stack([_flat(red), _flat(red), _flat(gray)])
    recons = np.stack([_flat(green), _flat((0.6, 0.1, 0.1)), _flat((0.5, 0.5, 0.5))])
    out = image_metrics(recons, truth, per_item=True)
    # PixCorr flattens the three channels: red vs green are two disjoint thirds -> r = -1/2;
    # 0.5 * red + 0.1 is an affine copy -> r = 1; a flat gray has no variance -> 0 (not NaN)
    np.testing.assert_allclose(out["items"]["pixcorr"], [-0.5, 1.0, 0.0], atol=1e-5)

    def lum(rgb):  # skimage rgb2gray
        return 0.2125 * rgb[0] + 0.7154 * rgb[1] + 0.0721 * rgb[2]

    def ssim_flat(x, y, c1=(0.01 * 1.0) ** 2):  # flat images: only the luminance term is left
        return (2 * x * y + c1) / (x * x + y * y + c1)

    want = [ssim_flat(lum(green), lum(red)), ssim_flat(lum((0.6, 0.1, 0.1)), lum(red)), ssim_flat(0.5, 0.3)]
    np.testing.assert_allclose(out["items"]["ssim"], want, atol=1e-5)
    assert out["pixcorr"] == pytest.approx(np.mean([-0.5, 1, 0]), abs=1e-5)
    assert out["ssim"] == pytest.approx(np.mean(want), abs=1e-5)
    assert out["n"] == 3 and set(METRICS) <= set(out)


def test_pixel_metrics_follow_mindeye_code():
    """256 px first, then 425 bilinear; gray SSIM with gaussian weights (transforms written out)."""
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity
    from torchvision import transforms

    truth, recons = _random_images(3, 40, 1), _random_images(3, 40, 2) * 0.5 + _random_images(3, 40, 1) * 0.5
    t = transforms.Resize(425)(transforms.Resize((256, 256))(torch.from_numpy(truth)))
    r = transforms.Resize(425)(transforms.Resize((256, 256))(torch.from_numpy(recons)))
    pix = np.mean([np.corrcoef(t[i].reshape(-1), r[i].reshape(-1))[0, 1] for i in range(3)])
    tg, rg = rgb2gray(t.permute(0, 2, 3, 1).numpy()), rgb2gray(r.permute(0, 2, 3, 1).numpy())
    ssim = np.mean([structural_similarity(rg[i], tg[i], gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0) for i in range(3)])
    out = image_metrics(recons, truth)
    assert out["pixcorr"] == pytest.approx(pix, abs=1e-5)
    assert out["ssim"] == pytest.approx(ssim, abs=1e-5)


# ------------------------------------------------------------------------------ networks
@pytest.fixture(scope="module")
def random_nets(tmp_path_factory):
    """Random-weight torchvision networks saved the ways real weights come: safetensors, a
    torchvision .pth state dict, SwAV's DataParallel checkpoint with its extra heads and no fc."""
    from safetensors.torch import save_file
    from torchvision import models

    root = tmp_path_factory.mktemp("metric_weights")
    torch.manual_seed(0)
    nets = {"alexnet": models.alexnet(), "inception": models.inception_v3(init_weights=True, aux_logits=True),
            "effnet": models.efficientnet_b1(), "swav": models.resnet50()}
    for net in (nets["effnet"], nets["swav"]):  # calibrate batch norms: random EfficientNet features vanish
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        with torch.no_grad():
            net.train()(torch.rand(4, 3, 96, 96))
        net.eval()
    paths = {"alexnet": root / "alexnet.safetensors", "inception": root / "inception_v3.safetensors",
             "effnet": root / "efficientnet_b1.pth", "swav": root / "swav_800ep_pretrain.pth.tar"}
    for name in ("alexnet", "inception"):
        save_file({k: v.contiguous() for k, v in nets[name].state_dict().items()}, str(paths[name]))
    torch.save(nets["effnet"].state_dict(), paths["effnet"])
    swav = {f"module.{k}": v for k, v in nets["swav"].state_dict().items() if not k.startswith("fc.")}
    swav["module.projection_head.0.weight"] = torch.zeros(8, 2048)
    swav["module.prototypes.weight"] = torch.zeros(3, 8)
    torch.save(swav, paths["swav"])
    return nets, paths, root


def _reference(model, node, size, recons, truth, two_way=True):
    """MindEye's cell for one network, verbatim apart from the model: preprocess, features, score."""
    from torchvision import transforms
    from torchvision.models.feature_extraction import create_feature_extractor

    model = create_feature_extractor(model.eval(), return_nodes=[node])
    pre = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                              transforms.Normalize(*IMAGENET)])
    to256 = transforms.Resize((256, 256))
    with torch.no_grad():
        preds = model(torch.stack([pre(x) for x in to256(torch.from_numpy(recons))]))[node].flatten(1).numpy()
        reals = model(torch.stack([pre(x) for x in to256(torch.from_numpy(truth))]))[node].flatten(1).numpy()
    if not two_way:
        from scipy.spatial.distance import correlation

        return np.mean([correlation(reals[i], preds[i]) for i in range(len(reals))])
    n = len(reals)
    r = np.corrcoef(reals, preds)[:n, n:]
    return np.mean(np.sum(r < np.diag(r), 0)) / (n - 1)


def test_networks_match_mindeye_code(random_nets):
    nets, paths, root = random_nets
    truth = _random_images(3, 32, 3)
    recons = (0.6 * truth + 0.4 * _random_images(3, 32, 4)).astype(np.float32)
    out = image_metrics(recons, truth, weights_dir=root, batch_size=2)  # found by file name
    assert set(out["skipped"]) == {"clip"}
    assert out["alexnet2"] == pytest.approx(_reference(nets["alexnet"], "features.4", 256, recons, truth))
    assert out["alexnet5"] == pytest.approx(_reference(nets["alexnet"], "features.11", 256, recons, truth))
    inception = nets["inception"]
    inception.transform_input = True  # what inception_v3(weights=DEFAULT) builds
    assert out["inception"] == pytest.approx(_reference(inception, "avgpool", 342, recons, truth))
    assert out["effnet"] == pytest.approx(_reference(nets["effnet"], "avgpool", 255, recons, truth, False),
                                          abs=1e-6)
    assert out["swav"] == pytest.approx(_reference(nets["swav"], "avgpool", 224, recons, truth, False), abs=1e-6)
    assert 0 < out["effnet"] < 1 and 0 < out["swav"] < 1  # not a degenerate random network


def test_clip_metric_with_a_tiny_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file
    from torchvision import transforms

    from mindsearch.image_encoders import _resolve_model_name

    cfg = tmp_path / "mindsearch-test-recon-clip.json"
    cfg.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32,
                                                               "patch_size": 8, "head_width": 16},
                               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16,
                                            "heads": 2, "layers": 1}}))
    torch.manual_seed(1)
    model = open_clip.create_model(_resolve_model_name(cfg), pretrained=None).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    truth = _random_images(4, 40, 5)
    recons = (0.5 * truth + 0.5 * _random_images(4, 40, 6)).astype(np.float32)
    out = image_metrics(recons, truth, weights={"clip": tmp_path / "clip.safetensors"}, clip_model=str(cfg))
    pre = transforms.Compose([transforms.Resize(32), transforms.Normalize(
        [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])])
    with torch.no_grad():
        feats = [model.encode_image(pre(transforms.Resize((256, 256))(torch.from_numpy(x)))).numpy()
                 for x in (truth, recons)]
    r = np.corrcoef(*feats)[:4, 4:]
    assert out["clip"] == pytest.approx(np.mean(np.sum(r < np.diag(r), 0)) / 3)


def test_alexnet_with_real_weights(weights_fixtures, nsd_fixtures):
    from scipy.ndimage import gaussian_filter

    x = np.stack([read_image(p) for p in sorted((nsd_fixtures / "images").iterdir())[:8]])
    w = {"alexnet": weights_fixtures / "alexnet_imagenet_features.safetensors"}
    same = image_metrics(x, x, weights=w)
    assert same["alexnet2"] == same["alexnet5"] == 1.0 and same["pixcorr"] == pytest.approx(1.0)
    blurred = np.stack([gaussian_filter(im, sigma=(0, 8, 8)) for im in x]).astype(np.float32)
    blur = image_metrics(blurred, x, weights=w)
    shuffled = image_metrics(x[np.roll(np.arange(8), 1)], x, weights=w)
    # ANCHORS 4.5 on 20 stimuli: blur sigma 8 keeps AlexNet ~1.0/0.995 while pixels drop; shuffling ~chance
    assert blur["alexnet2"] > 0.95 and blur["alexnet5"] > 0.9 and 0.7 < blur["pixcorr"] < 0.97
    assert shuffled["alexnet2"] < 0.75 and shuffled["alexnet5"] < 0.8 and abs(shuffled["pixcorr"]) < 0.3


# ------------------------------------------------------------------------------ weights problems
class Payload:  # an arbitrary object in a pickle: torch.load(weights_only=True) refuses it
    pass


def test_missing_weights_are_skipped_with_the_weights_named(tmp_path):
    out = image_metrics(_random_images(3), _random_images(3, seed=1), weights_dir=tmp_path)
    assert out["pixcorr"] is not None and out["ssim"] is not None
    for m in ("alexnet2", "alexnet5", "inception", "clip", "effnet", "swav"):
        assert out[m] is None
    assert "AlexNet IMAGENET1K_V1" in out["skipped"]["alexnet2"] and "--alexnet" in out["skipped"]["alexnet5"]
    assert "swav_800ep_pretrain" in out["skipped"]["swav"] and "EfficientNet-B1" in out["skipped"]["effnet"]
    json.dumps(out, allow_nan=False)


def test_wrong_or_pickled_weights_are_refused(tmp_path, random_nets):
    _, paths, _ = random_nets
    imgs = _random_images(2)
    with pytest.raises(MindsearchError, match="do not fit inception|not InceptionV3"):
        image_metrics(imgs, imgs, weights={"inception": paths["alexnet"]})

    torch.save({"features.0.weight": Payload()}, tmp_path / "alexnet.pth")
    with pytest.raises(MindsearchError, match="cannot read weights"):
        image_metrics(imgs, imgs, weights={"alexnet": tmp_path / "alexnet.pth"})
    with pytest.raises(MindsearchError, match="not found"):
        image_metrics(imgs, imgs, weights={"effnet": tmp_path / "nope.pth"})


# ------------------------------------------------------------------------------ pairing + CLI
@pytest.fixture
def folders(tmp_path):
    rec, tru = tmp_path / "recons", tmp_path / "truth"
    rec.mkdir(), tru.mkdir()
    truth = _random_images(4, 24, 7)
    for i, im in enumerate(truth):
        _save_png(tru / f"{i:06d}.png", im)
        _save_png(rec / f"{i:06d}.png", 0.7 * im + 0.3 * _flat((0.5, 0.5, 0.5), 24))
    return rec, tru


def test_cli_json_and_html_page(folders, tmp_path, weights_fixtures):
    rec, tru = folders
    page = tmp_path / "page.html"
    res = CliRunner().invoke(cli, ["eval", "recon", "--recons", str(rec), "--truth", str(tru), "--json",
                                   "--html", str(page), "--weights-dir", str(weights_fixtures)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n"] == 4 and out["alexnet2"] == 1.0 and out["pixcorr"] > 0.99 and out["inception"] is None
    assert out["pairing"]["pairing"] == "file stem"
    skip_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("skipped")]
    assert len(skip_lines) == 4 and any("Inception" in ln and "inception_v3_google" in ln for ln in skip_lines)
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 8 and "AlexNet(2)" in text and "100.0%" in text
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # look at it as a person would: rendered, not blank
        from PIL import Image

        shot = tmp_path / "page.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1000,700",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
        if shot.is_file():
            pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
            assert pixels.std() > 10


def test_manifest_and_dataset_pairing(tmp_path):
    from mindsearch.simulate import simulate

    data = simulate(tmp_path / "data", "small", seed=2, n_voxels=40, n_shared=10, n_unique=10,
                    trials_per_session=30, image_size=32, tokens=2, dim=8, mc_min_draws=5, mc_max_draws=10)
    from mindsearch.data import open_dataset

    with open_dataset(data) as ds:
        a, b = (int(i) for i in np.unique(ds.trials["image_id"])[[3, 5]])
        seen = ds.images([a, b, b])
    out = tmp_path / "recon"
    (out / "t0").mkdir(parents=True)
    records = []
    for k, (image_id, im) in enumerate(zip([a, b, b], seen)):
        _save_png(out / "t0" / f"{k}.png", im)
        records.append({"trial": k, "image_id": image_id, "chosen": f"t0/{k}.png"})
    (out / "manifest.json").write_text(json.dumps({"format": "mindsearch-reconstruct/1", "records": records}))
    pairs = load_pairs(out, data=data)
    assert pairs.image_ids == [a, b, b] and pairs.recons.shape == (3, 3, 256, 256)
    np.testing.assert_allclose(pairs.recons, pairs.truth, atol=3 / 255)  # PNG rounding only
    res = CliRunner().invoke(cli, ["eval", "recon", "--recons", str(out), "--data", str(data), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["pixcorr"] > 0.999
    records[0]["chosen"] = "../outside.png"
    (out / "manifest.json").write_text(json.dumps({"records": records}))
    with pytest.raises(MindsearchError, match="outside"):
        load_pairs(out, data=data)


@pytest.mark.parametrize("case", ["unreadable", "extra_truth", "missing_folder", "both_truths"])
def test_bad_inputs_one_line_exit_2(folders, tmp_path, case):
    rec, tru = folders
    args = ["eval", "recon", "--recons", str(rec), "--truth", str(tru)]
    if case == "unreadable":
        (rec / "000001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        bad = rec / "000001.png"
    elif case == "extra_truth":
        _save_png(tru / "000009.png", _flat((0, 0, 1)))
        bad = tru
    elif case == "missing_folder":
        args[3] = str(tmp_path / "nowhere")
        bad = tmp_path / "nowhere"
    else:
        args += ["--data", str(tmp_path)]
        bad = None
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output
    if bad is not None:
        assert str(bad) in lines[0]
