"""SimFS models what a power cut keeps; these tests pin that model down.

If SimFS were too kind (keeping unsynced data, or directory entries that were never
fsynced), every crash test built on it would pass for the wrong reason.
"""

from __future__ import annotations

import errno
import random

import pytest

from discoverd.testing.simfs import SimFS


def _fs_with_dir(path: str = "/d") -> SimFS:
    fs = SimFS()
    fs.makedirs(path)
    fs.fsync_dir("/")
    return fs


def _durable_file(fs: SimFS, path: str, data: bytes) -> None:
    h = fs.open_append(path)
    h.write(data)
    h.fsync()
    h.close()
    fs.fsync_dir(path.rsplit("/", 1)[0] or "/")


def test_fsynced_data_survives_and_unsynced_data_is_lost() -> None:
    fs = _fs_with_dir()
    h = fs.open_append("/d/f")
    h.write(b"durable")
    h.fsync()
    fs.fsync_dir("/d")
    h.write(b"-volatile")
    assert fs.read_file("/d/f") == b"durable-volatile"
    assert fs.unsynced_bytes("/d/f") == len(b"-volatile")
    fs.crash()
    assert fs.read_file("/d/f") == b"durable"


def test_a_new_file_vanishes_without_fsync_of_its_directory() -> None:
    fs = _fs_with_dir()
    h = fs.open_append("/d/new")
    h.write(b"data")
    h.fsync()
    fs.crash()
    assert not fs.exists("/d/new")
    assert fs.listdir("/d") == []


def test_rename_is_durable_only_after_fsync_dir() -> None:
    fs = _fs_with_dir()
    _durable_file(fs, "/d/a", b"A")
    fs.rename("/d/a", "/d/b")
    assert fs.listdir("/d") == ["b"]
    fs.crash()
    assert fs.listdir("/d") == ["a"]
    fs.rename("/d/a", "/d/b")
    fs.fsync_dir("/d")
    fs.crash()
    assert fs.listdir("/d") == ["b"]
    assert fs.read_file("/d/b") == b"A"


def test_removed_file_comes_back_unless_the_directory_was_fsynced() -> None:
    fs = _fs_with_dir()
    _durable_file(fs, "/d/a", b"A")
    fs.remove("/d/a")
    fs.crash()
    assert fs.read_file("/d/a") == b"A"
    fs.remove("/d/a")
    fs.fsync_dir("/d")
    fs.crash()
    assert not fs.exists("/d/a")


def test_a_directory_needs_its_parent_fsynced_and_takes_its_files_with_it() -> None:
    fs = SimFS()
    fs.makedirs("/x/y")
    _durable_file(fs, "/x/y/f", b"data")  # fsyncs /x/y, but not / or /x
    fs.crash()
    assert not fs.exists("/x")
    fs.makedirs("/x/y")
    fs.fsync_dir("/")
    fs.fsync_dir("/x")
    _durable_file(fs, "/x/y/f", b"data")
    fs.crash()
    assert fs.read_file("/x/y/f") == b"data"


def test_fsync_dir_persists_only_that_directory() -> None:
    fs = SimFS()
    for d in ("/a", "/b"):
        fs.makedirs(d)
    fs.fsync_dir("/")
    for path in ("/a/f", "/b/f"):
        h = fs.open_append(path)
        h.write(b"x")
        h.fsync()
    fs.fsync_dir("/a")
    fs.crash()
    assert fs.listdir("/a") == ["f"]
    assert fs.listdir("/b") == []


def test_truncate_is_durable_at_once() -> None:
    fs = _fs_with_dir()
    _durable_file(fs, "/d/f", b"0123456789")
    fs.truncate("/d/f", 4)
    fs.crash()
    assert fs.read_file("/d/f") == b"0123"


def test_torn_crash_keeps_whole_writes_then_a_prefix_and_garbles_only_the_last_piece() -> None:
    writes = [bytes([0x10 + k]) * 20 for k in range(4)]
    outcomes = set()
    for seed in range(300):
        fs = _fs_with_dir()
        _durable_file(fs, "/d/f", b"D" * 16)
        h = fs.open_append("/d/f")
        for w in writes:
            h.write(w)
        fs.crash(random.Random(seed))
        data = fs.read_file("/d/f")
        assert data[:16] == b"D" * 16, "durable bytes must never change"
        tail = data[16:]
        pending = b"".join(writes)
        assert len(tail) <= len(pending)
        whole, rest = divmod(len(tail), 20)
        intact_bytes = whole * 20 if rest else max(0, (whole - 1) * 20)
        assert tail[:intact_bytes] == pending[:intact_bytes], f"seed {seed}: early damage"
        torn = rest != 0
        garbled = tail != pending[: len(tail)]
        outcomes.add((torn, garbled, len(tail) == 0))
    assert {(True, False, False), (True, True, False), (False, False, True)} <= outcomes
    assert any(g for _, g, _ in outcomes)


def test_crash_without_rng_or_with_tear_off_drops_all_unsynced_data() -> None:
    for kwargs in ({}, {"rng": random.Random(3), "tear": False}):
        fs = _fs_with_dir()
        _durable_file(fs, "/d/f", b"keep")
        h = fs.open_append("/d/f")
        h.write(b"lose")
        fs.crash(**kwargs)  # type: ignore[arg-type]
        assert fs.read_file("/d/f") == b"keep"


def test_the_same_seed_gives_the_same_crash() -> None:
    def run(seed: int) -> dict[str, bytes]:
        fs = _fs_with_dir()
        for name in ("a", "b", "c"):
            _durable_file(fs, f"/d/{name}", name.encode())
            h = fs.open_append(f"/d/{name}")
            h.write(bytes(range(50)))
            h.write(bytes(range(50, 100)))
        fs.crash(random.Random(seed))
        return {n: fs.read_file(f"/d/{n}") for n in fs.listdir("/d")}

    assert run(7) == run(7)
    assert len({repr(run(s)) for s in range(20)}) > 1


def test_handles_from_before_a_crash_are_dead() -> None:
    fs = _fs_with_dir()
    h = fs.open_append("/d/f")
    fs.fsync_dir("/d")
    fs.crash()
    with pytest.raises(OSError, match="before a crash") as info:
        h.write(b"x")
    assert info.value.errno == errno.EBADF


def test_full_disk_stores_what_fits_then_raises_enospc() -> None:
    fs = _fs_with_dir()
    fs.space_left_bytes = 5
    h = fs.open_append("/d/f")
    with pytest.raises(OSError, match="no space left") as info:
        h.write(b"0123456789")
    assert info.value.errno == errno.ENOSPC
    assert fs.read_file("/d/f") == b"01234"
    fs.space_left_bytes = None
    h.write(b"more")
    assert fs.read_file("/d/f") == b"01234more"


def test_fail_next_fails_exactly_one_call_without_effect() -> None:
    fs = _fs_with_dir()
    _durable_file(fs, "/d/a", b"A")
    fs.fail_next("rename", OSError(errno.EIO, "boom"))
    with pytest.raises(OSError, match="boom"):
        fs.rename("/d/a", "/d/b")
    assert fs.listdir("/d") == ["a"]
    fs.rename("/d/a", "/d/b")
    assert fs.listdir("/d") == ["b"]
    with pytest.raises(ValueError, match="unknown operation"):
        fs.fail_next("chmod", OSError())


def test_fail_next_with_a_path_prefix_skips_other_paths() -> None:
    fs = _fs_with_dir()
    fs.makedirs("/d/wal")
    other, target = fs.open_append("/d/other"), fs.open_append("/d/wal/seg")
    fs.fail_next("write", OSError(errno.EIO, "wal write failed"), path_prefix="/d/wal")
    other.write(b"fine")
    with pytest.raises(OSError, match="wal write failed"):
        target.write(b"x")
    target.write(b"y")
    assert fs.read_file("/d/wal/seg") == b"y"


def test_corrupt_byte_damages_durable_data() -> None:
    fs = _fs_with_dir()
    _durable_file(fs, "/d/f", b"\x00\x00\x00")
    fs.corrupt_byte("/d/f", 1)
    fs.crash()
    assert fs.read_file("/d/f") == b"\x00\xff\x00"
