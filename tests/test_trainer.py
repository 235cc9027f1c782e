"""The training loop: overfitting, bitwise resume, the run directory, subjects and adapters."""

from __future__ import annotations

import json
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from mindsearch.models import from_pretrained  # noqa: E402
from mindsearch.models.encoder import load_run_encoder  # noqa: E402
from mindsearch.retrieval import top1_full_pool  # noqa: E402
from mindsearch.training.trainer import TrainConfig, epoch_order, train_arrays  # noqa: E402

T, D = 3, 16


def _world(n_img=32, voxels=(50,), seed=0, reps=1, noise=0.1):
    """Random targets and, per subject, voxels = a random linear view of the targets + noise."""
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((n_img, T, D)).astype(np.float32)
    vox, ids = {}, {}
    for s, v in enumerate(voxels, start=1):
        w = rng.standard_normal((T * D, v)).astype(np.float32)
        i = np.tile(np.arange(n_img), reps)
        x = targets[i].reshape(len(i), -1) @ w + noise * rng.standard_normal((len(i), v))
        vox[s] = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
        ids[s] = i
    return targets, vox, ids


def _cfg(**kw):
    # These 32-image worlds train on every image (no validation split) unless a test says otherwise.
    base = dict(preset="tiny", epochs=3, batch_size=8, lr=3e-3, seed=0, val_fraction=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_tiny_model_overfits_tiny_set(tmp_path):
    targets, vox, ids = _world()
    summary = train_arrays(vox, ids, targets, _cfg(epochs=30), tmp_path / "run",
                           val={1: (vox[1], ids[1])}, progress=False)
    assert not summary["interrupted"]
    assert summary["val"]["1"]["brain_to_image_top1"] == 1.0
    assert summary["history"][0]["phase"] == "bimixco" and summary["history"][-1]["phase"] == "softclip"
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]


def _weights(run_dir):
    return {k: v.clone() for k, v in from_pretrained(run_dir).state_dict().items()}


@pytest.mark.parametrize("stop_at", [5, 8])  # mid-epoch (4 steps/epoch) and exactly at an epoch end
def test_resume_reproduces_uninterrupted_run(tmp_path, stop_at):
    targets, vox, ids = _world()
    cfg = _cfg(epochs=3, ckpt_every_steps=3)
    train_arrays(vox, ids, targets, cfg, tmp_path / "full", progress=False)

    out = tmp_path / "resumed"
    first = train_arrays(vox, ids, targets, _cfg(epochs=3, ckpt_every_steps=3, max_steps=stop_at), out,
                         progress=False)
    assert first["interrupted"] and first["global_step"] == stop_at
    assert (out / "checkpoint" / "state.safetensors").is_file() and not (out / "model.safetensors").exists()
    # Noise between the two processes' halves must not matter: the checkpoint restores the RNG.
    torch.manual_seed(999)
    np.random.seed(999)
    second = train_arrays(vox, ids, targets, cfg, out, resume=True, progress=False)
    assert not second["interrupted"] and second["global_step"] == 12
    assert len(second["history"]) == 3
    full_log = json.loads((tmp_path / "full" / "train_log.json").read_text())
    assert [h["loss"] for h in second["history"]] == pytest.approx([h["loss"] for h in full_log["history"]])
    a, b = _weights(tmp_path / "full"), _weights(out)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert not (out / "checkpoint").exists()  # removed once the run is complete
    again = train_arrays(vox, ids, targets, cfg, out, resume=True, progress=False)
    assert again["already_complete"] and again["global_step"] == 12


def test_run_directory_and_encoder(tmp_path):
    targets, vox, ids = _world()
    v = vox[1].shape[1]
    from mindsearch.data.preprocess import ZScore

    z = ZScore(mean=np.zeros((2, v), np.float32), std=np.ones((2, v), np.float32), sessions=[1, 2],
               global_mean=np.zeros(v, np.float32), global_std=np.ones(v, np.float32))
    info = {"space": {"name": "sim", "tokens": T, "dim": D}, "data": {"path": "x", "fingerprint": "abc"}}
    run = tmp_path / "run"
    train_arrays(vox, ids, targets, _cfg(epochs=1, loss="clip"), run, progress=False, zscore={1: z},
                 run_info=info)
    config = json.loads((run / "config.json").read_text())
    assert config["format"] == "mindsearch-run/1" and config["model"] == "mindeye"
    assert config["subject"] == 1 and config["n_voxels"] == v and config["subjects"] == {"1": v}
    assert config["target_shape"] == [T, D] and config["seed"] == 0
    assert config["space"]["name"] == "sim" and config["data"]["fingerprint"] == "abc"
    assert config["train"]["loss"] == "clip" and "torch" in config["versions"]
    assert config["mindeye"]["n_voxels"] == {"1": v}
    for name in ("model.safetensors", "zscore.safetensors", "train_log.json"):
        assert (run / name).is_file()
    from mindsearch.io import load_tensors

    zt = load_tensors(run / "zscore.safetensors")
    assert zt["mean"].shape == (2, v) and zt["sessions"].tolist() == [1, 2]
    out = load_run_encoder(run, config).encode(vox[1][:4], 1)
    assert {k: a.shape for k, a in out.items()} == {k: (4, T, D) for k in ("disjointed", "backbone", "aligned")}


def test_multi_subject_then_new_subject_adapter_only(tmp_path):
    targets, vox, ids = _world(voxels=(50, 40, 30))
    two = {s: vox[s] for s in (1, 2)}
    summary = train_arrays(two, {s: ids[s] for s in (1, 2)}, targets, _cfg(epochs=2, batch_size=8),
                           tmp_path / "shared", val={s: (two[s], ids[s]) for s in two}, progress=False)
    assert set(summary["val"]) >= {"1", "2"}
    base = from_pretrained(tmp_path / "shared")
    assert base.subjects == [1, 2]
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = _cfg(epochs=2, adapter_only=True)
    s3 = train_arrays({3: vox[3]}, {3: ids[3]}, targets, cfg, tmp_path / "enrol", model=base, progress=False)
    assert s3["n_trainable"] == 30 * base.config.hidden + base.config.hidden
    after = from_pretrained(tmp_path / "enrol")
    assert after.subjects == [1, 2, 3]
    state = after.state_dict()
    for k, v in before.items():
        assert torch.equal(v, state[k]), f"{k} changed although only the new adapter trains"
    # Full fine-tuning on the new subject moves the shared weights too.
    full = train_arrays({3: vox[3]}, {3: ids[3]}, targets, _cfg(epochs=1), tmp_path / "ft",
                        model=from_pretrained(tmp_path / "shared"), progress=False)
    assert full["n_trainable"] == full["n_params"]


@pytest.mark.parametrize("loss", ["clip", "softclip", "bimixco"])
def test_loss_variants_and_accumulation(tmp_path, loss):
    targets, vox, ids = _world()
    s = train_arrays(vox, ids, targets, _cfg(epochs=1, loss=loss, accumulate=2, batch_size=4,
                                              use_prior=(loss != "clip")), tmp_path / loss, progress=False)
    assert s["steps_per_epoch"] == 4 and np.isfinite(s["final_loss"])
    assert s["history"][0]["phase"] == loss


def test_config_and_helpers():
    cfg = TrainConfig.for_preset("tiny", seed=3)
    assert cfg.preset == "tiny" and cfg.seed == 3 and cfg.epochs == 20
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    from mindsearch.errors import MindsearchError

    with pytest.raises(MindsearchError):
        TrainConfig(loss="nope")
    assert np.array_equal(epoch_order(0, 1, 1, 10), epoch_order(0, 1, 1, 10))
    assert not np.array_equal(epoch_order(0, 1, 1, 50), epoch_order(0, 2, 1, 50))
    x = np.eye(4)
    assert top1_full_pool(x, x) == (1.0, 1.0)
    assert top1_full_pool(x, x[::-1].copy()) == (0.0, 0.0)


def test_train_mindeye_on_simulated_dataset(tmp_path, monkeypatch):
    """The dataset path: open_dataset + load_split, validation on held-out TRAINING images (the
    test split is never read while training), a usable run."""
    pytest.importorskip("h5py")
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.runs import open_run
    from mindsearch.simulate import simulate
    from mindsearch.training.trainer import train_mindeye

    data = simulate(tmp_path / "ds", preset="small", n_voxels=120, n_shared=40, n_unique=120, image_size=16,
                    tokens=T, dim=D, mc_max_draws=20, mc_min_draws=5)
    import mindsearch.data.preprocess as preprocess

    real_load_split = preprocess.load_split

    def train_split_only(ds, subject, split, *args, **kw):
        assert split == "train", f"training read the {split!r} split"
        return real_load_split(ds, subject, split, *args, **kw)

    monkeypatch.setattr(preprocess, "load_split", train_split_only)
    summary = train_mindeye(data, [1], _cfg(epochs=1, batch_size=16, val_fraction=0.1), tmp_path / "run",
                            progress=False)
    monkeypatch.setattr(preprocess, "load_split", real_load_split)
    assert summary["val"]["1"]["n"] == summary["n_val_images"] == 12  # 10 % of the 120 training images
    run = open_run(tmp_path / "run")
    with open_dataset(data) as ds:
        assert run.config["data"]["fingerprint"] == ds.fingerprint()
        test = load_split(ds, 1, "test")
    assert run.model_type == "mindeye" and run.zscore is not None
    out = run.encode(test.voxels[:5], zscore=False)
    assert out["disjointed"].shape == (5, T, D) and out["aligned"].shape == (5, T, D)


def test_lowlevel_head_trains_with_vae_targets(tmp_path):
    targets, vox, ids = _world()
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((len(targets), 4, 8, 8)).astype(np.float32) * 0.18215
    feats = rng.standard_normal((len(targets), 16, 4, 4)).astype(np.float32)
    s = train_arrays(vox, ids, targets, _cfg(epochs=2, use_lowlevel=True), tmp_path / "low", progress=False,
                     lowlevel_lookup=lambda i: (latents[i], feats[i]))
    assert np.isfinite(s["final_loss"])
    model = from_pretrained(tmp_path / "low")
    assert model.lowlevel is not None and model(torch.randn(2, 50), 1).lowlevel.shape == (2, 4, 8, 8)
    from mindsearch.errors import MindsearchError

    with pytest.raises(MindsearchError):  # the head needs its targets
        train_arrays(vox, ids, targets, _cfg(epochs=1, use_lowlevel=True), tmp_path / "x", progress=False)
