"""Cluster membership from a client: listing, adding, removing, promoting and moving members,
and moving the leadership (docs/protocol.md "Membership").

A member id is the one ``discoverd serve`` derives from ``--name``, its peer URLs and the
cluster token, so ``member_add(name=..., peer_urls=...)`` answers with the id the new member
will have when it is started with those flags.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from discoverd.errors import ClientError
from discoverd.sdk._connection import parse_endpoint
from discoverd.sdk._types import ResponseHeader

if TYPE_CHECKING:
    from discoverd.sdk._client import AsyncClient


@dataclass(frozen=True, slots=True)
class Member:
    """One member. ``name`` is empty until the member has started and published it (etcdctl
    then lists it as ``unstarted``); ``client_urls`` likewise."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @property
    def started(self) -> bool:
        return bool(self.name)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Member:
        return cls(int(d.get("id", 0)), str(d.get("name", "")),
                   tuple(str(u) for u in d.get("peer_urls") or ()),
                   tuple(str(u) for u in d.get("client_urls") or ()),
                   bool(d.get("is_learner", False)))


@dataclass(frozen=True, slots=True)
class MemberList:
    """The members (by id) as the answering member knew them after the request."""

    header: ResponseHeader
    members: tuple[Member, ...]

    @classmethod
    def from_wire(cls, ok: Mapping[str, Any]) -> MemberList:
        return cls(ResponseHeader.from_wire(ok.get("header")),
                   tuple(Member.from_wire(m) for m in ok.get("members") or ()))


@dataclass(frozen=True, slots=True)
class MemberAdded:
    """``member_add``'s answer: the new member (not started yet) and the members after it."""

    header: ResponseHeader
    member: Member
    members: tuple[Member, ...]

    @classmethod
    def from_wire(cls, ok: Mapping[str, Any]) -> MemberAdded:
        return cls(ResponseHeader.from_wire(ok.get("header")), Member.from_wire(ok["member"]),
                   tuple(Member.from_wire(m) for m in ok.get("members") or ()))


def _urls(peer_urls: Sequence[str] | str) -> list[str]:
    urls = [u.strip() for u in (peer_urls.split(",") if isinstance(peer_urls, str)
                                else peer_urls) if u.strip()]
    if not urls:
        raise ClientError("member peer urls not provided")
    return urls


async def member_list(client: AsyncClient) -> MemberList:
    return MemberList.from_wire(await client.call("member_list", {}, retry_safe=True))


async def member_add(client: AsyncClient, peer_urls: Sequence[str] | str, *,
                     name: str = "default", is_learner: bool = False) -> MemberAdded:
    fields = {"peer_urls": _urls(peer_urls), "name": name, "is_learner": is_learner}
    return MemberAdded.from_wire(await client.call("member_add", fields))


async def member_remove(client: AsyncClient, member_id: int) -> MemberList:
    return MemberList.from_wire(await client.call("member_remove", {"member": member_id}))


async def member_promote(client: AsyncClient, member_id: int) -> MemberList:
    return MemberList.from_wire(await client.call("member_promote", {"member": member_id}))


async def member_update(client: AsyncClient, member_id: int,
                        peer_urls: Sequence[str] | str) -> MemberList:
    return MemberList.from_wire(await client.call(
        "member_update", {"member": member_id, "peer_urls": _urls(peer_urls)}))


async def move_leader(client: AsyncClient, target: int, *,
                      endpoint: str | None = None) -> ResponseHeader:
    """Only the leader moves its leadership; ``endpoint`` should be the leader's (a
    follower answers ``NotLeader`` naming the leader, which the client then follows)."""
    fields = {"target": target}
    if endpoint is not None:
        ok = await client._call_at(parse_endpoint(endpoint), "move_leader", fields)
    else:
        ok = await client.call("move_leader", fields)
    return ResponseHeader.from_wire(ok.get("header"))
