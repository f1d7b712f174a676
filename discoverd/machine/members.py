"""The member table: who belongs to the cluster — id → name, peer URLs, client URLs, voter
or learner — as replicated state.

It is kept by the state machine, in log order, on every member alike, so it travels in
snapshots and survives restarts: a member that joins by snapshot, or restarts long after its
``--initial-cluster`` went stale, learns the current membership like any other state. Raft's
own ``ConfState`` says who votes; this table says where they are and what they are called,
and always names the same ids (``reconcile`` repairs the one case where it cannot by
construction, below).

What changes it (all through the log):

* membership entries (``CONF_CHANGE``): add a voter or a learner, promote, remove. An add
  carries the new member's peer URLs in the change's context (``encode_context``). The
  founding members' entries carry none — Raft writes them before anything else exists —
  so their names and peer URLs come from ``--initial-cluster``: the *seed*. Ids are derived
  from name, peer URLs and token, so an id found in the seed names that very member.
* ``member_update``: new peer URLs for a member (its id does not change; etcd's
  ``MemberUpdate``).
* ``member_attributes``: the member itself publishes its name and client URLs once it runs
  (etcd's attribute update). Until then a member added at run time has no name — etcdctl
  lists it as ``unstarted`` — and no client URLs.

A snapshot image without a table (``KvMachine`` format 2, older versions) is filled in from
the seed; an image from another cluster (``snapshot restore`` seeds a new cluster from a
backup) names ids that are not in the restored ``ConfState``. Both are mended by
``reconcile(conf_state)``, which the runtime calls after every restore
(``needs_reconcile``): the ids become exactly Raft's, missing ones taken from the seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import cbor2

from discoverd.consensus.messages import ConfChange, ConfChangeKind, ConfState
from discoverd.errors import ClientError, CorruptData, MemberNotFound, PeerURLExists

TABLE_FORMAT = 1

Seed = Mapping[int, tuple[str, Sequence[str]]]
"""Member id → (name, peer URLs), as ``MemberConfig.members()`` gives it."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """One member as the cluster knows it (``name`` is empty until it has started)."""

    id: int
    name: str = ""
    peer_urls: tuple[str, ...] = ()
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False

    def to_wire(self) -> dict[str, Any]:
        """The protocol's member map (docs/protocol.md "Membership")."""
        return {"id": self.id, "name": self.name, "peer_urls": list(self.peer_urls),
                "client_urls": list(self.client_urls), "is_learner": self.is_learner}


@dataclass(frozen=True, slots=True)
class MemberChange:
    """What one applied entry did to the table, for the runtime's log line."""

    what: str  # "added", "promoted", "removed", "updated", "published"
    member: MemberInfo
    index: int
    term: int


def encode_context(peer_urls: Sequence[str]) -> bytes:
    """The context of an add: the new member's peer URLs (its name comes when it starts)."""
    return cbor2.dumps({"peer_urls": list(peer_urls)})


def decode_context(data: bytes) -> tuple[str, ...] | None:
    """The peer URLs an add carries, or None when it carries none (a founding member's
    entry, a promotion). A context that is not ours is treated as none, identically on
    every member, rather than stopping the apply loop on bytes a peer wrote."""
    if not data:
        return None
    try:
        obj = cbor2.loads(data)
    except (ValueError, TypeError, EOFError, cbor2.CBORDecodeError):
        return None
    urls = obj.get("peer_urls") if isinstance(obj, dict) else None
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        return None
    return tuple(urls)


def _str_tuple(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ClientError(f"field {field!r} must be a list of strings")
    return tuple(value)


class MemberTable:
    """The members by id (see the module docstring). Deterministic: the same entries in the
    same order give the same table on every member."""

    def __init__(self, seed: Seed | None = None) -> None:
        self.seed: dict[int, tuple[str, tuple[str, ...]]] = {
            mid: (name, tuple(urls)) for mid, (name, urls) in (seed or {}).items()
        }
        self._members: dict[int, MemberInfo] = {}
        self.version = 0
        """Bumped by every change, so the runtime can tell when to follow it (peer links)."""
        self.changes: list[MemberChange] = []
        """Changes since the runtime last emptied this list (it logs them)."""
        self.needs_reconcile = False
        """Set by ``restore``: call ``reconcile`` with the restored ``ConfState``."""

    def __repr__(self) -> str:
        learners = sum(1 for m in self._members.values() if m.is_learner)
        return (f"<MemberTable members={len(self._members)} learners={learners} "
                f"version={self.version}>")

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._members

    def get(self, member_id: int) -> MemberInfo | None:
        return self._members.get(member_id)

    def members(self) -> list[MemberInfo]:
        """Every member, by id (etcd's order)."""
        return [self._members[mid] for mid in sorted(self._members)]

    def learners(self) -> list[int]:
        return sorted(mid for mid, m in self._members.items() if m.is_learner)

    def owner_of(self, peer_urls: Iterable[str], *, besides: int = 0) -> int:
        """The id of a member (other than ``besides``) using one of ``peer_urls``, or 0."""
        wanted = set(peer_urls)
        for mid in sorted(self._members):
            if mid != besides and wanted & set(self._members[mid].peer_urls):
                return mid
        return 0

    # ------------------------------------------------------------------ changes

    def _set(self, info: MemberInfo, what: str, index: int, term: int) -> None:
        self._members[info.id] = info
        self.version += 1
        self.changes.append(MemberChange(what, info, index, term))

    def _from_seed(self, member_id: int, *, is_learner: bool) -> MemberInfo:
        name, urls = self.seed.get(member_id, ("", ()))
        return MemberInfo(member_id, name, urls, (), is_learner)

    def apply_conf_change(self, cc: ConfChange, *, index: int = 0, term: int = 0) -> None:
        """Follow a committed membership change exactly as ``confchange.apply`` changes the
        ``ConfState`` (a repeated add is a no-op; the last voter is never removed).
        ``cc.context`` is the proposer's context (``encode_context``), not the envelope
        around it."""
        mid = cc.node_id
        current = self._members.get(mid)
        if cc.kind is ConfChangeKind.REMOVE_NODE:
            if current is None:
                return
            voters = [m for m in self._members.values() if not m.is_learner]
            if not current.is_learner and len(voters) == 1:
                return  # refused at proposal; kept harmless as Raft keeps it
            del self._members[mid]
            self.version += 1
            self.changes.append(MemberChange("removed", current, index, term))
            return
        learner = cc.kind is ConfChangeKind.ADD_LEARNER
        if current is not None:
            if current.is_learner and not learner:
                self._set(replace(current, is_learner=False), "promoted", index, term)
            return
        urls = decode_context(cc.context)
        info = (self._from_seed(mid, is_learner=learner) if urls is None
                else MemberInfo(mid, "", urls, (), learner))
        self._set(info, "added", index, term)

    def update(self, member_id: int, peer_urls: Sequence[str], *, index: int = 0,
               term: int = 0) -> MemberInfo:
        """New peer URLs for a member (``member_update``).

        Raises:
            MemberNotFound: no such member (it may have been removed meanwhile).
            PeerURLExists: another member uses one of the URLs.
            ClientError: no URLs.
        """
        urls = _str_tuple(list(peer_urls), "peer_urls")
        if not urls:
            raise ClientError("member peer urls not provided")
        current = self._members.get(member_id)
        if current is None:
            raise MemberNotFound()
        if self.owner_of(urls, besides=member_id):
            raise PeerURLExists()
        info = replace(current, peer_urls=urls)
        self._set(info, "updated", index, term)
        return info

    def publish(self, member_id: int, name: str, client_urls: Sequence[str], *,
                index: int = 0, term: int = 0) -> bool:
        """A member's own name and client URLs (``member_attributes``); False when it is not
        a member (any more): a late publish of a removed member changes nothing."""
        current = self._members.get(member_id)
        if current is None:
            return False
        info = replace(current, name=name, client_urls=tuple(client_urls))
        if info != current:
            self._set(info, "published", index, term)
        return True

    def reconcile(self, conf_state: ConfState) -> bool:
        """Make the ids exactly Raft's after a restore (see the module docstring): keep what
        the table knows of each, take the rest from the seed, drop ids Raft does not have.
        Returns whether anything changed."""
        self.needs_reconcile = False
        wanted = {mid: False for mid in conf_state.voters}
        wanted.update({mid: True for mid in conf_state.learners})
        fixed: dict[int, MemberInfo] = {}
        for mid, learner in sorted(wanted.items()):
            current = self._members.get(mid)
            fixed[mid] = (self._from_seed(mid, is_learner=learner) if current is None
                          else replace(current, is_learner=learner))
        if fixed == self._members:
            return False
        self._members = fixed
        self.version += 1
        return True

    # ------------------------------------------------------------------ snapshots

    def to_obj(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "members": [
            [m.id, m.name, list(m.peer_urls), list(m.client_urls), m.is_learner]
            for m in self.members()
        ]}

    def restore(self, obj: Any) -> None:
        """Load ``to_obj``'s output; ``None`` (an image that predates the table) starts from
        the seed. Either way ``needs_reconcile`` is set.

        Raises:
            CorruptData: ``obj`` is not a member table.
        """
        members: dict[int, MemberInfo] = {}
        if obj is None:
            for mid in sorted(self.seed):
                members[mid] = self._from_seed(mid, is_learner=False)
        else:
            try:
                if obj["format"] != TABLE_FORMAT:
                    raise CorruptData(f"member table format {obj['format']!r} is not "
                                      f"{TABLE_FORMAT}")
                for mid, name, peers, clients, learner in obj["members"]:
                    if type(mid) is not int or not isinstance(name, str) \
                            or type(learner) is not bool:
                        raise CorruptData(f"bad member entry for {mid!r}")
                    members[mid] = MemberInfo(mid, name, _str_tuple(peers, "peer_urls"),
                                              _str_tuple(clients, "client_urls"), learner)
            except (KeyError, TypeError, ValueError, ClientError) as e:
                raise CorruptData(f"snapshot member table is malformed: {e}") from e
        self._members = members
        self.version += 1
        self.needs_reconcile = True
