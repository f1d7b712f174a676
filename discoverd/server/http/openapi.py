"""``GET /openapi.json``: an OpenAPI 3.1 document of the client port's HTTP API.

discoverd's own API (registry REST, SSE watches, the status page) is described in full here,
by hand, because its shapes are this project's decisions. The etcd v3 gateway is listed by
path and method only — its shapes are etcd's, documented by etcd and docs/http.md — and
that list is taken from the gateway's own route table when the document is built
(``_gateway_paths``), so it cannot drift from what the member serves.
tests/http/test_openapi.py validates the document and compares it with the router.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from discoverd import __version__
from discoverd.server.http import etcd_gateway
from discoverd.server.http.router import (
    GatewayContext,
    Handler,
    HttpRequest,
    HttpResponse,
    Router,
)
from discoverd.wire import etcd_json as ej
from discoverd.wire.registry_codec import Health
from discoverd.wire.sse_json import DEFAULT_KEEPALIVE

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Mapping[str, Any], description: str,
          headers: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description,
                           "content": {JSON: {"schema": dict(schema)}}}
    if headers:
        out["headers"] = dict(headers)
    return out


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(_ref(schema), description)


def _param(name: str, where: str, schema: Mapping[str, Any], description: str, *,
           required: bool = False, explode: bool | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "in": where, "description": description,
                           "required": required or where == "path", "schema": dict(schema)}
    if explode is not None:
        out["explode"] = explode
    return out


STRING = {"type": "string"}
INT = {"type": "integer", "minimum": 0}
BOOL_TEXT = {"type": "string", "enum": ["true", "false", "1", "0", ""]}

BAD_REQUEST = _error("Bad JSON, a wrong type, a bad name or an unknown field or query "
                     "parameter; nothing was written.")
UNAVAILABLE = _error("No leader, or no answer in time (for a write the outcome is unknown).")
VALIDATION = _error("The members refused the value (docs/protocol.md \"Registry validation\"); "
                    "nothing was written.", "ValidationError")

SERVICE_NAME = _param("name", "path", {"type": "string", "pattern": "^[^/]+$"},
                      "Service name (one path segment).")
CONFIG_NAME = _param("name", "path", {"type": "string"},
                     "Config name: everything after the prefix; may contain '/' "
                     "(``/v1/config/app/db``).")
LEASE_ID = _param("id", "path", _ref("LeaseId"), "Lease id, hex (as returned at "
                  "registration and printed by ``discoverd lease``).")
FILTERS = [
    _param("health", "query", STRING,
           "Comma-separated healths to return (passing, warning, critical, draining), or "
           "'any'. Repeatable."),
    _param("tag", "query", {"type": "array", "items": STRING},
           "Only instances with this tag; repeat for several (all required).", explode=True),
    _param("meta", "query", {"type": "array", "items": STRING},
           "Only instances with this meta pair, as key=value; repeatable.", explode=True),
]
ETAG = {"ETag": {"description": "The document's generation, quoted (give it back in "
                 "If-Match).", "schema": STRING}}

SSE_DESCRIPTION = """\
A stream of Server-Sent Events (docs/http.md "Server-Sent Events"):

* `event: created`, `id: R`, `data: {"revision": R}` — first; R is the revision before the
  watch's first one.
* (no event name) `id: R`, `data: WatchBatch` — every change of revision R, in one event.
* `event: progress`, `id: R`, `data: {"revision": R}` — nothing matching happened up to R.
* `: ping` — a comment after `keepalive` idle seconds.
* `event: compacted`, `data: {"compact_revision": C}` — the start was compacted: list
  again, then watch from the listing's revision + 1. The stream ends.
* `event: canceled`, `data: {"error", "message"}` — the member ended the watch (e.g. it
  lost its leader). The stream ends; resume from the last id.

Reconnecting with `Last-Event-ID: N` resumes at N + 1, with no gap and no duplicate."""


def _own_paths() -> dict[str, Any]:
    return {
        "/": {"get": {
            "tags": ["status page"], "operationId": "statusPage",
            "summary": "The status page: members, leader, services, config generations, "
                       "live from /v1/watch.",
            "responses": {"200": {"description": "An HTML page (inline CSS and JS).",
                                  "content": {"text/html": {"schema": STRING}}}}}},
        "/openapi.json": {"get": {
            "tags": ["meta"], "operationId": "openapi", "summary": "This document.",
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")}}},
        "/v1/status": {"get": {
            "tags": ["status"], "operationId": "status",
            "summary": "This member, its leader and the membership.",
            "responses": {"200": _json(_ref("Status"), "Status."), "503": UNAVAILABLE}}},
        "/v1/services": {"get": {
            "tags": ["services"], "operationId": "listServices",
            "summary": "The catalog: every instance of every service (any health unless "
                       "filtered).",
            "parameters": FILTERS,
            "responses": {"200": _json(_ref("ServiceCatalog"), "Instances by service."),
                          "400": BAD_REQUEST, "503": UNAVAILABLE}}},
        "/v1/services/{name}": {
            "parameters": [SERVICE_NAME],
            "get": {
                "tags": ["services"], "operationId": "discover",
                "summary": "Discovery: the instances of one service (passing only unless "
                           "'health' says otherwise). Linearizable.",
                "parameters": FILTERS,
                "responses": {"200": _json(_ref("InstanceList"), "Matching instances."),
                              "400": BAD_REQUEST, "503": UNAVAILABLE}},
            "put": {
                "tags": ["services"], "operationId": "register",
                "summary": "Register an instance on a new lease of 'ttl' seconds; keep the "
                           "lease alive to stay registered.",
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": _ref("Registration")}}},
                "responses": {"200": _json(_ref("Registered"), "Registered."),
                              "400": BAD_REQUEST, "409": _error("The lease id asked for is "
                                                                "in use."),
                              "422": VALIDATION, "503": UNAVAILABLE}}},
        "/v1/leases/{id}/keepalive": {
            "parameters": [LEASE_ID],
            "put": {
                "tags": ["leases"], "operationId": "keepAlive",
                "summary": "Renew a lease once, to its full TTL.",
                "responses": {"200": _json(_ref("KeepAlive"), "Renewed."),
                              "400": BAD_REQUEST,
                              "404": _error("The lease is gone (expired or revoked): "
                                            "register again."),
                              "503": UNAVAILABLE}}},
        "/v1/leases/{id}": {
            "parameters": [LEASE_ID],
            "delete": {
                "tags": ["leases"], "operationId": "revoke",
                "summary": "Revoke a lease: deregister its instances at once.",
                "responses": {"200": _json(_ref("Revoked"), "Revoked."),
                              "400": BAD_REQUEST, "404": _error("No such lease."),
                              "503": UNAVAILABLE}}},
        "/v1/config": {"get": {
            "tags": ["config"], "operationId": "listConfigs",
            "summary": "Every config document's name, generation and revision.",
            "responses": {"200": _json(_ref("ConfigList"), "Documents."),
                          "503": UNAVAILABLE}}},
        "/v1/config/{name}": {
            "parameters": [CONFIG_NAME],
            "get": {
                "tags": ["config"], "operationId": "getConfig",
                "summary": "A config document with its generation.",
                "responses": {"200": _json(_ref("ConfigDocument"), "The document.", ETAG),
                              "400": BAD_REQUEST, "404": _error("No such document."),
                              "503": UNAVAILABLE}},
            "put": {
                "tags": ["config"], "operationId": "putConfig",
                "summary": "Write a config document (validated against its schema). With "
                           "If-Match, only if it is still at that generation.",
                "parameters": [_param(
                    "If-Match", "header", STRING,
                    "A generation (3 or \"3\", the ETag of GET); 0: only if never written.")],
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": {"type": "object"}}}},
                "responses": {"200": _json(_ref("ConfigDocument"), "Written.", ETAG),
                              "400": BAD_REQUEST,
                              "412": _error("Written meanwhile: the document is at another "
                                            "generation.", "GenerationMismatch"),
                              "422": VALIDATION, "503": UNAVAILABLE}}},
        "/v1/schemas/{name}": {
            "parameters": [CONFIG_NAME],
            "get": {
                "tags": ["config"], "operationId": "getSchema",
                "summary": "The JSON Schema of a config document.",
                "responses": {"200": _json(_ref("Schema"), "The schema."),
                              "400": BAD_REQUEST, "404": _error("No schema."),
                              "503": UNAVAILABLE}},
            "put": {
                "tags": ["config"], "operationId": "putSchema",
                "summary": "Set the JSON Schema of a config document (refused if it is not a "
                           "schema, or if the current document does not satisfy it).",
                "requestBody": {"required": True, "content": {
                    JSON: {"schema": {"type": "object"}}}},
                "responses": {"200": _json(_ref("Schema"), "Written."),
                              "400": BAD_REQUEST, "422": VALIDATION,
                              "503": UNAVAILABLE}}},
        "/v1/watch": {"get": {
            "tags": ["watch"], "operationId": "watch",
            "summary": "Watch a key, a prefix or a range as Server-Sent Events.",
            "parameters": [
                _param("key", "query", STRING, "The key, or the prefix with prefix=true.",
                       required=True),
                _param("prefix", "query", BOOL_TEXT, "Watch every key starting with 'key'."),
                _param("range_end", "query", STRING,
                       "Watch [key, range_end) ('%00': every key from 'key' on)."),
                _param("start_revision", "query", INT,
                       "First revision to report (from history); absent or 0: from now."),
                _param("prev_kv", "query", BOOL_TEXT,
                       "Include each event's previous key-value."),
                _param("keepalive", "query", {"type": "number", "minimum": 0.1,
                                              "maximum": 3600},
                       f"Seconds of silence before a ': ping' comment (default "
                       f"{DEFAULT_KEEPALIVE:g})."),
                _param("Last-Event-ID", "header", STRING,
                       "Resume after this revision (overrides start_revision)."),
            ],
            "responses": {
                "200": {"description": SSE_DESCRIPTION, "content": {"text/event-stream": {
                    "schema": STRING, "x-event-data": _ref("WatchBatch")}}},
                "400": BAD_REQUEST, "503": UNAVAILABLE}}},
    }


class _Recorder(Router):
    """A router that only notes what is added to it."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: list[tuple[str, str]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        self.routes.append((method.upper(), path))

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        self.routes.append((method.upper(), prefix + "{path}"))


def _gateway_paths() -> dict[str, Any]:
    recorder = _Recorder()
    etcd_gateway.add_routes(recorder)
    ops = {path: op for path, (op, _, _) in etcd_gateway.UNARY.items()}
    ops.update({alias: ops[path] for alias, path in etcd_gateway.ALIASES.items()})
    paths: dict[str, Any] = {}
    for method, path in recorder.routes:
        op = ops.get(path)
        what = f"the native '{op}' op" if op else "see docs/http.md"
        operation: dict[str, Any] = {
            "tags": ["etcd v3 gateway"],
            "summary": f"etcd v3 gateway: {path} ({what}); etcd 3.4's JSON shapes.",
            "responses": {"200": {"description": "As etcd's gateway answers."},
                          "default": _error("etcd's error shape {error, message, code}.",
                                            "EtcdError")}}
        if method in ("POST", "PUT"):
            operation["requestBody"] = {"content": {JSON: {"schema": {"type": "object"}}}}
        if "{path}" in path:
            operation["parameters"] = [_param("path", "path", STRING, "The rest of the path.")]
        paths.setdefault(path, {})[method.lower()] = operation
    return paths


def _kv_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["key", "value", "create_revision",
                                           "mod_revision", "version"],
            "properties": {
                "key": STRING, "value": STRING,
                "encoding": {"type": "string", "enum": ["base64"],
                             "description": "Present when the key or the value is not UTF-8: "
                                            "both are then base64."},
                "create_revision": INT, "mod_revision": INT, "version": INT,
                "lease": _ref("LeaseId")}}


def _schemas() -> dict[str, Any]:
    instance_fields: dict[str, Any] = {
        "service": STRING, "id": STRING, "address": STRING,
        "port": {"type": ["integer", "null"], "minimum": 0, "maximum": 65535},
        "tags": {"type": "array", "items": STRING},
        "meta": {"type": "object", "additionalProperties": STRING},
        "weight": {"type": "integer", "minimum": 0}, "zone": STRING, "version": STRING,
        "health": _ref("Health"), "registered_at": {"type": "number", "minimum": 0},
    }
    error_fields = {"error": {"type": "string", "description": "The error code."},
                    "message": STRING,
                    "leader": {"type": "string", "description": "The leader's id (hex), "
                                                                "when a member named it."}}
    return {
        "Health": {"type": "string", "enum": [h.value for h in Health]},
        "LeaseId": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                    "description": "A lease id: 16 hex digits."},
        "Instance": {"type": "object", "required": ["service", "id"],
                     "properties": instance_fields},
        "Registration": {
            "type": "object", "required": ["ttl", "id"], "additionalProperties": False,
            "properties": {
                "ttl": {"type": "integer", "minimum": 1,
                        "description": "Lease TTL, seconds (raised to the member's minimum)."},
                "lease": {"type": "string", "pattern": "^[0-9a-fA-F]{1,16}$",
                          "description": "Grant this lease id (default: the member picks)."},
                **instance_fields,
                "registered_at": {"type": "number", "minimum": 0,
                                  "description": "Default: the member's clock."}}},
        "Registered": {"type": "object",
                       "required": ["instance", "lease", "ttl", "revision", "keepalive"],
                       "properties": {"instance": _ref("Instance"), "lease": _ref("LeaseId"),
                                      "ttl": INT, "revision": INT, "keepalive": STRING}},
        "ServiceCatalog": {"type": "object", "required": ["revision", "services"],
                           "properties": {"revision": INT, "services": {
                               "type": "object", "additionalProperties": {
                                   "type": "array", "items": _ref("Instance")}}}},
        "InstanceList": {"type": "object", "required": ["service", "revision", "instances"],
                         "properties": {"service": STRING, "revision": INT, "instances": {
                             "type": "array", "items": _ref("Instance")}}},
        "KeepAlive": {"type": "object", "required": ["lease", "ttl"],
                      "properties": {"lease": _ref("LeaseId"), "ttl": INT}},
        "Revoked": {"type": "object", "required": ["lease", "revision"],
                    "properties": {"lease": _ref("LeaseId"), "revision": INT}},
        "ConfigDocument": {"type": "object",
                           "required": ["name", "document", "generation", "revision"],
                           "properties": {"name": STRING, "document": {"type": "object"},
                                          "generation": INT, "revision": INT}},
        "ConfigList": {"type": "object", "required": ["revision", "configs"],
                       "properties": {"revision": INT, "configs": {"type": "array", "items": {
                           "type": "object", "required": ["name", "generation", "revision"],
                           "properties": {"name": STRING, "generation": INT,
                                          "revision": INT}}}}},
        "Schema": {"type": "object", "required": ["name", "schema", "revision"],
                   "properties": {"name": STRING, "schema": {"type": "object"},
                                  "revision": INT}},
        "Status": {"type": "object",
                   "required": ["member", "leader", "cluster_id", "raft_term", "revision",
                                "members"],
                   "properties": {
                       "member": {"type": "object", "properties": {
                           "id": STRING, "name": STRING, "version": STRING,
                           "role": {"type": "string"}}},
                       "leader": {"type": ["string", "null"]}, "cluster_id": STRING,
                       "raft_term": INT, "revision": INT,
                       "members": {"type": "array", "items": {"type": "object", "properties": {
                           "id": STRING, "name": STRING, "is_learner": {"type": "boolean"},
                           "is_leader": {"type": "boolean"},
                           "peer_urls": {"type": "array", "items": STRING},
                           "client_urls": {"type": "array", "items": STRING}}}}}},
        "KeyValue": _kv_schema(),
        "WatchEvent": {"type": "object", "required": ["type", "kv"], "properties": {
            "type": {"type": "string", "enum": ["PUT", "DELETE"]},
            "kv": _ref("KeyValue"), "prev_kv": _ref("KeyValue")}},
        "WatchBatch": {"type": "object", "required": ["revision", "events"], "properties": {
            "revision": INT, "events": {"type": "array", "items": _ref("WatchEvent")}}},
        "Error": {"type": "object", "required": ["error", "message"],
                  "properties": error_fields},
        "Violation": {"type": "object", "required": ["key", "path", "message", "schema_path"],
                      "properties": {"key": STRING, "path": STRING, "message": STRING,
                                     "schema_path": STRING}},
        "ValidationError": {"type": "object", "required": ["error", "message", "violations"],
                            "properties": {**error_fields, "violations": {
                                "type": "array", "items": _ref("Violation")}}},
        "GenerationMismatch": {"type": "object",
                               "required": ["error", "message", "expected", "generation"],
                               "properties": {**error_fields, "expected": INT,
                                              "generation": INT}},
        "EtcdError": {"type": "object", "properties": {
            "error": STRING, "message": STRING, "code": {"type": "integer"}}},
    }


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "discoverd HTTP API",
            "version": __version__,
            "description": "The client port's HTTP/JSON API: discoverd's registry REST API and "
                           "SSE watches (docs/http.md), and etcd v3's JSON gateway (etcd "
                           f"{ej.ETCD_SERVER_VERSION}'s shapes, listed by path).",
        },
        "tags": [{"name": n} for n in ("services", "leases", "config", "watch", "status",
                                        "status page", "meta", "etcd v3 gateway")],
        "paths": {**_own_paths(), **_gateway_paths()},
        "components": {"schemas": _schemas()},
    }


@cache
def _document_json() -> bytes:
    return ej.dumps(document())


async def serve(req: HttpRequest, ctx: GatewayContext, params: Mapping[str, str]
                ) -> HttpResponse:
    return HttpResponse(200, _document_json(), [("content-type", JSON)])
