"""NOSPACE as replicated state (``machine/alarms.py``) and what the state machine refuses
while it is active."""

from __future__ import annotations

import pytest
from test_kv_machine import Log

from discoverd.errors import ClientError, NoSpace
from discoverd.machine.alarms import Alarms
from discoverd.machine.applier import AlarmsChanged, KvMachine


def test_activate_list_and_deactivate() -> None:
    a = Alarms()
    assert a.apply({"action": "activate", "member_id": 7, "alarm": "NOSPACE"}) == [(7, "NOSPACE")]
    assert a.apply({"action": "activate", "member_id": 7, "alarm": "NOSPACE"}) == []
    a.apply({"action": "activate", "member_id": 3, "alarm": "NOSPACE"})
    assert a.active() == [(3, "NOSPACE"), (7, "NOSPACE")]
    assert a.apply({"action": "deactivate", "member_id": 3, "alarm": "NOSPACE"}) == [
        (3, "NOSPACE")]
    assert "NOSPACE" in a
    assert a.apply({"action": "deactivate", "member_id": 0, "alarm": "NOSPACE"}) == [
        (7, "NOSPACE")]
    assert not a
    for bad in ({"action": "explode", "member_id": 1, "alarm": "NOSPACE"},
                {"action": "activate", "member_id": 0, "alarm": "NOSPACE"},
                {"action": "activate", "member_id": -1, "alarm": "NOSPACE"},
                {"action": "activate", "member_id": 1, "alarm": "CORRUPT"}):
        with pytest.raises(ClientError):
            a.apply(bad)


def test_nospace_refuses_data_not_deletes_reads_or_compaction() -> None:
    log = Log(KvMachine())
    m = log.machine
    log.apply("put", key=b"a", value=b"1")
    changed = log.apply("alarm", action="activate", member_id=9, alarm="NOSPACE")
    assert isinstance(changed, AlarmsChanged)
    assert changed.active == [(9, "NOSPACE")]
    revision = m.store.revision
    assert isinstance(log.apply("put", key=b"b", value=b"2"), NoSpace)
    nested_put = {"request_txn": {"success": [{"request_put": {"key": b"c", "value": b"3"}}]}}
    assert isinstance(log.apply("txn", compare=[], success=[nested_put], failure=[]), NoSpace)
    assert isinstance(log.apply("lease_grant", id=5, ttl=60), NoSpace)
    assert m.store.revision == revision  # nothing was written
    delete = {"request_delete_range": {"key": b"a"}}
    assert not isinstance(log.apply("txn", compare=[], success=[delete], failure=[]), NoSpace)
    assert not isinstance(log.apply("compact", revision=m.store.revision), NoSpace)
    # It survives a snapshot, and lifting it lets writes in again.
    again = Log(KvMachine())
    again.machine.restore(m.snapshot())
    assert again.machine.alarms.active() == [(9, "NOSPACE")]
    again.apply("alarm", action="deactivate", member_id=0, alarm="NOSPACE")
    assert not isinstance(again.apply("put", key=b"b", value=b"2"), NoSpace)
