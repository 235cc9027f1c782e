"""Model shapes (tiny preset), paper-size parameter count (meta device), save/load, adapters, prior."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mindsearch.errors import MindsearchError  # noqa: E402
from mindsearch.models import count_parameters, create_model, from_pretrained  # noqa: E402
from mindsearch.models.encoder import load_run_encoder  # noqa: E402
from mindsearch.runs import RUN_FORMAT  # noqa: E402

T, D = 3, 16


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("tiny", {1: 40, 2: 30}, tokens=T, dim=D, **kw)


def test_forward_shapes_every_head():
    model = _tiny(use_lowlevel=True)
    x1, x2 = torch.randn(4, 40), torch.randn(2, 30)
    out = model(x1, 1, targets=torch.randn(4, T, D))
    assert out.backbone.shape == (4, T, D)
    assert out.disjointed.shape == (4, T, D)
    assert out.features.shape == (4, model.config.hidden)
    assert out.lowlevel.shape == (4, 4, 8, 8)  # tiny: 8x4x4 map -> 4x8x8 latent
    assert out.lowlevel_aux.shape == (4, 16, 4, 4)
    assert out.prior_loss.ndim == 0 and out.prior_x0.shape == (4, T, D)
    both = model([x1, x2], [1, 2])  # multi-subject batch: concatenated after the adapters
    assert both.disjointed.shape == (6, T, D)


def test_modules_standalone():
    from mindsearch.models.backbone import Backbone
    from mindsearch.models.lowlevel import LowLevelHead
    from mindsearch.models.projector import Projector

    bb = Backbone(hidden=32, tokens=5, dim=8, n_blocks=4)
    tokens, feats = bb(torch.randn(3, 32))
    assert tokens.shape == (3, 5, 8) and feats.shape == (3, 32)
    assert Projector(8, hidden=24)(tokens).shape == (3, 5, 8)
    low = LowLevelHead(32, channels=8, size=4, latent_size=16, decoder_channels=(16, 8, 8), aux_dim=12)
    lat, aux = low(feats)
    assert lat.shape == (3, 4, 16, 16) and aux.shape == (3, 12, 4, 4)
    with pytest.raises(ValueError):
        LowLevelHead(32, size=4, latent_size=12, decoder_channels=(8, 8))


def test_heads_can_be_switched_off():
    model = _tiny(use_prior=False, use_projector=False)
    assert model.prior is None and model.projector is None and model.config.prior is None
    out = model(torch.randn(2, 40), 1, targets=torch.randn(2, T, D))
    assert out.prior_loss is None
    assert torch.equal(out.disjointed, out.backbone)


def test_paper_parameter_count_on_meta_device():
    # MindEye1 at 15,724 voxels: backbone + projector = 947.6 M (ANCHORS 2.2). Nothing is allocated.
    n = count_parameters("paper", {1: 15724}, parts=("adapters", "backbone", "projector"))
    assert n == 947_579_904
    model = create_model("paper", {1: 15724}, device="meta")
    assert model.backbone.to_tokens.weight.is_meta
    assert sum(p.numel() for p in model.backbone.to_tokens.parameters()) == 808_649_472


def test_config_needs_target_shape():
    with pytest.raises(MindsearchError):
        create_model("tiny", {1: 10})
    with pytest.raises(MindsearchError):
        create_model("no-such-preset", {1: 10}, tokens=1, dim=2)


def test_save_pretrained_round_trip(tmp_path):
    model = _tiny().eval()
    model.prior.set_embed_scale(torch.randn(10, T, D) * 3)
    model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(3, 30)
    with torch.no_grad():
        assert torch.equal(model(x, 2).disjointed, loaded(x, 2).disjointed)


def test_new_subject_adapter_trains_only_itself():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_subject(5, 25)
    new_w = model.adapters.linears["subj05"].weight.detach().clone()
    assert model.subjects == [1, 2, 5] and model.config.n_voxels["5"] == 25
    names = model.train_only([5])
    assert names and all(n.startswith("adapters.linears.subj05.") for n in names)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = model(torch.randn(8, 25), 5, targets=torch.randn(8, T, D))
        loss = out.disjointed.pow(2).mean() + out.prior_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"
    assert not torch.equal(after["adapters.linears.subj05.weight"], new_w)  # the new adapter did learn
    # Fine-tuning everything again is one call away.
    model.train_only([1, 2, 5])
    model.requires_grad_(True)
    assert all(p.requires_grad for p in model.parameters())


def test_prior_sample_shape_strided_and_deterministic():
    model = _tiny().eval()
    cond = model(torch.randn(3, 40), 1).backbone
    a = model.prior.sample(cond, generator=torch.Generator().manual_seed(1))
    b = model.prior.sample(cond, steps=20, generator=torch.Generator().manual_seed(1))
    c = model.prior.sample(cond, steps=20, generator=torch.Generator().manual_seed(1))
    g = model.prior.sample(cond, steps=5, cond_scale=2.0, generator=torch.Generator().manual_seed(1))
    assert a.shape == b.shape == g.shape == (3, T, D)
    assert torch.equal(b, c) and torch.isfinite(a).all() and torch.isfinite(g).all()
    with pytest.raises(ValueError):
        model.prior.sample(cond, steps=101)


def test_prior_training_reduces_mse():
    from mindsearch.models.prior import DiffusionPrior

    torch.manual_seed(0)
    prior = DiffusionPrior(tokens=2, dim=8, depth=1, heads=2, dim_head=8, embed_scale="auto")
    cond = torch.randn(16, 2, 8)
    target = cond @ torch.randn(8, 8) * 0.3  # a learnable map from condition to target
    prior.set_embed_scale(target)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)

    def eval_mse():
        torch.manual_seed(123)  # same timesteps/noise each time
        with torch.no_grad():
            return float(prior.loss(cond, target)[0])

    start = eval_mse()
    torch.manual_seed(1)
    for _ in range(400):
        loss, _ = prior.loss(cond, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_mse()
    assert end < 0.5 * start
    sample = prior.eval().sample(cond, steps=20, generator=torch.Generator().manual_seed(0))
    err_own = float((sample - target).pow(2).mean())
    err_other = float((sample - target.roll(1, 0)).pow(2).mean())
    # Samples follow their condition: nearer their own target than zero or another row's target.
    assert err_own < float(target.pow(2).mean()) and err_own < err_other


def test_run_encoder(tmp_path):
    model = _tiny()
    record = {"format": RUN_FORMAT, "model": "mindeye", "subject": 1, "train": {"prior_sample_steps": 10}}
    model.save_pretrained(tmp_path, extra_config=record)
    enc = load_run_encoder(tmp_path, {**record, "mindeye": model.config.to_dict()})
    x = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    out = enc.encode(x, 1)
    assert set(out) == {"disjointed", "backbone", "aligned"}
    assert all(v.shape == (5, T, D) and v.dtype == np.float32 for v in out.values())
    again = enc.encode(x, 1)
    assert np.array_equal(out["aligned"], again["aligned"])  # fixed generator
    enc.batch_size = 2  # batching does not change the deterministic heads
    assert np.allclose(enc.encode(x, 1)["disjointed"], out["disjointed"], atol=1e-6)
    with pytest.raises(MindsearchError):
        enc.encode(x, 3)
    with pytest.raises(MindsearchError):
        enc.encode(x[:, :10], 1)


def test_config_is_typed_and_read_strictly(tmp_path):
    import json

    from mindsearch.models.config import MindEyeConfig, PriorConfig

    model = _tiny()
    assert isinstance(model.config, MindEyeConfig) and isinstance(model.config.prior, PriorConfig)
    assert MindEyeConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    bad = model.config.to_dict()
    bad["prior"]["dpeth"] = 3
    with pytest.raises(MindsearchError, match=r"prior\.dpeth") as err:
        MindEyeConfig.from_dict(bad, tmp_path / "config.json")
    assert err.value.path == str(tmp_path / "config.json")
    preset = tmp_path / "mine.json"
    preset.write_text(json.dumps({"name": "mine", "hidden": 32, "hiden": 64}))
    with pytest.raises(MindsearchError, match="hiden") as err:
        create_model(preset, {1: 10}, tokens=T, dim=D)
    assert err.value.path == str(preset)


def test_runs_written_before_typed_configs_still_load(tmp_path):
    """A run directory exactly as the dict-config code wrote it: every section spelled out."""
    from mindsearch.io import write_json
    from mindsearch.runs import open_run

    model = _tiny().eval()
    model.save_pretrained(tmp_path / "new", extra_config={"model": "mindeye", "subject": 1, "n_voxels": 40})
    old_mindeye = {
        "name": "tiny", "hidden": 128, "n_blocks": 2, "drop_in": 0.5, "drop_block": 0.15, "tokens": T, "dim": D,
        "projector": {"hidden": 64},
        "prior": {"depth": 1, "heads": 2, "dim_head": 16, "ff_mult": 2, "timesteps": 100, "cond_drop_prob": 0.2,
                  "embed_scale": "auto"},
        "lowlevel": None, "n_voxels": {"1": 40, "2": 30},
    }
    record = {"format": RUN_FORMAT, "model": "mindeye", "subject": 1, "n_voxels": 40,
              "subjects": {"1": 40, "2": 30}, "target_shape": [T, D], "data": {"path": "/somewhere/else"},
              "train": {"preset": "tiny"}, "mindeye": old_mindeye}
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    write_json(old / "config.json", record)
    run = open_run(old)
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x), 1).disjointed.numpy()
    np.testing.assert_allclose(run.encode(x, zscore=False, outputs=("disjointed",))["disjointed"], want,
                               rtol=1e-5, atol=1e-6)
    assert run.data_path == "/somewhere/else"


def test_prior_drops_the_noised_target_at_its_rate():
    from mindsearch.models.prior import DiffusionPrior

    torch.manual_seed(0)
    prior = DiffusionPrior(tokens=2, dim=8, depth=1, heads=2, dim_head=4, image_cond_drop_prob=0.2)
    keep, keep_target = prior.drop_masks(20000)
    assert abs((~keep_target).float().mean().item() - 0.2) < 0.01
    assert abs((~keep).float().mean().item() - 0.2) < 0.01
    # a dropped row's prediction does not depend on its noised target; a kept row's does
    net, t, brain = prior.net.eval(), torch.tensor([50, 50]), torch.randn(2, 2, 8)
    x1, x2 = torch.randn(2, 2, 8), torch.randn(2, 2, 8)
    mask = torch.tensor([False, True])
    with torch.no_grad():
        a, b = net(x1, t, brain, None, mask), net(x2, t, brain, None, mask)
    assert torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])
    # without target dropout there is no null target (older runs keep their exact parameters)
    assert DiffusionPrior(tokens=2, dim=8, depth=1, heads=2, dim_head=4).net.null_target is None


def test_mindeye2_sampler_grid():
    from mindsearch.models.prior import DiffusionPrior

    prior = DiffusionPrior(tokens=2, dim=8, depth=1, heads=2, dim_head=4, sampler="mindeye2")
    assert prior.timestep_grid(20) == list(range(94, 3, -5))  # 94, 89, ..., 4
    assert prior.timestep_grid(100) == list(range(99, -1, -1))
    ours = DiffusionPrior(tokens=2, dim=8, depth=1, heads=2, dim_head=4)
    assert ours.timestep_grid(20)[0] == 99 and ours.timestep_grid(20)[-1] == 0
    cond = torch.randn(3, 2, 8)
    out = prior.eval().sample(cond, steps=20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 2, 8) and torch.isfinite(out).all()


def test_mindeye2_preset_counts_as_mindeye2_does():
    """adapter + 4 residual blocks + output linear + clip_proj at hidden 4096, 15,724 voxels:
    64,409,600 + 134,283,264 + 1,745,256,448 + 8,321,664 (ANCHORS 3.4, MindEye2's own count)."""
    n = count_parameters("mindeye2", {1: 15724}, parts=("adapters", "backbone", "projector"))
    assert abs(n - 1_952_270_976) <= 1e-4 * 1_952_270_976
    model = create_model("mindeye2", {1: 15724}, device="meta")
    assert sum(p.numel() for p in model.adapters.parameters()) == 64_409_600
    assert sum(p.numel() for p in model.backbone.blocks.parameters()) == 134_283_264
    assert sum(p.numel() for p in model.backbone.to_tokens.parameters()) == 1_745_256_448
    assert sum(p.numel() for p in model.projector.parameters()) == 8_321_664
    block = model.backbone.blocks[0].net  # LN -> Linear -> GELU -> Dropout -> Linear
    assert [type(m).__name__ for m in block] == ["LayerNorm", "Linear", "GELU", "Dropout", "Linear"]
    assert model.prior.image_cond_drop_prob == 0.2 and model.prior.timestep_grid(20)[0] == 94
    small = count_parameters("mindeye2-1024", {1: 15724}, parts=("adapters", "backbone", "projector"))
    assert small == 15725 * 1024 + 4 * (2 * 1024 + 2 * (1024 * 1024 + 1024)) + 1025 * 256 * 1664 + 8_321_664
