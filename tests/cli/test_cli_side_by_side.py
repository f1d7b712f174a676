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

Needs ``etcd`` and ``etcdctl`` 3.4 on PATH (Debian: ``apt-get install etcd-server
etcd-client``); without them the test is skipped and says why.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
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
