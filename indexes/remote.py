"""An index on object storage: one URI for the manifest, the FAISS files and the table.

A root may be ``s3://bucket/prefix`` (also ``gs://``, ``az://``; ``memory://`` for tests). Index
``NAME`` is then ``ROOT/NAME/manifest.json``, ``ROOT/NAME/faiss/<versioned files>`` and the LanceDB
table under ``ROOT/NAME/lance``. Objects are read and written with ``obstore``; each index has a
local mirror folder (``$MINDSEARCH_HOME/cache/remote/<hash of ROOT>/NAME``) where writers stage
files and readers keep the FAISS/rows files they downloaded.

Object stores have no rename, so the local atomic replace becomes (see docs/scaling.md):

* FAISS and rows files are uploaded under new keys, never overwritten: their names carry a counter
  and a random tag, and a single-part upload is create-if-absent.
* The manifest is written last, conditionally: create-if-absent for a new index, ``If-Match`` the
  ETag the writer read for an update. The writer that loses gets :class:`InputError` ("another writer
  committed version N ... first") and the files it uploaded for that commit are deleted again.
  This conditional put is the only guarantee across machines; the writer file lock in the mirror
  folder only orders writers sharing one cache.
* A file is a version: the cache is keyed by the index URI and the file's name, so it is
  downloaded once and never checked again. The manifest's ETag is a reader's version stamp.

``obstore`` is imported inside functions (``pip install 'mindsearch[remote]'``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from mindsearch.indexes import manifest as mf
from mindsearch.indexes.errors import InputError

#: Schemes a remote root may use (``memory://`` keeps everything in this process: tests).
SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "memory")
#: Files larger than this go up in parts (S3 takes at most 5 GiB in one PUT); a multipart upload
#: cannot be create-if-absent, the random tag in the name keeps the key unique instead.
MULTIPART_BYTES = 256 * 2**20
#: obstore client options (the rest of a LanceDB ``storage_options`` mapping is store config).
_CLIENT_KEYS = ("allow_http", "allow_invalid_certificates", "timeout", "connect_timeout", "proxy_url",
                "user_agent", "http1_only", "http2_only")

_stores: dict[tuple, Any] = {}
_stores_lock = threading.Lock()


def is_remote(root: Any) -> bool:
    """Whether an index root names an object store (``scheme://...``) rather than a folder."""
    text = str(root)
    return "://" in text and text.split("://", 1)[0].lower() in SCHEMES


def cache_root() -> Path:
    """``$MINDSEARCH_HOME/cache/remote``, else ``~/.mindsearch/cache/remote`` (safe to delete)."""
    home = os.environ.get("MINDSEARCH_HOME")
    return (Path(home) if home else Path.home() / ".mindsearch") / "cache" / "remote"


def store_options(storage_options: dict | None) -> tuple[dict, dict]:
    """LanceDB-style ``storage_options`` -> obstore ``(config, client_options)``.

    Both libraries sit on Rust ``object_store`` and take its key names (``aws_endpoint``,
    ``aws_access_key_id``, ``region``, ...); without options both read the ``AWS_*`` / ``GOOGLE_*`` /
    ``AZURE_*`` environment, so a table and its manifest always reach the same store.
    """
    config, client = {}, {}
    for key, value in (storage_options or {}).items():
        k = str(key).lower()
        k = "allow_http" if k == "aws_allow_http" else k
        (client if k in _CLIENT_KEYS else config)[k] = value
    return config, client


def open_store(root: str, storage_options: dict | None = None):
    """The obstore store of a root URI (its path is the key prefix), one per root in a process."""
    key = (root, json.dumps(storage_options or {}, sort_keys=True, default=str))
    with _stores_lock:
        if key not in _stores:
            try:
                from obstore.store import MemoryStore, from_url
            except ImportError:
                raise InputError("an index on object storage needs obstore (pip install 'mindsearch[remote]')",
                                 root) from None
            if root.lower().startswith("memory://"):
                _stores[key] = MemoryStore()  # one per root URI: a "bucket" living in this process
            else:
                config, client = store_options(storage_options)
                try:
                    _stores[key] = from_url(root, config=config or None, client_options=client or None)
                except Exception as exc:  # noqa: BLE001 - obstore raises several types for a bad URL/config
                    raise InputError(f"cannot open object store ({_first_line(exc)})", root) from None
        return _stores[key]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _failed(what: str, uri: str, exc: BaseException) -> InputError:
    return InputError(f"cannot {what} ({type(exc).__name__}: {_first_line(exc)})", uri)


def list_names(root: str, storage_options: dict | None = None) -> list[str]:
    """Names of the indexes under a remote root: folders that hold a ``manifest.json``."""
    import obstore as obs

    root = root.rstrip("/")
    store = open_store(root, storage_options)
    try:
        prefixes = obs.list_with_delimiter(store, None)["common_prefixes"]
    except Exception as exc:  # noqa: BLE001
        raise _failed("list the index root", root, exc) from None
    names = []
    for p in prefixes:
        name = p.rstrip("/").rpartition("/")[2]
        try:
            mf.check_name(name)
        except InputError:
            continue
        if RemoteIndex(root, name, storage_options).etag() is not None:
            names.append(name)
    return sorted(names)


class RemoteIndex:
    """``ROOT/NAME`` on an object store, with its local mirror folder :attr:`local`."""

    def __init__(self, root: str, name: str, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.name = mf.check_name(name, self.root)
        self.uri = f"{self.root}/{self.name}"
        self.manifest_uri = f"{self.uri}/{mf.MANIFEST}"
        self.storage_options = storage_options
        self.store = open_store(self.root, storage_options)
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        self.local = cache_root() / digest / self.name
        self._versions: dict[str, str] = {}  # ETag -> object version (GCS's generation), when the store has one

    def _key(self, rel: str) -> str:
        return f"{self.name}/{rel}"

    # ------------------------------------------------------------------ reading
    def etag(self) -> str | None:
        """The manifest's ETag (its version stamp), ``None`` when there is no index here."""
        import obstore as obs

        try:
            return obs.head(self.store, self._key(mf.MANIFEST))["e_tag"]
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise _failed("read the index manifest", self.manifest_uri, exc) from None

    def read_manifest(self) -> tuple[dict, str]:
        """The committed manifest, checked like a local one (no file outside ``faiss/``), and its ETag."""
        import obstore as obs

        try:
            got = obs.get(self.store, self._key(mf.MANIFEST))
            data = bytes(got.bytes())
        except FileNotFoundError:
            raise InputError("index manifest not found (is this a mindsearch index?)", self.manifest_uri) from None
        except Exception as exc:  # noqa: BLE001
            raise _failed("read the index manifest", self.manifest_uri, exc) from None
        try:
            man = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"not valid JSON ({exc})", self.manifest_uri) from None
        return mf.check(man, self.local, self.manifest_uri), self._seen(got.meta)

    def table_location(self, stored: str) -> str:
        """The table a manifest names: a URI or an absolute path (put elsewhere on purpose) as is,
        a relative location under the index's URI."""
        if mf.is_uri(stored) or os.path.isabs(stored):
            return stored
        mf.inside(self.local, stored, "table location", self.manifest_uri)  # no ../ out of the index
        return f"{self.uri}/{stored}"

    def fetch(self, rel: str) -> Path:
        """The local copy of a FAISS/rows file named by a manifest, downloaded on first use.

        ``FileNotFoundError`` when the object is gone (a retired file deleted after its grace)."""
        import obstore as obs

        from mindsearch.indexes.io import atomic_path

        path = mf.faiss_file(self.local, rel, self.manifest_uri)
        if path.is_file():  # names are never reused: a cached file is this version
            return path
        try:
            got = obs.get(self.store, self._key(rel))
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                for chunk in got.stream(min_chunk_size=8 * 2**20):
                    f.write(memoryview(chunk))
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _failed(f"download {rel}", self.uri, exc) from None
        return path

    # ------------------------------------------------------------------ writing
    def new_file_tag(self) -> str:
        """A random part of a new file's name: two writers never pick the same key."""
        return secrets.token_hex(4)

    def upload(self, rel: str) -> None:
        """Put the mirror's ``rel`` under its key; a key that exists already is never overwritten."""
        import obstore as obs
        from obstore.exceptions import AlreadyExistsError

        path = mf.faiss_file(self.local, rel, self.manifest_uri)
        big = path.stat().st_size > MULTIPART_BYTES
        try:
            obs.put(self.store, self._key(rel), path, mode="overwrite" if big else "create", use_multipart=big)
        except AlreadyExistsError:
            raise InputError(f"{rel} already exists in {self.uri} (another writer chose the same name); "
                             f"re-run", self.uri) from None
        except Exception as exc:  # noqa: BLE001
            raise _failed(f"upload {rel}", self.uri, exc) from None

    def publish(self, man: dict, etag: str | None, new_files=()) -> str:
        """Upload ``new_files``, then the manifest, conditionally; returns the manifest's new ETag.

        ``etag`` None: create the index (fails if one exists); else replace the manifest only if it
        is still the one that ETag names. The loser's uploads are removed again (only its own:
        their names are random) and it gets ``InputError``.
        """
        import obstore as obs
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        uploaded = []
        try:
            for rel in new_files:
                self.upload(rel)
                uploaded.append(rel)
            data = (json.dumps(man, indent=2, allow_nan=False) + "\n").encode()
            mode = "create" if etag is None else {"e_tag": etag}
            if etag is not None and self._versions.get(etag):
                mode["version"] = self._versions[etag]
            try:
                return self._seen(obs.put(self.store, self._key(mf.MANIFEST), data, mode=mode, use_multipart=False))
            except (AlreadyExistsError, PreconditionError):
                raise InputError(self._lost(etag is None), self.uri) from None
            except Exception as exc:  # noqa: BLE001
                raise _failed("write the index manifest", self.manifest_uri, exc) from None
        except BaseException:
            self.delete(uploaded)
            raise

    def _seen(self, meta: dict) -> str:
        if meta.get("version"):
            self._versions[meta["e_tag"]] = meta["version"]
        return meta["e_tag"]

    def _lost(self, creating: bool) -> str:
        try:
            theirs, _ = self.read_manifest()
            version = f"version {theirs.get('version', '?')}"
        except InputError:
            version = "a new version"
        if creating:
            return f"another writer created this index first ({version}); re-run to continue from it"
        return f"another writer committed {version} of {self.uri} first; re-run to continue from it"

    def delete(self, rels) -> None:
        """Delete FAISS/rows files (best effort: a leftover object is only wasted space)."""
        import obstore as obs

        keys = [self._key(r) for r in rels if r]
        if keys:
            try:
                obs.delete(self.store, keys)
            except Exception:  # noqa: BLE001
                pass

    def remove(self) -> None:
        """Delete the whole index: the manifest first (it is gone for readers at once), then the rest."""
        import obstore as obs

        try:
            obs.delete(self.store, self._key(mf.MANIFEST))
            for batch in obs.list(self.store, f"{self.name}/"):
                obs.delete(self.store, [m["path"] for m in batch])
        except Exception as exc:  # noqa: BLE001
            raise _failed("remove the index", self.uri, exc) from None
