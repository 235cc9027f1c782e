"""``mindsearch simulate OUT``: write a simulated NSD-like dataset with a known ceiling."""

from __future__ import annotations

import click

from mindsearch.cli.common import parse_settings


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", type=click.Choice(["small", "standard", "nsd"]), default="small", show_default=True,
              help="small: demo (1 subject, seconds); standard: benchmark (subjects 1,2,5,7); "
                   "nsd: NSD's real sizes (GPU machines, tens of GB).")
@click.option("--subjects", default=None, help="Comma-separated NSD subjects, e.g. 1,2,5,7 (default: the preset's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--layout", type=click.Choice(["mindeye2", "mindeye1", "both"]), default="mindeye2",
              show_default=True, help="both: MindEye2 at OUT plus a MindEye1 copy in OUT/mindeye1.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a preset setting (JSON value), e.g. --set n_voxels=500.")
def simulate(out, preset, subjects, seed, layout, force, settings):
    """Write a simulated NSD-like dataset to OUT, with ground_truth.json holding the
    Bayes-optimal retrieval accuracy (the ceiling no decoder can beat)."""
    from mindsearch.errors import MindsearchError
    from mindsearch.simulate import simulate as run

    overrides = parse_settings(settings)
    path = run(out, preset, subjects, seed, layout, force=force,
               log=lambda msg: click.echo(msg, err=True), **overrides)
    from mindsearch.io import read_json

    gt = read_json(path / "ground_truth.json")
    for s, t in gt["subjects"].items():
        a, one = t["average_betas"], t["single_trial"]
        click.echo(f"subject {s}: {t['n_voxels']} voxels, {t['n_test_images']} test images; ceiling "
                   f"brain->image {a['brain_to_image_top1']:.3f} (single trial {one['brain_to_image_top1']:.3f}), "
                   f"image->brain {a['image_to_brain_top1']:.3f} ({one['image_to_brain_top1']:.3f})")
    click.echo(str(path))
