"""SimFS: an in-memory ``FileSystem`` that knows what a power cut would keep.

The storage layer is only as good as its story about crashes, so this file system keeps two
views and lets a test (or the simulator) pull the plug between any two calls:

* **File contents.** Each file (an *inode*) has ``durable`` bytes and a list of ``pending``
  writes. ``FileHandle.fsync`` moves the pending writes into the durable bytes.
* **Directory entries.** The *live* namespace (what ``listdir``/``read_file`` see now) and the
  *durable* namespace (what a crash leaves) are separate maps from path to inode. Creating,
  renaming or removing a file, and creating a directory, change only the live map;
  ``fsync_dir(d)`` copies the entries of ``d`` from the live map to the durable one.

``crash()`` replaces the live namespace by the durable one and every file's contents by its
durable bytes. With an ``rng`` and ``tear=True`` a crash may also keep some of the pending
writes, in order: a few whole writes and then a random prefix of the next one (a *torn*
write), and may garble bytes inside the last kept piece. Durable bytes are never touched:
media corruption is a different fault, injected explicitly with ``corrupt_byte``.

Faults for tests: ``space_left_bytes`` (writes past it store what fits, then raise ENOSPC, as a
full disk does) and ``fail_next(op, exc)`` (the next call of ``op`` raises ``exc``).

Deterministic by construction: no global RNG, every iteration over a dict is in sorted order,
and the only randomness is the ``random.Random`` passed to ``crash``.

Simplifications, on purpose: one flat map of paths (no hard links), sizes are not limited per
file, removing files does not give space back, and ``truncate`` is durable at once (like
``OsFS.truncate``, which fsyncs).
"""

from __future__ import annotations

import errno
import posixpath
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from discoverd.storage.fs import FileHandle

FAULT_OPS = frozenset(
    {"write", "fsync", "fsync_dir", "open", "rename", "remove", "truncate", "read"}
)
"""The operation names ``SimFS.fail_next`` accepts."""

_GARBLE_PROBABILITY = 0.5
_MAX_GARBLED_BYTES = 4


@dataclass(slots=True)
class _Inode:
    durable: bytearray = field(default_factory=bytearray)
    pending: list[bytes] = field(default_factory=list)

    def content(self) -> bytes:
        return bytes(self.durable) + b"".join(self.pending)

    def size_bytes(self) -> int:
        return len(self.durable) + sum(len(w) for w in self.pending)


class _SimHandle:
    """An append handle bound to an inode and to the "boot" it was opened in."""

    def __init__(self, fs: SimFS, inode_id: int, path: str) -> None:
        self._fs = fs
        self._inode_id = inode_id
        self._path = path
        self._boot = fs.boot_count
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<_SimHandle {self._path} inode={self._inode_id} {state}>"

    def _inode(self) -> _Inode:
        if self._closed:
            raise OSError(errno.EBADF, "handle is closed", self._path)
        if self._boot != self._fs.boot_count:
            raise OSError(errno.EBADF, "handle was opened before a crash", self._path)
        return self._fs._inode(self._inode_id)

    def write(self, data: bytes) -> None:
        inode = self._inode()
        self._fs._take_fault("write", self._path)
        stored = self._fs._reserve_space(len(data))
        if stored:
            inode.pending.append(bytes(data[:stored]))
        if stored < len(data):
            raise OSError(errno.ENOSPC, "no space left on device", self._path)

    def fsync(self) -> None:
        inode = self._inode()
        self._fs._take_fault("fsync", self._path)
        for chunk in inode.pending:
            inode.durable += chunk
        inode.pending.clear()

    def close(self) -> None:
        self._closed = True


class SimFS:
    """In-memory ``FileSystem`` with an explicit durable state; see the module docstring."""

    def __init__(self) -> None:
        self.boot_count = 0
        """Incremented by every crash; handles from an earlier boot refuse to work."""
        self.space_left_bytes: int | None = None
        """Bytes that writes may still store; ``None`` means unlimited."""
        self._inodes: dict[int, _Inode] = {}
        self._next_inode_id = 1
        self._live_files: dict[str, int] = {}
        self._durable_files: dict[str, int] = {}
        self._live_dirs: set[str] = set()
        self._durable_dirs: set[str] = set()
        self._faults: dict[str, list[tuple[str, BaseException]]] = {}

    def __repr__(self) -> str:
        unsynced = sum(1 for i in self._inodes.values() if i.pending)
        return (
            f"<SimFS boot={self.boot_count} files={len(self._live_files)} "
            f"durable_files={len(self._durable_files)} unsynced_files={unsynced} "
            f"space_left={self.space_left_bytes}>"
        )

    # -- fault injection

    def fail_next(self, op: str, exc: BaseException, *, path_prefix: str = "") -> None:
        """Make the next call of ``op`` (one of ``FAULT_OPS``) raise ``exc`` without effect.

        With ``path_prefix``, only a call on a path starting with it counts, so a test can
        fail e.g. the WAL's write and not the snapshot file's written just before it.
        """
        if op not in FAULT_OPS:
            raise ValueError(f"unknown operation {op!r}; expected one of {sorted(FAULT_OPS)}")
        self._faults.setdefault(op, []).append((path_prefix, exc))

    def _take_fault(self, op: str, path: str) -> None:
        """Raise the first queued fault for ``op`` that matches ``path``, if any."""
        queued = self._faults.get(op, [])
        path = posixpath.normpath(path)
        for i, (prefix, exc) in enumerate(queued):
            if path.startswith(prefix):
                del queued[i]
                raise exc

    def _reserve_space(self, want_bytes: int) -> int:
        """How many of ``want_bytes`` fit; the space is consumed."""
        if self.space_left_bytes is None:
            return want_bytes
        granted = min(want_bytes, self.space_left_bytes)
        self.space_left_bytes -= granted
        return granted

    def corrupt_byte(self, path: str, offset_bytes: int, xor_mask: int = 0xFF) -> None:
        """Flip bits of a byte as media corruption would: in the durable bytes too."""
        inode = self._inode(self._file_inode_id(path))
        if offset_bytes < len(inode.durable):
            inode.durable[offset_bytes] ^= xor_mask
            return
        rel = offset_bytes - len(inode.durable)
        for i, chunk in enumerate(inode.pending):
            if rel < len(chunk):
                garbled = bytearray(chunk)
                garbled[rel] ^= xor_mask
                inode.pending[i] = bytes(garbled)
                return
            rel -= len(chunk)
        raise ValueError(f"offset {offset_bytes} is past the end of {path}")

    def unsynced_bytes(self, path: str) -> int:
        """How many bytes of ``path`` a crash would lose (for assertions in tests)."""
        return sum(len(w) for w in self._inode(self._file_inode_id(path)).pending)

    # -- the crash

    def crash(self, rng: random.Random | None = None, tear: bool = True) -> None:
        """Lose everything that was not made durable, as a power cut would.

        Args:
            rng: with ``tear``, decides per file how much of the pending data survives and
                whether the last surviving piece is garbled. ``None`` drops all of it.
            tear: allow torn and garbled tails (only with ``rng``).
        """
        self.boot_count += 1
        self._live_dirs = {d for d in self._durable_dirs if self._dir_survives(d)}
        self._durable_dirs = set(self._live_dirs)
        self._live_files = {
            path: inode_id
            for path, inode_id in sorted(self._durable_files.items())
            if self._dir_survives(posixpath.dirname(path))
        }
        self._durable_files = dict(self._live_files)
        survivors = sorted(set(self._live_files.values()))
        self._inodes = {i: self._inodes[i] for i in survivors}
        for inode_id in survivors:
            inode = self._inodes[inode_id]
            kept = _surviving_tail(inode.pending, rng if tear else None)
            inode.durable += kept
            inode.pending = []

    def _dir_survives(self, path: str) -> bool:
        while True:
            parent = posixpath.dirname(path)
            if parent == path or not path:
                return True
            if path not in self._durable_dirs:
                return False
            path = parent

    # -- FileSystem

    def makedirs(self, path: str) -> None:
        path = posixpath.normpath(path)
        if path in self._live_files:
            raise FileExistsError(errno.EEXIST, "a file is in the way", path)
        while not self._is_root(path) and path not in self._live_dirs:
            self._live_dirs.add(path)
            path = posixpath.dirname(path)

    def listdir(self, path: str) -> list[str]:
        path = posixpath.normpath(path)
        self._require_dir(path)
        names = {posixpath.basename(p) for p in self._live_files if posixpath.dirname(p) == path}
        names |= {posixpath.basename(d) for d in self._live_dirs if self._parent(d) == path}
        return sorted(names)

    def exists(self, path: str) -> bool:
        path = posixpath.normpath(path)
        return self._is_root(path) or path in self._live_dirs or path in self._live_files

    def file_size(self, path: str) -> int:
        return self._inode(self._file_inode_id(path)).size_bytes()

    def read_file(self, path: str) -> bytes:
        inode_id = self._file_inode_id(path)
        self._take_fault("read", path)
        return self._inode(inode_id).content()

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        content = self.read_file(path)  # the fault, if any, before the first piece
        return iter([content[i : i + chunk_bytes] for i in range(0, len(content), chunk_bytes)])

    def open_append(self, path: str) -> FileHandle:
        path = posixpath.normpath(path)
        self._take_fault("open", path)
        if path in self._live_dirs:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        inode_id = self._live_files.get(path)
        if inode_id is None:
            self._require_dir(posixpath.dirname(path))
            inode_id = self._next_inode_id
            self._next_inode_id += 1
            self._inodes[inode_id] = _Inode()
            self._live_files[path] = inode_id
        return _SimHandle(self, inode_id, path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = posixpath.normpath(src), posixpath.normpath(dst)
        inode_id = self._file_inode_id(src)
        self._require_dir(posixpath.dirname(dst))
        self._take_fault("rename", src)
        del self._live_files[src]
        self._live_files[dst] = inode_id

    def remove(self, path: str) -> None:
        path = posixpath.normpath(path)
        self._file_inode_id(path)
        self._take_fault("remove", path)
        del self._live_files[path]

    def truncate(self, path: str, size_bytes: int) -> None:
        inode = self._inode(self._file_inode_id(path))
        self._take_fault("truncate", path)
        inode.durable = bytearray(inode.content()[:size_bytes])
        inode.pending = []

    def fsync_dir(self, path: str) -> None:
        path = posixpath.normpath(path)
        self._require_dir(path)
        self._take_fault("fsync_dir", path)
        for p in sorted(self._durable_files):
            if posixpath.dirname(p) == path and p not in self._live_files:
                del self._durable_files[p]
        for p, inode_id in sorted(self._live_files.items()):
            if posixpath.dirname(p) == path:
                self._durable_files[p] = inode_id
        self._durable_dirs = {d for d in self._durable_dirs if self._parent(d) != path}
        self._durable_dirs |= {d for d in self._live_dirs if self._parent(d) == path}

    # -- internals

    def _inode(self, inode_id: int) -> _Inode:
        return self._inodes[inode_id]

    def _file_inode_id(self, path: str) -> int:
        path = posixpath.normpath(path)
        inode_id = self._live_files.get(path)
        if inode_id is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        return inode_id

    def _require_dir(self, path: str) -> None:
        if not (self._is_root(path) or path in self._live_dirs):
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)

    @staticmethod
    def _parent(path: str) -> str:
        return posixpath.dirname(path)

    @staticmethod
    def _is_root(path: str) -> bool:
        return not path or posixpath.dirname(path) == path


def _surviving_tail(pending: list[bytes], rng: random.Random | None) -> bytes:
    """What a crash keeps of the unsynced writes: whole writes, then maybe a torn prefix.

    Garbling is confined to the last kept piece, because a disk that loses power mid-write
    damages the sectors it was writing, not the ones it had finished.
    """
    if rng is None or not pending:
        return b""
    whole_writes = rng.randint(0, len(pending))
    pieces = list(pending[:whole_writes])
    if whole_writes < len(pending):
        torn = pending[whole_writes]
        prefix_bytes = rng.randint(0, len(torn))
        if prefix_bytes:
            pieces.append(torn[:prefix_bytes])
    if pieces and rng.random() < _GARBLE_PROBABILITY:
        last = bytearray(pieces[-1])
        for _ in range(rng.randint(1, min(_MAX_GARBLED_BYTES, len(last)))):
            last[rng.randrange(len(last))] ^= rng.randint(1, 255)
        pieces[-1] = bytes(last)
    return b"".join(pieces)
