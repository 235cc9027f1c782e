"""``mindsearch train``: ridge baseline or the MindEye-style encoder, one run directory out."""

from __future__ import annotations

import os

import click

from mindsearch.cli.common import (check_out_dir, emit_json, parse_ints, parse_settings, peak_rss_mib,
                                   removed_if_failed, say)

SEED = click.IntRange(0, 2**32 - 1)
# TrainConfig fields that have a flag of their own: --set for them is refused, not merged.
FLAGS = {"epochs": "--epochs", "steps": "--steps", "batch_size": "--batch-size", "seed": "--seed",
         "device": "--device", "preset": "--preset", "use_lowlevel": "--vae"}
from mindsearch.models.factory import list_presets

DEFAULT_PRESET = "cpu"


@click.command()
@click.option("--data", required=True, type=click.Path(), help="Dataset directory (any supported layout).")
@click.option("--subject", type=click.IntRange(min=1), default=None, help="Subject to train (1-based, as in NSD).")
@click.option("--subjects", default=None, help="With --pretrain: subjects to pretrain on, e.g. 2,5,7.")
@click.option("--pretrain", is_flag=True,
              help="Shared-subject pretraining on --subjects (default cpu preset: a shared latent encoding "
                   "model, then the trunk; other presets: MindEye2 end-to-end).")
@click.option("--from", "from_run", type=click.Path(file_okay=False), default=None,
              help="Start from a pretrained run (a new subject gets an adapter fitted in closed form to "
                   "its shared latent or trunk inputs).")
@click.option("--model", type=click.Choice(["mindeye", "ridge"]), default="mindeye", show_default=True)
@click.option("--preset", type=click.Choice(list_presets()), default=None,
              help="Model preset (the JSON files in mindsearch/models/configs/). Default: cpu, a ridge-started "
                   "MindEye2-style encoder sized for a CPU; on a GPU consider mindeye2-1024 or mindeye2.")
@click.option("--sessions", default=None, help="Train only on these sessions, e.g. 1 or 1,2,3.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the preset's epochs.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Optimiser steps of the whole schedule (default: the preset's epochs, or a data-aware number).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None, help="Override the preset's batch size.")
@click.option("--average", type=click.Choice(["betas", "none"]), default=None,
              help="Ridge: fit on averaged repetitions (default) or single trials.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Ridge: fixed alpha (default: chosen on validation).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last checkpoint.")
@click.option("--vae", type=click.Path(), default=None,
              help="diffusers VAE directory or TAESD/TAEF2 safetensors folder; trains the low-level head "
                   "(sets use_lowlevel).")
@click.option("--vae-size", type=click.IntRange(min=8), default=None,
              help="With --vae: square image size the VAE encodes (default: the dataset's image size).")
@click.option("--out", required=True, type=click.Path(), help="Run directory to write.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Override a training setting, e.g. --set use_prior=false --set loss=clip (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def train(data, subject, subjects, pretrain, from_run, model, preset, sessions, epochs, steps, batch_size,
          average, alpha, device, seed, resume, vae, vae_size, out, settings, as_json):
    """Train a brain encoder on one subject and write a run directory (safetensors + JSON)."""
    sessions = parse_ints(sessions)
    check_out_dir(out)
    if model == "ridge" and settings:
        raise click.BadParameter("applies to the MindEye trainer; ridge takes --alpha and --average",
                                 param_hint="--set")
    overrides = train_settings(settings)  # checked before anything is written
    if model == "ridge":
        from mindsearch.errors import MindsearchError

        if subject is None:
            raise MindsearchError("--subject is required")
        if vae is not None:
            raise MindsearchError("--vae trains a MindEye low-level head; the ridge model has none")
        from mindsearch.training.ridge import train_ridge

        with removed_if_failed(out):
            summary = train_ridge(data, subject, out, average=average or "betas", sessions=sessions,
                                  alpha=alpha, seed=seed, progress=say)
    else:
        from mindsearch.training.entry import train_encoder

        with removed_if_failed(out):
            summary = train_encoder(data, subject, out, subjects=parse_ints(subjects), pretrain=pretrain,
                                    from_run=from_run, preset=preset or DEFAULT_PRESET, sessions=sessions,
                                    epochs=epochs, steps=steps, batch_size=batch_size, device=device, seed=seed,
                                    resume=resume, progress=say, vae=vae, vae_size=vae_size, **overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch` / torchrun only rank 0 reports (one summary, one JSON)
    say(f"peak memory {peak_rss_mib():.0f} MiB")
    if as_json:
        emit_json(summary)
    else:
        say(f"run written to {out}")


def train_settings(settings) -> dict:
    """``--set`` pairs checked against ``TrainConfig``'s fields and their annotated types."""
    if not settings:
        return {}
    import dataclasses

    from mindsearch.training.trainer import TrainConfig

    kinds = {f.name: {t.strip() for t in str(f.type).split("|")} for f in dataclasses.fields(TrainConfig)}
    return parse_settings(settings, kinds, FLAGS)
