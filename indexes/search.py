"""One search over a FAISS index, with MindEye1's two-stage token re-rank; shared by readers and writers.

Re-ranking (MindEye1's LAION procedure): the pooled search takes a shortlist of ``shortlist``
candidates (16 by default), which are re-ordered by cosine between the flattened, normalised token
embeddings. The shortlist does not depend on ``k``: with ``k`` above it the remaining hits follow
in pooled order, so the top hits never change with ``k``. Each hit's score kind says which cosine
it carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mindsearch.indexes import faiss_index
from mindsearch.indexes.errors import InputError

RERANK_SHORTLIST = 16  # MindEye1's LAION second-order selection: 16 candidates, best token cosine wins
SCORE_KINDS = ("pooled_cosine", "token_cosine", "hubness_csls")


class SearchResult(tuple):
    """``(ids (q, k) int64, scores (q, k) float32)`` that also carries ``info`` (attribution).

    ``info["reranked"]`` hits at the top of each row carry token cosines, the rest pooled cosines
    (:meth:`score_kind`).
    """

    info: dict

    def __new__(cls, ids: np.ndarray, scores: np.ndarray, info: dict):
        self = super().__new__(cls, (ids, scores))
        self.info = info
        return self

    @property
    def ids(self) -> np.ndarray:
        return self[0]

    @property
    def scores(self) -> np.ndarray:
        return self[1]

    def score_kind(self, rank0: int) -> str:
        return "token_cosine" if rank0 < int(self.info.get("reranked", 0)) else "pooled_cosine"


def search(index, queries: np.ndarray, k: int, *, rows=None, tokens_shape: tuple[int, int] | None = None,
           rerank_tokens: Any = None, shortlist: int = RERANK_SHORTLIST, info: dict | None = None,
           path: str | Path | None = None) -> SearchResult:
    """Top-``k`` of unit ``queries`` (q, d) in ``index``; ``rerank_tokens`` (q, T, D) re-ranks the shortlist.

    ``rows`` provides stored tokens (:mod:`indexes.rows`); ``info`` is copied into the result.
    """
    k = int(k)
    if k <= 0:
        raise InputError(f"k must be positive, got {k}", path)
    info = dict(info or {})
    if rerank_tokens is None:
        ids, scores = faiss_index.search(index, queries, k)
        return SearchResult(ids, scores, info | {"k": k, "rerank": None, "reranked": 0})
    shortlist = int(shortlist)
    if shortlist <= 0:
        raise InputError(f"shortlist must be positive, got {shortlist}", path)
    if tokens_shape is None:
        raise InputError("this collection stores no tokens; cannot re-rank", path)
    t, d = tokens_shape
    nq = len(queries)
    rt = np.asarray(rerank_tokens, dtype=np.float32)
    if rt.ndim < 2 or rt.shape[0] != nq:
        raise InputError(f"rerank_tokens: expected {nq} rows of {t}x{d} tokens, got shape {rt.shape}", path)
    rt = faiss_index.as_vectors(rt.reshape(nq, -1), t * d, path=path, what="rerank_tokens")
    cand, pooled = faiss_index.search(index, queries, max(shortlist, k))
    head = cand[:, :shortlist]
    tok, present = rows.tokens(head, t * d)
    valid = (head >= 0) & present
    norms = np.linalg.norm(tok, axis=2)
    sims = np.einsum("qmf,qf->qm", tok, rt) / np.maximum(norms, 1e-30)
    sims = np.where(valid, sims, -np.inf).astype(np.float32)
    order = np.argsort(-sims, axis=1, kind="stable")
    head_ids = np.take_along_axis(np.where(valid, head, -1), order, axis=1)
    head_scores = np.take_along_axis(sims, order, axis=1)
    ids = np.concatenate([head_ids, cand[:, shortlist:]], axis=1)[:, :k]
    scores = np.concatenate([head_scores, pooled[:, shortlist:]], axis=1)[:, :k]
    return SearchResult(ids, scores, info | {"k": k, "rerank": {"column": "tokens", "shortlist": shortlist},
                                             "reranked": min(shortlist, k)})
