"""``mindsearch demo``: the main job on the embedded default, end to end, on CPU.

Simulate the ``small`` world (known Bayes ceiling), train the ridge baseline, score it with
the papers' protocol, and print it against the ceiling. Later stages (the MindEye-style
encoder, the image index and a query) join the same table as they exist.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click

from cli.common import pct, say, table

MARKER = "demo.json"


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="mindsearch-demo", show_default=True,
              help="Directory for everything the demo writes (a previous demo there is replaced).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--skip-encoder", is_flag=True, help="Ridge only (skip the tiny MindEye-style encoder).")
def demo(out, seed, skip_encoder):
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

    from eval.run_eval import evaluate_run
    from training.ridge import train_ridge

    t = time.perf_counter()
    train_ridge(data, 1, out / "runs" / "ridge", seed=seed, progress=say)
    stages["ridge"] = time.perf_counter() - t
    results = {"ridge": evaluate_run(out / "runs" / "ridge", data)}
    say(f"[2] ridge trained and evaluated in {time.perf_counter() - t:.1f}s")

    if not skip_encoder:
        encoder = _train_encoder(data, out, seed)
        if encoder is not None:
            stages["encoder"], results["mindeye-tiny"] = encoder

    rows = []
    for name, s in results.items():
        rows.append([name, pct(s["brain_to_image_top1"]), pct(s["image_to_brain_top1"]),
                     pct(s["full_pool_brain_to_image_top1"])])
    any_s = results["ridge"]
    rows.append(["Bayes ceiling", pct(any_s.get("ceiling_brain_to_image_top1")),
                 pct(any_s.get("ceiling_image_to_brain_top1")), "-"])
    rows.append(["chance", pct(any_s["chance_top1"]), pct(any_s["chance_top1"]),
                 pct(1 / any_s["n"])])

    search = _search(data, out, results)
    summary = {"data": str(data), "runs": str(out / "runs"), "results": results,
               "stages_seconds": stages, "search": search,
               "seconds": time.perf_counter() - t_start, "peak_rss_mib": _peak_rss_mib()}
    write_json(out / MARKER, summary)

    click.echo("")
    click.echo(f"subject 1, {any_s['n']} test images, repetitions averaged, "
               f"top-1 in pools of {any_s['pool']} over {any_s['loops']} loops (seed {any_s['seed']})")
    click.echo(table(rows, ["model", "brain->image", "image->brain", f"brain->image /{any_s['n']}"]))
    if search:
        click.echo("")
        click.echo(search["text"])
    click.echo("")
    click.echo(f"everything is in {out}/ (dataset: data/, runs: runs/, summary: {MARKER}); "
               f"{summary['seconds']:.0f}s, peak memory {summary['peak_rss_mib']:.0f} MiB")


def _train_encoder(data, out, seed):
    """The tiny MindEye-style encoder, when the training package provides it."""
    import importlib.util

    if importlib.util.find_spec("training.trainer") is None:
        return None
    from eval.run_eval import evaluate_run
    from training.trainer import train_from_cli

    t = time.perf_counter()
    train_from_cli(data=data, subject=1, preset="tiny", out=out / "runs" / "mindeye-tiny", seed=seed,
                   progress=say)
    seconds = time.perf_counter() - t
    say(f"[3] tiny MindEye-style encoder trained in {seconds:.1f}s")
    return seconds, evaluate_run(out / "runs" / "mindeye-tiny", data)


def _search(data, out, results):
    """Index the simulated images and query with a test trial (when the search stack exists)."""
    import importlib.util

    if importlib.util.find_spec("mindsearch.engine") is None:
        return None
    from mindsearch.engine import demo_search

    return demo_search(data, out, results)


def _peak_rss_mib() -> float:
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * scale / (1 << 20)
