"""``discoverd lease ...``, ``put --lease`` and ``discoverd watch ...`` end to end: the
``discoverd`` console script as a subprocess against a real member, outputs checked byte for
byte.

The expected formats are what etcdctl 3.4.23 prints for the same commands (recorded from a
real etcd; ``test_cli_side_by_side`` re-runs them against etcd when it is installed); only
the header's cluster id, member id and raft term, and the lease ids, are the member's own.
``--progress-notify`` is etcdctl 3.5's flag (3.4 has none); its line is 3.5's.

Streams (``watch``, ``lease keep-alive``) run as ``Stream``s: stdout and stderr are read by
background threads and every wait is for a condition on them, bounded by a deadline. A
watch is known to be established once it has printed an event: the tests start watches at
``--rev`` (the next revision) so that no write can be missed, and wait for the first event's
output before relying on live delivery (one response per write).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_helpers import Header, Run, clean_env, discoverd, endpoint_of

from discoverd.cli.output import Printer
from discoverd.sdk import (
    EventType,
    KeyValue,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseTimeToLive,
    ResponseHeader,
    WatchEvent,
    WatchResponse,
)
from discoverd.testing.cluster import ProcessCluster, wait_for

DEADLINE = 15.0  # seconds any one expected output may take to appear


def console_script() -> list[str]:
    """The installed ``discoverd`` console script (else the module, same ``main``)."""
    script = Path(sys.executable).with_name("discoverd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "discoverd.cli"]


# ----------------------------------------------------------------------------- streams


class Stream:
    """A long-running command whose stdout and stderr are collected as they come."""

    def __init__(self, argv: list[str], *, stdin: bool = False) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=clean_env())
        self._cond = threading.Condition()
        self._out = bytearray()
        self._err = bytearray()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _pump(self, pipe: object, into: bytearray) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 65536):
            with self._cond:
                into.extend(chunk)
                self._cond.notify_all()

    @property
    def out(self) -> bytes:
        with self._cond:
            return bytes(self._out)

    @property
    def err(self) -> bytes:
        with self._cond:
            return bytes(self._err)

    def wait_out(self, condition: Callable[[bytes], bool] | bytes, what: str = "",
                 timeout: float = DEADLINE) -> bytes:
        """Wait until stdout satisfies ``condition`` (or contains those bytes); stdout."""
        test = condition if callable(condition) else (lambda out: condition in out)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not test(bytes(self._out)):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._alive()):
                    break
                self._cond.wait(min(left, 0.5))
            out = bytes(self._out)
        assert test(out), (f"{what or condition!r} not seen in {timeout}s: "
                           f"code={self.proc.poll()} out={out!r} err={self.err!r}")
        return out

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._readers)

    def finish(self, timeout: float = DEADLINE) -> Run:
        """Wait for the command to end by itself; its whole output."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"still running after {timeout}s: out={self.out!r} "
                                 f"err={self.err!r}") from None
        for t in self._readers:
            t.join(timeout)
        return Run(tuple(self.argv), code, self.out, self.err)

    def interrupt(self) -> Run:
        """Ctrl-C: SIGINT, then wait for the end."""
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Cli:
    """The CLI bound to one member."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.endpoint = endpoint_of(cluster)
        st = cluster.members[0].status()
        self.header = Header(st["header"]["cluster_id"], st["header"]["member_id"],
                             st["header"]["raft_term"])
        self.streams: list[Stream] = []

    def __call__(self, *args: str, stdin: bytes = b"") -> Run:
        return discoverd(self.endpoint, *args, stdin=stdin)

    def ok(self, *args: str, stdin: bytes = b"") -> bytes:
        r = self(*args, stdin=stdin)
        assert r.code == 0, str(r)
        assert r.err == b"", str(r)
        return r.out

    def error(self, *args: str, code: int = 1) -> str:
        """The one ``Error:`` line of a failed command (nothing on stdout)."""
        r = self(*args)
        assert r.code == code, str(r)
        assert r.out == b"", str(r)
        assert r.err.startswith(b"Error: "), str(r)
        assert r.err.count(b"\n") == 1, str(r)
        return r.err.decode()[len("Error: "):-1]

    def stream(self, *args: str, stdin: bool = False) -> Stream:
        s = Stream([*console_script(), "--endpoints", self.endpoint, *args], stdin=stdin)
        self.streams.append(s)
        return s

    def revision(self) -> int:
        rev: int = json.loads(self.ok("get", "-w", "json", "x"))["header"]["revision"]
        return rev

    def grant(self, ttl: int) -> str:
        """A new lease's id, in hexadecimal as the CLI prints it."""
        out = self.ok("lease", "grant", str(ttl)).decode()
        m = re.fullmatch(r"lease ([0-9a-f]{16}) granted with TTL\((\d+)s\)\n", out)
        assert m is not None, out
        return m.group(1)

    def flat(self, revision: int) -> str:
        """The header fields as clientv3's lease answers print them (promoted)."""
        h = self.header
        return (f'"cluster_id":{h.cluster_id},"member_id":{h.member_id},'
                f'"revision":{revision},"raft_term":{h.raft_term}')


def _cluster(root: Path, *extra: str) -> Iterator[Cli]:
    root.mkdir(parents=True, exist_ok=True)
    cluster = ProcessCluster(root, 1, extra_args=list(extra))
    cli = None
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        cli = Cli(cluster)
        yield cli
    finally:
        for s in cli.streams if cli is not None else ():
            s.close()
        cluster.close()


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _cluster(tmp_path)


# ----------------------------------------------------------------------------- leases


def test_lease_grant_timetolive_list_revoke_every_format(cli: Cli) -> None:
    h = cli.header
    lid = cli.grant(100)                                                   # rev 1: no write
    dec = int(lid, 16)
    assert cli.ok("put", "k1", "v1", "--lease", lid) == b"OK\n"             # rev 2
    assert cli.ok("put", "k2", "v2", f"--lease={lid}") == b"OK\n"           # rev 3
    # a fresh lease: whole seconds left, a little below the TTL
    ttl = r"(9[0-9]|100)"
    out = cli.ok("lease", "timetolive", lid).decode()
    assert re.fullmatch(rf"lease {lid} granted with TTL\(100s\), remaining\({ttl}s\)\n",
                        out), out
    out = cli.ok("lease", "timetolive", lid, "--keys").decode()
    assert re.fullmatch(rf"lease {lid} granted with TTL\(100s\), remaining\({ttl}s\), "
                        r"attached keys\(\[k1 k2\]\)\n", out), out
    out = cli.ok("lease", "timetolive", lid, "--keys", "-w", "json").decode()
    assert re.fullmatch('{' + re.escape(cli.flat(3)) + f',"id":{dec},"ttl":{ttl},'
                        r'"granted-ttl":100,"keys":\["azE=","azI="\]}' + "\n", out), out
    out = cli.ok("lease", "timetolive", lid, "-w", "json").decode()
    assert re.fullmatch('{' + re.escape(cli.flat(3)) + f',"id":{dec},"ttl":{ttl},'
                        r'"granted-ttl":100,"keys":null}' + "\n", out), out
    out = cli.ok("lease", "timetolive", lid, "--keys", "-w", "fields").decode()
    assert re.fullmatch(re.escape(h.fields(3)) + f'"ID" : {dec}\n"TTL" : {ttl}\n'
                        '"GrantedTTL" : 100\n"Key" : "k1"\n"Key" : "k2"\n', out), out
    # a key that needs quoting: raw in the simple format, Go-quoted in fields
    assert cli.ok("put", "--lease", lid, 'we ird\t"é', "x") == b"OK\n"       # rev 4
    assert cli.ok("lease", "timetolive", lid, "--keys").endswith(
        b', attached keys([k1 k2 we ird\t"\xc3\xa9])\n')
    assert cli.ok("lease", "timetolive", lid, "--keys", "-w", "fields").endswith(
        '"Key" : "k1"\n"Key" : "k2"\n"Key" : "we ird\\t\\"é"\n'.encode())
    # --hex changes nothing here, as with etcdctl
    assert cli.ok("lease", "timetolive", lid, "--keys", "--hex").endswith(
        b', attached keys([k1 k2 we ird\t"\xc3\xa9])\n')

    other = cli.grant(50)
    listed = cli.ok("lease", "list").decode().splitlines()
    assert listed[0] == "found 2 leases"
    assert sorted(listed[1:]) == sorted([lid, other])
    ids = sorted([dec, int(other, 16)])
    out = json.loads(cli.ok("lease", "list", "-w", "json"))
    assert sorted(x["id"] for x in out.pop("leases")) == ids
    assert out == {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": 4,
                   "raft_term": h.raft_term}
    out = cli.ok("lease", "list", "-w", "fields").decode()
    assert out.startswith(h.fields(4))
    assert sorted(out[len(h.fields(4)):].splitlines()) == [f'"ID" : {i}' for i in ids]

    # revoking deletes the attached keys (one revision) and says so
    assert cli.ok("lease", "revoke", lid) == f"lease {lid} revoked\n".encode()  # rev 5
    assert cli.ok("get", "--prefix", "", "--keys-only") == b""
    assert cli.ok("lease", "timetolive", lid) == f"lease {lid} already expired\n".encode()
    assert cli.ok("lease", "timetolive", lid, "--keys") == \
        f"lease {lid} already expired\n".encode()
    assert cli.ok("lease", "timetolive", lid, "-w", "json").decode() == (
        '{' + cli.flat(5) + f',"id":{dec},"ttl":-1,"granted-ttl":0,"keys":null}}\n')
    assert cli.ok("lease", "timetolive", lid, "-w", "fields").decode() == (
        h.fields(5) + f'"ID" : {dec}\n"TTL" : -1\n"GrantedTTL" : 0\n')
    assert cli.ok("lease", "timetolive", "1234") == b"lease 0000000000001234 already expired\n"
    assert cli.ok("lease", "revoke", other, "-w", "json").decode() == \
        '{' + h.json(5) + '}\n'
    assert cli.ok("lease", "list") == b"found 0 leases\n"
    assert cli.ok("lease", "list", "-w", "json").decode() == \
        '{' + cli.flat(5) + ',"leases":[]}\n'
    assert cli.ok("lease", "list", "-w", "fields").decode() == h.fields(5)
    third = cli.grant(30)
    assert cli.ok("lease", "revoke", third, "-w", "fields").decode() == h.fields(5)

    # grant in JSON and fields
    out = cli.ok("lease", "grant", "60", "-w", "json").decode()
    m = re.fullmatch('{' + re.escape(cli.flat(5)) + r',"ID":(\d+),"TTL":60,"Error":""}' + "\n",
                     out)
    assert m is not None, out
    assert cli.ok("lease", "timetolive", f"{int(m.group(1)):x}").startswith(b"lease ")
    out = cli.ok("lease", "grant", "60", "-w", "fields").decode()
    assert re.fullmatch(re.escape(h.fields(5)) + r'"ID" : \d+' + '\n"TTL" : 60\n', out), out


def test_lease_grant_raises_a_short_ttl_to_the_minimum(cli: Cli) -> None:
    # the test member's election timeout is 500 ms: a minimum of 1 s
    assert re.fullmatch(rb"lease [0-9a-f]{16} granted with TTL\(1s\)\n",
                        cli.ok("lease", "grant", "0"))
    assert re.fullmatch(rb"lease [0-9a-f]{16} granted with TTL\(7s\)\n",
                        cli.ok("lease", "grant", "+7"))


def test_lease_errors(cli: Cli) -> None:
    assert cli.error("lease", "grant") == "lease grant command needs TTL argument"
    assert cli.error("lease", "grant", "10", "extra") == "lease grant command needs TTL argument"
    assert cli.error("lease", "grant", "1.5") == \
        'bad TTL (strconv.ParseInt: parsing "1.5": invalid syntax)'
    assert cli.error("lease", "grant", "0x10") == \
        'bad TTL (strconv.ParseInt: parsing "0x10": invalid syntax)'
    assert cli.error("lease", "grant", "9000000001") == \
        "failed to grant lease (etcdserver: too large lease TTL)"
    assert cli.error("lease", "grant", "10", "-w", "table") == \
        "table not supported as output format"
    assert cli.ok("lease", "list") == b"found 0 leases\n"  # the table error granted nothing
    assert cli.error("lease", "revoke") == "lease revoke command needs 1 argument"
    assert cli.error("lease", "revoke", "1", "2") == "lease revoke command needs 1 argument"
    assert cli.error("lease", "revoke", "zz") == \
        'bad lease ID arg (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex'
    assert cli.error("lease", "revoke", "ffffffffffffffff") == \
        'bad lease ID arg (strconv.ParseInt: parsing "ffffffffffffffff": value out of range), ' \
        'expecting ID in Hex'
    assert cli.error("lease", "revoke", "1234") == \
        "failed to revoke lease (etcdserver: requested lease not found)"
    assert cli.error("lease", "timetolive") == \
        "lease timetolive command needs lease ID as argument"
    assert cli.error("lease", "timetolive", "zz") == \
        'bad lease ID arg (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex'
    assert cli.error("lease", "timetolive", "1", "-w", "table") == \
        "table not supported as output format"
    assert cli.error("lease", "list", "-w", "table") == "table not supported as output format"
    assert cli.error("lease", "keep-alive") == \
        "lease keep-alive command needs lease ID as argument"
    assert cli.error("lease", "keep-alive", "--once", "zz") == \
        'bad lease ID arg (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex'
    assert cli.error("lease", "keep-alive", "--once", "1", "-w", "table") == \
        "table not supported as output format"
    assert cli.ok("lease", "list", "extra", "args") == b"found 0 leases\n"


def test_put_with_a_lease(cli: Cli) -> None:
    lid = cli.grant(100)
    dec = int(lid, 16)
    assert cli.ok("put", "a", "1", "--lease", lid) == b"OK\n"                # rev 2
    assert json.loads(cli.ok("get", "a", "-w", "json"))["kvs"][0]["lease"] == dec
    assert f'"Lease" : {dec}\n'.encode() in cli.ok("get", "a", "-w", "fields")
    # --ignore-lease keeps it, a put without --lease detaches the key
    assert cli.ok("put", "a", "2", "--ignore-lease") == b"OK\n"              # rev 3
    assert json.loads(cli.ok("get", "a", "-w", "json"))["kvs"][0]["lease"] == dec
    assert cli.ok("put", "a", "3") == b"OK\n"                                # rev 4
    assert "lease" not in json.loads(cli.ok("get", "a", "-w", "json"))["kvs"][0]
    assert cli.ok("lease", "timetolive", lid, "--keys").endswith(b", attached keys([])\n")
    # an unknown lease: etcd's error, exit 1, nothing written
    assert cli.error("put", "b", "1", "--lease", "1234") == \
        "etcdserver: requested lease not found"
    assert cli.error("put", "b", "1", "--lease", "zz") == \
        'bad lease ID (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex'
    assert cli.ok("lease", "revoke", lid) == f"lease {lid} revoked\n".encode()
    assert cli.error("put", "b", "1", "--lease", lid) == "etcdserver: requested lease not found"
    assert cli.ok("get", "b") == b""
    assert cli.revision() == 4


# ----------------------------------------------------------------------------- keep-alive


def test_keep_alive_once(cli: Cli) -> None:
    h = cli.header
    lid = cli.grant(30)
    dec = int(lid, 16)
    assert cli.ok("lease", "keep-alive", "--once", lid) == \
        f"lease {lid} keepalived with TTL(30)\n".encode()
    assert cli.ok("lease", "keep-alive", lid, "--once", "-w", "json").decode() == \
        '{' + cli.flat(1) + f',"ID":{dec},"TTL":30}}\n'
    assert cli.ok("lease", "keep-alive", "--once", lid, "-w", "fields").decode() == \
        h.fields(1) + f'"ID" : {dec}\n"TTL" : 30\n'
    cli.ok("lease", "revoke", lid)
    # a lease that is gone: etcd's error and etcdctl's exit code 2
    assert cli.error("lease", "keep-alive", "--once", lid, code=2) == \
        "etcdserver: requested lease not found"
    assert cli.error("lease", "keep-alive", "--once", "1234", "-w", "json", code=2) == \
        "etcdserver: requested lease not found"


def _keepalived(lid: str, ttl: int, n: int) -> Callable[[bytes], bool]:
    line = f"lease {lid} keepalived with TTL({ttl})\n".encode()
    return lambda out: out.count(line) >= n


def test_keep_alive_renews_until_revoked(cli: Cli) -> None:
    lid = cli.grant(3)
    ka = cli.stream("lease", "keep-alive", lid)
    ka.wait_out(_keepalived(lid, 3, 2), "two renewals")
    assert cli.ok("lease", "revoke", lid) == f"lease {lid} revoked\n".encode()
    r = ka.finish()
    assert r.code == 0, str(r)
    assert r.err == b"", str(r)
    line = f"lease {lid} keepalived with TTL(3)\n".encode()
    n = r.out.count(line)
    assert n >= 2
    assert r.out == line * n + f"lease {lid} expired or revoked.\n".encode(), str(r)


def test_keep_alive_keeps_a_lease_past_its_ttl_then_ctrl_c(cli: Cli) -> None:
    # TTL 3 (renewed about every second): the lease must survive the two CLI start-ups
    # between its grant and the first renewal even on a loaded machine (with TTL 1 a slow
    # start let it expire first), and the wait below still runs past its TTL.
    lid = cli.grant(3)
    assert cli.ok("put", "held", "x", "--lease", lid) == b"OK\n"
    ka = cli.stream("lease", "keep-alive", lid)
    started = time.monotonic()
    ka.wait_out(lambda out: time.monotonic() - started > 4
                and out.count(b"keepalived") >= 4, "renewals for 4 s")
    assert cli.ok("lease", "timetolive", lid).startswith(
        f"lease {lid} granted with TTL(3s), remaining(".encode())
    assert cli.ok("get", "held", "--print-value-only") == b"x\n"
    r = ka.interrupt()
    assert r.code == -signal.SIGINT, str(r)
    assert r.err == b"", str(r)
    assert re.fullmatch(rf"(lease {lid} keepalived with TTL\(3\)\n)+".encode(), r.out), str(r)
    # nobody renews it now: it expires, and its key with it
    wait_for("the lease to expire", lambda: cli.ok("lease", "timetolive", lid) ==
             f"lease {lid} already expired\n".encode(), timeout=DEADLINE)
    assert cli.ok("get", "held") == b""


def test_keep_alive_json_stream_and_a_lease_that_is_gone(cli: Cli) -> None:
    lid = cli.grant(3)
    dec = int(lid, 16)
    ka = cli.stream("lease", "keep-alive", lid, "-w", "json")
    one = ('{' + cli.flat(1) + f',"ID":{dec},"TTL":3}}\n').encode()
    ka.wait_out(lambda out: out.count(one) >= 2, "two renewals")
    cli.ok("lease", "revoke", lid)
    r = ka.finish()
    assert r.code == 0, str(r)
    assert r.out == one * r.out.count(one), str(r)  # nothing after the last renewal
    # a lease that does not exist: the end message at once
    r = cli.stream("lease", "keep-alive", "1234").finish()
    assert (r.code, r.out, r.err) == (0, b"lease 0000000000001234 expired or revoked.\n", b"")


# ----------------------------------------------------------------------------- watch


def test_watch_simple_prev_kv_and_ranges(cli: Cli) -> None:
    cli.ok("put", "wk", "v0")                                                # rev 2
    start = str(cli.revision() + 1)
    plain = cli.stream("watch", "wk", "--rev", start)
    prev = cli.stream("watch", "wk", "--prev-kv", "--rev", start)
    pref = cli.stream("watch", "--prefix", "w", "--rev", start)
    rng = cli.stream("watch", "wk", "wl", "--rev", start)
    hexed = cli.stream("--hex", "watch", "wk", "--rev", start, "--prev-kv")
    cli.ok("put", "wk", "v1")                                                # rev 3
    cli.ok("put", "wk", "v2")                                                # rev 4
    cli.ok("del", "wk")                                                      # rev 5
    cli.ok("put", "wk", "v3")                                                # rev 6
    cli.ok("put", "wz", "z")                                                 # rev 7
    cli.ok("put", "x", "not watched")                                        # rev 8
    expected = b"PUT\nwk\nv1\nPUT\nwk\nv2\nDELETE\nwk\n\nPUT\nwk\nv3\n"
    assert plain.wait_out(lambda out: len(out) >= len(expected)) == expected
    # etcdctl prints the previous key-value before the new one
    assert prev.wait_out(b"PUT\nwk\nv3\n") == (
        b"PUT\nwk\nv0\nwk\nv1\nPUT\nwk\nv1\nwk\nv2\nDELETE\nwk\nv2\nwk\n\nPUT\nwk\nv3\n")
    assert pref.wait_out(b"wz\nz\n") == expected + b"PUT\nwz\nz\n"
    assert rng.wait_out(lambda out: len(out) >= len(expected)) == expected
    assert hexed.wait_out(b"PUT\n\\x77\\x6b\n\\x76\\x33\n").startswith(
        b"PUT\n\\x77\\x6b\n\\x76\\x30\n\\x77\\x6b\n\\x76\\x31\nPUT\n")
    for s in (plain, prev, pref, rng, hexed):
        r = s.interrupt()
        assert r.code == -signal.SIGINT, str(r)
        assert r.err == b"", str(r)
    assert plain.out == expected  # nothing for revisions 7 and 8
    assert rng.out == expected


def test_watch_live_without_rev(cli: Cli) -> None:
    """Without --rev the watch sees only what happens after it is created: probe with
    writes until one is printed, then everything after it must be exact."""
    w = cli.stream("watch", "--prefix", "live/")
    probe = 0
    while True:
        probe += 1
        cli.ok("put", "live/probe", str(probe))
        try:
            w.wait_out(f"\n{probe}\n".encode(), timeout=1.0)
            break
        except AssertionError:
            assert probe < 20, f"the watch never printed: {w.out!r} {w.err!r}"
    mark = w.out.index(f"PUT\nlive/probe\n{probe}\n".encode()) + len(f"PUT\nlive/probe\n{probe}\n")
    cli.ok("put", "live/a", "1")
    cli.ok("del", "live/", "--prefix")
    tail = b"PUT\nlive/a\n1\nDELETE\nlive/a\n\nDELETE\nlive/probe\n\n"
    out = w.wait_out(lambda out: len(out) >= mark + len(tail))
    assert out[mark:] == tail, out
    r = w.interrupt()
    assert (r.code, r.err) == (-signal.SIGINT, b""), str(r)


def test_watch_json_and_fields(cli: Cli) -> None:
    h = cli.header

    def hdr(revision: int) -> str:
        return '{' + cli.flat(revision) + '}'

    start = str(cli.revision() + 1)                                          # 2
    js = cli.stream("watch", "wk", "-w", "json", "--prev-kv", "--rev", start)
    fl = cli.stream("watch", "wk", "-w", "fields", "--prev-kv", "--rev", start)
    cli.ok("put", "wk", "v1")                                                # rev 2
    first = ('{"Header":' + hdr(2) + ',"Events":[{"kv":{"key":"d2s=",'
             '"create_revision":2,"mod_revision":2,"version":1,"value":"djE="}}],'
             '"CompactRevision":0,"Canceled":false,"Created":false}\n').encode()
    js.wait_out(first)  # both are live from here: one response per revision
    fl.wait_out(b'"Value" : "v1"\n"Lease" : 0\n')
    cli.ok("put", "wk", "v2")                                                # rev 3
    cli.ok("del", "wk")                                                      # rev 4
    second = ('{"Header":' + hdr(3) + ',"Events":[{"kv":{"key":"d2s=",'
              '"create_revision":2,"mod_revision":3,"version":2,"value":"djI="},'
              '"prev_kv":{"key":"d2s=","create_revision":2,"mod_revision":2,"version":1,'
              '"value":"djE="}}],"CompactRevision":0,"Canceled":false,"Created":false}\n')
    third = ('{"Header":' + hdr(4) + ',"Events":[{"type":1,"kv":{"key":"d2s=",'
             '"mod_revision":4},"prev_kv":{"key":"d2s=","create_revision":2,"mod_revision":3,'
             '"version":2,"value":"djI="}}],"CompactRevision":0,"Canceled":false,'
             '"Created":false}\n')
    expected = first + (second + third).encode()
    assert js.wait_out(lambda out: len(out) >= len(expected)) == expected

    def kv(prefix: str, create: int, mod: int, version: int, value: str) -> str:
        return (f'"{prefix}Key" : "wk"\n"{prefix}CreateRevision" : {create}\n'
                f'"{prefix}ModRevision" : {mod}\n"{prefix}Version" : {version}\n'
                f'"{prefix}Value" : "{value}"\n"{prefix}Lease" : 0\n')

    expected = (h.fields(2) + '"Type" : PUT\n' + kv("", 2, 2, 1, "v1")
                + h.fields(3) + '"Type" : PUT\n' + kv("Prev", 2, 2, 1, "v1")
                + kv("", 2, 3, 2, "v2")
                + h.fields(4) + '"Type" : DELETE\n' + kv("Prev", 2, 3, 2, "v2")
                + kv("", 0, 4, 0, "")).encode()
    assert fl.wait_out(lambda out: len(out) >= len(expected)) == expected
    assert cli.error("watch", "wk", "-w", "table") == "table not supported as output format"


def test_watch_a_revoked_lease_is_one_atomic_response(cli: Cli) -> None:
    lid = cli.grant(100)
    start = str(cli.revision() + 1)
    js = cli.stream("watch", "--prefix", "lk", "-w", "json", "--rev", start)
    cli.ok("put", "lk1", "a", "--lease", lid)                                # rev 2
    js.wait_out(b'"Events":[{"kv":{"key":"bGsx"')
    cli.ok("put", "lk2", "b", "--lease", lid)                                # rev 3
    js.wait_out(b'"Events":[{"kv":{"key":"bGsy"')
    cli.ok("lease", "revoke", lid)                                           # rev 4
    last = js.wait_out(lambda out: out.count(b"\n") >= 3).splitlines()[2]
    assert json.loads(last)["Events"] == [{"type": 1, "kv": {"key": "bGsx", "mod_revision": 4}},
                                          {"type": 1, "kv": {"key": "bGsy", "mod_revision": 4}}]


def test_watch_runs_a_command_per_event(cli: Cli) -> None:
    show = ('printf "%s|%s|%s|%s|%s|%s|%s|%s\\n" "$ETCD_WATCH_REVISION" '
            '"$ETCD_WATCH_EVENT_TYPE" "$ETCD_WATCH_KEY" "$ETCD_WATCH_VALUE" '
            '"$DISCOVERD_WATCH_REVISION" "$DISCOVERD_WATCH_EVENT_TYPE" "$DISCOVERD_WATCH_KEY" '
            '"$DISCOVERD_WATCH_VALUE"; read -r line || echo "stdin: eof"')
    start = str(cli.revision() + 1)
    # our stdin stays open: the command must get /dev/null instead, as etcdctl's does
    w = cli.stream("watch", "--prefix", "ek", "--rev", start, "--", "sh", "-c", show,
                   stdin=True)
    cli.ok("put", "ek", 'v "1"')                                              # rev 2
    w.wait_out(b"stdin: eof\n")
    cli.ok("put", "ek2", "x")                                                # rev 3
    w.wait_out(lambda out: out.count(b"stdin: eof\n") == 2)
    cli.ok("del", "ek", "--prefix")                                          # rev 4: 2 events
    out = w.wait_out(lambda out: out.count(b"stdin: eof\n") == 4)
    # the response is printed first, then the command runs once per event; the values are
    # Go-quoted as etcdctl sets them; the revision is the response's
    assert out == (b'PUT\nek\nv "1"\n2|"PUT"|"ek"|"v \\"1\\""|2|"PUT"|"ek"|"v \\"1\\""\n'
                   b"stdin: eof\n"
                   b'PUT\nek2\nx\n3|"PUT"|"ek2"|"x"|3|"PUT"|"ek2"|"x"\nstdin: eof\n'
                   b'DELETE\nek\n\nDELETE\nek2\n\n'
                   b'4|"DELETE"|"ek"|""|4|"DELETE"|"ek"|""\nstdin: eof\n'
                   b'4|"DELETE"|"ek2"|""|4|"DELETE"|"ek2"|""\nstdin: eof\n'), out
    r = w.interrupt()
    assert (r.code, r.err) == (-signal.SIGINT, b""), str(r)


def test_watch_command_failures_end_the_watch(cli: Cli) -> None:
    start = str(cli.revision() + 1)
    cases = {
        ("false", "x"): 'command ["false" "x"] error (exit status 1)\n',
        ("/nonexistent/cmd",): 'command ["/nonexistent/cmd"] error (fork/exec '
                               '/nonexistent/cmd: no such file or directory)\n',
        ("no-such-command-anywhere",): 'command ["no-such-command-anywhere"] error (exec: '
                                       '"no-such-command-anywhere": executable file not '
                                       'found in $PATH)\n',
        ("sh", "-c", "kill -9 $$"): 'command ["sh" "-c" "kill -9 $$"] error (signal: '
                                    'killed)\n',
    }
    streams = {argv: cli.stream("watch", "fk", "--rev", start, "--", *argv) for argv in cases}
    cli.ok("put", "fk", "1")
    for argv, err in cases.items():
        r = streams[argv].finish()
        assert (r.code, r.out, r.err) == (1, b"PUT\nfk\n1\n", err.encode()), str(r)


def test_watch_argument_errors(cli: Cli) -> None:
    assert cli.error("watch") == "bad number of arguments"
    assert cli.error("watch", "--prefix", "--", "echo") == "bad number of arguments"
    assert cli.error("watch", "a", "--") == \
        "bad number of arguments (found separator --, but no commands)"
    assert cli.error("watch", "a", "b", "--prefix") == \
        "`range_end` and `--prefix` are mutually exclusive"
    assert cli.error("watch", "a", "--rev", "x") == \
        'invalid argument "x" for "--rev" flag: strconv.ParseInt: parsing "x": invalid syntax'
    assert cli.error("watch", "a", "--bogus") == "unknown flag: --bogus"


def test_watch_from_a_compacted_revision(cli: Cli) -> None:
    h = cli.header
    for v in ("1", "2", "3"):
        cli.ok("put", "cw", v)                                               # revs 2, 3, 4
    # history first, in one go
    w = cli.stream("watch", "cw", "--rev", "2")
    w.wait_out(b"PUT\ncw\n3\n")
    assert w.out == b"PUT\ncw\n1\nPUT\ncw\n2\nPUT\ncw\n3\n"
    w.interrupt()
    assert cli.ok("compaction", "3") == b"compacted revision 3\n"
    canceled = (b"watch was canceled (etcdserver: mvcc: required revision has been "
                b"compacted)\nError: watch is canceled by the server\n")
    r = cli.stream("watch", "cw", "--rev", "2").finish()
    assert (r.code, r.out, r.err) == (5, b"", canceled), str(r)
    r = cli.stream("watch", "cw", "--rev", "2", "-w", "fields").finish()
    assert (r.code, r.err) == (5, canceled), str(r)
    fields = r.out.decode()
    r = cli.stream("watch", "cw", "--rev", "2", "-w", "json").finish()
    assert (r.code, r.err) == (5, canceled), str(r)
    # after the compaction revision, history is still there
    w = cli.stream("watch", "cw", "--rev", "4")
    assert w.wait_out(b"PUT\ncw\n3\n") == b"PUT\ncw\n3\n"
    assert r.out.decode() == (
        f'{{"Header":{{"cluster_id":{h.cluster_id},"member_id":{h.member_id},'
        f'"raft_term":{h.raft_term}}},"Events":[],"CompactRevision":3,"Canceled":true,'
        '"Created":false}\n'), str(r)
    assert fields == (f'"ClusterID" : {h.cluster_id}\n"MemberID" : {h.member_id}\n'
                      f'"Revision" : 0\n"RaftTerm" : {h.raft_term}\n')


def test_watch_interactive(cli: Cli) -> None:
    start = str(cli.revision() + 1)
    w = cli.stream("watch", "-i", stdin=True)
    assert w.proc.stdin is not None
    w.proc.stdin.write(f"watch ik --rev {start}\nwatch --prefix ij --prev-kv --rev {start}\n"
                       "bogus ik\nwatch\n\nwatch a b --prefix\n".encode())
    w.proc.stdin.flush()
    cli.ok("put", "ik", "1")
    cli.ok("put", "ij1", "2")
    cli.ok("put", "ij1", "3")
    out = w.wait_out(lambda out: out.count(b"PUT\n") == 3)
    # two watches print concurrently, each one's responses in order
    assert out.count(b"PUT\nik\n1\n") == 1, out
    assert out.replace(b"PUT\nik\n1\n", b"") == b"PUT\nij1\n2\nPUT\nij1\n2\nij1\n3\n", out
    w.proc.stdin.close()
    r = w.finish()
    assert r.code == 3, str(r)
    assert r.err == (b"Invalid command bogus ik (only support watch)\n"
                     b"Invalid command watch (command type or key is not provided)\n"
                     b"Invalid command:  (watch and progress supported)\n"
                     b"Invalid command watch a b --prefix (`range_end` and `--prefix` are "
                     b"mutually exclusive)\n"
                     b"Error: Error reading watch request line: EOF\n"), str(r)
    # a line whose flags do not parse ends the command, as in etcdctl
    bad = cli.stream("watch", "-i", stdin=True)
    assert bad.proc.stdin is not None
    bad.proc.stdin.write(b"watch ik --rev x\n")
    bad.proc.stdin.flush()
    done = bad.finish()
    assert (done.code, done.out) == (1, b""), str(done)
    assert done.err == b'Error: invalid argument "x" for "--rev" flag: strconv.ParseInt: ' \
                       b'parsing "x": invalid syntax\n', str(done)


@pytest.fixture
def progress_cli(tmp_path: Path) -> Iterator[Cli]:
    yield from _cluster(tmp_path, "--experimental-watch-progress-notify-interval", "200")


def test_watch_progress_notify(progress_cli: Cli) -> None:
    cli = progress_cli
    h = cli.header
    rev = cli.revision()
    start = str(rev + 1)
    quiet = cli.stream("watch", "pk", "--rev", start)
    loud = cli.stream("watch", "pk", "--rev", start, "--progress-notify")
    js = cli.stream("watch", "pk", "--rev", start, "--progress-notify", "-w", "json")
    note = f"progress notify: {rev}\n".encode()
    loud.wait_out(lambda out: out.count(note) >= 2, "two progress notifications")
    assert loud.out == note * loud.out.count(note)
    bookmark = ('{"Header":{' + f'"cluster_id":{h.cluster_id},"member_id":{h.member_id},'
                f'"revision":{rev},"raft_term":{h.raft_term}' + '},"Events":[],'
                '"CompactRevision":0,"Canceled":false,"Created":false}\n').encode()
    js.wait_out(lambda out: out.count(bookmark) >= 2, "two JSON bookmarks")
    cli.ok("put", "pk", "v")
    loud.wait_out(b"PUT\npk\nv\n")
    # the watch that did not ask for them printed none, however many went by
    assert quiet.wait_out(b"PUT\npk\nv\n") == b"PUT\npk\nv\n"


# ----------------------------------------------------------------------------- printers


def test_lease_and_watch_printers_match_etcdctl_literally() -> None:
    """What etcdctl 3.4.23 printed for these values (recorded from a real etcd)."""
    h = ResponseHeader(15118495548433857066, 13668033151171901709, 4, 2)
    hdr = ('"cluster_id":15118495548433857066,"member_id":13668033151171901709,'
           '"revision":4,"raft_term":2')
    fields = ('"ClusterID" : 15118495548433857066\n"MemberID" : 13668033151171901709\n'
              '"Revision" : 4\n"RaftTerm" : 2\n')
    lid = 0x390DA213CA0CA416
    grant = LeaseGrant(lid, 10, h)
    assert Printer("simple").lease_grant(grant) == b"lease 390da213ca0ca416 granted with TTL(10s)\n"
    assert Printer("json").lease_grant(grant).decode() == \
        '{' + hdr + ',"ID":4111120240737035286,"TTL":10,"Error":""}\n'
    assert Printer("fields").lease_grant(grant).decode() == \
        fields + '"ID" : 4111120240737035286\n"TTL" : 10\n'
    ttl = LeaseTimeToLive(lid, 99, 100, [b"k1", b"k2"], h)
    assert Printer("simple").lease_timetolive(ttl, keys=False) == \
        b"lease 390da213ca0ca416 granted with TTL(100s), remaining(99s)\n"
    assert Printer("simple").lease_timetolive(ttl, keys=True) == \
        b"lease 390da213ca0ca416 granted with TTL(100s), remaining(99s), attached keys([k1 k2])\n"
    assert Printer("json").lease_timetolive(ttl, keys=True).decode() == \
        '{' + hdr + ',"id":4111120240737035286,"ttl":99,"granted-ttl":100,' \
        '"keys":["azE=","azI="]}\n'
    gone = LeaseTimeToLive(-5, -1, 0, [], h)
    assert Printer("simple").lease_timetolive(gone, keys=True) == \
        b"lease -000000000000005 already expired\n"
    assert Printer("json").lease_timetolive(gone, keys=False).decode() == \
        '{' + hdr + ',"id":-5,"ttl":-1,"granted-ttl":0,"keys":null}\n'
    assert Printer("simple").lease_list(h, [lid, 0x1234]) == \
        b"found 2 leases\n390da213ca0ca416\n0000000000001234\n"
    assert Printer("json").lease_list(h, [lid]).decode() == \
        '{' + hdr + ',"leases":[{"id":4111120240737035286}]}\n'
    assert Printer("fields").lease_list(h, [lid]).decode() == \
        fields + '"ID" : 4111120240737035286\n'
    assert Printer("json").lease_revoke(lid, h).decode() == '{"header":{' + hdr + '}}\n'
    ka = LeaseKeepAlive(lid, 5, h)
    assert Printer("simple").lease_keepalive(ka) == \
        b"lease 390da213ca0ca416 keepalived with TTL(5)\n"
    assert Printer("json").lease_keepalive(ka).decode() == \
        '{' + hdr + ',"ID":4111120240737035286,"TTL":5}\n'

    put = WatchEvent(EventType.PUT, KeyValue(b"wk", b"v2", 22, 23, 2, 0),
                     KeyValue(b"wk", b"v1", 22, 22, 1, 0))
    delete = WatchEvent(EventType.DELETE, KeyValue(b"wk", b"", 0, 24, 0, 0))
    resp = WatchResponse(ResponseHeader(15118495548433857066, 13668033151171901709, 23, 2),
                         [put])
    assert Printer("json").watch(resp).decode() == (
        '{"Header":{"cluster_id":15118495548433857066,"member_id":13668033151171901709,'
        '"revision":23,"raft_term":2},"Events":[{"kv":{"key":"d2s=","create_revision":22,'
        '"mod_revision":23,"version":2,"value":"djI="},"prev_kv":{"key":"d2s=",'
        '"create_revision":22,"mod_revision":22,"version":1,"value":"djE="}}],'
        '"CompactRevision":0,"Canceled":false,"Created":false}\n')
    resp = WatchResponse(ResponseHeader(15118495548433857066, 13668033151171901709, 24, 2),
                         [delete])
    assert Printer("json").watch(resp).decode() == (
        '{"Header":{"cluster_id":15118495548433857066,"member_id":13668033151171901709,'
        '"revision":24,"raft_term":2},"Events":[{"type":1,"kv":{"key":"d2s=",'
        '"mod_revision":24}}],"CompactRevision":0,"Canceled":false,"Created":false}\n')
    assert Printer("simple").watch(resp) == b"DELETE\nwk\n\n"
    canceled = WatchResponse(ResponseHeader(15118495548433857066, 13668033151171901709, 0, 2),
                             [], compact_revision=32)
    assert Printer("json").watch(canceled, canceled=True).decode() == (
        '{"Header":{"cluster_id":15118495548433857066,"member_id":13668033151171901709,'
        '"raft_term":2},"Events":[],"CompactRevision":32,"Canceled":true,"Created":false}\n')
    assert Printer("fields").watch(canceled).decode() == (
        '"ClusterID" : 15118495548433857066\n"MemberID" : 13668033151171901709\n'
        '"Revision" : 0\n"RaftTerm" : 2\n')
