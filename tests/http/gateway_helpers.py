"""Talking HTTP to real members in tests: whole requests with ``http.client``, streams read
off a raw socket so each HTTP chunk is seen as the server framed it."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from discoverd.testing.cluster import NativeClient

BOUND = 10.0  # seconds: every socket read in these tests is bounded by this


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: Any = None, *,
            headers: dict[str, str] | None = None, timeout: float = BOUND) -> Reply:
    if isinstance(body, dict | list):
        data: bytes | None = json.dumps(body).encode()
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post(port: int, path: str, body: Any = None) -> Reply:
    return request(port, "POST", path, {} if body is None else body)


def ok(port: int, path: str, body: Any = None) -> dict[str, Any]:
    reply = post(port, path, body)
    assert reply.status == 200, (path, reply)
    result: dict[str, Any] = reply.json()
    return result


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def revision(port: int) -> int:
    with NativeClient(port) as c:
        return int(c.status()["header"]["revision"])


def status(port: int) -> dict[str, Any]:
    with NativeClient(port) as c:
        return c.status()


class Stream:
    """A streaming POST on a raw socket: ``head()`` then ``chunk()`` per HTTP chunk."""

    def __init__(self, port: int, path: str, body: bytes | str | dict[str, Any]) -> None:
        data = (json.dumps(body).encode() if isinstance(body, dict)
                else body.encode() if isinstance(body, str) else body)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        self.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {len(data)}"
                          "\r\n\r\n".encode() + data)
        self.buf = bytearray()
        self.status = 0
        self.headers: dict[str, str] = {}

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the member closed the connection")
        self.buf += data

    def _until(self, marker: bytes) -> bytes:
        while (i := self.buf.find(marker)) < 0:
            self._fill()
        out = bytes(self.buf[:i])
        del self.buf[:i + len(marker)]
        return out

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def head(self) -> int:
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
        return self.status

    def body(self) -> bytes:
        """The whole body of a non-chunked answer (an error)."""
        return self._exactly(int(self.headers["content-length"]))

    def chunk(self) -> bytes | None:
        """The next HTTP chunk's payload; None at the end of the response."""
        size = int(self._until(b"\r\n"), 16)
        if size == 0:
            self._until(b"\r\n")
            return None
        payload = self._exactly(size)
        assert self._exactly(2) == b"\r\n"
        return payload

    def result(self) -> dict[str, Any] | None:
        """The next chunk, checked to be exactly one JSON object and its newline."""
        payload = self.chunk()
        if payload is None:
            return None
        assert payload.endswith(b"\n"), payload
        assert payload.count(b"\n") == 1, payload
        obj: dict[str, Any] = json.loads(payload)
        return obj
