"""One writer per index: an exclusive ``fcntl`` lock on ``ROOT/NAME/.lock``.

The kernel drops the lock when its holder exits, even on ``kill -9``, so a crashed writer never
leaves the index locked. A second writer waits up to ``timeout`` seconds
(``$MINDSEARCH_LOCK_TIMEOUT``, default 120) and then fails with a message naming the holder.
Readers never lock: they read the committed manifest, which the writer replaces atomically.
Object-store tables get the lock on the local index folder; an index wholly on object storage
locks its local mirror folder, which orders only writers sharing that cache (indexes.remote: the
conditional manifest put is what holds between machines).
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from mindsearch.indexes.errors import InputError

LOCK_FILE = ".lock"


def default_timeout() -> float:
    try:
        return float(os.environ.get("MINDSEARCH_LOCK_TIMEOUT", "120"))
    except ValueError:
        return 120.0


class WriterLock:
    """Exclusive lock of one index folder; re-entrant within one object."""

    def __init__(self, index_dir: str | Path):
        self.path = Path(index_dir) / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> "WriterLock":
        if self._fd is not None:
            return self
        timeout = default_timeout() if timeout is None else float(timeout)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(timeout, 0.0)
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise InputError(f"another process (pid {holder}) is writing this index; waited "
                                     f"{timeout:g} s (set MINDSEARCH_LOCK_TIMEOUT to wait longer)",
                                     self.path.parent) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a dropped writer frees its index
        try:
            self.release()
        except Exception:
            pass
