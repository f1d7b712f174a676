"""Requests, responses, routes, and the context a handler gets (``GatewayContext``).

Handlers never see sockets or h11: they get a whole request (body already read, bounded by
the server) and return a whole response or a ``StreamingResponse`` whose chunks the server
sends one HTTP chunk each, flushed at once. Every API on the client port (the etcd gateway,
the registry REST API, the status page) is a set of handlers added to one ``Router``.

Handlers reach the member only through ``GatewayContext``, which runs the member's *native*
op handlers — the same table the DSC1 protocol dispatches to — so validation, limits and
errors are the same whichever protocol a client speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import cbor2
import trio

from discoverd.errors import ClientError, DiscoverdError, RequestTooLarge, Unavailable
from discoverd.server.api_server import ClientApi, Connection, Emit


@dataclass
class HttpRequest:
    method: str
    """Upper case, as sent (``HEAD`` is routed to the ``GET`` handler)."""
    path: str
    """Percent-decoded path, without the query string."""
    query: dict[str, list[str]]
    headers: dict[str, str]
    """Lower-case names; repeated headers joined with ``", "``."""
    body: bytes
    conn: Connection
    """Per-connection state, shared with nothing else (the native protocol's ``Connection``)."""


@dataclass
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamingResponse:
    status: int
    headers: list[tuple[str, str]]
    chunks: Callable[[], AsyncIterator[bytes]]
    """Called once; each item is sent as one HTTP chunk and flushed at once (etcd3gw parses
    one JSON object per chunk). The response ends when the iterator does."""


MetricsSource = Callable[[], "tuple[bytes, str] | None"]


def token_from_header(authorization: str | None) -> str | None:
    """The auth token of an ``Authorization`` header: raw, as etcd's gateway takes it
    (``Authorization: <token>``), or ``Bearer <token>`` as most HTTP clients send one."""
    if authorization is None:
        return None
    value = authorization.strip()
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        value = rest.strip()
    return value or None


class GatewayContext:
    """What a handler may do with the member, for one request on one connection.

    ``call`` and ``stream`` run the native op handlers (``ClientApi.ops`` / ``.streams``)
    exactly as the native path does, request-size limit included; ``start_soon`` runs a
    task that lives as long as the response (the server cancels it when the response
    ends or the client goes away).
    """

    def __init__(
        self,
        api: ClientApi,
        conn: Connection,
        *,
        nursery: trio.Nursery,
        metrics: MetricsSource | None = None,
        authorization: str | None = None,
    ) -> None:
        self.api = api
        self.conn = conn
        self.token = token_from_header(authorization)
        """From the request's ``Authorization`` header; every op and stream run for this
        request carries it as the native ``token`` field (and only it: a ``token`` in a
        JSON body is dropped, so the header is the one way to authenticate over HTTP)."""
        self._nursery = nursery
        self._metrics = metrics

    def _authorize(self, req: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in req.items() if k != "token"}
        if self.token is not None:
            out["token"] = self.token
        return out

    def _check_size(self, op: str, req: dict[str, Any]) -> None:
        """The native limit is on the frame: measure the frame this request would be."""
        size = len(cbor2.dumps({"id": 0, "op": op, **req}))
        if size > self.api.max_request_bytes:
            raise RequestTooLarge(
                f"request of {size} bytes exceeds the limit of "
                f"{self.api.max_request_bytes} bytes")

    async def call(self, op: str, req: dict[str, Any]) -> dict[str, Any]:
        """Run the unary op ``op`` (with the member's request timeout); raises the
        ``DiscoverdError`` the native path would answer with."""
        started = trio.current_time()
        code = "canceled"
        try:
            req = self._authorize(req)
            self._check_size(op, req)
            result = await self.api.call(op, req, self.conn)
            code = "ok"
            return result
        except DiscoverdError as e:
            code = e.code
            raise
        finally:
            # Counted as the native path counts (``discoverd_client_requests_total``).
            if self.api.on_request is not None:
                self.api.on_request(op if op in self.api.ops else "unknown", code,
                                    trio.current_time() - started)

    def stream(self, op: str, req: dict[str, Any], emit: Emit) -> Awaitable[None]:
        """Run the stream op ``op`` (a watch): ``emit`` gets each native frame's ``ok``
        map; returns when the stream ends, raises as the native stream would."""
        handler = self.api.streams.get(op)
        if handler is None:
            raise ClientError(f"unknown stream op {op!r}")
        req = self._authorize(req)
        self._check_size(op, req)
        return self.api.open_stream(op, req, self.conn, emit)  # judged as the native path

    def metrics_text(self) -> tuple[bytes, str]:
        """The member's metrics in Prometheus text format: (body, content type)."""
        rendered = self._metrics() if self._metrics is not None else None
        if rendered is None:
            raise Unavailable("metrics are not available on this member")
        return rendered

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        self._nursery.start_soon(fn, *args)


Handler = Callable[[HttpRequest, GatewayContext], Awaitable[HttpResponse | StreamingResponse]]


@dataclass(frozen=True)
class Route:
    handler: Handler | None
    """None: the path exists but not for this method (``allowed`` says which), or not at
    all (``allowed`` empty)."""
    allowed: tuple[str, ...] = ()


class Router:
    """Exact paths first, then the longest matching prefix route."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: dict[str, dict[str, Handler]] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._exact.setdefault(path, {})[method.upper()] = handler

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        self._prefixes.setdefault(prefix, {})[method.upper()] = handler

    def resolve(self, method: str, path: str) -> Route:
        methods = self._exact.get(path)
        if methods is None:
            matching = [p for p in self._prefixes if path.startswith(p)]
            if matching:
                methods = self._prefixes[max(matching, key=len)]
        if methods is None:
            return Route(None)
        handler = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
        allowed = tuple(sorted(methods))
        return Route(handler, allowed)
