"""Printers for ``-w simple|json|fields|table``, byte-identical to etcdctl 3.4's.

etcdctl is written in Go, so matching it byte for byte means reproducing a few Go formatting
rules by hand; each helper names the Go function it mirrors:

* ``go_quote`` — ``strconv.Quote`` / ``%q`` (the ``fields`` format quotes keys and values);
* ``go_json_string`` — ``encoding/json``'s string escaping (``<``, ``>``, ``&`` as ``\\u00XX``);
* ``go_duration`` — ``time.Duration.String`` (``took`` of ``endpoint health``);
* ``humanize_bytes`` — go-humanize's ``Bytes`` (``DB SIZE`` of ``endpoint status``);
* ``render_table`` — the olekukonko/tablewriter revision etcdctl 3.4 vendors (right-aligned
  cells, centred upper-case headers, cells wrapped at 30 columns);
* ``go_hex_id`` — ``%016x`` (lease ids), ``go_quote_list`` — ``%q`` of a ``[]string``.

JSON is etcdctl's: the gogo-protobuf structs marshalled by ``encoding/json``, so field names are
the protobuf snake_case ones, zero values are left out (``omitempty``), bytes are base64 and a
txn's responses are wrapped as ``{"Response": {"ResponsePut": {...}}}``. The lease answers
are clientv3's own structs, which embed ``*ResponseHeader``: their header fields are promoted
to the top level (``{"cluster_id":..,"revision":..,"ID":..,"TTL":..}``), and the fields
without JSON tags keep their Go names (``ID``, ``TTL``, ``Error``). A watch response is
clientv3's ``WatchResponse``: ``{"Header":{..},"Events":[..],"CompactRevision":..,
"Canceled":..,"Created":..}``, an event's ``type`` left out for PUT (0) and 1 for DELETE.

Printers return ``bytes``: keys and values are raw bytes and are written unchanged, as etcdctl
does. This module imports the SDK's types for type checking only, so importing it is cheap.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from discoverd.sdk import (
        DeleteResponse,
        KeyValue,
        LeaseGrant,
        LeaseKeepAlive,
        LeaseTimeToLive,
        Member,
        MemberAdded,
        MemberList,
        PutResponse,
        RangeResponse,
        ResponseHeader,
        Status,
        TxnResponse,
        WatchEvent,
        WatchResponse,
    )

Format = Literal["simple", "json", "fields", "table"]
FORMATS: tuple[Format, ...] = ("simple", "json", "fields", "table")


class CliError(Exception):
    """An error the CLI reports as etcdctl does: ``Error: <message>`` on stderr, exit 1
    (or ``exit_code``, where etcdctl's own code matters: a lease that is gone, a watch the
    member canceled). ``details``: lines printed after the ``Error:`` line (the violations
    of a refused registry write; etcd has no such errors)."""

    def __init__(self, message: str, *, exit_code: int = 1, details: Sequence[str] = ()
                 ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.details = tuple(details)


# ----------------------------------------------------------------------------- Go formatting


_GO_SHORT_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                     "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}


def go_quote(data: bytes | str) -> str:
    """Go's ``strconv.Quote``: printable runes as themselves, the usual backslash escapes,
    ``\\xNN`` for control bytes and bytes that are not UTF-8, ``\\uNNNN``/``\\UNNNNNNNN`` for
    other unprintable runes."""
    text = data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _GO_SHORT_ESCAPES:
            out.append(_GO_SHORT_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that is not part of valid UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def go_json_string(text: str) -> str:
    """A string as Go's ``encoding/json`` writes it (HTML-safe escaping included)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or ch in "<>&" or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # not valid UTF-8: Go writes U+FFFD
            out.append("\\ufffd")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def go_json(value: Any) -> str:
    """Compact JSON as ``json.Marshal`` writes it, for dicts (in insertion order), lists,
    strings, bools and ints."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return go_json_string(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{go_json_string(k)}:{go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    if value is None:
        return "null"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _frac(value: int, precision: int) -> str:
    whole, frac = divmod(value, 10**precision)
    digits = f"{frac:0{precision}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def go_duration(nanoseconds: int) -> str:
    """Go's ``time.Duration.String``: ``"812.5µs"``, ``"1.249877ms"``, ``"5.000603402s"``,
    ``"1m30s"``."""
    sign = "-" if nanoseconds < 0 else ""
    u = abs(nanoseconds)
    if u == 0:
        return "0s"
    if u < 1_000:
        return f"{sign}{u}ns"
    if u < 1_000_000:
        return f"{sign}{_frac(u, 3)}µs"
    if u < 1_000_000_000:
        return f"{sign}{_frac(u, 6)}ms"
    text = _frac(u % 60_000_000_000, 9) + "s"
    minutes = u // 60_000_000_000
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes >= 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


_SIZES = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def humanize_bytes(size: int) -> str:
    """go-humanize's ``Bytes`` (SI units, one decimal below 10): ``"0 B"``, ``"20 kB"``,
    ``"1.5 MB"``."""
    if size < 10:
        return f"{size} B"
    exponent = 0
    while exponent + 1 < len(_SIZES) and size >= 1000 ** (exponent + 1):
        exponent += 1
    # Go: math.Floor(s/base^e*10+0.5)/10, then %.0f or %.1f (round half to even, as Python).
    value = int(size / 1000**exponent * 10 + 0.5) / 10
    return f"{value:.1f} {_SIZES[exponent]}" if value < 10 else \
        f"{value:.0f} {_SIZES[exponent]}"


def go_hex_id(value: int) -> str:
    """``fmt.Sprintf("%016x", id)``: how etcdctl prints a lease id (a negative one keeps its
    sign inside the 16 columns, as Go does)."""
    return f"{value:016x}"


def go_quote_list(items: Sequence[bytes | str]) -> str:
    """``%q`` of a Go ``[]string``: ``["sh" "-c" "echo hi"]``."""
    return "[" + " ".join(go_quote(item) for item in items) + "]"


def hex_escape(data: bytes) -> str:
    """etcdctl's ``--hex`` form of a byte string: ``\\x66\\x6f\\x6f``."""
    return "".join(f"\\x{b:02x}" for b in data)


# ----------------------------------------------------------------------------- tables

_TABLE_MAX_WIDTH = 30  # tablewriter's MAX_ROW_WIDTH: cells longer than this are wrapped
_WRAP_PENALTY = 100_000


def _wrap_words(words: Sequence[str], limit: int) -> list[list[str]]:
    """tablewriter's ``WrapWords``: minimum-raggedness line breaking (squared slack)."""
    n = len(words)
    length = [[0] * n for _ in range(n)]
    for i in range(n):
        length[i][i] = len(words[i])
        for j in range(i + 1, n):
            length[i][j] = length[i][j - 1] + 1 + len(words[j])
    cost = [2**31 - 1] * n
    breaks = [0] * n
    for i in range(n - 1, -1, -1):
        if length[i][n - 1] <= limit:
            cost[i], breaks[i] = 0, n
            continue
        for j in range(i + 1, n):
            slack = limit - length[i][j - 1]
            c = slack * slack + cost[j]
            if length[i][j - 1] > limit:
                c += _WRAP_PENALTY
            if c < cost[i]:
                cost[i], breaks[i] = c, j
    lines: list[list[str]] = []
    i = 0
    while i < n:
        lines.append(list(words[i:breaks[i]]))
        i = breaks[i]
    return lines


def _wrap(text: str, limit: int) -> list[str]:
    """tablewriter's ``WrapString``: split on spaces, wrap, never split a word."""
    words = text.replace("\n", " ").split(" ")
    limit = max([limit, *(len(w) for w in words)])
    return [" ".join(line) for line in _wrap_words(words, limit)]


def render_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table as etcdctl 3.4 draws it (tablewriter, ``SetAlignment(ALIGN_RIGHT)``)."""
    titles = [h.replace("_", " ").replace(".", " ").strip().upper() for h in header]
    widths = [min(len(t), _TABLE_MAX_WIDTH) for t in titles]
    cells: list[list[list[str]]] = []
    for row in rows:
        wrapped: list[list[str]] = []
        for col, text in enumerate(row):
            widths[col] = max(widths[col], min(len(text), _TABLE_MAX_WIDTH))
            lines = _wrap(text, widths[col])
            widths[col] = max([widths[col], *(len(line) for line in lines)])
            wrapped.append(lines)
        cells.append(wrapped)
    border = "+" + "".join("-" * (w + 2) + "+" for w in widths) + "\n"

    def centred(text: str, width: int) -> str:
        gap = width - len(text)
        left = gap // 2
        return " " * left + text + " " * (gap - left) if gap > 0 else text

    out = [border, "|" + "".join(f" {centred(t, w)} |" for t, w in zip(titles, widths,
                                                                          strict=True)) + "\n",
           border]
    for wrapped in cells:
        height = max((len(lines) for lines in wrapped), default=1)
        for k in range(height):
            out.append("|" + "".join(
                f" {(lines[k] if k < len(lines) else '').rjust(w)} |"
                for lines, w in zip(wrapped, widths, strict=True)) + "\n")
    out.append(border)
    return "".join(out)


# ----------------------------------------------------------------------------- JSON shapes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _omit_zero(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``omitempty``: drop zero numbers, false, empty strings/lists and absent values."""
    return {k: v for k, v in pairs if v not in (None, 0, False, "", [], {})}


def header_json(h: ResponseHeader) -> dict[str, Any]:
    return _omit_zero([("cluster_id", h.cluster_id), ("member_id", h.member_id),
                       ("revision", h.revision), ("raft_term", h.raft_term)])


def kv_json(kv: KeyValue) -> dict[str, Any]:
    return _omit_zero([("key", _b64(kv.key)), ("create_revision", kv.create_revision),
                       ("mod_revision", kv.mod_revision), ("version", kv.version),
                       ("value", _b64(kv.value)), ("lease", kv.lease)])


def range_json(r: RangeResponse) -> dict[str, Any]:
    return _omit_zero([("header", header_json(r.header)),
                       ("kvs", [kv_json(kv) for kv in r.kvs]),
                       ("more", r.more), ("count", r.count)])


def put_json(r: PutResponse) -> dict[str, Any]:
    return _omit_zero([("header", header_json(r.header)),
                       ("prev_kv", kv_json(r.prev_kv) if r.prev_kv is not None else None)])


def delete_json(r: DeleteResponse) -> dict[str, Any]:
    return _omit_zero([("header", header_json(r.header)), ("deleted", r.deleted),
                       ("prev_kvs", [kv_json(kv) for kv in r.prev_kvs])])


def txn_json(r: TxnResponse) -> dict[str, Any]:
    from discoverd.sdk import DeleteResponse, PutResponse, RangeResponse

    responses: list[dict[str, Any]] = []
    for sub in r.responses:
        if isinstance(sub, RangeResponse):
            one = {"ResponseRange": range_json(sub)}
        elif isinstance(sub, PutResponse):
            one = {"ResponsePut": put_json(sub)}
        elif isinstance(sub, DeleteResponse):
            one = {"ResponseDeleteRange": delete_json(sub)}
        else:
            one = {"ResponseTxn": txn_json(sub)}
        responses.append({"Response": one})
    return _omit_zero([("header", header_json(r.header)), ("succeeded", r.succeeded),
                       ("responses", responses)])


def lease_grant_json(r: LeaseGrant) -> dict[str, Any]:
    """clientv3's ``LeaseGrantResponse``: promoted header, ``ID``, ``TTL`` and an always
    empty ``Error``."""
    return {**header_json(r.header), "ID": r.id, "TTL": r.ttl, "Error": ""}


def lease_keepalive_json(r: LeaseKeepAlive) -> dict[str, Any]:
    return {**header_json(r.header), "ID": r.id, "TTL": r.ttl}


def lease_timetolive_json(r: LeaseTimeToLive) -> dict[str, Any]:
    """clientv3's ``LeaseTimeToLiveResponse``; ``keys`` is ``null`` when there are none."""
    return {**header_json(r.header), "id": r.id, "ttl": r.ttl, "granted-ttl": r.granted_ttl,
            "keys": [_b64(k) for k in r.keys] or None}


def lease_leases_json(header: ResponseHeader, ids: Sequence[int]) -> dict[str, Any]:
    """clientv3's ``LeaseLeasesResponse``: ``leases`` is a list even when empty."""
    return {**header_json(header), "leases": [{"id": i} for i in ids]}


def lease_revoke_json(header: ResponseHeader) -> dict[str, Any]:
    """etcd's ``LeaseRevokeResponse`` (a protobuf message: the header is nested)."""
    return {"header": header_json(header)}


def event_json(e: WatchEvent) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if e.type == "DELETE":
        out["type"] = 1
    out["kv"] = kv_json(e.kv)
    if e.prev_kv is not None:
        out["prev_kv"] = kv_json(e.prev_kv)
    return out


def watch_json(r: WatchResponse, *, canceled: bool = False) -> dict[str, Any]:
    """clientv3's ``WatchResponse``; ``Events`` is a list even when empty."""
    return {"Header": header_json(r.header), "Events": [event_json(e) for e in r.events],
            "CompactRevision": r.compact_revision, "Canceled": canceled, "Created": False}


def status_json(st: Status) -> dict[str, Any]:
    """etcd's ``StatusResponse`` (its JSON names are camelCase, unlike the KV messages)."""
    return _omit_zero([("header", header_json(st.header)), ("version", st.version),
                       ("dbSize", st.db_size or 0), ("leader", st.leader),
                       ("raftIndex", st.raft_index), ("raftTerm", st.raft_term),
                       ("raftAppliedIndex", st.raft_applied_index),
                       ("errors", list(st.errors)), ("isLearner", st.is_learner)])


def _cluster_header(h: ResponseHeader) -> ResponseHeader:
    """etcd's Cluster service fills no revision into its headers; etcdctl prints 0."""
    return replace(h, revision=0)


def member_json(m: Member) -> dict[str, Any]:
    """etcd's ``Member``: ``ID`` (its JSON tag), camelCase URL lists, zero values left out."""
    return _omit_zero([("ID", m.id), ("name", m.name), ("peerURLs", list(m.peer_urls)),
                       ("clientURLs", list(m.client_urls)), ("isLearner", m.is_learner)])


def member_list_json(r: MemberList) -> dict[str, Any]:
    """``MemberListResponse`` (also the JSON of remove, promote and update)."""
    return _omit_zero([("header", header_json(_cluster_header(r.header))),
                       ("members", [member_json(m) for m in r.members])])


def member_add_json(r: MemberAdded) -> dict[str, Any]:
    return _omit_zero([("header", header_json(_cluster_header(r.header))),
                       ("member", member_json(r.member)),
                       ("members", [member_json(m) for m in r.members])])


# ----------------------------------------------------------------------------- printers


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    """One line of ``endpoint health``: etcdctl's ``epHealth``."""

    endpoint: str
    health: bool
    took_ns: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    """One line of ``endpoint status``: the endpoint as given and the member's answer."""

    endpoint: str
    status: Status


def _line(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\n"


class Printer:
    """etcdctl's ``display``: one method per response kind, each returning the bytes to
    write to stdout. ``CliError`` for a format a verb does not support (as etcdctl)."""

    def __init__(self, fmt: str, *, hex_keys: bool = False, value_only: bool = False) -> None:
        if fmt not in FORMATS:
            raise CliError("unsupported output format")
        self.fmt = fmt
        self.hex = hex_keys
        self.value_only = value_only

    # -- shared pieces

    def _table_unsupported(self) -> None:
        if self.fmt == "table":
            raise CliError("table not supported as output format")

    def _simple_kv(self, kv: KeyValue) -> bytes:
        key, value = kv.key, kv.value
        if self.hex:
            key, value = hex_escape(key).encode(), hex_escape(value).encode()
        return (b"" if self.value_only else key + b"\n") + value + b"\n"

    @staticmethod
    def _fields_header(h: ResponseHeader) -> bytes:
        return (_line(f'"ClusterID" : {h.cluster_id}') + _line(f'"MemberID" : {h.member_id}')
                + _line(f'"Revision" : {h.revision}') + _line(f'"RaftTerm" : {h.raft_term}'))

    @staticmethod
    def _fields_kv(prefix: str, kv: KeyValue) -> bytes:
        return (_line(f'"{prefix}Key" : {go_quote(kv.key)}')
                + _line(f'"{prefix}CreateRevision" : {kv.create_revision}')
                + _line(f'"{prefix}ModRevision" : {kv.mod_revision}')
                + _line(f'"{prefix}Version" : {kv.version}')
                + _line(f'"{prefix}Value" : {go_quote(kv.value)}')
                + _line(f'"{prefix}Lease" : {kv.lease}'))

    def check_kv_format(self) -> None:
        """Fail before any request when the format cannot print a KV response."""
        self._table_unsupported()

    # -- KV responses

    def get(self, r: RangeResponse) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(range_json(r)))
        if self.fmt == "fields":
            return (self._fields_header(r.header)
                    + b"".join(self._fields_kv("", kv) for kv in r.kvs)
                    + _line(f'"More" : {str(r.more).lower()}') + _line(f'"Count" : {r.count}'))
        return b"".join(self._simple_kv(kv) for kv in r.kvs)

    def put(self, r: PutResponse) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(put_json(r)))
        if self.fmt == "fields":
            prev = self._fields_kv("Prev", r.prev_kv) if r.prev_kv is not None else b""
            return self._fields_header(r.header) + prev
        return b"OK\n" + (self._simple_kv(r.prev_kv) if r.prev_kv is not None else b"")

    def delete(self, r: DeleteResponse) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(delete_json(r)))
        if self.fmt == "fields":
            return (self._fields_header(r.header) + _line(f'"Deleted" : {r.deleted}')
                    + b"".join(self._fields_kv("Prev", kv) for kv in r.prev_kvs))
        return _line(str(r.deleted)) + b"".join(self._simple_kv(kv) for kv in r.prev_kvs)

    def txn(self, r: TxnResponse) -> bytes:
        from discoverd.sdk import DeleteResponse, PutResponse, RangeResponse

        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(txn_json(r)))
        parts: list[bytes] = []
        if self.fmt == "fields":
            parts.append(self._fields_header(r.header))
            parts.append(_line(f'"Succeeded" : {str(r.succeeded).lower()}'))
        else:
            parts.append(b"SUCCESS\n" if r.succeeded else b"FAILURE\n")
        for sub in r.responses:
            if self.fmt == "simple":
                parts.append(b"\n")
            if isinstance(sub, RangeResponse):
                parts.append(self.get(sub))
            elif isinstance(sub, PutResponse):
                parts.append(self.put(sub))
            elif isinstance(sub, DeleteResponse):
                parts.append(self.delete(sub))
            else:
                parts.append(self.txn(sub))
        return b"".join(parts)

    # -- leases

    def check_lease_format(self) -> None:
        """Fail before any request when the format cannot print a lease answer."""
        self._table_unsupported()

    def lease_grant(self, r: LeaseGrant) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(lease_grant_json(r)))
        if self.fmt == "fields":
            return (self._fields_header(r.header) + _line(f'"ID" : {r.id}')
                    + _line(f'"TTL" : {r.ttl}'))
        return _line(f"lease {go_hex_id(r.id)} granted with TTL({r.ttl}s)")

    def lease_revoke(self, lease_id: int, header: ResponseHeader) -> bytes:
        """etcdctl names the id it was given (the answer carries none)."""
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(lease_revoke_json(header)))
        if self.fmt == "fields":
            return self._fields_header(header)
        return _line(f"lease {go_hex_id(lease_id)} revoked")

    def lease_timetolive(self, r: LeaseTimeToLive, *, keys: bool) -> bytes:
        """``keys``: whether ``--keys`` was given (the simple format then lists the attached
        keys, ``[]`` when there are none). A ttl of -1 means the lease does not exist."""
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(lease_timetolive_json(r)))
        if self.fmt == "fields":
            return (self._fields_header(r.header) + _line(f'"ID" : {r.id}')
                    + _line(f'"TTL" : {r.ttl}') + _line(f'"GrantedTTL" : {r.granted_ttl}')
                    + b"".join(_line(f'"Key" : {go_quote(k)}') for k in r.keys))
        if r.ttl == -1:
            return _line(f"lease {go_hex_id(r.id)} already expired")
        text = (f"lease {go_hex_id(r.id)} granted with TTL({r.granted_ttl}s), "
                f"remaining({r.ttl}s)").encode()
        if keys:  # Go's %v of a []string: the keys as they are, space-separated
            text += b", attached keys([" + b" ".join(r.keys) + b"])"
        return text + b"\n"

    def lease_list(self, header: ResponseHeader, ids: Sequence[int]) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(lease_leases_json(header, ids)))
        if self.fmt == "fields":
            return self._fields_header(header) + b"".join(_line(f'"ID" : {i}') for i in ids)
        return _line(f"found {len(ids)} leases") + b"".join(_line(go_hex_id(i)) for i in ids)

    def lease_keepalive(self, r: LeaseKeepAlive) -> bytes:
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(lease_keepalive_json(r)))
        if self.fmt == "fields":
            return (self._fields_header(r.header) + _line(f'"ID" : {r.id}')
                    + _line(f'"TTL" : {r.ttl}'))
        return _line(f"lease {go_hex_id(r.id)} keepalived with TTL({r.ttl})")

    # -- watches

    def watch(self, r: WatchResponse, *, canceled: bool = False) -> bytes:
        """One watch response. A progress notification prints ``progress notify: REV`` in
        the simple format (etcdctl 3.5's line; 3.4 has no ``--progress-notify``), the bare
        response in the others, so that ``-w json`` stays one JSON document per line."""
        self._table_unsupported()
        if self.fmt == "json":
            return _line(go_json(watch_json(r, canceled=canceled)))
        if self.fmt == "fields":
            out = [self._fields_header(r.header)]
            for e in r.events:
                out.append(_line(f'"Type" : {e.type}'))
                if e.prev_kv is not None:
                    out.append(self._fields_kv("Prev", e.prev_kv))
                out.append(self._fields_kv("", e.kv))
            return b"".join(out)
        out = [_line(f"progress notify: {r.header.revision}")] if r.progress else []
        for e in r.events:
            out.append(_line(str(e.type)))
            if e.prev_kv is not None:
                out.append(self._simple_kv(e.prev_kv))
            out.append(self._simple_kv(e.kv))
        return b"".join(out)

    @staticmethod
    def compaction(revision: int) -> bytes:
        """etcdctl prints this whatever the output format."""
        return _line(f"compacted revision {revision}")

    # -- members (etcdctl's ``member`` and ``move-leader``; ids in hex as etcdctl prints them)

    def check_member_change_format(self) -> None:
        """etcdctl prints a membership change (and ``move-leader``) in the simple and json
        formats only. It fails after the change is made; this fails before the request."""
        if self.fmt in ("fields", "table"):
            raise CliError(f"{self.fmt} not supported as output format")

    @staticmethod
    def _member_row(m: Member) -> list[str]:
        return [f"{m.id:x}", "started" if m.name else "unstarted", m.name,
                ",".join(m.peer_urls), ",".join(m.client_urls), str(m.is_learner).lower()]

    def member_list(self, r: MemberList) -> bytes:
        if self.fmt == "json":
            return _line(go_json(member_list_json(r)))
        if self.fmt == "fields":
            out = [self._fields_header(_cluster_header(r.header))]
            for m in r.members:
                out.append(_line(f'"ID" : {m.id}') + _line(f'"Name" : {go_quote(m.name)}')
                           + b"".join(_line(f'"PeerURL" : {go_quote(u)}') for u in m.peer_urls)
                           + b"".join(_line(f'"ClientURL" : {go_quote(u)}')
                                      for u in m.client_urls)
                           + _line(f'"IsLearner" : {str(m.is_learner).lower()}') + b"\n")
            return b"".join(out)
        rows = [self._member_row(m) for m in r.members]
        if self.fmt == "table":
            return render_table(("ID", "Status", "Name", "Peer Addrs", "Client Addrs",
                                 "Is Learner"), rows).encode()
        return b"".join(_line(", ".join(row)) for row in rows)

    def member_add(self, r: MemberAdded, *, name: str) -> bytes:
        """etcdctl's answer, with the lines to start the new member: ``DISCOVERD_*``
        variables (``serve`` reads its flags from them) where etcdctl prints ``ETCD_*``."""
        self.check_member_change_format()
        if self.fmt == "json":
            return _line(go_json(member_add_json(r)))
        new = r.member
        conf = [f"{name if m.id == new.id else m.name}={u}" for m in r.members
                for u in m.peer_urls]
        return (_line(f"Member {new.id:16x} added to cluster {r.header.cluster_id:16x}")
                + b"\n" + _line(f"DISCOVERD_NAME={go_quote(name)}")
                + _line(f"DISCOVERD_INITIAL_CLUSTER={go_quote(','.join(conf))}")
                + _line("DISCOVERD_INITIAL_ADVERTISE_PEER_URLS="
                        + go_quote(",".join(new.peer_urls)))
                + _line('DISCOVERD_INITIAL_CLUSTER_STATE="existing"'))

    def member_changed(self, member_id: int, done: str, r: MemberList) -> bytes:
        """``done``: "removed from", "promoted in" or "updated in"."""
        self.check_member_change_format()
        if self.fmt == "json":
            return _line(go_json(member_list_json(r)))
        return _line(f"Member {member_id:16x} {done} cluster {r.header.cluster_id:16x}")

    def move_leader(self, leader: int, target: int) -> bytes:
        self.check_member_change_format()
        if self.fmt == "json":
            return b"{}\n"  # etcd's MoveLeaderResponse carries no header: "{}"
        return _line(f"Leadership transferred from {leader:x} to {target:x}")

    # -- endpoints

    @staticmethod
    def _status_row(e: EndpointStatus) -> list[str]:
        st = e.status
        return [e.endpoint, f"{st.member_id:x}", st.version, humanize_bytes(st.db_size or 0),
                str(st.is_leader).lower(), str(st.is_learner).lower(), str(st.raft_term),
                str(st.raft_index), str(st.raft_applied_index), ", ".join(st.errors)]

    _STATUS_HEADER = ("endpoint", "ID", "version", "db size", "is leader", "is learner",
                      "raft term", "raft index", "raft applied index", "errors")

    def endpoint_status(self, statuses: Sequence[EndpointStatus]) -> bytes:
        if self.fmt == "json":
            return _line(go_json([{"Endpoint": e.endpoint, "Status": status_json(e.status)}
                                  for e in statuses]))
        if self.fmt == "table":
            return render_table(self._STATUS_HEADER,
                                [self._status_row(e) for e in statuses]).encode()
        if self.fmt == "fields":
            out = []
            for e in statuses:
                st = e.status
                out.append(self._fields_header(st.header)
                           + _line(f'"Version" : {go_quote(st.version)}')
                           + _line(f'"DBSize" : {st.db_size or 0}')
                           + _line(f'"Leader" : {st.leader}')
                           + _line(f'"IsLearner" : {str(st.is_learner).lower()}')
                           + _line(f'"RaftIndex" : {st.raft_index}')
                           + _line(f'"RaftTerm" : {st.raft_term}')
                           + _line(f'"RaftAppliedIndex" : {st.raft_applied_index}')
                           + _line('"Errors" : []')
                           + _line(f'"Endpoint" : {go_quote(e.endpoint)}') + b"\n")
            return b"".join(out)
        return b"".join(_line(", ".join(self._status_row(e))) for e in statuses)

    def endpoint_health(self, healths: Sequence[EndpointHealth]) -> tuple[bytes, bytes]:
        """(stdout, stderr): the simple format writes to stderr, as etcdctl does."""
        if self.fmt == "json":
            # etcdctl's epHealth: only "error" is omitempty.
            return _line(go_json([
                {"endpoint": h.endpoint, "health": h.health, "took": go_duration(h.took_ns),
                 **({"error": h.error} if h.error else {})} for h in healths])), b""
        if self.fmt == "table":
            rows = [[h.endpoint, str(h.health).lower(), go_duration(h.took_ns), h.error]
                    for h in healths]
            return render_table(("endpoint", "health", "took", "error"), rows).encode(), b""
        if self.fmt == "fields":
            return b"".join(
                _line(f'"Endpoint" : {go_quote(h.endpoint)}')
                + _line(f'"Health" : {str(h.health).lower()}')
                + _line(f'"Took" : {go_duration(h.took_ns)}')
                + _line(f'"Error" : {h.error}') + b"\n" for h in healths), b""
        err = []
        for h in healths:
            if h.health:
                err.append(_line(f"{h.endpoint} is healthy: successfully committed proposal: "
                                 f"took = {go_duration(h.took_ns)}"))
            else:
                err.append(_line(f"{h.endpoint} is unhealthy: failed to commit proposal: "
                                 f"{h.error}"))
        return b"", b"".join(err)


def etcd_error_message(exc: BaseException) -> str:
    """The text etcdctl would print for a member's error: etcd's gRPC errors read
    ``etcdserver: ...``; the member's MVCC messages lack that prefix."""
    text = str(exc) or type(exc).__name__
    if text.startswith("mvcc: "):
        return "etcdserver: " + text
    return text


def violation_line(v: Mapping[str, Any]) -> str:
    """One violation of a refused registry write: ``  <key> <path>: <message>`` (no path
    when the whole value is at fault), on one line."""
    path = str(v.get("path") or "")
    where = f"{v.get('key', '')} {path}" if path else str(v.get("key", ""))
    message = " ".join(str(v.get("message", "")).splitlines())
    return f"  {where}: {message}"


def error_report(exc: BaseException) -> tuple[str, tuple[str, ...]]:
    """What the CLI prints for the error it ends with: the ``Error:`` line's message and
    the lines after it. A registry write refused by the members (``validation_failed``)
    reads the same whichever verb sent it — ``config put``, ``config validate``, a raw
    ``put`` or a ``txn``::

        Error: validation failed: 2 violation(s)
          /config/app /port: 'x' is not of type 'integer'
          /config/app /replicas: -1 is less than the minimum of 0

    one line per violation in the members' order (by key, path, message); when the member
    listed only the first ones, a last line says how many more there were."""
    from discoverd.errors import ValidationError

    if isinstance(exc, CliError):
        return str(exc), exc.details
    if isinstance(exc, ValidationError) and exc.violations:
        total = max(exc.total, len(exc.violations))
        lines = [violation_line(v) for v in exc.violations]
        if total > len(lines):
            lines.append(f"  ... and {total - len(lines)} more")
        return f"validation failed: {total} violation(s)", tuple(lines)
    return etcd_error_message(exc), ()


def write_out(data: bytes, *, err: bool = False) -> None:
    """Write raw bytes to stdout (or stderr) and flush."""
    import sys

    stream = sys.stderr if err else sys.stdout
    stream.flush()
    stream.buffer.write(data)
    stream.buffer.flush()


__all__ = [
    "FORMATS",
    "CliError",
    "EndpointHealth",
    "EndpointStatus",
    "Format",
    "Printer",
    "error_report",
    "etcd_error_message",
    "go_duration",
    "go_hex_id",
    "go_json",
    "go_quote",
    "go_quote_list",
    "humanize_bytes",
    "render_table",
    "violation_line",
    "write_out",
]
