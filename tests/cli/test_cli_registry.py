"""``discoverd services ...`` and ``discoverd config ...`` end to end (issue 6): the console
script as a subprocess against a real member, outputs checked byte for byte.

One member serves the whole module (heartbeat 100 ms, election 1 s: the minimum lease TTL
is then 2 s, so a killed registration is gone within ~3 s); each test uses its own service
and config names. Foreground commands (``services register``, ``services watch``) run as
``Stream``s and every wait is for their output, bounded by a deadline — never a bare sleep.

The issue's "same violations on every path": an invalid document is refused with the same
stderr, byte for byte, through ``config put``, a raw ``put``, a ``txn`` (and ``config
validate``), and the stored document and its history are unchanged afterwards.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Run, clean_env, endpoint_of
from test_cli_lease_watch import Stream, console_script

from discoverd.cli.output import error_report, render_table
from discoverd.errors import ValidationError
from discoverd.testing.cluster import ProcessCluster

TTL = 2  # seconds: the member's minimum (ceil(1.5 x 1 s election timeout))
ELECTION_S = 1.0


class Cli:
    def __init__(self, endpoint: str, tmp: Path) -> None:
        self.endpoint = endpoint
        self.tmp = tmp
        self.streams: list[Stream] = []

    def __call__(self, *args: str, stdin: bytes = b"") -> Run:
        argv = [sys.executable, "-m", "discoverd.cli", "--endpoints", self.endpoint, *args]
        # config get keeps the last copy it read: in the test's directory, not in ~/.cache
        env = {**clean_env(), "DISCOVERD_CACHE_DIR": str(self.tmp / "cache")}
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=30, env=env,
                              check=False)
        return Run(tuple(argv), proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, stdin: bytes = b"") -> str:
        r = self(*args, stdin=stdin)
        assert r.code == 0, str(r)
        assert r.err == b"", str(r)
        return r.out.decode()

    def fails(self, *args: str, stdin: bytes = b"") -> str:
        """stderr of a command that must fail with exit code 1 and print nothing."""
        r = self(*args, stdin=stdin)
        assert r.code == 1, str(r)
        assert r.out == b"", str(r)
        assert r.err.startswith(b"Error: "), str(r)
        return r.err.decode()

    def stream(self, *args: str) -> Stream:
        s = Stream([*console_script(), "--endpoints", self.endpoint, *args])
        self.streams.append(s)
        return s

    def file(self, name: str, content: str | object) -> str:
        path = self.tmp / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("registry-member")
    cluster = ProcessCluster(root, 1, heartbeat_ms=100, election_ms=int(ELECTION_S * 1000))
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        yield endpoint_of(cluster)
    finally:
        cluster.close()


@pytest.fixture
def cli(member: str, tmp_path: Path) -> Iterator[Cli]:
    c = Cli(member, tmp_path)
    try:
        yield c
    finally:
        for s in c.streams:
            s.close()


def instance(service: str, id_: str, **fields: object) -> str:
    obj: dict[str, object] = {"service": service, "id": id_, "address": "10.0.0.9", "port": 80,
                              "tags": [], "meta": {}, "weight": 1, "zone": "", "version": "",
                              "health": "passing", "registered_at": 1.5}
    obj.update(fields)
    return json.dumps(obj)


# ----------------------------------------------------------------------------- services


def test_register_list_every_format_then_kill_9_seen_by_watch(cli: Cli) -> None:
    watch = cli.stream("services", "watch", "api")
    reg = cli.stream("services", "register", "api", "--id", "i1", "--address", "10.0.0.1",
                     "--port", "8080", "--ttl", str(TTL), "--tag", "web", "--tag", "blue",
                     "--meta", "team=core", "--zone", "z1", "--weight", "3",
                     "--version", "1.2.3")
    out = reg.wait_out(b")\n", "the registered line")
    m = re.fullmatch(rb"registered api/i1 \(lease ([0-9a-f]{16}), ttl 2\)\n", out)
    assert m is not None, out
    lease = m.group(1).decode()

    # the stored record, as DESIGN §7 lays it out, on the lease
    raw = cli.ok("get", "--prefix", "/services/api/").splitlines()
    assert raw[0] == "/services/api/i1"
    stored = json.loads(raw[1])
    assert stored == {"service": "api", "id": "i1", "address": "10.0.0.1", "port": 8080,
                      "tags": ["web", "blue"], "meta": {"team": "core"}, "weight": 3,
                      "zone": "z1", "version": "1.2.3", "health": "passing",
                      "registered_at": stored["registered_at"]}
    assert "attached keys([/services/api/i1])" in cli.ok(
        "lease", "timetolive", lease, "--keys")

    assert cli.ok("services", "list", "api") == "api i1 10.0.0.1:8080 passing\n"
    assert json.loads(cli.ok("services", "list", "api", "-w", "json")) == [stored]
    assert cli.ok("services", "list", "api", "-w", "table") == render_table(
        ("SERVICE", "ID", "ADDRESS", "PORT", "HEALTH", "ZONE", "VERSION", "TAGS"),
        [["api", "i1", "10.0.0.1", "8080", "passing", "z1", "1.2.3", "web,blue"]])
    assert cli.ok("services", "list", "api", "--tag", "web", "--meta", "team=core") == \
        "api i1 10.0.0.1:8080 passing\n"
    assert cli.ok("services", "list", "api", "--tag", "green") == ""

    added = watch.wait_out(b" + i1 ", "the watch's + line")
    m = re.fullmatch(rb"\[(\d+)\] \+ i1 10\.0\.0\.1:8080 passing\n", added)
    assert m is not None, added
    added_rev = int(m.group(1))

    reg.proc.kill()  # kill -9: no deregistration; the lease must run out
    killed = time.monotonic()
    out = watch.wait_out(lambda o: b" - i1\n" in o, "the watch's - line",
                         timeout=TTL + ELECTION_S + 10)
    gone_after = time.monotonic() - killed
    m = re.fullmatch(rb"\[\d+\] \+ i1 [^\n]*\n\[(\d+)\] - i1\n", out)
    assert m is not None, out
    assert int(m.group(1)) > added_rev
    assert gone_after < TTL + ELECTION_S + 1.5, gone_after
    assert cli.ok("services", "list", "api", "--all") == ""


def test_register_deregisters_at_once_on_sigterm_and_ctrl_c(cli: Cli) -> None:
    for sig, id_ in ((signal.SIGTERM, "t1"), (signal.SIGINT, "c1")):
        reg = cli.stream("services", "register", "stop", "--id", id_, "--address", "h",
                         "--ttl", "60")
        reg.wait_out(b")\n", "the registered line")
        assert cli.ok("services", "list", "stop") == f"stop {id_} h passing\n"
        reg.proc.send_signal(sig)
        done = reg.finish()
        assert done.code == 0, str(done)
        assert done.err == b"", str(done)
        assert re.fullmatch(rf"registered stop/{id_} \(lease [0-9a-f]{{16}}, ttl 60\)\n"
                            rf"deregistered stop/{id_}\n".encode(), done.out), str(done)
        # at once: the key and its lease are gone already, not in 60 s
        assert cli.ok("services", "list", "stop", "--all") == ""
        assert cli.ok("lease", "list") == "found 0 leases\n"


def test_register_says_so_when_it_registers_again_on_a_new_lease(cli: Cli) -> None:
    reg = cli.stream("services", "register", "lost", "--id", "l1", "--ttl", str(TTL))
    out = reg.wait_out(b")\n", "the registered line")
    m = re.fullmatch(rb"registered lost/l1 \(lease ([0-9a-f]{16}), ttl 2\)\n", out)
    assert m is not None, out
    old = m.group(1).decode()
    cli.ok("lease", "revoke", old)  # the instance is gone with it, until re-registered
    out = reg.wait_out(b"again", "the re-registered line")
    m = re.fullmatch(rf"registered [^\n]*\nlease {old} lost: registered lost/l1 again "
                     rf"\(lease ([0-9a-f]{{16}}), ttl 2\)\n".encode(), out)
    assert m is not None, out
    new = m.group(1).decode()
    assert new != old
    assert "attached keys([/services/lost/l1])" in cli.ok("lease", "timetolive", new, "--keys")
    reg.proc.send_signal(signal.SIGTERM)
    done = reg.finish()
    assert done.code == 0, str(done)
    assert done.out.endswith(b"deregistered lost/l1\n"), str(done)
    assert cli.ok("services", "list", "lost", "--all") == ""


def test_register_defaults_and_errors(cli: Cli) -> None:
    reg = cli.stream("services", "register", "dflt")
    out = reg.wait_out(b")\n", "the registered line")
    m = re.fullmatch(rb"registered dflt/([^ ]+) \(lease [0-9a-f]{16}, ttl 10\)\n", out)
    assert m is not None, out
    listed = json.loads(cli.ok("services", "list", "dflt", "-w", "json"))
    assert [(i["id"], i["port"], i["health"]) for i in listed] == \
        [(m.group(1).decode(), None, "passing")]
    assert listed[0]["address"]  # the host's primary address
    reg.interrupt()

    assert cli.fails("services", "register", "x", "--meta", "novalue") == \
        "Error: bad --meta 'novalue': expected KEY=VALUE\n"
    err = cli.fails("services", "register", "x", "--id", "i", "--port", "70000")
    assert err == ("Error: validation failed: 1 violation(s)\n"
                   "  /services/x/i /port: 'port' must be an integer in 0..65535 or null, "
                   "got 70000\n")
    assert cli.fails("services", "list", "-w", "fields") == \
        "Error: fields not supported as output format\n"


def test_list_health_tags_meta_and_every_service(cli: Cli) -> None:
    cli.ok("put", "/services/web/a", instance("web", "a", tags=["x", "y"], meta={"k": "1"}))
    cli.ok("put", "/services/web/b", instance("web", "b", health="draining", port=None,
                                               address=""))
    cli.ok("put", "/services/web/c", instance("web", "c", health="warning",
                                               address="::1", tags=["y"]))
    cli.ok("put", "/services/worker/w", instance("worker", "w", address="10.0.0.2",
                                                 port=9000))
    assert cli.ok("services", "list", "web") == "web a 10.0.0.9:80 passing\n"
    assert cli.ok("services", "list", "web", "--all") == (
        "web a 10.0.0.9:80 passing\nweb b - draining\nweb c [::1]:80 warning\n")
    assert cli.ok("services", "list", "web", "--all", "--tag", "y") == (
        "web a 10.0.0.9:80 passing\nweb c [::1]:80 warning\n")
    assert cli.ok("services", "list", "web", "--all", "--tag", "y", "--tag", "x",
                  "--meta", "k=1") == "web a 10.0.0.9:80 passing\n"
    assert cli.ok("services", "list", "web", "--meta", "k=2") == ""
    # no NAME: every service (the other tests' may be there too)
    every = cli.ok("services", "list", "--all").splitlines()
    assert [line for line in every if line.startswith(("web ", "worker "))] == [
        "web a 10.0.0.9:80 passing", "web b - draining", "web c [::1]:80 warning",
        "worker w 10.0.0.2:9000 passing"]
    assert "web b" not in cli.ok("services", "list")


def test_watch_prints_added_updated_removed_with_revisions(cli: Cli) -> None:
    cli.ok("put", "/services/pay/p1", instance("pay", "p1"))
    watch = cli.stream("services", "watch", "pay")
    watch.wait_out(b"+ p1 ", "the initial set")
    cli.ok("put", "/services/pay/p2", instance("pay", "p2", address="10.0.0.3", port=81))
    cli.ok("put", "/services/pay/p1", instance("pay", "p1", health="draining"))
    cli.ok("del", "/services/pay/p2")
    out = watch.wait_out(b"- p2\n", "the - line")
    revs = [int(r) for r in re.findall(rb"^\[(\d+)\]", out, re.MULTILINE)]
    text = re.sub(rb"^\[\d+\]", b"[R]", out, flags=re.MULTILINE).decode()
    assert text == ("[R] + p1 10.0.0.9:80 passing\n"
                    "[R] + p2 10.0.0.3:81 passing\n"
                    "[R] ~ p1 10.0.0.9:80 draining\n"
                    "[R] - p2\n")
    assert revs[0] < revs[1] < revs[2] < revs[3]
    watch.proc.send_signal(signal.SIGINT)
    assert watch.finish().code == -signal.SIGINT


# ----------------------------------------------------------------------------- config

SCHEMA = {
    "type": "object",
    "properties": {"port": {"type": "integer"}, "name": {"type": "string"},
                   "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name"],
    "additionalProperties": False,
}
BAD = '{"port": "x", "extra": 1}'
VIOLATIONS = ("Error: validation failed: 3 violation(s)\n"
              "  /config/{name}: 'name' is a required property\n"
              "  /config/{name}: Additional properties are not allowed ('extra' was "
              "unexpected)\n"
              "  /config/{name} /port: 'x' is not of type 'integer'\n")


def history(cli: Cli, name: str) -> list[list[str]]:
    return [line.split(" ") for line in cli.ok("config", "history", name).splitlines()]


def test_an_invalid_document_is_refused_alike_on_every_path(cli: Cli) -> None:
    cli.ok("config", "schema-set", "app", cli.file("schema.json", SCHEMA))
    good = {"name": "a", "port": 1}
    cli.ok("config", "put", "app", cli.file("good.json", good))
    before = cli.ok("get", "/config/app", "-w", "json")
    before_history = history(cli, "app")
    expected = VIOLATIONS.format(name="app")

    # config put (a file, and stdin)
    assert cli.fails("config", "put", "app", cli.file("bad.json", BAD)) == expected
    assert cli.fails("config", "put", "app", "-", stdin=BAD.encode()) == expected
    # a raw put
    assert cli.fails("put", "/config/app", BAD) == expected
    # a txn
    txn = f"\nput /config/app '{BAD}'\n\n\n".encode()
    assert cli.fails("txn", stdin=txn) == expected
    # the dry run says the same, and a valid document is "valid"
    assert cli.fails("config", "validate", "app", cli.file("bad2.json", BAD)) == expected
    assert cli.ok("config", "validate", "app", cli.file("good2.json", {"name": "b"})) == \
        "valid\n"

    # nothing was committed: same document, same revision, same history
    assert cli.ok("get", "/config/app", "-w", "json") == before
    assert history(cli, "app") == before_history
    assert json.loads(cli.ok("config", "get", "app")) == good


def test_config_put_get_history_diff_rollback(cli: Cli) -> None:
    assert cli.ok("config", "schema-set", "svc", cli.file("s.json", SCHEMA)) == "OK\n"
    assert json.loads(cli.ok("config", "schema-get", "svc")) == SCHEMA
    assert cli.ok("config", "schema-get", "svc", "-w", "json") == \
        json.dumps(SCHEMA, separators=(",", ":")) + "\n"

    out = cli.ok("config", "put", "svc", cli.file("v1.json", '{"name": "api", "port": 80}'))
    m = re.fullmatch(r"svc: generation 1, revision (\d+)\n", out)
    assert m is not None, out
    rev1 = int(m.group(1))
    toml = cli.file("v2.toml", 'name = "api"\nport = 8080\ntags = ["a", "b"]\n')
    out = cli.ok("config", "put", "svc", toml, "-w", "json")
    v2 = json.loads(out)
    assert (v2["name"], v2["generation"]) == ("svc", 2)
    assert v2["revision"] > rev1

    assert cli.ok("config", "get", "svc") == (
        '{\n  "name": "api",\n  "port": 8080,\n  "tags": [\n    "a",\n    "b"\n  ]\n}\n')
    assert json.loads(cli.ok("config", "get", "svc", "-w", "json")) == {
        "name": "svc", "generation": 2, "revision": v2["revision"], "stale": False,
        "document": {"name": "api", "port": 8080, "tags": ["a", "b"]}}
    # earlier generations, by generation or by revision
    assert json.loads(cli.ok("config", "get", "svc", "--gen", "1")) == \
        {"name": "api", "port": 80}
    assert json.loads(cli.ok("config", "get", "svc", "--rev", str(v2["revision"] - 1))) == \
        {"name": "api", "port": 80}
    assert json.loads(cli.ok("config", "get", "svc", "--rev", str(rev1), "-w", "json")) == {
        "name": "svc", "generation": 1, "revision": rev1, "stale": False,
        "document": {"name": "api", "port": 80}}

    assert cli.ok("config", "diff", "svc", "1", "2") == (
        "--- svc@1\n+++ svc@2\n@@ -1,4 +1,8 @@\n {\n"
        '   "name": "api",\n-  "port": 80\n+  "port": 8080,\n+  "tags": [\n'
        '+    "a",\n+    "b"\n+  ]\n }\n')
    assert cli.ok("config", "diff", "svc", "2", "2") == ""

    out = cli.ok("config", "rollback", "svc", "1")
    m = re.fullmatch(r"svc: generation 3, revision (\d+)\n", out)
    assert m is not None, out
    rev3 = int(m.group(1))
    assert json.loads(cli.ok("config", "get", "svc")) == {"name": "api", "port": 80}

    hist = history(cli, "svc")
    assert [h[:2] for h in hist] == [["3", str(rev3)], ["2", str(v2["revision"])],
                                     ["1", str(rev1)]]
    assert hist[0][2] == hist[2][2] != hist[1][2]  # generation 3 is generation 1 again
    assert all(re.fullmatch(r"[0-9a-f]{12}", h[2]) for h in hist)
    table = cli.ok("config", "history", "svc", "-w", "table").splitlines()
    assert table[1].split() == ["|", "GENERATION", "|", "REVISION", "|", "DELETED", "|",
                                "DIGEST", "|"]
    assert table[3].split() == ["|", "3", "|", str(rev3), "|", "false", "|", hist[0][2], "|"]
    as_json = json.loads(cli.ok("config", "history", "svc", "-w", "json"))
    assert [e["generation"] for e in as_json] == [3, 2, 1]
    assert as_json[1]["document"] == {"name": "api", "port": 8080, "tags": ["a", "b"]}

    # a delete is a generation too
    cli.ok("del", "/config/svc")
    assert history(cli, "svc")[0][::2] == ["4", "deleted"]
    assert cli.ok("config", "diff", "svc", "3", "4") == (
        '--- svc@3\n+++ svc@4 (deleted)\n@@ -1,4 +0,0 @@\n-{\n-  "name": "api",\n'
        '-  "port": 80\n-}\n')
    assert cli.fails("config", "get", "svc", "--gen", "4") == \
        f"Error: config svc was deleted at revision {int(history(cli, 'svc')[0][1])} " \
        "(generation 4)\n"
    assert cli.fails("config", "diff", "svc", "1", "9") == \
        "Error: generation 9 of svc is not in its history (kept: 1..4)\n"
    assert cli.fails("config", "get", "svc", "--rev", str(rev1 - 1)) == (
        f"Error: no generation of svc at or before revision {rev1 - 1} (oldest kept: "
        f"generation 1 at revision {rev1})\n")


def test_a_schema_the_current_document_fails_is_refused(cli: Cli) -> None:
    cli.ok("config", "put", "loose", cli.file("d.json", {"port": "x", "extra": 1}))
    assert cli.fails("config", "schema-set", "loose", cli.file("s.json", SCHEMA)) == \
        VIOLATIONS.format(name="loose")
    assert cli.fails("config", "schema-get", "loose") == "Error: config loose has no schema\n"
    err = cli.fails("config", "schema-set", "loose", cli.file("t.json", {"type": 12}))
    assert err.startswith("Error: validation failed: 1 violation(s)\n  /schemas/loose /type:"), err


def test_config_status_and_input_errors(cli: Cli) -> None:
    cli.ok("config", "put", "st", cli.file("d.json", {"a": 1}))
    cli.ok("put", "/config-status/st/host-b", '{"generation": 1, "applied": false, '
                                                '"error": "port in use"}')
    cli.ok("put", "/config-status/st/host-a", '{"generation": 1, "applied": true}')
    assert cli.ok("config", "status", "st") == \
        "host-a 1 applied\nhost-b 1 failed: port in use\n"
    assert json.loads(cli.ok("config", "status", "st", "-w", "json")) == {
        "host-a": {"generation": 1, "applied": True, "error": None},
        "host-b": {"generation": 1, "applied": False, "error": "port in use"}}
    assert cli.ok("config", "status", "st", "-w", "table") == render_table(
        ("INSTANCE", "GENERATION", "APPLIED", "ERROR"),
        [["host-a", "1", "true", ""], ["host-b", "1", "false", "port in use"]])
    assert cli.ok("config", "status", "nobody") == ""

    missing = str(cli.tmp / "missing.json")
    assert cli.fails("config", "put", "st", missing) == \
        f"Error: open {missing}: No such file or directory\n"
    # JSON goes as it is: the members judge it, as they judge a raw put
    assert cli.fails("config", "put", "st", cli.file("dup.json", '{"a": 1, "a": 2}')) == (
        "Error: validation failed: 1 violation(s)\n  /config/st: a config document must be a "
        "JSON object: not valid JSON: duplicate object key 'a'\n")
    assert cli.fails("config", "put", "st", cli.file("list.json", "[1]")) == (
        "Error: validation failed: 1 violation(s)\n  /config/st: a config document must be a "
        "JSON object, got array\n")
    err = cli.fails("config", "put", "st", cli.file("d.toml", "when = 1979-05-27\n"))
    assert err.endswith("d.toml: /when: a TOML date has no JSON form (quote it)\n"), err
    err = cli.fails("config", "put", "st", cli.file("e.toml", "a = \n"))
    assert "e.toml: not valid TOML: " in err, err
    assert cli.fails("config", "get", "never-written") == \
        "Error: config 'never-written' does not exist\n"
    assert cli.fails("config", "get", "st", "-w", "table") == \
        "Error: table not supported as output format\n"
    assert cli.fails("config", "rollback", "st", "0") == \
        "Error: bad generation 0: generations start at 1\n"
    assert cli.fails("config", "diff", "st", "x", "1") == \
        'Error: bad generation (strconv.ParseInt: parsing "x": invalid syntax)\n'
    assert json.loads(cli.ok("config", "get", "st")) == {"a": 1}
    # a generation-guarded write
    assert cli.fails("config", "put", "st", cli.file("g.json", {"a": 2}),
                     "--expect-generation", "5") == (
        "Error: config 'st' is at generation 1, not 5: it was written meanwhile; read it "
        "again and retry\n")
    assert cli.ok("config", "put", "st", cli.file("g.json", {"a": 2}), "--expect-generation",
                  "1").startswith("st: generation 2, revision ")


def test_error_report_one_line_per_violation_and_how_many_more() -> None:
    refused = ValidationError(violations=[
        {"key": "/config/a", "path": "", "message": "first\nsecond", "schema_path": ""},
        {"key": "/config/a", "path": "/x", "message": "bad", "schema_path": "/type"}],
        total=150)
    assert error_report(refused) == ("validation failed: 150 violation(s)", (
        "  /config/a: first second", "  /config/a /x: bad", "  ... and 148 more"))
    # a refusal whose violations did not come along keeps the member's message
    assert error_report(ValidationError("validation failed: x")) == \
        ("validation failed: x", ())
