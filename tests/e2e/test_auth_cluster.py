"""Auth state is replicated through Raft and survives restarts and snapshots; tokens work on
every member; a password is never written anywhere in clear (real 3-member cluster)."""

from __future__ import annotations

import http.client
import re
from pathlib import Path

import cbor2
import pytest

from discoverd.testing.cluster import ClientFailure, NativeClient, ProcessCluster, wait_for

PASSWORD = "Pw-7d1c9-UNIQUE-in-clear?"
NEW_PASSWORD = "Pw-second-8e2f0-UNIQUE"


def _all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in root.rglob("*") if p.is_file()]


def test_auth_is_replicated_and_tokens_work_on_every_member(tmp_path: Path) -> None:
    with ProcessCluster(tmp_path, 3, extra_args=["--bcrypt-cost", "4",
                                                 "--snapshot-count", "8"]).started() as cl:
        a, b, c = cl.members
        with a.client() as ca:
            ca.call("user_add", name="root", password=PASSWORD)
            ca.call("auth_enable")
            token = ca.call("authenticate", name="root", password=PASSWORD)["token"]
            ca.call("role_add", name="app", token=token)
            ca.call("role_grant_permission", name="app", token=token, perm={
                "perm_type": "READWRITE", "key": b"/app/", "range_end": b"/app0"})
            ca.call("user_add", name="svc", password=PASSWORD, token=token)
            ca.call("user_grant_role", user="svc", role="app", token=token)
            for i in range(12):  # past --snapshot-count: the auth state goes into snapshots
                ca.call("put", key=b"/app/k%d" % i, value=b"v", token=token)

        # A token issued by one member works on the others (the key is replicated).
        for m in (b, c):
            with m.client() as cm:
                wait_for("auth on " + m.name,
                         lambda cm=cm: cm.call("auth_status")["enabled"])
                with pytest.raises(ClientFailure) as e:
                    cm.call("put", key=b"/app/x", value=b"1")
                assert e.value.code == "unauthenticated"
                assert cm.call("put", key=b"/app/x", value=m.name.encode(),
                               token=token)["header"]["revision"] > 0
                svc = cm.call("authenticate", name="svc", password=PASSWORD)["token"]
                with pytest.raises(ClientFailure) as e:
                    cm.call("put", key=b"/other", value=b"1", token=svc)
                assert e.value.code == "permission_denied"

        # Restarted, a member still knows users, roles and the token key (WAL + snapshot).
        assert list((b.data_dir / "member" / "snap").iterdir()), "no snapshot was taken"
        cl.kill(b)
        cl.restart(b)
        cl.wait_ready(b)
        with b.client() as cb:
            got = wait_for("b serves svc's token", lambda: _try_range(cb, svc))
            assert got["count"] == 13
            assert cb.call("role_get", role="app", token=token)["perm"] == [
                {"perm_type": "READWRITE", "key": b"/app/", "range_end": b"/app0"}]

        # A password change invalidates the user's old tokens on every member.
        with c.client() as cc:
            cc.call("user_change_password", name="svc", password=NEW_PASSWORD, token=token)
        for m in (a, b, c):
            with m.client() as cm:
                wait_for("old token refused on " + m.name,
                         lambda cm=cm: _refused_code(cm, svc) == "invalid_auth_token")
                with pytest.raises(ClientFailure) as e:
                    cm.call("authenticate", name="svc", password=PASSWORD)
                assert e.value.code == "auth_failed"
                fresh = cm.call("authenticate", name="svc", password=NEW_PASSWORD)["token"]
                assert cm.call("range", key=b"/app/x", token=fresh)["count"] == 1

        # Disabled through one member, auth is off everywhere; tokens of before are void
        # when it is enabled again (a new token key).
        with a.client() as ca:
            ca.call("auth_disable", token=token)
        for m in (a, b, c):
            with m.client() as cm:
                wait_for("auth off on " + m.name,
                         lambda cm=cm: not cm.call("auth_status")["enabled"])
                assert cm.call("range", key=b"/other")["count"] == 0
        with a.client() as ca:
            ca.call("auth_enable")
            with pytest.raises(ClientFailure) as e:
                ca.call("range", key=b"/app/x", token=token)
            assert e.value.code == "invalid_auth_token"
        metrics = _metrics(a.client_port)
        assert re.search(r"^discoverd_auth_enabled 1(\.0)?$", metrics, re.M)
        assert re.search(r'^discoverd_auth_authentications_total\{result="failed"\} '
                         r"[1-9]", metrics, re.M)
        assert re.search(r"^discoverd_auth_permission_denied_total [1-9]", metrics, re.M)

    # Nothing a member wrote — WAL, snapshots, logs — holds a password in clear; the WAL
    # holds bcrypt hashes instead.
    files = _all_bytes(tmp_path)
    assert any(p.suffix == ".log" or "log" in p.name for p, _ in files)
    for path, data in files:
        for secret in (PASSWORD, NEW_PASSWORD):
            assert secret.encode() not in data, f"{secret!r} in clear in {path}"
    assert any(b"$2b$04$" in data for _, data in files), "no bcrypt hash was stored"


def _metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _try_range(client: object, token: str) -> dict[str, object] | None:
    try:
        return client.call("range", key=b"/app/", range_end=b"/app0",  # type: ignore[attr-defined, no-any-return]
                           count_only=True, token=token)
    except ClientFailure:
        return None


def _refused_code(client: object, token: str) -> str | None:
    try:
        client.call("range", key=b"/app/x", token=token)  # type: ignore[attr-defined]
    except ClientFailure as e:
        return e.code
    return None


class RawWatch:
    """A native watch stream on its own connection, frames read as they come."""

    def __init__(self, port: int, key: bytes, range_end: bytes, token: str | None) -> None:
        self.client = NativeClient(port, timeout=10)
        req: dict[str, object] = {"id": 1, "op": "watch", "key": key, "range_end": range_end}
        if token is not None:
            req["token"] = token
        self.client.send_raw(cbor2.dumps(req))

    def frame(self) -> dict[str, object]:
        answer: dict[str, object] = self.client.read_frame()
        return answer

    def until_canceled(self) -> tuple[list[bytes], dict[str, object]]:
        """Values delivered before the watch ended, and its final frame."""
        values: list[bytes] = []
        while True:
            got = self.frame()
            ok = got.get("ok")
            assert isinstance(ok, dict), got
            for ev in ok.get("events") or ():
                values.append(ev["kv"]["value"])
            if ok.get("canceled"):
                return values, ok

    def close(self) -> None:
        self.client.close()


def test_a_running_watch_ends_when_its_reader_loses_the_permission(tmp_path: Path) -> None:
    """A watch is judged when made and again at every auth change: revoking the reader's
    permission (or enabling auth under a watch made without a user) ends it, and no event
    applied after the change reaches it."""
    with ProcessCluster(tmp_path, 1, extra_args=["--bcrypt-cost", "4"]).started() as cl:
        (m,) = cl.members
        port = m.client_port
        anonymous = RawWatch(port, b"/w/", b"/w0", None)  # made while auth is off
        assert anonymous.frame()["ok"]["created"]  # type: ignore[index]
        with m.client() as c:
            c.call("user_add", name="root", password="rootpw")
            c.call("role_add", name="reader")
            c.call("role_grant_permission", name="reader", perm={
                "perm_type": "READ", "key": b"/w/", "range_end": b"/w0"})
            c.call("user_add", name="alice", password="alicepw")
            c.call("user_grant_role", user="alice", role="reader")
            c.call("auth_enable")
            _, last = anonymous.until_canceled()
            assert "authentication was enabled" in str(last["cancel_reason"])
            root = c.call("authenticate", name="root", password="rootpw")["token"]
            alice = c.call("authenticate", name="alice", password="alicepw")["token"]
            watch = RawWatch(port, b"/w/", b"/w0", alice)
            assert watch.frame()["ok"]["created"]  # type: ignore[index]
            c.call("put", key=b"/w/a", value=b"before", token=root)
            c.call("role_revoke_permission", role="reader", key=b"/w/", range_end=b"/w0",
                   token=root)
            c.call("put", key=b"/w/a", value=b"after", token=root)
            values, last = watch.until_canceled()
            assert last["cancel_reason"] == "etcdserver: permission denied"
            assert b"after" not in values
            with pytest.raises(ClientFailure) as e:  # and she cannot watch it again
                c.call("watch", key=b"/w/", range_end=b"/w0", token=alice)
            assert e.value.code == "permission_denied"
            watch.close()
            anonymous.close()
