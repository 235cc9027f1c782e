"""Train a MindEye-style encoder: one readable loop (nanoGPT-style), resumable bit for bit.

    for epoch:                         data order = f(seed, epoch, subject), never global state
        for step:                      one optimiser step = ``accumulate`` micro-batches
            BiMixCo (first third) or SoftCLIP on the projector + 30 * prior MSE on the backbone
            AdamW step, OneCycleLR step
            checkpoint every ``ckpt_every_steps``
        validation top-1 on a held-out subset; checkpoint

A checkpoint is ``OUT/checkpoint/{state.safetensors,state.json}``, written atomically: model
weights, the AdamW state flattened to tensors, the scheduler state, the torch/numpy/python RNG
states (as uint8 tensors), and the position (epoch, next step). Because the data order is
recomputed from (seed, epoch) and every random draw in a step (dropout, MixCo, prior
timesteps/noise) comes from the restored global RNG, a resumed run ends with the same weights as
an uninterrupted one.

The loop runs under ``accelerate.Accelerator`` so ``accelerate launch`` spreads it over GPUs
without code changes; by default (no config file, one process) it is plain single-device torch.
Each process takes its rank's slice of every global batch.

The finished run directory follows the ``mindsearch-run/1`` format: ``config.json`` (with the
model's resolved architecture under ``"mindeye"``), ``model.safetensors``, ``zscore.safetensors``
(from ``train_mindeye``) and ``train_log.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mindsearch.errors import MindsearchError
from mindsearch.retrieval import top1_full_pool

LOSSES = ("bimixco_softclip", "clip", "bimixco", "softclip")
CKPT_DIR = "checkpoint"


@dataclass
class TrainConfig:
    preset: str = "light"  # model preset (tiny | light | paper) or a path to a model config JSON
    epochs: int = 20
    batch_size: int = 32  # global batch per micro-step, split evenly over subjects
    lr: float = 3e-4  # OneCycleLR max_lr
    weight_decay: float = 1e-2
    seed: int = 42
    loss: str = "bimixco_softclip"
    mixup_pct: float = 0.33
    mixco_beta: float = 0.15
    mixco_s_thresh: float = 0.5
    clip_temp: float = 0.006  # BiMixCo / CLIP temperature (fixed)
    softclip_temp_start: float = 0.004
    softclip_temp_end: float = 0.0075
    prior_weight: float = 30.0
    use_prior: bool = True
    use_projector: bool = True
    use_lowlevel: bool = False
    lowlevel_weight: float = 0.5  # MindEye2's weight on (L1/0.18215 + 0.1 * L_cont)
    accumulate: int = 1
    device: str = "auto"  # auto | cpu | cuda
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, off on CPU) | no | bf16 | fp16
    val_every: int = 1  # epochs between validations; 0 = never
    val_size: int = 300  # held-out images used for the validation top-1
    ckpt_every_steps: int = 0  # 0 = only at epoch ends
    max_steps: int | None = None  # stop (resumably) after this many optimiser steps
    adapter_only: bool = False  # train only the adapters of the subjects being trained
    prior_sample_steps: int | None = None  # reverse steps when a run encodes "aligned" (None = all)
    keep_checkpoint: bool = False  # keep OUT/checkpoint after the run finishes

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise MindsearchError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.epochs < 1 or self.batch_size < 2 or self.accumulate < 1:
            raise MindsearchError("epochs >= 1, batch_size >= 2 and accumulate >= 1 are required")

    @classmethod
    def for_preset(cls, preset: str = "light", **overrides) -> "TrainConfig":
        """Defaults from the preset's ``train`` section, then ``overrides``."""
        from mindsearch.models.factory import load_preset

        defaults = dict(load_preset(preset).get("train") or {})
        defaults.update(overrides)
        return cls(preset=preset, **defaults)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------- small helpers


def epoch_order(seed: int, epoch: int, subject: int, n: int) -> np.ndarray:
    """The shuffled trial order of one subject's epoch: a pure function, so resuming recomputes it."""
    return np.random.default_rng([int(seed), int(epoch), int(subject)]).permutation(n)


def _as_lookup(targets_lookup) -> Callable[[np.ndarray], np.ndarray]:
    if callable(targets_lookup):
        return lambda ids: np.asarray(targets_lookup(np.asarray(ids)), dtype=np.float32)
    arr = np.asarray(targets_lookup)
    return lambda ids: arr[np.asarray(ids)].astype(np.float32)


def _normalise_val(val) -> dict:
    if val is None:
        return {}
    if isinstance(val, dict):
        return {int(s): (np.asarray(v), np.asarray(i)) for s, (v, i) in val.items()}
    raise MindsearchError("val must be {subject: (voxels, image_ids)}")


def _first_unique(ids: np.ndarray, limit: int) -> np.ndarray:
    """Row indices of the first trial of each image, up to ``limit`` images (one query per image)."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)[:limit]


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, model, optimizer, scheduler, position: dict, cfg: TrainConfig) -> None:
    import torch
    from safetensors.torch import save_file

    from mindsearch.io import atomic_path

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            t = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"optim.{pid}.{k}"] = t.detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.uint32).view(np.uint8).copy())
    py_state = random.getstate()
    state = {
        "position": position,
        "config": cfg.to_dict(),
        "optimizer_param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, default=_json_default))


def _json_default(o):
    if isinstance(o, tuple):
        return list(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore everything ``save_checkpoint`` wrote; returns the saved JSON (position, history...)."""
    import torch
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    tensors = load_file(str(path / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v
    groups = state["optimizer_param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    name, pos, has_gauss, gauss = state["rng_numpy"]
    keys = tensors["rng.numpy"].numpy().view(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, gauss))
    v, internal, g = state["rng_python"]
    random.setstate((v, tuple(internal), g))
    return state


# ----------------------------------------------------------------------------- the loop


def _phase(cfg: TrainConfig, epoch: int) -> tuple[str, float]:
    """Which contrastive loss this epoch uses, and its temperature."""
    from mindsearch.training.schedules import mixup_epochs, softclip_temperature

    if cfg.loss == "clip":
        return "clip", cfg.clip_temp
    if cfg.loss == "bimixco" or (cfg.loss == "bimixco_softclip" and epoch < mixup_epochs(cfg.epochs, cfg.mixup_pct)):
        return "bimixco", cfg.clip_temp
    pct = cfg.mixup_pct if cfg.loss == "bimixco_softclip" else 0.0
    return "softclip", softclip_temperature(epoch, cfg.epochs, pct, cfg.softclip_temp_start, cfg.softclip_temp_end)


def _step_loss(model, voxels: list, subjects: list, targets, phase: str, temp: float, cfg: TrainConfig,
               lowlevel_targets=None):
    import torch

    from mindsearch.training.losses import clip_loss, lowlevel_loss, mixco, mixco_nce, soft_clip_loss, total_loss

    perm = betas = None
    if phase == "bimixco":
        # Mix within each subject (voxel spaces differ); offset perms into the concatenated batch.
        mixed, perms, bs, offset = [], [], [], 0
        for v in voxels:
            m, p, b, _ = mixco(v, cfg.mixco_beta, cfg.mixco_s_thresh)
            mixed.append(m)
            perms.append(p + offset)
            bs.append(b)
            offset += len(v)
        voxels, perm, betas = mixed, torch.cat(perms), torch.cat(bs)
    out = model(voxels, subjects, targets=targets if cfg.use_prior else None)
    preds = out.disjointed
    if phase == "bimixco":
        contrastive = mixco_nce(preds, targets, perm, betas, temp=temp)
    elif phase == "clip":
        contrastive = clip_loss(preds, targets, temp=temp)
    else:
        contrastive = soft_clip_loss(preds, targets, temp=temp)
    low = None
    if lowlevel_targets is not None and out.lowlevel is not None:
        latents, feats = lowlevel_targets
        low = lowlevel_loss(out.lowlevel, latents, out.lowlevel_aux, feats)
    loss = total_loss(contrastive, out.prior_loss, cfg.prior_weight, low, cfg.lowlevel_weight)
    parts = {"contrastive": float(contrastive.detach())}
    if out.prior_loss is not None:
        parts["prior"] = float(out.prior_loss.detach())
    if low is not None:
        parts["lowlevel"] = float(low.detach())
    return loss, parts


def validate(model, val: dict, lookup, device, size: int = 300, batch: int = 256) -> dict:
    """Top-1 of the projector's embeddings among ``size`` held-out images (one trial per image)."""
    import torch

    was_training = model.training
    model.eval()
    res = {}
    with torch.no_grad():
        for s, (vox, ids) in sorted(val.items()):
            rows = _first_unique(ids, size)
            if len(rows) < 2:
                continue
            outs = []
            for i in range(0, len(rows), batch):
                xb = torch.from_numpy(np.asarray(vox[rows[i : i + batch]], dtype=np.float32)).to(device)
                outs.append(model([xb], [s]).disjointed.float().cpu().numpy())
            fwd, bwd = top1_full_pool(np.concatenate(outs), lookup(ids[rows]))
            res[str(s)] = {"brain_to_image_top1": fwd, "image_to_brain_top1": bwd, "n": int(len(rows))}
    model.train(was_training)
    if res:
        res["mean_brain_to_image_top1"] = float(np.mean([r["brain_to_image_top1"] for r in res.values()]))
    return res


def _epoch_line(record: dict) -> str:
    line = f"epoch {record['epoch']}: {record['phase']} loss {record['loss']:.4f}, lr {record['lr']:.2e}"
    for s, v in (record.get("val") or {}).items():
        if isinstance(v, dict) and "brain_to_image_top1" in v:
            line += (f"; val subject {s} single-trial top-1 /{v['n']}: brain->image "
                     f"{v['brain_to_image_top1']:.1%}, image->brain {v['image_to_brain_top1']:.1%}")
    return line


def _with_overrides(preset, overrides: dict | None):
    """The preset itself when nothing overrides it (so configs stay as before), else a merged dict."""
    if not overrides:
        return preset
    from mindsearch.models.factory import load_preset

    config = load_preset(preset)
    for section, values in overrides.items():
        base = config.get(section)
        config[section] = {**base, **values} if isinstance(base, dict) and isinstance(values, dict) else values
    return config


def train_arrays(
    voxels_by_subject: dict,
    image_ids_by_subject: dict,
    targets_lookup,
    cfg: TrainConfig,
    out_dir,
    resume: bool = False,
    val: dict | None = None,
    progress: bool = True,
    *,
    model=None,
    zscore: dict | None = None,
    run_info: dict | None = None,
    lowlevel_lookup: Callable | None = None,
    model_overrides: dict | None = None,
) -> dict:
    """Train on single trials. ``voxels_by_subject`` {s: (n, V) float32, z-scored};
    ``image_ids_by_subject`` {s: (n,)}; ``targets_lookup``: ids -> (n, T, D) (callable or array
    indexed by image id); ``val`` {s: (voxels, image_ids)} for the periodic top-1; ``model`` an
    initial ``MindEyeModel`` (fine-tuning; subjects it lacks get new adapters); ``zscore``
    {s: ZScore} written to ``zscore.safetensors``; ``run_info`` {"space", "data"} for config.json;
    ``lowlevel_lookup`` ids -> (latents, teacher features or None) when ``cfg.use_lowlevel``;
    ``model_overrides`` {section: {key: value}} merged into the preset when a new model is built
    (e.g. the low-level head sized to a VAE's latents).
    Returns a summary dict (also written to ``OUT/train_log.json``)."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from mindsearch.models.factory import create_model, save_pretrained
    from mindsearch.training.schedules import make_optimizer, make_scheduler

    t_start = time.time()
    out_dir = Path(out_dir)
    if resume and not (out_dir / CKPT_DIR / "state.json").is_file() and (out_dir / "train_log.json").is_file() \
            and (out_dir / "model.safetensors").is_file():
        # Resuming a finished run is a no-op: hand back what it recorded.
        done = json.loads((out_dir / "train_log.json").read_text())
        done["already_complete"] = True
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    subjects = sorted(int(s) for s in voxels_by_subject)
    if not subjects:
        raise MindsearchError("no training subjects")
    vox = {s: voxels_by_subject[s] for s in subjects}
    ids = {s: np.asarray(image_ids_by_subject[s], dtype=np.int64) for s in subjects}
    for s in subjects:
        if len(vox[s]) != len(ids[s]):
            raise MindsearchError(f"subject {s}: {len(vox[s])} voxel rows but {len(ids[s])} image ids")
    lookup = _as_lookup(targets_lookup)
    sample_targets = lookup(np.unique(ids[subjects[0]])[:1024])
    if sample_targets.ndim != 3:
        raise MindsearchError(f"targets must be (n, tokens, dim), got shape {sample_targets.shape}")
    tokens, dim = int(sample_targets.shape[1]), int(sample_targets.shape[2])
    if cfg.use_lowlevel and lowlevel_lookup is None:
        raise MindsearchError("use_lowlevel needs low-level targets (VAE latents), which were not given")

    # Seed before building the model so initial weights are a function of the seed.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)

    n_voxels = {s: int(vox[s].shape[1]) for s in subjects}
    if model is None:
        model = create_model(_with_overrides(cfg.preset, model_overrides), n_voxels, tokens=tokens, dim=dim,
                             use_projector=cfg.use_projector,
                             use_prior=cfg.use_prior, use_lowlevel=cfg.use_lowlevel)
        if model.prior is not None and model.config.prior.embed_scale == "auto":
            model.prior.set_embed_scale(torch.from_numpy(sample_targets))
    else:
        if (model.config.tokens, model.config.dim) != (tokens, dim):
            raise MindsearchError(
                f"the initial model maps to {model.config.tokens}x{model.config.dim} but the "
                f"targets are {tokens}x{dim}"
            )
        for s in subjects:
            if s not in model.subjects:
                model.add_subject(s, n_voxels[s])
            elif model.adapters.n_voxels(s) != n_voxels[s]:
                raise MindsearchError(f"subject {s}: the model expects {model.adapters.n_voxels(s)} voxels, "
                                      f"the data has {n_voxels[s]}")
    if cfg.adapter_only:
        model.train_only(subjects)

    # --- device and accelerate: one process on CPU unless launched with `accelerate launch`.
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if want_cuda and torch.cuda.is_bf16_supported() else "no"
    handlers = []
    if (model.prior is not None and not cfg.use_prior) or (model.lowlevel is not None and not cfg.use_lowlevel):
        # A head that exists but gets no loss would make DistributedDataParallel wait for its grads.
        from accelerate.utils import DistributedDataParallelKwargs

        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(cpu=not want_cuda, mixed_precision=mp, kwargs_handlers=handlers)
    device = accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index

    per_subject_bs = cfg.batch_size // len(subjects)
    if per_subject_bs < 2 or per_subject_bs % world:
        raise MindsearchError(f"batch_size {cfg.batch_size} must give each of {len(subjects)} subjects >= 2 "
                              f"samples, divisible by {world} processes")
    local_bs = per_subject_bs // world
    steps_per_epoch = min(len(ids[s]) // (per_subject_bs * cfg.accumulate) for s in subjects)
    if steps_per_epoch < 1:
        raise MindsearchError(f"too few trials for one step of batch {cfg.batch_size} x {cfg.accumulate}")
    total_steps = steps_per_epoch * cfg.epochs
    effective_batch = per_subject_bs * len(subjects) * cfg.accumulate
    if progress and accelerator.is_main_process:
        # what ran where: a multi-process launch splits each global batch, it does not multiply it
        tqdm.write(f"device {device}, {world} process(es), {local_bs * len(subjects)} samples per process "
                   f"per micro-step, effective batch {effective_batch}", file=sys.stderr)

    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.lr, total_steps, cfg.epochs)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(model)

    ckpt = out_dir / CKPT_DIR
    start_epoch, start_step, global_step, history, resumed_losses = 0, 0, 0, [], []
    if resume and (ckpt / "state.json").is_file():
        state = load_checkpoint(ckpt, raw, optimizer, scheduler)
        pos = state["position"]
        start_epoch, start_step, global_step = pos["epoch"], pos["step"], pos["global_step"]
        history = pos.get("history", [])
        resumed_losses = pos.get("epoch_losses", [])
        if state["config"].get("seed") != cfg.seed or state["config"].get("epochs") != cfg.epochs:
            raise MindsearchError("resume: the checkpoint was made with a different seed or epoch count", ckpt)

    val_sets = _normalise_val(val)
    lowlevel_fn = None
    if cfg.use_lowlevel:
        def lowlevel_fn(batch_ids):
            lat, feats = lowlevel_lookup(batch_ids)
            lat = torch.from_numpy(np.asarray(lat, np.float32)).to(device)
            feats = None if feats is None else torch.from_numpy(np.asarray(feats, np.float32)).to(device)
            return lat, feats

    def checkpoint(epoch, step, epoch_losses=()):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            position = {"epoch": epoch, "step": step, "global_step": global_step, "history": history,
                        "epoch_losses": list(epoch_losses)}
            save_checkpoint(ckpt, raw, optimizer, scheduler, position, cfg)

    # Off a terminal (logs, CI) a redrawn bar is noise: refresh rarely, and print a line per epoch.
    bar = tqdm(total=total_steps, initial=global_step, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 60.0,
               disable=not progress or not accelerator.is_main_process, desc="train")
    interrupted, last_loss, val_res = False, float("nan"), {}
    samples_seen, t_loop = 0, time.time()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        phase, temp = _phase(cfg, epoch)
        orders = {s: epoch_order(cfg.seed, epoch, s, len(ids[s])) for s in subjects}
        first = start_step if epoch == start_epoch else 0
        # Losses of this epoch's steps before an interruption, so the epoch's mean is unchanged by it.
        losses, stop, step = (list(resumed_losses) if epoch == start_epoch else []), False, first
        for step in range(first, steps_per_epoch):
            for micro in range(cfg.accumulate):
                k = step * cfg.accumulate + micro
                xs, batch_ids = [], []
                for s in subjects:
                    rows = orders[s][k * per_subject_bs : (k + 1) * per_subject_bs]
                    rows = np.sort(rows[rank * local_bs : (rank + 1) * local_bs])  # sorted: h5-friendly reads
                    xs.append(torch.from_numpy(np.asarray(vox[s][rows], dtype=np.float32)).to(device))
                    batch_ids.append(ids[s][rows])
                batch_ids = np.concatenate(batch_ids)
                targets = torch.from_numpy(lookup(batch_ids)).to(device)
                low_t = lowlevel_fn(batch_ids) if lowlevel_fn else None
                # Only the last micro-batch synchronises gradients across processes.
                sync = accelerator.no_sync(model) if micro < cfg.accumulate - 1 else contextlib.nullcontext()
                with sync, accelerator.autocast():
                    loss, parts = _step_loss(model, xs, subjects, targets, phase, temp, cfg, low_t)
                    accelerator.backward(loss / cfg.accumulate)
                losses.append(float(loss.detach()))
                samples_seen += len(batch_ids) * world
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            last_loss = losses[-1]
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{last_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            sps=f"{samples_seen / max(time.time() - t_loop, 1e-9):.0f}", refresh=False)
            if cfg.max_steps is not None and global_step >= cfg.max_steps:
                stop = True
                break
            if cfg.ckpt_every_steps and global_step % cfg.ckpt_every_steps == 0 and step + 1 < steps_per_epoch:
                checkpoint(epoch, step + 1, losses)
        next_step = step + 1
        if next_step >= steps_per_epoch:  # the epoch is complete
            record = {"epoch": epoch, "phase": phase, "temp": temp,
                      "loss": float(np.mean(losses)) if losses else None, "lr": scheduler.get_last_lr()[0]}
            is_last = epoch + 1 == cfg.epochs
            if val_sets and ((cfg.val_every and (epoch + 1) % cfg.val_every == 0) or is_last):
                val_res = validate(raw, val_sets, lookup, device, cfg.val_size)
                record["val"] = val_res
            history.append(record)
            if progress and accelerator.is_main_process:
                tqdm.write(_epoch_line(record), file=sys.stderr)
            checkpoint(epoch + 1, 0)
        else:
            checkpoint(epoch, next_step, losses)
        if stop:
            interrupted = not (epoch + 1 == cfg.epochs and next_step >= steps_per_epoch)
            break
    bar.close()

    summary = {
        "out_dir": str(out_dir),
        "interrupted": interrupted,
        "epochs": cfg.epochs,
        "steps_per_epoch": steps_per_epoch,
        "global_step": global_step,
        "total_steps": total_steps,
        "final_loss": last_loss,
        "val": val_res,
        "history": history,
        "device": str(device),
        "world_size": world,
        "effective_batch": effective_batch,
        "mixed_precision": mp,
        "n_params": sum(p.numel() for p in raw.parameters()),
        "n_trainable": sum(p.numel() for p in raw.parameters() if p.requires_grad),
        "seconds": time.time() - t_start,
        "samples_per_s": samples_seen / max(time.time() - t_loop, 1e-9),
    }
    if interrupted:
        return summary

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = run_info or {}
        record = {
            "model": "mindeye",
            "subject": subjects[0],
            "n_voxels": n_voxels[subjects[0]],
            "subjects": {str(s): v for s, v in n_voxels.items()},
            "space": info.get("space"),
            "target_shape": [tokens, dim],
            "seed": cfg.seed,
            "data": info.get("data"),
            "train": cfg.to_dict(),
            **{k: info[k] for k in ("from_run", "lowlevel_vae") if k in info},
        }
        save_pretrained(raw, out_dir, extra_config=record, zscore=zscore, log=summary,
                        keep=(CKPT_DIR,) if cfg.keep_checkpoint else ())
    return summary


def train_mindeye(data_path, subjects, cfg: TrainConfig, out_dir, from_run=None, resume: bool = False,
                  sessions=None, targets=None, progress: bool = True, vae=None,
                  vae_size: int | None = None) -> dict:
    """Train on a dataset directory (any layout ``mindsearch.data.open_dataset`` reads).

    Single-trial training on each subject's z-scored train split (optionally only ``sessions``);
    validation on the first ``cfg.val_size`` test images (MindEye2 uses the first 300).
    ``from_run``: a mindeye run to fine-tune (new subjects get new adapters; with
    ``cfg.adapter_only`` only those are trained).
    ``vae``: a VAE (diffusers directory or TAESD/TAEF2 safetensors folder, see ``mindsearch.vae``)
    whose latents of the training and validation images become the low-level head's targets; it
    turns ``cfg.use_lowlevel`` on and sizes the head to the latent. ``vae_size``: the square image
    size the VAE sees (default: the dataset's).
    """
    from mindsearch.data import open_dataset
    from mindsearch.data.preprocess import load_split

    subjects = [int(s) for s in (subjects if isinstance(subjects, (list, tuple)) else [subjects])]
    ds = open_dataset(data_path, targets=targets)
    with ds:
        if not ds.has_targets:
            raise MindsearchError("the dataset has no target embeddings (pass targets=)", ds.root)
        if vae is not None and not ds.has_images:
            raise MindsearchError("--vae trains the low-level head on the stimulus images, but this dataset "
                                  "has no images", ds.root)
        missing = [s for s in subjects if s not in ds.subjects]
        if missing:
            raise MindsearchError(f"no subject(s) {missing} in the dataset (has {ds.subjects})", ds.root)
        vox, ids, val, zs = {}, {}, {}, {}
        for s in subjects:
            tr = load_split(ds, s, "train", zscore=True, average="none", sessions=sessions)
            vox[s], ids[s], zs[s] = tr.voxels, tr.image_ids, tr.zscore
            try:
                te = load_split(ds, s, "test", zscore=True, average="none", stats=tr.zscore)
            except MindsearchError:
                te = None
            if te is not None and len(te.image_ids):
                val[s] = (te.voxels, te.image_ids)
        info = {
            "space": ds.target_space,
            "data": {"path": str(Path(ds.root).resolve()), "layout": ds.layout, "fingerprint": ds.fingerprint(),
                     "sessions": sessions},
        }
        model = None
        if from_run is not None:
            from mindsearch.models.factory import from_pretrained

            model = from_pretrained(from_run)
            info["from_run"] = str(from_run)
        low_lookup = overrides = None
        if vae is not None:
            from mindsearch.training.lowlevel import prepare_lowlevel, vae_device

            if not cfg.use_lowlevel:
                cfg = dataclasses.replace(cfg, use_lowlevel=True)
            used = np.concatenate([ids[s] for s in subjects] + [v[1] for v in val.values()])
            say = (lambda m: print(m, file=sys.stderr)) if progress else None
            low_lookup, overrides, info["lowlevel_vae"] = prepare_lowlevel(
                ds, vae, used, cfg.preset, size=vae_size, device=vae_device(cfg.device), progress=say)
            if model is not None:
                _check_lowlevel_head(model, info["lowlevel_vae"]["latent_shape"], from_run)
        return train_arrays(vox, ids, ds.targets, cfg, out_dir, resume=resume, val=val or None,
                            progress=progress, model=model, zscore=zs, run_info=info,
                            lowlevel_lookup=low_lookup, model_overrides=overrides)


def _check_lowlevel_head(model, latent_shape, from_run) -> None:
    """Fine-tuning keeps the run's head: it must already output the VAE's latent shape."""
    low = model.config.lowlevel
    have = None if not low else [low.latent_channels, low.latent_size, low.latent_size]
    if have != list(latent_shape):
        what = "no low-level head" if have is None else f"a low-level head for latents {have}"
        raise MindsearchError(f"the run to fine-tune has {what}, but the VAE gives latents {list(latent_shape)}",
                              from_run)


__all__ = ["TrainConfig", "train_arrays", "train_mindeye", "validate", "epoch_order",
           "save_checkpoint", "load_checkpoint", "LOSSES"]
