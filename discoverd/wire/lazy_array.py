"""CBOR arrays encoded a chunk at a time, for images too large to encode in one call, and
decoded an item at a time, for images too large to decode into objects all at once.

``cbor2.dumps`` is C code that holds the GIL until it returns, so encoding a million-version
store in one call would stop the member's event loop for as long, even on a worker thread.
A ``LazyArray`` inside the encoded object is written as an indefinite-length array whose
items come from an iterator of chunks; each chunk is encoded by its own short call, and
between chunks the interpreter may hand the GIL back to the event loop. Decoders read the
result as an ordinary list (indefinite-length arrays are standard CBOR, RFC 8949 §3.2.2).

``load`` is ``cbor2.loads`` for such an image, except that one array is handed to a
function item by item instead of being built: ``cbor2.loads`` of a million-version image
makes a million row lists before anything can be built from them, and that peak stays in the
process (CPython does not give fragmented arenas back).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator, Sequence
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


_MAJOR_ARRAY, _MAJOR_MAP = 4, 5
_BREAK_CODE = 0xFF
_INDEFINITE = 31


def load(data: bytes, path: Sequence[Any], build: Callable[[Iterator[Any]], Any]) -> Any:
    """``cbor2.loads(data)``, except for the array at ``path`` (the map keys leading to it
    from the top): ``build`` gets an iterator that decodes its items one at a time, and what
    it returns takes the array's place. Anything else on the way that is not what ``path``
    expects (not a map, no array at its end) is decoded whole, as ``cbor2.loads`` would.

    Raises what ``cbor2.loads`` raises on malformed data, and whatever ``build`` raises.
    """
    fp = io.BytesIO(data)  # shares data's buffer: no copy
    # read_size=1: the decoder reads no further than the item it decodes, so fp.tell() is
    # always where the next item starts, and the heads of maps and arrays can be read here.
    decoder = cbor2.CBORDecoder(fp, read_size=1)
    return _load_at(decoder, fp, data, tuple(path), build)


def _load_at(decoder: cbor2.CBORDecoder, fp: io.BytesIO, data: bytes, path: tuple[Any, ...],
             build: Callable[[Iterator[Any]], Any]) -> Any:
    start = fp.tell()
    head = _read_head(fp, data, _MAJOR_ARRAY if not path else _MAJOR_MAP)
    if head is None:
        fp.seek(start)
        return decoder.decode()
    count = head[0]
    if not path:
        items = _items(decoder, fp, data, count)
        built = build(items)
        for _ in items:  # what build left undecoded
            pass
        return built
    result = {}
    for _ in _counted(fp, data, count):
        key = decoder.decode()
        if key == path[0]:
            result[key] = _load_at(decoder, fp, data, path[1:], build)
        else:
            result[key] = decoder.decode()
    return result


def _read_head(fp: io.BytesIO, data: bytes, major: int) -> tuple[int | None] | None:
    """Read the head of an item of type ``major`` at ``fp``: ``(item count,)``, ``(None,)``
    if of indefinite length; ``None`` (nothing read) if the item there is something else."""
    pos = fp.tell()
    if pos >= len(data) or data[pos] >> 5 != major:
        return None
    info = data[pos] & 0x1F
    if info < 24:
        fp.seek(pos + 1)
        return (info,)
    if info == _INDEFINITE:
        fp.seek(pos + 1)
        return (None,)
    if info > 27:
        return None  # malformed: cbor2 will say so
    size = 1 << (info - 24)
    if pos + 1 + size > len(data):
        return None
    fp.seek(pos + 1 + size)
    return (int.from_bytes(data[pos + 1:pos + 1 + size], "big"),)


def _counted(fp: io.BytesIO, data: bytes, count: int | None) -> Iterator[None]:
    """Once per item of a container of ``count`` items, or, for one of indefinite length
    (``None``), until its break code, which it reads."""
    if count is not None:
        for _ in range(count):
            yield None
        return
    while True:
        pos = fp.tell()
        if pos < len(data) and data[pos] == _BREAK_CODE:
            fp.seek(pos + 1)
            return
        yield None


def _items(decoder: cbor2.CBORDecoder, fp: io.BytesIO, data: bytes,
           count: int | None) -> Iterator[Any]:
    for _ in _counted(fp, data, count):
        yield decoder.decode()
