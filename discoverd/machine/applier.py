"""``KvMachine``: the replicated state machine members run — the MVCC store behind Raft.

A committed entry holds one client write as the protocol's own map (``{"op": "put", ...}``,
cbor2), decoded again here on every member by the same decoder the server used to refuse bad
requests before proposing them; so a member applies exactly what it was asked, identically
everywhere. An entry that fails (e.g. ``compacted``, ``key_not_found``) applies as a no-op and
answers its proposer with the error — deterministically, on every member alike.
"""

from __future__ import annotations

from typing import Any

import cbor2

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import ClientError, CorruptData, DiscoverdError
from discoverd.kv.requests import (
    CompactionRequest,
    DeleteRangeRequest,
    PutRequest,
    TxnRequest,
)
from discoverd.kv.revision import Event
from discoverd.kv.store import MvccStore
from discoverd.wire.kv_codec import WRITE_OPS, decode_request


def encode_command(op: str, fields: dict[str, Any]) -> bytes:
    """The entry data for a client write (``fields`` as received, minus ``id``/``op``)."""
    return cbor2.dumps({**fields, "op": op})


class KvMachine:
    def __init__(self, *, max_txn_ops: int = 128) -> None:
        self.store = MvccStore(max_txn_ops=max_txn_ops)
        self.max_txn_ops = max_txn_ops
        self.applied = 0

    def __repr__(self) -> str:
        return f"<KvMachine applied={self.applied} revision={self.store.revision}>"

    def apply(self, entry: Entry) -> Any:
        """Apply one committed entry; returns a kv response, or the error it failed with."""
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return None
        try:
            cmd = cbor2.loads(entry.data)
            if not isinstance(cmd, dict) or cmd.get("op") not in WRITE_OPS:
                raise ClientError("not a kv write command")
            req = decode_request(cmd["op"], cmd)
            return self._execute(req)
        except DiscoverdError as e:
            return e
        except (ValueError, TypeError, EOFError, cbor2.CBORDecodeError) as e:
            return ClientError(f"malformed command: {e}")

    def _execute(self, req: Any) -> Any:
        store = self.store
        events: list[Event]
        resp: Any
        if isinstance(req, PutRequest):
            resp, events = store.put(req)
        elif isinstance(req, DeleteRangeRequest):
            resp, events = store.delete_range(req)
        elif isinstance(req, TxnRequest):
            resp, events = store.txn(req)
        elif isinstance(req, CompactionRequest):
            return store.compact(req)
        else:
            raise ClientError("not a kv write command")
        del events  # the watch hub (issue 5) will route them; nothing may hoard them before
        return resp

    def snapshot(self) -> bytes:
        return cbor2.dumps({"applied": self.applied, "store": self.store.to_obj()})

    def restore(self, data: bytes) -> None:
        if not data:
            self.store = MvccStore(max_txn_ops=self.max_txn_ops)
            self.applied = 0
            return
        try:
            image = cbor2.loads(data)
            applied, store = image["applied"], image["store"]
        except (ValueError, TypeError, KeyError, EOFError, cbor2.CBORDecodeError) as e:
            raise CorruptData(f"snapshot is not a kv machine image: {e}") from e
        self.store.restore(store)
        self.applied = applied
