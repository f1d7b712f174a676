"""The registry REST API (``/v1/...``) against a real member: what it writes is what the SDK
and the members read, a rejected request writes nothing, and config writes guarded by
``If-Match`` behave as the SDK's ``expect_generation``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_helpers import Reply, request
from rest_helpers import own_member

from discoverd.testing.cluster import MemberProcess, NativeClient
from discoverd.wire.registry_codec import ServiceInstance, history_key


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with own_member(tmp_path_factory.mktemp("rest")) as m:
        yield m.client_port


def put(port: int, path: str, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return request(port, "PUT", path, body, headers=headers)


def get(port: int, path: str) -> Reply:
    return request(port, "GET", path)


def state(port: int) -> tuple[int, list[int]]:
    """(revision, lease ids): what must not move when a request is refused."""
    with NativeClient(port) as c:
        revision = int(c.status()["header"]["revision"])
        leases = sorted(int(lease["id"]) for lease in c.call("lease_leases")["leases"])
    return revision, leases


def native_get(port: int, key: bytes) -> dict[str, Any] | None:
    with NativeClient(port) as c:
        kvs = c.call("range", key=key)["kvs"]
    return kvs[0] if kvs else None


def revoke_all(port: int) -> None:
    with NativeClient(port) as c:
        for lease in c.call("lease_leases")["leases"]:
            c.call("lease_revoke", lease=lease["id"])


# ------------------------------------------------------------------------------ services


def test_register_discover_keepalive_revoke(port: int) -> None:
    reply = put(port, "/v1/services/api", {"id": "api-1", "ttl": 30, "address": "10.0.0.5",
                                           "port": 8080, "tags": ["v2"], "zone": "eu-1"})
    assert reply.status == 200, reply
    out = reply.json()
    lease = out["lease"]
    assert out["ttl"] == 30
    assert out["keepalive"] == f"/v1/leases/{lease}/keepalive"
    assert len(lease) == 16
    assert int(lease, 16) > 0
    # the record is the registry's format, on that lease, as any client reads it
    kv = native_get(port, b"/services/api/api-1")
    assert kv is not None
    assert kv["lease"] == int(lease, 16)
    stored = ServiceInstance.from_json(kv["key"], kv["value"])
    assert stored.to_obj() == out["instance"]
    assert (stored.address, stored.port, stored.tags, stored.zone) == \
        ("10.0.0.5", 8080, ("v2",), "eu-1")
    assert out["revision"] == kv["mod_revision"]

    found = get(port, "/v1/services/api").json()
    assert found == {"service": "api", "revision": out["revision"],
                     "instances": [out["instance"]]}
    catalog = get(port, "/v1/services").json()
    assert catalog["services"]["api"] == [out["instance"]]

    alive = put(port, out["keepalive"], None)
    assert (alive.status, alive.json()) == (200, {"lease": lease, "ttl": 30})

    gone = request(port, "DELETE", f"/v1/leases/{lease}")
    assert gone.status == 200
    assert gone.json()["lease"] == lease
    assert native_get(port, b"/services/api/api-1") is None
    assert get(port, "/v1/services/api").json()["instances"] == []
    again = put(port, out["keepalive"], None)
    assert again.status == 404
    assert again.json()["error"] == "lease_not_found"
    assert request(port, "DELETE", f"/v1/leases/{lease}").status == 404


def test_register_on_a_chosen_lease_id_and_refuse_one_in_use(port: int) -> None:
    chosen = "00000000000a11ce"
    first = put(port, "/v1/services/pinned", {"id": "p1", "ttl": 30, "lease": "a11ce"})
    assert first.status == 200
    assert first.json()["lease"] == chosen
    before = state(port)
    taken = put(port, "/v1/services/pinned", {"id": "p2", "ttl": 30, "lease": chosen})
    assert taken.status == 409
    assert taken.json()["error"] == "lease_exists"
    assert state(port) == before
    assert native_get(port, b"/services/pinned/p2") is None
    revoke_all(port)


REJECTED = [
    # (path, body, status, error code, what the message must say)
    ("/v1/services/api", b"{", 400, "invalid_argument", "not valid JSON"),
    ("/v1/services/api", b"", 400, "invalid_argument", "missing"),
    ("/v1/services/api", [], 400, "invalid_argument", "JSON object"),
    ("/v1/services/api", {"id": "x"}, 400, "invalid_argument", "'ttl' is required"),
    ("/v1/services/api", {"id": "x", "ttl": "10"}, 400, "invalid_argument", "'ttl'"),
    ("/v1/services/api", {"ttl": 10}, 400, "invalid_argument", "'id' is required"),
    ("/v1/services/api", {"id": "a/b", "ttl": 10}, 400, "invalid_argument", "'/'"),
    ("/v1/services/api", {"id": "x", "ttl": 10, "tag": ["a"]}, 400, "invalid_argument",
     "unknown field"),
    ("/v1/services/api", {"id": "x", "ttl": 10, "lease": "xyz"}, 400, "invalid_argument",
     "lease id"),
    ("/v1/services/a/b", {"id": "x", "ttl": 10}, 404, "not_found", "no such path"),
    ("/v1/services/api?x=1", {"id": "x", "ttl": 10}, 400, "invalid_argument", "unknown query"),
    ("/v1/services/api", {"id": "x", "ttl": 10, "port": "80", "health": "up"}, 422,
     "validation_failed", "/port"),
    ("/v1/services/api", {"id": "x", "ttl": 10, "service": "web"}, 422, "validation_failed",
     "the key says"),
    ("/v1/services/api", {"id": "x", "ttl": 10**10}, 400, "lease_ttl_too_large", "too large"),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "says"), REJECTED)
def test_rejected_registrations_write_nothing(port: int, path: str, body: Any, status: int,
                                              code: str, says: str) -> None:
    before = state(port)
    reply = put(port, path, body)
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    out = reply.json()
    assert out["error"] == code, out
    assert says in out["message"], out
    if status == 422:
        assert out["violations"]
        assert all(
            set(v) == {"key", "path", "message", "schema_path"} for v in out["violations"])
    assert state(port) == before, "a refused registration wrote something"


def test_discovery_filters_like_the_sdk(port: int) -> None:
    for iid, health, tags, meta in [("a", "passing", ["x"], {"az": "1"}),
                                    ("b", "warning", ["x", "y"], {}),
                                    ("c", "draining", [], {"az": "1"})]:
        assert put(port, "/v1/services/filt", {"id": iid, "ttl": 30, "health": health,
                                               "tags": tags, "meta": meta}).status == 200

    def ids(query: str, path: str = "/v1/services/filt") -> list[str]:
        reply = get(port, path + query)
        assert reply.status == 200, reply
        body = reply.json()
        if "instances" in body:
            return [i["id"] for i in body["instances"]]
        return [i["id"] for i in body["services"].get("filt", [])]

    assert ids("") == ["a"]  # discovery: passing only
    assert ids("?health=passing,warning") == ["a", "b"]
    assert ids("?health=any") == ["a", "b", "c"]
    assert ids("?health=any&tag=x&tag=y") == ["b"]
    assert ids("?health=any&meta=az%3D1") == ["a", "c"]
    assert ids("", "/v1/services") == ["a", "b", "c"]  # the catalog: any health
    assert ids("?health=draining", "/v1/services") == ["c"]
    for bad in ("?health=up", "?meta=az", "?heath=any"):
        reply = get(port, "/v1/services/filt" + bad)
        assert reply.status == 400
        assert reply.json()["error"] == "invalid_argument"
    revoke_all(port)


def test_status(port: int) -> None:
    reply = get(port, "/v1/status")
    assert reply.status == 200
    out = reply.json()
    with NativeClient(port) as c:
        me = c.status()
    assert out["member"]["id"] == f"{me['header']['member_id']:x}"
    assert out["leader"] == out["member"]["id"]
    assert out["member"]["role"] == "leader"
    assert [(m["id"], m["is_leader"]) for m in out["members"]] == [(out["leader"], True)]


# ------------------------------------------------------------------------------ config


SCHEMA = {"type": "object", "properties": {"port": {"type": "integer"}},
          "required": ["port"]}


def test_config_documents_with_generations_and_schemas(port: int) -> None:
    assert get(port, "/v1/config/app").status == 404
    reply = put(port, "/v1/schemas/app", SCHEMA)
    assert reply.status == 200
    assert reply.json()["schema"] == SCHEMA
    assert get(port, "/v1/schemas/app").json()["schema"] == SCHEMA

    first = put(port, "/v1/config/app", b'{ "port": 8080 }\n')
    assert first.status == 200, first
    assert first.headers["etag"] == '"1"'
    doc = first.json()
    assert (doc["document"], doc["generation"]) == ({"port": 8080}, 1)
    # stored verbatim (without the trailing newline), with its history entry
    kv = native_get(port, b"/config/app")
    assert kv is not None
    assert kv["value"] == b'{ "port": 8080 }'
    assert native_get(port, history_key("app", 1)) is not None
    assert get(port, "/v1/config/app").json() == doc

    before = state(port)
    invalid = put(port, "/v1/config/app", {"port": "x"})
    assert invalid.status == 422, invalid
    out = invalid.json()
    assert out["error"] == "validation_failed"
    assert out["violations"] == [{"key": "/config/app", "path": "/port",
                                  "message": "'x' is not of type 'integer'",
                                  "schema_path": "/properties/port/type"}]
    not_a_schema = put(port, "/v1/schemas/app", {"type": 5})
    assert not_a_schema.status == 422
    stricter = put(port, "/v1/schemas/app", {"type": "object", "required": ["host"]})
    assert stricter.status == 422  # the current document would not satisfy it
    assert state(port) == before
    assert get(port, "/v1/config/app").json()["generation"] == 1

    second = put(port, "/v1/config/app", {"port": 9090})
    assert second.json()["generation"] == 2
    assert second.headers["etag"] == '"2"'
    listing = get(port, "/v1/config").json()
    assert {"name": "app", "generation": 2, "revision": second.json()["revision"]} in \
        listing["configs"]


def test_if_match_guards_a_write_by_generation(port: int) -> None:
    assert put(port, "/v1/config/guarded", {"v": 1}, {"If-Match": "0"}).status == 200
    before = state(port)
    stale = put(port, "/v1/config/guarded", {"v": 2}, {"If-Match": '"0"'})
    assert stale.status == 412
    assert stale.json() | {"message": ""} == {"error": "generation_mismatch", "message": "",
                                              "expected": 0, "generation": 1}
    future = put(port, "/v1/config/guarded", {"v": 2}, {"If-Match": "2"})
    assert future.status == 412
    assert future.json()["generation"] == 1
    for bad in ("*", "x", '"1", "2"', 'W/"1"', "\u00b2", "9" * 5000):
        reply = put(port, "/v1/config/guarded", {"v": 2}, {"If-Match": bad})
        assert reply.status == 400, (bad, reply)
    assert state(port) == before
    ok = put(port, "/v1/config/guarded", {"v": 2}, {"If-Match": '"1"'})
    assert ok.status == 200
    assert ok.json()["generation"] == 2


def test_concurrent_guarded_writes_exactly_one_wins(port: int) -> None:
    """Eight writers read generation G and write with ``If-Match: G`` at once: one lands,
    seven are told 412 — the lost update that If-Match exists to prevent."""
    assert put(port, "/v1/config/race", {"n": 0}).status == 200
    generation = get(port, "/v1/config/race").json()["generation"]
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def writer(n: int) -> None:
        barrier.wait()
        statuses.append(put(port, "/v1/config/race", {"n": n},
                            {"If-Match": str(generation)}).status)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [200] + [412] * 7
    assert get(port, "/v1/config/race").json()["generation"] == generation + 1


def test_names_with_slashes_and_deleted_documents(port: int) -> None:
    assert put(port, "/v1/config/app/db", {"x": 1}).json()["name"] == "app/db"
    assert get(port, "/v1/config/app%2Fdb").json()["document"] == {"x": 1}
    with NativeClient(port) as c:
        c.call("delete_range", key=b"/config/app/db")
    gone = get(port, "/v1/config/app/db")
    assert gone.status == 404
    assert "generation 2 deleted it" in gone.json()["message"]
    assert "app/db" not in [c["name"] for c in get(port, "/v1/config").json()["configs"]]
    for path in ("/v1/config/a//b", "/v1/config/a/", "/v1/schemas/a//b"):
        reply = get(port, path)
        assert reply.status == 400, path
        assert reply.json()["error"] == "invalid_argument", path
    assert get(port, "/v1/schemas/nothing").status == 404


@pytest.mark.parametrize(("method", "path", "status", "allow"), [
    ("GET", "/v1/leases/00000000000000ff/keepalive", 405, None),
    ("POST", "/v1/services/api", 405, None),
    ("PUT", "/v1/leases/00000000000000ff/elsewhere", 404, None),
    ("DELETE", "/v1/leases/00000000000000ff/keepalive", 405, "PUT"),
    ("GET", "/v1/nothing", 404, None),
])
def test_unknown_paths_and_methods(port: int, method: str, path: str, status: int,
                                   allow: str | None) -> None:
    reply = request(port, method, path, b"{}")
    assert reply.status == status, reply
    if allow is not None:
        assert reply.headers["allow"] == allow
    assert json.loads(reply.body)["message"]


def test_a_follower_serves_the_api_too(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Writes go through Raft and reads are linearizable from any member, so a client may
    use whichever member it reaches."""
    from discoverd.testing.cluster import ProcessCluster

    with ProcessCluster(tmp_path_factory.mktemp("rest3"), 3).started() as cluster:
        leader = cluster.wait_for_leader()
        follower: MemberProcess = next(m for m in cluster.members if m is not leader)
        fport = follower.client_port
        reg = put(fport, "/v1/services/api", {"id": "f1", "ttl": 30})
        assert reg.status == 200, reg
        assert put(fport, reg.json()["keepalive"], None).status == 200
        for m in cluster.members:  # linearizable: visible everywhere at once
            assert [i["id"] for i in get(m.client_port, "/v1/services/api").json()[
                "instances"]] == ["f1"]
        status = get(fport, "/v1/status").json()
        assert status["member"]["role"] == "follower"
        assert status["leader"] == f"{leader.status()['header']['member_id']:x}"
        assert sum(m["is_leader"] for m in status["members"]) == 1
        assert len(status["members"]) == 3
