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
@click.option("--subject", type=click.IntRange(min=1), default=None, help="Subject to score (default: the run's).")
@click.option("--average", type=click.Choice(["betas", "outputs", "single"]), default="betas",
              show_default=True, help="Repetitions: average betas (MindEye1), outputs (MindEye2), or one trial.")
@click.option("--embedding", default="disjointed", show_default=True,
              help="Which run output to score: disjointed, backbone or aligned.")
@click.option("--pool", type=click.IntRange(min=2), default=300, show_default=True,
              help="Items per pool; more than the test items: the whole set, with a notice.")
@click.option("--loops", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True)
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
        from mindsearch.voxels import check_directions, load_npy

        arrays = [check_directions(load_npy(p, what="embedding array", min_ndim=2), p) for p in (brain, images)]
        (b, i), sizes = arrays, [a[0].size for a in arrays]
        if len(b) != len(i) or sizes[0] != sizes[1]:  # name the files, not just the arrays
            raise MindsearchError(f"has {len(b)} rows of {sizes[0]} values but {images} has {len(i)} of {sizes[1]}: "
                                  "row i of each must be the same test item, in the same space", brain)
        scores = retrieval_scores(*arrays, pool=pool, loops=loops, seed=seed)
        scores.update(brain=str(brain), images=str(images))
    else:
        raise MindsearchError("give either --run RUN or both --brain and --images")
    if scores["pool"] < pool:  # the protocol cannot draw more items than there are: say so
        scores.update(pool_requested=pool, notice=f"pool {pool} > {scores['n']} test items: pools of {scores['pool']}")
        say(f"notice: {scores['notice']}")
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


_NETWORK_FLAGS = ("alexnet", "inception", "clip", "effnet", "swav")  # = recon_metrics.NETWORK_NAMES


@eval_group.command("recon")
@click.option("--recons", required=True, type=click.Path(),
              help="Folder of reconstructions (PNG/JPEG), or a reconstruct output folder with manifest.json.")
@click.option("--truth", type=click.Path(), help="Folder of ground-truth images (same file stems, or ids "
              "as file names with a manifest).")
@click.option("--data", type=click.Path(), help="Dataset whose images are the ground truth (by image id).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (null for skipped metrics).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), help="Write a self-contained HTML page.")
@click.option("--alexnet", type=click.Path(), help="AlexNet IMAGENET1K_V1 weights (.safetensors or torchvision .pth).")
@click.option("--inception", type=click.Path(), help="InceptionV3 IMAGENET1K_V1 weights.")
@click.option("--clip", type=click.Path(), help="CLIP weights (open_clip file or folder).")
@click.option("--clip-model", default="ViT-L-14-quickgelu", show_default=True,
              help="open_clip model name or model-config JSON for --clip.")
@click.option("--effnet", type=click.Path(), help="EfficientNet-B1 IMAGENET1K_V2 weights.")
@click.option("--swav", type=click.Path(), help="SwAV ResNet-50 weights (swav_800ep_pretrain.pth.tar).")
@click.option("--weights-dir", type=click.Path(), help="Folder searched by file name for the networks not given.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
def recon(recons, truth, data, as_json, html_out, alexnet, inception, clip, clip_model, effnet, swav,
          weights_dir, device, batch_size):
    """Image metrics of reconstructions as MindEye's final evaluation computes them:
    PixCorr, SSIM, two-way identification (AlexNet(2), AlexNet(5), Inception, CLIP) over all
    pairs, EfficientNet-B1 and SwAV correlation distance. A network without weights is skipped
    with one line naming the weights it needs."""
    from mindsearch.eval.recon_metrics import (LABELS, LOWER_IS_BETTER, METRICS, format_value, image_metrics,
                                               load_pairs)

    pairs = load_pairs(recons, truth, data=data)
    weights = dict(zip(_NETWORK_FLAGS, (alexnet, inception, clip, effnet, swav)))
    scores = image_metrics(pairs.recons, pairs.truth, weights=weights, weights_dir=weights_dir,
                           device=device, batch_size=batch_size, clip_model=clip_model,
                           per_item=html_out is not None, progress=say)
    by_reason: dict[str, list[str]] = {}
    for metric, why in scores["skipped"].items():
        by_reason.setdefault(why, []).append(LABELS[metric])
    for why, metrics in by_reason.items():  # one line per network
        say(f"skipped {', '.join(metrics)}: {why}")
    if html_out:
        from mindsearch.eval.recon_page import write_page

        write_page(html_out, scores, pairs, title=f"Reconstructions: {recons}")
        say(f"page written to {html_out}")
    summary = {k: v for k, v in scores.items() if k != "items"}
    summary["pairing"] = pairs.source
    if as_json:
        emit_json(summary)
        return
    rows = [[LABELS[m], "skipped" if scores[m] is None else format_value(m, scores[m]),
             "lower" if m in LOWER_IS_BETTER else "higher"] for m in METRICS]
    click.echo(table(rows, ["metric", "value", "better"]))
    click.echo(f"{scores['n']} pairs ({pairs.source['pairing']}); two-way identification over all pairs, "
               "chance 50%")
