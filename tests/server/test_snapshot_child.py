"""``snapshot_child``: real forks. The outcome of the child's build and write comes back to
the parent as the same exception (or result) it would have had in-process."""

from __future__ import annotations

import errno
import fcntl
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from discoverd.consensus.messages import ConfState, Snapshot, SnapshotMeta
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import Unavailable
from discoverd.machine.applier import KvMachine
from discoverd.member.core import MemberCore
from discoverd.server.snapshot_child import SnapshotChild, SnapshotChildFailed
from discoverd.server.snapshot_service import SnapshotService
from discoverd.storage.fs import WriteNotDone


async def write_in_child(make: Callable[[], Snapshot],
                         write_file: Callable[[Snapshot], bool]) -> tuple[bool, float]:
    return await SnapshotChild.fork(make, write_file).wait()

META = SnapshotMeta(7, 2, ConfState((1, 2, 3)))


def _make() -> Snapshot:
    return Snapshot(META, b"image of the store at 7" * 1000)


async def test_the_child_writes_the_file_the_parent_then_reads(tmp_path: Path) -> None:
    target = tmp_path / "snap"

    def write(snap: Snapshot) -> bool:
        target.write_bytes(snap.data)
        return True

    written, encode_seconds = await write_in_child(_make, write)
    assert written is True
    assert encode_seconds > 0
    assert target.read_bytes() == _make().data


async def test_a_snapshot_no_newer_than_held_is_reported_as_not_written() -> None:
    assert (await write_in_child(_make, lambda snap: False))[0] is False


async def test_no_room_comes_back_as_write_not_done_with_its_errno() -> None:
    def full(snap: Snapshot) -> bool:
        raise WriteNotDone(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteNotDone) as caught:
        await write_in_child(_make, full)
    assert caught.value.errno == errno.ENOSPC


async def test_another_os_error_and_a_bug_are_told_apart() -> None:
    def broken_disk(snap: Snapshot) -> bool:
        raise OSError(errno.EIO, "I/O error")

    def bug() -> Snapshot:
        raise KeyError("a bug in the builder")

    with pytest.raises(OSError, match="failed in the snapshot child") as caught:
        await write_in_child(_make, broken_disk)
    assert not isinstance(caught.value, WriteNotDone)
    with pytest.raises(SnapshotChildFailed):
        await write_in_child(bug, lambda snap: True)


async def test_the_child_does_not_keep_the_data_dir_lock(tmp_path: Path) -> None:
    """A flock lives while any process holds its file open: a snapshot child of a killed
    member must not keep the restarted member out of its data dir."""
    lock_path = tmp_path / "lock"
    held = open(lock_path, "wb")  # noqa: SIM115, ASYNC230 - a local lock file; closed below
    fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    release = tmp_path / "release"

    def slow_make() -> Snapshot:
        while not release.exists():  # the child outlives the "member"'s lock
            time.sleep(0.01)
        return _make()

    child = SnapshotChild.fork(slow_make, lambda snap: True, close_fds=[held.fileno()])
    held.close()  # the member dies
    with open(lock_path, "wb") as again:  # noqa: ASYNC230 - its restart takes the lock
        deadline = time.monotonic() + 5  # the child closes its copy just after the fork
        while True:
            try:
                fcntl.flock(again.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "the child kept the lock"
                await trio.sleep(0.01)
    release.touch()
    assert (await child.wait())[0] is True


async def test_snapshot_save_spools_through_a_child_and_reports_its_failure(
    tmp_path: Path,
) -> None:
    """``snapshot save``'s image comes from a forked child via a spool file (removed after);
    a child that fails is a clean ``Unavailable`` for that client, not a crashed stream."""

    class Broken(KvMachine):
        def snapshot(self) -> bytes:
            raise RuntimeError("a bug while encoding")

    def service(machine: KvMachine) -> SnapshotService:
        core = MemberCore(Config(id=1, voters=(1,)), MemoryStorage(), machine,
                          random.Random(1))
        return SnapshotService(core, machine, cluster_id=1, member_id=1,
                               header=lambda revision=None: {}, spool_dir=str(tmp_path / "s"))

    good = KvMachine()
    image = await service(good)._image_from_child(str(tmp_path / "s"))
    assert image == good.snapshot()
    with pytest.raises(Unavailable, match="could not build the snapshot image"):
        await service(Broken())._image_from_child(str(tmp_path / "s"))
    assert list((tmp_path / "s").iterdir()) == []
