"""From a subject's trials to model inputs: per-session z-scoring and repetition handling.

z-scoring follows MindEye2 (paper A.2): voxel-wise, per session, mean/std from that
session's *training* trials only, computed before any session subsetting, so test trials
never leak into the statistics. A session without (enough) training trials uses the
statistics pooled over all training trials.

Repetitions: ``average="betas"`` averages the z-scored repetitions of each image before the
model (MindEye1, Brain-Diffuser); ``average="none"`` keeps single trials and returns
``groups`` so the caller averages model outputs (MindEye2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mindsearch.data.arrays import CHUNK_BYTES
from mindsearch.errors import MindsearchError

# A (near-)constant voxel gets std 1, as sklearn's StandardScaler does: it becomes 0
# instead of blowing up test trials by 1/eps.
STD_FLOOR = 1e-6
MIN_TRAIN_TRIALS = 2


@dataclass
class ZScore:
    """Per-session, per-voxel training statistics, plus pooled ones for unknown sessions.

    The one z-scoring object: the data layer fits it, runs store it (``zscore.safetensors``)
    and apply it to new voxels.
    """

    mean: np.ndarray  # (n_sessions, V)
    std: np.ndarray  # (n_sessions, V), floored
    sessions: list[int]
    global_mean: np.ndarray  # (V,) pooled over all training trials
    global_std: np.ndarray  # (V,)

    def row_of(self, sessions) -> np.ndarray:
        """Index into mean/std per session; -1 for sessions without their own statistics."""
        sessions = np.asarray(sessions, dtype=np.int64).ravel()
        known = np.asarray(self.sessions, dtype=np.int64)
        if known.size == 0:
            return np.full(sessions.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(known, sessions), 0, known.size - 1)
        return np.where(known[pos] == sessions, pos, -1)

    def apply(self, voxels, sessions=None) -> np.ndarray:
        """z-score rows with their session's statistics (pooled for None/unknown sessions)."""
        voxels = np.asarray(voxels, dtype=np.float32)
        if sessions is None:
            return ((voxels - self.global_mean) / self.global_std).astype(np.float32)
        rows = self.row_of(np.broadcast_to(np.asarray(sessions), voxels.shape[:1]))
        mean = np.vstack([self.mean, self.global_mean[None]])[rows]  # row -1 = pooled
        std = np.vstack([self.std, self.global_std[None]])[rows]
        return ((voxels - mean) / std).astype(np.float32)

    def to_tensors(self) -> dict:
        """For RUN/zscore.safetensors."""
        return {"mean": self.mean, "std": self.std, "sessions": np.asarray(self.sessions, np.int64),
                "global_mean": self.global_mean, "global_std": self.global_std}

    @classmethod
    def from_tensors(cls, t: dict) -> "ZScore":
        return cls(np.asarray(t["mean"], np.float32), np.asarray(t["std"], np.float32),
                   [int(s) for s in np.asarray(t["sessions"]).ravel()],
                   np.asarray(t["global_mean"], np.float32), np.asarray(t["global_std"], np.float32))


class _Moments:
    """Count/mean/M2 merged chunk by chunk (Chan et al.): exact, bounded memory."""

    def __init__(self, n_voxels: int):
        self.n = 0
        self.mean = np.zeros(n_voxels, np.float64)
        self.m2 = np.zeros(n_voxels, np.float64)

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        rows = rows.astype(np.float64)
        n_b = rows.shape[0]
        mean_b = rows.mean(axis=0)
        m2_b = ((rows - mean_b) ** 2).sum(axis=0)
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta ** 2 * (self.n * n_b / n)
        self.n = n

    def std(self) -> np.ndarray:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return np.where(std < STD_FLOOR, 1.0, std)


def fit_zscore(ds, subject: int, voxels: np.ndarray | None = None, sessions=None) -> ZScore:
    """Per-session statistics from the subject's training trials.

    ``voxels``/``sessions``: all training trials already in memory and their sessions (all of them), to avoid a
    second read; otherwise they are streamed from disk in bounded chunks.
    """
    table = ds.trials[ds.trials["subject"] == subject]
    all_sessions = sorted(int(s) for s in table["session"].unique())
    train = table[table["split"] == "train"]
    n_voxels = ds.n_voxels(subject)
    per_session = {s: _Moments(n_voxels) for s in all_sessions}
    pooled = _Moments(n_voxels)
    train_trials = train["trial"].to_numpy()
    train_sessions = train["session"].to_numpy()

    def add(block: np.ndarray, block_sessions: np.ndarray) -> None:
        pooled.add(block)
        for s in np.unique(block_sessions):
            per_session[int(s)].add(block[block_sessions == s])

    if voxels is not None:
        add(np.asarray(voxels), np.asarray(sessions))
    else:
        step = max(1, CHUNK_BYTES // (4 * n_voxels))
        for lo in range(0, len(train_trials), step):
            add(ds.voxels(subject, train_trials[lo:lo + step]), train_sessions[lo:lo + step])
    if pooled.n == 0:
        raise MindsearchError(f"subject {subject} has no training trials to z-score with", ds.root)
    g_mean, g_std = pooled.mean.astype(np.float32), pooled.std().astype(np.float32)
    means, stds = [], []
    for s in all_sessions:
        m = per_session[s]
        own = m.n >= MIN_TRAIN_TRIALS
        means.append(m.mean.astype(np.float32) if own else g_mean)
        stds.append(m.std().astype(np.float32) if own else g_std)
    shape = (len(all_sessions), n_voxels)
    return ZScore(np.asarray(means, np.float32).reshape(shape), np.asarray(stds, np.float32).reshape(shape),
                  all_sessions, g_mean, g_std)


@dataclass
class Split:
    subject: int
    split: str
    average: str
    voxels: np.ndarray  # (n, V) float32
    image_ids: np.ndarray  # (n,) int64
    trials: np.ndarray  # (n,) trial per row (average="betas": first trial of the image)
    sessions: np.ndarray  # (n,) session per row (average="betas": of the first trial)
    groups: list[np.ndarray]  # row indices per unique image, images in ascending id order
    group_ids: np.ndarray  # image id of each group
    n_reps: np.ndarray  # trials averaged per row (1 for average="none")
    zscore: ZScore | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.image_ids)


def load_split(ds, subject: int, split: str, zscore: bool = True, average: str = "none",
               sessions=None, stats: ZScore | None = None) -> Split:
    """A subject's train or test trials as model inputs (see module docstring).

    ``sessions``: session numbers to keep (None = all); statistics are still per session
    from training trials. ``stats``: reuse statistics (e.g. the train split's) instead of
    fitting them again.
    """
    if split not in ("train", "test"):
        raise MindsearchError(f"split must be 'train' or 'test', not {split!r}", ds.root)
    if average not in ("none", "betas"):
        raise MindsearchError(f"average must be 'none' or 'betas', not {average!r}", ds.root)
    table = ds.trials[ds.trials["subject"] == subject]
    if table.empty:
        raise MindsearchError(f"subject {subject} is not in this dataset (subjects: {ds.subjects})", ds.root)
    rows = table[table["split"] == split]
    if sessions is not None:
        wanted = sorted({int(s) for s in np.atleast_1d(sessions)})
        unknown = sorted(set(wanted) - set(int(s) for s in table["session"].unique()))
        if unknown:
            raise MindsearchError(f"subject {subject} has no session {unknown[0]}", ds.root)
        rows = rows[rows["session"].isin(wanted)]
    trials = rows["trial"].to_numpy(np.int64)
    row_sessions = rows["session"].to_numpy(np.int64)
    image_ids = rows["image_id"].to_numpy(np.int64)
    voxels = ds.voxels(subject, trials)
    if zscore and stats is None:
        whole_train = split == "train" and sessions is None
        stats = fit_zscore(ds, subject, voxels, row_sessions) if whole_train else fit_zscore(ds, subject)
    if zscore:
        voxels = stats.apply(voxels, row_sessions)
    group_ids, groups = group_by_image(image_ids)
    if average == "none":
        return Split(subject, split, average, voxels, image_ids, trials, row_sessions, groups, group_ids,
                     np.ones(len(trials), np.int64), stats)
    n_reps = np.array([len(g) for g in groups], np.int64)
    first = np.array([g[0] for g in groups], np.int64)
    if groups:
        order = np.concatenate(groups)
        starts = np.concatenate([[0], np.cumsum(n_reps)[:-1]])
        mean = np.add.reduceat(voxels[order].astype(np.float64), starts, axis=0) / n_reps[:, None]
    else:
        mean = np.empty((0, voxels.shape[1]))
    return Split(subject, split, average, mean.astype(np.float32), group_ids, trials[first], row_sessions[first],
                 [np.array([i]) for i in range(len(groups))], group_ids, n_reps, stats)


def group_by_image(image_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unique image ids (ascending) and, for each, the row indices showing it (in row order)."""
    order = np.argsort(image_ids, kind="stable")
    uniq, starts = np.unique(image_ids[order], return_index=True)
    return uniq.astype(np.int64), [g.astype(np.int64) for g in np.split(order, starts[1:])] if uniq.size else []
