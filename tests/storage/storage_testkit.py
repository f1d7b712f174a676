"""Helpers shared by the storage tests: a counting FileSystem wrapper and log views.

The counter wraps a real ``FileSystem`` (SimFS or OsFS) instead of mocking, so a test of
"one write and one fsync per save" runs the production code path end to end.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from discoverd.consensus.messages import Entry, HardState, Snapshot
from discoverd.consensus.storage import LogStorage
from discoverd.storage.fs import FileHandle, FileSystem, ForwardingFS
from discoverd.storage.wal import FRAME_HEADER_BYTES, read_frame


class _CountingHandle:
    def __init__(self, inner: FileHandle, counts: collections.Counter[str]) -> None:
        self._inner = inner
        self._counts = counts

    def write(self, data: bytes) -> None:
        self._counts["write"] += 1
        self._inner.write(data)

    def fsync(self) -> None:
        self._counts["fsync"] += 1
        self._inner.fsync()

    def close(self) -> None:
        self._inner.close()


class CountingFS(ForwardingFS):
    """Forwards to ``inner`` and counts calls by name (``write``/``fsync`` are per handle)."""

    def __init__(self, inner: FileSystem) -> None:
        super().__init__(inner)
        self.counts: collections.Counter[str] = collections.Counter()

    def reset(self) -> None:
        self.counts.clear()

    def makedirs(self, path: str) -> None:
        self.counts["makedirs"] += 1
        self.inner.makedirs(path)

    def open_append(self, path: str) -> FileHandle:
        self.counts["open_append"] += 1
        return _CountingHandle(self.inner.open_append(path), self.counts)

    def rename(self, src: str, dst: str) -> None:
        self.counts["rename"] += 1
        self.inner.rename(src, dst)

    def remove(self, path: str) -> None:
        self.counts["remove"] += 1
        self.inner.remove(path)

    def truncate(self, path: str, size_bytes: int) -> None:
        self.counts["truncate"] += 1
        self.inner.truncate(path, size_bytes)

    def fsync_dir(self, path: str) -> None:
        self.counts["fsync_dir"] += 1
        self.inner.fsync_dir(path)


def frame_offsets(data: bytes) -> list[int]:
    """Start offsets of the frames in a WAL segment (stops at the first bad one)."""
    offsets: list[int] = []
    offset = 0
    while offset + FRAME_HEADER_BYTES <= len(data):
        try:
            frame = read_frame(data, offset)
        except ValueError:
            break
        offsets.append(offset)
        offset = frame.end_offset
    return offsets


def ents(term: int, first: int, last: int, tag: bytes = b"") -> list[Entry]:
    """Entries ``first..last`` (inclusive) of one term, with data naming them."""
    return [Entry(term=term, index=i, data=tag + b"%d/%d" % (term, i))
            for i in range(first, last + 1)]


@dataclass(frozen=True)
class LogView:
    """Everything Raft can read from a ``LogStorage``, for equality checks across restarts."""

    hard_state: HardState
    snapshot: Snapshot
    first_index: int
    last_index: int
    dummy_term: int
    entries: tuple[Entry, ...]


def view(storage: LogStorage) -> LogView:
    hs, _ = storage.initial_state()
    first, last = storage.first_index(), storage.last_index()
    return LogView(hs, storage.snapshot(), first, last, storage.term(first - 1),
                   tuple(storage.entries(first, last + 1)))
