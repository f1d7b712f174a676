"""Authentication and authorization on every API of a real member (issue 11): the native
protocol (every op and stream), the etcd JSON gateway, the registry REST API and SSE
watches. Each call is made with no credentials and as a user without the permission it
needs; each must be refused with the right error and change nothing — the store's revision,
the auth store (users, roles, revision) and the secret keys are compared before and after.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from discoverd.testing.cluster import ClientFailure, MemberProcess, NativeClient, ProcessCluster

SECRET = b"the-secret-value-7f3a"
BOUND = 10.0


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Setup:
    def __init__(self, member: MemberProcess) -> None:
        self.member = member
        self.port = member.client_port
        with member.client() as c:
            c.call("user_add", name="root", password="rootpw")
            c.call("role_add", name="alice-role")
            for key, end in ((b"/alice/", b"/alice0"), (b"/services/alice-svc/",
                                                        b"/services/alice-svc0")):
                c.call("role_grant_permission", name="alice-role",
                       perm={"perm_type": "READWRITE", "key": key, "range_end": end})
            c.call("user_add", name="alice", password="alicepw")
            c.call("user_grant_role", user="alice", role="alice-role")
            c.call("auth_enable")
            self.root = c.call("authenticate", name="root", password="rootpw")["token"]
            self.alice = c.call("authenticate", name="alice", password="alicepw")["token"]
            c.call("put", key=b"/secret/k", value=SECRET, token=self.root)
            lease = c.call("lease_grant", ttl=3600, token=self.root)["id"]
            c.call("put", key=b"/secret/leased", value=SECRET, lease=lease, token=self.root)
            self.secret_lease = lease
            alice_lease = c.call("lease_grant", ttl=3600, token=self.alice)["id"]
            c.call("put", key=b"/alice/leased", value=b"a", lease=alice_lease,
                   token=self.alice)
            self.alice_lease = alice_lease

    def state(self) -> dict[str, Any]:
        """What no refused call may change."""
        with self.member.client() as c:
            t = self.root
            everything = c.call("range", key=b"\0", range_end=b"\0", token=t)
            return {
                "revision": everything["header"]["revision"],
                "kvs": sorted((kv["key"], kv["value"], kv["mod_revision"])
                              for kv in everything.get("kvs", [])),
                "auth": c.call("auth_status", token=t)["auth_revision"],
                "users": c.call("user_list", token=t)["users"],
                "roles": {r: c.call("role_get", role=r, token=t)["perm"]
                          for r in c.call("role_list", token=t)["roles"]},
                "leases": sorted(x["id"] for x in c.call("lease_leases", token=t)["leases"]),
                "members": len(c.call("member_list", token=t)["members"]),
            }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root: Path = tmp_path_factory.mktemp("auth-enforcement")
    with ProcessCluster(root, 1, extra_args=["--bcrypt-cost", "4"]).started() as cluster:
        (m,) = cluster.members
        yield Setup(m)
        assert m.running, "the member died"
        log = m.log_text()
        assert "client connection failed" not in log, "an error escaped a handler"
        assert "http handler failed" not in log, "a gateway handler crashed"
        assert "rootpw" not in log
        assert "alicepw" not in log


NOT_ALICES = b"/secret/k"

# (op, fields): calls alice has no permission for.
FORBIDDEN: list[tuple[str, dict[str, Any]]] = [
    ("range", {"key": NOT_ALICES}),
    ("range", {"key": b"/alice/", "range_end": b"/alicf"}),  # a little past her prefix
    ("range", {"key": b"\0", "range_end": b"\0"}),
    ("range", {"key": NOT_ALICES, "serializable": True}),
    ("put", {"key": b"/secret/new", "value": b"x"}),
    ("put", {"key": b"/alice/x", "value": b"x", "lease": 0, "prev_kv": True,
             "_auth_rev": 0, "_auth_user": "root"}),  # smuggled fields are stripped…
    ("delete_range", {"key": b"/secret/", "range_end": b"/secret0"}),
    ("txn", {"compare": [{"key": NOT_ALICES, "target": "value", "result": "equal",
                          "value": SECRET}],
             "success": [{"request_put": {"key": b"/alice/t", "value": b"1"}}]}),
    ("txn", {"success": [{"request_put": {"key": b"/alice/t", "value": b"1"}}],
             "failure": [{"request_delete_range": {"key": NOT_ALICES}}]}),
    ("txn", {"success": [{"request_txn": {"success": [
        {"request_range": {"key": NOT_ALICES}}]}}]}),
    ("compact", {"revision": 1}),
    ("lease_revoke", {"lease": -1}),  # filled in: the lease holding /secret/leased
    ("member_add", {"peer_urls": ["http://127.0.0.1:1"]}),
    ("member_remove", {"member": 1}),
    ("member_promote", {"member": 1}),
    ("member_update", {"member": 1, "peer_urls": ["http://127.0.0.1:1"]}),
    ("move_leader", {"target": 1}),
    ("alarm_disarm", {}),
    ("auth_enable", {}),
    ("auth_disable", {}),
    ("user_add", {"name": "mallory", "password": "x"}),
    ("user_delete", {"name": "root"}),
    ("user_list", {}),
    ("user_get", {"name": "root"}),
    ("user_change_password", {"name": "root", "password": "owned"}),
    ("user_grant_role", {"user": "alice", "role": "root"}),
    ("user_revoke_role", {"name": "root", "role": "root"}),
    ("role_add", {"name": "r2"}),
    ("role_get", {"role": "root"}),
    ("role_list", {}),
    ("role_delete", {"role": "alice-role"}),
    ("role_grant_permission", {"name": "alice-role", "perm": {
        "perm_type": "READWRITE", "key": b"\0", "range_end": b"\0"}}),
    ("role_revoke_permission", {"role": "alice-role", "key": b"/alice/",
                                "range_end": b"/alice0"}),
    ("config_validate", {"name": "app", "value": b"{}"}),
]
FORBIDDEN_STREAMS: list[tuple[str, dict[str, Any]]] = [
    ("watch", {"key": b"/secret/", "range_end": b"/secret0"}),
    ("watch", {"key": NOT_ALICES, "start_revision": 1}),
    ("snapshot", {}),
]
# Calls alice may make, which still need someone authenticated.
USER_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("lease_grant", {"ttl": 60}),
    ("lease_keepalive", {"lease": -2}),  # filled in: alice's lease
    ("lease_timetolive", {"lease": -2}),
    ("lease_leases", {}),
    ("member_list", {}),
    ("alarm_list", {}),
    ("watch_progress", {}),
    ("range", {"key": b"/alice/leased"}),
    ("put", {"key": b"/alice/y", "value": b"y"}),
]


def _fill(setup: Setup, fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    if out.get("lease") == -1:
        out["lease"] = setup.secret_lease
    if out.get("lease") == -2:
        out["lease"] = setup.alice_lease
    return out


def _refused(setup: Setup, op: str, fields: dict[str, Any], token: str | None,
             codes: set[str]) -> None:
    before = setup.state()
    with NativeClient(setup.port, timeout=BOUND) as c:
        extra = {"token": token} if token is not None else {}
        with pytest.raises(ClientFailure) as e:
            c.call(op, **_fill(setup, fields), **extra)
    assert e.value.code in codes, f"{op}: {e.value}"
    assert SECRET.decode() not in str(e.value)
    assert setup.state() == before, f"{op} changed something although refused"


@pytest.mark.parametrize(("op", "fields"), FORBIDDEN + FORBIDDEN_STREAMS + USER_ONLY,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_native_refuses_a_call_without_credentials(setup: Setup, op: str,
                                                   fields: dict[str, Any]) -> None:
    _refused(setup, op, fields, None, {"unauthenticated"})


@pytest.mark.parametrize(("op", "fields"), FORBIDDEN + FORBIDDEN_STREAMS,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_native_refuses_a_call_the_user_may_not_make(setup: Setup, op: str,
                                                     fields: dict[str, Any]) -> None:
    if op == "put" and fields.get("key") == b"/alice/x":
        # Smuggled "_auth_user"/"_auth_rev" are dropped: the put is alice's own, allowed.
        with NativeClient(setup.port) as c:
            got = c.call(op, **fields, token=setup.alice)
        assert got["header"]["revision"] > 0
        return
    _refused(setup, op, fields, setup.alice, {"permission_denied"})


@pytest.mark.parametrize("token", ["garbage", "", "a.b.c"])
def test_native_refuses_a_bad_token(setup: Setup, token: str) -> None:
    _refused(setup, "put", {"key": b"/alice/z", "value": b"z"}, token,
             {"invalid_auth_token"})


def test_a_forged_token_is_refused(setup: Setup) -> None:
    """A token signed with another key, or alice's with its claims edited to root's."""
    import jwt

    forged = jwt.encode({"sub": "root", "gen": 1, "exp": 2**40}, b"x" * 32, algorithm="HS256")
    _refused(setup, "user_list", {}, forged, {"invalid_auth_token"})
    head, claims, sig = setup.alice.split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=="))
    body["sub"] = "root"
    edited = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    _refused(setup, "user_list", {}, f"{head}.{edited}.{sig}", {"invalid_auth_token"})


@pytest.mark.parametrize(("op", "fields"), USER_ONLY,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_the_user_may_make_the_calls_her_roles_allow(setup: Setup, op: str,
                                                     fields: dict[str, Any]) -> None:
    with NativeClient(setup.port) as c:
        got = c.call(op, **_fill(setup, fields), token=setup.alice)
    assert "header" in got


def test_an_allowed_read_shows_only_what_it_asked(setup: Setup) -> None:
    with NativeClient(setup.port) as c:
        got = c.call("range", key=b"/alice/", range_end=b"/alice0", token=setup.alice)
    keys = [kv["key"] for kv in got["kvs"]]
    assert keys
    assert all(k.startswith(b"/alice/") for k in keys)


# ---------------------------------------------------------------------------- HTTP


def http_call(setup: Setup, method: str, path: str, body: Any = None,
         token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", setup.port, timeout=BOUND)
    try:
        headers = {"Authorization": token} if token is not None else {}
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


HTTP_FORBIDDEN: list[tuple[str, str, Any]] = [
    ("POST", "/v3/kv/range", {"key": b64(NOT_ALICES)}),
    ("POST", "/v3/kv/range", {"key": b64(b"\0"), "range_end": b64(b"\0")}),
    ("POST", "/v3/kv/put", {"key": b64(b"/secret/new"), "value": b64(b"x")}),
    ("POST", "/v3/kv/deleterange", {"key": b64(NOT_ALICES)}),
    ("POST", "/v3/kv/txn", {"success": [{"request_put": {"key": b64(b"/alice/t"),
                                                         "value": b64(b"1")}}],
                            "failure": [{"request_range": {"key": b64(NOT_ALICES)}}]}),
    ("POST", "/v3/kv/compaction", {"revision": "1"}),
    ("POST", "/v3/lease/revoke", {"ID": "SECRET_LEASE"}),
    ("POST", "/v3/auth/user/list", {}),
    ("POST", "/v3/auth/user/add", {"name": "mallory", "password": "x"}),
    ("POST", "/v3/auth/role/grant", {"name": "alice-role", "perm": {
        "permType": "READWRITE", "key": b64(b"\0"), "range_end": b64(b"\0")}}),
    ("POST", "/v3/auth/disable", {}),
    ("GET", "/v1/services/other", None),
    ("PUT", "/v1/services/other", {"id": "i1", "address": "10.0.0.1", "port": 80,
                                   "ttl": 10}),
    ("GET", "/v1/config/app", None),
    ("PUT", "/v1/config/app", {"a": 1}),
    ("PUT", "/v1/schemas/app", {"type": "object"}),
]
HTTP_USER_ONLY: list[tuple[str, str, Any]] = [
    ("POST", "/v3/lease/grant", {"TTL": 60}),
    ("POST", "/v3/cluster/member/list", {}),
    ("POST", "/v3/kv/put", {"key": b64(b"/alice/h"), "value": b64(b"h")}),
    ("GET", "/v1/services/alice-svc", None),
]


def _http_refused(setup: Setup, method: str, path: str, body: Any, token: str | None,
                  status: int) -> None:
    if isinstance(body, dict) and body.get("ID") == "SECRET_LEASE":
        body = {"ID": str(setup.secret_lease)}
    before = setup.state()
    got, data = http_call(setup, method, path, body, token)
    assert got == status, f"{method} {path}: {got} {data[:300]!r}"
    assert SECRET not in data
    assert b64(SECRET).encode() not in data
    assert setup.state() == before, f"{method} {path} changed something although refused"


@pytest.mark.parametrize(("method", "path", "body"), HTTP_FORBIDDEN + HTTP_USER_ONLY,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_http_refuses_a_call_without_credentials(setup: Setup, method: str, path: str,
                                                 body: Any) -> None:
    _http_refused(setup, method, path, body, None, 401)


@pytest.mark.parametrize(("method", "path", "body"), HTTP_FORBIDDEN,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_http_refuses_a_call_the_user_may_not_make(setup: Setup, method: str, path: str,
                                                   body: Any) -> None:
    _http_refused(setup, method, path, body, setup.alice, 403)


@pytest.mark.parametrize(("method", "path", "body"), HTTP_USER_ONLY,
                         ids=lambda x: x if isinstance(x, str) else "")
def test_http_allows_what_the_user_may_do(setup: Setup, method: str, path: str,
                                          body: Any) -> None:
    got, data = http_call(setup, method, path, body, setup.alice)
    assert got == 200, data[:300]


def _stream_head(setup: Setup, request: bytes) -> bytes:
    """Send a raw HTTP request and read what comes back within a bound: a refused stream
    answers at once (its status line and error), never events."""
    with socket.create_connection(("127.0.0.1", setup.port), timeout=BOUND) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 40:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"denied" in data or b"user name is empty" in data or b"auth token" in data:
                break
        return data


@pytest.mark.parametrize("token", [None, "alice"])
def test_watches_on_a_range_the_caller_may_not_read_are_refused(setup: Setup,
                                                                token: str | None) -> None:
    """The etcd gateway's /v3/watch and the SSE /v1/watch: refused, no event, no secret."""
    auth = f"Authorization: {setup.alice}\r\n" if token else ""
    body = json.dumps({"create_request": {"key": b64(b"/secret/"),
                                          "range_end": b64(b"/secret0"),
                                          "start_revision": "1"}}).encode()
    gateway = _stream_head(setup, (
        f"POST /v3/watch HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body)
    sse = _stream_head(setup, (
        f"GET /v1/watch?key=/secret/&prefix=true&start_revision=1 HTTP/1.1\r\nHost: x\r\n{auth}\r\n"
    ).encode())
    expected = b"denied" if token else (b"user name is empty", b"401")
    for answer in (gateway, sse):
        assert SECRET not in answer
        assert b64(SECRET).encode() not in answer
        if token:
            assert b"denied" in answer or b" 403 " in answer, answer[:400]
        else:
            assert any(e in answer for e in expected), answer[:400]


def test_a_refused_native_watch_sends_no_event(setup: Setup) -> None:
    """The refusal is the stream's only frame: nothing of the range leaks before it."""
    with NativeClient(setup.port, timeout=BOUND) as c:
        c.send_raw(cbor2.dumps({"id": 1, "op": "watch", "key": b"/secret/",
                                "range_end": b"/secret0", "start_revision": 1,
                                "token": setup.alice}))
        frame = c.read_frame_bytes()
    answer = cbor2.loads(frame)
    assert answer["err"]["code"] == "permission_denied"
    assert SECRET not in frame


def test_health_and_status_need_no_credentials(setup: Setup) -> None:
    """What load balancers and operators poll stays open (etcd's too); it reveals nothing."""
    got, data = http_call(setup, "GET", "/health")
    assert (got, data) == (200, b'{"health":"true"}')
    got, data = http_call(setup, "POST", "/v3/maintenance/status", {})
    assert got == 200
    with NativeClient(setup.port) as c:
        assert c.call("status")["leader"]
        assert c.call("auth_status")["enabled"] is True
