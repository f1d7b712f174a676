"""The member table as replicated state: built from membership entries (contexts, the seed
for the founders), member_update/member_attributes commands, snapshots (format 3, and
format 2 images without a table), and reconciliation with a restored ConfState."""

from __future__ import annotations

import random

import cbor2
import pytest

from discoverd.consensus.messages import ConfChange, ConfChangeKind, ConfState, Entry, EntryKind
from discoverd.consensus.raft import Config
from discoverd.consensus.storage import MemoryStorage
from discoverd.errors import ClientError, CorruptData, MemberNotFound, PeerURLExists
from discoverd.machine.applier import SNAPSHOT_FORMAT, KvMachine, encode_command
from discoverd.machine.members import (
    MemberInfo,
    MemberTable,
    decode_context,
    encode_context,
)
from discoverd.member.core import MemberCore

A, B, C, D = 11, 22, 33, 44
SEED = {A: ("a", ["http://h:1"]), B: ("b", ["http://h:2"]), C: ("c", ["http://h:3"])}


def cc(kind: ConfChangeKind, node: int, context: bytes = b"") -> ConfChange:
    return ConfChange(kind, node, context)


def founded(table: MemberTable) -> MemberTable:
    for n in (A, B, C):
        table.apply_conf_change(cc(ConfChangeKind.ADD_VOTER, n))
    return table


# ----------------------------------------------------------------------------- codec


def test_context_round_trips_peer_urls() -> None:
    data = encode_context(["http://x:1", "http://y:2"])
    assert decode_context(data) == ("http://x:1", "http://y:2")


@pytest.mark.parametrize("data", [b"", b"\xff\x00garbage", cbor2.dumps([1, 2]),
                                  cbor2.dumps({"peer_urls": "http://x:1"}),
                                  cbor2.dumps({"peer_urls": [1]})])
def test_a_context_that_is_not_ours_carries_no_urls(data: bytes) -> None:
    assert decode_context(data) is None


# ----------------------------------------------------------------------------- changes


def test_founders_come_from_the_seed_and_a_runtime_add_from_its_context() -> None:
    t = founded(MemberTable(SEED))
    t.apply_conf_change(cc(ConfChangeKind.ADD_LEARNER, D, encode_context(["http://h:4"])),
                        index=9, term=2)
    assert t.members() == [
        MemberInfo(A, "a", ("http://h:1",)), MemberInfo(B, "b", ("http://h:2",)),
        MemberInfo(C, "c", ("http://h:3",)),
        MemberInfo(D, "", ("http://h:4",), (), is_learner=True),  # unstarted: no name yet
    ]
    assert [(c.what, c.member.id, c.index, c.term) for c in t.changes][-1] == ("added", D, 9, 2)


def test_promote_remove_and_repeated_adds_follow_confchange_apply() -> None:
    t = founded(MemberTable(SEED))
    t.apply_conf_change(cc(ConfChangeKind.ADD_LEARNER, D, encode_context(["http://h:4"])))
    version = t.version
    t.apply_conf_change(cc(ConfChangeKind.ADD_LEARNER, D, encode_context(["http://h:9"])))
    t.apply_conf_change(cc(ConfChangeKind.ADD_LEARNER, A))  # a voter stays a voter
    assert t.version == version
    t.apply_conf_change(cc(ConfChangeKind.ADD_VOTER, D))
    assert t.get(D) == MemberInfo(D, "", ("http://h:4",), (), is_learner=False)
    assert t.changes[-1].what == "promoted"
    t.apply_conf_change(cc(ConfChangeKind.REMOVE_NODE, B))
    t.apply_conf_change(cc(ConfChangeKind.REMOVE_NODE, B))  # gone already: no-op
    assert [m.id for m in t.members()] == [A, C, D]


def test_the_last_voter_is_never_removed_as_raft_keeps_it() -> None:
    t = MemberTable(SEED)
    t.apply_conf_change(cc(ConfChangeKind.ADD_VOTER, A))
    t.apply_conf_change(cc(ConfChangeKind.ADD_LEARNER, D, encode_context(["http://h:4"])))
    t.apply_conf_change(cc(ConfChangeKind.REMOVE_NODE, A))
    assert A in t
    t.apply_conf_change(cc(ConfChangeKind.REMOVE_NODE, D))
    assert D not in t


def test_update_changes_peer_urls_and_refuses_unknown_members_and_taken_urls() -> None:
    t = founded(MemberTable(SEED))
    assert t.update(B, ["http://h:20"]).peer_urls == ("http://h:20",)
    with pytest.raises(MemberNotFound):
        t.update(D, ["http://h:4"])
    with pytest.raises(PeerURLExists):
        t.update(B, ["http://h:1"])
    with pytest.raises(ClientError):
        t.update(B, [])
    assert t.owner_of(["http://h:20"]) == B
    assert t.owner_of(["http://h:20"], besides=B) == 0


def test_publish_sets_name_and_client_urls_of_members_only() -> None:
    t = MemberTable()
    t.apply_conf_change(cc(ConfChangeKind.ADD_VOTER, D, encode_context(["http://h:4"])))
    assert t.publish(D, "d", ["http://c:4"])
    assert t.get(D) == MemberInfo(D, "d", ("http://h:4",), ("http://c:4",))
    version = t.version
    assert t.publish(D, "d", ["http://c:4"])  # the same again: no change recorded
    assert t.version == version
    assert not t.publish(A, "a", [])  # not a member (removed, or never was)
    assert A not in t


# ----------------------------------------------------------------------------- snapshots


def test_table_round_trips_and_rejects_garbage() -> None:
    t = founded(MemberTable(SEED))
    t.publish(A, "a", ["http://c:1"])
    other = MemberTable()
    other.restore(t.to_obj())
    assert other.members() == t.members()
    assert other.needs_reconcile
    bad_images: list[object] = [{"format": 9, "members": []}, {"format": 1, "members": [["x"]]},
                                {"format": 1, "members": [[1, "n", "not-a-list", [], False]]},
                                []]
    for bad in bad_images:
        with pytest.raises(CorruptData):
            MemberTable().restore(bad)


def test_reconcile_makes_the_ids_raft_s_taking_missing_ones_from_the_seed() -> None:
    # A backup from another cluster restored under a new --initial-cluster: the image's
    # table names other ids than the restored ConfState.
    t = MemberTable(SEED)
    t.restore({"format": 1, "members": [[D, "old", ["http://old:1"], [], False]]})
    assert t.reconcile(ConfState(voters=(A, B), learners=(C,)))
    assert t.members() == [MemberInfo(A, "a", ("http://h:1",)), MemberInfo(B, "b", ("http://h:2",)),
                           MemberInfo(C, "c", ("http://h:3",), (), is_learner=True)]
    assert not t.needs_reconcile
    assert not t.reconcile(ConfState(voters=(A, B), learners=(C,)))  # consistent: no change


def test_kv_machine_snapshot_has_members_and_reads_format_2() -> None:
    m = KvMachine(members_seed=SEED)
    for i, n in enumerate((A, B, C), 1):
        m.apply(Entry(1, i, EntryKind.CONF_CHANGE, cc(ConfChangeKind.ADD_VOTER, n).encode()))
    m.apply(Entry(2, 4, EntryKind.NORMAL, encode_command(
        "member_attributes", {"member": B, "name": "b", "client_urls": ["http://c:2"]})))
    assert m.apply(Entry(2, 5, EntryKind.NORMAL, encode_command(
        "member_update", {"member": C, "peer_urls": ["http://h:30"]}))) == MemberInfo(
        C, "c", ("http://h:30",))
    assert isinstance(m.apply(Entry(2, 6, EntryKind.NORMAL, encode_command(
        "member_update", {"member": D, "peer_urls": ["http://h:4"]}))), MemberNotFound)
    image = cbor2.loads(m.snapshot())
    assert image["format"] == SNAPSHOT_FORMAT == 4  # 4: with the auth store
    restored = KvMachine()
    restored.restore(m.snapshot())
    assert restored.members.members() == m.members.members()

    # A format-2 image (written before the table existed): the table comes from the seed.
    del image["members"]
    del image["auth"]
    image["format"] = 2
    old = KvMachine(members_seed={A: ("a", ["http://h:1"]), D: ("d", ["http://h:4"])})
    old.restore(cbor2.dumps(image))
    assert old.members.needs_reconcile
    old.members.reconcile(ConfState(voters=(A, D)))
    assert [(x.id, x.name) for x in old.members.members()] == [(A, "a"), (D, "d")]


def test_the_machine_sees_a_membership_entry_with_the_proposers_context() -> None:
    """MemberCore wraps a proposal's context with (origin, request id); the machine must get
    the proposer's own bytes back, as it gets a normal entry's payload."""
    machine = KvMachine(members_seed={1: ("one", ["http://h:1"])})
    core = MemberCore(Config(id=1, voters=(1,)), MemoryStorage(), machine, random.Random(1))

    def drain() -> None:
        while core.has_ready():
            rd = core.begin()
            core.persist(rd)
            core.complete(rd)

    drain()
    core.node.campaign()
    drain()
    core.propose_conf_change(5, cc(ConfChangeKind.ADD_LEARNER, 2,
                                   encode_context(["http://h:2"])))
    drain()
    assert machine.members.members() == [
        MemberInfo(1, "one", ("http://h:1",)),
        MemberInfo(2, "", ("http://h:2",), (), is_learner=True)]
