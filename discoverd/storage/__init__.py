"""Durable member state: the write-ahead log, snapshot files and the identity file.

Owns: everything a member keeps on disk under ``<data-dir>/member/`` (DESIGN §3):
``wal/*.wal`` (``wal.py``), ``snap/*.snap`` (``snapshot.py``), ``meta`` (``meta.py``), and
``DiskStorage`` (``disk_storage.py``), which recovers them on start, serves Raft's reads
through the ``consensus.storage.LogStorage`` protocol and persists each ``Ready``.

May import: the standard library, cbor2, ``discoverd.consensus`` types, ``discoverd.errors``.
No trio, threads, clocks or global randomness: every disk access goes through the
``fs.FileSystem`` protocol, so the deterministic simulator runs this exact code on
``discoverd.testing.simfs.SimFS`` and pulls the plug wherever it likes. The trio shell is
the one that moves calls onto a worker thread (``OsFS`` blocks in ``fsync``).
"""

from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import FileHandle, FileSystem, OsFS, WriteNotDone
from discoverd.storage.meta import MemberMeta
from discoverd.storage.snapshot import SnapshotStore
from discoverd.storage.wal import WAL, SnapshotMarker, WalReplay

__all__ = [
    "WAL",
    "DiskStorage",
    "FileHandle",
    "FileSystem",
    "MemberMeta",
    "OsFS",
    "SnapshotMarker",
    "SnapshotStore",
    "WalReplay",
    "WriteNotDone",
]
