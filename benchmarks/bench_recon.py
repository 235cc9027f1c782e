"""Reconstruction benchmark on the simulator (issue 9, section 4): is the low-level stage worth anything?

    python -m benchmarks.bench_recon [--data DIR | --quick] [--work DIR] [--subject 1]
        [--vae ../shared/fixtures/weights] [--alexnet PATH] [--lowlevel head|ridge [head|ridge]] [--preset cpu]
        [--epochs N] [--limit N] [--out bench_recon.json] [--html bench_recon.html]

The simulator renders real pixels, so image metrics mean something. On the test images of one
subject (repetitions averaged before the model, as MindEye1 does) it scores, with MindEye's
metrics (``mindsearch.eval.recon_metrics``: PixCorr, SSIM, AlexNet(2), AlexNet(5)):
- ``blurry``: the run's low-level head -> TAEF2 latents -> decoded (MindEye's blurry image);
  ``--lowlevel ridge``: Brain-Diffuser's route instead, ridge from voxels to the latents, with a
  ridge run for retrieval unless --run names one (what a shared 2-core CPU finishes in minutes);
  ``--lowlevel head ridge``: both, as the stages ``blurry (head)`` and ``blurry (ridge)``, the
  other stages scored once;
- ``retrieval``: retrieval as reconstruction: the image whose target embedding is nearest the
  run's disjointed embedding among *all* the dataset's images (train and test: the protocol
  excludes nothing), so a correct retrieval returns the seen image itself;
- ``mean image``: the trivial baseline, the mean training image for every trial;
- ``ceiling``: the TAEF2 round trip of the seen image (the best the low-level stage can do).
Each figure has a 95 % interval (1.96 SEM over test images; two-way scores per reconstruction),
the paired difference from the baseline with its interval, and the share of the ceiling.
Without --data it simulates ``standard`` (subject 1 only; ``--quick``: ``small``) into --work
and trains ``mindsearch train --vae`` there; existing datasets and runs in --work are reused.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_WEIGHTS = ROOT.parent / "shared" / "fixtures" / "weights"
ROUTES = ("head", "ridge")
SCORED = ("pixcorr", "ssim", "alexnet2", "alexnet5")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def blurry_stages(routes) -> list[str]:
    routes = list(routes)
    return ["blurry"] if len(routes) == 1 else [f"blurry ({r})" for r in routes]


def prepare(work: Path, data: Path | None, quick: bool, subject: int, vae: Path, preset: str,
            epochs: int | None, run: Path | None = None, lowlevel=("head",)) -> tuple[Path, Path, float]:
    """(dataset, run, training seconds): simulate and train unless already there. The run is a
    ridge run when only the ridge route is asked for, else a MindEye run with a low-level head."""
    if run is not None:
        from mindsearch.runs import open_run

        return Path(data or open_run(run).data_path), run, 0.0  # recorded relative to the run
    if data is None:
        data = work / ("sim-small" if quick else "sim-standard")
        if not (data / "mindsearch.json").is_file():
            from mindsearch.simulate import simulate

            _log(f"simulating {'small' if quick else 'standard'} (subject {subject}) into {data}")
            simulate(data, "small" if quick else "standard", subjects=[subject], seed=0, force=True, log=_log)
    ridge_only = "head" not in lowlevel
    if ridge_only:
        run = work / f"run-{data.name}-ridge-s{subject}"
    else:
        run = work / (f"run-{data.name}-{preset}-s{subject}" + (f"-e{epochs}" if epochs else ""))
    seconds = 0.0
    if not (run / "config.json").is_file():
        cmd = [sys.executable, "-m", "mindsearch.cli.main", "train", "--data", str(data), "--subject",
               str(subject), "--out", str(run)]
        if ridge_only:
            cmd += ["--model", "ridge"]
        else:
            cmd += ["--preset", preset, "--vae", str(vae)]
        if epochs and not ridge_only:
            cmd += ["--epochs", str(epochs)]
        _log("training: " + " ".join(cmd))
        t0 = time.time()
        subprocess.run(cmd, check=True)
        seconds = time.time() - t0
    return data, run, seconds


def ridge_blurry(ds, subject: int, vae, size: int, test_voxels: np.ndarray, blur: float) -> np.ndarray:
    """Brain-Diffuser's low-level route instead of the MindEye head: ridge from averaged, z-scored
    voxels to the training images' VAE latents (alpha chosen on held-out images), decoded and
    low-passed like the head's blurry images (``mindsearch.vae.smooth``)."""
    from mindsearch.data.preprocess import load_split
    from mindsearch.training.ridge import choose_alpha, fit_ridge
    from mindsearch.vae import dataset_latents, smooth

    train = load_split(ds, subject, "train", zscore=True, average="betas")
    latents = dataset_latents(ds, vae, train.image_ids, size=size)
    y = latents.reshape(len(latents), -1)
    alpha, _ = choose_alpha(train.voxels, y)
    _log(f"ridge voxels -> latents {latents.shape[1:]}: alpha {alpha:g}, {len(y)} training images")
    coef, intercept = fit_ridge(train.voxels, y, alpha)
    pred = (test_voxels @ coef.T + intercept).reshape(len(test_voxels), *latents.shape[1:])
    return smooth(vae.decode(pred), blur)


def stage_images(data: Path, run_dir: Path, vae_path: Path, subject: int, limit: int | None,
                 lowlevel=("head",), size: int | None = None, blur: float | None = None) -> dict:
    """The seen test images and each stage's reconstruction of them, float32 (n, 3, H, W)."""
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.retrieval import normalise
    from mindsearch.runs import open_run
    from mindsearch.vae import BLUR, ImageAutoencoder, blurry_images, resize_images

    blur = BLUR if blur is None else blur

    run = open_run(run_dir)
    vae = ImageAutoencoder.load(vae_path)
    with open_dataset(data) as ds:
        if "head" in lowlevel:
            size = int(run.config["lowlevel_vae"]["image_size"])
        size = size or int(ds.image_shape[-1])
        test = load_split(ds, subject, "test", zscore=True, average="betas")
        voxels, ids = test.voxels, np.asarray(test.image_ids, np.int64)
        if limit:
            voxels, ids = voxels[:limit], ids[:limit]
        truth = resize_images(ds.images(ids), size)
        blurry = {}
        for route, stage in zip(lowlevel, blurry_stages(lowlevel)):
            _log(f"{len(ids)} test images at {size} px; blurry stage, {route} route")
            blurry[stage] = (blurry_images(run, voxels, vae, subject=subject, zscore=False, blur=blur)
                             if route == "head" else ridge_blurry(ds, subject, vae, size, voxels, blur))
        _log("retrieval stage: nearest target among all the dataset's images")
        brain = normalise(run.encode(voxels, subject=subject, zscore=False, outputs=("disjointed",))["disjointed"])
        every = np.unique(ds.trials["image_id"].to_numpy(np.int64))
        candidates = normalise(ds.targets(every))
        top1 = every[np.argmax(brain @ candidates.T, axis=1)]
        retrieved = resize_images(ds.images(top1), size)
        train_ids = np.unique(ds.trials.loc[(ds.trials["subject"] == subject) & (ds.trials["split"] == "train"),
                                            "image_id"].to_numpy(np.int64))
        mean = np.zeros_like(truth[0], dtype=np.float64)
        for i in range(0, len(train_ids), 256):
            mean += resize_images(ds.images(train_ids[i:i + 256]), size).sum(0)
        mean = (mean / len(train_ids)).astype(np.float32)
    _log("ceiling: TAEF2 round trip of the seen images")
    ceiling = vae.decode(vae.encode(truth))
    return {"truth": truth, "ids": ids, "retrieval_top1": float(np.mean(top1 == ids)),
            "n_candidates": int(len(every)), "n_train_images": int(len(train_ids)),
            "stages": {**blurry, "retrieval": retrieved,
                       "mean image": np.broadcast_to(mean, truth.shape).copy(), "ceiling": ceiling}}


def _shown(path) -> str:
    """A path as the report stores it, without the machine's layout: relative to the checkout when it
    lies in it or in the shared folder beside it (``../shared/...``), else its name alone (a --work
    folder, wherever it is)."""
    rel = os.path.relpath(Path(path).resolve(), ROOT)
    inside = not rel.startswith("..") or rel.startswith(os.path.join("..", "shared", ""))
    return rel if inside else Path(path).name


def ci95(x: np.ndarray) -> float:
    return float(1.96 * np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def score(images: dict, alexnet: Path | None) -> dict:
    from mindsearch.eval.recon_metrics import image_metrics

    weights = {"alexnet": alexnet} if alexnet else None
    items, results = {}, {}
    for stage in images["stages"]:
        _log(f"scoring {stage}")
        t0 = time.time()
        out = image_metrics(images["stages"][stage], images["truth"], weights=weights, per_item=True)
        items[stage] = out["items"]
        results[stage] = {"seconds": round(time.time() - t0, 1), "skipped": out["skipped"]}
        for m in SCORED:
            if m in out["items"]:
                results[stage][m] = {"mean": out[m], "ci95": ci95(out["items"][m])}
    for stage in images["stages"]:
        for m in SCORED:
            if m not in items[stage]:
                continue
            diff = items[stage][m] - items["mean image"][m]  # paired over the same test images
            r = results[stage][m]
            r["vs_baseline"] = {"diff": float(diff.mean()), "ci95": ci95(diff),
                                "beats": bool(diff.mean() - ci95(diff) > 0)}
            ceiling = results["ceiling"][m]["mean"]
            r["share_of_ceiling"] = float(r["mean"] / ceiling) if ceiling else None
    return results


def print_table(results: dict, meta: dict) -> None:
    metrics = [m for m in SCORED if m in results["ceiling"]]
    names = {"pixcorr": "PixCorr", "ssim": "SSIM", "alexnet2": "AlexNet(2)", "alexnet5": "AlexNet(5)"}
    print(f"{meta['n_test']} test images, subject {meta['subject']}, {meta['data']}; low-level: "
          f"{' + '.join(meta['lowlevel'])}; retrieval top-1 "
          f"{100 * meta['retrieval_top1']:.1f}% among {meta['n_candidates']} images")
    print(f"{'stage':<15}" + "".join(f"{names[m]:>27}" for m in metrics))
    for stage in results:
        cells = []
        for m in metrics:
            r = results[stage][m]
            two_way = m.startswith("alexnet")
            v = f"{100 * r['mean']:.1f}±{100 * r['ci95']:.1f}" if two_way else f"{r['mean']:.3f}±{r['ci95']:.3f}"
            share = f"{100 * r['share_of_ceiling']:.0f}%" if r.get("share_of_ceiling") is not None else "-"
            mark = "" if stage in ("mean image",) else ("*" if r["vs_baseline"]["beats"] else " ")
            cells.append(f"{v}{mark} ({share})")
        print(f"{stage:<15}" + "".join(f"{c:>27}" for c in cells))
    print("value ± 95% interval (share of the TAEF2 ceiling); * = beats the mean-image baseline by more "
          "than the paired difference's 95% interval; AlexNet: two-way %, chance 50")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="simulated dataset (default: simulate into --work)")
    ap.add_argument("--work", type=Path, default=Path("bench_recon_work"))
    ap.add_argument("--quick", action="store_true", help="the small preset (fewer, quicker)")
    ap.add_argument("--subject", type=int, default=1)
    ap.add_argument("--vae", type=Path, default=FIXTURE_WEIGHTS, help="TAEF2 folder (default: the fixtures)")
    ap.add_argument("--alexnet", type=Path, default=FIXTURE_WEIGHTS / "alexnet_imagenet_features.safetensors")
    ap.add_argument("--run", type=Path, default=None, help="an existing run trained with --vae (skips training)")
    ap.add_argument("--lowlevel", choices=ROUTES, nargs="+", default=["head"],
                    help="head: MindEye's low-level head (mindsearch train --vae); ridge: Brain-Diffuser's "
                         "linear map to the latents (alone: with a ridge run for retrieval, minutes on a CPU); "
                         "both: two blurry stages, the others scored once")
    ap.add_argument("--blur", type=float, default=None,
                    help="low-pass of the blurry stage, sigma as a share of the width (default: mindsearch.vae.BLUR; 0: raw decode)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test images")
    ap.add_argument("--out", type=Path, default=Path("bench_recon.json"))
    ap.add_argument("--html", type=Path, default=None, help="also write the blurry stage's page")
    args = ap.parse_args(argv)
    if args.blur is None:
        from mindsearch.vae import BLUR

        args.blur = BLUR
    t0 = time.time()
    data, run, train_s = prepare(args.work, args.data, args.quick, args.subject, args.vae, args.preset,
                                    args.epochs, args.run, args.lowlevel)
    args.lowlevel = list(dict.fromkeys(args.lowlevel))
    images = stage_images(data, run, args.vae, args.subject, args.limit, args.lowlevel, blur=args.blur)
    alexnet = args.alexnet if args.alexnet and args.alexnet.is_file() else None
    results = score(images, alexnet)
    meta = {"data": _shown(data), "run": _shown(run), "subject": args.subject, "n_test": int(len(images["ids"])),
            "retrieval_top1": images["retrieval_top1"], "n_candidates": images["n_candidates"],
            "n_train_images": images["n_train_images"], "vae": _shown(args.vae), "preset": args.preset, "lowlevel": args.lowlevel, "blur": args.blur,
            "alexnet": _shown(alexnet) if alexnet else None, "train_seconds": round(train_s, 1),
            "total_seconds": round(time.time() - t0, 1)}
    print_table(results, meta)
    from mindsearch.io import write_json

    write_json(args.out, {"meta": meta, "stages": results})
    _log(f"wrote {args.out}")
    if args.html:
        from mindsearch.eval.recon_metrics import ReconPairs
        from mindsearch.eval.recon_page import write_page

        n = min(60, len(images["ids"]))
        pairs = ReconPairs(images["stages"]["retrieval"][:n], images["truth"][:n],
                           [str(i) for i in images["ids"][:n]], [int(i) for i in images["ids"][:n]],
                           blurry=images["stages"][blurry_stages(args.lowlevel)[0]][:n],
                           source={"pairing": "test split", "recons": "retrieval (top-1)", "truth": str(data)})
        flat = {"n": meta["n_test"], **{m: results["retrieval"].get(m, {}).get("mean") for m in SCORED}}
        write_page(args.html, flat, pairs, title="Simulator: seen | blurry | retrieved (metrics: retrieval)")
        _log(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
