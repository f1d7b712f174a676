"""Every ``curl`` example in docs/http.md, replayed against a fresh member (issue 8: "curl
examples in docs/http.md are exercised by tests").

``curl`` itself need not be installed: each ``$ curl ...`` line of a ``console`` block is
parsed (the flags the docs use: ``-s``, ``-i``, ``-N``, ``-X``, ``-d``, ``-H``) and replayed
with ``http.client``. The output shown under it is the expected output: JSON lines are
compared value for value, except values that differ from run to run (ids, terms, ports,
clock readings: ``VOLATILE``), whose presence and type are compared; with ``-i`` the status
line and header names are compared too. A line ``...`` ends the comparison: the rest of the
output (a stream that goes on, metrics) is not checked.

The examples run in document order on one empty member, so revisions are what the docs say.
"""

from __future__ import annotations

import http.client
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from discoverd.server.http import Handler, Router, etcd_gateway
from discoverd.testing.cluster import NativeClient, ProcessCluster, wait_for
from discoverd.testing.console import ConsoleCommand, console_commands

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"
VOLATILE = {"cluster_id", "member_id", "raft_term", "leader", "dbSize", "dbSizeInUse",
            "raftIndex", "raftAppliedIndex", "TTL", "ID", "name", "peerURLs", "clientURLs"}
BOUND = 10.0


Example = ConsoleCommand


def examples(text: str) -> list[Example]:
    """``$ curl`` commands in ```console blocks, each with the lines printed under it."""
    return console_commands(text)


@dataclass
class Curl:
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]
    include_headers: bool


def parse_curl(command: str) -> Curl:
    args = shlex.split(command)
    assert args[0] == "curl", command
    method, url, body, headers, include = "", "", None, {}, False
    it = iter(args[1:])
    for arg in it:
        if arg in ("-s", "--silent", "-N", "--no-buffer"):
            continue
        if arg in ("-i", "--include"):
            include = True
        elif arg in ("-X", "--request"):
            method = next(it)
        elif arg in ("-d", "--data", "--data-binary"):
            body = next(it).encode()
        elif arg in ("-H", "--header"):
            name, _, value = next(it).partition(":")
            headers[name.strip()] = value.strip()
        elif arg.startswith("-"):
            raise AssertionError(f"docs/http.md uses a curl flag the test cannot replay: {arg}")
        else:
            url = arg
    parts = urlsplit(url)
    assert (parts.hostname, parts.port) == ("127.0.0.1", 2379), f"examples use :2379: {url}"
    if body is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/x-www-form-urlencoded"  # what curl -d sends
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return Curl(method or ("POST" if body is not None else "GET"), path, body, headers,
                include)


def run(curl: Curl, port: int, lines_wanted: int | None) -> list[str]:
    """The output curl would print (stopping after ``lines_wanted`` lines of body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
    try:
        conn.request(curl.method, curl.path, body=curl.body, headers=curl.headers)
        resp = conn.getresponse()
        out: list[str] = []
        if curl.include_headers:
            out.append(f"HTTP/1.1 {resp.status} {resp.reason}")
            out.extend(f"{k}: {v}" for k, v in resp.getheaders())
        body_lines: list[str] = []
        while lines_wanted is None or len(body_lines) < lines_wanted:
            line = resp.readline()
            if not line:
                break
            body_lines.append(line.decode().rstrip("\n"))
        return out + body_lines
    finally:
        conn.close()


def same_shape(expected: Any, actual: Any, key: str = "") -> bool:
    if key in VOLATILE:
        return type(expected) is type(actual)
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(same_shape(v, actual[k], k) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(same_shape(e, a, key) for e, a in zip(expected, actual, strict=True)))
    return bool(expected == actual)


def compare(example: Example, output: list[str]) -> None:
    where = f"docs/http.md:{example.line}: {example.command}"
    expected = example.expected
    if "..." in expected:
        expected = expected[:expected.index("...")]
    assert len(output) >= len(expected), f"{where}\n  got only: {output}"
    if "..." not in example.expected:
        assert len(output) == len(expected), f"{where}\n  got: {output}"
    body_started = False
    for want, got in zip(expected, output, strict=False):
        if not body_started and want.startswith("HTTP/1.1 "):
            assert got == want, f"{where}\n  status: {got!r}"
        elif not body_started and re.fullmatch(r"[A-Za-z-]+: .*", want):
            name, _, value = want.partition(": ")
            got_name, _, got_value = got.partition(": ")
            assert got_name.lower() == name.lower(), f"{where}\n  header {got!r}, want {want!r}"
            if name.lower() != "content-length":
                assert got_value == value, f"{where}\n  header {got!r}, want {want!r}"
        else:
            body_started = True
            if want.startswith(("{", "[")):
                assert same_shape(json.loads(want), json.loads(got)), (
                    f"{where}\n  want: {want}\n  got:  {got}")
            else:
                assert got == want, f"{where}\n  want: {want!r}\n  got:  {got!r}"


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    cluster = ProcessCluster(tmp_path_factory.mktemp("docs"), 1)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        port = cluster.members[0].client_port
        # the member publishes its client URLs (a Raft entry, no revision) once started
        wait_for("the member's client URLs", lambda: _published(port))
        yield port
    finally:
        cluster.close()


class _Recorder(Router):
    def __init__(self) -> None:
        super().__init__()
        self.paths: set[str] = set()

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.paths.add(path)


def _published(port: int) -> bool:
    with NativeClient(port) as c:
        return all(m["client_urls"] for m in c.call("member_list")["members"])


def test_docs_have_a_curl_example_for_every_gateway_route() -> None:
    text = DOC.read_text()
    shown = {urlsplit(a).path for ex in examples(text)
             for a in shlex.split(ex.command) if a.startswith("http")}
    routes = _Recorder()
    etcd_gateway.add_routes(routes)
    assert routes.paths <= shown, f"without a curl example: {sorted(routes.paths - shown)}"


def test_curl_examples_in_docs(port: int) -> None:
    found = examples(DOC.read_text())
    assert len(found) >= 20
    for example in found:
        if not example.command.startswith("curl "):
            continue
        curl = parse_curl(example.command)
        wanted = None
        if "..." in example.expected:
            wanted = sum(1 for line in example.expected[:example.expected.index("...")]
                         if not (curl.include_headers and _is_head(line)))
        output = run(curl, port, wanted)
        compare(example, output)


def _is_head(line: str) -> bool:
    return line.startswith("HTTP/1.1 ") or bool(re.fullmatch(r"[A-Za-z-]+: .*", line))
