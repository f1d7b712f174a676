"""CBOR arrays encoded a chunk at a time, for images too large to encode in one call.

``cbor2.dumps`` is C code that holds the GIL until it returns, so encoding a million-version
store in one call would stop the member's event loop for as long, even on a worker thread.
A ``LazyArray`` inside the encoded object is written as an indefinite-length array whose
items come from an iterator of chunks; each chunk is encoded by its own short call, and
between chunks the interpreter may hand the GIL back to the event loop. Decoders read the
result as an ordinary list (indefinite-length arrays are standard CBOR, RFC 8949 §3.2.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cbor2

_BREAK = b"\xff"
_INDEFINITE_ARRAY = b"\x9f"


class LazyArray:
    """An array to encode from ``chunks`` (each a sequence of items), lazily."""

    def __init__(self, chunks: Iterable[Sequence[Any]]) -> None:
        self.chunks = chunks


def dumps(obj: Any) -> bytes:
    """``cbor2.dumps(obj)``, writing every ``LazyArray`` in ``obj`` chunk by chunk."""
    return cbor2.dumps(obj, default=_encode_lazy)


def _encode_lazy(encoder: Any, value: Any) -> None:
    if not isinstance(value, LazyArray):
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")
    encoder.write(_INDEFINITE_ARRAY)
    for chunk in value.chunks:
        if chunk:
            encoded = cbor2.dumps(list(chunk))
            encoder.write(encoded[_array_head_bytes(len(chunk)):])
    encoder.write(_BREAK)


def _array_head_bytes(n: int) -> int:
    """Bytes of the head cbor2 writes before the items of an ``n``-item array."""
    if n < 24:
        return 1
    if n < 1 << 8:
        return 2
    if n < 1 << 16:
        return 3
    if n < 1 << 32:
        return 5
    return 9
