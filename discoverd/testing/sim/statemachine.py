"""A tiny replicated state machine for the simulator: a key-value map plus a hash chain over
every applied entry, so two members that applied the same prefix have the same digest."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import cbor2

from discoverd.consensus.messages import Entry, EntryKind


class ChainStateMachine:
    """Implements ``member.core.StateMachine``; sees every entry, empty and membership ones too."""

    def __init__(self) -> None:
        self.applied = 0
        self.digest = b""
        self.kv: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"<ChainStateMachine applied={self.applied} digest={self.digest.hex()[:8]}>"

    def apply(self, e: Entry) -> int:
        """Returns the index applied (what a proposer is answered with)."""
        h = hashlib.sha256(self.digest)
        h.update(e.index.to_bytes(8, "big") + e.term.to_bytes(8, "big") + bytes([e.kind]))
        h.update(e.data)
        self.digest = h.digest()
        self.applied = e.index
        if e.kind is EntryKind.NORMAL and e.data.startswith(b"w:"):
            key, _, value = e.data[2:].decode().partition("=")
            self.kv[key] = value
        return e.index

    def snapshot(self) -> bytes:
        return cbor2.dumps([self.applied, self.digest, self.kv])

    def snapshot_builder(self) -> Callable[[], bytes]:
        data = self.snapshot()  # small: encoded at once
        return lambda: data

    def restore(self, data: bytes) -> None:
        self.applied, self.digest, self.kv = cbor2.loads(data) if data else (0, b"", {})
