"""``mindsearch demo``: the main job on the embedded default, end to end, on CPU.

Simulate the ``small`` world (known Bayes ceiling), train the ridge baseline, score it with
the papers' protocol, and print it against the ceiling. Later stages (the MindEye-style
encoder, the image index and a query) join the same table as they exist. The last stage
reconstructs a few test images (blurry stage through the real TAEF2 when ../shared/fixtures is
beside the checkout, else a tiny random VAE; tiny random Versatile-Diffusion-shaped components)
and writes an HTML page.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from mindsearch.cli.common import peak_rss_mib, pct, say, table

MARKER = "demo.json"


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="mindsearch-demo", show_default=True,
              help="Directory for everything the demo writes (a previous demo there is replaced).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-encoder", is_flag=True,
              help="Ridge only (skip the tiny MindEye-style encoder and the reconstruction stage).")
@click.option("--skip-recon", is_flag=True, help="Skip the reconstruction stage.")
def demo(out, seed, skip_encoder, skip_recon):
    """Simulate, train, evaluate and search on the small preset; print one table."""
    from mindsearch.errors import MindsearchError

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise MindsearchError("exists and is not a previous demo directory; choose another --out", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stages = {}

    from mindsearch.io import write_json
    from mindsearch.simulate import simulate

    t = time.perf_counter()
    data = simulate(out / "data", preset="small", seed=seed)
    stages["simulate"] = time.perf_counter() - t
    say(f"[1] simulated the small preset in {stages['simulate']:.1f}s -> {data}")

    from mindsearch.eval.run_eval import evaluate_run
    from mindsearch.training.ridge import train_ridge

    t = time.perf_counter()
    train_ridge(data, 1, out / "runs" / "ridge", seed=seed, progress=say)
    stages["ridge"] = time.perf_counter() - t
    results = {"ridge": evaluate_run(out / "runs" / "ridge", data)}
    say(f"[2] ridge trained and evaluated in {time.perf_counter() - t:.1f}s")

    vae = None
    if not skip_encoder:
        vae = None if skip_recon else _lowlevel_vae(out)
        encoder = _train_encoder(data, out, seed, vae)
        if encoder is not None:
            stages["encoder"], results["mindeye-tiny"] = encoder

    rows = []
    for name, s in results.items():
        rows.append([name, pct(s["brain_to_image_top1"]), pct(s["image_to_brain_top1"]),
                     pct(s["full_pool_brain_to_image_top5"])])
    any_s = results["ridge"]
    rows.append(["Bayes ceiling", pct(any_s.get("ceiling_brain_to_image_top1")),
                 pct(any_s.get("ceiling_image_to_brain_top1")), "-"])
    rows.append(["chance", pct(any_s["chance_top1"]), pct(any_s["chance_top1"]),
                 pct(5 / any_s["n"])])

    search = _search(data, out, results)
    recon = None
    if "mindeye-tiny" in results and vae is not None:
        recon = _reconstruct(data, out, seed)
        stages["reconstruct"] = recon["seconds"]
    summary = {"data": str(data), "runs": str(out / "runs"), "results": results,
               "stages_seconds": stages, "search": search, "reconstruction": recon,
               "seconds": time.perf_counter() - t_start, "peak_rss_mib": peak_rss_mib()}
    write_json(out / MARKER, summary)

    click.echo("")
    click.echo(f"subject 1, {any_s['n']} test images, repetitions averaged, "
               f"top-1 in pools of {any_s['pool']} over {any_s['loops']} loops (seed {any_s['seed']})")
    click.echo(table(rows, ["model", "brain->image top-1", "image->brain top-1",
                            f"brain->image top-5 /{any_s['n']}"]))
    if search:
        click.echo("")
        click.echo(search["text"])
    if recon:
        click.echo("")
        click.echo(recon["text"])
    click.echo("")
    click.echo(f"everything is in {out}/ (dataset: data/, runs: runs/, summary: {MARKER}); "
               f"{summary['seconds']:.0f}s, peak memory {summary['peak_rss_mib']:.0f} MiB")
    if search:  # so that a bare `mindsearch query --voxels trial.npy` searches what the demo built
        from mindsearch import config

        best = max(results, key=lambda n: results[n]["brain_to_image_top1"])
        path = config.save({"root": (out / "indexes").resolve(), "index": "sim-images",
                            "run": (out / "runs" / best).resolve(), "data": Path(data).resolve()})
        click.echo(f"defaults saved to {path} (index sim-images, run {best}); try: mindsearch data "
                   f"export-trials --trials test --limit 1 --out trial.npy && mindsearch query --voxels trial.npy --k 16")


def _train_encoder(data, out, seed, vae=None):
    """The tiny MindEye-style encoder, when the training package provides it."""
    import importlib.util

    if importlib.util.find_spec("mindsearch.training.trainer") is None:
        return None
    import torch

    from mindsearch.eval.run_eval import evaluate_run
    from mindsearch.training.entry import train_encoder

    # A tiny model gains nothing from a second thread, and on a busy machine two threads
    # contend so badly that training slows twenty-fold; one thread is the robust choice.
    torch.set_num_threads(1)
    t = time.perf_counter()
    # TAEF2 sees the stimuli at 32 px: at the simulator's 64 px its encoder alone costs ~45 CPU-seconds
    vae_size = 32 if vae is not None and str(vae).endswith("taef2_encoder.safetensors") else None
    train_encoder(data, 1, out / "runs" / "mindeye-tiny", preset="tiny", seed=seed, progress=say, vae=vae,
                  vae_size=vae_size)
    seconds = time.perf_counter() - t
    say(f"[3] tiny MindEye-style encoder trained in {seconds:.1f}s")
    return seconds, evaluate_run(out / "runs" / "mindeye-tiny", data)


def _search(data, out, results):
    """Index the simulated images, query with one test trial, and search brain samples back."""
    import numpy as np

    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split
    from mindsearch.engine import Engine
    from mindsearch.runs import open_run

    t = time.perf_counter()
    engine = Engine(out / "indexes")
    built = engine.build_from_dataset("sim-images", data, progress=say)
    best = max(results, key=lambda n: results[n]["brain_to_image_top1"])
    run = open_run(out / "runs" / best)
    with open_dataset(data) as ds:
        split = load_split(ds, 1, "test", zscore=False, average="none")
        trial, true_id, session = int(split.trials[0]), int(split.image_ids[0]), int(split.sessions[0])
        voxels = ds.voxels(1, [trial])
        # Brain retrieval goes the other way: store every test trial's embedding, then look
        # for the true image's trials from its image embedding.
        test = load_split(ds, 1, "test", zscore=True, average="none")
        encoded = run.encode(test.voxels, zscore=False, outputs=("disjointed",))
        engine.store_brain("sim-test-trials", run, encoded, subject=1, trials=test.trials,
                           image_ids=test.image_ids, source=str(data))
        true_embedding = ds.targets([true_id])
    hits = engine.query("sim-images", voxels, run, k=5, session=session)[0]  # as `mindsearch query` ranks
    # Ranks over the whole index: every image re-ranked by token cosine (the index is small).
    everything = {"k": built["count"], "shortlist": built["count"]}
    all_hits = engine.query("sim-images", voxels, run, session=session, **everything)[0]
    true_rank = next((h.rank for h in all_hits if h.id == true_id), None)
    brain = engine.query_brain("sim-test-trials", true_embedding, space=run.space, k=5)[0]
    # One trial is an anecdote: the rank of the true image over every test trial is the figure.
    # (in chunks: re-ranking every candidate holds queries × candidates × tokens floats)
    emb = encoded["disjointed"]
    blocks = [b for i in range(0, len(emb), 50)
              for b in engine.search("sim-images", emb[i:i + 50], space=run.space, **everything)]
    ranks = [next((h.rank for h in block if h.id == img), built["count"])
             for block, img in zip(blocks, test.image_ids)]
    n_trials = int(np.sum(test.image_ids == true_id))
    lines = [f"query: subject 1, test trial {trial} (session {session}), run {best}, index sim-images "
             f"({built['count']} images, faiss {built['index'].get('key')}); the true image is {true_id}",
             "rank  image id  score   ",
             *[f"{h.rank:>4}  {h.id:>8}  {h.score:.4f}{'  <- true image' if h.id == true_id else ''}"
               for h in hits],
             f"re-ranking all {built['count']} images by token cosine, the true image ranks {true_rank} for "
             f"this single trial; over all "
             f"{len(ranks)} single test trials its median rank is {np.median(ranks):.0f} and it is "
             f"in the top 16 for {np.mean(np.asarray(ranks) <= 16):.0%}",
             f"brain retrieval: of the 5 stored test trials nearest to image {true_id}, "
             f"{sum(b['image_id'] == true_id for b in brain)} are among its {n_trials} own trials"]
    seconds = time.perf_counter() - t
    say(f"[4] indexed and searched in {seconds:.1f}s")
    return {"text": "\n".join(lines), "true_image": true_id, "true_rank": true_rank,
            "hits": [h.as_dict() for h in hits], "brain_hits": brain, "seconds": seconds,
            "median_rank": float(np.median(ranks)),
            "top16_fraction": float(np.mean(np.asarray(ranks) <= 16))}


# ../shared/fixtures/weights beside a checkout: the real TAEF2 autoencoder, when it is there.
FIXTURE_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "weights"


def _lowlevel_vae(out):
    """The low-level head's VAE: the real TAEF2 when the fixtures are present, else a tiny random one."""
    taef2 = FIXTURE_WEIGHTS / "taef2_encoder.safetensors"
    if taef2.is_file() and (FIXTURE_WEIGHTS / "taef2_decoder.safetensors").is_file():
        return taef2
    from mindsearch.reconstruct import save_random_tiny_vae

    say("no TAEF2 weights beside the checkout: the low-level head uses a tiny RANDOM VAE")
    return save_random_tiny_vae(out / "vae-random-tiny")


def _reconstruct(data, out, seed, trials: int = 4, samples: int = 4):
    """A few test images through the whole reconstruction: blurry (the run's VAE), tiny random
    Versatile-Diffusion-shaped components conditioned on the prior's samples, best-of-N where the
    index's top image competes too; writes recon/ with its HTML page."""
    from mindsearch.reconstruct import ReconstructionSettings, reconstruct

    t = time.perf_counter()
    settings = ReconstructionSettings(samples=samples, steps=20, strength=0.85, guidance=3.5, seed=seed)
    m = reconstruct(out / "runs" / "mindeye-tiny", out / "recon", data=data, trials="test", limit=trials,
                    vd="random-tiny", index="sim-images", root=out / "indexes", settings=settings,
                    progress=say, show_progress=False)
    seconds = time.perf_counter() - t
    kept = [m["trials"][i]["candidates"][m["trials"][i]["chosen_index"]]["source"] for i in range(len(m["trials"]))]
    say(f"[5] reconstructed {len(m['trials'])} test images in {seconds:.1f}s")
    text = (f"reconstruction: {len(m['trials'])} test images, best of {samples} generated + the top retrieved "
            f"image, ranked by {m['ranking']['name']} ({sum(k == 'retrieved' for k in kept)} kept the retrieved "
            f"one); blurry stage from {m['lowlevel_vae'].split(' ')[0]}, high-level stage on RANDOM tiny "
            f"components (the pipeline runs; the images mean nothing)\n"
            f"page: {out / 'recon' / 'index.html'}")
    return {"text": text, "seconds": seconds, "page": str(out / "recon" / "index.html"),
            "ranking": m["ranking"]["name"], "kept": kept}
