"""Raft messages ⇄ bytes, as cbor2. Used by the peer transport and by the simulator, which
round-trips every message through it so that no two members ever share a Python object."""

from __future__ import annotations

import cbor2

from discoverd.consensus.messages import Message, from_obj, to_obj
from discoverd.errors import PeerError


def encode_message(m: Message) -> bytes:
    return cbor2.dumps(to_obj(m))


def decode_message(data: bytes) -> Message:
    """Raises ``PeerError`` for anything that is not a well-formed message."""
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError, OverflowError) as e:
        raise PeerError(f"undecodable peer message: {e}") from e
    return from_obj(obj)
