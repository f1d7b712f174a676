"""The member's identity file: which cluster and member a data directory belongs to.

Pointing a member at another member's data directory (a copy-paste in a deployment, a
restored backup of the wrong node) would make it vote and acknowledge with someone else's
log. The WAL headers catch that too, but this small file lets the member refuse with a
plain message before it opens anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2

from discoverd.errors import CorruptData
from discoverd.storage.fs import FileSystem, write_file_atomically
from discoverd.storage.wal import FrameError, encode_frame, read_frame

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class MemberMeta:
    cluster_id: int
    member_id: int
    name: str = ""


def write_meta(fs: FileSystem, path: str, meta: MemberMeta) -> None:
    """Write the identity file atomically (temp file, fsync, rename, fsync directory)."""
    body = {"version": FORMAT_VERSION, "cluster_id": meta.cluster_id,
            "member_id": meta.member_id, "name": meta.name}
    write_file_atomically(fs, path, encode_frame(cbor2.dumps(body)))


def read_meta(fs: FileSystem, path: str) -> MemberMeta | None:
    """The identity stored at ``path``, or ``None`` if there is no such file.

    Raises:
        CorruptData: the file exists but fails its CRC or is not an identity file.
    """
    if not fs.exists(path):
        return None
    data = fs.read_file(path)
    try:
        frame = read_frame(data, 0)
        body: Any = cbor2.loads(frame.payload)
    except (FrameError, cbor2.CBORError, ValueError, TypeError, EOFError) as exc:
        raise CorruptData(f"{path}: unreadable member identity file: {exc}") from exc
    if not (isinstance(body, dict) and body.get("version") == FORMAT_VERSION
            and type(body.get("cluster_id")) is int and type(body.get("member_id")) is int
            and isinstance(body.get("name"), str)):
        raise CorruptData(f"{path}: not a version-{FORMAT_VERSION} member identity file")
    return MemberMeta(body["cluster_id"], body["member_id"], body["name"])


def check_meta(fs: FileSystem, path: str, expected: MemberMeta) -> MemberMeta | None:
    """The identity stored at ``path`` if it matches ``expected``; ``None`` if there is none.

    Only the cluster and member ids are compared: the name is a label that may change.
    A missing file is not written here: the caller writes it once the rest of the data
    directory has proven to be this member's, so a refused start never leaves a claim.

    Raises:
        CorruptData: the directory belongs to another cluster or member.
    """
    found = read_meta(fs, path)
    if found is None:
        return None
    if (found.cluster_id, found.member_id) != (expected.cluster_id, expected.member_id):
        raise CorruptData(
            f"{path}: this data directory belongs to cluster {found.cluster_id:#x} member "
            f"{found.member_id:#x} ({found.name!r}), not to cluster "
            f"{expected.cluster_id:#x} member {expected.member_id:#x} ({expected.name!r}); "
            f"refusing to start with another member's data"
        )
    return found
