"""Answers in the shapes of discoverd's own HTTP API (``/v1/...``): JSON bodies, and errors
as ``{"error": <code>, "message", ...}`` with the status ``rest_json.error_response``
gives — shared by the REST handlers and the SSE watch, which must fail alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from discoverd.errors import DiscoverdError
from discoverd.server.api_server import error_body
from discoverd.server.http.etcd_responses import json_response
from discoverd.server.http.router import HttpResponse
from discoverd.wire import rest_json


def ok(body: Mapping[str, Any], headers: list[tuple[str, str]] | None = None,
       status: int = 200) -> HttpResponse:
    resp = json_response(status, body)
    resp.headers.extend(headers or ())
    return resp


def rest_error(exc: DiscoverdError) -> HttpResponse:
    """A native error (raised by an op, or by a decoder refusing the request)."""
    return error(error_body(exc))


def error(err: Mapping[str, Any]) -> HttpResponse:
    """An error map ``{"code", "message", ...}``, including this API's own codes
    (``not_found``, ``generation_mismatch``)."""
    status, body = rest_json.error_response(err)
    return json_response(status, body)


def not_found(message: str) -> HttpResponse:
    return error({"code": "not_found", "message": message})
