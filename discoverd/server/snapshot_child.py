"""Build and write a snapshot file in a forked child process.

Encoding a large store is seconds of pure-Python and cbor2 work. On a worker thread it
still holds the GIL most of the time (measured at 1,000,000 keys: the event loop got a
quarter of the interpreter and missed heartbeats long enough for elections; issue 12), so
the member forks instead, as Redis does for its RDB files. The fork *is* the freeze: it
happens right after the Ready that reached the snapshot's index, before anything more is
applied, so the child's copy-on-write memory is exactly that state (no copy of a million
versions on the event loop). The child encodes it, writes and fsyncs the file with the
member's own storage code and exits; the parent's event loop runs on untouched (it waits for
the exit on a pidfd). The parent then checks the file's CRC, streamed (it never holds the
image: the storage reads the file when a follower needs it), and records the snapshot in
its WAL (``raft_loop``).

The child runs nothing but the builder and the file write and leaves with ``os._exit`` —
never back into trio, never through ``atexit`` or buffered streams it shares with the
parent. Its outcome travels in the exit status.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
import signal
import struct
import time
from collections.abc import Callable, Sequence

import trio

from discoverd.consensus.messages import Snapshot
from discoverd.storage.fs import WriteNotDone

WRITTEN = 0
NOT_NEWER = 1
OTHER_OS_ERROR = 2
FAILED = 3
WRITE_NOT_DONE = 16
"""Exit statuses; ``WRITE_NOT_DONE + errno`` for a write undone for lack of room."""

_TIMING = struct.Struct("<d")


class SnapshotChildFailed(RuntimeError):
    """The child crashed or was killed, or raised something other than an OSError."""


def available() -> bool:
    return hasattr(os, "fork")


class SnapshotChild:
    """A forked child building and writing one snapshot file."""

    def __init__(self, pid: int, timing_fd: int) -> None:
        self.pid = pid
        self._timing_fd = timing_fd

    @classmethod
    def fork(cls, make: Callable[[], Snapshot], write_file: Callable[[Snapshot], bool],
             *, close_fds: Sequence[int] = ()) -> SnapshotChild:
        """Fork now — the child's memory is the state as it is at this instant, so call
        this before applying anything more — to run ``write_file(make())`` there.

        ``close_fds``: descriptors the child must not keep, above all the data dir's lock
        (a ``flock`` lives as long as any process holds its file open: a child outliving a
        killed member would keep its restart out). The child also dies with its parent.

        Raises:
            OSError: the fork failed (e.g. no memory for the page tables).
        """
        timing_r, timing_w = os.pipe()
        parent = os.getpid()
        try:
            pid = os.fork()
        except BaseException:
            os.close(timing_r)
            os.close(timing_w)
            raise
        if pid == 0:  # pragma: no cover - the child; its outcome is the exit status
            os.close(timing_r)
            _child(make, write_file, timing_w, parent, close_fds)
        os.close(timing_w)
        return cls(pid, timing_r)

    async def wait(self) -> tuple[bool, float]:
        """Whether the file was written (False: ``write_file`` found the snapshot no newer
        than the one held) and the seconds ``make`` took in the child (0.0 if it never
        finished). A cancelled wait kills the child.

        Raises:
            WriteNotDone: no room (nothing of the file is left), with the child's errno.
            OSError: another write failure in the child.
            SnapshotChildFailed: anything else went wrong in the child.
        """
        reaped = False
        try:
            status = await _exit_status(self.pid)
            reaped = True
            timing = os.read(self._timing_fd, _TIMING.size)
        finally:
            os.close(self._timing_fd)
            if not reaped:  # the member is stopping: do not leave the child behind. Only
                # we reap it, so the pid is still the child's here.
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)  # noqa: ASYNC222 - killed: reaped at once
        encode_seconds = _TIMING.unpack(timing)[0] if len(timing) == _TIMING.size else 0.0
        return _outcome(status), encode_seconds


async def _exit_status(pid: int) -> int:
    """Wait (cancellably, without a thread) for the child to exit; reap it."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        fd = pidfd_open(pid)
        try:
            await trio.lowlevel.wait_readable(fd)  # readable once the child has exited
        finally:
            os.close(fd)
        return os.waitpid(pid, 0)[1]  # noqa: ASYNC222 - it has exited: no wait
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG
        if done:
            return status
        await trio.sleep(0.05)


def _child(make: Callable[[], Snapshot], write_file: Callable[[Snapshot], bool],
           timing_w: int, parent: int,
           close_fds: Sequence[int]) -> None:  # pragma: no cover - the child
    code = FAILED
    try:
        gc.disable()  # a collection would touch (and so copy) every tracked object
        for fd in close_fds:
            os.close(fd)
        _die_with(parent)
        started = time.perf_counter()
        snap = make()
        os.write(timing_w, _TIMING.pack(time.perf_counter() - started))  # 8 bytes: atomic
        code = WRITTEN if write_file(snap) else NOT_NEWER
    except WriteNotDone as exc:
        code = WRITE_NOT_DONE + min(exc.errno or 0, 200)
    except OSError:
        code = OTHER_OS_ERROR
    except BaseException:  # anything at all must end in os._exit
        code = FAILED
    finally:
        os._exit(code)


def _die_with(parent: int) -> None:  # pragma: no cover - the child
    """Linux: be killed when the parent dies (its snapshot could never be recorded)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the child just finishes its file, which recovery removes
    if os.getppid() != parent:  # it died before the prctl took hold
        os._exit(FAILED)


_PR_SET_PDEATHSIG = 1


def _outcome(status: int) -> bool:
    if os.WIFSIGNALED(status):
        raise SnapshotChildFailed(
            f"the snapshot child was killed by signal {os.WTERMSIG(status)}")
    code = os.WEXITSTATUS(status)
    if code == WRITTEN:
        return True
    if code == NOT_NEWER:
        return False
    if code >= WRITE_NOT_DONE:
        err = code - WRITE_NOT_DONE
        raise WriteNotDone(err, f"writing the snapshot file: {os.strerror(err)}")
    if code == OTHER_OS_ERROR:
        raise OSError(errno.EIO, "writing the snapshot file failed in the snapshot child")
    raise SnapshotChildFailed(f"the snapshot child failed (exit status {code})")
