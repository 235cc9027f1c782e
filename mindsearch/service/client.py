"""Talking to a running ``mindsearch serve`` from the CLI: stdlib only, so a query through the
service costs the CLI no torch, LanceDB or FAISS import (and not even numpy for a .npy file)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

from mindsearch.errors import MindsearchError

NPY_TYPE = "application/x-npy"


class ServiceError(MindsearchError):
    """The service refused a request (4xx): its message, and the HTTP status."""

    def __init__(self, message: str, status: int, path=None):
        super().__init__(message, path)
        self.status = status


def health(url: str, timeout: float = 0.5) -> dict | None:
    """The service's /healthz answer, or None when nothing answers at ``url``."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def request(url: str, token: str | None, route: str, *, params: dict | None = None, body: bytes | None = None,
            content_type: str = "application/json", timeout: float = 60.0):
    """One call; 4xx answers raise ServiceError with the service's message."""
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None}, doseq=False)
    full = url.rstrip("/") + route + (f"?{query}" if query else "")
    headers = {"Content-Type": content_type} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(full, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except ValueError:
            detail = ""
        raise ServiceError(f"the service at {url} says: {detail or exc.reason} (HTTP {exc.code})",
                           exc.code) from None


def query(url: str, token: str | None, *, npy: bytes | None = None, payload: dict | None = None,
          params: dict | None = None, timeout: float = 60.0) -> list[list[dict]]:
    """POST /v1/query: an .npy body with ``params`` as query parameters, or a JSON ``payload``."""
    if npy is not None:
        answer = request(url, token, "/v1/query", params=params, body=npy, content_type=NPY_TYPE, timeout=timeout)
    else:
        answer = request(url, token, "/v1/query", body=json.dumps(payload).encode(), timeout=timeout)
    return answer["hits"]


def query_service(*, voxels=None, embedding=None, trial_voxels=None, k: int = 16, index=None, run=None,
                  subject=None, session=None, zscore: bool = True, rerank=None,
                  **settings) -> list[list[dict]] | None:
    """``mindsearch query`` through the service the config names; None: answer in-process instead
    (no service recorded, none answering, or it does not serve this index or run). ``settings``
    (e.g. ``shortlist=16``) travel as query parameters."""
    import sys
    from pathlib import Path

    from mindsearch import config

    service = config.load().get("service") or {}
    url = service.get("url")
    if not url or health(url) is None:
        return None
    if trial_voxels is not None:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(trial_voxels, np.float32), allow_pickle=False)
        body = buf.getvalue()
    else:
        path = Path(voxels or embedding)
        if not path.is_file():
            raise MindsearchError("file not found", path)
        body = path.read_bytes()
    if isinstance(session, (list, tuple)):
        session = ",".join(str(int(s)) for s in session)
    params = {"kind": "embedding" if embedding else "voxels", "k": k, "index": index,
              "run": str(Path(run).resolve()) if run and not embedding else None, "subject": subject,
              "session": session, "zscore": None if zscore else "false",
              "rerank": None if rerank is None else str(bool(rerank)).lower(), **settings}
    try:
        return query(url, service.get("token"), npy=body, params=params)
    except ServiceError as exc:
        if exc.status == 404 and ("not served" in str(exc)):
            print(f"note: {exc}; answering in-process", file=sys.stderr)
            return None
        raise MindsearchError(str(exc).split(" says: ", 1)[-1], voxels or embedding) from None
