"""One call from the CLI's words to a trained MindEye-style run.

Maps ``mindsearch train`` flags onto ``TrainConfig`` and ``train_mindeye``:
- ``--subject S``: train subject S (single-subject MindEye1 style, through its own adapter);
- ``--subjects 2,5,7 --pretrain``: shared-subject pretraining (MindEye2), one adapter each;
- ``--from RUN --subject S --sessions 1``: fine-tune a pretrained run on a new subject's
  first session (a new adapter is added when RUN has none for S);
- ``--vae PATH``: also train the low-level head on that VAE's latents of the stimuli.
"""

from __future__ import annotations

from pathlib import Path

from mindsearch.errors import MindsearchError


def train_encoder(data, subject: int | None = None, out=None, *, subjects=None, pretrain: bool = False,
                  from_run=None, preset: str = "cpu", sessions=None, epochs: int | None = None, steps: int | None = None,
                  batch_size: int | None = None, device: str = "cpu", seed: int = 0,
                  resume: bool = False, progress=None, show_progress: bool = True, vae=None,
                  vae_size: int | None = None, **overrides) -> dict:
    from mindsearch.training.trainer import TrainConfig, train_mindeye

    if out is None:
        raise MindsearchError("--out is required")
    if pretrain:
        if not subjects:
            raise MindsearchError("--pretrain needs --subjects, e.g. --subjects 2,5,7")
        train_subjects = list(subjects)
        if subject is not None and subject not in train_subjects:
            train_subjects = [subject] + train_subjects
    else:
        if subject is None:
            raise MindsearchError("--subject is required")
        train_subjects = [subject] + [s for s in (subjects or []) if s != subject]
    if from_run is not None and not (Path(from_run) / "model.safetensors").is_file():
        raise MindsearchError("not a trained run (no model.safetensors)", from_run)
    if vae is not None and not Path(vae).exists():
        raise MindsearchError("VAE not found (a diffusers VAE directory or a TAESD/TAEF2 safetensors folder)",
                              vae)
    if vae_size is not None and vae is None:
        raise MindsearchError("--vae-size needs --vae")
    import dataclasses

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise MindsearchError(f"unknown training setting(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(known))})")
    settings = dict(overrides)
    if epochs is not None:
        settings["epochs"] = epochs
    if steps is not None:
        settings["steps"] = steps
    if batch_size is not None:
        settings["batch_size"] = batch_size
    if vae is not None:
        settings["use_lowlevel"] = True  # the VAE's only use is the low-level head's targets
    cfg = TrainConfig.for_preset(preset, device=device, seed=seed, **settings)
    say = progress or (lambda msg: None)
    say(f"training {preset} MindEye-style encoder on subject(s) {train_subjects}"
        + (f", sessions {sessions}" if sessions else "") + (f", from {from_run}" if from_run else "")
        + (f", low-level head on {vae}" if vae else "")
        + (f" for {cfg.steps} steps" if cfg.steps else f" for {cfg.epochs} epochs" if cfg.epochs else
           " for a data-aware number of steps") + f" on {device}")
    return train_mindeye(data, train_subjects, cfg, out, from_run=from_run, resume=resume,
                         sessions=sessions, progress=show_progress, vae=vae, vae_size=vae_size)
