"""discoverd's client library (DESIGN §9): ``AsyncClient`` (anyio: trio or asyncio) and the
blocking ``Client``, speaking the native protocol (docs/protocol.md) with failover across
endpoints.

Layering: this package imports only ``discoverd.wire``, ``discoverd.errors`` and third-party
libraries, so applications get the client without the server's code paths.
"""

from __future__ import annotations

from discoverd.errors import (
    BadRequest,
    ClientError,
    Compacted,
    DiscoverdError,
    DuplicateKey,
    EmptyKey,
    FutureRevision,
    KeyNotFound,
    LeaseNotFound,
    LeaseProvided,
    NotLeader,
    ProposalDropped,
    RequestTimeout,
    RequestTooLarge,
    TooManyOps,
    Unavailable,
    ValueProvided,
)
from discoverd.sdk._client import DEFAULT_ENDPOINT, ENV_ENDPOINTS, AsyncClient
from discoverd.sdk._errors import ConnectionLost
from discoverd.sdk._types import (
    Compare,
    CompareBuilder,
    DeleteResponse,
    KeyValue,
    Op,
    PutResponse,
    RangeResponse,
    ResponseHeader,
    SortOrder,
    SortTarget,
    Status,
    TxnResponse,
    prefix_range_end,
)
from discoverd.sdk.sync import Client

__all__ = [
    "DEFAULT_ENDPOINT",
    "ENV_ENDPOINTS",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ClientError",
    "Compacted",
    "Compare",
    "CompareBuilder",
    "ConnectionLost",
    "DeleteResponse",
    "DiscoverdError",
    "DuplicateKey",
    "EmptyKey",
    "FutureRevision",
    "KeyNotFound",
    "KeyValue",
    "LeaseNotFound",
    "LeaseProvided",
    "NotLeader",
    "Op",
    "ProposalDropped",
    "PutResponse",
    "RangeResponse",
    "RequestTimeout",
    "RequestTooLarge",
    "ResponseHeader",
    "SortOrder",
    "SortTarget",
    "Status",
    "TooManyOps",
    "TxnResponse",
    "Unavailable",
    "ValueProvided",
    "prefix_range_end",
]
