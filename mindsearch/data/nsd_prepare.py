"""From NSD's own release files to the MindEye2 layout: ``mindsearch data prepare-nsd``.

Inputs, as the NSD data manual (and ``nsd_access``) name them, under ``--nsd-root``::

    nsddata/experiments/nsd/nsd_expdesign.mat                        the design (trial order, shared1000)
    nsddata/ppdata/subjNN/{space}/roi/{roi}.nii.gz                   ROI mask, (X, Y, Z); > 0 = inside
    nsddata_betas/ppdata/subjNN/{space}/{betas}/betas_sessionNN.hdf5 dataset "betas" (750, Z, Y, X) int16
                                       (or betas_sessionNN.nii.gz:   (X, Y, Z, 750) int16)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5                     "imgBrick" (73000, 425, 425, 3) uint8
    nsddata/ppdata/subjNN/behav/responses.tsv                        optional behavioural responses

Output (docs/interfaces.md, "MindEye2 layout"): ``betas_all_subjNN_fp32_renorm.hdf5`` (masked
voxels, float32 percent signal change = NSD's int16 / 300; rows = NSD's global trial
``(session-1)*750 + trial``), ``wds/subjNN/{train/S-1.tar, new_test/0.tar | test/0.tar}`` with the
17-column ``behav.npy`` rows, an images hdf5 at the requested size, ``mindsearch.json`` and
``prepare_nsd_subjNN.json`` (every count, input sizes and sha256 checksums).

Orientation: NSD's hdf5 betas are MATLAB arrays seen by h5py with their axes reversed,
(750, Z, Y, X); the NIfTI betas and the mask are (X, Y, Z). Voxels are taken in the mask's
C order over (X, Y, Z) -- ``volume[mask > 0]``, as Brain-Diffuser and MindEye2 do on the NIfTI
files -- which for the hdf5 volume is the Fortran-order flat index of (X, Y, Z). Both input
forms therefore give the same matrix, column for column.

Memory: one block of one session's trials at a time; each finished session is kept as a
``.npy`` under ``OUT/.prepare-nsd/subjNN/`` so an interrupted preparation resumes at the first
unfinished session. z-scoring is left to the data layer (training trials only, per session).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindsearch.data import nsd_design
from mindsearch.errors import MindsearchError

FORMAT = "mindsearch-prepare-nsd/1"
SPACES = ("func1pt8mm", "func1mm")
BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")
# NSD stores betas as int16 percent signal change x 300 (NSD data manual, "betas").
BETA_SCALE = 300.0
TRIALS_PER_SESSION = nsd_design.NSD_TRIALS_PER_SESSION
N_SHARED = 1000
BLOCK_TRIALS = 50  # trials read per block: 50 x 0.7 M voxels x int16 = 70 MB at 1.8 mm
# nsdgeneral voxels at 1.8 mm per subject (ANCHORS 1.1): what a correct preparation prints.
NSDGENERAL_1PT8MM = {1: 15724, 2: 14278, 3: 15226, 4: 13153, 5: 13039, 6: 17907, 7: 12682, 8: 14386}
# The test split (images, trials) by sessions prepared: the two protocols and the full sets of the
# subjects who stopped early (trials: ANCHORS 1.2; images for 32/30 sessions: NSD's design).
PROTOCOLS = {40: ("40-session (MindEye2, new_test)", 1000, 3000),
             37: ("37-session (MindEye1, Brain-Diffuser, test)", 982, 2770),
             32: ("32 sessions (all of subjects 3, 6)", 930, 2371),
             30: ("30 sessions (all of subjects 4, 8)", 907, 2188)}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
WORK_VERSION = 1
# What a preparation writes into OUT (an interrupted first preparation leaves some of these).
OWN_OUTPUTS = re.compile(r"^(\.prepare-nsd|\.mindsearch_cache|wds|betas_all_subj\d+_fp32_renorm\.hdf5|"
                         r"(coco_images_224|images_\d+)_float16\.hdf5|prepare_nsd_subj\d+\.json|\..*\.tmp)$")


@dataclass
class NsdFiles:
    """Where NSD's release keeps one subject's files (nothing is opened here)."""

    root: Path
    subject: int
    space: str
    betas: str
    roi: str

    @property
    def design(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def mask(self) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{self.subject:02d}" / self.space / "roi" / f"{self.roi}.nii.gz"

    @property
    def betas_dir(self) -> Path:
        return self.root / "nsddata_betas" / "ppdata" / f"subj{self.subject:02d}" / self.space / self.betas

    def session(self, session: int) -> Path:
        """The session's hdf5 if present, else its .nii.gz (the hdf5 name when neither is)."""
        h5 = self.betas_dir / f"betas_session{session:02d}.hdf5"
        nii = self.betas_dir / f"betas_session{session:02d}.nii.gz"
        return nii if not h5.is_file() and nii.is_file() else h5

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    @property
    def responses(self) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{self.subject:02d}" / "behav" / "responses.tsv"


# -- small helpers -----------------------------------------------------------------------
def parse_sessions(text: str | None, subject: int) -> list[int]:
    """``"1-40"``, ``"1,2,3"`` or ``"5"``; None = the sessions the subject completed.

    Sessions must be 1..N: rows of the betas file are NSD's global trial numbers.
    """
    if text is None or str(text).strip() == "":
        return list(range(1, nsd_design.NSD_SESSIONS.get(subject, 40) + 1))
    out: list[int] = []
    try:
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            out.extend(range(a, b + 1))
    except ValueError:
        raise MindsearchError(f"--sessions must look like 1-40 or 1,2,3, got {text!r}") from None
    sessions = sorted(set(out))
    if not sessions or sessions != list(range(1, len(sessions) + 1)):
        raise MindsearchError(f"--sessions must be 1..N (rows of the betas file are NSD's global trial "
                              f"numbers), got {text!r}")
    if sessions[-1] > 40:
        raise MindsearchError(f"NSD has 40 sessions per subject at most, --sessions asks for {sessions[-1]}")
    return sessions


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> dict:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _short(exc: BaseException) -> str:
    from mindsearch.data.arrays import short

    return short(exc)


def need_nibabel():
    from mindsearch.errors import require

    return require("nibabel", "nsd", "reading NSD's NIfTI files")


# -- the design --------------------------------------------------------------------------
def load_nsd_design(path: Path) -> dict:
    """``nsd_expdesign.mat`` with NSD's shapes checked; 0-based ids (see nsd_design)."""
    try:
        d = nsd_design.load_expdesign(path)
    except MindsearchError:
        raise
    except Exception as exc:  # scipy's MatReadError and friends: not a MATLAB file at all
        raise MindsearchError(f"not NSD's experiment design: not a readable .mat file ({_short(exc)})", path) from None
    master, subjectim, shared = d["masterordering"], d["subjectim"], d["sharedix"]
    problems = []
    if master.shape != (30000,):
        problems.append(f"masterordering has {master.size} entries, NSD's has 30,000")
    if subjectim.shape != (8, 10000):
        problems.append(f"subjectim is {subjectim.shape}, NSD's is (8, 10000)")
    if shared.shape != (N_SHARED,):
        problems.append(f"sharedix has {shared.size} entries, NSD's has 1,000")
    if not problems:
        if subjectim.min() < 0 or subjectim.max() >= nsd_design.NSD_N_IMAGES:
            problems.append("subjectim holds ids outside NSD's 73,000 images")
        elif not all(np.array_equal(np.sort(row[:N_SHARED]), shared) for row in subjectim):
            problems.append("the first 1,000 images of each subject are not sharedix")
    if problems:
        raise MindsearchError(f"not NSD's experiment design: {problems[0]}", path)
    import scipy.io

    try:
        pattern = np.asarray(scipy.io.loadmat(str(path), variable_names=["stimpattern"])["stimpattern"])
    except (KeyError, ValueError, OSError) as exc:
        raise MindsearchError(f"not NSD's experiment design: no stimpattern ({exc})", path) from None
    if pattern.shape != (40, 12, 75) or (pattern.reshape(40, -1).sum(1) != TRIALS_PER_SESSION).any():
        raise MindsearchError(f"not NSD's experiment design: stimpattern is {pattern.shape}, "
                              "expected (40, 12, 75) with 750 trials per session", path)
    return {**d, "stimpattern": pattern.astype(bool)}


def run_and_trial(pattern: np.ndarray, session: int) -> tuple[np.ndarray, np.ndarray]:
    """1-based run and trial-within-run of a session's 750 stimulus trials (responses.tsv's
    RUN and TRIAL), from the design's ``stimpattern``."""
    runs, slots = np.nonzero(pattern[session - 1])  # C order: run-major, as presented
    trial = np.zeros(len(runs), np.int64)
    for r in np.unique(runs):
        trial[runs == r] = np.arange(1, int((runs == r).sum()) + 1)
    return runs.astype(np.int64) + 1, trial


# -- the mask and the betas --------------------------------------------------------------
def read_mask(path: Path) -> np.ndarray:
    """bool (X, Y, Z): voxels > 0 (nsdgeneral uses -1 outside the brain, 0 outside the ROI)."""
    nib = need_nibabel()
    if not path.is_file():
        raise MindsearchError("ROI mask not found", path)
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except Exception as exc:  # nibabel raises many types for unreadable images
        raise MindsearchError(f"not a readable NIfTI mask ({_short(exc)})", path) from None
    if data.ndim != 3:
        raise MindsearchError(f"the ROI mask must be a 3-D volume, got shape {data.shape}", path)
    mask = data > 0
    if not mask.any():
        raise MindsearchError("the ROI mask selects no voxel", path)
    return mask


class SessionBetas:
    """One session's betas (hdf5 or NIfTI), read as masked float32 blocks of trials."""

    def __init__(self, path: Path, mask: np.ndarray, session: int):
        self.path = Path(path)
        self.session = session
        self._file = None
        if self.path.name.endswith(".nii.gz") or self.path.suffix == ".nii":
            self._open_nifti(mask)
        else:
            self._open_hdf5(mask)
        if self.n_trials != TRIALS_PER_SESSION:
            self.close()
            raise MindsearchError(f"session {session} has {self.n_trials} trials, NSD's sessions have "
                                  f"{TRIALS_PER_SESSION}", self.path)

    def _open_hdf5(self, mask: np.ndarray) -> None:
        from mindsearch.data.arrays import h5_dataset, open_h5

        self._file = open_h5(self.path)
        ds = h5_dataset(self._file, ("betas",), self.path)
        shape = tuple(int(s) for s in ds.shape)
        self._check(shape, ds.dtype, 4)
        # (750, Z, Y, X): the mask applies transposed.
        if shape[1:] != mask.shape[::-1]:
            self.close()
            raise MindsearchError(f"betas volume is {shape[1:]} (Z, Y, X) but the mask is {mask.shape} (X, Y, Z): "
                                  f"a mask of another space, or betas not in NSD's (trials, Z, Y, X) order",
                                  self.path)
        self.n_trials = shape[0]
        self._flat = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
        self._ds = ds
        self.format = "hdf5"

    def _open_nifti(self, mask: np.ndarray) -> None:
        nib = need_nibabel()
        try:
            # keep_file_open: blocks are read in order from one gzip stream, not re-inflated per block
            img = nib.load(str(self.path), keep_file_open=True)
            proxy = img.dataobj
            shape = tuple(int(s) for s in proxy.shape)
            dtype = img.header.get_data_dtype()
            slope, inter = proxy.slope, proxy.inter
        except Exception as exc:
            raise MindsearchError(f"not a readable NIfTI file ({_short(exc)})", self.path) from None
        self._check(shape, dtype, 4)
        if (np.isfinite(slope) and slope != 1.0) or (np.isfinite(inter) and inter != 0.0):
            raise MindsearchError(f"NIfTI header scales the betas (scl_slope {slope}, scl_inter {inter}); "
                                  "NSD's files store unscaled int16 x 300", self.path)
        if shape[:3] != mask.shape:
            raise MindsearchError(f"betas volume is {shape[:3]} (X, Y, Z) but the mask is {mask.shape}: "
                                  "a mask of another space?", self.path)
        self.n_trials = shape[3]
        self._img, self._proxy, self._mask = img, proxy, mask
        self.format = "nii.gz"

    def _check(self, shape, dtype, ndim) -> None:
        if len(shape) != ndim:
            self.close()
            raise MindsearchError(f"betas must be 4-D, got shape {shape}", self.path)
        if np.dtype(dtype) != np.int16:
            self.close()
            raise MindsearchError(f"betas are {np.dtype(dtype)}, NSD's are int16 (percent signal change x 300)",
                                  self.path)

    def blocks(self, n: int = BLOCK_TRIALS):
        """Yield ``(lo, hi, float32 (hi-lo, n_voxels))`` in trial order, divided by 300."""
        for lo in range(0, self.n_trials, n):
            hi = min(lo + n, self.n_trials)
            try:
                if self.format == "hdf5":
                    raw = np.asarray(self._ds[lo:hi]).reshape(hi - lo, -1)[:, self._flat]
                else:
                    raw = np.asarray(self._proxy[..., lo:hi])[self._mask].T
            except (OSError, ValueError, EOFError) as exc:
                raise MindsearchError(f"cannot read trials {lo}-{hi - 1}, truncated? ({_short(exc)})",
                                      self.path) from None
            yield lo, hi, (raw.astype(np.float32) / np.float32(BETA_SCALE))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        img = getattr(self, "_img", None)
        if img is not None:
            # nibabel keeps the gzip stream open with keep_file_open=True; close it ourselves
            opener = getattr(self._proxy, "_opener", None)
            if opener is not None and not opener.closed:
                opener.close_if_mine()
            self._img = self._proxy = None


# -- behaviour ---------------------------------------------------------------------------
RESPONSE_COLUMNS = ("SESSION", "RUN", "TRIAL", "73KID", "TIME", "ISOLD", "ISCORRECT", "RT", "CHANGEMIND",
                    "ISOLDCURRENT", "ISCORRECTCURRENT", "TOTAL1", "TOTAL2", "BUTTON")


def read_responses(path: Path):
    import pandas as pd

    try:
        df = pd.read_csv(path, sep="\t")
    except Exception as exc:
        raise MindsearchError(f"not a readable responses.tsv ({_short(exc)})", path) from None
    missing = [c for c in RESPONSE_COLUMNS if c not in df.columns]
    if missing:
        raise MindsearchError(f"responses.tsv lacks column(s) {', '.join(missing)}", path)
    return df


def behav_rows(subject: int, d, session: int, pattern, responses, shared: np.ndarray, path: Path) -> np.ndarray:
    """(750, 17) MindEye2 behav rows of one session; -1 = NaN, as in MindEye2's shards."""
    rows = np.flatnonzero(d.session == session)
    out = np.full((len(rows), 17), -1.0)
    image = d.image_ids[rows]
    run, trial = run_and_trial(pattern, session)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3], out[:, 4] = image, subject, session, run, trial
    out[:, 5] = rows  # global trial = (session-1)*750 + trial in session = row of the betas file
    out[:, 16] = np.isin(image, shared)
    if responses is not None:
        r = responses[responses["SESSION"] == session]
        if len(r) != len(rows):
            raise MindsearchError(f"responses.tsv has {len(r)} trials for session {session}, expected {len(rows)}",
                                  path)
        got = r["73KID"].to_numpy(np.int64) - 1
        if not np.array_equal(got, image):
            k = int(np.flatnonzero(got != image)[0])
            raise MindsearchError(f"responses.tsv disagrees with the design: session {session} trial {k} shows "
                                  f"73KID {got[k] + 1}, the design says {image[k] + 1}", path)
        for col, name in ((3, "RUN"), (4, "TRIAL"), (6, "TIME"), (7, "ISOLD"), (8, "ISCORRECT"), (9, "RT"),
                          (10, "CHANGEMIND"), (11, "ISOLDCURRENT"), (12, "ISCORRECTCURRENT"), (13, "TOTAL1"),
                          (14, "TOTAL2"), (15, "BUTTON")):
            v = r[name].to_numpy(np.float64)
            out[:, col] = np.where(np.isfinite(v), v, -1.0)
    return out


# -- the preparation ---------------------------------------------------------------------
def prepare_nsd(nsd_root, subject: int, out, *, space: str = "func1pt8mm",
                betas: str = "betas_fithrf_GLMdenoise_RR", roi: str = "nsdgeneral", sessions=None,
                images: int | None = 224, force: bool = False, log=None, bar: bool | None = None) -> dict:
    """Prepare one subject; returns the summary (also written to ``OUT/prepare_nsd_subjNN.json``).

    ``sessions``: list of session numbers (1..N) or a string for :func:`parse_sessions`.
    ``images``: square size of the images hdf5, or None to skip the stimuli. ``bar``: tqdm
    progress bar (None = only on a terminal).
    """
    from mindsearch.io import read_json

    say = log or (lambda msg: None)
    t0 = time.perf_counter()
    root, out = Path(nsd_root), Path(out)
    if space not in SPACES:
        raise MindsearchError(f"space {space!r} is not supported: prepare-nsd reads NSD's volume betas "
                              f"({', '.join(SPACES)}), not surfaces or MNI")
    if betas not in BETA_VERSIONS:
        raise MindsearchError(f"unknown betas version {betas!r} (one of {', '.join(BETA_VERSIONS)})")
    if not NAME.match(roi) or roi in (".", ".."):
        raise MindsearchError(f"ROI name {roi!r} must be a file name under roi/ (e.g. nsdgeneral)")
    if subject not in nsd_design.NSD_SESSIONS:
        raise MindsearchError(f"NSD has subjects 1-8, not {subject}")
    if images is not None and not 8 <= int(images) <= 1024:
        raise MindsearchError(f"--images must be a size in pixels (8-1024) or none, got {images}")
    if not root.is_dir():
        raise MindsearchError("NSD root not found", root)
    files = NsdFiles(root, subject, space, betas, roi)
    if not files.design.is_file():
        raise MindsearchError("not an NSD download: the experiment design is missing", files.design)
    if not (root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / space).is_dir():
        have = sorted(p.name for p in (root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}").glob("*")
                      if p.is_dir())
        raise MindsearchError(f"no betas in space {space} for subject {subject}"
                              f"{' (found: ' + ', '.join(have) + ')' if have else ''}", files.betas_dir.parent)
    session_list = sessions if isinstance(sessions, list) else parse_sessions(sessions, subject)
    if session_list[-1] > nsd_design.NSD_SESSIONS[subject]:
        raise MindsearchError(f"subject {subject} completed {nsd_design.NSD_SESSIONS[subject]} sessions, "
                              f"--sessions asks for {session_list[-1]}")
    for s in session_list:  # every input checked before any work
        p = files.session(s)
        if not p.is_file():
            fewer = f"--sessions 1-{s - 1}" if s > 2 else "--sessions 1"
            raise MindsearchError(f"betas of session {s} not found (download it, or prepare fewer sessions: "
                                  f"{fewer})" if s > 1 else f"betas of session {s} not found", p)
    if images is not None and not files.stimuli.is_file():
        raise MindsearchError("stimuli not found (download them, or pass --images none)", files.stimuli)
    if out.exists() and not out.is_dir():
        raise MindsearchError("exists and is not a directory", out)
    manifest = _check_out(out)

    design = load_nsd_design(files.design)
    d = nsd_design.design_from_arrays(design["masterordering"], design["subjectim"], N_SHARED, [subject],
                                      sessions=len(session_list), n_images=nsd_design.NSD_N_IMAGES,
                                      source="nsd_expdesign.mat").subjects[subject]
    counts = _counts(d, session_list, files.design)
    mask = read_mask(files.mask)
    n_voxels = int(mask.sum())
    expected_vox = NSDGENERAL_1PT8MM.get(subject) if (roi, space) == ("nsdgeneral", "func1pt8mm") else None
    counts["voxels"] = n_voxels
    formats = {s: _check_session(files.session(s), mask, s) for s in session_list}
    say(f"subject {subject}: {roi} in {space}: {n_voxels} voxels"
        + (f" (NSD: {expected_vox}{'' if expected_vox == n_voxels else ' -- differs!'})" if expected_vox else ""))
    say(f"sessions 1-{session_list[-1]}, {counts['protocol']}: {counts['trials']} trials; "
        f"test {counts['test_trials']} trials / {counts['test_images']} images")
    responses = read_responses(files.responses) if files.responses.is_file() else None

    summary_path = out / f"prepare_nsd_subj{subject:02d}.json"
    params = {"subject": subject, "space": space, "betas": betas, "roi": roi, "sessions": len(session_list),
              "images": images}
    if not force and summary_path.is_file():
        old = read_json(summary_path)
        if isinstance(old, dict) and old.get("parameters") == params and _still_current(out, old, files,
                                                                                        session_list):
            say(f"subject {subject} is already prepared with these settings ({summary_path.name}); --force redoes it")
            return old

    out.mkdir(parents=True, exist_ok=True)
    work = out / ".prepare-nsd" / f"subj{subject:02d}"
    if force:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    mask_sha = sha256_file(files.mask)
    per_session = _sessions(files, session_list, mask, mask_sha, work, say, bar)

    say("writing betas, behaviour shards" + (" and images" if images else ""))
    betas_path, values, betas_sha = _write_betas(out, subject, session_list, work, n_voxels)
    split_dir = _write_shards(out, subject, d, session_list, design, responses, files.responses)
    image_info = _write_images(out, files.stimuli, np.unique(d.image_ids), int(images), say, bar) \
        if images is not None else None

    inputs = {"design": _input(files.design, root), "mask": {**_input(files.mask, root), "sha256": mask_sha}}
    if responses is not None:
        inputs["responses"] = _input(files.responses, root)
    if images is not None:
        # 39 GB: a full sha256 would double the preparation's reading; size + head/tail instead
        from mindsearch.io import file_fingerprint

        inputs["stimuli"] = {"file": str(files.stimuli.relative_to(root)), "size": files.stimuli.stat().st_size,
                             "fingerprint": file_fingerprint(files.stimuli),
                             "fingerprint_method": "sha256 of size + first and last MiB (mindsearch.io.file_fingerprint)"}
    inputs["betas"] = [{k: s[k] for k in ("session", "file", "size", "sha256", "format")} for s in per_session]
    summary = {
        "format": FORMAT,
        "parameters": params,
        "nsd_root": str(root.resolve()),
        "counts": counts,
        "expected": {"trials_per_session": TRIALS_PER_SESSION,
                     "protocol": {str(k): {"name": v[0], "test_images": v[1], "test_trials": v[2]}
                                  for k, v in PROTOCOLS.items()},
                     "nsdgeneral_voxels_1pt8mm": expected_vox},
        "scale": f"float32 percent signal change = NSD's int16 betas / {BETA_SCALE:g} (no z-scoring: the data "
                 "layer z-scores per session with training-trial statistics)",
        "orientation": "voxels in the mask's C order over (X, Y, Z); the hdf5 betas (750, Z, Y, X) are "
                       "indexed with the Fortran-order flat index of (X, Y, Z)",
        "betas_formats": sorted(set(formats.values())),
        "behaviour": "responses.tsv" if responses is not None else "design only (run and trial-in-run from "
                     "stimpattern; columns 6-15 are -1)",
        "inputs": inputs,
        "outputs": {
            "betas": {"file": betas_path.name, "shape": [counts["trials"], n_voxels], "dtype": "float32",
                      "values_sha256": betas_sha, "values": values},
            "behaviour": f"wds/subj{subject:02d}/train/0..{session_list[-1] - 1}.tar + {split_dir}/0.tar",
            "images": image_info,
        },
        "sessions": per_session,
        "versions": _versions(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _write_manifest(out, manifest, subject, n_voxels, summary_path.name)
    from mindsearch.io import write_json

    write_json(summary_path, summary)
    shutil.rmtree(work, ignore_errors=True)
    try:
        (out / ".prepare-nsd").rmdir()
    except OSError:
        pass  # another subject's work is still there
    return summary


def _check_out(out: Path) -> dict:
    """An existing OUT must be an NSD preparation (or empty): never mix with a simulation."""
    from mindsearch.io import read_json

    mpath = out / "mindsearch.json"
    if mpath.is_file():
        m = read_json(mpath)
        if not isinstance(m, dict) or m.get("source") != "nsd" or m.get("layout") != "mindeye2":
            raise MindsearchError("OUT holds another dataset (not an NSD preparation); choose an empty directory",
                                  mpath)
        return m
    if out.is_dir() and any(not OWN_OUTPUTS.match(p.name) for p in out.iterdir()):
        raise MindsearchError("OUT is not empty and holds no NSD preparation; choose an empty directory", out)
    return {}


def _counts(d, session_list: list[int], design_path: Path) -> dict:
    test = d.is_test
    n = len(session_list)
    reps = np.bincount(np.unique(d.image_ids, return_counts=True)[1])
    counts = {
        "sessions": n, "trials_per_session": TRIALS_PER_SESSION, "trials": int(d.n_trials),
        "train_trials": int((~test).sum()), "test_trials": int(test.sum()),
        "train_images": int(len(np.unique(d.image_ids[~test]))), "test_images": int(len(np.unique(d.image_ids[test]))),
        "unique_images": int(len(np.unique(d.image_ids))),
        "repetitions": {str(k): int(v) for k, v in enumerate(reps) if v},
        "protocol": PROTOCOLS[n][0] if n in PROTOCOLS else f"custom ({n} sessions)",
    }
    if d.n_trials != n * TRIALS_PER_SESSION:
        raise MindsearchError(f"the design gives {d.n_trials} trials for {n} sessions, NSD has "
                              f"{n * TRIALS_PER_SESSION}", design_path)
    if n in PROTOCOLS:
        _, images, trials = PROTOCOLS[n]
        if (counts["test_images"], counts["test_trials"]) != (images, trials):
            raise MindsearchError(f"not NSD's experiment design: {n} sessions give {counts['test_images']} test "
                                  f"images / {counts['test_trials']} test trials, NSD's have {images} / {trials}",
                                  design_path)
    return counts


def _input(path: Path, root: Path) -> dict:
    return {"file": str(path.relative_to(root)), "size": path.stat().st_size, "sha256": sha256_file(path)}


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mindsearch", "numpy", "h5py", "nibabel"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _progress(total: int, unit: str, bar: bool | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, disable=None if bar is None else not bar,
                leave=False)


def _check_session(path: Path, mask: np.ndarray, session: int) -> str:
    """Open a session's header (shape, dtype, orientation) without reading its betas."""
    reader = SessionBetas(path, mask, session)
    reader.close()
    return reader.format


def _sessions(files: NsdFiles, session_list, mask, mask_sha: str, work: Path, say, bar) -> list[dict]:
    """Mask every session into ``work/session_NN.npy`` (skipping finished ones); their records."""
    from mindsearch.io import atomic_path, read_json, write_json

    records = []
    done = 0
    with _progress(len(session_list) * TRIALS_PER_SESSION, "trial", bar, f"subj{files.subject:02d} betas") as pbar:
        for s in session_list:
            path = files.session(s)
            key = {"version": WORK_VERSION, "input": _stamp(path), "mask_sha256": mask_sha, "scale": BETA_SCALE}
            npy, meta = work / f"session_{s:02d}.npy", work / f"session_{s:02d}.json"
            if npy.is_file() and meta.is_file():
                try:
                    rec = read_json(meta)
                except MindsearchError:
                    rec = None
                if isinstance(rec, dict) and rec.get("key") == key:
                    records.append(rec["record"])
                    done += 1
                    pbar.update(TRIALS_PER_SESSION)
                    continue
            t = time.perf_counter()
            reader = SessionBetas(path, mask, s)
            try:
                h = hashlib.sha256()
                with atomic_path(npy) as tmp:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                    shape=(TRIALS_PER_SESSION, int(mask.sum())))
                    for lo, hi, block in reader.blocks():
                        arr[lo:hi] = block
                        h.update(np.ascontiguousarray(block, "<f4").tobytes())
                        pbar.update(hi - lo)
                    arr.flush()
                    del arr
                fmt = reader.format
            finally:
                reader.close()
            record = {"session": s, "file": str(path.relative_to(files.root)), "format": fmt,
                      "size": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns,
                      "sha256": sha256_file(path), "trials": TRIALS_PER_SESSION,
                      "values_sha256": h.hexdigest(), "seconds": round(time.perf_counter() - t, 2)}
            write_json(meta, {"key": key, "record": record})  # written last: marks the session finished
            records.append(record)
    if done:
        say(f"resumed: {done} of {len(session_list)} sessions were already masked")
    return records


def _write_betas(out: Path, subject: int, session_list, work: Path, n_voxels: int):
    """Stream the sessions' .npy into the betas hdf5 (atomic); value range and checksum."""
    import h5py

    from mindsearch.io import atomic_path

    path = out / f"betas_all_subj{subject:02d}_fp32_renorm.hdf5"
    h = hashlib.sha256()
    lo_v, hi_v, total, total_sq, count = np.inf, -np.inf, 0.0, 0.0, 0
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("betas", (len(session_list) * TRIALS_PER_SESSION, n_voxels), dtype="f4")
            ds.attrs["units"] = f"percent signal change (NSD int16 / {BETA_SCALE:g})"
            ds.attrs["source"] = "mindsearch data prepare-nsd"
            for i, s in enumerate(session_list):
                block = np.load(work / f"session_{s:02d}.npy", mmap_mode="r", allow_pickle=False)
                block = np.asarray(block)
                a = i * TRIALS_PER_SESSION
                ds[a:a + TRIALS_PER_SESSION] = block
                h.update(np.ascontiguousarray(block, "<f4").tobytes())
                wide = block.astype(np.float64).ravel()
                lo_v, hi_v = min(lo_v, float(wide.min())), max(hi_v, float(wide.max()))
                total += float(wide.sum())
                total_sq += float(np.dot(wide, wide))
                count += wide.size
    mean = total / count
    values = {"min": lo_v, "max": hi_v, "mean": mean, "std": max(total_sq / count - mean * mean, 0.0) ** 0.5}
    return path, values, h.hexdigest()


def _write_shards(out: Path, subject: int, d, session_list, design: dict, responses, responses_path: Path) -> str:
    """``wds/subjNN/``: one train tar per session, the test trials in one tar (atomic)."""
    from mindsearch.io import atomic_path
    from mindsearch.simulate.shards import ShardWriter, npy_bytes

    # 40 sessions or a custom count: new_test/ (the data layer's default); exactly 37: test/,
    # the folder MindEye2 uses for the 37-session protocol.
    split_dir = "test" if len(session_list) == 37 else "new_test"
    shared = design["sharedix"]
    test_rows = []
    with atomic_path(out / "wds" / f"subj{subject:02d}") as tmp:
        (tmp / "train").mkdir(parents=True)
        (tmp / split_dir).mkdir()
        for s in session_list:
            rows = behav_rows(subject, d, s, design["stimpattern"], responses, shared, responses_path)
            with ShardWriter(tmp / "train" / f"{s - 1}.tar") as w:
                for row in rows:
                    if row[16] == 1:
                        test_rows.append(row)
                    else:
                        w.add(f"sample{int(row[5]):06d}", {"behav.npy": npy_bytes(row[None])})
        with ShardWriter(tmp / split_dir / "0.tar") as w:
            for row in test_rows:
                w.add(f"sample{int(row[5]):06d}", {"behav.npy": npy_bytes(row[None])})
    return split_dir


def _write_images(out: Path, stimuli: Path, ids: np.ndarray, size: int, say, bar) -> dict:
    """``images`` (73000, 3, size, size) float16 in [0, 1], row = image id; only the rows this
    dataset's trials show are written (chunked, unwritten rows take no space). Rows already
    written by another subject's preparation are kept."""
    import h5py
    from PIL import Image

    from mindsearch.data.arrays import h5_dataset, open_h5
    from mindsearch.io import atomic_path

    name = "coco_images_224_float16.hdf5" if size == 224 else f"images_{size}_float16.hdf5"
    path = out / name
    src = open_h5(stimuli)
    try:
        brick = h5_dataset(src, ("imgBrick",), stimuli)
        shape = tuple(int(s) for s in brick.shape)
        if len(shape) != 4 or shape[3] != 3 or shape[0] != nsd_design.NSD_N_IMAGES or brick.dtype != np.uint8:
            raise MindsearchError(f"imgBrick is {brick.dtype} {shape}, NSD's is uint8 (73000, 425, 425, 3)", stimuli)
        old_written = np.zeros(shape[0], bool)
        if path.is_file():
            with h5py.File(path, "r") as f:
                if "written" in f and f["images"].shape == (shape[0], 3, size, size):
                    old_written = np.asarray(f["written"][:], bool)
        todo = ids[~old_written[ids]]
        if todo.size == 0:
            return {"file": name, "shape": [shape[0], 3, size, size], "written": int(old_written.sum()), "added": 0}
        written = old_written.copy()
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            ds = f.create_dataset("images", (shape[0], 3, size, size), dtype="f2", chunks=(1, 3, size, size))
            ds.attrs["source"] = "NSD nsd_stimuli.hdf5 imgBrick, resized with PIL bicubic, / 255"
            if old_written.any():
                with h5py.File(path, "r") as old:
                    for i in np.flatnonzero(old_written):
                        ds[int(i)] = old["images"][int(i)]
            with _progress(len(todo), "image", bar, f"images {size}px") as pbar:
                for i in todo:
                    pixels = np.asarray(brick[int(i)])
                    if size != shape[1] or size != shape[2]:
                        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC))
                    ds[int(i)] = (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1).astype(np.float16)
                    written[int(i)] = True
                    pbar.update(1)
            f.create_dataset("written", data=written)
    finally:
        src.close()
    say(f"images: {len(todo)} written at {size} px ({int(written.sum())} in {name})")
    return {"file": name, "shape": [shape[0], 3, size, size], "written": int(written.sum()), "added": int(len(todo))}


def _still_current(out: Path, summary: dict, files: NsdFiles, session_list) -> bool:
    """A finished preparation is reused only if its outputs exist and its inputs look unchanged
    (the sessions' sizes and mtimes; the design's and mask's sha256 -- small files)."""
    o, i = summary.get("outputs", {}), summary.get("inputs", {})
    wanted = [o.get("betas", {}).get("file")] + ([o["images"].get("file")] if o.get("images") else [])
    if not all(f and (out / Path(f).name).is_file() for f in wanted):
        return False
    stamps = [(r.get("size"), r.get("mtime_ns")) for r in summary.get("sessions", [])]
    if stamps != [tuple(_stamp(files.session(s)).values()) for s in session_list]:
        return False
    return (i.get("design", {}).get("sha256") == sha256_file(files.design)
            and i.get("mask", {}).get("sha256") == sha256_file(files.mask))


def _write_manifest(out: Path, manifest: dict, subject: int, n_voxels: int, summary_name: str) -> None:
    from mindsearch.io import write_json

    m = dict(manifest) if manifest else {"format": "mindsearch-dataset/1", "layout": "mindeye2",
                                         "simulated": False, "source": "nsd", "subjects": [], "n_voxels": {},
                                         "preparations": {}}
    m["subjects"] = sorted({*m.get("subjects", []), subject})
    m.setdefault("n_voxels", {})[str(subject)] = n_voxels
    m.setdefault("preparations", {})[str(subject)] = summary_name
    m["betas_units"] = f"percent signal change (NSD int16 / {BETA_SCALE:g})"
    write_json(out / "mindsearch.json", m)
