"""The sans-I/O frame codec: bytes in, frames out, no sockets (h11's test style)."""

from __future__ import annotations

import pytest

from discoverd.errors import ClientError, DiscoverdError
from discoverd.wire.framing import HEADER_BYTES, FrameDecoder, FrameError, encode_frame

# (name, payloads) — every case is encoded, then decoded fed in every possible way.
CASES: list[tuple[str, list[bytes]]] = [
    ("one small frame", [b"hello"]),
    ("zero-length frame", [b""]),
    ("zero-length between others", [b"a", b"", b"bc"]),
    ("several frames", [b"x" * n for n in (1, 2, 3, 255, 256, 257)]),
    ("binary payload with length-like bytes", [b"\x00\x00\x00\x05abcde", b"\xff" * 7]),
]


def _wire(payloads: list[bytes]) -> bytes:
    return b"".join(encode_frame(p) for p in payloads)


def _drain(decoder: FrameDecoder) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(frame)
    return out


@pytest.mark.parametrize(("name", "payloads"), CASES, ids=[c[0] for c in CASES])
def test_encode_is_length_prefix_plus_payload(name: str, payloads: list[bytes]) -> None:
    for p in payloads:
        assert encode_frame(p) == len(p).to_bytes(4, "big") + p


@pytest.mark.parametrize(("name", "payloads"), CASES, ids=[c[0] for c in CASES])
def test_all_at_once(name: str, payloads: list[bytes]) -> None:
    d = FrameDecoder(1024)
    d.feed(_wire(payloads))
    assert _drain(d) == payloads
    assert d.buffered == 0


@pytest.mark.parametrize(("name", "payloads"), CASES, ids=[c[0] for c in CASES])
def test_split_at_every_byte_boundary(name: str, payloads: list[bytes]) -> None:
    wire = _wire(payloads)
    for cut in range(len(wire) + 1):
        d = FrameDecoder(1024)
        got = []
        d.feed(wire[:cut])
        got += _drain(d)
        d.feed(wire[cut:])
        got += _drain(d)
        assert got == payloads, f"cut at {cut}"


@pytest.mark.parametrize(("name", "payloads"), CASES, ids=[c[0] for c in CASES])
def test_one_byte_at_a_time(name: str, payloads: list[bytes]) -> None:
    wire = _wire(payloads)
    d = FrameDecoder(1024)
    got = []
    for i in range(len(wire)):
        d.feed(wire[i : i + 1])
        got += _drain(d)
    assert got == payloads
    d.feed_eof()  # nothing pending: a clean end


def test_many_small_frames_in_one_feed() -> None:
    payloads = [i.to_bytes(4, "big") for i in range(50_000)]
    d = FrameDecoder(16)
    d.feed(_wire(payloads))
    assert _drain(d) == payloads
    assert d.buffered == 0


def test_interleaved_feeds_keep_partial_frames_across_compaction() -> None:
    # Enough traffic to cross the compaction threshold several times while a frame is
    # always half-way through the buffer.
    payloads = [bytes([i % 256]) * 1000 for i in range(500)]
    wire = _wire(payloads)
    d = FrameDecoder(2000)
    got = []
    step = 1537  # not a multiple of the frame size: every feed ends mid-frame
    for i in range(0, len(wire), step):
        d.feed(wire[i : i + step])
        got += _drain(d)
    assert got == payloads


def test_oversized_header_is_rejected_before_the_body_arrives() -> None:
    d = FrameDecoder(100)
    d.feed((101).to_bytes(4, "big"))  # header only: no body buffered yet
    with pytest.raises(FrameError) as info:
        d.next_frame()
    assert info.value.too_large
    assert (info.value.size, info.value.limit) == (101, 100)
    assert isinstance(info.value, DiscoverdError)


def test_frame_exactly_at_the_limit_is_accepted() -> None:
    d = FrameDecoder(100)
    d.feed(encode_frame(b"z" * 100))
    assert d.next_frame() == b"z" * 100


def test_oversized_frame_after_good_ones_is_reported_after_them() -> None:
    d = FrameDecoder(3)
    d.feed(encode_frame(b"ok") + (4).to_bytes(4, "big") + b"abcd")
    assert d.next_frame() == b"ok"
    with pytest.raises(FrameError):
        d.next_frame()


def test_decoder_stays_broken_after_an_error() -> None:
    d = FrameDecoder(3)
    d.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameError):
        d.next_frame()
    d.feed(encode_frame(b"ok"))
    with pytest.raises(FrameError):
        d.next_frame()


def test_limit_can_be_raised_after_a_handshake() -> None:
    d = FrameDecoder(4)
    d.feed(encode_frame(b"hi") + encode_frame(b"a longer frame"))
    assert d.next_frame() == b"hi"
    d.max_frame_bytes = 1024
    assert d.next_frame() == b"a longer frame"


def test_eof_in_the_middle_of_a_frame_is_an_error() -> None:
    d = FrameDecoder(100)
    d.feed(encode_frame(b"abc")[:-1])
    assert d.next_frame() is None
    with pytest.raises(FrameError) as info:
        d.feed_eof()
    assert not info.value.too_large


def test_eof_in_the_middle_of_a_header_is_an_error() -> None:
    d = FrameDecoder(100)
    d.feed(b"\x00\x00")
    with pytest.raises(FrameError):
        d.feed_eof()


def test_read_raw_takes_a_magic_then_frames_follow() -> None:
    d = FrameDecoder(100)
    d.feed(b"DS")
    assert d.read_raw(4) is None  # not enough yet, nothing consumed
    d.feed(b"C1" + encode_frame(b"req"))
    assert d.read_raw(4) == b"DSC1"
    assert d.next_frame() == b"req"


def test_read_raw_hands_back_everything_buffered() -> None:
    d = FrameDecoder(100)
    d.feed(b"GET / HTTP/1.1\r\n")
    assert d.read_raw(4) == b"GET "
    assert d.read_raw(d.buffered) == b"/ HTTP/1.1\r\n"
    assert d.buffered == 0


def test_bad_arguments_are_the_callers_fault() -> None:
    with pytest.raises(ClientError):
        FrameDecoder(-1)
    with pytest.raises(ClientError):
        FrameDecoder(100).read_raw(-1)


def test_repr_is_a_state_dump() -> None:
    d = FrameDecoder(10)
    d.feed(b"\x00\x00")
    assert repr(d) == "<FrameDecoder ok buffered=2 max_frame_bytes=10>"
    assert HEADER_BYTES == 4
