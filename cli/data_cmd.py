"""``mindsearch data ...``: look at datasets in any supported layout; prepare NSD's own files.

Only click + stdlib at module level; the data layer loads inside the command.
"""

from __future__ import annotations

import click

from mindsearch.cli.common import emit_json


@click.group()
def data():
    """Inspect datasets (MindEye2, MindEye1, plain, Brain-Diffuser); prepare NSD's own files."""


@data.command("inspect")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--targets", default=None, help="Target set name under DIR/targets/, or a .npy path.")
@click.option("--voxels", default=None, type=click.Path(path_type=str),
              help="Voxel file, when PATH is a single subject's trial table (.csv/.parquet).")
def inspect_cmd(path, as_json, targets, voxels):
    """Layout, subjects, voxels, sessions, trials, images, repetitions, value range, targets."""
    from mindsearch.data import open_dataset
    from mindsearch.data.inspect import format_report, inspect_dataset

    with open_dataset(path, targets=targets, voxels=voxels) as ds:
        report = inspect_dataset(ds)
    if as_json:
        emit_json(report, indent=2)
    else:
        click.echo(format_report(report))


@data.command("prepare-nsd")
@click.option("--nsd-root", required=True, type=click.Path(path_type=str),
              help="NSD download (holds nsddata/, nsddata_betas/, nsddata_stimuli/).")
@click.option("--subject", required=True, type=int, help="NSD subject, 1-8.")
@click.option("--out", required=True, type=click.Path(path_type=str),
              help="Dataset directory to write (MindEye2 layout; several subjects may share it).")
@click.option("--space", default="func1pt8mm", show_default=True, help="Volume space of the betas and the ROI.")
@click.option("--betas", default="betas_fithrf_GLMdenoise_RR", show_default=True,
              type=click.Choice(["betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf"]),
              help="GLMsingle version (MindEye2 used betas_fithrf, Brain-Diffuser betas_fithrf_GLMdenoise_RR).")
@click.option("--roi", default="nsdgeneral", show_default=True, help="ROI mask under roi/ (without .nii.gz).")
@click.option("--sessions", default=None,
              help="Sessions 1..N, e.g. 1-37 (default: all the subject completed: 40 for 1, 2, 5, 7).")
@click.option("--images", default="224", show_default=True,
              help="Size of the images hdf5 in pixels, or 'none' to skip the stimuli.")
@click.option("--force", is_flag=True, help="Redo everything (ignore finished sessions and a finished preparation).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary JSON.")
def prepare_nsd_cmd(nsd_root, subject, out, space, betas, roi, sessions, images, force, as_json):
    """Convert NSD's release files (design, betas, ROI mask, stimuli) into the MindEye2 layout.

    One session in memory at a time; re-running resumes at the first unfinished session.
    """
    from mindsearch.cli.common import say
    from mindsearch.data.nsd_prepare import prepare_nsd
    from mindsearch.errors import MindsearchError

    if images.strip().lower() == "none":
        size = None
    else:
        try:
            size = int(images)
        except ValueError:
            raise MindsearchError(f"--images must be a size in pixels or none, got {images!r}") from None
    summary = prepare_nsd(nsd_root, subject, out, space=space, betas=betas, roi=roi, sessions=sessions,
                          images=size, force=force, log=say)
    if as_json:
        emit_json(summary, indent=2)
    else:
        click.echo(format_preparation(summary, out))


@data.command("targets")
@click.argument("path", type=click.Path(path_type=str))
@click.option("--name", required=True, help="Target set name: writes PATH/targets/NAME.npy, NAME_ids.npy, NAME.json.")
@click.option("--model", default="ViT-L-14", show_default=True, help="open_clip model name or model-config JSON.")
@click.option("--output", type=click.Choice(["final", "hidden", "tokens"]), default="final", show_default=True,
              help="final: pooled CLIP embedding; hidden: MindEye1's 257 tokens; tokens: MindEye2's patch tokens.")
@click.option("--weights", default=None,
              help="open_clip weights file or folder (omitted: the hub download, online only; 'random' for tests).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
def targets_cmd(path, name, model, output, weights, device, precision, batch_size):
    """Embed the images a dataset's trials show into a target set (what `mindsearch train` learns)."""
    from mindsearch.cli.common import say
    from mindsearch.data.embed_targets import embed_targets

    info = embed_targets(path, name, model=model, output=output, weights=weights, device=device,
                         precision=precision, batch_size=batch_size, log=say)
    sp = info["space"]
    click.echo(f"targets {info['name']}: {info['images']} images x {sp['tokens']} x {sp['dim']} "
               f"({sp['model']} {sp['layer']}) -> {info['file']}")


def format_preparation(s: dict, out: str) -> str:
    """The counts a correct preparation prints (README, "Preparing NSD")."""
    c, p, o = s["counts"], s["parameters"], s["outputs"]
    want = s["expected"]["nsdgeneral_voxels_1pt8mm"]
    reps = " ".join(f"{k}x:{v}" for k, v in c["repetitions"].items())
    lines = [
        f"subject {p['subject']}  {p['space']}  {p['betas']}  roi {p['roi']}",
        f"voxels    {c['voxels']}" + (f"   (NSD nsdgeneral at 1.8 mm: {want})" if want else ""),
        f"sessions  {c['sessions']} x {c['trials_per_session']} = {c['trials']} trials   protocol {c['protocol']}",
        f"train     {c['train_trials']} trials   {c['train_images']} images",
        f"test      {c['test_trials']} trials   {c['test_images']} images",
        f"images    {c['unique_images']} unique   repetitions {reps}",
        f"betas     {o['betas']['file']}  {o['betas']['shape'][0]} x {o['betas']['shape'][1]} float32 "
        f"(int16 / 300)  values sha256 {o['betas']['values_sha256'][:16]}",
        f"images    {o['images']['file'] + ' (' + str(o['images']['written']) + ' written)' if o['images'] else 'none'}",
        f"summary   {out}/prepare_nsd_subj{p['subject']:02d}.json   ({s['seconds']:.1f} s)",
    ]
    return "\n".join(lines)


from mindsearch.cli.export_cmd import export_trials  # noqa: E402

data.add_command(export_trials)
