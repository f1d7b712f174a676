"""Fuzzing the native and HTTP listeners of a real member with authentication on (issue 11).

Seeded random requests — every op, well-formed or not, with random keys, ranges, nested txns,
leases, watches and auth changes — sent with no credentials, a garbage or forged token, or
as ``alice`` (read-write on ``/alice/``, read on ``/shared/``) or ``bob`` (read on ``/alice/``
and ``/shared/``, no write anywhere). Oracles that do not trust the code under test:

* no answer ever contains the secret value (raw or base64) stored under ``/secret/``;
* nothing without credentials succeeds but the public ops (status, auth_status, authenticate);
* afterwards, every key is one root wrote (``/secret/``, ``/shared/``: unchanged, same
  mod_revision) or lies under ``/alice/``; no value bob could have written exists; users,
  roles and the auth revision are as root left them;
* the member is alive, its log holds no escaped error, and valid requests still work.

``DISCOVERD_AUTH_FUZZ_SEED`` replays a run; ``DISCOVERD_FUZZ_SECONDS`` (default 12) bounds it.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import cbor2
import jwt
import pytest

from discoverd.testing.cluster import ClientFailure, NativeClient, ProcessCluster

SECRET = b"S3CRET-f00d-0xdeadbeef"
SEED = int(os.environ.get("DISCOVERD_AUTH_FUZZ_SEED", "1101"))
SECONDS = float(os.environ.get("DISCOVERD_FUZZ_SECONDS", "12"))
BOUND = 10.0
PUBLIC = {"status", "auth_status", "authenticate"}
OPS = ["range", "put", "delete_range", "txn", "compact", "lease_grant", "lease_revoke",
       "lease_keepalive", "lease_timetolive", "lease_leases", "member_list", "member_add",
       "member_remove", "move_leader", "alarm_list", "alarm_disarm", "auth_enable",
       "auth_disable", "auth_status", "authenticate", "user_add", "user_get", "user_list",
       "user_delete", "user_change_password", "user_grant_role", "user_revoke_role",
       "role_add", "role_get", "role_list", "role_delete", "role_grant_permission",
       "role_revoke_permission", "config_validate", "status", "watch", "snapshot",
       "watch_progress", "no_such_op"]
KEYS = [b"/alice/a", b"/alice/", b"/alice0", b"/shared/s", b"/shared/", b"/secret/k",
        b"/secret/", b"\0", b"", b"/b", b"/", b"/alicf"]
NAMES = ["root", "alice", "bob", "mallory", "", "r", "alice-rw"]


class Gen:
    def __init__(self, rnd: random.Random, who: str, lease: int) -> None:
        self.r = rnd
        self.who = who
        self.lease = lease

    def key(self) -> bytes:
        r = self.r
        if r.random() < 0.1:
            return r.randbytes(r.randint(0, 6))
        return r.choice(KEYS) + (r.choice([b"", b"x", b"\xff"]) if r.random() < 0.3 else b"")

    def end(self, key: bytes) -> bytes:
        return self.r.choice([b"", b"", b"\0", key[:-1] + bytes([(key[-1:] or b"\0")[0] + 1
                                                                 if key[-1:] != b"\xff"
                                                                 else 255]),
                              self.key()])

    def value(self) -> bytes:
        return f"{self.who}:".encode() + self.r.randbytes(self.r.randint(0, 8))

    def junk(self) -> Any:
        return self.r.choice([None, 7, -1, "str", b"\xff" * 3, [], {}, 2**70, 1.5])

    def kv_op(self, depth: int) -> dict[str, Any]:
        r = self.r
        kind = r.choice(["request_range", "request_put", "request_delete_range",
                         "request_txn" if depth < 2 else "request_range"])
        if kind == "request_txn":
            return {kind: self.txn(depth + 1)}
        body: dict[str, Any] = {"key": self.key()}
        if kind == "request_put":
            body["value"] = self.value()
        else:
            body["range_end"] = self.end(body["key"])
        return {kind: body}

    def txn(self, depth: int = 0) -> dict[str, Any]:
        r = self.r
        return {
            "compare": [{"key": self.key(), "target": r.choice(["value", "version", "mod"]),
                         "result": r.choice(["equal", "greater", "less", "not_equal"]),
                         "value": self.value(), "version": r.randint(0, 3),
                         "mod_revision": r.randint(0, 50)}
                        for _ in range(r.randint(0, 2))],
            "success": [self.kv_op(depth) for _ in range(r.randint(0, 3))],
            "failure": [self.kv_op(depth) for _ in range(r.randint(0, 2))],
        }

    def fields(self, op: str) -> dict[str, Any]:
        r = self.r
        key = self.key()
        f: dict[str, Any] = {
            "range": {"key": key, "range_end": self.end(key),
                      "serializable": r.random() < 0.3, "revision": r.choice([0, 0, 1, 5])},
            "put": {"key": key, "value": self.value(), "prev_kv": r.random() < 0.3},
            "delete_range": {"key": key, "range_end": self.end(key),
                             "prev_kv": r.random() < 0.3},
            "txn": self.txn(),
            "compact": {"revision": r.randint(0, 20)},
            "lease_grant": {"ttl": r.randint(1, 100)},
            "lease_revoke": {"lease": r.choice([self.lease, r.randint(0, 10**6)])},
            "lease_keepalive": {"lease": self.lease},
            "lease_timetolive": {"lease": self.lease, "keys": True},
            "member_add": {"peer_urls": ["http://127.0.0.1:9"]},
            "member_remove": {"member": r.randint(1, 2**62)},
            "move_leader": {"target": r.randint(1, 2**62)},
            "alarm_disarm": {},
            "authenticate": {"name": r.choice(NAMES), "password": r.choice(["x", "alicepw"])},
            "user_add": {"name": r.choice(NAMES), "password": "pw"},
            "user_get": {"name": r.choice(NAMES)},
            "user_delete": {"name": r.choice(NAMES)},
            "user_change_password": {"name": r.choice([n for n in NAMES if n != self.who]),
                                     "password": "owned"},
            "user_grant_role": {"user": r.choice(NAMES), "role": r.choice(["root", "r"])},
            "user_revoke_role": {"name": r.choice(NAMES), "role": r.choice(["root", "r"])},
            "role_add": {"name": r.choice(NAMES)},
            "role_get": {"role": r.choice(["root", "alice-rw", "r"])},
            "role_delete": {"role": r.choice(["root", "alice-rw", "r"])},
            "role_grant_permission": {"name": r.choice(["alice-rw", "r"]), "perm": {
                "perm_type": r.choice(["READ", "WRITE", "READWRITE", "BAD"]),
                "key": b"\0", "range_end": b"\0"}},
            "role_revoke_permission": {"role": "alice-rw", "key": b"/alice/",
                                       "range_end": b"/alice0"},
            "config_validate": {"name": r.choice(["app", "x/y", ""]), "value": b"{}"},
            "watch": {"key": key, "range_end": self.end(key), "start_revision": 1},
        }.get(op, {})
        if f and r.random() < 0.15:  # one field of the wrong type
            f[r.choice(list(f))] = self.junk()
        if r.random() < 0.05:
            f["_auth_user"] = "root"  # smuggling: must be ignored
            f["_auth_rev"] = 0
        return f


def _tokens(port: int) -> dict[str, str | None]:
    with NativeClient(port) as c:
        alice = c.call("authenticate", name="alice", password="alicepw")["token"]
        bob = c.call("authenticate", name="bob", password="bobpw")["token"]
    forged = jwt.encode({"sub": "root", "gen": 1, "exp": 2**40}, b"k" * 32, algorithm="HS256")
    return {"none": None, "garbage": "not-a-token", "forged": forged, "alice": alice,
            "bob": bob}


def _native(port: int, op: str, fields: dict[str, Any], token: str | None) -> Any:
    req = {"id": 1, "op": op, **fields}
    if token is not None:
        req["token"] = token
    with NativeClient(port, timeout=BOUND) as c:
        c.send_raw(cbor2.dumps(req))
        frame = c.read_frame_bytes()
    return cbor2.loads(frame), frame


def _b64(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_b64(v) for v in value]
    return value


HTTP_PATHS = {"range": "/v3/kv/range", "put": "/v3/kv/put",
              "delete_range": "/v3/kv/deleterange", "txn": "/v3/kv/txn",
              "compact": "/v3/kv/compaction", "lease_grant": "/v3/lease/grant",
              "lease_revoke": "/v3/lease/revoke", "lease_leases": "/v3/lease/leases",
              "member_list": "/v3/cluster/member/list", "status": "/v3/maintenance/status",
              "auth_status": "/v3/auth/status", "authenticate": "/v3/auth/authenticate",
              "user_add": "/v3/auth/user/add", "user_list": "/v3/auth/user/list",
              "user_delete": "/v3/auth/user/delete", "role_add": "/v3/auth/role/add",
              "role_grant_permission": "/v3/auth/role/grant", "auth_disable":
              "/v3/auth/disable", "user_grant_role": "/v3/auth/user/grant"}


def _http(port: int, op: str, fields: dict[str, Any], token: str | None,
          rnd: random.Random) -> tuple[int, bytes]:
    body = _b64(fields)
    if op == "lease_revoke":
        body = {"ID": str(fields.get("lease"))}
    if op == "lease_grant":
        body = {"TTL": fields.get("ttl")}
    if op == "compact":
        body = {"revision": str(fields.get("revision"))}
    method, path = "POST", HTTP_PATHS.get(op, "/v3/kv/range")
    if rnd.random() < 0.25:  # the registry REST API and SSE instead
        method, path, body = rnd.choice([
            ("GET", "/v1/services/other", None), ("GET", "/v1/config/app", None),
            ("PUT", "/v1/config/app", {"a": 1}),
            ("PUT", "/v1/services/alice", {"id": "i", "address": "h", "port": 1, "ttl": 10}),
            ("GET", "/v1/services", None), ("GET", "/v1/status", None)])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
    try:
        headers = {"Authorization": token} if token is not None else {}
        conn.request(method, path, body=json.dumps(_b64(body)).encode() if body is not None
                     else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _state(port: int, root: str) -> dict[str, Any]:
    with NativeClient(port) as c:
        got = c.call("range", key=b"\0", range_end=b"\0", token=root)
        return {
            "kvs": {kv["key"]: (kv["value"], kv["mod_revision"]) for kv in got.get("kvs", [])},
            "auth": c.call("auth_status", token=root)["auth_revision"],
            "users": c.call("user_list", token=root)["users"],
            "roles": {r: c.call("role_get", role=r, token=root)["perm"]
                      for r in c.call("role_list", token=root)["roles"]},
        }


def test_fuzz_listeners_with_auth_enabled(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 1, extra_args=["--bcrypt-cost", "4"]).started() as cluster:
        (m,) = cluster.members
        port = m.client_port
        with NativeClient(port) as c:
            c.call("user_add", name="root", password="rootpw")
            c.call("auth_enable")
            root = c.call("authenticate", name="root", password="rootpw")["token"]
            for role, grants in (("alice-rw", [("READWRITE", b"/alice/", b"/alice0"),
                                               ("READ", b"/shared/", b"/shared0")]),
                                 ("bob-r", [("READ", b"/alice/", b"/alice0"),
                                            ("READ", b"/shared/", b"/shared0")])):
                c.call("role_add", name=role, token=root)
                for perm_type, key, end in grants:
                    c.call("role_grant_permission", name=role, token=root, perm={
                        "perm_type": perm_type, "key": key, "range_end": end})
            for user, role in (("alice", "alice-rw"), ("bob", "bob-r")):
                c.call("user_add", name=user, password=f"{user}pw", token=root)
                c.call("user_grant_role", user=user, role=role, token=root)
            for key in (b"/secret/k", b"/secret/l"):
                c.call("put", key=key, value=SECRET, token=root)
            c.call("put", key=b"/shared/s", value=b"readable by alice and bob", token=root)
            lease = c.call("lease_grant", ttl=3600, token=root)["id"]
            c.call("put", key=b"/secret/leased", value=SECRET, lease=lease, token=root)
        before = _state(port, root)
        tokens = _tokens(port)
        rnd = random.Random(SEED)
        deadline = time.monotonic() + SECONDS
        sent = ok_by = 0
        refused_without_credentials = 0
        while time.monotonic() < deadline:
            who = rnd.choice(list(tokens))
            op = rnd.choice(OPS)
            fields = Gen(rnd, who, lease).fields(op)
            token = tokens[who]
            where = f"seed {SEED} request {sent}: {who} {op} {fields!r}"
            if rnd.random() < 0.6:
                answer, raw = _native(port, op, fields, token)
                accepted = "ok" in answer
            else:
                status, raw = _http(port, op, fields, token, rnd)
                accepted = status == 200
            sent += 1
            assert SECRET not in raw, where
            assert base64.b64encode(SECRET) not in raw, where
            if who in ("none", "garbage", "forged") and op not in PUBLIC:
                assert not accepted, where
                refused_without_credentials += 1
            ok_by += accepted
        after = _state(port, root)
        assert sent >= 100, sent
        assert ok_by > 0
        assert refused_without_credentials > 0
        # Authorization held: only alice's own prefix may have changed.
        for key, (value, mod) in after["kvs"].items():
            if key.startswith(b"/alice/"):
                assert not value.startswith(b"bob:"), (key, value)
                assert not value.startswith((b"none:", b"garbage:", b"forged:")), (key, value)
            else:
                assert before["kvs"].get(key) == (value, mod), f"{key!r} changed: {value!r}"
        for key in before["kvs"]:
            if not key.startswith(b"/alice/"):
                assert key in after["kvs"], f"{key!r} was deleted"
        assert {k: after[k] for k in ("auth", "users", "roles")} == \
            {k: before[k] for k in ("auth", "users", "roles")}
        # The member is fine and still serves valid requests.
        with NativeClient(port) as c:
            assert c.call("put", key=b"/alice/final", value=b"ok", token=tokens["alice"])
            with pytest.raises(ClientFailure) as e:
                c.call("put", key=b"/shared/s", value=b"bob:no", token=tokens["bob"])
            assert e.value.code == "permission_denied"
        assert m.running
        log = m.log_text()
        assert "client connection failed" not in log, "an error escaped a handler"
        assert "http handler failed" not in log, "a gateway handler crashed"
        assert "Traceback" not in log
        print(f"auth fuzz: seed {SEED}, {sent} requests, {ok_by} accepted, "
              f"{refused_without_credentials} refused for lack of credentials")
