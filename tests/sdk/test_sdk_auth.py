"""The SDK with auth enabled (issue 11): lazy login, the token on every request and stream,
permission errors, and transparent re-authentication when a token dies — by expiry under a
watch and a kept-alive lease (etcd-io/etcd#8287, #13975), or by auth being re-enabled."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from discoverd.errors import (
    AuthFailed,
    AuthManagementError,
    PermissionDenied,
    Unauthenticated,
)
from discoverd.sdk import Client
from discoverd.sdk._auth import Permission
from discoverd.testing.cluster import ProcessCluster
from discoverd.testing.proxy import TcpProxy

TOKEN_TTL = 1
"""Seconds; members accept a token up to 5 s of clock leeway past it."""


def endpoint(cluster: ProcessCluster) -> str:
    return f"127.0.0.1:{cluster.members[0].client_port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    c = ProcessCluster(tmp_path_factory.mktemp("sdk-auth"), 1,
                       extra_args=["--bcrypt-cost", "4", "--auth-token-ttl", str(TOKEN_TTL)])
    try:
        c.start_all()
        c.wait_for_leader()
        with Client(endpoint(c)) as admin:
            admin.user_add("root", "rootpw")
            admin.role_add("app")
            admin.role_grant_permission("app", "readwrite", "app/", prefix=True)
            admin.role_grant_permission("app", "read", "shared")
            admin.user_add("alice", "alicepw")
            admin.user_grant_role("alice", "app")
            admin.auth_enable()
        yield c
    finally:
        c.close()


def root_client(cluster: ProcessCluster) -> Client:
    return Client(endpoint(cluster), user="root", password="rootpw")


def test_roles_and_users(cluster: ProcessCluster) -> None:
    with root_client(cluster) as root:
        status = root.auth_status()
        assert status.enabled
        assert status.auth_revision > 1
        assert root.user_list() == ["alice", "root"]
        assert root.user_get("alice") == ["app"]
        assert root.user_get("root") == ["root"]  # granted by auth_enable
        assert root.role_list() == ["app", "root"]
        perms = root.role_get("app")
        assert perms == [Permission("READWRITE", b"app/", b"app0"),
                         Permission("READ", b"shared", b"")]
        assert perms[0].prefix
        assert not perms[0].from_key
        assert not perms[1].prefix
        root.role_add("tmp")
        root.role_grant_permission("tmp", "write", "z", from_key=True)
        assert root.role_get("tmp") == [Permission("WRITE", b"z", b"\x00")]
        assert root.role_get("tmp")[0].from_key
        root.role_revoke_permission("tmp", "z", from_key=True)
        assert root.role_get("tmp") == []
        with pytest.raises(AuthManagementError) as e:
            root.role_revoke_permission("tmp", "z")
        assert e.value.code == "permission_not_granted"
        root.role_delete("tmp")
        with pytest.raises(AuthManagementError) as e:
            root.role_add("app")
        assert e.value.code == "role_exists"
        with pytest.raises(AuthManagementError) as e:
            root.user_get("nobody")
        assert e.value.code == "user_not_found"
        with pytest.raises(AuthManagementError) as e:
            root.user_delete("root")
        assert e.value.code == "invalid_auth_mgmt"


def test_permissions(cluster: ProcessCluster) -> None:
    with root_client(cluster) as root, \
            Client(endpoint(cluster), user="alice", password="alicepw") as alice:
        alice.put("app/a", "1")
        assert alice.get("app/a").kvs[0].value == b"1"
        assert alice.get("app/", prefix=True).count == 1
        before = root.get("other").header.revision
        with pytest.raises(PermissionDenied, match="etcdserver: permission denied"):
            alice.put("other", "x")
        with pytest.raises(PermissionDenied):
            alice.get("shared/more", prefix=True)
        with pytest.raises(PermissionDenied):
            alice.user_list()
        after = root.get("other")
        assert not after.kvs
        assert after.header.revision == before
        assert alice.get("shared").count == 0  # readable, absent

    with Client(endpoint(cluster)) as anonymous, pytest.raises(Unauthenticated):
        anonymous.get("app/a")
    with Client(endpoint(cluster), user="alice", password="wrong") as bad, \
            pytest.raises(AuthFailed):
        bad.get("app/a")


def test_password_never_shown(cluster: ProcessCluster) -> None:
    with Client(endpoint(cluster), user="alice", password="s3cret-pw") as c:
        with pytest.raises(AuthFailed) as e:
            c.get("app/a")
        assert "s3cret" not in str(e.value)
        assert "s3cret" not in repr(c) + repr(c.async_client) + repr(c.async_client._auth)


def test_reenabled_auth_and_password_change(cluster: ProcessCluster) -> None:
    with root_client(cluster) as root:
        root.user_add("bob", "bobpw")
        root.user_grant_role("bob", "app")
        with Client(endpoint(cluster), user="bob", password="bobpw") as bob:
            bob.put("app/b", "1")
            first = bob.async_client._auth.token
            # A disable/enable draws a new token key: every token dies; bob logs in again.
            root.auth_disable()
            root.auth_enable()
            bob.put("app/b", "2")
            assert bob.async_client._auth.token not in (None, first)
            # A password change also kills bob's token, and his old password is wrong now.
            root.user_change_password("bob", "newpw")
            with pytest.raises(AuthFailed):
                bob.get("app/b")
        with Client(endpoint(cluster), user="bob", password="newpw") as bob:
            assert bob.get("app/b").kvs[0].value == b"2"
        root.user_delete("bob")


def test_without_auth_credentials_are_harmless(tmp_path: Path) -> None:
    c = ProcessCluster(tmp_path, 1, extra_args=["--bcrypt-cost", "4"])
    try:
        c.start_all()
        c.wait_for_leader()
        with Client(endpoint(c), user="someone", password="pw") as client:
            client.put("k", "v")  # auth is off: authenticate says so, no token is sent
            assert client.get("k").kvs[0].value == b"v"
            assert client.async_client._auth.token is None
    finally:
        c.close()


def _token_expired(port: int, token: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/v3/kv/range", body=json.dumps({"key": "YXBwLw=="}),
                     headers={"Authorization": token})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status == 401 and b"invalid auth token" in body
    finally:
        conn.close()


def test_watch_and_lease_outlive_the_token(cluster: ProcessCluster) -> None:
    port = cluster.members[0].client_port
    with TcpProxy(port) as proxy, root_client(cluster) as root, \
            Client(f"127.0.0.1:{proxy.port}", user="alice", password="alicepw") as watcher, \
            Client(endpoint(cluster), user="alice", password="alicepw") as alice:
        lease = alice.lease(3)
        # The watching client sends nothing but its watch: only the watch can log it in again.
        with lease, watcher.watch("app/w/", prefix=True) as watch:
            alice.put("app/w/1", "a", lease=lease.id)
            assert [e.kv.key for e in watch.next(timeout=10).events] == [b"app/w/1"]
            token = watcher.async_client._auth.token
            assert token is not None
            deadline = time.monotonic() + TOKEN_TTL + 30
            while not _token_expired(port, token):  # the member's verdict, not a guess
                assert time.monotonic() < deadline, "the token never expired"
                time.sleep(0.2)
            # Cut the connection: the watch must come back, logging in again first.
            proxy.block()
            proxy.unblock()
            root.put("app/w/2", "b")
            assert [e.kv.key for e in watch.next(timeout=10).events] == [b"app/w/2"]
            assert watcher.async_client._auth.token not in (None, token)
            assert watcher.async_client._auth.token is not None
            # alice's own token expired too: her write is retried after a new login.
            alice.put("app/w/3", "c")
            assert [e.kv.key for e in watch.next(timeout=10).events] == [b"app/w/3"]
            # Her lease was kept alive through all of it, for more than its TTL past expiry.
            expired_at = time.monotonic()
            while time.monotonic() - expired_at < 2 * lease.ttl:
                assert not lease.lost
                time.sleep(0.5)
            assert root.lease_time_to_live(lease.id).ttl > 0
            assert root.get("app/w/1").count == 1
