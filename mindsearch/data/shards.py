"""Reading webdataset tar shards without webdataset.

webdataset's reader leaves tars unclosed (ResourceWarning) and adds nothing we need: a
sample is the run of members sharing a key (basename up to the first dot), the rest of the
name is the field (``behav.npy``, ``nsdgeneral.npy``, ``jpg``).

Speed matters here: a MindEye2 subject is ~30k samples x 4 members, and ``tarfile`` spends
~100 us parsing each header. Shards written by webdataset/tarfile/GNU tar are plain ustar,
so a minimal header walk reads them ~10x faster; anything unusual (long names, pax
headers, links) falls back to ``tarfile`` for that shard.
"""

from __future__ import annotations

import io
import mmap
import re
import tarfile
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

from mindsearch.errors import MindsearchError

BLOCK = 512


class Member(NamedTuple):
    """Where a member's bytes are, so they can be read later without re-walking the tar."""

    offset_data: int
    size: int


class _Unusual(Exception):
    """A header the fast walk does not handle; use tarfile instead."""


def natural_key(path: Path):
    """Sort ``2.tar`` before ``10.tar``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", Path(path).name)]


def split_name(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    key, _, field = base.partition(".")
    return (f"{head}/{key}" if head else key), field.lower()


def samples(path: Path, wanted: set[str]) -> Iterator[tuple[str, dict]]:
    """Yield ``(key, {field: bytes | Member})`` per sample: bytes for the fields in
    ``wanted``, a ``Member`` (offset, size) for the others."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if path.stat().st_size == 0:
                raise tarfile.ReadError("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                try:
                    members = list(_ustar_members(data))
                except _Unusual:
                    members = list(_tarfile_members(path))
                key, fields = None, {}
                for name, member in members:
                    k, field = split_name(name)
                    if k != key:
                        if key is not None:
                            yield key, fields
                        key, fields = k, {}
                    if field in wanted:
                        fields[field] = data[member.offset_data:member.offset_data + member.size]
                        if len(fields[field]) != member.size:
                            raise tarfile.ReadError("unexpected end of data")
                    else:
                        fields[field] = member
                if key is not None:
                    yield key, fields
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise MindsearchError(f"not a readable tar file, truncated? ({exc})", path) from None


def _ustar_members(data) -> Iterator[tuple[str, Member]]:
    """Walk plain ustar headers in a memory map (no per-member syscalls)."""
    total, offset = len(data), 0
    while True:
        hdr = data[offset:offset + BLOCK]
        if len(hdr) < BLOCK:
            raise tarfile.ReadError(f"archive ends without its end marker at byte {offset}")
        if hdr.count(0) == BLOCK:
            return
        kind = hdr[156:157]
        if hdr[257:262] != b"ustar" or kind not in (b"0", b"\0", b"5") or hdr[124] & 0x80:
            raise _Unusual
        stored = int(hdr[148:156].partition(b"\0")[0].strip() or b"0", 8)
        if stored != sum(hdr[:148]) + 8 * 32 + sum(hdr[156:]):
            raise _Unusual  # old signed checksums, or corruption: tarfile decides
        size = int(hdr[124:136].partition(b"\0")[0].strip() or b"0", 8)
        if offset + BLOCK + size > total:
            raise tarfile.ReadError("unexpected end of data")
        if kind != b"5":
            name = hdr[0:100].partition(b"\0")[0]
            prefix = hdr[345:500].partition(b"\0")[0]
            yield (prefix + b"/" + name if prefix else name).decode("utf-8"), Member(offset + BLOCK, size)
        offset += BLOCK + -(-size // BLOCK) * BLOCK


def _tarfile_members(path: Path) -> Iterator[tuple[str, Member]]:
    with tarfile.open(path, "r:") as tf:
        for m in tf:
            if m.isfile():
                yield m.name, Member(m.offset_data, m.size)
        end = tf.offset
    # tarfile stops silently at a header cut short; a complete archive ends in zero blocks.
    with open(path, "rb") as f:
        f.seek(end)
        marker = f.read(BLOCK)
    if len(marker) < BLOCK or marker.count(0) != BLOCK:
        raise tarfile.ReadError(f"archive ends without its end marker at byte {end}")


_HEADERS: dict[bytes, tuple[np.dtype, tuple, bool, int]] = {}


def load_npy(data: bytes, what: str, path: Path) -> np.ndarray:
    """np.load for a member's bytes; members of one shard share a header, so it is parsed once."""
    if data[:6] == b"\x93NUMPY" and len(data) >= 10 and data[6] == 1:
        end = 10 + int.from_bytes(data[8:10], "little")
        known = _HEADERS.get(data[:end])
        if known is not None:
            dtype, shape, fortran, nbytes = known
            if len(data) - end == nbytes:
                arr = np.frombuffer(data, dtype=dtype, offset=end)
                return arr.reshape(shape, order="F" if fortran else "C")
    from mindsearch.data.arrays import check_npy_header

    buf = io.BytesIO(data)
    check_npy_header(buf, len(data), path, what)  # no allocation from a lying header
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 -- ValueError/OSError/EOFError and friends
        raise MindsearchError(f"{what} is not a readable .npy ({exc})", path) from None
    if data[:6] == b"\x93NUMPY" and data[6] == 1 and arr.dtype.hasobject is False and len(_HEADERS) < 256:
        end = 10 + int.from_bytes(data[8:10], "little")
        _HEADERS[data[:end]] = (arr.dtype, arr.shape, bool(np.isfortran(arr)), arr.nbytes)
    return arr


def read_member(path: Path, offset: int, size: int) -> bytes:
    """A member's bytes by its data offset: no need to re-walk the tar's headers."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise MindsearchError("tar shard is shorter than when it was indexed (truncated?)", path)
    return data
