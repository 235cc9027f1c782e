"""Write a simulated world to disk in the MindEye2 layout (optionally MindEye1 too).

Built in a temporary directory beside OUT and renamed at the end (mindsearch.io.atomic_path).
Betas are generated and written one session at a time, so memory stays bounded by one
session's trials, the test-image means and the subject's model, whatever the preset.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.io import atomic_path, crash_point, save_tensors, write_json
from mindsearch.simulate import ceiling as ceiling_mod
from mindsearch.simulate.encoding import SubjectModel
from mindsearch.simulate.presets import resolve
from mindsearch.simulate.render import Renderer
from mindsearch.simulate.shards import ShardWriter, behav_row, npy_bytes, png_bytes
from mindsearch.simulate.world import World, fingerprint

LAYOUTS = ("mindeye2", "mindeye1", "both")
ME1_PER_SHARD = 500
METHOD = (
    "Bayes-optimal identification under the known encoding model: session gain/offset undone, "
    "Gaussian likelihood with the exact low-rank + diagonal noise covariance (Woodbury), Sigma/c "
    "for c averaged repetitions. brain_to_image: argmax likelihood over the pool's images (the "
    "Bayes rule; no decoder can beat it in expectation). image_to_brain: argmax over the pool's "
    "brain samples of the posterior P(image | sample) with a uniform prior over the pool's images "
    "(the Bayes rule under independent assignment). Test items ordered by image id; pools "
    "RandomState(42).choice(n, min(300, n)) x 30. Values are Monte-Carlo expectations over fresh "
    "noise (exact in score space, noise ~ N(0, cG), G = mu Sigma^-1 mu^T) with standard errors "
    "(*_se) and draw counts (mc_draws); 'realised' is the same decoder on the written betas. "
    "single_trial uses repetition 0 of each test image."
)


def simulate(out, preset: str = "small", subjects=None, seed: int = 0, layout: str = "mindeye2",
             *, force: bool = False, log=None, **overrides) -> Path:
    """Write a simulated NSD-like dataset to ``out``; returns its path. See the package doc."""
    out = Path(out)
    cfg = resolve(preset, subjects, **overrides)
    if layout not in LAYOUTS:
        raise MindsearchError(f"unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")
    if out.exists() and not out.is_dir():
        raise MindsearchError("exists and is not a directory", out)
    if out.exists() and not force and any(out.iterdir()):
        raise MindsearchError("already exists and is not empty (pass --force / force=True to replace it)", out)
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    design = _design(cfg, seed)
    world = World(cfg, design.n_images, seed)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        used = np.unique(np.concatenate([d.image_ids for d in design.subjects.values()]))
        log(f"rendering {len(used)} images at {cfg['image_size']} px")
        images_path = _write_images(tmp, world, cfg, used, design.n_images, seed)
        crash_point("simulate:images")  # fault tests kill -9 here and below (MINDSEARCH_TEST_KILL_AT)
        _write_targets(tmp, world, cfg, used, seed, design.n_images)
        cov, mean = world.feature_covariance()
        truth = {}
        for s, d in design.subjects.items():
            log(f"subject {s}: {d.n_trials} trials x {cfg['voxels'][s]} voxels")
            model = SubjectModel(world, cfg, s, d.n_sessions, seed, cov, mean)
            truth[s] = _write_subject(tmp, cfg, d, model, seed, layout, images_path)
            crash_point("simulate:subject")
        write_json(tmp / "ground_truth.json", {
            "protocol": dict(ceiling_mod.PROTOCOL),
            "subjects": {str(s): t for s, t in truth.items()},
            "method": METHOD,
        })
        manifest = {
            "format": "mindsearch-dataset/1", "layout": "mindeye1" if layout == "mindeye1" else "mindeye2",
            "simulated": True, "preset": preset, "seed": int(seed), "subjects": list(design.subjects),
            "targets": "sim", "design": design.source,
            "ncsnr_source": next(iter(truth.values()))["ncsnr_source"],
            "config": {k: v for k, v in cfg.items() if k != "voxels"},
            "n_voxels": {str(s): int(v) for s, v in cfg["voxels"].items()},
        }
        write_json(tmp / "mindsearch.json", manifest)
        crash_point("simulate:manifest")
        if layout == "both":
            _link_shared(tmp, tmp / "mindeye1", images_path)
            write_json(tmp / "mindeye1" / "mindsearch.json", dict(manifest, layout="mindeye1"))
        shutil.rmtree(tmp / ".work", ignore_errors=True)
    log(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return out


def _design(cfg: dict, seed: int):
    from mindsearch.data import nsd_design

    subs = cfg["subjects"]
    total = (cfg["n_shared"] + cfg["n_unique"]) * cfg["reps"]
    sessions = cfg["max_sessions"]
    if sessions == "nsd":
        sessions = nsd_design.NSD_SESSIONS
    if cfg["design"] == "auto" and nsd_design.find_expdesign() is not None \
            and (cfg["n_shared"], cfg["n_unique"], cfg["reps"], cfg["trials_per_session"]) == (1000, 9000, 3, 750):
        return nsd_design.real_design(subs, sessions=sessions)
    if cfg["design"] not in ("auto", "synthetic"):
        raise MindsearchError(f"design must be 'auto' or 'synthetic', got {cfg['design']!r}")
    if sessions is None:
        sessions = -(-total // cfg["trials_per_session"])
    return nsd_design.synthetic_design(
        subs, cfg["n_shared"], cfg["n_unique"], reps=cfg["reps"],
        trials_per_session=cfg["trials_per_session"], seed=seed, sessions=sessions,
    )


def _write_images(tmp: Path, world: World, cfg: dict, used: np.ndarray, n_images: int, seed: int) -> Path:
    import h5py

    size = int(cfg["image_size"])
    name = "coco_images_224_float16.hdf5" if size == 224 else f"images_{size}_float16.hdf5"
    render = Renderer(cfg["latent_dim"], cfg["n_shapes"], size, seed)
    path = tmp / name
    chunk = max(1, (1 << 24) // (3 * size * size * 4))
    with h5py.File(path, "w") as f:
        # Row = image id over the whole id space (like NSD's 73k file); rows no subject saw
        # are never written and take no space (chunked, fill value 0).
        ds = f.create_dataset("images", (n_images, 3, size, size), dtype="f2",
                              chunks=(1, 3, size, size), compression="lzf")
        for a in range(0, len(used), chunk):
            ids = used[a : a + chunk]
            pixels = render(world.latents[ids]).astype(np.float16)
            for i, px in zip(ids, pixels):  # row by row: h5py's fancy-index write is 10x slower
                ds[int(i)] = px
        ds.attrs["simulated"] = True
    return path


def _write_targets(tmp: Path, world: World, cfg: dict, used: np.ndarray, seed: int, n_images: int) -> None:
    tdir = tmp / "targets"
    tdir.mkdir()
    dtype = np.dtype(cfg["targets_dtype"])
    arr = np.lib.format.open_memmap(tdir / "sim.npy", mode="w+", dtype=dtype,
                                    shape=(len(used), cfg["tokens"], cfg["dim"]))
    chunk = max(1, (1 << 24) // (cfg["tokens"] * cfg["dim"] * 4))
    for a in range(0, len(used), chunk):
        arr[a : a + chunk] = world.targets(used[a : a + chunk]).astype(dtype)
    arr.flush()
    del arr
    np.save(tdir / "sim_ids.npy", used.astype(np.int64), allow_pickle=False)
    write_json(tdir / "sim.json", {
        "name": "sim", "model": "sim-v1", "layer": "tokens", "pooling": "first",
        "weights": fingerprint(cfg, seed, n_images), "tokens": int(cfg["tokens"]), "dim": int(cfg["dim"]),
    })


def _write_subject(tmp: Path, cfg: dict, d, model: SubjectModel, seed: int, layout: str,
                   images_path: Path) -> dict:
    import h5py

    s, v = d.subject, model.n_voxels
    test_ids = d.test_image_ids()
    reps = np.array([np.sum(d.image_ids[d.is_test] == i) for i in test_ids]) if len(test_ids) else np.zeros(0)
    ceil = ceiling_mod.Ceiling(model, test_ids, reps)
    me2 = layout in ("mindeye2", "both")
    betas_dir = tmp if me2 else tmp / ".work"
    betas_dir.mkdir(exist_ok=True)
    betas_path = betas_dir / f"betas_all_subj{s:02d}_fp32_renorm.hdf5"
    wds = tmp / "wds" / f"subj{s:02d}"
    if me2:
        (wds / "train").mkdir(parents=True)
        (wds / "new_test").mkdir(parents=True)
    proj_by_image = {int(i): [] for i in test_ids}
    test_rows = []
    zmean = np.zeros((d.n_sessions, v), np.float64)
    zstd = np.ones((d.n_sessions, v), np.float64)
    with h5py.File(betas_path, "w") as f:
        ds = f.create_dataset("betas", (d.n_trials, v), dtype="f4")  # contiguous: fast row reads
        for sess in range(1, d.n_sessions + 1):
            rows = np.flatnonzero(d.session == sess)
            a, b = int(rows[0]), int(rows[-1]) + 1  # a session's trials are consecutive rows
            ids = d.image_ids[a:b]
            clean = model.means(ids) + model.noise(model.session_rng(sess), b - a)
            raw = model.raw(clean, d.session[a:b]).astype(np.float32)
            ds[a:b] = raw
            test = d.is_test[a:b]
            train = ~test
            if train.any():
                zmean[sess - 1] = raw[train].mean(0)
                zstd[sess - 1] = np.maximum(raw[train].std(0), 1e-6)
            if test.any():
                unraw = model.unraw(raw[test], d.session[a:b][test]).astype(np.float64)
                for i, p in zip(ids[test], unraw @ ceil.proj):
                    proj_by_image[int(i)].append(p)
            if me2:
                with ShardWriter(wds / "train" / f"{sess - 1}.tar") as w:
                    for t in range(a, b):
                        row = behav_row(d.image_ids[t], s, sess, d.trial_in_session[t], t, d.is_test[t])
                        if d.is_test[t]:
                            test_rows.append((t, row))
                        else:
                            w.add(f"sample{t:06d}", {"behav.npy": npy_bytes(row)})
    if me2:
        with ShardWriter(wds / "new_test" / "0.tar") as w:
            for t, row in test_rows:
                w.add(f"sample{t:06d}", {"behav.npy": npy_bytes(row)})
    if layout in ("mindeye1", "both"):
        root = tmp if layout == "mindeye1" else tmp / "mindeye1"
        _write_mindeye1(root, d, betas_path, zmean, zstd, images_path)

    expected = ceil.expected(np.random.default_rng([seed, 300, s]), target_ci=cfg["mc_target_ci"],
                             min_draws=cfg["mc_min_draws"], max_draws=cfg["mc_max_draws"])
    truth = {
        "n_test_images": int(len(test_ids)),
        **expected,
        "realised": ceiling_mod.realised(ceil, proj_by_image),
        "n_voxels": int(v), "n_trials": int(d.n_trials), "n_sessions": int(d.n_sessions),
        "ncsnr_median": float(np.median(model.ncsnr)), "ncsnr_source": model.ncsnr_source,
    }
    save_tensors(tmp / "truth" / f"subj{s:02d}.safetensors", {
        "test_image_ids": test_ids.astype(np.int64),
        "test_reps": reps.astype(np.int64),
        "test_means": model.means(test_ids).astype(np.float32),
        "ncsnr": model.ncsnr,
        "noise_load": model.noise_load,
        "noise_diag": model.noise_diag,
        "session_scale": model.session_scale,
        "session_offset": model.session_offset,
    }, metadata={
        "subject": s, "seed": seed,
        "model": "raw = session_scale[s] * (test_means + eps) + session_offset[s]; "
                 "eps ~ N(0, noise_load noise_load^T + diag(noise_diag))",
        "ncsnr_source": model.ncsnr_source,
    })
    return truth


def _write_mindeye1(root: Path, d, betas_path: Path, zmean, zstd, images_path: Path) -> None:
    """One sample per image: its repetitions' betas, z-scored per session with that session's
    training-trial statistics (as the MindEye1 shards are, upstream), in trial order."""
    import h5py

    s = d.subject
    order = np.argsort(d.image_ids, kind="stable")
    ids_sorted = d.image_ids[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ids_sorted)) + 1, len(order)]
    groups = sorted((order[starts[k]:starts[k + 1]] for k in range(len(starts) - 1)), key=lambda g: g[0])
    with h5py.File(betas_path, "r") as fb, h5py.File(images_path, "r") as fi:
        betas, images = fb["betas"], fi["images"]
        for split in ("train", "test"):
            (root / split).mkdir(parents=True, exist_ok=True)
            mine = [g for g in groups if bool(d.is_test[g[0]]) == (split == "test")]
            for k in range(0, len(mine), ME1_PER_SHARD):
                with ShardWriter(root / split / f"{split}_subj{s:02d}_{k // ME1_PER_SHARD}.tar") as w:
                    for g in mine[k : k + ME1_PER_SHARD]:
                        sess = d.session[g] - 1
                        vox = (betas[np.sort(g)] - zmean[sess]) / zstd[sess]
                        image_id = int(d.image_ids[g[0]])
                        w.add(f"sample{int(g[0]):06d}", {
                            "nsdgeneral.npy": npy_bytes(vox.astype(np.float32)),
                            "coco73k.npy": npy_bytes(np.int64(image_id)),
                            "trial.npy": npy_bytes(g.astype(np.int64)),
                            "png": png_bytes(images[image_id]),
                        })


def _link_shared(src: Path, dst: Path, images_path: Path) -> None:
    """The MindEye1 copy shares images and targets with the MindEye2 root (hard links)."""
    dst.mkdir(parents=True, exist_ok=True)
    pairs = [(images_path, dst / images_path.name)]
    pairs += [(p, dst / "targets" / p.name) for p in (src / "targets").iterdir()]
    for a, b in pairs:
        b.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
