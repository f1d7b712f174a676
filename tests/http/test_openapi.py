"""``GET /openapi.json``: a valid OpenAPI 3.1 document that lists exactly the routes the
member serves — every route the router is given is documented, and every documented
operation reaches a handler on a real member."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from gateway_helpers import request, revision
from openapi_spec_validator import validate

import discoverd.server.http as http_package
from discoverd.server.http import gateway_router, openapi, rest_routes
from discoverd.server.http.router import Handler, Router
from discoverd.testing.cluster import MemberProcess

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items()
            for method in item if method in METHODS}


class Recording(Router):
    def __init__(self) -> None:
        super().__init__()
        self.exact: set[tuple[str, str]] = set()
        self.prefixes: set[tuple[str, str]] = set()

    def add(self, method: str, path: str, handler: Handler) -> None:
        super().add(method, path, handler)
        self.exact.add((method.upper(), path))

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        super().add_prefix(method, prefix, handler)
        self.prefixes.add((method.upper(), prefix))


def recorded(monkeypatch: pytest.MonkeyPatch) -> Recording:
    """What ``gateway_router()`` — the router a member serves — is given, by every API."""
    made: list[Recording] = []

    def make() -> Recording:
        made.append(Recording())
        return made[-1]

    monkeypatch.setattr(http_package, "Router", make)
    gateway_router()
    (router,) = made
    return router


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


def test_every_route_is_documented_and_every_operation_is_a_route(
        monkeypatch: pytest.MonkeyPatch) -> None:
    doc = openapi.document()
    documented = operations(doc)
    router = recorded(monkeypatch)
    assert router.exact <= documented, f"undocumented: {sorted(router.exact - documented)}"
    templated = {(m, p) for m, p in documented if "{" in p}
    for method, prefix in router.prefixes:
        assert any(m == method and p.startswith(prefix) for m, p in templated), (
            f"{method} {prefix}... is routed but no documented path is under it")
    for method, path in documented:
        if "{" in path:
            prefix = path.split("{", 1)[0]
            assert (method, prefix) in router.prefixes, f"{method} {path} is not routed"
        else:
            assert (method, path) in router.exact, f"{method} {path} is not routed"
    own = {(r.method, r.path) for r in rest_routes.ROUTES}
    v1 = {(m, p) for m, p in documented if p.startswith("/v1/")}
    assert v1 <= own, sorted(v1 - own)
    assert own <= documented


def sample(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "00000000000000ff" if m[1] == "id" else "probe", path)


def test_every_documented_operation_reaches_a_handler(member: MemberProcess) -> None:
    """Each of discoverd's own operations, called on a real member with a sample path and a
    request it must refuse (or a read), is answered by its handler — never the router's
    "no such path" or "method not allowed" — and writes nothing."""
    port = member.client_port
    before = revision(port)
    for method, path in sorted(operations(openapi.document())):
        if path.startswith("/v3/") or path in ("/version", "/health", "/metrics"):
            continue  # the gateway's own tests call these
        reply = request(port, method, sample(path), b"[]" if method == "PUT" else None)
        where = f"{method} {sample(path)}: {reply.status} {reply.body[:200]!r}"
        assert reply.status not in (405, 501), where
        if reply.status == 404:
            assert reply.json()["error"] in ("not_found", "lease_not_found"), where
            assert "no such path" not in reply.json()["message"], where
        if reply.headers.get("content-type") == "application/json" and reply.status >= 400:
            assert set(reply.json()) >= {"error", "message"}, where
    assert revision(port) == before


def test_the_member_serves_the_document(member: MemberProcess) -> None:
    reply = request(member.client_port, "GET", "/openapi.json")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == openapi.document()
