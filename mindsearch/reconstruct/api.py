"""``reconstruct()``: the Python face of ``mindsearch reconstruct`` (inputs in, OUT written).

Inputs are a voxel file (rows in order; stems ``rowNNNNN``) or a dataset: ``trials="test"`` is the
papers' protocol (each test image once, its repetitions averaged; stems ``sSS_imgIIIIII``), a
list of trial numbers gives single trials (stems ``sSS_trialTTTTTT``). The data's images are
written to ``truth/`` under the same stems, so ``mindsearch eval recon --recons OUT/chosen
--truth OUT/truth`` pairs them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError


def _select(run, *, voxels, data, ds, trials, subject, limit, session=None, zscore=True):
    """-> (voxels, zscore, sessions, rows, source) for the chosen trials."""
    if (voxels is None) == (data is None):
        raise MindsearchError("give exactly one of --voxels or --data")
    subject = run.subject if subject is None else int(subject)
    if voxels is not None:
        from mindsearch.voxels import load_voxels

        x = load_voxels(voxels) if not isinstance(voxels, np.ndarray) else np.asarray(voxels, np.float32)
        x = x if x.ndim == 2 else x[None]
        if limit is not None:
            x = x[:limit]
        rows = [{"stem": f"row{i:05d}", "row": i, "subject": subject, "trial": None, "image_id": None}
                for i in range(len(x))]
        for r in rows:
            r["session"] = session
        src = "<array>" if isinstance(voxels, np.ndarray) else str(voxels)
        return np.asarray(x, np.float32), zscore, session, rows, src
    if trials in (None, "test"):
        from mindsearch.data.preprocess import load_split

        split = load_split(ds, subject, "test", zscore=True, average="betas")
        take = slice(None) if limit is None else slice(0, limit)
        x, ids = split.voxels[take], split.image_ids[take]
        if not len(x):
            raise MindsearchError(f"subject {subject} has no test trials", ds.root)
        rows = [{"stem": f"s{subject:02d}_img{int(im):06d}", "row": i, "subject": subject,
                 "trial": int(t), "image_id": int(im), "n_reps": int(r), "session": int(s)}
                for i, (im, t, r, s) in enumerate(zip(ids, split.trials[take], split.n_reps[take],
                                                       split.sessions[take]))]
        sessions, zscore = None, False  # z-scored per session by the data layer, then averaged
    else:
        wanted = [int(t) for t in (trials if not isinstance(trials, str) else trials.split(",")) if str(t).strip()]
        table = ds.trials[ds.trials["subject"] == subject].set_index("trial")
        missing = [t for t in wanted if t not in table.index]
        if missing:
            raise MindsearchError(f"subject {subject} has no trial {missing[0]}", ds.root)
        if limit is not None:
            wanted = wanted[:limit]
        x = ds.voxels(subject, wanted)
        sessions = table.loc[wanted, "session"].to_numpy(np.int64)
        ids = table.loc[wanted, "image_id"].to_numpy(np.int64)
        rows = [{"stem": f"s{subject:02d}_trial{t:06d}", "row": i, "subject": subject, "trial": int(t),
                 "image_id": int(im), "n_reps": 1, "session": int(s)}
                for i, (t, im, s) in enumerate(zip(wanted, ids, sessions))]
        zscore = True
    return np.asarray(x, np.float32), zscore, sessions, rows, str(data)


def reconstruct(run, out, *, voxels=None, data=None, trials="test", subject: int | None = None,
                session: int | None = None, zscore: bool = True,
                vd=None, vae=None, ranking: str = "auto", clip=None, index=None, root=None, images=None,
                limit: int | None = None, settings=None, device: str = "cpu", dtype: str = "fp32", progress=None,
                show_progress: bool = True, page: bool = True) -> dict:
    """Reconstruct and write OUT (see ``mindsearch.reconstruct.writer``); returns the manifest."""
    from mindsearch.io import atomic_path, write_json
    from mindsearch.reconstruct.pipeline import ReconstructionPipeline, ReconstructionSettings
    from mindsearch.reconstruct.writer import FORMAT, MANIFEST, check_out_dir, write_trial
    from mindsearch.runs import Run, open_run

    t0 = time.perf_counter()
    out = Path(out)
    check_out_dir(out)
    if limit is not None and int(limit) < 1:
        raise MindsearchError(f"--limit must be at least 1 (got {limit})")
    settings = (settings or ReconstructionSettings()).check()
    run = run if isinstance(run, Run) else open_run(run)
    ds = None
    if data is not None:
        from mindsearch.data import open_dataset

        ds = open_dataset(data)
    pipe = None
    try:
        x, zscore, sessions, rows, source = _select(run, voxels=voxels, data=data, ds=ds, trials=trials,
                                                    subject=subject, limit=limit, session=session,
                                                    zscore=zscore)
        subject = rows[0]["subject"] if rows else run.subject
        run.check_voxels(x, subject, source)  # before any component loads
        pipe = ReconstructionPipeline.from_run(run, vd=vd, vae=vae, ranking=ranking, clip=clip, data=ds,
                                               index=index, root=root, images=images, settings=settings,
                                               device=device, dtype=dtype, progress=progress)
        manifest = {"format": FORMAT, "run": str(run.path), "space": run.space, "subject": subject,
                    "source": source, "trials_selected": _describe_trials(voxels, trials)}
        stats: dict = {}
        with atomic_path(out) as tmp:
            tmp.mkdir()
            records = []
            # trial by trial: each is written, then dropped (see ReconstructionPipeline.iter_trials)
            for tr in pipe.iter_trials(x, subject=subject, session=sessions, zscore=zscore, settings=settings,
                                       progress=show_progress, source=source, stats=stats):
                row = rows[tr.row]
                truth = ds.images([row["image_id"]])[0] if ds is not None and ds.has_images else None
                records.append(write_trial(tmp, tr, row, truth))
            result = pipe.describe_output([], stats)
            peak_gpu = None
            if str(device).startswith("cuda"):
                import torch

                peak_gpu = torch.cuda.max_memory_allocated() / (1 << 20)
            manifest.update(
                settings=result.settings, ranking=result.ranking, conditioning=result.conditioning,
                components=result.components,
                random_components=bool(pipe.components is not None and pipe.components.is_random),
                lowlevel_vae=result.lowlevel_vae, index=result.index, device=device, dtype=dtype, trials=records,
                summary={"trials": len(rows), "generated": result.generated,
                         "seconds": time.perf_counter() - t0, "generation_seconds": stats["gen_seconds"],
                         "images_per_second": result.images_per_second,
                         "peak_rss_mib": _peak_rss_mib(), "peak_gpu_mib": peak_gpu})
            write_json(tmp / MANIFEST, manifest)
            if page:
                from mindsearch.reconstruct.page import write_page

                write_page(tmp, manifest)
    finally:
        if pipe is not None and pipe.retriever is not None:
            pipe.retriever.close()
        if ds is not None:
            ds.close()
    return manifest


def _describe_trials(voxels, trials) -> str:
    if voxels is not None:
        return "rows of the voxel file"
    if trials in (None, "test"):
        return "test (repetitions averaged)"
    return trials if isinstance(trials, str) else ",".join(str(int(t)) for t in trials)


def _peak_rss_mib() -> float:
    import resource
    import sys

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1 << 20)
