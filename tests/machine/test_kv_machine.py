"""The replicated machine with leases: commands applied from log entries, their effects on
the store, the lessor and the watch hub, and snapshots carrying the leases."""

from __future__ import annotations

import cbor2

from discoverd.consensus.messages import Entry, EntryKind
from discoverd.errors import ClientError, LeaseExists, LeaseNotFound
from discoverd.kv.requests import RangeRequest
from discoverd.kv.watch import WatchRequest
from discoverd.machine.applier import KvMachine, LeaseGranted, LeasesExpired, encode_command


class Log:
    def __init__(self, machine: KvMachine) -> None:
        self.machine = machine
        self.index = 0

    def apply(self, op: str, **fields: object) -> object:
        self.index += 1
        return self.machine.apply(Entry(1, self.index, EntryKind.NORMAL,
                                        encode_command(op, dict(fields))))


def keys(m: KvMachine) -> list[bytes]:
    return [kv.key for kv in m.store.range(RangeRequest(key=b"\0", range_end=b"\0")).kvs]


def test_revoke_deletes_every_attached_key_in_one_revision_seen_by_watchers() -> None:
    m = KvMachine(min_ttl=1)
    log = Log(m)
    granted = log.apply("lease_grant", lease=10, ttl=5)
    assert granted == LeaseGranted(1, 10, 5)
    for k in (b"/a", b"/b", b"/c"):
        log.apply("put", key=k, value=b"v", lease=10)
    log.apply("put", key=b"/free", value=b"v")
    log.apply("put", key=b"/c", value=b"w")  # re-put without the lease: detached
    wid = m.hub.add(WatchRequest(key=b"/", range_end=b"0"))
    m.woken.clear()
    rev = m.store.revision
    log.apply("lease_revoke", lease=10)
    assert m.store.revision == rev + 1
    assert keys(m) == [b"/c", b"/free"]
    assert wid in m.woken
    batches = m.hub.take(wid)
    deleted = [e.kv.key for b in batches for e in b.events]
    assert deleted == [b"/a", b"/b"]
    assert {e.kv.mod_revision for b in batches for e in b.events} == {rev + 1}
    assert isinstance(log.apply("lease_revoke", lease=10), LeaseNotFound)


def test_a_put_or_txn_with_an_unknown_lease_changes_nothing() -> None:
    m = KvMachine()
    log = Log(m)
    rev = m.store.revision
    assert isinstance(log.apply("put", key=b"k", value=b"v", lease=99), LeaseNotFound)
    txn = {"compare": [], "success": [{"request_put": {"key": b"k", "value": b"v",
                                                       "lease": 99}}]}
    assert isinstance(log.apply("txn", **txn), LeaseNotFound)
    assert m.store.revision == rev
    assert keys(m) == []


def test_expire_revokes_many_leases_one_revision_each_skipping_gone_ones() -> None:
    m = KvMachine(min_ttl=1)
    log = Log(m)
    for i in range(1, 6):
        log.apply("lease_grant", lease=i, ttl=3)
        log.apply("put", key=b"k%d" % i, value=b"v", lease=i)
    log.apply("lease_revoke", lease=2)
    rev = m.store.revision
    result = log.apply("lease_expire", ids=[1, 2, 3, 4, 77])
    assert result == LeasesExpired(rev + 3, 3)
    assert keys(m) == [b"k5"]
    assert m.lessor.leases() == [5]


def test_grant_errors_and_malformed_commands_are_results_not_crashes() -> None:
    m = KvMachine()
    log = Log(m)
    log.apply("lease_grant", lease=1, ttl=5)
    assert isinstance(log.apply("lease_grant", lease=1, ttl=5), LeaseExists)
    assert isinstance(log.apply("lease_grant", lease=2, ttl="x"), ClientError)
    assert isinstance(log.apply("lease_expire", ids="nope"), ClientError)
    assert isinstance(log.apply("lease_checkpoint", leases=[[1]]), ClientError)
    assert isinstance(log.apply("no_such_op"), ClientError)
    bad = m.apply(Entry(1, 99, EntryKind.NORMAL, b"\xff\x00garbage"))
    assert isinstance(bad, ClientError)
    assert m.applied == 99


def test_snapshot_carries_leases_checkpoints_and_attachments() -> None:
    m = KvMachine(min_ttl=1)
    log = Log(m)
    log.apply("lease_grant", lease=7, ttl=30)
    log.apply("put", key=b"x", value=b"1", lease=7)
    log.apply("lease_checkpoint", leases=[[7, 12_000]])
    image = m.snapshot()
    other = KvMachine(min_ttl=1)
    wid = other.hub.add(WatchRequest(key=b"x"))
    other.restore(image)
    assert other.applied == m.applied
    assert other.lessor.leases() == [7]
    assert other.lessor.remaining(7, 0.0) == 12.0
    Log(other).index = m.applied
    other.apply(Entry(1, m.applied + 1, EntryKind.NORMAL, encode_command("lease_revoke",
                                                                           {"lease": 7})))
    assert keys(other) == []
    # the watcher registered before the restore still sees the revoke (from history)
    events = [e for b in other.hub.take(wid) for e in b.events]
    assert [e.kv.key for e in events][-1:] == [b"x"]
    # an image from before leases existed (format 1) restores with no leases
    old = cbor2.dumps({"applied": 3, "store": m.store.to_obj()})
    third = KvMachine()
    third.restore(old)
    assert third.lessor.leases() == []
    assert keys(third) == [b"x"]
