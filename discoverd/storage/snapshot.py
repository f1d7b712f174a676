"""Snapshot files: ``<dir>/<term:016x>-<index:016x>.snap``, one CRC'd cbor2 frame each.

A snapshot file is written with the atomic-replace recipe (temp file, fsync, rename, fsync
the directory), so a crash leaves either no file or a complete one, plus perhaps a ``.tmp``
leftover that ``load_newest`` deletes. A file that fails its CRC anyway (media corruption)
is renamed to ``.broken`` for inspection and skipped, so the member can fall back to an older
snapshot while the WAL still reaches back that far.

Whether a complete file may be *used* is not decided here: the WAL records a marker once a
snapshot is fully in place, and ``DiskStorage`` passes the markers in as ``allowed``.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
import zlib
from collections.abc import Collection
from typing import Any

import cbor2

from discoverd.consensus.messages import (
    Snapshot,
    SnapshotMeta,
    snapshot_from_obj,
    snapshot_to_obj,
)
from discoverd.errors import PeerError
from discoverd.storage.fs import FileSystem, ensure_dir, write_file_atomically
from discoverd.storage.wal import (
    FRAME_HEADER_BYTES,
    SnapshotMarker,
    encode_frame,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1

VERIFY_CHUNK_BYTES = 1 << 20
"""Pieces in which ``SnapshotStore.verify`` reads a file: its memory, whatever the size."""

_SNAP_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


class BrokenSnapshot(ValueError):
    """A snapshot file that cannot be trusted (CRC, format, or name/content mismatch)."""


def encode_snapshot(snap: Snapshot) -> bytes:
    return encode_frame(cbor2.dumps([FORMAT_VERSION, snapshot_to_obj(snap)]))


def _frame_header(head: bytes | bytearray) -> tuple[int, int]:
    """``(payload length, CRC)`` from the first ``FRAME_HEADER_BYTES`` of a snapshot file:
    ``wal.encode_frame``'s header, read here without ``wal.read_frame``, which would copy the
    payload out (see ``decode_snapshot``)."""
    return int.from_bytes(head[0:4], "big"), int.from_bytes(head[4:8], "big")


def decode_snapshot(data: bytes) -> Snapshot:
    """Raises ``BrokenSnapshot`` unless ``data`` is exactly one valid snapshot frame.

    Decoded in place: the CRC runs over a view of ``data`` and cbor2 reads from a
    ``BytesIO``, which shares ``data``'s buffer as long as nobody writes to it. Slicing the
    payload out first (``read_frame``) cost one more copy of the image: at a million keys
    ~280 MB and ~0.3 s, at every start-up and every time a snapshot is sent (issue 12).
    """
    if len(data) < FRAME_HEADER_BYTES:
        raise BrokenSnapshot(f"incomplete frame header ({len(data)} bytes)")
    announced, crc = _frame_header(data)
    payload_bytes = len(data) - FRAME_HEADER_BYTES
    if announced != payload_bytes:
        raise BrokenSnapshot(f"the frame announces {announced} bytes, the file holds "
                             f"{payload_bytes}")
    if zlib.crc32(memoryview(data)[FRAME_HEADER_BYTES:]) != crc:
        raise BrokenSnapshot(f"CRC mismatch over {payload_bytes} bytes")
    fp = io.BytesIO(data)
    fp.seek(FRAME_HEADER_BYTES)
    try:
        obj: Any = cbor2.load(fp)
    except (cbor2.CBORError, ValueError, TypeError, EOFError) as exc:
        raise BrokenSnapshot(f"undecodable payload: {exc}") from exc
    if fp.tell() != len(data):
        raise BrokenSnapshot(f"{len(data) - fp.tell()} trailing bytes in the frame")
    if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == FORMAT_VERSION):
        raise BrokenSnapshot("not a version-1 snapshot")
    try:
        return snapshot_from_obj(obj[1])
    except PeerError as exc:
        raise BrokenSnapshot(str(exc)) from exc


class SnapshotStore:
    """The snapshot directory of one member."""

    def __init__(self, fs: FileSystem, snap_dir: str) -> None:
        self._fs = fs
        self._dir = snap_dir
        ensure_dir(fs, snap_dir)

    def __repr__(self) -> str:
        return f"<SnapshotStore {self._dir} files={len(self.markers())}>"

    def path(self, marker: SnapshotMarker) -> str:
        return posixpath.join(self._dir, snapshot_name(marker.term, marker.index))

    def markers(self) -> list[SnapshotMarker]:
        """The snapshot files present, oldest first (by index, then term)."""
        found: list[SnapshotMarker] = []
        for name in self._fs.listdir(self._dir):
            match = _SNAP_NAME.match(name)
            if match is not None:
                found.append(SnapshotMarker(index=int(match.group(2), 16),
                                            term=int(match.group(1), 16)))
        return sorted(found, key=lambda m: (m.index, m.term))

    def save(self, snap: Snapshot) -> str:
        """Write ``snap`` durably under its name; returns the path.

        Raises:
            OSError: the file system failed; no ``.snap`` file was created or changed.
        """
        marker = SnapshotMarker(index=snap.meta.index, term=snap.meta.term)
        path = self.path(marker)
        write_file_atomically(self._fs, path, encode_snapshot(snap))
        return path

    def load(self, marker: SnapshotMarker) -> Snapshot:
        """Read one snapshot file.

        Raises:
            BrokenSnapshot: it fails its CRC or its content does not match its name.
            OSError: it could not be read.
        """
        snap = decode_snapshot(self._fs.read_file(self.path(marker)))
        if (snap.meta.index, snap.meta.term) != (marker.index, marker.term):
            raise BrokenSnapshot(
                f"holds index {snap.meta.index} term {snap.meta.term}, "
                f"but is named for index {marker.index} term {marker.term}"
            )
        return snap

    def verify(self, meta: SnapshotMeta) -> int:
        """Check that the file for ``meta`` is intact and holds that very snapshot, without
        holding its image in memory; returns its size in bytes.

        It checks what ``load`` checks, streamed: one frame filling the file, whose CRC
        matches (the CRC is computed over pieces of ``VERIFY_CHUNK_BYTES``; ``zlib.crc32``
        and the reads release the GIL, so a worker thread running this barely slows the
        event loop), and a payload that starts with exactly ``meta``'s encoding (format
        version, index, term, membership) — only the image's bytes themselves are not
        decoded, the CRC covers them.

        Raises:
            BrokenSnapshot: it is not intact, or is another snapshot's.
            OSError: it could not be read.
        """
        path = self.path(SnapshotMarker(index=meta.index, term=meta.term))
        # The encoding of ``meta`` with an empty image ends in the empty byte string's one
        # byte (0x40); a real file has the image's byte-string header in its place.
        expected = cbor2.dumps([FORMAT_VERSION, snapshot_to_obj(Snapshot(meta))])[:-1]
        want = FRAME_HEADER_BYTES + len(expected)
        head = bytearray()  # the frame header and the start of the payload
        crc = 0
        offset = 0
        for chunk in self._fs.read_chunks(path, VERIFY_CHUNK_BYTES):
            if offset < want:
                head += chunk[: want - offset]
            crc = zlib.crc32(memoryview(chunk)[max(0, FRAME_HEADER_BYTES - offset) :], crc)
            offset += len(chunk)
        payload_bytes = max(0, offset - FRAME_HEADER_BYTES)
        if len(head) < FRAME_HEADER_BYTES:
            raise BrokenSnapshot(f"{path}: incomplete frame header ({len(head)} bytes)")
        announced, expected_crc = _frame_header(head)
        if announced != payload_bytes:
            raise BrokenSnapshot(f"{path}: the frame announces {announced} bytes, "
                                 f"the file holds {payload_bytes}")
        if crc != expected_crc:
            raise BrokenSnapshot(f"{path}: CRC mismatch over {payload_bytes} bytes")
        if bytes(head[FRAME_HEADER_BYTES:]) != expected:
            raise BrokenSnapshot(f"{path}: does not hold the snapshot at index {meta.index} "
                                 f"term {meta.term} with membership {meta.conf_state}")
        return FRAME_HEADER_BYTES + payload_bytes

    def load_newest(self, allowed: Collection[SnapshotMarker] | None = None) -> Snapshot | None:
        """The newest snapshot that is intact (and in ``allowed``, if given).

        Leftover ``.tmp`` files are deleted. Broken files are logged, renamed to
        ``<name>.broken`` and skipped.
        """
        self._remove_tmp_files()
        for marker in reversed(self.markers()):
            if allowed is not None and marker not in allowed:
                continue
            try:
                return self.load(marker)
            except BrokenSnapshot as exc:
                self._quarantine(marker, exc)
        return None

    def remove(self, marker: SnapshotMarker) -> None:
        self._fs.remove(self.path(marker))
        self._fs.fsync_dir(self._dir)

    def purge(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest snapshot files; returns the deleted paths."""
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        doomed = [self.path(m) for m in self.markers()[:-keep]]
        for path in doomed:
            self._fs.remove(path)
        if doomed:
            self._fs.fsync_dir(self._dir)
        return doomed

    def _remove_tmp_files(self) -> None:
        leftovers = [n for n in self._fs.listdir(self._dir) if n.endswith(".tmp")]
        for name in leftovers:
            log.warning("snapshot: removing %s, left over from an interrupted write", name)
            self._fs.remove(posixpath.join(self._dir, name))
        if leftovers:
            self._fs.fsync_dir(self._dir)

    def _quarantine(self, marker: SnapshotMarker, exc: BrokenSnapshot) -> None:
        path = self.path(marker)
        log.warning("snapshot: %s is broken (%s); renaming it to .broken and skipping it",
                    path, exc)
        self._fs.rename(path, path + ".broken")
        self._fs.fsync_dir(self._dir)
