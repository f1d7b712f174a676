"""Maintenance from a client: saving a backup of the key-value store (``snapshot``).

The member streams its image (docs/protocol.md "Snapshot"); the client writes it into a
temp file beside the target with the header and the trailing hash of
``discoverd.wire.snapshot_file``, checks the image against the member's SHA-256, fsyncs, and
renames — so the target is either a complete, verified snapshot or not there at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from discoverd.errors import (
    ClientError,
    DiscoverdError,
    InvalidAuthToken,
    Unauthenticated,
    Unavailable,
)
from discoverd.sdk._connection import DialError, Stream
from discoverd.sdk._errors import error_from_wire
from discoverd.wire.snapshot_file import SnapshotFileError, SnapshotHeader, SnapshotWriter

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient

Progress = Callable[[int, int], None]
"""Called with (bytes received, bytes expected) after each chunk."""

_STREAM_BUFFER = 256


@dataclass(frozen=True, slots=True)
class SavedSnapshot:
    path: Path
    header: SnapshotHeader
    sha256: str
    """Of the whole file (what ``snapshot status`` prints)."""
    file_size: int
    endpoint: str


async def save_snapshot(client: AsyncClient, path: str | os.PathLike[str], *,
                        progress: Progress | None = None) -> SavedSnapshot:
    target = Path(path)
    temp = target.with_name(f".{target.name}.part")
    await client._auth.ensure(client._authenticate_token)
    for attempt in (1, 2):
        try:
            conn = await client._connect_current()
        except DialError as e:
            raise Unavailable(f"could not connect to {e}") from None
        sent_token = client._auth.token
        stream = await conn.open_stream("snapshot", {}, buffer=_STREAM_BUFFER)
        try:
            ok = await _next(stream)
            break
        except (InvalidAuthToken, Unauthenticated):
            stream.close()
            if attempt == 2 or not client._auth.has_credentials:
                raise
            await client._auth.refresh(client._authenticate_token, sent_token)
        except BaseException:
            stream.close()
            raise
    try:
        if not isinstance(ok.get("snapshot"), dict):
            raise DiscoverdError("the member's snapshot stream has no header")
        try:
            header = SnapshotHeader.from_obj(ok["snapshot"])
        except SnapshotFileError as e:
            raise DiscoverdError(f"the member sent a bad snapshot header: {e}") from None
        image_hash = hashlib.sha256()
        with temp.open("wb") as f:
            writer = SnapshotWriter(f, header)
            if progress is not None:
                progress(0, header.size)
            while True:
                ok = await _next(stream)
                if ok.get("done"):
                    break
                chunk = ok.get("chunk")
                if not isinstance(chunk, bytes):
                    raise DiscoverdError("the member's snapshot stream sent a bad chunk")
                image_hash.update(chunk)
                writer.write(chunk)
                if progress is not None:
                    progress(writer.written, header.size)
            if ok.get("sha256") != image_hash.hexdigest():
                raise DiscoverdError("the snapshot arrived damaged (SHA-256 mismatch)")
            try:
                digest = writer.finish()
            except SnapshotFileError as e:
                raise DiscoverdError(f"the snapshot arrived incomplete: {e}") from None
            f.flush()
            file_size = f.tell()
            await anyio.to_thread.run_sync(os.fsync, f.fileno())
        os.replace(temp, target)
        _fsync_dir(target.parent)
    except BaseException:
        stream.close()
        temp.unlink(missing_ok=True)
        raise
    return SavedSnapshot(target, header, digest, file_size, str(conn.endpoint))


async def _next(stream: Stream) -> dict[str, Any]:
    try:
        frame = await stream.receive()
    except anyio.EndOfStream:
        raise DiscoverdError("the snapshot stream ended before the snapshot did") from None
    ok = frame.get("ok")
    if isinstance(ok, dict):
        return ok
    err = frame.get("err")
    if isinstance(err, dict):
        raise error_from_wire(err)
    raise ClientError("malformed snapshot frame")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
