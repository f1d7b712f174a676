"""The same CLI script run with ``etcdctl`` against a real etcd 3.4 and with ``discoverd``
against a discoverd member: the outputs must be the same bytes (issue 4, "Done when").

Both stores start empty, so revisions agree step for step and are compared as they are. What
inherently differs is normalised, and only that: the ``cluster_id``, ``member_id`` and
``raft_term`` values of response headers (JSON and ``fields``), and on stderr the JSON log
lines etcdctl's gRPC client writes before its ``Error:`` line. Exit codes are compared as
success/failure: etcdctl uses 128, 4 and 3 for argument, format and input errors, discoverd
always 1. Flag-parsing errors (``--rev x``, unknown flags) are left out: there etcdctl's
library prints the usage text on stdout and the error twice; ``test_cli_outputs`` checks
discoverd's single line.

The lease verbs (and ``put --lease``) run as a second script, with each side's lease ids
masked; the watch formats (simple, ``--prev-kv``, ``--hex``, ranges, JSON, fields, ``--
CMD`` and its variables, compacted start, failing command) as one session of concurrent
``watch`` processes per side, compared watch by watch.

Needs ``etcd`` and ``etcdctl`` 3.4 on PATH (Debian: ``apt-get install etcd-server
etcd-client``); without them the test is skipped and says why.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import Run, clean_env, discoverd, endpoint_of, error_lines, run, started_member

from discoverd.testing.cluster import ProcessCluster, free_port, wait_for


@dataclass(frozen=True)
class Step:
    args: str
    stdin: bytes = b""


def txn(text: str) -> bytes:
    return text.encode()


SCRIPT: tuple[Step, ...] = (
    # the seed data, then reads in every format
    Step("put foo bar"), Step("put foo1 bar1"), Step("put foo2 bar2"), Step("put foo3 bar3"),
    Step("get foo"), Step("get --prefix foo"), Step("get foo foo2"), Step("get --from-key foo1"),
    Step("get --prefix foo --keys-only"), Step("get --prefix foo --print-value-only"),
    Step("get --prefix foo --keys-only --print-value-only"),
    Step("get --prefix foo --limit 2"), Step("get --prefix foo --limit -1"),
    Step("get --prefix foo --sort-by VALUE --order DESCEND"),
    Step("get --prefix foo --order DESCEND"), Step("get --prefix foo --order ascend"),
    Step("get --prefix foo --sort-by CREATE --order DESCEND --limit 1"),
    Step("get --prefix foo --sort-by MODIFY"), Step("get --prefix foo --sort-by version"),
    Step("get --prefix foo --sort-by KEY --order DESCEND --limit 3"),
    Step("get foo --rev 2"), Step("get foo1 --rev 2"), Step("get foo --consistency s"),
    Step("get --prefix '' --keys-only"), Step("get --from-key '' --limit 2"),
    Step("get nokey"),
    Step("get foo -w json"), Step("get --prefix foo --limit 2 -w json"),
    Step("get --prefix foo --keys-only -w json"), Step("get nokey -w json"),
    Step("get foo -w fields"), Step("get --prefix foo --limit 1 -w fields"),
    Step("get nokey -w fields"),
    Step("--hex get foo"), Step("get --prefix foo --hex --limit 2"),
    Step("get foo --hex -w json"), Step("get foo --hex -w fields"),
    Step("-w json get foo1"), Step("--write-out=fields get foo2"),
    # writes
    Step("put foo baz"), Step("put foo qux --prev-kv"), Step("put foo2 v -w json"),
    Step("put foo3 w --prev-kv -w json"), Step("put foo1 x --prev-kv -w fields"),
    Step("put foo1 y -w fields"), Step("put --hex foo1 z --prev-kv"),
    Step("put stdinkey", stdin=b"hello\n"), Step("get stdinkey"), Step("get stdinkey -w json"),
    Step("put foo --ignore-value"), Step("get foo -w json"),
    Step("put foo1 new --ignore-lease --prev-kv"),
    Step('put "key with space" "value with space"'), Step('get "key with space"'),
    Step("put -- dash -value"), Step("get dash -w fields"),
    Step("del nokey"), Step("del nokey -w json"), Step("del nokey -w fields"),
    Step("del dash"), Step("del stdinkey --prev-kv"), Step("put a1 1"), Step("put a2 2"),
    Step("put a3 3"), Step("del a1 a3 --prev-kv -w json"), Step("del --prefix a -w fields"),
    Step("put zz1 1"), Step("put zz2 2"), Step("del --from-key zz2 --prev-kv"),
    Step("del --prefix zz --prev-kv -w fields"), Step("get --prefix '' -w json"),
    # transactions, both branches, every format
    Step("txn", txn('value("foo") = "qux"\n\nput x "hello world"\nget foo\ndel nokey\n\n'
                    "put y 1\n\n")),
    Step("txn", txn('value("foo") = "nope"\n\nput x 1\n\nput y 1\n'
                    "get foo --prefix --keys-only\n\n")),
    Step("txn -w json", txn('mod("foo") > "0"\nversion("foo") != "0"\n\nget foo\n'
                            "put x 2 --prev-kv\n\n\n")),
    Step("txn -w json", txn('create("foo") < "1"\n\n\nget foo1 --limit 1\ndel y --prev-kv\n\n')),
    Step("txn -w fields", txn('val("x") = "2"\nver("x") = "2"\nc("x") > "0"\nm("x") > "0"\n\n'
                              "put x 3 --prev-kv\nget x\ndel nokey\n\n\n")),
    Step("txn -i", txn('value("x") = "3"\n\nget x --print-value-only\n\nput x 9\n\n')),
    Step("txn --hex", txn('value("x") = "3"\n\nget x\nput x 4 --prev-kv\n\n\n')),
    Step("txn", txn("\n\n\n")),
    Step("txn", txn('  value("x")   =   "4"  trailing\n\nput \t "q r" "s\\tt" \n\n\n')),
    Step('get "q r" -w fields'),
    # compaction
    Step("compaction 3"), Step("compaction 4 --physical"), Step("compaction 5 -w json"),
    # errors: one "Error:" line each
    Step("get"), Step("get foo --prefix --from-key"), Step("get foo --consistency x"),
    Step("get foo --order UP"), Step("get foo --sort-by X"), Step("get foo bar --prefix"),
    Step("get foo --rev 100000"), Step("get foo --rev 2"),
    Step("get foo -w table"), Step("get foo --print-value-only -w json"),
    Step("get ''"), Step("-w bogus get foo"),
    Step("compaction 3"), Step("compaction 100000"), Step("compaction abc"),
    Step("compaction"),
    Step("put"), Step("put emptystdin"), Step("put nokey --ignore-value"),
    Step("put nokey --ignore-lease v"), Step("put foo v --lease zz"),
    Step("put foo v --ignore-value"), Step("put '' v"),
    Step("del"), Step("del a b c"), Step("del foo --prefix --from-key"),
    Step("del foo bar --from-key"),
    Step("txn arg"), Step("txn"), Step("txn", txn('value("foo") = "v"\n\nput x 1\n')),
    Step("txn", txn('bogus("foo") = "1"\n\n\n')), Step("txn", txn("foo\n\n\n")),
    Step("txn", txn('value("foo")="v"\n\n\n\n')), Step("txn", txn('value("foo") =\n\n\n\n')),
    Step("txn", txn('version("foo") = "x"\n\n\n')), Step("txn", txn("\nfrob x\n\n\n")),
    Step("txn", txn("\nfrob\n\n\n")), Step("txn", txn("\nget a --prefix --from-key\n\n\n")),
    Step("txn", txn("\nput a b\nput a c\n\n\n")),
    Step("get --prefix '' -w json"),
)

_HEADER_IDS = re.compile(rb'("cluster_id":|"member_id":|"raft_term":|"ClusterID" : |'
                         rb'"MemberID" : |"RaftTerm" : )\d+')


def normalise(out: bytes) -> bytes:
    """Mask the header values that differ between two clusters by nature. A nested txn
    response header carries only its revision on both sides, so nothing else is touched."""
    return _HEADER_IDS.sub(rb"\1N", out)


def _etcd_binaries() -> tuple[str, str]:
    etcd, etcdctl = shutil.which("etcd"), shutil.which("etcdctl")
    if etcd is None or etcdctl is None:
        pytest.skip("etcd 3.4 not installed: no etcd/etcdctl on PATH "
                    "(Debian: apt-get install etcd-server etcd-client)")
    version = subprocess.run([etcdctl, "version"], capture_output=True, text=True,
                             env=clean_env(), check=False).stdout
    if "etcdctl version: 3.4." not in version:
        pytest.skip(f"etcd 3.4 not installed: found {version.splitlines()[:1]}")
    return etcd, etcdctl


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A single-member etcd 3.4 on free loopback ports: (etcdctl path, client endpoint)."""
    etcd_bin, etcdctl = _etcd_binaries()
    client, peer = free_port(), free_port()
    log = (tmp_path / "etcd.log").open("wb")
    proc = subprocess.Popen(
        [etcd_bin, "--name", "sbs", "--data-dir", str(tmp_path / "etcd-data"),
         "--listen-client-urls", f"http://127.0.0.1:{client}",
         "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"sbs=http://127.0.0.1:{peer}"],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    endpoint = f"127.0.0.1:{client}"
    try:
        wait_for("etcd to serve", lambda: run(
            [etcdctl, "--endpoints", endpoint, "get", "probe"]).code == 0, timeout=30)
        yield etcdctl, endpoint
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


@pytest.fixture
def member(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from started_member(tmp_path / "discoverd")


def test_the_same_script_prints_the_same_bytes(
    etcd: tuple[str, str], member: ProcessCluster
) -> None:
    etcdctl, etcd_endpoint = etcd
    ours = endpoint_of(member)
    mismatches: list[str] = []
    for step in SCRIPT:
        args = shlex.split(step.args)
        theirs = run([etcdctl, "--endpoints", etcd_endpoint, *args], stdin=step.stdin)
        mine = discoverd(ours, *args, stdin=step.stdin)
        same = (normalise(theirs.out) == normalise(mine.out)
                and error_lines(theirs.err) == mine.err
                and (theirs.code == 0) == (mine.code == 0))
        print(f"{'same' if same else 'DIFF'}: {step.args} -> {mine.code} "
              f"{normalise(mine.out)[:70]!r} {mine.err[:70]!r}")
        if not same:
            mismatches.append(f"{step.args!r} stdin={step.stdin!r}\n  etcdctl:   "
                              f"{_show(theirs)}\n  discoverd: {_show(mine)}")
    print(f"compared {len(SCRIPT)} commands")
    assert not mismatches, f"{len(mismatches)} of {len(SCRIPT)} differ:\n" + \
        "\n".join(mismatches)


def _show(r: Run) -> str:
    return f"code={r.code} out={normalise(r.out)!r} err={error_lines(r.err)!r}"


# ----------------------------------------------------------------------------- leases, watch
#
# Lease ids are the cluster's to choose: each side's ids (hexadecimal and decimal) are
# replaced by the name of the step that granted them. A fresh lease's remaining TTL is
# whole seconds either truncated (etcd: 99 of 100 just after the grant) or rounded up
# (discoverd: 100, docs/protocol.md), so ``timetolive`` steps on a live lease mask it.


@dataclass(frozen=True)
class LeaseStep:
    args: str
    grants: str = ""  # a name for the lease this step grants (simple format)
    remaining: bool = False  # mask the remaining TTL


LEASE_SCRIPT: tuple[LeaseStep, ...] = (
    LeaseStep("lease list"), LeaseStep("lease list -w json"), LeaseStep("lease list -w fields"),
    LeaseStep("lease grant 100", grants="L1"),
    LeaseStep("put k1 v1 --lease {L1}"), LeaseStep("put k2 v2 --lease={L1}"),
    LeaseStep("put k3 v3 --lease {L1} --prev-kv -w json"),
    LeaseStep("get k1 -w json"), LeaseStep("get k2 -w fields"),
    LeaseStep("lease timetolive {L1}", remaining=True),
    LeaseStep("lease timetolive {L1} --keys", remaining=True),
    LeaseStep("lease timetolive {L1} --keys -w json", remaining=True),
    LeaseStep("lease timetolive {L1} -w json", remaining=True),
    LeaseStep("lease timetolive {L1} --keys -w fields", remaining=True),
    LeaseStep("lease timetolive {L1} --keys --hex", remaining=True),
    LeaseStep("lease list"), LeaseStep("lease list -w json"), LeaseStep("lease list -w fields"),
    LeaseStep("lease keep-alive --once {L1}"), LeaseStep("lease keep-alive --once {L1} -w json"),
    LeaseStep("lease keep-alive --once {L1} -w fields"),
    LeaseStep("put k1 v1b --ignore-lease"), LeaseStep("get k1 -w json"),
    LeaseStep("put k2 v2b"), LeaseStep("get k2 -w json"),
    LeaseStep("lease revoke {L1}"), LeaseStep("get --prefix k"),
    LeaseStep("lease timetolive {L1}"), LeaseStep("lease timetolive {L1} --keys -w json"),
    LeaseStep("lease timetolive {L1} -w fields"),
    LeaseStep("lease timetolive 1234"), LeaseStep("lease timetolive 7fffffffffffffff"),
    # etcd answers "not found" (ttl -1) for ids 0 and below; the member refuses them
    LeaseStep("lease timetolive 0 -w json"),
    LeaseStep("lease timetolive -- -5"),
    LeaseStep("lease revoke 0"),
    LeaseStep("lease keep-alive --once 0"),
    LeaseStep("lease grant 1", grants="L2"), LeaseStep("lease grant 0", grants="L3"),
    LeaseStep("lease revoke {L2} -w json"), LeaseStep("lease revoke {L3} -w fields"),
    LeaseStep("lease list"),
    LeaseStep("lease grant 10", grants="L4"), LeaseStep("lease revoke {L4}"),
    # errors: one "Error:" line each
    LeaseStep("lease grant"), LeaseStep("lease grant 10 extra"), LeaseStep("lease grant x"),
    LeaseStep("lease grant 1.5"), LeaseStep("lease grant 9000000001"),
    LeaseStep("lease revoke"), LeaseStep("lease revoke 1 2"), LeaseStep("lease revoke zz"),
    LeaseStep("lease revoke ffffffffffffffff"), LeaseStep("lease revoke 1234"),
    LeaseStep("lease revoke {L1}"),
    LeaseStep("lease timetolive"), LeaseStep("lease timetolive zz"),
    LeaseStep("lease keep-alive"), LeaseStep("lease keep-alive zz"),
    LeaseStep("lease keep-alive --once 1234"), LeaseStep("lease keep-alive --once {L1} -w json"),
    LeaseStep("put k v --lease 1234"), LeaseStep("put k v --lease {L1}"),
    LeaseStep("put k v --lease zz"), LeaseStep("put k v --lease ffffffffffffffff"),
    LeaseStep("get --prefix k"), LeaseStep("lease list"),
    # last: etcdctl grants (and revokes) before it refuses the format, discoverd does not
    LeaseStep("lease grant 10 -w table"), LeaseStep("lease timetolive 1 -w table"),
    LeaseStep("lease list -w table"),
)

_GRANTED = re.compile(rb"^lease ([0-9a-f]{16}) granted with TTL\(\d+s\)\n\Z")
_REMAINING = re.compile(rb'(remaining\(|"ttl":|"TTL" : )\d+')


class _Leases:
    """One side's lease ids by step name, and the masking of them."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def expand(self, args: str) -> str:
        return args.format(**{name: f"{i:x}" for name, i in self.ids.items()})

    def learn(self, step: LeaseStep, out: bytes) -> None:
        if step.grants:
            m = _GRANTED.match(out)
            assert m is not None, f"{step.args!r} printed {out!r}"
            self.ids[step.grants] = int(m.group(1), 16)

    def mask(self, data: bytes, step: LeaseStep) -> bytes:
        for name, i in self.ids.items():
            data = data.replace(f"{i:016x}".encode(), f"<{name}>".encode())
            data = data.replace(str(i).encode(), f"<{name}>".encode())
        if step.remaining:
            data = _REMAINING.sub(rb"\1<remaining>", data)
        return normalise(_sort_attached_keys(data))


_ATTACHED = re.compile(rb"attached keys\(\[([^\]]*)\]\)")
_KEYS_JSON = re.compile(rb'"keys":\[([^\]]*)\]')


def _sort_attached_keys(data: bytes) -> bytes:
    """etcd lists a lease's keys in Go map order (random per run); discoverd sorts them.
    Compare them as sets: sort them in every format before comparing."""
    data = _ATTACHED.sub(lambda m: b"attached keys([" + b" ".join(sorted(m[1].split()))
                         + b"])", data)
    data = _KEYS_JSON.sub(lambda m: b'"keys":[' + b",".join(sorted(m[1].split(b",")))
                          + b"]", data)
    lines = data.split(b"\n")
    key_lines = sorted(line for line in lines if line.startswith(b'"Key" : '))
    if key_lines:
        first = next(i for i, line in enumerate(lines) if line.startswith(b'"Key" : '))
        rest = [line for line in lines if not line.startswith(b'"Key" : ')]
        data = b"\n".join(rest[:first] + key_lines + rest[first:])
    return data


@pytest.fixture
def member_etcd_timing(tmp_path: Path) -> Iterator[ProcessCluster]:
    """A member with etcd's default heartbeat and election timeout, so that the minimum
    lease TTL is etcd's (2 s)."""
    root = tmp_path / "discoverd-etcd-timing"
    root.mkdir(parents=True)
    cluster = ProcessCluster(root, 1, heartbeat_ms=100, election_ms=1000)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield cluster
    finally:
        cluster.close()


def test_lease_commands_print_the_same_bytes(
    etcd: tuple[str, str], member_etcd_timing: ProcessCluster
) -> None:
    etcdctl, etcd_endpoint = etcd
    ours = endpoint_of(member_etcd_timing)
    theirs_ids, mine_ids = _Leases(), _Leases()
    mismatches: list[str] = []
    for step in LEASE_SCRIPT:
        theirs = run([etcdctl, "--endpoints", etcd_endpoint,
                      *shlex.split(theirs_ids.expand(step.args))])
        mine = discoverd(ours, *shlex.split(mine_ids.expand(step.args)))
        theirs_ids.learn(step, theirs.out)
        mine_ids.learn(step, mine.out)
        t_out, m_out = theirs_ids.mask(theirs.out, step), mine_ids.mask(mine.out, step)
        t_err = theirs_ids.mask(error_lines(theirs.err), step)
        m_err = mine_ids.mask(mine.err, step)
        same = t_out == m_out and t_err == m_err and (theirs.code == 0) == (mine.code == 0)
        print(f"{'same' if same else 'DIFF'}: {step.args} -> {mine.code} {m_out[:70]!r} "
              f"{m_err[:70]!r}")
        if not same:
            mismatches.append(
                f"{step.args!r}\n  etcdctl:   code={theirs.code} out={t_out!r} "
                f"err={t_err!r}\n  discoverd: code={mine.code} out={m_out!r} err={m_err!r}")
    print(f"compared {len(LEASE_SCRIPT)} commands")
    assert not mismatches, f"{len(mismatches)} of {len(LEASE_SCRIPT)} differ:\n" + \
        "\n".join(mismatches)


def _watch_session(ctl: list[str]) -> dict[str, tuple[int, bytes, bytes]]:
    """The watch scenario through one CLI (``ctl``: the command and its ``--endpoints``):
    each watch's exit code, stdout and stderr by name. Every watch starts at ``--rev`` and
    is live once its first event is printed, so both stores send the same responses."""
    from test_cli_lease_watch import Stream

    def cmd(*args: str) -> Run:
        r = run([*ctl, *args])
        assert r.code == 0, str(r)
        return r

    env_line = ('echo "$ETCD_WATCH_REVISION $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY '
                '$ETCD_WATCH_VALUE"')
    cmd("put", "wk", "v0")                                                   # rev 2
    watches = {
        "simple": ["watch", "wk", "--rev", "3"],
        "prev-kv": ["watch", "wk", "--prev-kv", "--rev", "3"],
        "prefix-hex": ["--hex", "watch", "--prefix", "w", "--rev", "3", "--prev-kv"],
        "range": ["watch", "wk", "wl", "--rev", "3"],
        "json": ["watch", "--prefix", "w", "--prev-kv", "-w", "json", "--rev", "3"],
        "fields": ["watch", "wk", "--prev-kv", "-w", "fields", "--rev", "3"],
        "exec": ["watch", "--prefix", "w", "--rev", "3", "--", "sh", "-c", env_line],
    }
    streams = {name: Stream([*ctl, *args]) for name, args in watches.items()}
    results: dict[str, tuple[int, bytes, bytes]] = {}
    try:
        cmd("put", "wk", "v1")                                               # rev 3
        for s in streams.values():
            s.wait_out(lambda out: b"v1" in out or b"djE=" in out or b"\\x76\\x31" in out)
        # One write at a time, each waited for where responses show (JSON, fields, the
        # command's revision), so that every revision is a response of its own.
        writes = [("put", "wk", "v2"), ("del", "wk"), ("put", "wk", "a b\tc"),
                  ("put", "wz", "z"), ("put", "x", "unwatched")]
        def lines(n: int) -> Callable[[bytes], bool]:
            return lambda out: out.count(b"\n") == n

        def headers(n: int) -> Callable[[bytes], bool]:
            return lambda out: out.count(b'"ClusterID"') == n

        for rev, write in enumerate(writes, start=4):                        # revs 4..8
            cmd(*write)
            if write[1].startswith("w"):
                streams["exec"].wait_out(f"\n{rev} ".encode())
                streams["json"].wait_out(lines(rev - 2))   # responses since revision 3
            if write[1] == "wk":
                streams["fields"].wait_out(headers(rev - 2))
        cmd("del", "--prefix", "w")                                          # rev 9: 2 events
        streams["exec"].wait_out(lambda out: out.count(b"\n9 ") == 2)
        streams["json"].wait_out(lambda out: out.count(b"\n") == 6)
        streams["prefix-hex"].wait_out(lambda out: out.count(b"DELETE\n") == 3)
        streams["fields"].wait_out(lambda out: out.count(b'"Type" : ') == 5)
        for name in ("simple", "prev-kv", "range"):
            streams[name].wait_out(lambda out: out.count(b"DELETE\n") == 2)
        for name, s in streams.items():
            r = s.interrupt()
            results[name] = (r.code, normalise(r.out), error_lines(r.err))
        # a watch from a compacted revision
        cmd("compaction", "5")
        for fmt in ("simple", "json", "fields"):
            r = Stream([*ctl, "watch", "wk", "--rev", "4", "-w", fmt]).finish()
            results[f"compacted-{fmt}"] = (r.code, normalise(r.out), error_lines(r.err))
        # a failing command
        r = Stream([*ctl, "watch", "wk", "--rev", "9", "--", "false"]).finish()
        results["exec-fails"] = (r.code, r.out, error_lines(r.err))
    finally:
        for s in streams.values():
            s.close()
    return results


def test_watch_prints_the_same_bytes(etcd: tuple[str, str], member: ProcessCluster) -> None:
    from test_cli_lease_watch import console_script

    etcdctl, etcd_endpoint = etcd
    theirs = _watch_session([etcdctl, "--endpoints", etcd_endpoint])
    mine = _watch_session([*console_script(), "--endpoints", endpoint_of(member)])
    mismatches: list[str] = []
    for name, t in theirs.items():
        same = t == mine[name]
        print(f"{'same' if same else 'DIFF'}: watch {name} -> {mine[name][0]} "
              f"{mine[name][1][:70]!r} {mine[name][2][:70]!r}")
        if not same:
            mismatches.append(f"{name}\n  etcdctl:   {t!r}\n  discoverd: {mine[name]!r}")
    print(f"compared {len(theirs)} watches")
    assert not mismatches, f"{len(mismatches)} of {len(theirs)} differ:\n" + \
        "\n".join(mismatches)



# ----------------------------------------------------------------------------- membership
#
# ``member`` and ``move-leader`` on a single-member cluster each side. Each side's ids (its
# member's, the cluster's, the members it adds), its member's name and its ports are
# replaced by names; etcdctl's ``ETCD_*`` lines of ``member add`` read ``DISCOVERD_*`` on our
# side (``serve`` reads its flags from those variables). Members are listed by id on both
# sides, and ids differ by nature, so lists are compared in the order of their names.
# Tables are compared with runs of spaces and dashes squeezed: a column's width follows its
# longest id, and an id has 15 or 16 hex digits by chance. A learner whose peer URLs were
# updated is removed before the next listing: etcd 3.4 then lists it as a voter (its update
# drops the learner flag, while raft still has it as a learner); discoverd does not copy it.

MEMBER_SCRIPT: tuple[str, ...] = (
    "member list", "member list -w json", "member list -w fields", "member list -w table",
    "member add new1 --peer-urls http://127.0.0.1:{P1} --learner",
    "member list", "member list -w json", "member list -w fields", "member list -w table",
    "member add new2 --peer-urls http://127.0.0.1:{P2} --learner",
    "member add new1 --peer-urls http://127.0.0.1:{P1}",
    "member promote {NEW1}", "member promote {SELF}", "member promote 1234",
    "member remove 1234", "member update 1234 --peer-urls http://127.0.0.1:{P2}",
    "member update {NEW1} --peer-urls http://127.0.0.1:{PEER}",
    "member update {NEW1} --peer-urls http://127.0.0.1:{P2}",
    "member remove {NEW1}", "member remove {NEW1}", "member list",
    "member update {SELF} --peer-urls http://127.0.0.1:{P3} -w json",
    "member list -w fields",
    "member update {SELF} --peer-urls http://127.0.0.1:{PEER}",
    "member add new3 --peer-urls http://127.0.0.1:{P1},http://127.0.0.1:{P2} --learner -w json",
    "member remove {NEW3} -w json",
    "member remove {SELF}",
    "move-leader {SELF}", "move-leader {SELF} -w json", "move-leader 1234",
    # argument errors: one "Error:" line each
    "member add", "member add x", "member add x y", "member add x http://y",
    "member add x --peer-urls bogus", "member remove", "member remove zz",
    "member promote zz", "member update {SELF}", "member update", "move-leader",
    "move-leader zz",
    # last: etcdctl makes these changes before refusing the format, discoverd does not
    "member update {SELF} --peer-urls http://127.0.0.1:{PEER} -w table",
    "move-leader {SELF} -w fields",
)


class _Names:
    """One side's ids and ports, and their names in the compared output."""

    def __init__(self, member_id: int, name: str, cluster_id: int,
                 ports: dict[str, int]) -> None:
        self.ids = {"SELF": member_id, "CLUSTER": cluster_id}
        self.name = name
        self.ports = ports

    def expand(self, args: str) -> str:
        return args.format(**{k: f"{v:x}" for k, v in self.ids.items()}, **self.ports)

    def learn(self, out: bytes, args: str) -> None:
        """Name the member a ``member add`` step added (``NEW1`` for ``new1``)."""
        added = re.match(rb"Member +([0-9a-f]+) added", out)
        if added is not None:
            self.ids[args.split()[2].upper()] = int(added.group(1), 16)
        elif args.startswith("member add") and out.startswith(b"{"):
            self.ids[args.split()[2].upper()] = int(json.loads(out)["member"]["ID"])

    def mask(self, data: bytes) -> bytes:
        named = {v: k for k, v in self.ids.items()}
        if data.startswith(b"{"):  # JSON: members in the order of their names
            body = json.loads(data)
            for key in ("members",):
                if isinstance(body.get(key), list):
                    body[key].sort(key=lambda m: named.get(m.get("ID"), ""))
            data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        data = data.replace(b"ETCD_", b"DISCOVERD_")
        data = re.sub(rb"\b%s\b" % re.escape(self.name.encode()), b"NAME", data)
        for name, value in sorted(self.ids.items(), key=lambda kv: -kv[1]):
            data = re.sub(rb" *\b%x\b" % value, b" " + name.encode(), data)
            data = re.sub(rb"\b%d\b" % value, name.encode(), data)
        for name, port in self.ports.items():
            data = data.replace(b":%d" % port, b":" + name.encode())
        data = normalise(data)
        if data.startswith(b"+-"):  # a table: rows by name
            data = re.sub(rb"-+", b"-", re.sub(rb" +", b" ", data))
            lines = data.split(b"\n")
            data = b"\n".join([*lines[:3], *sorted(lines[3:-2]), *lines[-2:]])
        elif data.startswith(b'"ClusterID"'):  # fields: member blocks by name
            head, _, rest = data.partition(b'"RaftTerm" : N\n')
            blocks = [b + b"\n\n" for b in rest.split(b"\n\n") if b]
            data = head + b'"RaftTerm" : N\n' + b"".join(sorted(blocks))
        elif b"_INITIAL_CLUSTER=" in data:  # member add: its cluster line by name
            data = re.sub(rb'(_INITIAL_CLUSTER=")([^"]*)', lambda m: m.group(1) + b",".join(
                sorted(m.group(2).split(b","))), data)
        elif data.startswith(b" "):  # member list, simple: lines by name
            data = b"".join(sorted(data.splitlines(keepends=True)))
        return data


def _names(ctl: list[str], endpoint: str) -> _Names:
    """A side's names: its single member's id and ports, its cluster id, and three free
    ports for the peer URLs of the members the script adds."""
    listed = run([*ctl, "--endpoints", endpoint, "member", "list", "-w", "json"])
    body = json.loads(listed.out)
    (only,) = body["members"]
    # P1 < P2 < P3 on both sides: a member's peer URLs are listed sorted.
    spare = sorted(free_port() for _ in range(3))
    ports = {"PEER": int(only["peerURLs"][0].rsplit(":", 1)[1]),
             "CLIENT": int(endpoint.rsplit(":", 1)[1]),
             **{f"P{i}": port for i, port in enumerate(spare, 1)}}
    return _Names(int(only["ID"]), only["name"], int(body["header"]["cluster_id"]), ports)


def test_member_verbs_print_the_same_bytes(
    etcd: tuple[str, str], member: ProcessCluster
) -> None:
    etcdctl, etcd_endpoint = etcd
    ours = endpoint_of(member)
    wait_for("the member to publish its client URL", lambda: b"clientURLs" in discoverd(
        ours, "member", "list", "-w", "json").out)
    theirs_names = _names([etcdctl], etcd_endpoint)
    mine_names = _names([sys.executable, "-m", "discoverd.cli"], ours)
    mismatches: list[str] = []
    for step in MEMBER_SCRIPT:
        theirs = run([etcdctl, "--endpoints", etcd_endpoint,
                      *shlex.split(theirs_names.expand(step))])
        mine = discoverd(ours, *shlex.split(mine_names.expand(step)))
        theirs_names.learn(theirs.out, step)
        mine_names.learn(mine.out, step)
        t_out, m_out = theirs_names.mask(theirs.out), mine_names.mask(mine.out)
        t_err, m_err = theirs_names.mask(error_lines(theirs.err)), mine_names.mask(mine.err)
        same = t_out == m_out and t_err == m_err and (theirs.code == 0) == (mine.code == 0)
        print(f"{'same' if same else 'DIFF'}: {step} -> {mine.code} {m_out[:70]!r} "
              f"{m_err[:70]!r}")
        if not same:
            mismatches.append(f"{step!r}\n  etcdctl:   code={theirs.code} out={t_out!r} "
                              f"err={t_err!r}\n  discoverd: code={mine.code} out={m_out!r} "
                              f"err={m_err!r}")
    print(f"compared {len(MEMBER_SCRIPT)} commands")
    assert not mismatches, f"{len(mismatches)} of {len(MEMBER_SCRIPT)} differ:\n" + \
        "\n".join(mismatches)
