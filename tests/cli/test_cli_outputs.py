"""The ``discoverd`` CLI as a subprocess against a real member, output checked byte for byte.

Every expected output below is what etcdctl 3.4.23 prints for the same commands on the same
data (seed ``foo=bar foo1=bar1 foo2=bar2 foo3=bar3``, revisions 2..5), recorded from a real
etcd; only the header's cluster id, member id and raft term are the member's own
(``Header``). ``test_cli_side_by_side`` re-runs such scripts against etcd itself when it is
installed. The printers' Go-formatting helpers are checked against etcdctl's literal output
too (the tables below were printed by etcdctl 3.4.23).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import SEED, Header, Run, discoverd, endpoint_of, started_member

from discoverd.cli.output import (
    EndpointHealth,
    EndpointStatus,
    Printer,
    go_duration,
    go_quote,
    humanize_bytes,
)
from discoverd.sdk import ResponseHeader, Status
from discoverd.testing.cluster import ProcessCluster, free_port

# ----------------------------------------------------------------------------- fixtures


class Cli:
    """The CLI bound to one seeded member."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.endpoint = endpoint_of(cluster)
        st = cluster.members[0].status()
        self.header = Header(st["header"]["cluster_id"], st["header"]["member_id"],
                             st["header"]["raft_term"])

    def __call__(self, *args: str, stdin: bytes = b"") -> Run:
        return discoverd(self.endpoint, *args, stdin=stdin)

    def ok(self, *args: str, stdin: bytes = b"") -> bytes:
        r = self(*args, stdin=stdin)
        assert r.code == 0, str(r)
        assert r.err == b"", str(r)
        return r.out

    def error(self, *args: str, stdin: bytes = b"") -> str:
        """The one stderr line of a failed command (exit code 1, nothing on stdout)."""
        r = self(*args, stdin=stdin)
        assert r.code == 1, str(r)
        assert r.out == b"", str(r)
        assert r.err.endswith(b"\n"), str(r)
        assert r.err.count(b"\n") == 1, str(r)
        assert r.err.startswith(b"Error: "), str(r)
        return r.err.decode()[len("Error: "):-1]


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    for cluster in started_member(tmp_path):
        c = Cli(cluster)
        for key, value in SEED:
            assert c.ok("put", key, value) == b"OK\n"
        yield c


# ----------------------------------------------------------------------------- get


ALL = b"foo\nbar\nfoo1\nbar1\nfoo2\nbar2\nfoo3\nbar3\n"


def test_get_simple_with_every_flag(cli: Cli) -> None:
    assert cli.ok("get", "foo") == b"foo\nbar\n"
    assert cli.ok("get", "--prefix", "foo") == ALL
    assert cli.ok("get", "foo", "foo2") == b"foo\nbar\nfoo1\nbar1\n"
    assert cli.ok("get", "--from-key", "foo1") == b"foo1\nbar1\nfoo2\nbar2\nfoo3\nbar3\n"
    assert cli.ok("get", "--prefix", "foo", "--keys-only") == b"foo\n\nfoo1\n\nfoo2\n\nfoo3\n\n"
    assert cli.ok("get", "--prefix", "foo", "--print-value-only") == b"bar\nbar1\nbar2\nbar3\n"
    assert cli.ok("get", "--prefix", "foo", "--limit", "2") == b"foo\nbar\nfoo1\nbar1\n"
    assert cli.ok("get", "--prefix", "foo", "--sort-by", "VALUE", "--order", "DESCEND") == \
        b"foo3\nbar3\nfoo2\nbar2\nfoo1\nbar1\nfoo\nbar\n"
    assert cli.ok("get", "--prefix", "foo", "--order", "DESCEND", "--limit", "2") == \
        b"foo3\nbar3\nfoo2\nbar2\n"
    assert cli.ok("get", "--prefix", "foo", "--sort-by", "CREATE", "--order", "DESCEND",
                  "--limit", "1") == b"foo3\nbar3\n"
    assert cli.ok("get", "--prefix", "foo", "--sort-by", "MODIFY") == ALL
    assert cli.ok("get", "--prefix", "foo", "--sort-by", "version", "--order", "ascend") == ALL
    assert cli.ok("get", "--prefix", "foo", "--sort-by", "KEY") == ALL
    assert cli.ok("get", "foo", "--rev", "2") == b"foo\nbar\n"
    assert cli.ok("get", "foo1", "--rev", "2") == b""
    assert cli.ok("get", "foo", "--consistency", "s") == b"foo\nbar\n"
    assert cli.ok("get", "--prefix", "", "--keys-only", "--limit", "1") == b"foo\n\n"
    assert cli.ok("get", "nokey") == b""
    # global flags may come before or after the verb, as with etcdctl
    assert cli.ok("--hex", "get", "foo") == b"\\x66\\x6f\\x6f\n\\x62\\x61\\x72\n"
    assert cli.ok("get", "foo1", "--hex", "--print-value-only") == b"\\x62\\x61\\x72\\x31\n"


def test_get_json_and_fields(cli: Cli) -> None:
    h = cli.header
    assert cli.ok("get", "foo", "-w", "json").decode() == (
        '{' + h.json(5) + ',"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,'
        '"version":1,"value":"YmFy"}],"count":1}\n')
    assert cli.ok("get", "--prefix", "foo", "--limit", "2", "--write-out=json").decode() == (
        '{' + h.json(5) + ',"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,'
        '"version":1,"value":"YmFy"},{"key":"Zm9vMQ==","create_revision":3,"mod_revision":3,'
        '"version":1,"value":"YmFyMQ=="}],"more":true,"count":4}\n')
    assert cli.ok("-w", "json", "get", "--prefix", "foo", "--keys-only").decode() == (
        '{' + h.json(5) + ',"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,'
        '"version":1},{"key":"Zm9vMQ==","create_revision":3,"mod_revision":3,"version":1},'
        '{"key":"Zm9vMg==","create_revision":4,"mod_revision":4,"version":1},'
        '{"key":"Zm9vMw==","create_revision":5,"mod_revision":5,"version":1}],"count":4}\n')
    assert cli.ok("get", "nokey", "-w", "json").decode() == '{' + h.json(5) + '}\n'
    # --hex changes nothing in JSON (bytes are base64 there) nor in fields (quoted)
    assert cli.ok("get", "foo", "--hex", "-w", "json") == cli.ok("get", "foo", "-w", "json")
    assert cli.ok("get", "foo", "-w", "fields").decode() == h.fields(5) + (
        '"Key" : "foo"\n"CreateRevision" : 2\n"ModRevision" : 2\n"Version" : 1\n'
        '"Value" : "bar"\n"Lease" : 0\n"More" : false\n"Count" : 1\n')
    assert cli.ok("get", "--prefix", "foo", "--limit", "1", "-w", "fields").decode() == \
        h.fields(5) + ('"Key" : "foo"\n"CreateRevision" : 2\n"ModRevision" : 2\n'
                       '"Version" : 1\n"Value" : "bar"\n"Lease" : 0\n"More" : true\n'
                       '"Count" : 4\n')
    assert cli.ok("get", "nokey", "-w", "fields").decode() == \
        h.fields(5) + '"More" : false\n"Count" : 0\n'
    # --count-only is etcdctl 3.5's (3.4 has no such flag): fields format only
    assert cli.ok("get", "--prefix", "foo", "--count-only", "-w", "fields").decode() == \
        h.fields(5) + '"More" : false\n"Count" : 4\n'


def test_get_errors_are_one_line(cli: Cli) -> None:
    assert cli.error("get") == \
        "get command needs one argument as key and an optional argument as range_end"
    assert cli.error("get", "foo", "--prefix", "--from-key") == \
        "`--prefix` and `--from-key` cannot be set at the same time, choose one"
    assert cli.error("get", "foo", "--consistency", "x") == 'unknown consistency flag "x"'
    assert cli.error("get", "foo", "--order", "UP") == "bad sort order UP"
    assert cli.error("get", "foo", "--sort-by", "X") == "bad sort target X"
    assert cli.error("get", "foo", "bar", "--prefix") == \
        "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
    assert cli.error("get", "foo", "--rev", "100000") == \
        "etcdserver: mvcc: required revision is a future revision"
    assert cli.error("get", "foo", "--rev", "x") == \
        'invalid argument "x" for "--rev" flag: strconv.ParseInt: parsing "x": invalid syntax'
    assert cli.error("get", "foo", "-w", "table") == "table not supported as output format"
    assert cli.error("get", "foo", "--print-value-only", "-w", "json") == \
        "print-value-only is only for `--write-out=simple`"
    assert cli.error("get", "foo", "--count-only") == \
        "--count-only is only for `--write-out=fields`"
    assert cli.error("get", "foo", "--keys-only", "--count-only", "-w", "fields") == \
        "`--keys-only` and `--count-only` cannot be set at the same time, choose one"
    assert cli.error("get", "") == "etcdserver: key is not provided"
    assert cli.error("-w", "bogus", "get", "foo") == "unsupported output format"
    assert cli.error("get", "foo", "--bogus") == "unknown flag: --bogus"
    unreachable = f"127.0.0.1:{free_port()}"
    r = discoverd(unreachable, "get", "foo", "--dial-timeout", "500ms",
                  "--command-timeout", "2s")
    assert r.code == 1, str(r)
    assert r.out == b"", str(r)
    assert r.err.count(b"\n") == 1, str(r)
    assert r.err.startswith(b"Error: "), str(r)
    assert unreachable.encode() in r.err, str(r)


# ----------------------------------------------------------------------------- put, del


def test_put_and_del(cli: Cli) -> None:
    h = cli.header
    assert cli.ok("put", "foo", "baz") == b"OK\n"                                    # rev 6
    assert cli.ok("put", "foo", "qux", "--prev-kv") == b"OK\nfoo\nbaz\n"             # rev 7
    assert cli.ok("put", "foo2", "v", "-w", "json").decode() == '{' + h.json(8) + '}\n'
    assert cli.ok("put", "foo3", "w", "--prev-kv", "-w", "json").decode() == (
        '{' + h.json(9) + ',"prev_kv":{"key":"Zm9vMw==","create_revision":5,'
        '"mod_revision":5,"version":1,"value":"YmFyMw=="}}\n')
    assert cli.ok("put", "foo1", "x", "--prev-kv", "-w", "fields").decode() == h.fields(10) + (
        '"PrevKey" : "foo1"\n"PrevCreateRevision" : 3\n"PrevModRevision" : 3\n'
        '"PrevVersion" : 1\n"PrevValue" : "bar1"\n"PrevLease" : 0\n')
    assert cli.ok("put", "--hex", "foo1", "z", "--prev-kv") == b"OK\n\\x66\\x6f\\x6f\\x31\n\\x78\n"
    # the value from stdin, all of it (trailing newline included), as etcdctl
    assert cli.ok("put", "stdinkey", stdin=b"hello\n") == b"OK\n"                   # rev 12
    assert cli.ok("get", "stdinkey") == b"stdinkey\nhello\n\n"
    assert cli.ok("put", "foo", "--ignore-value") == b"OK\n"                         # rev 13
    assert cli.ok("get", "foo", "-w", "fields").decode() == h.fields(13) + (
        '"Key" : "foo"\n"CreateRevision" : 2\n"ModRevision" : 13\n"Version" : 4\n'
        '"Value" : "qux"\n"Lease" : 0\n"More" : false\n"Count" : 1\n')
    assert cli.ok("put", "--", "dash", "-value") == b"OK\n"                          # rev 14
    assert cli.ok("get", "dash", "--print-value-only") == b"-value\n"
    # bytes that are not UTF-8 go through unchanged and are quoted as Go's %q in fields
    assert cli.ok("put", "bin", stdin=b"\xff\x00a\tb\"") == b"OK\n"                 # rev 15
    assert cli.ok("get", "bin", "--print-value-only") == b"\xff\x00a\tb\"\n"
    assert b'"Value" : "\\xff\\x00a\\tb\\""\n' in cli.ok("get", "bin", "-w", "fields")

    assert cli.ok("del", "nokey") == b"0\n"
    assert cli.ok("del", "nokey", "-w", "json").decode() == '{' + h.json(15) + '}\n'
    assert cli.ok("del", "nokey", "-w", "fields").decode() == h.fields(15) + '"Deleted" : 0\n'
    assert cli.ok("del", "dash") == b"1\n"                                           # rev 16
    assert cli.ok("del", "stdinkey", "--prev-kv") == b"1\nstdinkey\nhello\n\n"       # rev 17
    assert cli.ok("del", "foo1", "foo3", "--prev-kv", "-w", "json").decode() == (  # rev 18
        '{' + h.json(18) + ',"deleted":2,"prev_kvs":[{"key":"Zm9vMQ==","create_revision":3,'
        '"mod_revision":11,"version":3,"value":"eg=="},{"key":"Zm9vMg==","create_revision":4,'
        '"mod_revision":8,"version":2,"value":"dg=="}]}\n')
    assert cli.ok("del", "--from-key", "foo3", "--prev-kv", "-w", "fields").decode() == \
        h.fields(19) + ('"Deleted" : 1\n"PrevKey" : "foo3"\n"PrevCreateRevision" : 5\n'
                        '"PrevModRevision" : 9\n"PrevVersion" : 2\n"PrevValue" : "w"\n'
                        '"PrevLease" : 0\n')
    assert cli.ok("del", "--prefix", "") == b"2\n"                                   # bin, foo
    assert cli.ok("get", "--prefix", "", "-w", "json").decode() == '{' + h.json(20) + '}\n'


def test_put_and_del_errors(cli: Cli) -> None:
    needs = "put command needs 1 argument and input from stdin or 2 arguments"
    assert cli.error("put") == needs
    assert cli.error("put", "emptystdin") == needs
    assert cli.error("put", "nokey", "--ignore-value") == "etcdserver: key not found"
    assert cli.error("put", "nokey", "v", "--ignore-lease") == "etcdserver: key not found"
    assert cli.error("put", "foo", "v", "--lease", "zz") == \
        'bad lease ID (strconv.ParseInt: parsing "zz": invalid syntax), expecting ID in Hex'
    assert cli.error("put", "foo", "v", "--ignore-value") == \
        "put command needs only 1 argument when 'ignore-value' is set"
    assert cli.error("put", "foo", "v", "-w", "table") == "table not supported as output format"
    dels = "del command needs one argument as key and an optional argument as range_end"
    assert cli.error("del") == dels
    assert cli.error("del", "a", "b", "c") == dels
    assert cli.error("del", "foo", "--prefix", "--from-key") == \
        "`--prefix` and `--from-key` cannot be set at the same time, choose one"
    assert cli.error("del", "foo", "bar", "--from-key") == \
        "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
    assert cli.ok("get", "--prefix", "foo") == ALL  # nothing was written by the failures


# ----------------------------------------------------------------------------- txn


def test_txn_both_branches_every_format(cli: Cli) -> None:
    h = cli.header
    # A read before the txn's first write sees the revision the txn started at; after it,
    # the txn's own revision (etcd's storeTxnWrite.Range).
    assert cli.ok("txn", stdin=b'value("foo") = "bar""\n\nput x "hello world"\nget foo\n'
                               b"del nokey\n\nput y 1\n\n") == \
        b"SUCCESS\n\nOK\n\nfoo\nbar\n\n0\n"                                           # rev 6
    assert cli.ok("txn", stdin=b'value("foo") = "nope"\n\nput x 1\n\nput y 1\n'
                               b"get foo --prefix --keys-only\n\n") == \
        b"FAILURE\n\nOK\n\nfoo\n\nfoo1\n\nfoo2\n\nfoo3\n\n"                          # rev 7
    assert cli.ok("txn", "-w", "json", stdin=b'mod("foo") > "0"\nversion("foo") != "0"\n\n'
                                             b"get foo\nput x 2 --prev-kv\n\n\n").decode() == (
        '{' + h.json(8) + ',"succeeded":true,"responses":[{"Response":{"ResponseRange":'
        '{"header":{"revision":7},"kvs":[{"key":"Zm9v","create_revision":2,"mod_revision":2,'
        '"version":1,"value":"YmFy"}],"count":1}}},{"Response":{"ResponsePut":{"header":'
        '{"revision":8},"prev_kv":{"key":"eA==","create_revision":6,"mod_revision":6,'
        '"version":1,"value":"aGVsbG8gd29ybGQ="}}}}]}\n')
    assert cli.ok("txn", "-w", "json", stdin=b'create("foo") < "1"\n\n\n'
                                             b"del y --prev-kv\n\n").decode() == (
        '{' + h.json(9) + ',"responses":[{"Response":{"ResponseDeleteRange":{"header":'
        '{"revision":9},"deleted":1,"prev_kvs":[{"key":"eQ==","create_revision":7,'
        '"mod_revision":7,"version":1,"value":"MQ=="}]}}}]}\n')
    assert cli.ok("txn", "-w", "fields", stdin=b'val("x") = "2"\nver("x") = "2"\n'
                                               b'c("x") > "0"\nm("x") > "0"\n\n'
                                               b"put x 3\nget x\n\n\n").decode() == (
        h.fields(10) + '"Succeeded" : true\n'
        '"ClusterID" : 0\n"MemberID" : 0\n"Revision" : 10\n"RaftTerm" : 0\n'
        '"ClusterID" : 0\n"MemberID" : 0\n"Revision" : 10\n"RaftTerm" : 0\n'
        '"Key" : "x"\n"CreateRevision" : 6\n"ModRevision" : 10\n"Version" : 3\n'
        '"Value" : "3"\n"Lease" : 0\n"More" : false\n"Count" : 1\n')
    # -i prints etcdctl's prompts; a key's lease compares in hexadecimal (0: none)
    assert cli.ok("txn", "-i", stdin=b'lease("x") = "0"\n\nget x --print-value-only\n\n'
                                     b"put x 9\n\n") == \
        b"compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n" \
        b"SUCCESS\n\nx\n3\n"
    assert cli.ok("txn", "--hex", stdin=b'value("x") = "3"\n\nput x 4 --prev-kv\n\n\n') == \
        b"SUCCESS\n\nOK\n\\x78\n\\x33\n"
    assert cli.ok("txn", stdin=b"\n\n\n") == b"SUCCESS\n"
    assert cli.ok("txn", stdin=b'  value("x")   =   "4"  trailing\n\n'
                               b'put \t "q r" "s\\tt" \n\n\n') == b"SUCCESS\n\nOK\n"
    assert cli.ok("get", "q r", "--print-value-only") == b"s\tt\n"


def test_txn_errors(cli: Cli) -> None:
    assert cli.error("txn", "arg") == "txn command does not accept argument"
    assert cli.error("txn") == "EOF"
    assert cli.error("txn", stdin=b'value("foo") = "v"\n\nput x 1\n') == "EOF"
    assert cli.error("txn", stdin=b'bogus("foo") = "1"\n\n\n') == \
        'malformed comparison: bogus("foo") = "1" (unknown target bogus)'
    assert cli.error("txn", stdin=b"foo\n\n\n") == "malformed comparison: foo"
    assert cli.error("txn", stdin=b'value("foo")="v"\n\n\n\n') == \
        'malformed comparison: value("foo")="v"; got value("foo")  ""'
    assert cli.error("txn", stdin=b'version("foo") = "x"\n\n\n') == \
        'invalid txn compare request: version("foo") = "x"'
    assert cli.error("txn", stdin=b'value("foo") >= "v"\n\n\n') == \
        'malformed comparison: value("foo") >= "v" (unknown operator >=)'
    assert cli.error("txn", stdin=b"\nfrob x\n\n\n") == "invalid txn request: frob x"
    assert cli.error("txn", stdin=b"\nfrob\n\n\n") == "invalid txn compare request: frob"
    assert cli.error("txn", stdin=b"\nget a --bogus\n\n\n") == \
        "invalid txn request: get a --bogus"
    assert cli.error("txn", stdin=b"\nput a b\nput a c\n\n\n") == \
        "etcdserver: duplicate key given in txn request"
    assert cli.ok("get", "a") == b""


# ----------------------------------------------------------------------------- compaction


def test_compaction(cli: Cli) -> None:
    assert cli.ok("compaction", "3") == b"compacted revision 3\n"
    assert cli.ok("compaction", "4", "--physical", "-w", "json") == b"compacted revision 4\n"
    assert cli.error("get", "foo", "--rev", "2") == \
        "etcdserver: mvcc: required revision has been compacted"
    assert cli.ok("get", "foo", "--rev", "4") == b"foo\nbar\n"
    assert cli.error("compaction", "3") == \
        "etcdserver: mvcc: required revision has been compacted"
    assert cli.error("compaction", "100000") == \
        "etcdserver: mvcc: required revision is a future revision"
    assert cli.error("compaction", "abc") == 'strconv.ParseInt: parsing "abc": invalid syntax'
    assert cli.error("compaction") == "compaction command needs 1 argument"


# ----------------------------------------------------------------------------- endpoint


def test_endpoint_status_and_health(cli: Cli) -> None:
    st = cli.cluster.members[0].status()
    ep = cli.endpoint
    member = f"{st['header']['member_id']:x}"
    row = re.compile(rf"{re.escape(ep)}, {member}, {re.escape(st['version'])}, "
                     r"\d+(\.\d)? [kMG]?B, true, false, \d+, \d+, \d+, \n")
    assert row.fullmatch(cli.ok("endpoint", "status").decode())
    table = cli.ok("endpoint", "status", "-w", "table").decode().splitlines()
    assert len(table) == 5
    assert table[0] == table[2] == table[4]
    assert re.fullmatch(r"\| +ENDPOINT +\| +ID +\| VERSION \| DB SIZE \| IS LEADER \| "
                        r"IS LEARNER \| RAFT TERM \| RAFT INDEX \| RAFT APPLIED INDEX \| "
                        r"ERRORS \|", table[1])
    assert table[3].startswith(f"| {ep} | {member} |")
    assert "|      true |" in table[3]
    status_json = cli.ok("endpoint", "status", "-w", "json").decode()
    assert status_json.startswith(f'[{{"Endpoint":"{ep}","Status":{{"header":{{"cluster_id":'
                                  f'{st["header"]["cluster_id"]},"member_id":')
    assert f'"version":"{st["version"]}"' in status_json
    fields = cli.ok("endpoint", "status", "-w", "fields").decode()
    assert f'"Endpoint" : "{ep}"\n\n' in fields
    assert '"IsLearner" : false\n' in fields

    r = cli("endpoint", "health")
    assert r.code == 0, str(r)
    assert r.out == b"", str(r)  # the simple format goes to stderr, as etcdctl
    assert re.fullmatch(rf"{re.escape(ep)} is healthy: successfully committed proposal: "
                        r"took = [0-9.]+(µs|ms|s)\n", r.err.decode())
    assert re.fullmatch(rf'\[{{"endpoint":"{re.escape(ep)}","health":true,'
                        r'"took":"[0-9.]+(µs|ms|s)"}\]\n',
                        cli.ok("endpoint", "health", "-w", "json").decode())

    dead = f"127.0.0.1:{free_port()}"
    both = f"{ep},{dead}"
    r = discoverd(both, "endpoint", "status", "--command-timeout", "2s")
    assert r.code == 1, str(r)
    assert row.fullmatch(r.out.decode()), str(r)
    assert r.err.startswith(f"Failed to get the status of endpoint {dead} (".encode())
    assert r.err.count(b"\n") == 1, str(r)
    r = discoverd(both, "endpoint", "health", "-w", "json", "--command-timeout", "2s")
    assert r.code == 1, str(r)
    assert r.err == b"Error: unhealthy cluster\n", str(r)
    assert r.out.startswith(f'[{{"endpoint":"{ep}","health":true,'.encode())
    assert f'{{"endpoint":"{dead}","health":false,"took":"'.encode() in r.out


# ----------------------------------------------------------------------------- Go formatting


def _status(member_id: int, leader: int, version: str, db_size: int, term: int, index: int
            ) -> Status:
    return Status(endpoint="", header=ResponseHeader(1, member_id, 5, term), name="",
                  version=version, leader=leader, role="", raft_term=term, raft_index=index,
                  commit_index=index, raft_applied_index=index, voters=(), learners=(),
                  db_size=db_size)


def test_tables_match_etcdctl_literally() -> None:
    """The tables etcdctl 3.4.23 printed for these values, byte for byte."""
    me = 0x8E9E05C52164694D
    status = EndpointStatus("127.0.0.1:23791", _status(me, me, "3.4.23", 20480, 2, 8))
    assert Printer("table").endpoint_status([status]).decode() == (
        "+-----------------+------------------+---------+---------+-----------+------------+"
        "-----------+------------+--------------------+--------+\n"
        "|    ENDPOINT     |        ID        | VERSION | DB SIZE | IS LEADER | IS LEARNER |"
        " RAFT TERM | RAFT INDEX | RAFT APPLIED INDEX | ERRORS |\n"
        "+-----------------+------------------+---------+---------+-----------+------------+"
        "-----------+------------+--------------------+--------+\n"
        "| 127.0.0.1:23791 | 8e9e05c52164694d |  3.4.23 |   20 kB |      true |      false |"
        "         2 |          8 |                  8 |        |\n"
        "+-----------------+------------------+---------+---------+-----------+------------+"
        "-----------+------------+--------------------+--------+\n")
    assert Printer("simple").endpoint_status([status]) == \
        b"127.0.0.1:23791, 8e9e05c52164694d, 3.4.23, 20 kB, true, false, 2, 8, 8, \n"
    healths = [EndpointHealth("127.0.0.1:23791", True, 5_321_545),
               EndpointHealth("127.0.0.1:23791", True, 6_304_100),
               EndpointHealth("127.0.0.1:1", False, 5_000_726_079, "context deadline exceeded")]
    out, err = Printer("table").endpoint_health(healths)
    assert err == b""
    assert out.decode() == (
        "+-----------------+--------+--------------+---------------------------+\n"
        "|    ENDPOINT     | HEALTH |     TOOK     |           ERROR           |\n"
        "+-----------------+--------+--------------+---------------------------+\n"
        "| 127.0.0.1:23791 |   true |   5.321545ms |                           |\n"
        "| 127.0.0.1:23791 |   true |     6.3041ms |                           |\n"
        "|     127.0.0.1:1 |  false | 5.000726079s | context deadline exceeded |\n"
        "+-----------------+--------+--------------+---------------------------+\n")
    out, err = Printer("json").endpoint_health(healths[2:])
    assert out == b'[{"endpoint":"127.0.0.1:1","health":false,"took":"5.000726079s",' \
                  b'"error":"context deadline exceeded"}]\n'
    out, err = Printer("fields").endpoint_health(healths[:1])
    assert out == b'"Endpoint" : "127.0.0.1:23791"\n"Health" : true\n"Took" : 5.321545ms\n' \
                  b'"Error" : \n\n'


def test_go_formatting_helpers() -> None:
    assert [humanize_bytes(n) for n in (0, 9, 10, 999, 1000, 1500, 20480, 16384, 2_500_000)] \
        == ["0 B", "9 B", "10 B", "999 B", "1.0 kB", "1.5 kB", "20 kB", "16 kB", "2.5 MB"]
    assert [go_duration(n) for n in (0, 999, 1_000, 1_500, 2_206_324, 1_000_000_000,
                                     90_000_000_000, 3_723_500_000_000)] == \
        ["0s", "999ns", "1µs", "1.5µs", "2.206324ms", "1s", "1m30s", "1h2m3.5s"]
    assert go_quote(b"foo") == '"foo"'
    assert go_quote(b'a"b\\c\n\t\x00\x7f\xff') == '"a\\"b\\\\c\\n\\t\\x00\\x7f\\xff"'
    assert go_quote("é€😀\u200b".encode()) == '"é€😀\\u200b"'
