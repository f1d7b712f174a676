"""Fuzzing the client port of a real member, HTTP and native listeners alike (issue 8): random
bytes, and requests that are well formed up to one deliberate flaw, over real sockets.

Every input must get an answer (or a close) within a bound — no hang —, a rejected input must
be told so (4xx / an ``err`` frame), and none may change the store: the revision and the
lease count are the same before and after, and a valid request still works afterwards. The
member's log must show no escaped error (checked when the shared member stops).

Time-bounded: ``DISCOVERD_FUZZ_SECONDS`` (default 12) is split between the four fuzzers;
each stops generating new work when its share is used up.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from gateway_helpers import b64, ok, revision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discoverd.testing.cluster import MemberProcess

SECONDS = float(os.environ.get("DISCOVERD_FUZZ_SECONDS", "12"))
SHARE = SECONDS / 4
EXAMPLES = max(50, int(SHARE * 300))
BOUND = 10.0  # an answer (or a close) must come within this


def fuzz_settings() -> Any:
    return settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


class Budget:
    """Wall-clock share of one fuzzer: examples after it are skipped cheaply — unless one has
    failed, so that hypothesis can replay and shrink it instead of calling it flaky."""

    def __init__(self) -> None:
        self.end = 0.0
        self.ran = 0
        self.failed = False

    def spent(self) -> bool:
        if not self.end:
            self.end = time.monotonic() + SHARE
        if time.monotonic() > self.end and not self.failed:
            return True
        self.ran += 1
        return False

    @contextlib.contextmanager
    def example(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.failed = True
            raise


@pytest.fixture
def unchanged(member: MemberProcess) -> Iterator[int]:
    """The member's port; afterwards: same revision, no lease, still serving. Leases left by
    other tests are revoked first: one expiring meanwhile would move the revision."""
    port = member.client_port
    for lease in ok(port, "/v3/lease/leases").get("leases", []):
        ok(port, "/v3/lease/revoke", {"ID": lease["ID"]})
    before = revision(port)
    yield port
    assert member.running, "the member died"
    assert revision(port) == before, "fuzzed input changed the store"
    assert "leases" not in ok(port, "/v3/lease/leases"), "fuzzed input granted a lease"
    assert ok(port, "/v3/kv/range", {"key": b64("fuzz")})["header"]["revision"] == str(before)


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data``, half-close, and read until the member closes (bounded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as s:
        with contextlib.suppress(OSError):  # the member may answer and close first
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        out = bytearray()
        deadline = time.monotonic() + BOUND
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            assert time.monotonic() < deadline, "the member kept the connection open"
        return bytes(out)


def status_of(response: bytes) -> int | None:
    """The final status (after any "100 Continue")."""
    while response.startswith(b"HTTP/1.1 100 "):
        response = response.split(b"\r\n\r\n", 1)[1]
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


# ----------------------------------------------------------------------------- HTTP

PATHS = ["/v3/kv/range", "/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn",
         "/v3/kv/compaction", "/v3/lease/grant", "/v3/lease/revoke", "/v3/lease/keepalive",
         "/v3/lease/timetolive", "/v3/lease/leases", "/v3/kv/lease/revoke", "/v3/watch",
         "/v3/cluster/member/list", "/v3/maintenance/status", "/version", "/health",
         "/metrics", "/", "/v3/", "/v3/kv/range/extra", "/%00", "/v3/kv/put?x=1", "*",
         "//[x", "http://h:1/v3/kv/put", "/v3/kv/put?%ff=%zz&&=", "/%2e%2e/version"]

VALID: dict[str, dict[str, Any]] = {
    # one valid request per write route; the fuzzer breaks each in one place
    "/v3/kv/put": {"key": b64("fuzz"), "value": b64("v"), "lease": 0, "prev_kv": True},
    "/v3/kv/deleterange": {"key": b64("fuzz"), "range_end": b64("fuzz0"), "prev_kv": False},
    "/v3/kv/txn": {"compare": [{"key": b64("fuzz"), "target": "VALUE", "result": "EQUAL",
                                "value": b64("v")}],
                   "success": [{"request_put": {"key": b64("fuzz"), "value": b64("w")}}],
                   "failure": [{"request_delete_range": {"key": b64("fuzz")}}]},
    "/v3/kv/compaction": {"revision": 1, "physical": False},
    "/v3/lease/grant": {"TTL": 30, "ID": 0},
    "/v3/lease/revoke": {"ID": 1},
    "/v3/lease/keepalive": {"ID": 1},
    "/v3/watch": {"create_request": {"key": b64("fuzz"), "start_revision": 1,
                                     "prev_kv": True, "filters": ["NOPUT"]}},
}

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value that holds a scalar."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _paths(v, (*prefix, k))]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _paths(v, (*prefix, i))]
    return [prefix]


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy = dict(obj) if isinstance(obj, dict) else list(obj)
    copy[path[0]] = _set(obj[path[0]], path[1:], value)
    return copy


def _wrong_for(field: str, value: Any) -> st.SearchStrategy[Any]:
    """Values that are never acceptable where ``value`` (named ``field``) is."""
    if field in ("key",):
        return st.sampled_from(["", "!!", "Zm9", "Zm9v_-"]) | st.integers() | st.lists(
            st.integers(), max_size=2) | st.booleans()
    if isinstance(value, bool):
        return st.integers() | st.text(max_size=5) | st.lists(st.booleans(), max_size=2)
    if isinstance(value, int):
        return (st.floats(allow_nan=False).filter(lambda f: not f.is_integer())
                | st.booleans() | st.text(alphabet="xyz-.e", min_size=1, max_size=5)
                | st.just(str(1 << 64)) | st.lists(st.integers(), max_size=2))
    if field in ("target", "result"):
        return st.sampled_from(["SIZE", "equal", "", "9"]) | st.integers(5, 99) | st.booleans()
    if field == "filters" or isinstance(value, list):
        return st.sampled_from([["NOPE"], ["noput"], [7], {}, "NOPE", 2, True])
    if isinstance(value, str):  # base64 bytes
        return st.sampled_from(["!!", "Zm9", "Zm9v_-", "===="]) | st.integers() | st.booleans()
    return st.just([value])


@st.composite
def broken_json_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid write request with exactly one flaw that makes it invalid."""
    path = draw(st.sampled_from(sorted(VALID)))
    valid = VALID[path]
    kind = draw(st.sampled_from(["field", "shape", "truncate", "not-utf8", "empty-key"]))
    if kind == "field":
        where = draw(st.sampled_from(_paths(valid)))
        field = next((p for p in reversed(where) if isinstance(p, str)), "")
        bad = _set(valid, where, draw(_wrong_for(field, _get(valid, where))))
        return path, json.dumps(bad).encode()
    if kind == "shape":
        return path, json.dumps(draw(st.sampled_from([[valid], "text", 5, [], True]))).encode()
    text = json.dumps(valid).encode()
    if kind == "truncate":
        return path, text[:draw(st.integers(1, len(text) - 1))]
    if kind == "not-utf8":
        return path, b"\xff" + text
    if path in ("/v3/kv/compaction", "/v3/lease/grant", "/v3/lease/revoke",
                "/v3/lease/keepalive"):
        return path, text[:-1]  # no key to empty: truncate instead
    emptied = json.loads(text)
    target = emptied.get("create_request", emptied)
    if "key" in target:
        target["key"] = ""
    else:  # txn: empty the compare's key
        target["compare"][0]["key"] = ""
    return path, json.dumps(emptied).encode()


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


READ_ONLY = ["/v3/kv/range", "/v3/lease/timetolive", "/v3/lease/leases",
             "/v3/cluster/member/list", "/v3/maintenance/status"]
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH",
                           "CONNECT", "TRACE", "G\x00T", "post", ""])
HEADER_LINES = st.lists(st.sampled_from([
    "Content-Type: application/json", "Content-Type: text/plain", "Connection: close",
    "Connection: upgrade", "Upgrade: websocket", "Expect: 100-continue",
    "Transfer-Encoding: gzip", "Transfer-Encoding: chunked, chunked", "Content-Length: -1",
    "Content-Length: 5", "Content-Length: 99999999999", "X-Junk: \x01\x7f",
    " leading-space: x", "NoColon", "Host: a", "Host: a\r\nHost: b",
]), max_size=4)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    """Requests well-formed enough to reach the router or the gateway, each flawed; those
    sent to the gateway's write routes are refused for sure, and no body here is a JSON
    object, so no route of any API can take one for a valid write."""
    choice = draw(st.sampled_from(["broken-write", "junk-to-read", "junk-to-write", "framing"]))
    if choice == "broken-write":
        path, body = draw(broken_json_requests())
        method = "POST"
        lines = ["Host: fuzz", f"Content-Length: {len(body)}"]
    elif choice == "junk-to-read":
        path = draw(st.sampled_from(READ_ONLY))
        method = draw(st.sampled_from(["POST", "GET", "PUT"]))
        body = draw(st.binary(max_size=64) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
        lines = ["Host: fuzz", f"Content-Length: {len(body)}"]
    elif choice == "junk-to-write":
        # anything that is not a JSON object is refused on every write route
        path = draw(st.sampled_from(sorted(VALID)))
        method = "POST"
        body = draw(st.binary(max_size=64).filter(lambda b: not b.strip().startswith(b"{"))
                    | (st.lists(JSON_VALUES, max_size=3) | st.text() | st.integers())
                    .map(lambda v: json.dumps(v).encode()))
        if body.strip() in (b"", b"null"):
            body = b"[]"  # no body means {} (as in etcd): valid on some routes
        lines = ["Host: fuzz", f"Content-Length: {len(body)}"]
    else:
        path = draw(st.sampled_from(PATHS) | st.text(max_size=20).map(lambda t: "/" + t))
        method = draw(METHODS)
        body = draw(st.binary(max_size=32))
        lines = draw(HEADER_LINES)
        body = b"[" + body  # never a JSON object: no route may take it for a valid write
        if not any(line.startswith(("Content-Length", "Transfer-Encoding")) for line in lines):
            # without a length the body would be empty, i.e. {}: a valid lease grant
            lines = [*lines, f"Content-Length: {len(body)}"]
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{line}\r\n" for line in lines)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


http_budget = Budget()


@fuzz_settings()
@given(data=st.binary(max_size=512))
def test_fuzz_http_listener_with_random_bytes(unchanged: int, data: bytes) -> None:
    if http_budget.spent() or data.startswith(b"DSC1"):
        return
    with http_budget.example():
        response = exchange(unchanged, data)
        status = status_of(response)
        assert status is None or 400 <= status < 500, response[:200]


structured_budget = Budget()


@fuzz_settings()
@given(data=http_requests())
def test_fuzz_http_listener_with_flawed_requests(unchanged: int, data: bytes) -> None:
    if structured_budget.spent():
        return
    with structured_budget.example():
        response = exchange(unchanged, data)
        status = status_of(response)
        words = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        if words[0] == "POST" and len(words) == 3 and words[1] in VALID:
            assert status is None or 400 <= status < 500, (data[:300], response[:300])
        else:  # a read, or a route of another API, may even succeed
            assert status is None or status < 500, (data[:300], response[:300])


# ----------------------------------------------------------------------------- native


def frame(obj: Any) -> bytes:
    payload = cbor2.dumps(obj)
    return struct.pack(">I", len(payload)) + payload


WRONG = (st.integers() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)
         | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2) | st.booleans())
NOT_INT = WRONG.filter(lambda v: type(v) is not int) | st.text(max_size=4) | st.binary(max_size=4)


def _native_flawed(op: str) -> st.SearchStrategy[dict[str, Any]]:
    """Native requests for ``op`` that the member must refuse."""
    bad_key = WRONG.filter(lambda v: not isinstance(v, bytes | str)) | st.just(b"")
    cases: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "put": st.fixed_dictionaries({"key": bad_key, "value": st.binary(max_size=8)}),
        "delete_range": st.fixed_dictionaries({"key": bad_key}),
        "txn": st.fixed_dictionaries({"compare": st.lists(WRONG, min_size=1, max_size=2),
                                      "success": st.just([{"request_put": {"key": b"fuzz"}}])})
        | st.fixed_dictionaries({"success": st.lists(WRONG, min_size=1, max_size=2)}),
        "compact": st.fixed_dictionaries({"revision": NOT_INT}),
        "lease_grant": st.fixed_dictionaries({"ttl": NOT_INT}),
        "lease_revoke": st.fixed_dictionaries({"lease": NOT_INT}),
        "lease_keepalive": st.fixed_dictionaries({"lease": NOT_INT}),
        "watch": st.fixed_dictionaries({"key": bad_key}),
        "watch_cancel": st.fixed_dictionaries({"watch_id": WRONG}),
        "range": st.dictionaries(st.sampled_from(["key", "limit", "revision", "sort_order"]),
                                 WRONG, max_size=3),
        # any op name, even a real one, with only fields no op reads: at most a read
        "nope": st.dictionaries(st.text(max_size=4).map(lambda t: "x-" + t), WRONG,
                                max_size=3),
    }
    return cases[op]


@st.composite
def native_requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    op = draw(st.sampled_from(["put", "delete_range", "txn", "compact", "lease_grant",
                               "lease_revoke", "lease_keepalive", "watch", "watch_cancel",
                               "range", "nope"]))
    fields = draw(_native_flawed(op))
    rid = draw(st.integers(0, 2**32) | st.just(-1) | st.text(max_size=3) | st.none())
    return op, {"id": rid, "op": op if op != "nope" else draw(st.text(max_size=8)), **fields}


native_raw_budget = Budget()


@fuzz_settings()
@given(data=st.binary(max_size=512), framed=st.booleans())
def test_fuzz_native_listener_with_random_bytes(unchanged: int, data: bytes,
                                                framed: bool) -> None:
    if native_raw_budget.spent():
        return
    with native_raw_budget.example():
        payload = struct.pack(">I", len(data)) + data if framed else data
        response = exchange(unchanged, b"DSC1" + payload)
        _check_native_answers(response, refused=True)


native_budget = Budget()


@fuzz_settings()
@given(request=native_requests())
def test_fuzz_native_listener_with_flawed_requests(
    unchanged: int, request: tuple[str, dict[str, Any]],
) -> None:
    if native_budget.spent():
        return
    with native_budget.example():
        op, fields = request
        response = exchange(unchanged, b"DSC1" + frame(fields))
        _check_native_answers(response, refused=op not in ("range", "nope"))


def _check_native_answers(response: bytes, *, refused: bool) -> None:
    """Every answer is a well-formed frame; a refused request's is an ``err`` frame."""
    pos = 0
    while pos < len(response):
        (size,) = struct.unpack_from(">I", response, pos)
        answer = cbor2.loads(response[pos + 4:pos + 4 + size])
        pos += 4 + size
        assert "err" in answer or not refused, answer
        if "err" in answer:
            assert isinstance(answer["err"]["code"], str)


# ----------------------------------------------------------------------------- the fuzzers fuzz


def test_the_fuzzers_ran() -> None:
    """Guards against a fuzzer that silently skips everything."""
    for name, budget in (("http bytes", http_budget), ("http requests", structured_budget),
                         ("native bytes", native_raw_budget),
                         ("native requests", native_budget)):
        print(f"{name}: {budget.ran} examples")
        assert budget.ran >= 20, f"the {name} fuzzer ran only {budget.ran} examples"
