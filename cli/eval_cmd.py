"""``mindsearch eval``: the papers' protocols on raw embeddings or on a trained run."""

from __future__ import annotations

import click

from mindsearch.cli.common import emit_json, pct, say, table


@click.group("eval")
def eval_group():
    """Evaluate embeddings or runs with the papers' protocols."""


@eval_group.command("retrieval")
@click.option("--brain", type=click.Path(dir_okay=False), help="Brain embeddings .npy (row i = test item i).")
@click.option("--images", type=click.Path(dir_okay=False), help="Image embeddings .npy, row-aligned with --brain.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False), help="A trained run to score on its test set.")
@click.option("--data", type=click.Path(), help="Dataset of the run (default: the one it was trained on).")
@click.option("--subject", type=int, default=None, help="Subject to score (default: the run's).")
@click.option("--average", type=click.Choice(["betas", "outputs", "single"]), default="betas",
              show_default=True, help="Repetitions: average betas (MindEye1), outputs (MindEye2), or one trial.")
@click.option("--embedding", default="disjointed", show_default=True,
              help="Which run output to score: disjointed, backbone or aligned.")
@click.option("--pool", type=int, default=300, show_default=True)
@click.option("--loops", type=int, default=30, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--hubness", type=click.Choice(["csls"]), default=None,
              help="With --run: also score with CSLS against a reference bank of training-split embeddings "
                   "(reported under 'csls', beside the protocol's plain-cosine numbers).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def retrieval(brain, images, run_dir, data, subject, average, embedding, pool, loops, seed, hubness, as_json):
    """Top-1 retrieval in pools of --pool items over --loops loops, both directions.

    brain_to_image: for each brain sample, is its image the best of the pool's images (the
    search direction). image_to_brain: the reverse. mindeye_fwd / mindeye_bwd repeat them
    under the labels of the MindEye code (fwd = image_to_brain).
    """
    from mindsearch.errors import MindsearchError

    if hubness and not run_dir:
        raise MindsearchError("--hubness needs --run (its reference bank is the run's training split)")
    if run_dir:
        from mindsearch.eval.run_eval import evaluate_run

        scores = evaluate_run(run_dir, data, average=average, pool=pool, loops=loops, seed=seed,
                              subject=subject, embedding=embedding, hubness=hubness)
    elif brain and images:
        from mindsearch.retrieval import retrieval_scores
        from mindsearch.voxels import load_npy

        arrays = [load_npy(p, what="embedding array", min_ndim=2) for p in (brain, images)]
        scores = retrieval_scores(*arrays, pool=pool, loops=loops, seed=seed)
        scores.update(brain=str(brain), images=str(images))
    else:
        raise MindsearchError("give either --run RUN or both --brain and --images")
    if as_json:
        emit_json(scores)
        return
    rows = [["brain -> image", pct(scores["brain_to_image_top1"]),
             f"±{100 * scores['brain_to_image_top1_ci95']:.1f}",
             pct(scores["full_pool_brain_to_image_top1"]), pct(scores["full_pool_brain_to_image_top5"]),
             pct(scores.get("ceiling_brain_to_image_top1"))],
            ["image -> brain", pct(scores["image_to_brain_top1"]),
             f"±{100 * scores['image_to_brain_top1_ci95']:.1f}",
             pct(scores["full_pool_image_to_brain_top1"]), pct(scores["full_pool_image_to_brain_top5"]),
             pct(scores.get("ceiling_image_to_brain_top1"))]]
    click.echo(table(rows, ["direction", f"top-1 /{scores['pool']}", "95% CI",
                            f"top-1 /{scores['n']}", f"top-5 /{scores['n']}", "ceiling"]))
    click.echo(f"{scores['loops']} loops, seed {scores['seed']}, {scores['n']} test items; "
               f"MindEye code labels: fwd {pct(scores['mindeye_fwd'])}, bwd {pct(scores['mindeye_bwd'])}")
    if "csls" in scores:
        c = scores["csls"]
        click.echo(f"hubness-corrected (CSLS, k={c['k']}, {c['reference_images']} training images as reference): "
                   f"brain -> image {pct(c['brain_to_image_top1'])}, image -> brain {pct(c['image_to_brain_top1'])}")
    if scores.get("warning"):
        say(f"warning: {scores['warning']}")
