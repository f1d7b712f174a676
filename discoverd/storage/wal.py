"""The write-ahead log: Raft's hard state and entries, in CRC-framed segment files.

Layout: ``<dir>/<seq:016x>-<first_index:016x>.wal``. ``seq`` orders the segments;
``first_index`` is the index the next entry was expected to have when the segment was cut
(informational: replay trusts the records, not the names).

Framing (shared with snapshot and meta files): 4-byte big-endian payload length, 4-byte
big-endian ``zlib.crc32`` of the payload, then the payload, a cbor2 list ``[kind, body]``:

* ``HEADER`` — first record of every segment: format version, ``cluster_id``, ``member_id``
  (a WAL of another member is refused), plus the hard state and the newest snapshot marker
  as of the cut, so that deleting older segments never loses them.
* ``SAVE`` — one ``save()`` call: an optional *installed* snapshot marker (a snapshot received
  from the leader replaces the whole log), the entries, the optional hard state.
* ``SNAPSHOT`` — a local snapshot's ``(index, term)``: proof that the snapshot file with that
  name was completely written before it was used (see ``DiskStorage``).

**One write, one record.** Each call appends exactly one record with one ``write()``, then at
most one ``fsync``. A crash can therefore only damage the *last* record of the *last*
segment (a torn write keeps a prefix of what was in flight). That makes the recovery rule
unambiguous: a bad record with no valid record after it is a torn tail, cut off on open; a
bad record followed by a valid one, or a bad record in an older segment, is media corruption,
and opening fails with ``CorruptData`` naming the file and byte offset. So does a record whose
CRC matches but whose payload this version cannot read (a newer format, a bug): a crash
cannot produce it. The rule errs towards refusing: entry data that itself contains a complete
valid WAL record could make a torn tail look like corruption, never the other way round.

Replay semantics mirror ``MemoryStorage.append``: a batch starting at an index that is already
in the log overwrites the conflicting suffix, as Raft's log truncation requires.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
import re
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from discoverd.consensus.messages import (
    Entry,
    HardState,
    entry_from_obj,
    entry_to_obj,
    hard_state_from_obj,
    hard_state_to_obj,
)
from discoverd.errors import CorruptData, PeerError
from discoverd.storage.fs import FileHandle, FileSystem, WriteNotDone, ensure_dir

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
"""A segment is cut once it reaches this size; release works on whole segments."""

FORMAT_VERSION = 1

_FRAME_HEADER = struct.Struct(">II")
FRAME_HEADER_BYTES = _FRAME_HEADER.size

_KIND_HEADER = 1
_KIND_SAVE = 2
_KIND_SNAPSHOT = 3
# A valid payload is a 2-element cbor array (0x82) whose first item is one of the kinds
# (small unsigned ints encode as themselves). Used to find candidate records quickly when
# deciding whether garbage is a torn tail or corruption in the middle.
_PAYLOAD_SIGNATURES = tuple(bytes([0x82, k]) for k in (_KIND_HEADER, _KIND_SAVE, _KIND_SNAPSHOT))

_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")


# ----------------------------------------------------------------------------- framing


class FrameError(ValueError):
    """The bytes at an offset are not a complete frame with a matching CRC."""


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes
    end_offset: int
    """The offset just past this frame: where the next one starts."""


def encode_frame(payload: bytes) -> bytes:
    if not payload or len(payload) >= 1 << 32:
        raise ValueError(f"a frame payload must be 1 byte to 4 GiB, got {len(payload)} bytes")
    return _FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frame(data: bytes, offset: int) -> Frame:
    """The frame starting at ``offset``.

    Raises:
        FrameError: incomplete (runs past the end of ``data``), empty, or CRC mismatch.
    """
    if offset + FRAME_HEADER_BYTES > len(data):
        raise FrameError(f"incomplete frame header ({len(data) - offset} bytes)")
    length_bytes, crc = _FRAME_HEADER.unpack_from(data, offset)
    start = offset + FRAME_HEADER_BYTES
    end = start + length_bytes
    if length_bytes == 0:
        raise FrameError("zero-length frame")
    if end > len(data):
        raise FrameError(f"incomplete frame: {length_bytes} bytes announced, "
                         f"{len(data) - start} present")
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        raise FrameError(f"CRC mismatch over {length_bytes} bytes")
    return Frame(payload, end)


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class SnapshotMarker:
    """A snapshot's position in the log; the snapshot file is named after it."""

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class _Header:
    cluster_id: int
    member_id: int
    hard_state: HardState | None
    snapshot: SnapshotMarker | None


@dataclass(frozen=True, slots=True)
class _Save:
    installed: SnapshotMarker | None
    entries: tuple[Entry, ...]
    hard_state: HardState | None


_Record = _Header | _Save | SnapshotMarker


class RecordError(ValueError):
    """A frame whose CRC is fine but whose payload is not a record this version writes."""


def _marker_to_obj(m: SnapshotMarker | None) -> list[int] | None:
    return None if m is None else [m.index, m.term]


def _marker_from_obj(o: Any) -> SnapshotMarker | None:
    if o is None:
        return None
    if not (isinstance(o, list) and len(o) == 2 and all(type(v) is int and v >= 0 for v in o)):
        raise RecordError(f"malformed snapshot marker {o!r}")
    return SnapshotMarker(index=o[0], term=o[1])


def _encode_record(record: _Record) -> bytes:
    body: Any
    match record:
        case _Header():
            kind = _KIND_HEADER
            body = {
                "version": FORMAT_VERSION,
                "cluster_id": record.cluster_id,
                "member_id": record.member_id,
                "hard_state": (
                    None if record.hard_state is None else hard_state_to_obj(record.hard_state)
                ),
                "snapshot": _marker_to_obj(record.snapshot),
            }
        case _Save():
            kind = _KIND_SAVE
            hs = None if record.hard_state is None else hard_state_to_obj(record.hard_state)
            body = [_marker_to_obj(record.installed),
                    [entry_to_obj(e) for e in record.entries], hs]
        case SnapshotMarker():
            kind = _KIND_SNAPSHOT
            body = _marker_to_obj(record)
    return encode_frame(cbor2.dumps([kind, body]))


def _decode_record(payload: bytes) -> _Record:
    """Raises ``RecordError`` for anything this version would not have written."""
    try:
        obj = cbor2.loads(payload)
    except (cbor2.CBORError, ValueError, TypeError, EOFError) as exc:
        raise RecordError(f"undecodable payload: {exc}") from exc
    if not (isinstance(obj, list) and len(obj) == 2):
        raise RecordError("payload is not a [kind, body] pair")
    kind, body = obj
    try:
        if kind == _KIND_HEADER:
            return _decode_header(body)
        if kind == _KIND_SAVE:
            return _decode_save(body)
        if kind == _KIND_SNAPSHOT:
            marker = _marker_from_obj(body)
            if marker is None:
                raise RecordError("empty snapshot record")
            return marker
    except PeerError as exc:
        raise RecordError(str(exc)) from exc
    raise RecordError(f"unknown record kind {kind!r}")


def _decode_header(body: Any) -> _Header:
    if not isinstance(body, dict) or body.get("version") != FORMAT_VERSION:
        version = body.get("version") if isinstance(body, dict) else None
        raise RecordError(f"unsupported segment header version {version!r}")
    cluster_id, member_id = body.get("cluster_id"), body.get("member_id")
    if type(cluster_id) is not int or type(member_id) is not int:
        raise RecordError("segment header without integer cluster_id/member_id")
    hs_obj = body.get("hard_state")
    hs = None if hs_obj is None else hard_state_from_obj(hs_obj)
    return _Header(cluster_id, member_id, hs, _marker_from_obj(body.get("snapshot")))


def _decode_save(body: Any) -> _Save:
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[1], list)):
        raise RecordError("malformed save record")
    installed = _marker_from_obj(body[0])
    entries = tuple(entry_from_obj(o) for o in body[1])
    for prev, cur in itertools.pairwise(entries):
        if cur.index != prev.index + 1:
            raise RecordError(f"non-contiguous entries {prev.index} -> {cur.index}")
    hs = None if body[2] is None else hard_state_from_obj(body[2])
    return _Save(installed, entries, hs)


def _read_record(data: bytes, offset: int) -> tuple[_Record, int]:
    """The record at ``offset`` and the offset after it; raises FrameError/RecordError."""
    frame = read_frame(data, offset)
    return _decode_record(frame.payload), frame.end_offset


def _valid_record_after(data: bytes, start: int) -> int | None:
    """The offset of the first valid record starting after ``start``, if there is any.

    A torn write leaves nothing valid behind it, so finding one here means the bad record
    at ``start`` was damaged in place: corruption, not a crash.
    """
    candidates: list[int] = []
    for signature in _PAYLOAD_SIGNATURES:
        pos = data.find(signature, start + 1 + FRAME_HEADER_BYTES)
        while pos != -1:
            candidates.append(pos - FRAME_HEADER_BYTES)
            pos = data.find(signature, pos + 1)
    for offset in sorted(candidates):
        try:
            _read_record(data, offset)
        except (FrameError, RecordError):
            continue
        return offset
    return None


# ----------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class WalReplay:
    """What ``WAL.open`` found on disk.

    ``entries`` are the surviving log entries after the newest *installed* snapshot (older
    entries were replaced by it), contiguous, possibly starting well before the newest local
    snapshot: the caller decides where its in-memory log starts. ``snapshots`` lists every
    snapshot marker still in the WAL, oldest first, installed or local.
    """

    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshots: tuple[SnapshotMarker, ...]
    created: bool
    """True when the directory held no segment and a fresh WAL was started."""
    torn_tail_bytes: int
    """How many bytes of a torn tail were cut off the last segment (0 if it was clean)."""


@dataclass(slots=True)
class _Segment:
    seq: int
    first_index: int
    path: str
    max_entry_index: int = 0
    """The highest entry index written in this segment; ``release_to`` goes by it."""


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


@dataclass(slots=True)
class _ReplayState:
    """Accumulates the log while records are applied in order."""

    hard_state: HardState | None = None
    snapshots: list[SnapshotMarker] = field(default_factory=list)
    log: list[Entry] = field(default_factory=list)
    floor_index: int | None = None
    """Index of the newest installed snapshot: entries at or below it are covered by it."""

    def last_index(self) -> int:
        if self.log:
            return self.log[-1].index
        return self.floor_index or 0

    def note_snapshot(self, marker: SnapshotMarker) -> None:
        if not self.snapshots or self.snapshots[-1] != marker:
            self.snapshots.append(marker)

    def install(self, marker: SnapshotMarker) -> None:
        self.note_snapshot(marker)
        self.log.clear()
        self.floor_index = marker.index

    def append(self, batch: tuple[Entry, ...], where: str) -> None:
        if self.floor_index is not None:
            batch = tuple(e for e in batch if e.index > self.floor_index)
        if not batch:
            return
        first = batch[0].index
        if not self.log:
            if self.floor_index is not None and first != self.floor_index + 1:
                raise CorruptData(f"{where}: entries start at {first}, after a snapshot "
                                  f"installed at {self.floor_index}")
            self.log.extend(batch)
            return
        if first > self.log[-1].index + 1:
            raise CorruptData(f"{where}: entries jump from {self.log[-1].index} to {first}")
        keep = max(first - self.log[0].index, 0)
        del self.log[keep:]
        self.log.extend(batch)


# ----------------------------------------------------------------------------- the WAL


class WAL:
    """An open write-ahead log; create it with ``WAL.open``.

    Not thread-safe: one caller at a time (the runtime serializes persistence anyway).
    After an ``fsync`` error the WAL refuses further writes: what the page cache still holds
    is unknowable (the "fsyncgate" lesson), so the only safe continuation is to reopen from
    disk.
    """

    def __init__(
        self,
        fs: FileSystem,
        wal_dir: str,
        *,
        identity: tuple[int, int],
        segment_bytes: int,
        segments: list[_Segment],
        tail: FileHandle,
        tail_size_bytes: int,
        replay: _ReplayState,
    ) -> None:
        """Private: use ``WAL.open``."""
        self._fs = fs
        self._dir = wal_dir
        self._cluster_id, self._member_id = identity
        self._segment_bytes = segment_bytes
        self._segments = segments
        self._tail = tail
        self._tail_size_bytes = tail_size_bytes
        self._hard_state = replay.hard_state
        self._newest_snapshot = replay.snapshots[-1] if replay.snapshots else None
        self._last_index = replay.last_index()
        self._unsynced = False
        self._failure: str | None = None
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<WAL {self._dir} segments={len(self._segments)} "
            f"tail={posixpath.basename(self._segments[-1].path)} "
            f"tail_bytes={self._tail_size_bytes} last_index={self._last_index}"
            f"{' FAILED' if self._failure else ''}>"
        )

    # -- opening

    @classmethod
    def open(
        cls,
        fs: FileSystem,
        wal_dir: str,
        *,
        cluster_id: int,
        member_id: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> tuple[WAL, WalReplay]:
        """Open (or start) the WAL in ``wal_dir`` and replay it.

        Raises:
            CorruptData: a record failed its CRC and is not a torn tail, a segment belongs
                to another cluster or member, or the records contradict each other. The
                message names the file and byte offset.
            OSError: the file system failed.
        """
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        ensure_dir(fs, wal_dir)
        identity = (cluster_id, member_id)
        leftovers, segments = _list_segments(fs, wal_dir)
        state = _ReplayState()
        repair: _TornTail | None = None
        for i, seg in enumerate(segments):
            repair = _replay_segment(fs, seg, state, identity, is_last=i == len(segments) - 1)
        # Every segment has now proven it is ours: only from here on may files change.
        _remove_leftovers(fs, wal_dir, leftovers)
        torn_bytes = 0
        if repair is not None:
            torn_bytes = repair.apply(fs)
            if repair.remove_segment:
                segments.pop()
        created = not segments
        if created:
            segments.append(_create_segment(fs, wal_dir, 0, 1, identity, None, None))
        tail_path = segments[-1].path
        tail = fs.open_append(tail_path)
        # What was just read may still sit only in the page cache of a process that died
        # before its fsync. Raft is about to act on it (a vote, acknowledged entries), and
        # a later cut would seal it into a segment where a tear reads as corruption, so it
        # is made durable before anything is returned.
        try:
            tail.fsync()
            fs.fsync_dir(wal_dir)
        except OSError:
            tail.close()
            raise
        wal = cls(fs, wal_dir, identity=identity, segment_bytes=segment_bytes,
                  segments=segments, tail=tail,
                  tail_size_bytes=fs.file_size(tail_path), replay=state)
        replay = WalReplay(state.hard_state, tuple(state.log), tuple(state.snapshots),
                           created, torn_bytes)
        return wal, replay

    # -- writing

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        must_sync: bool = True,
        *,
        installed_snapshot: SnapshotMarker | None = None,
    ) -> None:
        """Append one record with ``entries`` and ``hard_state``: one write, then one fsync.

        Args:
            hard_state: the new hard state, or ``None`` if it did not change.
            entries: contiguous entries; a first index at or below the last one overwrites
                the conflicting suffix on replay.
            must_sync: fsync before returning (Raft's ``Ready.must_sync``).
            installed_snapshot: a snapshot received from the leader, already written to its
                file: on replay it discards every earlier entry.

        Raises:
            WriteNotDone: the write failed (e.g. ENOSPC) and the partial record was cut
                off: nothing changed, the WAL is still usable, the call may be repeated.
            OSError: nothing new is promised durable; after a failed fsync (or a failed
                cut) the WAL is unusable until reopened.
        """
        if not entries and hard_state is None and installed_snapshot is None:
            if must_sync:
                self.sync()
            return
        for prev, cur in itertools.pairwise(entries):
            assert cur.index == prev.index + 1, f"non-contiguous entries {prev} -> {cur}"
        record = _Save(installed_snapshot, tuple(entries), hard_state)
        self._append(_encode_record(record), must_sync)
        if installed_snapshot is not None:
            self._newest_snapshot = installed_snapshot
            self._last_index = installed_snapshot.index
        if entries:
            self._last_index = entries[-1].index
            tail = self._segments[-1]
            tail.max_entry_index = max(tail.max_entry_index, entries[-1].index)
        if hard_state is not None:
            self._hard_state = hard_state

    def save_snapshot_marker(self, marker: SnapshotMarker) -> None:
        """Record that the snapshot file for ``marker`` is complete (written and fsynced)."""
        self._append(_encode_record(marker), must_sync=True)
        self._newest_snapshot = marker

    def sync(self) -> None:
        """Fsync what earlier ``must_sync=False`` saves wrote."""
        self._check_usable()
        if not self._unsynced:
            return
        try:
            self._tail.fsync()
        except OSError as exc:
            self._failure = f"fsync of {self._segments[-1].path} failed: {exc}"
            raise
        self._unsynced = False

    def release_to(self, index: int) -> list[str]:
        """Delete the oldest segments whose entries are all at or below ``index``.

        Call it only once a snapshot covering ``index`` is durable. Only a prefix of the
        segments is deleted and never the tail, so replay of what remains is the same log.

        Returns:
            The paths deleted.
        """
        self._check_usable()
        removed: list[str] = []
        try:
            while len(self._segments) > 1 and self._segments[0].max_entry_index <= index:
                self._fs.remove(self._segments[0].path)
                removed.append(self._segments.pop(0).path)
        finally:
            if removed:
                self._fs.fsync_dir(self._dir)
        return removed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._tail.close()

    # -- internals

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if self._failure is not None:
            raise OSError(f"WAL unusable until reopened: {self._failure}")

    def _append(self, frame: bytes, must_sync: bool) -> None:
        self._check_usable()
        if self._tail_size_bytes >= self._segment_bytes:
            self._roll()
        try:
            self._tail.write(frame)
        except OSError as exc:
            self._cut_partial_write()
            if self._failure is None:  # cut: the WAL is as before the call
                raise WriteNotDone.wrap(exc, self._segments[-1].path) from exc
            raise
        self._tail_size_bytes += len(frame)
        self._unsynced = True
        if must_sync:
            self.sync()

    def _cut_partial_write(self) -> None:
        """Undo a failed write, or the next good record would sit behind garbage."""
        path = self._segments[-1].path
        try:
            self._fs.truncate(path, self._tail_size_bytes)
        except OSError as exc:
            self._failure = f"could not cut a partial write off {path}: {exc}"
            return
        self._unsynced = False  # truncate made the file durable

    def _roll(self) -> None:
        """Cut a new tail segment carrying the current hard state and snapshot marker."""
        self.sync()  # a newer segment must never follow one with an unsynced (tearable) end
        old = self._segments[-1]
        seg = _create_segment(self._fs, self._dir, old.seq + 1, self._last_index + 1,
                              (self._cluster_id, self._member_id),
                              self._hard_state, self._newest_snapshot)
        tail = self._fs.open_append(seg.path)
        self._tail.close()
        self._tail = tail
        self._tail_size_bytes = self._fs.file_size(seg.path)
        self._segments.append(seg)
        log.debug("wal: cut segment %s", seg.path)


def _create_segment(
    fs: FileSystem,
    wal_dir: str,
    seq: int,
    first_index: int,
    identity: tuple[int, int],
    hard_state: HardState | None,
    snapshot: SnapshotMarker | None,
) -> _Segment:
    """Write a segment holding only its header, durably (file and directory entry).

    The header is fsynced and the directory entry made durable before the segment is used,
    so that records acknowledged in it cannot vanish with an unsynced directory entry.
    """
    path = posixpath.join(wal_dir, segment_name(seq, first_index))
    header = _encode_record(_Header(identity[0], identity[1], hard_state, snapshot))
    if fs.exists(path):
        fs.truncate(path, 0)  # left over from a cut that failed half-way
    try:
        handle = fs.open_append(path)
    except OSError as exc:
        raise WriteNotDone.wrap(exc, path) from exc
    try:
        handle.write(header)
    except OSError as exc:
        # The old tail is untouched and a retry truncates whatever is left of this file.
        handle.close()
        _remove_quietly(fs, path)
        raise WriteNotDone.wrap(exc, path) from exc
    try:
        handle.fsync()
    except OSError:
        handle.close()
        _remove_quietly(fs, path)
        raise
    handle.close()
    fs.fsync_dir(wal_dir)
    return _Segment(seq, first_index, path)


def _remove_quietly(fs: FileSystem, path: str) -> None:
    try:
        fs.remove(path)
    except OSError:
        log.warning("wal: could not remove %s after a failed segment cut", path)


def _list_segments(fs: FileSystem, wal_dir: str) -> tuple[list[_Segment], list[_Segment]]:
    """``(leftovers, segments)``: the segments in order, split at the last sequence gap.

    Releases delete a prefix of the segments; if a crash made only some of those deletions
    durable, a gap in the sequence numbers shows it, and everything before the gap was
    already released (the leftovers).
    """
    segments: list[_Segment] = []
    for name in fs.listdir(wal_dir):
        if not name.endswith(".wal"):
            continue
        match = _SEGMENT_NAME.match(name)
        if match is None:
            raise CorruptData(f"{posixpath.join(wal_dir, name)}: not a WAL segment name")
        seq, first_index = int(match.group(1), 16), int(match.group(2), 16)
        segments.append(_Segment(seq, first_index, posixpath.join(wal_dir, name)))
    segments.sort(key=lambda s: s.seq)
    for prev, cur in itertools.pairwise(segments):
        if cur.seq == prev.seq:
            raise CorruptData(f"{cur.path}: duplicate segment sequence number with {prev.path}")
    start = 0
    for i in range(1, len(segments)):
        if segments[i].seq != segments[i - 1].seq + 1:
            start = i
    return segments[:start], segments[start:]


def _remove_leftovers(fs: FileSystem, wal_dir: str, leftovers: list[_Segment]) -> None:
    for seg in leftovers:
        log.warning("wal: removing %s, left over from an interrupted release", seg.path)
        fs.remove(seg.path)
    if leftovers:
        fs.fsync_dir(wal_dir)


@dataclass(frozen=True, slots=True)
class _TornTail:
    """The repair replay decided on for the last segment, applied once all segments passed."""

    path: str
    good_bytes: int
    torn_bytes: int
    remove_segment: bool
    """The header itself is torn: the segment never became usable, so it goes entirely."""

    def apply(self, fs: FileSystem) -> int:
        if self.remove_segment:
            log.warning("wal: removing %s: its header never became durable", self.path)
            fs.remove(self.path)
            fs.fsync_dir(posixpath.dirname(self.path))
        else:
            log.warning("wal: cutting a torn tail of %d bytes off %s at byte offset %d",
                        self.torn_bytes, self.path, self.good_bytes)
            fs.truncate(self.path, self.good_bytes)
        return self.torn_bytes


def _replay_segment(
    fs: FileSystem,
    seg: _Segment,
    state: _ReplayState,
    identity: tuple[int, int],
    *,
    is_last: bool,
) -> _TornTail | None:
    """Apply one segment's records to ``state``; returns the repair its end needs, if any."""
    data = fs.read_file(seg.path)
    offset = 0
    seen_header = False
    while offset < len(data):
        where = f"{seg.path} at byte offset {offset}"
        try:
            record, next_offset = _read_record(data, offset)
        except FrameError as exc:
            return _diagnose_bad_record(seg, data, offset, exc, is_last=is_last,
                                        seen_header=seen_header)
        except RecordError as exc:
            # The CRC matched, so these bytes were written whole: no crash made them. A
            # newer format or a bug must stop the member, not be cut off as a torn tail.
            raise CorruptData(f"{where}: unreadable record: {exc}") from exc
        if not seen_header:
            _check_header(record, identity, where)
            seen_header = True
        elif isinstance(record, _Header):
            raise CorruptData(f"{where}: a segment header in the middle of a segment")
        _apply_record(record, state, seg, where)
        offset = next_offset
    if not seen_header:
        return _diagnose_bad_record(seg, data, 0, FrameError("empty segment"),
                                    is_last=is_last, seen_header=False)
    return None


def _diagnose_bad_record(
    seg: _Segment,
    data: bytes,
    offset: int,
    exc: Exception,
    *,
    is_last: bool,
    seen_header: bool,
) -> _TornTail:
    """A torn tail to cut off, or ``CorruptData`` if the damage cannot be a crash's."""
    where = f"{seg.path} at byte offset {offset}"
    if not is_last:
        raise CorruptData(f"{where}: bad record in a sealed segment: {exc}")
    follower = _valid_record_after(data, offset)
    if follower is not None:
        raise CorruptData(
            f"{where}: bad record followed by a valid one at byte offset {follower} "
            f"(corruption, not a torn write): {exc}"
        )
    return _TornTail(seg.path, offset, len(data) - offset, remove_segment=not seen_header)


def _check_header(record: _Record, identity: tuple[int, int], where: str) -> None:
    if not isinstance(record, _Header):
        raise CorruptData(f"{where}: a segment must start with a header record")
    if (record.cluster_id, record.member_id) != identity:
        raise CorruptData(
            f"{where}: this WAL belongs to cluster {record.cluster_id:#x} member "
            f"{record.member_id:#x}, not to cluster {identity[0]:#x} member "
            f"{identity[1]:#x}; refusing to use another member's data"
        )


def _apply_record(record: _Record, state: _ReplayState, seg: _Segment, where: str) -> None:
    match record:
        case _Header():
            if record.hard_state is not None:
                state.hard_state = record.hard_state
            if record.snapshot is not None:
                state.note_snapshot(record.snapshot)
        case _Save():
            if record.installed is not None:
                state.install(record.installed)
            state.append(record.entries, where)
            if record.entries:
                seg.max_entry_index = max(seg.max_entry_index, record.entries[-1].index)
            if record.hard_state is not None:
                state.hard_state = record.hard_state
        case SnapshotMarker():
            state.note_snapshot(record)
