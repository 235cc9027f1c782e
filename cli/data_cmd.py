"""``mindsearch data ...``: look at datasets in any supported layout.

Only click + stdlib at module level; the data layer loads inside the command.
"""

from __future__ import annotations

import json

import click


@click.group()
def data():
    """Inspect datasets (MindEye2, MindEye1 or plain layout)."""


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
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


from mindsearch.cli.export_cmd import export_trials  # noqa: E402  (owned by the service work)
data.add_command(export_trials)
