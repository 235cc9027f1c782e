"""``mindsearch use``: show or set the defaults a bare ``mindsearch query`` uses."""

from __future__ import annotations

from pathlib import Path

import click

from mindsearch.cli.common import emit_json


@click.command()
@click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Default run that encodes voxels.")
@click.option("--index", "index_name", default=None, help="Default index (a name under the root).")
@click.option("--root", type=click.Path(file_okay=False), default=None, help="Default index root.")
@click.option("--data", type=click.Path(), default=None, help="Default dataset (for --trial queries).")
@click.option("--clear", is_flag=True, help="Forget every saved default first (also repairs a broken file).")
@click.option("--json", "as_json", is_flag=True)
def use(run_dir, index_name, root, data, clear, as_json):
    """Save defaults to $MINDSEARCH_HOME/config.toml (else ~/.mindsearch/config.toml).

    With no option, print them. Flags and MINDSEARCH_* environment variables always win
    over saved defaults.
    """
    from mindsearch import config
    from mindsearch.errors import MindsearchError

    values = {}
    if clear:
        values = {key: None for key in config.KEYS}
    if root is not None:
        values["root"] = Path(root).resolve()
        if not values["root"].is_dir():
            raise MindsearchError("index root not found", root)
    if run_dir is not None:
        values["run"] = Path(run_dir).resolve()
        if not (values["run"] / "config.json").is_file():
            raise MindsearchError("not a run directory (no config.json)", run_dir)
    if data is not None:
        values["data"] = Path(data).resolve()
        if not values["data"].exists():
            raise MindsearchError("no such dataset", data)
    if index_name is not None:
        saved = config.load()
        index_root = Path(values.get("root") or saved.get("root") or config.home() / "indexes")
        if not (index_root / index_name / "manifest.json").is_file():
            raise MindsearchError(f"no index named {index_name!r} under {index_root} "
                                  "(give its root with --root, or set MINDSEARCH_HOME)", index_root)
        values["index"] = index_name
    if values:
        path = config.save(values, fresh=clear)
        click.echo(f"saved to {path}", err=True)
    cfg = config.load(env=False)
    if as_json:
        emit_json({"config": str(config.config_path()), **cfg})
        return
    click.echo(f"config: {config.config_path()}{'' if config.config_path().is_file() else ' (none yet)'}")
    for key in config.KEYS:
        click.echo(f"{key:>7}: {cfg.get(key, '-')}")
    if cfg.get("service"):
        click.echo(f"service: {cfg['service'].get('url')} (queries go through it while it answers)")
