"""TEST HOOKS ONLY: disk faults injected at the file-system boundary of a real member, for
the crash and full-disk tests (``tests/faults/``). Never set these in production.

Each hook is an environment variable read once, when the member opens its storage
(``wrap_fs``). With none set, ``wrap_fs`` returns the ``FileSystem`` it was given, unchanged:
no wrapper, no check per write, nothing to pay. They live here, not in ``storage/``, because
they need a clock and randomness, which the pure storage package must not import.

* ``DISCOVERD_TEST_WAL_SLOW_SYNC_MS=<n>``: every write to a WAL segment (``*.wal``) is done
  in two halves with a random pause of 0..n ms between them, and every fsync of one waits
  0..n ms first (the pauses are drawn from a ``random.Random`` seeded with the pid). A
  ``kill -9`` during a write burst then lands mid-record or before the fsync far more often,
  leaving torn records at the WAL's tail for recovery to cut off.
* ``DISCOVERD_TEST_ENOSPC_FILE=<path>``: while ``<path>`` exists, every write (WAL, snapshot
  and meta files alike) stores the first half of its data and then fails with ``ENOSPC``,
  as a full disk does; the file is looked for on every write, so a test fills and frees the
  "disk" by creating and removing it. Fsync, truncate and everything else are unaffected.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections.abc import Mapping

from discoverd.storage.fs import FileHandle, FileSystem, ForwardingFS

SLOW_SYNC_ENV = "DISCOVERD_TEST_WAL_SLOW_SYNC_MS"
ENOSPC_FILE_ENV = "DISCOVERD_TEST_ENOSPC_FILE"


def wrap_fs(fs: FileSystem, environ: Mapping[str, str] | None = None) -> FileSystem:
    """``fs`` with the hooks the environment asks for, or ``fs`` itself if none."""
    env = os.environ if environ is None else environ
    slow_ms = float(env.get(SLOW_SYNC_ENV) or 0)
    enospc_file = env.get(ENOSPC_FILE_ENV) or None
    if slow_ms <= 0 and enospc_file is None:
        return fs
    return FaultyFS(fs, slow_sync_ms=slow_ms, enospc_file=enospc_file)


class _FaultyHandle:
    def __init__(self, inner: FileHandle, path: str, fs: FaultyFS) -> None:
        self._inner = inner
        self._path = path
        self._fs = fs
        self._slow = fs.slow_sync_ms > 0 and path.endswith(".wal")

    def write(self, data: bytes) -> None:
        half = len(data) // 2
        if self._fs.enospc_file is not None and os.path.exists(self._fs.enospc_file):
            if half:
                self._inner.write(data[:half])
            raise OSError(errno.ENOSPC, f"No space left on device (test hook {ENOSPC_FILE_ENV})",
                          self._path)
        if self._slow and half:
            self._inner.write(data[:half])
            self._fs.pause()
            self._inner.write(data[half:])
            return
        self._inner.write(data)

    def fsync(self) -> None:
        if self._slow:
            self._fs.pause()
        self._inner.fsync()

    def close(self) -> None:
        self._inner.close()


class FaultyFS(ForwardingFS):
    """A ``FileSystem`` that forwards to another one and injects the faults above."""

    def __init__(self, inner: FileSystem, *, slow_sync_ms: float = 0.0,
                 enospc_file: str | None = None) -> None:
        super().__init__(inner)
        self.slow_sync_ms = slow_sync_ms
        self.enospc_file = enospc_file
        self._rng = random.Random(os.getpid())
        self._rng_lock = threading.Lock()  # writes run on worker threads

    def __repr__(self) -> str:
        return (f"<FaultyFS {self.inner!r} slow_sync_ms={self.slow_sync_ms} "
                f"enospc_file={self.enospc_file!r}>")

    def pause(self) -> None:
        with self._rng_lock:
            seconds = self._rng.uniform(0, self.slow_sync_ms) / 1000
        time.sleep(seconds)  # the point of the hook: a window for kill -9 to land in

    def open_append(self, path: str) -> FileHandle:
        return _FaultyHandle(self.inner.open_append(path), path, self)
