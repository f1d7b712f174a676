"""The file-system seam: the few operations the WAL and snapshot files need, and ``OsFS``.

Everything in ``storage/`` reaches the disk through ``FileSystem``, so that the deterministic
simulator and the crash tests can run the production code on ``testing.simfs.SimFS``, where
"what survives a power cut" is modelled explicitly. The operations are chosen so that every
durability step is visible at the call site:

* data written through a ``FileHandle`` is durable only after ``FileHandle.fsync``;
* creating, renaming or removing a directory entry is durable only after ``fsync_dir`` of
  the directory that holds it;
* ``truncate`` is the exception: it fsyncs the file itself, because it is only used to repair
  a torn tail or undo a failed write, and both must be durable before anything is appended.

Paths are POSIX strings. Nothing here buffers: a ``write`` reaches the OS before it returns.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Iterator
from typing import Protocol


class WriteNotDone(OSError):
    """A write failed and was undone: nothing of it is on disk (a partial write was cut
    off, a half-written new file removed) and the object that raised it is still usable,
    so the same call may simply be repeated — typically once a full disk has room again.

    It keeps the original ``errno`` (``ENOSPC``, ``EDQUOT``, ``EFBIG``, ...), so callers
    that only catch ``OSError`` see no difference. A failed *fsync* never raises this: what
    the page cache then holds is unknowable, and the WAL refuses further writes.
    """

    @classmethod
    def wrap(cls, exc: OSError, path: str | None = None) -> WriteNotDone:
        """``exc`` as a ``WriteNotDone``, naming ``path`` if ``exc`` names no file."""
        if exc.errno is None:
            return cls(str(exc))
        return cls(exc.errno, exc.strerror or str(exc), exc.filename or path)


class FileHandle(Protocol):
    """A file opened for appending."""

    def write(self, data: bytes) -> None:
        """Append all of ``data``, or raise ``OSError``.

        On error a prefix of ``data`` may already be in the file; the caller must truncate
        back to the size it had before the call if it wants the file unchanged.
        """
        ...

    def fsync(self) -> None:
        """Make every byte written so far durable."""
        ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """What the durable storage layer needs from a file system (see the module docstring)."""

    def makedirs(self, path: str) -> None:
        """Create ``path`` and any missing parents; an existing directory is fine."""
        ...

    def listdir(self, path: str) -> list[str]:
        """The names in directory ``path``, sorted, so that callers iterate deterministically."""
        ...

    def exists(self, path: str) -> bool: ...

    def file_size(self, path: str) -> int:
        """The size of the file in bytes as the OS sees it now (synced or not)."""
        ...

    def read_file(self, path: str) -> bytes:
        """The whole file as the OS sees it now (synced or not)."""
        ...

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        """The file as ``read_file`` sees it, in pieces of at most ``chunk_bytes``: for
        checking a large file (a snapshot) without holding all of it in memory."""
        ...

    def open_append(self, path: str) -> FileHandle:
        """Open ``path`` for appending, creating it (not durably: see ``fsync_dir``)."""
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src``; durable after ``fsync_dir``."""
        ...

    def remove(self, path: str) -> None:
        """Unlink a file; durable after ``fsync_dir``."""
        ...

    def truncate(self, path: str, size_bytes: int) -> None:
        """Cut the file to ``size_bytes`` and make the result durable."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make the creations, renames and removals in directory ``path`` durable."""
        ...


# ----------------------------------------------------------------------------- helpers


class ForwardingFS:
    """A ``FileSystem`` that forwards every call to ``inner``: the base of wrappers that
    change a few calls (fault hooks, call counters) and must pass the rest through."""

    def __init__(self, inner: FileSystem) -> None:
        self.inner = inner

    def makedirs(self, path: str) -> None:
        self.inner.makedirs(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def file_size(self, path: str) -> int:
        return self.inner.file_size(path)

    def read_file(self, path: str) -> bytes:
        return self.inner.read_file(path)

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        return self.inner.read_chunks(path, chunk_bytes)

    def open_append(self, path: str) -> FileHandle:
        return self.inner.open_append(path)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def remove(self, path: str) -> None:
        self.inner.remove(path)

    def truncate(self, path: str, size_bytes: int) -> None:
        self.inner.truncate(path, size_bytes)

    def fsync_dir(self, path: str) -> None:
        self.inner.fsync_dir(path)


def ensure_dir(fs: FileSystem, path: str) -> None:
    """``mkdir -p`` whose result survives a crash.

    ``makedirs`` alone is not enough: a freshly created directory can vanish on power loss
    unless the directory holding it is fsynced too, and files fsynced inside a vanished
    directory vanish with it.
    """
    missing: list[str] = []
    probe = posixpath.normpath(path)
    while not fs.exists(probe):
        missing.append(probe)
        parent = posixpath.dirname(probe)
        if parent == probe or not parent:
            break
        probe = parent
    if not missing:
        return
    fs.makedirs(path)
    for created in reversed(missing):
        parent = posixpath.dirname(created)
        if parent and parent != created:
            fs.fsync_dir(parent)


def write_file_atomically(fs: FileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash leaves either the old or the new file.

    The recipe (DESIGN §3): write ``<path>.tmp``, fsync it, rename it over ``path``, fsync
    the directory. A crash before the rename leaves a ``.tmp`` file that readers ignore.

    Raises:
        WriteNotDone: creating or writing the ``.tmp`` file failed (e.g. ENOSPC); ``path``
            is unchanged and the call may be repeated.
        OSError: the file system failed otherwise; ``path`` is unchanged and the ``.tmp``
            file is removed if possible.
    """
    tmp_path = path + ".tmp"
    if fs.exists(tmp_path):
        fs.remove(tmp_path)
    try:
        handle = fs.open_append(tmp_path)
    except OSError as exc:
        raise WriteNotDone.wrap(exc, tmp_path) from exc
    try:
        handle.write(data)
    except OSError as exc:
        handle.close()
        _remove_quietly(fs, tmp_path)
        raise WriteNotDone.wrap(exc, tmp_path) from exc
    try:
        handle.fsync()
    except OSError:
        handle.close()
        _remove_quietly(fs, tmp_path)
        raise
    handle.close()
    fs.rename(tmp_path, path)
    fs.fsync_dir(posixpath.dirname(path))


def _remove_quietly(fs: FileSystem, path: str) -> None:
    """Best-effort cleanup on an error path: the original error is the one worth raising."""
    with contextlib.suppress(OSError):
        fs.remove(path)


# ----------------------------------------------------------------------------- OsFS


class _OsFile:
    """An ``O_APPEND`` file descriptor: every write lands at the current end of file."""

    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path

    def __repr__(self) -> str:
        return f"<_OsFile {self._path} fd={self._fd}>"

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written_bytes = os.write(self._fd, view)
            view = view[written_bytes:]

    def fsync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class OsFS:
    """The real file system.

    ``fsync`` is ``os.fsync``: on Linux that reaches the device; on macOS it only reaches
    the drive's cache (``F_FULLFSYNC`` would be needed), which is acceptable for development
    machines, not for production data.
    """

    def __repr__(self) -> str:
        return "<OsFS>"

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def file_size(self, path: str) -> int:
        return os.path.getsize(path)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def read_chunks(self, path: str, chunk_bytes: int) -> Iterator[bytes]:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(chunk_bytes):
                yield chunk

    def open_append(self, path: str) -> FileHandle:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        return _OsFile(os.open(path, flags, 0o644), path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def truncate(self, path: str, size_bytes: int) -> None:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            os.ftruncate(fd, size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
