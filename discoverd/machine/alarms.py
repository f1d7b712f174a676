"""Cluster alarms (etcd's ``alarm``): replicated state, changed only by committed ``alarm``
commands, so every member agrees on them — pure.

One kind today: ``NOSPACE``, raised by a member that refused a write because the store
would grow past its ``--quota-backend-bytes``. While it is active the state machine refuses
every write that adds data (puts, txns with puts, lease grants) on every member; deletes,
compaction, reads and lease revokes still work, so an operator can make room. It is lifted by
``alarm disarm``, or by the leader once the store is back under its quota.
"""

from __future__ import annotations

from typing import Any

from discoverd.errors import ClientError

NOSPACE = "NOSPACE"
KINDS = (NOSPACE,)


class Alarms:
    def __init__(self) -> None:
        self._active: set[tuple[int, str]] = set()

    def __contains__(self, kind: object) -> bool:
        return any(k == kind for _, k in self._active)

    def __bool__(self) -> bool:
        return bool(self._active)

    def active(self) -> list[tuple[int, str]]:
        """``(member_id, kind)`` pairs, sorted."""
        return sorted(self._active)

    def apply(self, cmd: dict[str, Any]) -> list[tuple[int, str]]:
        """An ``alarm`` command: ``{action: activate|deactivate, member_id, alarm}``;
        deactivate with member id 0 lifts the alarm for every member. Returns the pairs that
        changed."""
        action, member_id, kind = cmd.get("action"), cmd.get("member_id"), cmd.get("alarm")
        if action not in ("activate", "deactivate"):
            raise ClientError(f"unknown alarm action {action!r}")
        if type(member_id) is not int or member_id < 0:
            raise ClientError(f"alarm member_id must be an int >= 0, not {member_id!r}")
        if kind not in KINDS:
            raise ClientError(f"unknown alarm {kind!r} (known: {', '.join(KINDS)})")
        if action == "activate":
            if member_id == 0:
                raise ClientError("an alarm is raised by a member (member_id != 0)")
            pair = (member_id, str(kind))
            if pair in self._active:
                return []
            self._active.add(pair)
            return [pair]
        gone = [p for p in self._active if p[1] == kind and member_id in (0, p[0])]
        self._active.difference_update(gone)
        return sorted(gone)

    def to_obj(self) -> list[list[Any]]:
        return [[m, k] for m, k in self.active()]

    def restore(self, obj: Any) -> None:
        self._active = {(int(m), str(k)) for m, k in (obj or [])}
