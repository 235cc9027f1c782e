"""What the service does, without HTTP: one long-lived Engine, the runs it serves, the dataset
its page picks trials from, and thumbnails. Every refusal is a ``Refused`` (a MindsearchError
with an HTTP status), so the web layer only translates.

Runs and indexes are named, never opened from a path a request sends: a request names a
served run by its name (or its exact path), an index by a name the engine lists.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from mindsearch.errors import InputError, MindsearchError
from mindsearch.indexes.remote import is_remote

NPY_MAGIC = b"\x93NUMPY"
MAX_ROWS = 1024  # query rows per request
MAX_K = 1000
THUMB_SIZES = (64, 128, 256, 512)
THUMB_CACHE = 2048


class Refused(MindsearchError):
    """A request the service will not answer: its HTTP status and a short code."""

    def __init__(self, problem: str, status: int = 400, code: str = "bad_request"):
        super().__init__(problem)
        self.status, self.code = status, code


def hit_dict(hit) -> dict:
    """One hit as the service and ``query --json`` print it (image hits are ``Hit``s, brain hits dicts)."""
    return hit.as_dict() if hasattr(hit, "as_dict") else dict(hit)


def parse_npy(body: bytes, what: str) -> np.ndarray:
    """A numeric array from .npy bytes: the header is checked first, nothing is ever unpickled."""
    if not body.startswith(NPY_MAGIC):
        raise Refused(f"the body is not a .npy file (no NUMPY magic); send {what} as .npy or JSON",
                      400, "malformed_npy")
    try:
        arr = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError variants for broken files
        raise Refused(f"malformed .npy ({exc})", 400, "malformed_npy") from None
    return arr


def as_array(value, what: str, max_ndim: int) -> np.ndarray:
    """Check a request's array: floating point, finite, 1..max_ndim dimensions, bounded rows."""
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise Refused(f"{what} must be a rectangular list of numbers", 400, "malformed_array") from None
    if value.dtype.kind not in "f":
        raise Refused(f"{what} must be floating point, got {value.dtype}", 422, "wrong_dtype")
    if not 1 <= value.ndim <= max_ndim or value.size == 0:
        raise Refused(f"{what} must have 1 to {max_ndim} non-empty dimensions, got shape {value.shape}",
                      422, "wrong_shape")
    if value.ndim > 1 and len(value) > MAX_ROWS:
        raise Refused(f"at most {MAX_ROWS} query rows per request, got {len(value)}", 413, "too_many_rows")
    if not np.isfinite(value).all():
        raise Refused(f"{what} contain NaN or Inf values", 422, "not_finite")
    return np.asarray(value, np.float32)


def int_arg(value, name: str, *, low: int | None = None, high: int | None = None, optional: bool = True):
    if value is None or value == "":
        if optional:
            return None
        raise Refused(f"{name} is required", 400, "missing")
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise Refused(f"{name} must be an integer, got {value!r}", 400, "bad_argument")
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise Refused(f"{name} must be an integer, got {value!r}", 400, "bad_argument") from None
    if (low is not None and out < low) or (high is not None and out > high):
        raise Refused(f"{name} must be between {low} and {high}, got {out}", 400, "bad_argument")
    return out


def sessions_arg(value):
    """``3``, ``"3"``, ``"3,3,4"`` or ``[3, 3, 4]`` -> an int, a list of ints, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and "," in value:
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        return [int_arg(v, "session", low=0) for v in value]
    return int_arg(value, "session", low=0)


def bool_arg(value, name: str, default):
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise Refused(f"{name} must be true or false, got {value!r}", 400, "bad_argument")


class Backend:
    def __init__(self, root=None, *, runs=(), data=None, image_model: str | None = None,
                 image_weights: str | None = None):
        from mindsearch.engine import Engine

        self.engine = Engine(root)
        self.root = self.engine.root
        self.runs = {}  # name -> Run, opened once and kept (the encoder stays loaded)
        for path in runs:
            self.add_run(path)
        self.data = Path(data).resolve() if data else None
        self.image_model, self.image_weights = image_model, image_weights
        self._encoder = None
        self._datasets: dict[str, object] = {}
        self._thumbs: OrderedDict = OrderedDict()
        # FAISS reads are thread-safe, but LanceDB handles, torch and the caches here are
        # shared: one query at a time, which on a few cores costs nothing in throughput.
        self.lock = threading.RLock()

    # ---------------------------------------------------------------- what is served
    def add_run(self, path) -> str:
        from mindsearch.runs import open_run

        run = open_run(Path(path).resolve())
        name, n = run.path.name, 1
        while name in self.runs and self.runs[name].path != run.path:  # two runs called "ridge"
            n += 1
            name = f"{run.path.name}-{n}"
        self.runs[name] = run
        return name

    def run(self, name):
        if name is None or name == "":
            if len(self.runs) == 1:
                return next(iter(self.runs.values()))
            raise Refused(f"name a run (served: {', '.join(self.runs) or 'none'})", 400, "missing")
        if name in self.runs:
            return self.runs[name]
        for run in self.runs.values():  # the CLI sends the run's path
            if str(run.path) == str(name):
                return run
        raise Refused(f"run {name!r} is not served here (served: {', '.join(self.runs) or 'none'})",
                      404, "unknown_run")

    def index(self, name) -> str:
        names = self.engine.list()
        if name is None or name == "":
            if len(names) == 1:
                return names[0]
            raise Refused(f"name an index (served: {', '.join(names) or 'none'})", 400, "missing")
        if name not in names:  # also every path trick: only listed names are opened
            raise Refused(f"index {name!r} is not served here (served: {', '.join(names) or 'none'})",
                          404, "unknown_index")
        return name

    def indexes(self) -> list[dict]:
        import json

        out = []
        for name in self.engine.list():
            try:
                m = (self.engine.reader(name).manifest if is_remote(self.root)
                     else json.loads((self.root / name / "manifest.json").read_text()))
            except (OSError, ValueError, InputError):
                continue
            out.append({"name": name, "count": m.get("count"), "dim": m.get("dim"),
                        "tokens_shape": m.get("tokens_shape"), "space": m.get("space"),
                        "version": (m.get("table") or {}).get("version"),
                        "faiss": (m.get("index") or {}).get("key")})
        return out

    def run_list(self) -> list[dict]:
        return [{"name": n, "path": str(r.path), "model": r.model_type, "subject": r.subject,
                 "subjects": sorted(r.subjects), "n_voxels": r.n_voxels, "space": r.space}
                for n, r in self.runs.items()]

    def stores(self) -> list[str]:
        return self.engine.stores()  # brain stores are collections under ROOT/_brain

    # ---------------------------------------------------------------- trials of the dataset
    def _dataset(self):
        from mindsearch.data import open_dataset

        if self.data is None:
            raise Refused("this service has no dataset (start it with --data DIR)", 404, "no_dataset")
        key = str(self.data)
        if key not in self._datasets:
            self._datasets[key] = open_dataset(self.data)
        return self._datasets[key]

    def trials(self, subject=None, split="test", limit=200) -> dict:
        subject = int_arg(subject, "subject", low=0)
        limit = int_arg(limit, "limit", low=1, high=100_000) or 200
        if split not in ("test", "train"):
            raise Refused(f"split must be test or train, got {split!r}", 400, "bad_argument")
        with self.lock:
            ds = self._dataset()
            subject = ds.subjects[0] if subject is None else subject
            t = ds.trials
            rows = t[(t["subject"] == subject) & (t["split"] == split)].iloc[:limit]
            return {"subject": subject, "split": split,
                    "trials": [{c: int(r[c]) for c in ("trial", "session", "image_id")}
                               for _, r in rows.iterrows()]}

    def _trial_voxels(self, trials, subject):
        ds = self._dataset()
        subject = ds.subjects[0] if subject is None else subject
        wanted = [int_arg(t, "trial", low=0) for t in (trials if isinstance(trials, list) else [trials])]
        if not wanted or len(wanted) > MAX_ROWS:
            raise Refused(f"give 1 to {MAX_ROWS} trials", 400, "bad_argument")
        table = ds.trials[ds.trials["subject"] == subject].set_index("trial")
        missing = [t for t in wanted if t not in table.index]
        if missing:
            raise Refused(f"subject {subject} has no trial {missing[0]}", 404, "unknown_trial")
        rows = table.loc[wanted]
        return (ds.voxels(subject, wanted), subject, rows["session"].astype(int).tolist(),
                rows["image_id"].astype(int).tolist())

    # ---------------------------------------------------------------- queries
    def query(self, args: dict, array: np.ndarray | None = None) -> dict:
        """POST /v1/query: voxels (encoded by a run), embeddings, or trials of the dataset."""
        k = int_arg(args.get("k"), "k", low=1, high=MAX_K) or 16
        subject = int_arg(args.get("subject"), "subject", low=0)
        session = sessions_arg(args.get("session"))
        zscore = bool_arg(args.get("zscore"), "zscore", True)
        rerank = bool_arg(args.get("rerank"), "rerank", None)
        kind = args.get("kind")
        extra = self._engine_options(args)
        given = [key for key in ("voxels", "embedding", "trial") if args.get(key) is not None]
        if array is not None:
            if kind not in (None, "voxels", "embedding"):
                raise Refused(f"kind must be voxels or embedding, got {kind!r}", 400, "bad_argument")
            kind = kind or "voxels"
        elif len(given) != 1:
            raise Refused("give exactly one of voxels, embedding or trial", 400, "missing")
        else:
            kind = given[0]
        with self.lock:
            index = self.index(args.get("index"))
            truth = None
            if kind == "embedding":
                emb = as_array(array if array is not None else args["embedding"], "embeddings", 3)
                blocks = self._engine_call(lambda: self.engine.search(index, emb, k=k, rerank=rerank, **extra))
            else:
                run = self.run(args.get("run"))
                if kind == "trial":
                    x, subject, sessions, truth = self._trial_voxels(args["trial"], subject)
                    session = session if session is not None else (
                        sessions if len(set(sessions)) > 1 else sessions[0])
                else:
                    x = as_array(array if array is not None else args["voxels"], "voxels", 2)
                if isinstance(session, list) and len(session) != (1 if x.ndim == 1 else len(x)):
                    raise Refused(f"{len(session)} sessions for {len(x)} rows", 422, "wrong_shape")
                blocks = self._engine_call(lambda: self.engine.query(
                    index, x, run, k=k, subject=subject, session=session, zscore=zscore, rerank=rerank,
                    source="request", **extra))
        out = {"hits": [[hit_dict(h) for h in block] for block in blocks]}
        if truth is not None:
            out["truth"] = truth
        return out

    def _engine_options(self, args: dict) -> dict:
        """Search settings passed through to the engine (``shortlist``: the re-rank pool)."""
        if args.get("shortlist") in (None, ""):
            return {}
        return {"shortlist": int_arg(args["shortlist"], "shortlist", low=1, high=100_000)}

    def _engine_call(self, fn):
        try:
            return fn()
        except Refused:
            raise
        except InputError as exc:  # the engine's word on a bad query: wrong sizes, spaces, ...
            raise Refused(exc.problem, 404 if exc.problem.startswith("no ") else 422, "rejected") from None

    # ---------------------------------------------------------------- brain retrieval
    def brain(self, args: dict, image: bytes | None = None) -> dict:
        """Stored brain samples nearest to an image: an image id in an index, or an upload."""
        k = int_arg(args.get("k"), "k", low=1, high=MAX_K) or 16
        stores = self.stores()
        store = args.get("store") or (stores[0] if len(stores) == 1 else None)
        if store not in stores:
            raise Refused(f"brain store {store!r} is not served here (stores: {', '.join(stores) or 'none'})",
                          404, "unknown_store")
        with self.lock:
            if image is not None:
                emb, space = self._encode_upload(image)
            else:
                index = self.index(args.get("index"))
                emb, space = self._stored_embedding(index, int_arg(args.get("id"), "id", low=0, optional=False))
            blocks = self._engine_call(lambda: self.engine.query_brain(store, emb, space=space, k=k))
        return {"hits": blocks}

    def _stored_embedding(self, index: str, ident: int):
        coll = self.engine.open(index)
        col = "tokens" if coll.tokens_shape else "embedding"
        return np.asarray([_fetch_one(coll, index, ident, [col])[col]], np.float32), coll.space

    def _encode_upload(self, image: bytes):
        from PIL import Image, UnidentifiedImageError

        if not self.image_model:
            raise Refused("this service encodes no uploaded images (start it with --model/--weights of "
                          "the store's space); retrieve by the id of an indexed image instead",
                          422, "no_encoder")
        try:
            with Image.open(io.BytesIO(image)) as im:
                picture = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise Refused(f"not a readable image ({exc})", 400, "bad_image") from None
        if self._encoder is None:
            from mindsearch.image_encoders import ImageEncoder

            self._encoder = ImageEncoder.create(self.image_model, weights=self.image_weights)
        enc = self._encoder
        return enc.encode(enc.collate([enc.prepare(picture)])), enc.space

    # ---------------------------------------------------------------- thumbnails
    def thumbnail(self, index: str, ident, size=None) -> tuple[bytes, str]:
        """A resized image of any hit, cached: (bytes, content type)."""
        ident = int_arg(ident, "id", low=0, optional=False)
        size = int_arg(size, "size", low=16, high=1024) or 256
        size = min((s for s in THUMB_SIZES if s >= size), default=THUMB_SIZES[-1])
        with self.lock:
            index = self.index(index)
            key = (index, ident, size, self._version(index))
            if key in self._thumbs:
                self._thumbs.move_to_end(key)
                return self._thumbs[key]
            picture = self._picture(index, ident)
            picture.thumbnail((size, size))
            if max(picture.size) < 128:  # tiny (simulated) images: enlarge without blurring
                scale = math.ceil(128 / max(picture.size))
                from PIL import Image

                picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
            buf = io.BytesIO()
            if picture.mode in ("RGBA", "LA", "P"):
                picture.save(buf, "PNG")
                out = (buf.getvalue(), "image/png")
            else:
                picture.convert("RGB").save(buf, "JPEG", quality=88)
                out = (buf.getvalue(), "image/jpeg")
            self._thumbs[key] = out
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
            return out

    def _version(self, index: str):
        try:
            if is_remote(self.root):  # the manifest's ETag, re-checked at most every reader ttl
                return self.engine.reader(index).snapshot().stamp
            return (self.root / index / "manifest.json").stat().st_mtime_ns
        except OSError:
            return None

    def _picture(self, index: str, ident: int):
        from PIL import Image, UnidentifiedImageError

        image_bytes = getattr(self.engine, "image_bytes", None)
        try:
            if image_bytes is not None:
                try:
                    data, _ = image_bytes(index, ident)
                except InputError as exc:
                    raise Refused(exc.problem, 404, "unknown_id") from None
                return Image.open(io.BytesIO(data)).convert("RGB")
            return self._picture_from_path(index, ident)
        except (UnidentifiedImageError, OSError) as exc:
            raise Refused(f"image {ident} of index {index!r} cannot be read ({exc})", 404, "unreadable") from None

    def _picture_from_path(self, index: str, ident: int):
        """Before ``Engine.image_bytes``: a file path, or a dataset image (``DIR#image/ID`` keys)."""
        from PIL import Image

        coll = self.engine.open(index)
        extra = coll.manifest.get("extra_columns") or {}
        cols = ["key"] + [c for c in ("image_path",) if c in extra]
        row = _fetch_one(coll, index, ident, cols)
        path = row.get("image_path") or row.get("key") or ""
        if "#image/" in path:
            folder, _, number = path.rpartition("#image/")
            if folder not in self._datasets:
                from mindsearch.data import open_dataset

                self._datasets[folder] = open_dataset(folder)
            arr = self._datasets[folder].images([int(number)])[0]  # (3, H, W) in [0, 1]
            return Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))
        if Path(path).is_file():
            return Image.open(path).convert("RGB")
        raise Refused(f"image {ident} of index {index!r} has no openable source ({path or 'no path'})",
                      404, "no_image")

    def warm(self) -> None:
        """Load every run's encoder and open every index now, so the first query is a warm one."""
        for run in self.runs.values():
            run.encoder()
        for name in self.engine.list():
            try:
                coll = self.engine.open(name)
                self.engine.search(name, np.ones((1, coll.dim), np.float32), k=1)
            except InputError:
                continue

    def close(self) -> None:
        for ds in self._datasets.values():
            ds.close()
        self._datasets.clear()


def _fetch_one(coll, index: str, ident: int, columns: list[str]) -> dict:
    """One row of an index by id (the table answers an unknown id with a row of nulls)."""
    try:
        rows = coll.fetch([ident], columns)
    except IndexError:  # indexes.table.fetch fails when no id at all is found (reported upstream)
        rows = None
    if rows is None:
        raise Refused(f"no image with id {ident} in index {index!r}", 404, "unknown_id")
    row = {c: rows.column(c)[0].as_py() for c in rows.column_names} if rows.num_rows else {}
    if all(row.get(c) is None for c in columns):
        raise Refused(f"no image with id {ident} in index {index!r}", 404, "unknown_id")
    return row
