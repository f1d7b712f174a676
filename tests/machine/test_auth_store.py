"""The auth store and the op rules: pure, so every rule is checked directly."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import AuthManagementError, PermissionDenied
from discoverd.machine.applier import AuthChanged, KvMachine, encode_command
from discoverd.machine.auth import AuthStore, Permission, interval
from discoverd.machine.auth_rules import KNOWN_OPS, Level, judge, need


def store_with(*perms: tuple[str, bytes, bytes]) -> AuthStore:
    s = AuthStore()
    s.apply({"op": "user_add", "name": "root", "password_hash": b"h"})
    s.apply({"op": "user_add", "name": "alice", "password_hash": b"h"})
    s.apply({"op": "role_add", "name": "r"})
    for perm_type, key, end in perms:
        s.apply({"op": "role_grant_permission", "name": "r",
                 "perm": {"perm_type": perm_type, "key": key, "range_end": end}})
    s.apply({"op": "user_grant_role", "user": "alice", "role": "r"})
    s.apply({"op": "auth_enable", "secret": b"s" * 32})
    return s


def test_enabling_needs_root_and_grants_it_the_root_role() -> None:
    s = AuthStore()
    with pytest.raises(AuthManagementError) as e:
        s.apply({"op": "auth_enable", "secret": b"s" * 32})
    assert e.value.code == "root_user_not_exist"
    assert not s.enabled
    s.apply({"op": "user_add", "name": "root", "password_hash": b"h"})
    s.apply({"op": "auth_enable", "secret": b"s" * 32})
    assert s.enabled
    assert s.is_admin("root")
    assert s.user_roles("root") == ["root"]


def test_root_cannot_be_removed_while_enabled() -> None:
    s = store_with()
    for cmd in ({"op": "user_delete", "name": "root"},
                {"op": "role_delete", "role": "root"},
                {"op": "user_revoke_role", "name": "root", "role": "root"}):
        before = s.to_obj()
        with pytest.raises(AuthManagementError) as e:
            s.apply(cmd)
        assert e.value.code == "invalid_auth_mgmt"
        assert s.to_obj() == before  # refused: nothing changed, not even the revision
    s.apply({"op": "auth_disable"})
    s.apply({"op": "auth_disable"})  # already off: no error, as etcd
    assert not s.enabled
    s.apply({"op": "user_delete", "name": "root"})
    assert "root" not in s.users


@pytest.mark.parametrize(("cmd", "code"), [
    ({"op": "user_add", "name": "alice", "password_hash": b"x"}, "user_exists"),
    ({"op": "user_add", "name": "", "password_hash": b"x"}, "user_empty"),
    ({"op": "user_delete", "name": "bob"}, "user_not_found"),
    ({"op": "role_add", "name": "r"}, "role_exists"),
    ({"op": "role_add", "name": ""}, "role_empty"),
    ({"op": "user_grant_role", "user": "alice", "role": "nope"}, "role_not_found"),
    ({"op": "user_revoke_role", "name": "alice", "role": "root"}, "role_not_granted"),
    ({"op": "role_revoke_permission", "role": "r", "key": b"zz", "range_end": b""},
     "permission_not_granted"),
])
def test_refusals_name_their_reason_and_change_nothing(cmd: dict[str, object],
                                                       code: str) -> None:
    s = store_with(("READ", b"a", b""))
    before = s.to_obj()
    with pytest.raises(AuthManagementError) as e:
        s.apply(cmd)
    assert e.value.code == code
    assert s.to_obj() == before


def test_ranges_prefixes_and_from_key() -> None:
    s = store_with(("READ", b"/app/", b"/app0"), ("WRITE", b"/app/cfg", b""),
                   ("READWRITE", b"/z", b"\0"))
    assert s.permitted("alice", b"/app/x", b"", write=False)
    assert s.permitted("alice", b"/app/", b"/app0", write=False)  # the whole prefix
    assert not s.permitted("alice", b"/app/", b"/app1", write=False)  # a bit more
    assert not s.permitted("alice", b"/app/x", b"", write=True)
    assert s.permitted("alice", b"/app/cfg", b"", write=True)
    assert not s.permitted("alice", b"/app/cfg", b"/app/cfh", write=True)  # a range
    assert s.permitted("alice", b"/zzz", b"\0", write=True)  # from-key within from-key
    assert not s.permitted("alice", b"/y", b"\0", write=False)
    assert not s.permitted("nobody", b"/app/x", b"", write=False)
    assert s.permitted("root", b"\0", b"\0", write=True)


def test_permissions_of_several_roles_add_up() -> None:
    s = store_with(("READ", b"a", b"c"))
    s.apply({"op": "role_add", "name": "r2"})
    s.apply({"op": "role_grant_permission", "name": "r2",
             "perm": {"perm_type": "READ", "key": b"c", "range_end": b"e"}})
    assert not s.permitted("alice", b"a", b"e", write=False)
    s.apply({"op": "user_grant_role", "user": "alice", "role": "r2"})
    assert s.permitted("alice", b"a", b"e", write=False)  # [a,c) and [c,e) together
    s.apply({"op": "role_delete", "role": "r2"})
    assert not s.permitted("alice", b"b", b"d", write=False)
    assert s.user_roles("alice") == ["r"]


keys = st.sampled_from([b"a", b"ab", b"b", b"ba", b"c", b"\0a"])
ends = st.sampled_from([b"", b"\0", b"a", b"b", b"bb", b"c", b"d"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(keys, ends), max_size=4), keys, ends)
def test_range_coverage_matches_brute_force(granted: list[tuple[bytes, bytes]],
                                            key: bytes, end: bytes) -> None:
    """A range is permitted exactly when none of its keys is outside every granted range.
    The smallest uncovered key, if any, is the range's start or the end of a granted range,
    so checking those points is a complete brute force."""
    s = store_with(*[("READ", k, e) for k, e in granted])
    lo, hi = interval(key, end)
    spans = [interval(k, e) for k, e in granted]

    def inside(k: bytes, a: bytes, b: bytes | None) -> bool:
        return a <= k and (b is None or k < b)

    candidates = [lo, *(b for _, b in spans if b is not None)]
    uncovered = [k for k in candidates
                 if inside(k, lo, hi) and not any(inside(k, a, b) for a, b in spans)]
    assert s.permitted("alice", key, end, write=False) == (not uncovered)
    assert not s.permitted("alice", key, end, write=True)  # READ grants no write


def test_snapshot_round_trip_keeps_everything() -> None:
    s = store_with(("READWRITE", b"/a", b"/b"))
    copy = AuthStore()
    copy.restore(cbor2.loads(cbor2.dumps(s.to_obj())))
    assert copy.to_obj() == s.to_obj()
    assert copy.permitted("alice", b"/a1", b"", write=True)


def test_rules_cover_every_op_a_member_serves(tmp_path: Path) -> None:
    """An op nobody classified needs admin; the table names every op a member serves (a
    real member's op tables, built as ``discoverd serve`` builds them) on purpose."""
    import structlog

    from discoverd.server.config import MemberConfig
    from discoverd.server.member import Member

    member = Member(MemberConfig(data_dir=str(tmp_path / "m")), structlog.get_logger())
    try:
        served = set(member.api.ops) | set(member.api.streams)
    finally:
        member.storage.close()
        member._lock.close()
    assert {"put", "watch", "snapshot", "user_add", "authenticate"} <= served
    assert served <= KNOWN_OPS, served - KNOWN_OPS
    assert need("made_up_op", {}).level is Level.ADMIN


def test_a_txn_needs_every_branch() -> None:
    s = store_with(("READWRITE", b"/mine/", b"/mine0"))
    req = {"compare": [{"key": b"/mine/a", "target": "version", "result": "equal",
                        "version": 0}],
           "success": [{"request_put": {"key": b"/mine/a", "value": b"1"}}],
           "failure": [{"request_txn": {"success": [
               {"request_delete_range": {"key": b"/theirs"}}]}}]}
    with pytest.raises(PermissionDenied):
        judge(s, "alice", need("txn", req), lambda _: [])
    req["failure"] = []
    judge(s, "alice", need("txn", req), lambda _: [])
    req["compare"][0]["key"] = b"/theirs"  # a compare reads
    with pytest.raises(PermissionDenied):
        judge(s, "alice", need("txn", req), lambda _: [])


def test_lease_revoke_needs_write_on_its_keys() -> None:
    s = store_with(("READWRITE", b"/mine/", b"/mine0"))
    what = need("lease_revoke", {"lease": 7})
    judge(s, "alice", what, lambda lease: [b"/mine/a"])
    with pytest.raises(PermissionDenied):
        judge(s, "alice", what, lambda lease: [b"/mine/a", b"/theirs"])


def test_a_write_judged_at_an_old_auth_revision_is_refused_at_apply() -> None:
    m = KvMachine()
    index = iter(range(1, 100))

    def apply(op: str, **fields: object) -> object:
        return m.apply(Entry(term=1, index=next(index), kind=EntryKind.NORMAL,
                             data=encode_command(op, fields)))

    assert isinstance(apply("user_add", name="root", password_hash=b"h"), AuthChanged)
    judged_at = m.auth.revision
    apply("role_add", name="r")  # the auth state moves on
    stale = apply("put", key=b"k", value=b"v", _auth_rev=judged_at)
    assert getattr(stale, "code", None) == "auth_old_revision"
    assert m.store.revision == 1  # nothing was written
    fresh = apply("put", key=b"k", value=b"v", _auth_rev=m.auth.revision)
    assert not isinstance(fresh, Exception)
    assert m.store.revision == 2


def test_auth_state_survives_a_machine_snapshot() -> None:
    m = KvMachine()
    m.apply(Entry(term=1, index=1, kind=EntryKind.NORMAL,
                  data=encode_command("user_add", {"name": "root", "password_hash": b"h"})))
    m.apply(Entry(term=1, index=2, kind=EntryKind.NORMAL,
                  data=encode_command("auth_enable", {"secret": b"k" * 32})))
    other = KvMachine()
    other.restore(m.snapshot())
    assert other.auth.enabled
    assert other.auth.secret == b"k" * 32
    assert other.auth.is_admin("root")
    assert Permission.from_wire({"perm_type": 2, "key": b"a"}).perm_type == "READWRITE"
