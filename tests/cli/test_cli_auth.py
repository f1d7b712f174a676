"""``discoverd auth|user|role``: etcdctl's auth flow against a real member, its outputs, and
what a restricted user may and may not do (issue 11)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Run, discoverd, endpoint_of

from discoverd.testing.cluster import ProcessCluster

ROOT = ("--user", "root:rootpw")
ALICE = ("--user", "alice:alicepw")


@pytest.fixture(scope="module")
def ep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("auth-cli")
    cluster = ProcessCluster(root, 1, extra_args=["--bcrypt-cost", "4"])
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield endpoint_of(cluster)
    finally:
        cluster.close()


def ok(r: Run) -> str:
    assert r.code == 0, str(r)
    return r.out.decode()


def fails(r: Run, message: str) -> None:
    assert r.code != 0, str(r)
    assert r.err.decode() == f"Error: {message}\n", str(r)
    assert r.out == b"", str(r)


def revision(ep: str, *user: str) -> int:
    out = json.loads(ok(discoverd(ep, *user, "-w", "json", "get", "nothing")))
    return int(out["header"]["revision"])


def test_etcdctl_flow(ep: str) -> None:
    # Set up as etcdctl users do, auth still off.
    assert ok(discoverd(ep, "user", "add", "root:rootpw")) == "User root created\n"
    # As in etcd, the root role exists without "role add root" (and "auth enable" grants
    # it to root by itself).
    assert ok(discoverd(ep, "user", "grant-role", "root", "root")) == \
        "Role root is granted to user root\n"
    assert ok(discoverd(ep, "role", "add", "app")) == "Role app created\n"
    assert ok(discoverd(ep, "role", "grant-permission", "app", "readwrite", "app/",
                        "--prefix")) == "Role app updated\n"
    assert ok(discoverd(ep, "role", "grant-permission", "app", "read", "shared")) == \
        "Role app updated\n"
    assert ok(discoverd(ep, "role", "grant-permission", "app", "write", "logs/", "logs0")) \
        == "Role app updated\n"
    assert ok(discoverd(ep, "user", "add", "alice", "--interactive=false",
                        stdin=b"alicepw\n")) == "User alice created\n"
    assert ok(discoverd(ep, "user", "grant-role", "alice", "app")) == \
        "Role app is granted to user alice\n"
    # The auth revision starts at 1, as etcd's, and counts the 8 changes above.
    assert ok(discoverd(ep, "auth", "status")) == \
        "Authentication Status: false\nAuthRevision: 9\n"
    assert ok(discoverd(ep, *ROOT, "auth", "enable")) == "Authentication Enabled\n"
    # Health needs no credentials (a linearizable read anyone may make), as etcdctl's.
    health = discoverd(ep, "endpoint", "health")
    assert health.code == 0, str(health)
    assert b" is healthy: " in health.err  # etcdctl prints it on stderr too
    assert ok(discoverd(ep, *ROOT, "auth", "status")).startswith(
        "Authentication Status: true\nAuthRevision: ")

    assert ok(discoverd(ep, *ROOT, "role", "get", "app")) == (
        "Role app\n"
        "KV Read:\n"
        "\t[app/, app0) (prefix app/)\n"
        "\tshared\n"
        "KV Write:\n"
        "\t[app/, app0) (prefix app/)\n"
        "\t[logs/, logs0) (prefix logs/)\n")
    assert ok(discoverd(ep, *ROOT, "user", "get", "alice")) == "User: alice\nRoles: app\n"
    assert ok(discoverd(ep, *ROOT, "user", "list")) == "alice\nroot\n"
    assert ok(discoverd(ep, *ROOT, "role", "list")) == "app\nroot\n"
    detail = ok(discoverd(ep, *ROOT, "user", "get", "alice", "--detail"))
    assert detail.startswith("User: alice\n\nRole app\nKV Read:\n"), detail

    # alice: inside her prefix.
    assert ok(discoverd(ep, *ALICE, "put", "app/x", "1")) == "OK\n"
    assert ok(discoverd(ep, *ALICE, "get", "app/x")) == "app/x\n1\n"
    # Outside it: refused, and nothing changes.
    before = revision(ep, *ROOT)
    fails(discoverd(ep, *ALICE, "put", "other", "1"), "etcdserver: permission denied")
    fails(discoverd(ep, *ALICE, "get", "other"), "etcdserver: permission denied")
    assert revision(ep, *ROOT) == before
    assert ok(discoverd(ep, *ROOT, "get", "other")) == ""
    # Admin verbs need root.
    fails(discoverd(ep, *ALICE, "user", "list"), "etcdserver: permission denied")
    # No credentials, wrong password.
    r = discoverd(ep, "get", "app/x")
    assert r.code != 0, str(r)
    assert r.err.startswith(b"Error: etcdserver: user name is empty"), str(r)
    fails(discoverd(ep, "--user", "alice:wrong", "get", "app/x"),
          "etcdserver: authentication failed, invalid user ID or password")
    # --password instead of NAME:PASSWORD.
    assert ok(discoverd(ep, "--user", "alice", "--password", "alicepw", "get", "app/x",
                        "--print-value-only")) == "1\n"

    # Password change: the old one stops working.
    assert ok(discoverd(ep, *ROOT, "user", "passwd", "alice", "--new-user-password",
                        "newpw")) == "Password updated\n"
    fails(discoverd(ep, *ALICE, "get", "app/x"),
          "etcdserver: authentication failed, invalid user ID or password")
    assert ok(discoverd(ep, "--user", "alice:newpw", "get", "app/x",
                        "--print-value-only")) == "1\n"

    # Revocations.
    assert ok(discoverd(ep, *ROOT, "role", "revoke-permission", "app", "shared")) == \
        "Permission of key shared is revoked from role app\n"
    assert ok(discoverd(ep, *ROOT, "role", "revoke-permission", "app", "logs/",
                        "--prefix")) == \
        "Permission of range [logs/, logs0) is revoked from role app\n"
    fails(discoverd(ep, *ROOT, "role", "revoke-permission", "app", "nope"),
          "etcdserver: permission is not granted to the role")
    assert ok(discoverd(ep, *ROOT, "user", "revoke-role", "alice", "app")) == \
        "Role app is revoked from user alice\n"
    fails(discoverd(ep, "--user", "alice:newpw", "get", "app/x"),
          "etcdserver: permission denied")

    # Management errors, etcd's words.
    fails(discoverd(ep, *ROOT, "user", "add", "alice:x"), "etcdserver: user name already exists")
    fails(discoverd(ep, *ROOT, "role", "add", "app"), "etcdserver: role name already exists")
    fails(discoverd(ep, *ROOT, "user", "get", "bob"), "etcdserver: user name not found")

    # Tear down: disable with root, then everything is open again.
    assert ok(discoverd(ep, *ROOT, "auth", "disable")) == "Authentication Disabled\n"
    assert ok(discoverd(ep, "get", "app/x", "--print-value-only")) == "1\n"
    assert ok(discoverd(ep, "user", "delete", "alice")) == "User alice deleted\n"
    assert ok(discoverd(ep, "role", "delete", "app")) == "Role app deleted\n"
    assert ok(discoverd(ep, "user", "list")) == "root\n"


def test_json_outputs_and_usage_errors(ep: str) -> None:
    out = json.loads(ok(discoverd(ep, "-w", "json", "role", "add", "j")))
    assert set(out) == {"header"}
    assert out["header"]["revision"] > 0
    ok(discoverd(ep, "role", "grant-permission", "j", "write", "k", "--from-key"))
    assert ok(discoverd(ep, "role", "get", "j")) == \
        "Role j\nKV Read:\nKV Write:\n\t[k, <open ended>\n"
    out = json.loads(ok(discoverd(ep, "-w", "json", "role", "get", "j")))
    assert out["perm"] == [{"permType": 1, "key": "aw==", "range_end": "AA=="}]
    out = json.loads(ok(discoverd(ep, "-w", "json", "auth", "status")))
    assert set(out) == {"header", "authRevision"}
    assert out["authRevision"] > 0
    out = json.loads(ok(discoverd(ep, "-w", "json", "role", "list")))
    assert "j" in out["roles"]
    assert ok(discoverd(ep, "role", "revoke-permission", "j", "k", "--from-key")) == \
        "Permission of range [k, <open ended> is revoked from role j\n"
    fails(discoverd(ep, "role", "grant-permission", "j", "execute", "k"),
          "invalid permission type execute")
    fails(discoverd(ep, "role", "grant-permission", "j", "read", "k", "--prefix",
                    "--from-key"), "--from-key and --prefix flags are mutually exclusive")
    fails(discoverd(ep, "role", "grant-permission", "j", "read", "a", "b", "--prefix"),
          "unexpected endkey argument with --prefix flag")
    fails(discoverd(ep, "-w", "table", "role", "list"), "table not supported as output format")
    fails(discoverd(ep, "user", "add", "bob", "--interactive=false",
                    stdin=b""), "password is empty")
    ok(discoverd(ep, "role", "delete", "j"))


def test_password_never_printed(ep: str, tmp_path: Path) -> None:
    r = discoverd(ep, "user", "add", "carol:sekrit-123")
    assert ok(r) == "User carol created\n"
    r = discoverd(ep, "user", "add", "carol:sekrit-123")
    assert r.code != 0, str(r)
    assert b"sekrit" not in r.err + r.out, str(r)
    ok(discoverd(ep, "user", "delete", "carol"))
