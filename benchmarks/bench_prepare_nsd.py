"""prepare-nsd on full-size synthetic sessions: wall time and peak memory per session.

    python -m benchmarks.bench_prepare_nsd                      # hdf5 and nii.gz, 2 sessions each
    python -m benchmarks.bench_prepare_nsd --formats hdf5 --sessions 3 --out bench_prepare_nsd.json
    python -m benchmarks.bench_prepare_nsd --formats hdf5 --sessions 1 --images 224   # + the images step

Writes, in NSD's naming, subject 1's real 1.8 mm geometry: a (81, 104, 83) (X, Y, Z) nsdgeneral-like
mask of 15,724 voxels and session betas of 750 trials, int16 x 300 -- ``betas_session01.hdf5``
(750, 83, 104, 81) or ``.nii.gz`` (81, 104, 83, 750); further sessions are hard links to the first
(same bytes, no extra disk). NSD's design comes from ``$MINDSEARCH_NSD_EXPDESIGN`` or
../shared/fixtures. Each preparation runs in its own process (``--images none``); its peak resident memory is that
process's own VmHWM; the import-only baseline is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (81, 104, 83)  # subject 1, func1pt8mm, (X, Y, Z)
VOXELS = 15724  # nsdgeneral, subject 1
BETAS = "betas_fithrf_GLMdenoise_RR"


def write_mask(root: Path) -> np.ndarray:
    """-1 outside an ellipsoidal 'brain', 0 inside, 1 for the 15,724 voxels nearest the occipital pole."""
    import nibabel as nib

    from mindsearch.data.nsd_prepare import NsdFiles

    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij"))
    brain = (grid ** 2).sum(0) < 0.8
    pole = np.array([0.0, -0.8, 0.0])[:, None, None, None]
    dist = np.where(brain, ((grid - pole) ** 2).sum(0), np.inf)
    mask = np.where(brain, 0, -1).astype(np.int16)
    mask.ravel()[np.argsort(dist, axis=None)[:VOXELS]] = 1
    path = NsdFiles(root, 1, "func1pt8mm", BETAS, "nsdgeneral").mask
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(mask, np.eye(4)).to_filename(str(path))
    return mask


def write_session(root: Path, fmt: str, n_sessions: int) -> Path:
    import h5py

    from mindsearch.data.nsd_prepare import NsdFiles

    files = NsdFiles(root, 1, "func1pt8mm", BETAS, "nsdgeneral")
    files.betas_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    first = files.betas_dir / f"betas_session01.{fmt}"
    if fmt == "hdf5":
        with h5py.File(first, "w") as f:
            ds = f.create_dataset("betas", (750, *SHAPE[::-1]), dtype="i2")
            for lo in range(0, 750, 50):
                ds[lo:lo + 50] = rng.normal(0, 600, size=(50, *SHAPE[::-1])).astype(np.int16)
    else:
        import nibabel as nib

        vol = np.empty((*SHAPE, 750), np.int16)
        for lo in range(0, 750, 50):
            vol[..., lo:lo + 50] = rng.normal(0, 600, size=(*SHAPE, 50)).astype(np.int16)
        nib.Nifti1Image(vol, np.eye(4)).to_filename(str(first))
        del vol
    for s in range(2, n_sessions + 1):
        os.link(first, files.betas_dir / f"betas_session{s:02d}.{fmt}")
    return first


def write_stimuli(root: Path, design: Path, n_sessions: int) -> int:
    """nsd_stimuli.hdf5's imgBrick (73000, 425, 425, 3) uint8, chunked per image, with random
    pictures in the rows subject 1's first sessions show (the others take no space)."""
    import h5py

    from mindsearch.data.nsd_design import real_design
    from mindsearch.data.nsd_prepare import NsdFiles

    ids = np.unique(real_design([1], design, sessions=n_sessions).subjects[1].image_ids)
    path = NsdFiles(root, 1, "func1pt8mm", BETAS, "nsdgeneral").stimuli
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("imgBrick", (73000, 425, 425, 3), dtype="u1", chunks=(1, 425, 425, 3))
        for i in ids:
            ds[int(i)] = rng.integers(0, 256, size=(425, 425, 3), dtype=np.uint8)
    return len(ids)


def run_child(code: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB, exit status) of ``python -c code``.

    The peak is the child's own VmHWM (/proc/self/status), read as it exits: Linux carries
    ru_maxrss across exec, so wait4's figure would include this (larger) parent process.
    """
    probe = ("\nimport re\nprint('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', "
             "open('/proc/self/status').read()).group(1))")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True)
    wall = time.perf_counter() - t
    sys.stderr.write(proc.stderr)
    peak = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("VmHWM ")]
    return wall, (int(peak[0]) / 1024 if peak else float("nan")), proc.returncode


def main(argv=None) -> dict:
    from mindsearch.data.nsd_design import find_expdesign

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="hdf5,nii.gz")
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--images", type=int, default=0,
                    help="Also time the images step at this size (224: MindEye2's) on the hdf5 run.")
    ap.add_argument("--workdir", default=None, help="Scratch folder (default: a temp dir, removed after).")
    ap.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = ap.parse_args(argv)
    design = find_expdesign()
    if design is None:
        sys.exit("error: NSD's nsd_expdesign.mat not found (set MINDSEARCH_NSD_EXPDESIGN)")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_prepare_nsd."))
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "shape_xyz": SHAPE, "voxels": VOXELS, "trials_per_session": 750, "sessions": args.sessions,
               "formats": {}}
    try:
        _, base_rss, _ = run_child("import numpy, h5py, nibabel, pandas, scipy.io, tqdm; "
                                   "import mindsearch.data.nsd_prepare")
        results["import_only_peak_rss_mib"] = round(base_rss, 1)
        for fmt in args.formats.split(","):
            root = work / f"nsd-{fmt}"
            (root / "nsddata/experiments/nsd").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(design, root / "nsddata/experiments/nsd/nsd_expdesign.mat")
            write_mask(root)
            t = time.perf_counter()
            first = write_session(root, fmt, args.sessions)
            written = time.perf_counter() - t
            out = work / f"out-{fmt}"
            size = args.images if (args.images and fmt == "hdf5") else None
            n_images = write_stimuli(root, design, args.sessions) if size else 0
            code = ("from mindsearch.data.nsd_prepare import prepare_nsd; "
                    f"prepare_nsd({str(root)!r}, 1, {str(out)!r}, sessions='1-{args.sessions}', images={size}, "
                    "bar=False)")
            wall, rss, rc = run_child(code)
            if rc != 0:
                raise SystemExit(f"prepare-nsd failed for {fmt} (exit {rc})")
            summary = json.loads((out / "prepare_nsd_subj01.json").read_text())
            per = [s["seconds"] for s in summary["sessions"]]
            results["formats"][fmt] = {
                "session_file_mib": round(first.stat().st_size / 2**20, 1),
                "write_synthetic_s": round(written, 1),
                "prepare_wall_s": round(wall, 1),
                "masking_s_per_session": per,
                "assembly_and_checksums_s": round(summary["seconds"] - sum(per), 1),
                "peak_rss_mib": round(rss, 1),
                "voxels": summary["counts"]["voxels"],
            }
            if size:
                results["formats"][fmt].update(images=n_images, image_size=size)
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"prepare-nsd, subject 1 geometry {SHAPE} (X, Y, Z), {VOXELS} voxels, {args.sessions} sessions x 750 "
          f"trials, {results['machine']}; import-only peak {results['import_only_peak_rss_mib']} MiB")
    print(f"{'format':8} {'file MiB':>9} {'wall s':>7} {'mask s/session':>16} {'rest s':>7} {'peak MiB':>9}")
    for fmt, r in results["formats"].items():
        per = "/".join(f"{x:.1f}" for x in r["masking_s_per_session"])
        print(f"{fmt:8} {r['session_file_mib']:9.1f} {r['prepare_wall_s']:7.1f} {per:>16} "
              f"{r['assembly_and_checksums_s']:7.1f} {r['peak_rss_mib']:9.1f}"
              + (f"   (rest includes {r['images']} images at {r['image_size']} px)" if "images" in r else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
