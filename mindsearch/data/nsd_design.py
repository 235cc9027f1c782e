"""The NSD experiment design: the real one from ``nsd_expdesign.mat``, or a synthetic twin.

NSD shows each subject 10,000 images three times over 40 sessions of 750 trials, in one
``masterordering`` shared by all subjects; the first 1,000 positions of every subject's image
list (``subjectim``) are the ``shared1000`` images, the test set. Everything downstream (the
simulator, and tests that want the real trial structure) goes through :func:`design_from_arrays`
so the synthetic design has exactly the real one's structure, only smaller.

Conventions here: ``image_id`` is 0-based (NSD id - 1, the row of the 73k image file); trials,
sessions and subjects follow docs/interfaces.md (trial 0-based, session and subject 1-based).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mindsearch.errors import MindsearchError

NSD_TRIALS_PER_SESSION = 750
NSD_N_IMAGES = 73000
# Sessions each NSD subject actually completed (subjects 3, 4, 6, 8 stopped early).
NSD_SESSIONS = {1: 40, 2: 40, 3: 32, 4: 30, 5: 40, 6: 32, 7: 40, 8: 30}

_FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "nsd" / "nsd_expdesign.mat"


@dataclass
class SubjectDesign:
    """One subject's trials in presentation order; row i is global trial i (the betas row)."""

    subject: int
    image_ids: np.ndarray  # (n_trials,) int64
    session: np.ndarray  # (n_trials,) int64, 1-based
    trial_in_session: np.ndarray  # (n_trials,) int64, 0-based
    is_test: np.ndarray  # (n_trials,) bool: a shared1000-style image
    rep: np.ndarray = field(default=None)  # (n_trials,) 0-based repetition of that image

    def __post_init__(self):
        if self.rep is None:
            self.rep = repetition_index(self.image_ids)

    @property
    def n_trials(self) -> int:
        return len(self.image_ids)

    @property
    def n_sessions(self) -> int:
        return int(self.session.max()) if len(self.session) else 0

    def test_image_ids(self) -> np.ndarray:
        return np.unique(self.image_ids[self.is_test])


@dataclass
class Design:
    subjects: dict  # subject -> SubjectDesign
    shared_ids: np.ndarray  # sorted image ids shown to every subject (the test set)
    n_images: int  # size of the image-id space (rows of the image file)
    trials_per_session: int
    source: str  # "nsd_expdesign.mat" or "synthetic"


def repetition_index(image_ids: np.ndarray) -> np.ndarray:
    """0-based count of earlier trials showing the same image (the ``rep`` column)."""
    image_ids = np.asarray(image_ids)
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ids)) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(sorted_ids)]))
    rep = np.empty(len(image_ids), dtype=np.int64)
    rep[order] = np.arange(len(sorted_ids)) - run_start
    return rep


def find_expdesign() -> Path | None:
    """The real design file: $MINDSEARCH_NSD_EXPDESIGN, else ../shared/fixtures beside the repo."""
    env = os.environ.get("MINDSEARCH_NSD_EXPDESIGN")
    if env:
        return Path(env) if Path(env).is_file() else None
    return _FIXTURE if _FIXTURE.is_file() else None


def load_expdesign(path: str | Path) -> dict:
    """Read ``nsd_expdesign.mat``: 0-based ``masterordering`` (30000,), ``subjectim`` (8, 10000)
    as 0-based image ids, ``sharedix`` (1000,) 0-based ids."""
    path = Path(path)
    if not path.is_file():
        raise MindsearchError("file not found", path)
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        master = np.asarray(mat["masterordering"], dtype=np.int64).ravel() - 1
        subjectim = np.asarray(mat["subjectim"], dtype=np.int64) - 1
        shared = np.asarray(mat["sharedix"], dtype=np.int64).ravel() - 1
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise MindsearchError(f"not an NSD experiment-design file ({exc})", path) from None
    if master.min() < 0 or master.max() >= subjectim.shape[1]:
        raise MindsearchError("masterordering indexes outside subjectim", path)
    return {"masterordering": master, "subjectim": subjectim, "sharedix": np.sort(shared)}


def design_from_arrays(
    masterordering: np.ndarray,
    subjectim: np.ndarray,
    n_shared: int,
    subjects,
    *,
    trials_per_session: int = NSD_TRIALS_PER_SESSION,
    n_images: int | None = None,
    sessions: dict | int | None = None,
    source: str = "synthetic",
) -> Design:
    """NSD's rule: trial t of subject s shows ``subjectim[s-1, masterordering[t]]``; a test
    trial iff ``masterordering[t] < n_shared``. ``sessions`` truncates a subject's trials to
    the sessions they completed (int for all, or a dict per subject)."""
    masterordering = np.asarray(masterordering, dtype=np.int64)
    subjectim = np.asarray(subjectim, dtype=np.int64)
    out = {}
    for s in subjects:
        s = int(s)
        if not 1 <= s <= subjectim.shape[0]:
            raise MindsearchError(f"subject {s} is not in the design (1..{subjectim.shape[0]})")
        n_sess = sessions.get(s) if isinstance(sessions, dict) else sessions
        n = len(masterordering) if n_sess is None else min(len(masterordering), int(n_sess) * trials_per_session)
        local = masterordering[:n]
        t = np.arange(n, dtype=np.int64)
        out[s] = SubjectDesign(
            subject=s,
            image_ids=subjectim[s - 1, local],
            session=t // trials_per_session + 1,
            trial_in_session=t % trials_per_session,
            is_test=local < n_shared,
        )
    shared = np.sort(subjectim[0, :n_shared])
    if n_images is None:
        n_images = int(subjectim.max()) + 1
    return Design(out, shared, int(n_images), int(trials_per_session), source)


def real_design(subjects, path: str | Path | None = None, *, sessions: dict | int | None = None) -> Design:
    """The real NSD design (default sessions: what each subject completed)."""
    path = path or find_expdesign()
    if path is None:
        raise MindsearchError("nsd_expdesign.mat not found (set MINDSEARCH_NSD_EXPDESIGN)")
    d = load_expdesign(path)
    if not np.array_equal(np.sort(d["subjectim"][0, :1000]), d["sharedix"]):
        raise MindsearchError("the first 1000 images of subject 1 are not sharedix", path)
    return design_from_arrays(
        d["masterordering"], d["subjectim"], 1000, subjects,
        n_images=NSD_N_IMAGES, sessions=NSD_SESSIONS if sessions is None else sessions,
        source="nsd_expdesign.mat",
    )


def synthetic_arrays(
    n_shared: int, n_unique: int, *, reps: int = 3, n_subjects: int = 8, seed: int = 0
) -> dict:
    """A design with NSD's structure: ``n_shared`` test images common to all ``n_subjects``
    plus ``n_unique`` per subject, each shown ``reps`` times, repetitions spread over the run
    (each presentation at an independent uniform time, so repeats fall in different sessions
    and sometimes in the same one, as in NSD). Image ids are a random permutation of
    ``0..n_shared + n_subjects*n_unique - 1`` so the test set is not a contiguous id block."""
    if n_shared < 1 or n_unique < 0 or reps < 1:
        raise MindsearchError(f"bad design sizes: n_shared={n_shared} n_unique={n_unique} reps={reps}")
    rng = np.random.default_rng([seed, 0x5E5])
    per_subject = n_shared + n_unique
    n_images = n_shared + n_subjects * n_unique
    perm = rng.permutation(n_images)
    shared = np.sort(perm[:n_shared])
    subjectim = np.empty((n_subjects, per_subject), dtype=np.int64)
    for s in range(n_subjects):
        subjectim[s, :n_shared] = shared
        subjectim[s, n_shared:] = perm[n_shared + s * n_unique : n_shared + (s + 1) * n_unique]
    times = rng.random((per_subject, reps))
    local = np.repeat(np.arange(per_subject), reps)
    master = local[np.argsort(times.ravel(), kind="stable")]
    return {"masterordering": master, "subjectim": subjectim, "sharedix": shared, "n_images": n_images}


def synthetic_design(
    subjects, n_shared: int, n_unique: int, *, reps: int = 3,
    trials_per_session: int = NSD_TRIALS_PER_SESSION, seed: int = 0, n_subjects: int = 8,
    sessions: dict | int | None = None,
) -> Design:
    """The synthetic twin of :func:`real_design` (see :func:`synthetic_arrays`)."""
    a = synthetic_arrays(n_shared, n_unique, reps=reps, n_subjects=n_subjects, seed=seed)
    return design_from_arrays(
        a["masterordering"], a["subjectim"], n_shared, subjects,
        trials_per_session=trials_per_session, n_images=a["n_images"], sessions=sessions,
        source="synthetic",
    )
