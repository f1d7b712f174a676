"""discoverd adapter for the shared side-by-side harness's ``loadgen.py`` (issue 12).

The harness's load generator runs C closed-loop asyncio tasks per process against one
adapter instance (see ``loadgen.py`` in the harness). This adapter wraps one
``discoverd.sdk.AsyncClient`` — anyio on the asyncio backend — aimed at one member's client
address (the harness passes the leader's, as it does for etcd). The SDK keeps one
connection per client and multiplexes requests on it by frame id (``sdk/_connection.py``:
``Connection.request`` writes a frame under a send lock, then waits for its own answer,
which the one reader task routes by id), so the C tasks of one load process share one TCP
connection with many requests in flight — as aetcd's C tasks share one gRPC channel.

Operations, as the harness defines them:

* ``put``              -- ``AsyncClient.put`` (a durable, replicated write)
* ``get``              -- ``AsyncClient.get`` (linearizable: ReadIndex on the leader)
* ``sget``             -- ``AsyncClient.get(serializable=True)`` (the member's local copy)
* ``lease_grant``      -- ``AsyncClient.lease_grant`` (a replicated write)
* ``lease_keepalive``  -- ``AsyncClient.lease_keepalive_once``: one request/answer at a time
  per lease on the shared connection (the native protocol's keep-alive is a unary request;
  etcd's adapter keeps one LeaseKeepAlive stream per lease, also one request at a time).

The client is entered in ``create`` and left in ``close``; ``loadgen`` calls both from its
main task, which is what the SDK asks (it owns an anyio task group for the reader).
"""

from __future__ import annotations

from typing import Any

from discoverd.sdk import AsyncClient


class DiscoverdAdapter:
    def __init__(self, client: AsyncClient) -> None:
        self.c = client

    @classmethod
    async def create(cls, target: str) -> DiscoverdAdapter:
        # Same bound as the etcd adapter's client timeout (aetcd ``timeout=10``).
        client = AsyncClient(target, dial_timeout=5.0, command_timeout=10.0)
        await client.__aenter__()
        try:
            await client.status()  # dial now, not inside the first measured op
        except BaseException:
            await client.aclose()
            raise
        return cls(client)

    async def put(self, key: bytes, value: bytes) -> None:
        await self.c.put(key, value)

    async def get(self, key: bytes) -> Any:
        resp = await self.c.get(key)
        return resp.kvs[0].value if resp.kvs else None

    async def sget(self, key: bytes) -> Any:
        resp = await self.c.get(key, serializable=True)
        return resp.kvs[0].value if resp.kvs else None

    async def lease_grant(self, ttl: int) -> int:
        return (await self.c.lease_grant(ttl)).id

    async def lease_keepalive(self, lease_id: int) -> None:
        resp = await self.c.lease_keepalive_once(lease_id)
        if resp.ttl <= 0:
            raise RuntimeError("lease expired")

    async def close(self) -> None:
        await self.c.aclose()
