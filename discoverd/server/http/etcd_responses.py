"""Answers in etcd's gateway shapes, shared by the gateway's unary and stream routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from discoverd.errors import DiscoverdError
from discoverd.server.api_server import error_body
from discoverd.server.http.router import HttpResponse
from discoverd.wire import etcd_json as ej

JSON_HEADERS = [("content-type", "application/json")]


def json_response(status: int, body: Mapping[str, Any]) -> HttpResponse:
    return HttpResponse(status, ej.dumps(body), list(JSON_HEADERS))


def etcd_error(exc: DiscoverdError) -> HttpResponse:
    """A native error as etcd's gateway answers a failed unary call: the HTTP status of its
    gRPC code and ``{"error","message","code"}`` (see ``etcd_json.error_response``)."""
    status, body = ej.error_response(error_body(exc))
    return json_response(status, body)


def stream_error_chunk(exc: DiscoverdError) -> bytes:
    """A native error in the middle of a stream, as etcd's gateway writes one."""
    return ej.dumps(ej.stream_error(error_body(exc))) + b"\n"
