"""Entry point of the ``mindsearch`` console script.

Sub-commands are registered by dotted path and imported only when invoked, so
``mindsearch --help`` never pays for torch, lancedb or faiss.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from mindsearch import __version__
from mindsearch.errors import InputError

# name -> "module:attribute" of a click command; imported on first use.
COMMANDS = {
    "demo": ("mindsearch.cli.demo_cmd:demo", "Simulate a small world, train, evaluate, search: the main job."),
    "simulate": ("mindsearch.cli.simulate_cmd:simulate", "Write a simulated NSD-like dataset with a known ceiling."),
    "data": ("mindsearch.cli.data_cmd:data", "Inspect datasets in any supported layout."),
    "train": ("mindsearch.cli.train_cmd:train", "Train a brain encoder (ridge or MindEye-style) on one subject."),
    "eval": ("mindsearch.cli.eval_cmd:eval_group", "Evaluate with the papers' protocols."),
    "embed": ("mindsearch.cli.embed_cmd:embed", "Encode voxels with a trained run."),
    "index": ("mindsearch.cli.index_cmd:index", "Build and inspect image-embedding indexes."),
    "query": ("mindsearch.cli.query_cmd:query", "Search an index with brain data (or the reverse)."),
    "reconstruct": ("mindsearch.cli.reconstruct_cmd:reconstruct", "Reconstruct seen images: blurry -> VD img2img -> best-of-N."),
    "use": ("mindsearch.cli.use_cmd:use", "Show or set the default index root, index, run and dataset."),
    "serve": ("mindsearch.cli.serve_cmd:serve", "Serve queries, thumbnails and a web page over HTTP."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name, (target, _) in COMMANDS.items() if _available(target))

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _available(COMMANDS[name][0]):
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        # Short help without importing each command module.
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Every failure is ONE stderr line ``error: <where>: <problem>``: bad input and usage
        errors exit 2 (``<where>`` is then the command), an interrupt 130; a closed stdout 0."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except InputError as exc:  # raised outside invoke (e.g. in a callback)
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `mindsearch`: the help is the answer
            click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
            sys.exit(0)
        except click.UsageError as exc:  # click would print usage, a hint and the error: three lines
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "mindsearch")
            click.echo(f"error: {where}: {_one_line(exc.format_message())} (see {where} --help)", err=True)
            sys.exit(2)
        except click.ClickException as exc:  # e.g. click.FileError: still the user's input
            click.echo(f"error: {_one_line(exc.format_message())}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            _silence_stdout()
            sys.exit(0)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # `mindsearch ... --json | head -c 10`: the reader has all it wants
            _silence_stdout()
            ctx.exit(0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _available(target: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mindsearch")
def cli():
    """mindsearch: decode what a person saw from fMRI by embedding search.

    Every command that fails on bad input prints one line naming the file and the
    problem, exits with code 2, and leaves nothing half-written.
    """


def defaults() -> dict:
    """Saved defaults (``mindsearch use``) as click's default_map; flags and MINDSEARCH_* win."""
    from mindsearch import config

    try:
        return config.default_map(config.load())
    except InputError as exc:  # a broken config must not lock the user out of `mindsearch use`
        click.echo(f"warning: {exc} (ignored)", err=True)
        return {}


def main(argv=None):
    # The group's main turns every failure into one line; defaults come from `mindsearch use`.
    cli.main(args=argv, prog_name="mindsearch", default_map=defaults(), auto_envvar_prefix="MINDSEARCH")


if __name__ == "__main__":
    main()
