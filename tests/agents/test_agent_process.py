"""The sidecar agent as users run it: a real ``python -m discoverd.agents`` process, a real
directory, real ``discoverd serve`` members (issue 7's "done when")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_helpers import (
    AgentProcess,
    endpoints_of,
    read_json,
    running_agent,
    wait_until,
    write_file,
)

from discoverd.sdk import Client, Op
from discoverd.testing.cluster import ProcessCluster, free_port
from discoverd.testing.proxy import TcpProxy


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    with ProcessCluster(tmp_path_factory.mktemp("agent-cluster"), 1).started() as c:
        yield c


@pytest.fixture
def client(member: ProcessCluster) -> Iterator[Client]:
    with Client(endpoints_of(member)) as c:
        yield c


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of its own for every test (they share one member)."""
    return f"/config/{request.node.name.replace('[', '-').replace(']', '')}/"


def doc(client: Client, key: str) -> dict[str, object] | None:
    resp = client.get(key)
    return json.loads(resp.kvs[0].value) if resp.kvs else None


def version(client: Client, key: str) -> int:
    resp = client.get(key)
    return resp.kvs[0].version if resp.kvs else 0


def test_push_a_written_file_becomes_a_document(member: ProcessCluster, client: Client,
                                               prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    with running_agent(conf, endpoints_of(member), "--push", "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        write_file(conf / "app.json", '{"port": 8080, "debug": false}\n')
        write_file(conf / "team" / "db.json", '{"host": "db1"}')
        wait_until("app pushed", lambda: doc(client, prefix + "app") ==
                   {"port": 8080, "debug": False})
        wait_until("team/db pushed", lambda: doc(client, prefix + "team/db") == {"host": "db1"})
        # Files that are not documents stay local.
        write_file(conf / "notes.txt", "hello")
        write_file(conf / ".hidden.json", "{}")
        write_file(conf / "app.json~", "{}")
        write_file(conf / "app.json", '{"port": 9090}')
        wait_until("the edit pushed", lambda: doc(client, prefix + "app") == {"port": 9090})
        keys = {kv.key.decode() for kv in client.get(prefix, prefix=True).kvs}
        assert keys == {prefix + "app", prefix + "team/db"}
        assert agent.stop() == 0
    assert agent.events("agent.stopped")


def test_pull_writes_files_atomically_and_exec_runs_once_per_change(
        member: ProcessCluster, client: Client, prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    runs = tmp_path / "runs.txt"
    hook = f"echo \"$DISCOVERD_CHANGED\" >> {runs}"
    client.put(prefix + "app", '{"a": 1}')
    with running_agent(conf, endpoints_of(member), "--pull", "--prefix", prefix,
                       "--exec", hook, log=tmp_path / "agent.log") as agent:
        wait_until("app pulled", lambda: read_json(conf / "app.json") == {"a": 1})
        wait_until("exec after the first sync", lambda: runs.exists() and
                   runs.read_text().splitlines() == ["app"])
        # Two documents changed in one revision, then one more right after: one run each
        # burst, never two within the debounce window.
        client.txn([], [Op.put(prefix + "app", '{"a": 2}'), Op.put(prefix + "x/y", '{"b": 1}')])
        wait_until("both pulled", lambda: read_json(conf / "app.json") == {"a": 2}
                   and read_json(conf / "x" / "y.json") == {"b": 1})
        wait_until("exec again", lambda: len(runs.read_text().splitlines()) == 2)
        assert runs.read_text().splitlines()[1] == "app x/y"
        # A remote delete removes the file, and runs the command.
        client.delete(prefix + "x/y")
        wait_until("file removed", lambda: not (conf / "x" / "y.json").exists())
        wait_until("exec for the delete", lambda: len(runs.read_text().splitlines()) == 3)
        assert runs.read_text().splitlines()[2] == "x/y"
        # No temp file is ever left behind.
        assert [p.name for p in conf.iterdir() if p.name.startswith(".") and
                p.name != ".discoverd-agent"] == []
        agent.wait_event("agent.exec", count=3)
        assert agent.stop() == 0


def test_both_directions_without_ping_pong(member: ProcessCluster, client: Client,
                                           prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    client.put(prefix + "remote", '{"r": 1}')
    with running_agent(conf, endpoints_of(member), "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        wait_until("pulled", lambda: read_json(conf / "remote.json") == {"r": 1})
        client.put(prefix + "remote", '{"r": 2}')
        wait_until("pulled again", lambda: read_json(conf / "remote.json") == {"r": 2})
        write_file(conf / "local.json", '{"l": 1}')
        wait_until("pushed", lambda: doc(client, prefix + "local") == {"l": 1})
        # The agent handles one input at a time: once a later push is in, any echo of the
        # pulled writes would have been pushed before it.
        write_file(conf / "marker.json", '{"m": 1}')
        agent.wait_event("agent.pushed", where=lambda e: e["name"] == "marker")
        assert version(client, prefix + "remote") == 2  # our two puts, nothing echoed
        assert version(client, prefix + "local") == 1
        assert len(agent.events("agent.pushed")) == 2
        assert agent.stop() == 0


def test_rejected_document_is_logged_and_last_good_stays(
        member: ProcessCluster, client: Client, prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    name = prefix[len("/config/"):] + "app"
    client.put_schema(name, {"type": "object", "required": ["port"],
                             "properties": {"port": {"type": "integer", "maximum": 65535}}})
    with running_agent(conf, endpoints_of(member), "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        write_file(conf / "app.json", '{"port": 80}')
        wait_until("good pushed", lambda: doc(client, prefix + "app") == {"port": 80})
        write_file(conf / "app.json", '{"port": 70000}')
        rejected = agent.wait_event("agent.rejected")
        assert rejected[0]["name"] == "app"
        assert any("/port" in v and "65535" in v for v in rejected[0]["violations"]), rejected
        assert doc(client, prefix + "app") == {"port": 80}
        # The author's file is left alone, and not retried until it changes.
        assert read_json(conf / "app.json") == {"port": 70000}
        write_file(conf / "app.json", '{"port": 81}')
        wait_until("fixed pushed", lambda: doc(client, prefix + "app") == {"port": 81})
        assert len(agent.events("agent.rejected")) == 1
        # A half-written file is not a document: nothing is pushed until it is whole.
        write_file(conf / "app.json", '{"port": 8')
        agent.wait_event("agent.unreadable")
        write_file(conf / "app.json", '{"port": 82}')
        wait_until("whole file pushed", lambda: doc(client, prefix + "app") == {"port": 82})
        assert agent.stop() == 0


def _vim_save(path: Path, text: str) -> None:
    """What vim does on :w with its defaults on Linux: probe file, rename the original to a
    backup, write the new file in pieces, drop the backup."""
    probe = path.parent / "4913"
    probe.write_text("")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    with path.open("w") as f:
        half = len(text) // 2
        f.write(text[:half])
        f.flush()
        time.sleep(0.05)  # part of the editor's behaviour under test, not a wait
        f.write(text[half:])
    backup.unlink()


def _atomic_save(path: Path, text: str) -> None:
    """What many editors and config tools do: a temp file renamed over the target."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.mark.parametrize("save", [_vim_save, _atomic_save], ids=["vim", "rename"])
def test_editor_save_patterns_push_once(member: ProcessCluster, client: Client, prefix: str,
                                        tmp_path: Path, save: object) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.json").write_text('{"v": 0}')
    with running_agent(conf, endpoints_of(member), "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        wait_until("first push", lambda: doc(client, prefix + "app") == {"v": 0})
        for v in (1, 2, 3):
            save(conf / "app.json", json.dumps({"v": v, "pad": "x" * 2000}))  # type: ignore[operator]
            wait_until(f"v{v}", lambda v=v: (doc(client, prefix + "app") or {}).get("v") == v)
        # One revision per save: no push of the empty, half-written or missing file.
        assert version(client, prefix + "app") == 4
        assert not agent.events("agent.kept")  # the file never looked deleted
        assert agent.stop() == 0


def test_deleting_a_file_keeps_the_document_unless_asked(
        member: ProcessCluster, client: Client, prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    with running_agent(conf, endpoints_of(member), "--push", "--prefix", prefix,
                       log=tmp_path / "a1.log") as agent:
        write_file(conf / "app.json", '{"a": 1}')
        wait_until("pushed", lambda: doc(client, prefix + "app") == {"a": 1})
        (conf / "app.json").unlink()
        kept = agent.wait_event("agent.kept")
        assert "--delete" in kept[0]["reason"]
        assert doc(client, prefix + "app") == {"a": 1}
        assert agent.stop() == 0
    with running_agent(conf, endpoints_of(member), "--push", "--delete", "--prefix", prefix,
                       log=tmp_path / "a2.log") as agent:
        write_file(conf / "app.json", '{"a": 2}')
        wait_until("pushed", lambda: doc(client, prefix + "app") == {"a": 2})
        (conf / "app.json").unlink()
        agent.wait_event("agent.deleted")
        assert doc(client, prefix + "app") is None
        assert agent.stop() == 0


def test_toml_files(member: ProcessCluster, client: Client, prefix: str,
                    tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "svc.toml").write_text('name = "api"\n[limits]\nrps = 100\n')
    with running_agent(conf, endpoints_of(member), "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        wait_until("pushed as JSON", lambda: doc(client, prefix + "svc") ==
                   {"name": "api", "limits": {"rps": 100}})
        client.put(prefix + "svc", '{"name": "api", "limits": {"rps": 200}}')
        wait_until("pulled back as TOML", lambda: "rps = 200" in
                   (conf / "svc.toml").read_text())
        assert not (conf / "svc.json").exists()
        # TOML cannot hold null: the file is left as it was and the agent says why.
        client.put(prefix + "svc", '{"name": null}')
        agent.wait_event("agent.cannot_write")
        assert "rps = 200" in (conf / "svc.toml").read_text()
        assert agent.stop() == 0


def test_a_name_from_the_cluster_cannot_escape_the_directory(
        member: ProcessCluster, client: Client, prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    client.put(prefix + "../../escaped", '{"x": 1}')
    client.put(prefix + "ok", '{"x": 2}')
    with running_agent(conf, endpoints_of(member), "--pull", "--prefix", prefix,
                       log=tmp_path / "agent.log") as agent:
        wait_until("ok pulled", lambda: read_json(conf / "ok.json") == {"x": 2})
        assert agent.events("agent.unsafe_name")
        assert not list(tmp_path.rglob("escaped*"))
        assert agent.stop() == 0


def test_restart_resumes_without_pushing_everything_again(
        member: ProcessCluster, client: Client, prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for i in range(20):
        (conf / f"doc{i}.json").write_text(json.dumps({"i": i}))
    log = tmp_path / "agent.log"
    with running_agent(conf, endpoints_of(member), "--prefix", prefix, log=log) as agent:
        agent.wait_event("agent.pushed", count=20)
        assert agent.stop() == 0
    (conf / "doc7.json").write_text('{"i": 700}')  # edited while the agent was down
    client.put(prefix + "doc8", '{"i": 800}')  # and changed in the cluster meanwhile
    with running_agent(conf, endpoints_of(member), "--prefix", prefix, log=log) as agent:
        wait_until("doc7 pushed", lambda: doc(client, prefix + "doc7") == {"i": 700})
        wait_until("doc8 pulled", lambda: read_json(conf / "doc8.json") == {"i": 800})
        write_file(conf / "marker.json", "{}")
        agent.wait_event("agent.pushed", where=lambda e: e["name"] == "marker")
        assert [e["name"] for e in agent.events("agent.pushed")] == ["doc7", "marker"]
        assert all(version(client, prefix + f"doc{i}") == 1 for i in range(20) if i not in
                   (7, 8))
        assert not agent.events("agent.conflict")
        assert agent.stop() == 0


def test_once_syncs_and_exits(member: ProcessCluster, client: Client, prefix: str,
                              tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    client.put(prefix + "a", '{"a": 1}')
    args = [sys.executable, "-m", "discoverd.agents", "--dir", str(conf), "--prefix", prefix,
            "--log-format", "json", "--once"]
    done = subprocess.run([*args, "--endpoints", endpoints_of(member)], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert read_json(conf / "a.json") == {"a": 1}
    assert b"agent.synced" in done.stderr
    # No member answering: exit 1, the files stay as last synced, the edit stays pending.
    (conf / "a.json").write_text('{"a": 2}')
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run([*args, "--endpoints", dead, "--dial-timeout", "300ms",
                           "--command-timeout", "1s"], capture_output=True, timeout=60)
    assert done.returncode == 1
    assert b"agent.cluster_unreachable" in done.stderr
    assert read_json(conf / "a.json") == {"a": 2}
    done = subprocess.run([*args, "--endpoints", endpoints_of(member)], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert doc(client, prefix + "a") == {"a": 2}


def test_register_keeps_the_sidecar_registered(member: ProcessCluster, client: Client,
                                               prefix: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    service = "sidecar-" + prefix.strip("/").replace("/", "-")
    with running_agent(conf, endpoints_of(member), "--prefix", prefix, "--register", service,
                       "--port", "7000", "--address", "10.1.2.3", "--ttl", "3",
                       log=tmp_path / "agent.log") as agent:
        agent.wait_event("agent.registered")
        found = wait_until("registered", lambda: client.discover(service))
        assert (found[0].address, found[0].port) == ("10.1.2.3", 7000)
        assert agent.stop() == 0
    assert client.discover(service) == []  # deregistered at once, not left to expire


def test_cluster_down_then_back_with_changes_on_both_sides(tmp_path: Path) -> None:
    """The cluster stops for 10 s; the agent keeps serving the files and keeps local edits;
    meanwhile the cluster, back but still cut off from the agent, is changed too. Once the
    agent reaches it again: local-only edits are pushed, remote-only changes pulled, and
    the document changed on both sides resolves as docs/agent.md says — the cluster's
    version wins, the local one is kept beside it and logged. Nothing is lost."""
    (tmp_path / "cluster").mkdir()
    with ProcessCluster(tmp_path / "cluster", 3).started() as cluster:
        proxies = [TcpProxy(m.client_port) for m in cluster.members]
        via_proxy = ",".join(f"127.0.0.1:{p.port}" for p in proxies)
        conf = tmp_path / "conf"
        conf.mkdir()
        for n in "abcd":
            (conf / f"{n}.json").write_text(json.dumps({n: 0}))
        with Client(endpoints_of(cluster)) as client, \
                running_agent(conf, via_proxy, "--delete", "--prefix", "/config/",
                              log=tmp_path / "agent.log") as agent:
            agent.wait_event("agent.pushed", count=4)
            for p in proxies:
                p.block()
            for m in cluster.members:
                cluster.stop(m)
            down_since = time.monotonic()
            (conf / "a.json").write_text('{"a": "local"}')          # only here
            (conf / "b.json").write_text('{"b": "local"}')          # here and there
            (conf / "e.json").write_text('{"e": "new here"}')       # created here
            # Ten seconds without a cluster: the files are served as they are.
            agent.wait_event("agent.offline")
            while time.monotonic() - down_since < 10:
                assert json.loads((conf / "c.json").read_text()) == {"c": 0}
                assert json.loads((conf / "a.json").read_text()) == {"a": "local"}
                time.sleep(0.5)  # pacing the checks over the outage, not synchronising
            for m in cluster.members:
                cluster.start(m)
            cluster.wait_for_leader()
            client.put("/config/b", '{"b": "remote"}')
            client.put("/config/c", '{"c": "remote"}')
            client.delete("/config/d")
            b_rev = client.get("/config/b").kvs[0].mod_revision
            for p in proxies:
                p.unblock()
            wait_until("a pushed", lambda: doc(client, "/config/a") == {"a": "local"}, 30)
            wait_until("e pushed", lambda: doc(client, "/config/e") == {"e": "new here"}, 30)
            wait_until("c pulled", lambda: read_json(conf / "c.json") == {"c": "remote"}, 30)
            wait_until("d removed", lambda: not (conf / "d.json").exists(), 30)
            wait_until("b: the cluster's version",
                       lambda: read_json(conf / "b.json") == {"b": "remote"}, 30)
            kept = conf / f"b.json.conflict-r{b_rev}"
            assert json.loads(kept.read_text()) == {"b": "local"}
            assert doc(client, "/config/b") == {"b": "remote"}
            conflicts = agent.events("agent.conflict")
            assert [c["name"] for c in conflicts] == ["b"]
            assert agent.events("agent.online")
            # The agent has taken in its pushes' answers (not only the cluster applied them).
            agent.wait_event("agent.pushed", where=lambda e: e["name"] == "e")
            assert agent.stop() == 0
            assert agent.events("agent.stopped")[0]["pending"] == []
        for p in proxies:
            p.close()


def test_offline_start_serves_the_last_known_documents(tmp_path: Path) -> None:
    """A restarted agent with no member to talk to writes the last-known documents into a
    directory that lost them, from its state."""
    (tmp_path / "cluster").mkdir()
    with ProcessCluster(tmp_path / "cluster", 1).started() as cluster:
        conf, state = tmp_path / "conf", tmp_path / "state"
        with Client(endpoints_of(cluster)) as client:
            client.put("/config/app", '{"port": 1}')
        with running_agent(conf, endpoints_of(cluster), "--pull", log=tmp_path / "a.log",
                           state_dir=state) as agent:
            wait_until("pulled", lambda: read_json(conf / "app.json") == {"port": 1})
            assert agent.stop() == 0
        cluster.kill(cluster.members[0])
    (conf / "app.json").unlink()
    agent = AgentProcess(conf, endpoints_of(cluster), "--pull", log=tmp_path / "b.log",
                         state_dir=state)
    try:
        agent.start()
        agent.wait_event("agent.restored")
        assert read_json(conf / "app.json") == {"port": 1}
        agent.wait_event("agent.cluster_unreachable")
        assert agent.stop() == 0
    finally:
        agent.kill()


def test_sigterm_while_offline_exits_cleanly(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    agent = AgentProcess(conf, "127.0.0.1:1", log=tmp_path / "a.log")
    try:
        agent.start()
        agent.wait_event("agent.cluster_unreachable")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGTERM)
        assert agent.proc.wait(15) == 0
        assert agent.events("agent.stopped")
    finally:
        agent.kill()


def test_agent_with_auth_needs_and_uses_credentials(tmp_path: Path) -> None:
    """On a cluster with auth on, the agent syncs as the user ``--user`` names, within that
    user's permissions; without credentials it stops with the member's refusal."""
    with ProcessCluster(tmp_path, 1, extra_args=["--bcrypt-cost", "4"]).started() as cluster:
        ep = endpoints_of(cluster)
        with Client(ep) as admin:
            admin.user_add("root", "rootpw")
            admin.auth_enable()
        with Client(ep, user="root", password="rootpw") as root:
            root.role_add("cfg")
            root.role_grant_permission("cfg", "readwrite", "/config/", prefix=True)
            root.user_add("agent", "agentpw")
            root.user_grant_role("agent", "cfg")
            root.put("/config/app", '{"port": 80}')
        conf = tmp_path / "conf"
        args = [sys.executable, "-m", "discoverd.agents", "--dir", str(conf), "--prefix",
                "/config/", "--log-format", "json", "--once", "--endpoints", ep]
        refused = subprocess.run(args, capture_output=True, timeout=60)
        assert refused.returncode != 0
        assert b"user name is empty" in refused.stderr, refused.stderr.decode()[-2000:]
        assert b"Traceback" not in refused.stderr, refused.stderr.decode()[-2000:]
        assert not (conf / "app.json").exists()
        done = subprocess.run([*args, "--user", "agent:agentpw"], capture_output=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert read_json(conf / "app.json") == {"port": 80}
        assert b"agentpw" not in done.stderr
