"""``RegisterMachine``: a plain key → value map, a minimal ``member.core.StateMachine`` for
tests of the member glue and the trio loop (members themselves run ``machine.KvMachine``).

Commands are cbor2 lists: ``["put", key, value]``, ``["del", key]``. Every apply answers with
the raft index it was applied at, which doubles as a revision for the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cbor2

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import ClientError


def encode_put(key: bytes, value: bytes) -> bytes:
    return cbor2.dumps(["put", key, value])


def encode_delete(key: bytes) -> bytes:
    return cbor2.dumps(["del", key])


class RegisterMachine:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.applied = 0

    def __repr__(self) -> str:
        return f"<RegisterMachine keys={len(self.data)} applied={self.applied}>"

    def apply(self, entry: Entry) -> Any:
        self.applied = entry.index
        if entry.kind is not EntryKind.NORMAL or not entry.data:
            return entry.index
        try:
            cmd = cbor2.loads(entry.data)
            op = cmd[0]
            if op == "put":
                self.data[bytes(cmd[1])] = bytes(cmd[2])
            elif op == "del":
                self.data.pop(bytes(cmd[1]), None)
        except (ValueError, TypeError, IndexError, KeyError, cbor2.CBORDecodeError):
            # Commands are validated before they are proposed; a malformed committed one
            # must still apply identically everywhere, as a no-op.
            pass
        return entry.index

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return cbor2.dumps([self.applied, self.data])

    def snapshot_builder(self) -> Callable[[], bytes]:
        data = self.snapshot()  # small: encoded at once
        return lambda: data

    def restore(self, data: bytes) -> None:
        try:
            self.applied, self.data = cbor2.loads(data) if data else (0, {})
        except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
            raise ClientError(f"snapshot is not a register machine image: {e}") from e
