"""The backup file of ``discoverd snapshot save`` (docs/operations.md): one member's
key-value image with a header saying what it holds, sealed by a SHA-256 of the whole file.

Layout::

    b"DSNP1\\n" | u32 big-endian header length | cbor2 header map | image bytes | sha256 (32 B)

The header carries what ``snapshot status`` prints without decoding the image (revision,
compact revision, live keys, sizes) and where the image came from (cluster, member, Raft
index and term). The image is the replicated state machine's own snapshot format, so a
restore hands it to the state machine exactly as a member receiving a Raft snapshot would.
The trailing hash covers every byte before it: a truncated or altered file is refused.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import asdict, dataclass
from typing import IO, Any

import cbor2

MAGIC = b"DSNP1\n"
_HASH_BYTES = 32
FORMAT_VERSION = 1


class SnapshotFileError(ValueError):
    """The file is not a complete, intact discoverd snapshot."""


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    revision: int
    compact_revision: int
    keys: int
    size: int
    """Bytes of the image."""
    index: int
    term: int
    cluster_id: int
    member_id: int
    created: float
    """Unix time when the member took the image."""
    version: str
    format: int = FORMAT_VERSION

    def to_obj(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_obj(cls, obj: Any) -> SnapshotHeader:
        if not isinstance(obj, dict):
            raise SnapshotFileError("the snapshot header is not a map")
        try:
            header = cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            raise SnapshotFileError(f"the snapshot header lacks {e}") from None
        for name in ("revision", "compact_revision", "keys", "size", "index", "term",
                     "cluster_id", "member_id", "format"):
            value = getattr(header, name)
            if type(value) is not int or value < 0:
                raise SnapshotFileError(f"snapshot header field {name} is {value!r}")
        if header.format != FORMAT_VERSION:
            raise SnapshotFileError(f"snapshot format {header.format} is not supported "
                                    f"(this version reads format {FORMAT_VERSION})")
        return header


class SnapshotWriter:
    """Writes a snapshot file to ``out`` as the image arrives in pieces."""

    def __init__(self, out: IO[bytes], header: SnapshotHeader) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._expected = header.size
        self.written = 0
        head = cbor2.dumps(header.to_obj())
        self._put(MAGIC + struct.pack(">I", len(head)) + head)

    def _put(self, data: bytes) -> None:
        self._hash.update(data)
        self._out.write(data)

    def write(self, chunk: bytes) -> None:
        if self.written + len(chunk) > self._expected:
            raise SnapshotFileError(f"the image is longer than the {self._expected} bytes "
                                    "its header announced")
        self._put(chunk)
        self.written += len(chunk)

    def finish(self) -> str:
        """Seal the file; returns its SHA-256 (hex)."""
        if self.written != self._expected:
            raise SnapshotFileError(f"the image ended after {self.written} of "
                                    f"{self._expected} bytes")
        digest = self._hash.digest()
        self._out.write(digest)
        return digest.hex()


def _read_header(f: IO[bytes], hasher: Any) -> SnapshotHeader:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise SnapshotFileError("not a discoverd snapshot file (bad magic)")
    raw_len = f.read(4)
    if len(raw_len) != 4:
        raise SnapshotFileError("truncated snapshot file (no header)")
    (length,) = struct.unpack(">I", raw_len)
    head = f.read(length)
    if len(head) != length:
        raise SnapshotFileError("truncated snapshot file (header)")
    hasher.update(magic + raw_len + head)
    try:
        obj = cbor2.loads(head)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as e:
        raise SnapshotFileError(f"unreadable snapshot header: {e}") from None
    return SnapshotHeader.from_obj(obj)


def read_snapshot(f: IO[bytes], *, keep_image: bool = True
                  ) -> tuple[SnapshotHeader, bytes, str]:
    """``(header, image, sha256 hex)`` of the file ``f``, after checking its hash (the image
    is ``b""`` with ``keep_image=False``, for a status that need not hold it in memory)."""
    hasher = hashlib.sha256()
    header = _read_header(f, hasher)
    parts: list[bytes] = []
    left = header.size
    while left:
        chunk = f.read(min(left, 1 << 20))
        if not chunk:
            raise SnapshotFileError(f"truncated snapshot file ({left} image bytes missing)")
        hasher.update(chunk)
        if keep_image:
            parts.append(chunk)
        left -= len(chunk)
    digest = f.read(_HASH_BYTES + 1)
    if len(digest) != _HASH_BYTES:
        raise SnapshotFileError("truncated snapshot file (no hash)" if len(digest) <
                                _HASH_BYTES else "trailing bytes after the snapshot hash")
    if digest != hasher.digest():
        raise SnapshotFileError("snapshot file hash mismatch: the file is damaged")
    return header, b"".join(parts), digest.hex()
