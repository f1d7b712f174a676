"""Auth over HTTP (issue 11): etcd's ``/v3/auth/*`` routes, the ``Authorization`` header on
the etcd gateway, the registry REST API and SSE watches, and 401/403 answers."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import etcd3gw
import pytest
import requests

from discoverd.testing.cluster import MemberProcess, ProcessCluster


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Http:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: Any = None,
                token: str | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            h = dict(headers or {})
            if token is not None:
                h["Authorization"] = token
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
        finally:
            conn.close()

    def post(self, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        return self.request("POST", path, {} if body is None else body, token)

    def ok(self, path: str, body: Any = None, token: str | None = None) -> Any:
        status, out = self.post(path, body, token)
        assert status == 200, (path, status, out)
        return out


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    cluster = ProcessCluster(tmp_path_factory.mktemp("http-auth"), 1,
                             extra_args=["--bcrypt-cost", "4"])
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        (m,) = cluster.members
        yield m
        assert "http handler failed" not in m.log_text(), "a gateway handler crashed"
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def api(member: MemberProcess) -> Http:
    """The member with users root and alice (readwrite on ``app/``), auth enabled."""
    h = Http(member.client_port)
    h.ok("/v3/auth/user/add", {"name": "root", "password": "rootpw"})
    h.ok("/v3/auth/role/add", {"name": "app"})
    h.ok("/v3/auth/role/grant", {"name": "app", "perm": {
        "permType": "READWRITE", "key": b64(b"app/"), "range_end": b64(b"app0")}})
    h.ok("/v3/auth/role/grant", {"name": "app", "perm": {
        "permType": 0, "key": b64(b"/services/"), "range_end": b64(b"/services0")}})
    h.ok("/v3/auth/user/add", {"name": "alice", "password": "alicepw"})
    h.ok("/v3/auth/user/grant", {"user": "alice", "role": "app"})
    status, out = h.post("/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
    assert status == 412
    assert out["message"] == "etcdserver: authentication is not enabled"
    h.ok("/v3/auth/enable")
    return h


def login(h: Http, name: str, password: str) -> str:
    out = h.ok("/v3/auth/authenticate", {"name": name, "password": password})
    assert set(out) == {"header", "token"}
    token = out["token"]
    assert isinstance(token, str)
    assert token
    return token


def test_status_roles_and_users(api: Http) -> None:
    root = login(api, "root", "rootpw")
    out = api.ok("/v3/auth/status", token=root)
    assert out["enabled"] is True
    assert int(out["authRevision"]) > 1
    assert api.ok("/v3/auth/user/list", token=root)["users"] == ["alice", "root"]
    assert api.ok("/v3/auth/user/get", {"name": "alice"}, token=root)["roles"] == ["app"]
    assert api.ok("/v3/auth/user/get", {"name": "root"}, token=root)["roles"] == ["root"]
    assert api.ok("/v3/auth/role/list", token=root)["roles"] == ["app", "root"]
    perms = api.ok("/v3/auth/role/get", {"role": "app"}, token=root)["perm"]
    assert perms == [
        {"key": b64(b"/services/"), "range_end": b64(b"/services0")},
        {"permType": "READWRITE", "key": b64(b"app/"), "range_end": b64(b"app0")},
    ]
    status, out = api.post("/v3/auth/user/add", {"name": "alice", "password": "x"}, root)
    assert (status, out["message"]) == (412, "etcdserver: user name already exists")
    status, out = api.post("/v3/auth/role/get", {"role": "nope"}, root)
    assert (status, out["message"]) == (412, "etcdserver: role name not found")
    status, out = api.post("/v3/auth/user/add", {"name": "x", "hashedPassword": "$2a$"}, root)
    assert status == 400
    assert "hashedPassword" in out["message"]


def test_authorization_header_on_kv(api: Http) -> None:
    alice = login(api, "alice", "alicepw")
    # Allowed: inside app/ (raw token, and the Bearer form).
    api.ok("/v3/kv/put", {"key": b64(b"app/a"), "value": b64(b"1")}, token=alice)
    out = api.ok("/v3/kv/range", {"key": b64(b"app/a")}, token=f"Bearer {alice}")
    assert base64.b64decode(out["kvs"][0]["value"]) == b"1"
    revision = int(out["header"]["revision"])

    # Refused: outside it (403), nothing written.
    status, out = api.post("/v3/kv/put", {"key": b64(b"other"), "value": b64(b"x")}, alice)
    assert status == 403
    assert out == {"error": "etcdserver: permission denied",
                                      "message": "etcdserver: permission denied", "code": 7}
    # No token: 401; a bad one: 401 with etcd's words; wrong password: 401.
    status, out = api.post("/v3/kv/range", {"key": b64(b"app/a")})
    assert status == 401
    assert out["code"] == 16
    status, out = api.post("/v3/kv/range", {"key": b64(b"app/a")}, token="garbage")
    assert (status, out["message"]) == (401, "etcdserver: invalid auth token")
    status, out = api.post("/v3/auth/authenticate", {"name": "alice", "password": "bad"})
    assert (status, out["message"]) == (
        401, "etcdserver: authentication failed, invalid user ID or password")
    # A token in the body is not a way in, and does not override the header.
    status, _ = api.post("/v3/kv/range", {"key": b64(b"app/a"), "token": alice})
    assert status == 401
    status, _ = api.post("/v3/kv/range", {"key": b64(b"other"), "token": "x"}, alice)
    assert status == 403

    root = login(api, "root", "rootpw")
    out = api.ok("/v3/kv/range", {"key": b64(b"other")}, token=root)
    assert "kvs" not in out
    assert int(out["header"]["revision"]) == revision
    # Admin routes need root.
    status, _ = api.post("/v3/auth/user/list", token=alice)
    assert status == 403


def test_etcd3gw_with_a_token(api: Http, member: MemberProcess) -> None:
    # etcd3gw has no auth API: authenticate with its raw post, then send the token on
    # every request of its session, as etcd's gateway users do.
    client = etcd3gw.client(host="127.0.0.1", port=member.client_port)
    token = client.post(client.get_url("/auth/authenticate"),
                        json={"name": "alice", "password": "alicepw"})["token"]
    session = requests.Session()
    session.headers["Authorization"] = token
    authed = etcd3gw.client(host="127.0.0.1", port=member.client_port, session=session)
    assert authed.put("app/gw", "v")
    assert authed.get("app/gw") == [b"v"]
    lease = authed.lease(ttl=30)
    assert authed.put("app/leased", "x", lease=lease)
    assert lease.refresh() > 0
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception) as e:
        authed.put("other/gw", "v")
    assert "permission denied" in str(e.value.detail_text)
    with pytest.raises(etcd3gw.exceptions.Etcd3Exception):
        client.get("app/gw")  # no token


def test_registry_rest_and_sse(api: Http, member: MemberProcess) -> None:
    alice = login(api, "alice", "alicepw")
    status, out = api.request("GET", "/v1/services")
    assert status == 401, out
    assert out["error"] == "unauthenticated", out
    status, out = api.request("GET", "/v1/services", token=alice)
    assert status == 200, out
    status, out = api.request("GET", "/v1/config", token=alice)
    assert status == 403, out
    assert out["error"] == "permission_denied", out

    # SSE watch: without a token refused, with one it streams.
    conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
    try:
        conn.request("GET", "/v1/watch?key=app/&prefix=true")
        resp = conn.getresponse()
        assert resp.status == 401, resp.read()
        resp.read()
    finally:
        conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", member.client_port, timeout=10)
    try:
        conn.request("GET", "/v1/watch?key=app/&prefix=true", headers={"Authorization": alice})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("content-type", "").startswith("text/event-stream")
        api.ok("/v3/kv/put", {"key": b64(b"app/sse"), "value": b64(b"1")}, token=alice)
        seen = b""
        while b"app/sse" not in seen:  # bounded by the connection's 10 s timeout
            line = resp.readline()
            assert line, "the stream ended"
            seen += line
    finally:
        conn.close()
