"""discoverd's etcd-compatible HTTP/JSON gateway under ``wrk`` (issue 12, ``discoverd3wrk``).

The shared harness's ``EtcdWrkSystem`` (``systems.py``, ``etcd3wrk``) drives etcd's grpc-gateway
with ``wrk`` and the harness's ``wrk_etcd.lua``: POST ``/v3/kv/put`` (``{"key","value"}``,
base64, the 10k-key space, 256-byte value) and ``/v3/kv/range`` (``{"key"}``, linearizable),
C connections, 1 wrk thread for C<16 else 2, wrk's own count and latency over the whole
warmup+duration run, server CPU over the last ``duration`` s. discoverd's client port serves
the same gateway (``discoverd/server/http/etcd_gateway.py``, docs/http.md), so
``DiscoverdWrkSystem`` runs **that very code** — ``EtcdWrkSystem.run`` from the harness,
unmodified — against a 3-member ``DiscoverdSystem``: same script, same wrk flags, same CPU
accounting. ``fill`` (the preload) goes through the harness's Python loadgen with the
discoverd adapter, as ``etcd3wrk``'s goes through aetcd.

wrk counts only transport errors and HTTP statuses ≥ 400 (the script's ``errors`` field), and
never looks at a body, so a gateway that answered fast with errors (or 200 without doing the
work) would look fast. Every wrk cell is therefore checked afterwards, outside the measured
window, for both systems (``verify_wrk``):

* put: the store's revision (``header.revision`` of a linearizable ``/v3/kv/range``) must have
  advanced by at least wrk's completed requests and at most that + C (requests still in
  flight when wrk stopped may land) — each successful put is exactly one revision; and a key
  now holds the script's value (``"v" * 256``);
* range: the revision must not have moved, and the script's exact request body for a
  preloaded key answers 200 with that key in ``kvs``.

A failed check raises, so the harness records the cell as a failure instead of a row. The
check's numbers are kept in the row (``verify``) by ``run.py``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from typing import Any

import systems as S  # the shared harness's module (on sys.path via run.py)
from discoverd_system import DiscoverdSystem

WRK_VALUE = b"v" * 256  # wrk_etcd.lua: string.rep("v", 256)
PROBE_KEY = b"/bench/k00042"  # one of the 10k keys (preloaded by fill)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _post(target: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"http://{target}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def revision(target: str) -> int:
    """The store's current revision, from a linearizable range through the gateway."""
    status, body = _post(target, "/v3/kv/range", {"key": _b64(b"/bench-ready")})
    if status != 200:
        raise RuntimeError(f"range for the revision: HTTP {status} {body}")
    return int(body["header"]["revision"])


def verify_wrk(target: str, op: str, clients: int, rev_before: int, m: dict[str, Any]
               ) -> dict[str, Any]:
    """Check that wrk's requests did what they claim (see the module doc); raise if not."""
    rev_after = revision(target)
    ops = int(m["result"]["ops"])
    errors = int(m["result"]["errors"])
    out: dict[str, Any] = {"rev_before": rev_before, "rev_after": rev_after,
                           "rev_delta": rev_after - rev_before, "wrk_requests": ops,
                           "wrk_errors": errors}
    problems = []
    if errors:
        problems.append(f"wrk counted {errors} errors (transport or HTTP >= 400)")
    if op == "put":
        if not ops <= rev_after - rev_before <= ops + clients:
            problems.append(f"revision advanced by {rev_after - rev_before}, wrk completed "
                            f"{ops} puts (expected {ops}..{ops + clients})")
        # the script's body for one key, as wrk sends it; then the value must be there
        status, body = _post(target, "/v3/kv/put",
                             {"key": _b64(PROBE_KEY), "value": _b64(WRK_VALUE)})
        status2, got = _post(target, "/v3/kv/range", {"key": _b64(PROBE_KEY)})
        kvs = got.get("kvs") or []
        landed = status == 200 and status2 == 200 and len(kvs) == 1 and \
            base64.b64decode(kvs[0].get("value", "")) == WRK_VALUE
        out["probe_put_landed"] = landed
        if not landed:
            problems.append(f"probe put/range failed: {status} {body} / {status2} {got}")
    else:
        if rev_after != rev_before:
            problems.append(f"revision moved during a read-only cell: {rev_before} -> "
                            f"{rev_after}")
        status, got = _post(target, "/v3/kv/range", {"key": _b64(PROBE_KEY)})
        kvs = got.get("kvs") or []
        ok = status == 200 and len(kvs) == 1 and base64.b64decode(kvs[0]["key"]) == PROBE_KEY
        out["probe_range_ok"] = ok
        if not ok:
            problems.append(f"probe range failed: {status} {got}")
    out["ok"] = not problems
    print(f"verify {op} C={clients} on {target}: {json.dumps(out)}", flush=True)
    if problems:
        raise RuntimeError("wrk cell failed verification: " + "; ".join(problems))
    return out


def _run_verified(sysobj: Any, wrk_run: Any, op: str, clients: int, warmup: float,
                  duration: float, nprocs: int | None) -> dict[str, Any]:
    rev_before = revision(sysobj.target())
    m: dict[str, Any] = wrk_run(op, clients, warmup, duration, nprocs)
    m["verify"] = verify_wrk(sysobj.target(), op, clients, rev_before, m)
    return m


class DiscoverdWrkSystem(DiscoverdSystem):
    """A 3-member (or 1-member) ``DiscoverdSystem`` loaded by the harness's wrk driver."""

    def __init__(self, members: int = 3, base_port: int = 27379) -> None:
        super().__init__(members, base_port)
        self.name = f"discoverd-{members}node+wrk-http"
        self.datadir = os.path.join(S.LAB, "discoverd-data", self.name)

    def _wrk(self) -> Any:
        """``EtcdWrkSystem.run`` bound to an object whose ``target()``/``server_pids()`` are
        this cluster's: the harness's wrk code, not a copy of it."""
        driver = object.__new__(S.EtcdWrkSystem)
        driver.target = self.target  # instance attributes shadow the etcd methods
        driver.server_pids = self.server_pids
        return driver.run

    def run(self, op: str, clients: int, warmup: float, duration: float,
            nprocs: int | None = None) -> dict[str, Any]:
        if op == "fill":  # preload with the Python loadgen + discoverd adapter
            return super().run(op, clients, warmup, duration, nprocs)
        return _run_verified(self, self._wrk(), op, clients, warmup, duration, nprocs)


class VerifiedEtcdWrkSystem(S.EtcdWrkSystem):
    """The harness's ``EtcdWrkSystem``, unchanged, plus the same after-the-fact check."""

    def run(self, op: str, clients: int, warmup: float, duration: float,
            nprocs: int | None = None) -> dict[str, Any]:
        if op == "fill":
            return super().run(op, clients, warmup, duration, nprocs)
        return _run_verified(self, super().run, op, clients, warmup, duration, nprocs)
