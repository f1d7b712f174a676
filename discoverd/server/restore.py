"""``discoverd snapshot restore``: seed one member's data directory of a *new* cluster from a
snapshot file (docs/operations.md "Backup and restore").

Run once per member of the new cluster with the same file, the same ``--initial-cluster``
and ``--initial-cluster-token``, each with its own ``--name``/``--data-dir``/
``--initial-advertise-peer-urls``. Each data directory gets the new cluster's identity and
a Raft snapshot at index 1, term 1 whose membership is the new ``--initial-cluster`` and
whose state is the file's image — so every member starts from the same state, elects a
leader, and serves the keyspace with the original revisions (create/mod revisions,
versions, the current and compacted revision) and the leases still alive in the image, with
their remaining TTLs. Then start the members with ``discoverd serve`` and the same flags.

The directory must not hold data: a restore never overwrites a member's log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from discoverd.consensus.messages import ConfState, HardState, Snapshot, SnapshotMeta
from discoverd.errors import ClientError
from discoverd.machine.applier import KvMachine
from discoverd.server.config import MemberConfig
from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import OsFS
from discoverd.wire.snapshot_file import SnapshotHeader, read_snapshot

RESTORED_INDEX = 1
RESTORED_TERM = 1


def restore_member(snapshot_file: str | os.PathLike[str], cfg: MemberConfig, *,
                   say: Callable[[str], object] = lambda _: None) -> SnapshotHeader:
    """Create ``cfg``'s data directory from ``snapshot_file``; returns the file's header.

    Raises:
        ClientError: the flags are wrong, or the data directory already holds data.
        SnapshotFileError: the file is damaged or not a snapshot.
    """
    cfg.validate()
    members = cfg.members()
    data_dir = Path(cfg.data_dir)
    if data_dir.exists() and any(data_dir.iterdir()):
        raise ClientError(f"{data_dir} already holds data; a restore only seeds an empty "
                          "data directory")
    member_dir = Path(cfg.member_dir)
    say(f"reading {snapshot_file}")
    with open(snapshot_file, "rb") as f:
        header, image, _ = read_snapshot(f)
    # The image says which Raft index it was taken at, and which members the old cluster
    # had; in the new cluster it is index 1, and the members are --initial-cluster's.
    machine = KvMachine(members_seed=members)
    machine.restore(image)
    machine.members.restore(None)
    machine.applied = RESTORED_INDEX
    data = machine.snapshot()
    say(f"writing {member_dir} (revision {header.revision}, {header.keys} keys)")
    storage = DiskStorage(OsFS(), str(member_dir), cluster_id=cfg.cluster_id,
                          member_id=cfg.member_id, name=cfg.name)
    try:
        conf = ConfState(voters=tuple(sorted(members)))
        snap = Snapshot(SnapshotMeta(RESTORED_INDEX, RESTORED_TERM, conf), data)
        storage.save(HardState(term=RESTORED_TERM, commit=RESTORED_INDEX), [], snap)
    finally:
        storage.close()
    return header
