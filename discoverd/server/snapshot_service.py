"""``snapshot`` on the client port (docs/protocol.md "Snapshot"): this member's key-value
image streamed to a client for ``discoverd snapshot save``.

The image is the state machine's own snapshot, taken in one step on the event loop — so it
is one consistent point (every write up to the member's applied index, none after) — then
sent in chunks, each awaited: a slow client slows only its own stream, and the member holds
one copy of the image while it is sent. Frames: first ``{"snapshot": header}`` (what
``snapshot status`` will print: revision, keys, sizes, index, term), then ``{"chunk":
bytes}`` frames, then ``{"done": true, "sha256": hex}`` over the image, which ends the
stream.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from discoverd import __version__
from discoverd.machine.applier import KvMachine
from discoverd.member.core import MemberCore
from discoverd.server.api_server import Connection, Emit, StreamHandler
from discoverd.wire.snapshot_file import SnapshotHeader

CHUNK_BYTES = 512 * 1024


class SnapshotService:
    def __init__(self, core: MemberCore, machine: KvMachine, *, cluster_id: int,
                 member_id: int, header: Callable[..., dict[str, int]], log: Any = None
                 ) -> None:
        self.core = core
        self.machine = machine
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.header = header
        self.log = log if log is not None else structlog.get_logger("snapshot")
        self.sent = 0

    def streams(self) -> dict[str, StreamHandler]:
        return {"snapshot": self.stream}

    async def stream(self, req: dict[str, Any], conn: Connection, emit: Emit) -> None:
        started = time.monotonic()
        store = self.machine.store
        # Everything the header names is read at the freeze, before the first await; the
        # image is then encoded on a worker thread while the member serves on.
        build = self.machine.snapshot_builder()
        revision, compact_revision, keys = store.revision, store.compact_revision, store.key_count
        index, term = self.core.applied, self.core.term
        image: bytes = await trio.to_thread.run_sync(build)
        info = SnapshotHeader(
            revision=revision, compact_revision=max(compact_revision, 0),
            keys=keys, size=len(image), index=index,
            term=term, cluster_id=self.cluster_id, member_id=self.member_id,
            created=time.time(), version=__version__)
        self.log.info("snapshot streaming", bytes=len(image), revision=revision,
                      index=info.index, term=info.term, keys=info.keys)
        await emit({"header": self.header(revision), "snapshot": info.to_obj()})
        digest = hashlib.sha256()
        view = memoryview(image)
        for offset in range(0, len(image), CHUNK_BYTES):
            chunk = bytes(view[offset:offset + CHUNK_BYTES])
            digest.update(chunk)
            await emit({"chunk": chunk})
        await emit({"header": self.header(revision), "done": True,
                    "sha256": digest.hexdigest()})
        self.sent += 1
        self.log.info("snapshot sent", bytes=len(image), revision=revision,
                      seconds=round(time.monotonic() - started, 3))
