"""``snapshot`` on the client port (docs/protocol.md "Snapshot"): this member's key-value
image streamed to a client for ``discoverd snapshot save``.

The image is the state machine's own snapshot at one consistent point (every write up to the
member's applied index, none after): a child is forked at that instant and encodes it into
a spool file (``server/snapshot_child.py``; a million keys take seconds to encode, which on
the event loop — or on a thread holding the GIL — would stall the member into elections);
without fork the store is frozen and encoded on a worker thread. The image is then
sent in chunks, each awaited: a slow client slows only its own stream, and the member holds
one copy of the image while it is sent. Frames: first ``{"snapshot": header}`` (what
``snapshot status`` will print: revision, keys, sizes, index, term), then ``{"chunk":
bytes}`` frames, then ``{"done": true, "sha256": hex}`` over the image, which ends the
stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
import trio

from discoverd import __version__
from discoverd.consensus.messages import Snapshot, SnapshotMeta
from discoverd.errors import Unavailable
from discoverd.machine.applier import KvMachine
from discoverd.member.core import MemberCore
from discoverd.server import snapshot_child
from discoverd.server.api_server import Connection, Emit, StreamHandler
from discoverd.wire.snapshot_file import SnapshotHeader

CHUNK_BYTES = 512 * 1024


class SnapshotService:
    def __init__(self, core: MemberCore, machine: KvMachine, *, cluster_id: int,
                 member_id: int, header: Callable[..., dict[str, int]], log: Any = None,
                 spool_dir: str | None = None, child_closes: Sequence[int] = ()) -> None:
        """``spool_dir``: where forked children write images (emptied now: files left by
        a member killed mid-save); None builds on a worker thread instead."""
        self.spool_dir = spool_dir if snapshot_child.available() else None
        self._child_closes = tuple(child_closes)
        self._spooled = itertools.count(1)
        if self.spool_dir is not None:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            os.makedirs(self.spool_dir, exist_ok=True)
        self.core = core
        self.machine = machine
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.header = header
        self.log = log if log is not None else structlog.get_logger("snapshot")
        self.sent = 0

    async def _image_from_child(self, spool_dir: str) -> bytes:
        """Fork now (the child's memory is this instant's state), let it encode the image
        into a spool file, read that back. Raises ``Unavailable`` if the child fails."""
        path = os.path.join(spool_dir, f"image-{next(self._spooled)}.tmp")
        meta = SnapshotMeta(self.core.applied, self.core.term, self.core.conf_state)
        machine = self.machine

        def spool(snap: Snapshot) -> bool:
            with open(path, "wb") as f:
                f.write(snap.data)
            return True

        try:
            child = snapshot_child.SnapshotChild.fork(
                lambda: Snapshot(meta, machine.snapshot()), spool, close_fds=self._child_closes)
            await child.wait()
            return await trio.Path(path).read_bytes()
        except (OSError, snapshot_child.SnapshotChildFailed) as exc:
            raise Unavailable(f"could not build the snapshot image: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def streams(self) -> dict[str, StreamHandler]:
        return {"snapshot": self.stream}

    async def stream(self, req: dict[str, Any], conn: Connection, emit: Emit) -> None:
        started = time.monotonic()
        store = self.machine.store
        # Everything the header names is read at the fork (or freeze), before the first
        # await; the image is then encoded off the event loop while the member serves on.
        revision, compact_revision, keys = store.revision, store.compact_revision, store.key_count
        index, term = self.core.applied, self.core.term
        if self.spool_dir is not None:
            image = await self._image_from_child(self.spool_dir)
        else:
            image = await trio.to_thread.run_sync(self.machine.snapshot_builder())
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
