"""Real ``discoverd serve`` processes on 127.0.0.1 (issue 3; DESIGN §3, §13).

Each test starts its own members (``ProcessCluster``: free ports, data dirs under
``tmp_path``) and the ``clusters`` fixture kills whatever is still running when the test ends,
pass or fail, then prints the tail of every member's log (shown only for a failing test).

Discipline: no sleep is a synchronisation. Every wait is ``wait_for`` (poll a condition until a
bounded deadline, then fail saying what was awaited); bounds on elections are derived from the
configured election timeout (50 ms heartbeats, 500 ms elections).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from discoverd.testing.cluster import (
    ClientFailure,
    MemberProcess,
    NativeClient,
    ProcessCluster,
    free_port,
    wait_for,
)

# ----------------------------------------------------------------------------- fixtures

MakeCluster = Callable[..., ProcessCluster]  # the `clusters` fixture (conftest.py)




@pytest.fixture
def cluster(clusters: MakeCluster) -> ProcessCluster:
    """A started 3-member cluster with an agreed leader."""
    c = clusters(3)
    start_all(c)
    return c


# ----------------------------------------------------------------------------- helpers


def keys_for(prefix: str, n: int) -> dict[bytes, bytes]:
    return {f"{prefix}/{i:04d}".encode(): f"{prefix}-value-{i}".encode() for i in range(n)}


def put_all(m: MemberProcess, kvs: dict[bytes, bytes]) -> None:
    """Write every pair through ``m``; each returned put is an acknowledged write."""
    with m.client() as c:
        for k, v in kvs.items():
            assert c.put(k, v) > 0


def put_eventually(m: MemberProcess, key: bytes, value: bytes, timeout: float = 10.0) -> int:
    """One put through ``m``, retried while the cluster settles (a new leader, a restart)."""

    def attempt() -> int:
        with m.client() as c:
            return c.put(key, value)

    return wait_for(f"a put through {m.name}", attempt, timeout=timeout)


def read_all(
    m: MemberProcess, keys: Iterator[bytes] | list[bytes] | dict[bytes, bytes], *,
    serializable: bool = False,
) -> dict[bytes, bytes | None]:
    with m.client() as c:
        return {k: c.get(k, serializable=serializable) for k in keys}


def wait_holds(
    m: MemberProcess, expected: dict[bytes, bytes], *, serializable: bool = False,
    timeout: float = 15.0,
) -> None:
    """Wait until ``m`` returns every expected value (a linearizable read by default); on
    timeout, say which keys were missing or wrong."""
    seen: dict[bytes, bytes | None] = {}

    def probe() -> bool:
        nonlocal seen
        seen = read_all(m, expected, serializable=serializable)
        return seen == expected

    kind = "serializable" if serializable else "linearizable"
    try:
        wait_for(f"{m.name} to return {len(expected)} keys ({kind})", probe, timeout=timeout)
    except AssertionError as e:
        wrong = sorted(k for k in expected if seen.get(k) != expected[k])
        raise AssertionError(
            f"{e}; {len(wrong)} of {len(expected)} acknowledged keys missing or wrong "
            f"(first: {wrong[:3]})"
        ) from None


def leader_of(
    c: ProcessCluster, among: list[MemberProcess] | None = None, timeout: float = 20.0
) -> MemberProcess:
    """``c.wait_for_leader``, failing with what every member said when there is none."""
    try:
        return c.wait_for_leader(among=among, timeout=timeout)
    except AssertionError as e:
        seen = {
            name: f"{st['role']} leader={st['leader']:x} term={st['raft_term']} "
                  f"commit={st['commit_index']} id={st['header']['member_id']:x}"
            for name, st in c.statuses().items()
        }
        exits = {m.name: m.proc.poll() for m in c.members if m.proc is not None}
        raise AssertionError(f"{e}; statuses: {seen}; exit codes: {exits}") from None


def start_all(c: ProcessCluster) -> MemberProcess:
    """Start every member, wait until each one answers (a leader agreed by the members
    that answer so far is not enough: a slow starter would be left out), then return the
    leader all of them agree on."""
    c.start_all()
    for m in c.members:
        c.wait_ready(m)
    return leader_of(c)


def member_id(m: MemberProcess) -> int:
    return int(m.status()["header"]["member_id"])


def log_since(m: MemberProcess, offset: int) -> str:
    return m.log_text()[offset:]


def wal_segments(m: MemberProcess) -> list[Path]:
    return sorted((m.data_dir / "member" / "wal").glob("*.wal"))


def wal_records(data: bytes) -> list[tuple[int, int]]:
    """``(offset, payload length)`` of every record of a WAL segment (frame: 4-byte length,
    4-byte CRC, payload; see discoverd/storage/wal.py)."""
    records: list[tuple[int, int]] = []
    offset = 0
    while offset < len(data):
        length, _crc = struct.unpack_from(">II", data, offset)
        records.append((offset, length))
        offset += 8 + length
    assert offset == len(data), "the segment does not end on a record boundary"
    return records


def wait_exit(m: MemberProcess, timeout: float) -> int:
    assert m.proc is not None
    try:
        return m.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{m.name} still running after {timeout}s") from None


# ----------------------------------------------------------------------------- 1. election


def test_three_members_elect_one_agreed_leader(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    statuses = cluster.statuses()
    assert sorted(statuses) == ["m1", "m2", "m3"]
    ids = {name: st["header"]["member_id"] for name, st in statuses.items()}
    assert len(set(ids.values())) == 3, f"member ids collide: {ids}"
    leaders = [name for name, st in statuses.items() if st["role"] == "leader"]
    assert leaders == [lead.name]
    for name, st in statuses.items():
        assert st["leader"] == ids[lead.name], f"{name} follows {st['leader']:x}"
        assert st["raft_term"] == statuses[lead.name]["raft_term"], statuses
        assert sorted(st["voters"]) == sorted(ids.values()), f"{name}: {st['voters']}"
        assert st["header"]["cluster_id"] == statuses[lead.name]["header"]["cluster_id"]
        if name != lead.name:
            assert st["role"] == "follower"


# ----------------------------------------------------------------------------- 2. kill -9


def test_committed_data_survives_a_leader_kill_9(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    acked = keys_for("before", 100)
    put_all(lead, acked)

    killed_at = time.monotonic()
    cluster.kill(lead)
    survivors = [m for m in cluster.members if m is not lead]
    bound = 10 * cluster.election_s
    new_lead = leader_of(cluster, among=survivors, timeout=bound)
    elapsed = time.monotonic() - killed_at
    assert elapsed <= bound, f"new leader after {elapsed:.2f}s"
    assert new_lead is not lead

    follower = next(m for m in survivors if m is not new_lead)
    wait_holds(new_lead, acked)
    wait_holds(follower, acked)

    # Writes keep working, through either survivor.
    more = keys_for("after", 20)
    put_eventually(new_lead, *next(iter(more.items())))
    put_all(new_lead, more)
    put_all(follower, {b"via-follower": b"1"})
    acked |= more | {b"via-follower": b"1"}

    # The killed member comes back and catches up from its own disk plus the leader.
    cluster.start(lead)
    last_key = b"via-follower"
    wait_for(f"{lead.name} to catch up",
             lambda: read_all(lead, [last_key], serializable=True)[last_key] == b"1")
    wait_holds(lead, acked, serializable=True)
    wait_holds(lead, acked)


# ----------------------------------------------------------------------------- 3. SIGSTOP


def test_paused_follower_then_paused_leader(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    follower = next(m for m in cluster.members if m is not lead)
    acked: dict[bytes, bytes] = {}

    # A stopped follower: the other two still form a majority and keep committing. Keep
    # writing for two election timeouts, so the follower wakes up past its own timeout.
    cluster.pause(follower)
    try:
        writing_until = time.monotonic() + 2 * cluster.election_s
        with lead.client() as c:
            i = 0
            while i < 30 or time.monotonic() < writing_until:
                key, value = f"follower-paused/{i:04d}".encode(), f"v{i}".encode()
                assert c.put(key, value) > 0
                acked[key] = value
                i += 1
    finally:
        cluster.resume(follower)
    wait_holds(follower, acked, serializable=True)
    assert leader_of(cluster) is lead  # the follower came back without disruption

    # A stopped leader: the others elect one of themselves.
    old_id = member_id(lead)
    old_term = lead.status()["raft_term"]
    others = [m for m in cluster.members if m is not lead]
    cluster.pause(lead)
    try:
        new_lead = leader_of(cluster, among=others, timeout=10 * cluster.election_s)
        new_status = new_lead.status()
        assert new_status["raft_term"] > old_term
        batch = keys_for("leader-paused", 30)
        put_eventually(new_lead, *next(iter(batch.items())))
        put_all(new_lead, batch)
        acked |= batch
    finally:
        cluster.resume(lead)
    new_id = member_id(new_lead)
    assert new_id != old_id

    # The old leader wakes up in an old term: it must step down and follow the new one.
    def follows_new_leader() -> bool:
        st = lead.status()
        return bool(st["role"] == "follower" and st["leader"] == new_id)

    wait_for(f"{lead.name} to step down and follow {new_lead.name}", follows_new_leader,
             timeout=10 * cluster.election_s)
    assert leader_of(cluster) is new_lead
    for m in cluster.members:
        wait_holds(m, acked, serializable=True)
        wait_holds(m, acked)


# ----------------------------------------------------------------------------- 4. restart all


def test_whole_cluster_restarts(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    acked = keys_for("gen1", 50)
    put_all(lead, acked)
    ids = {m.name: member_id(m) for m in cluster.members}
    cluster_id = lead.status()["header"]["cluster_id"]

    # Graceful: SIGTERM everyone at once, every member exits cleanly.
    for m in cluster.members:
        assert m.proc is not None
        m.proc.send_signal(signal.SIGTERM)
    for m in cluster.members:
        assert wait_exit(m, 15) == 0, f"{m.name} did not exit cleanly"
    lead = start_all(cluster)
    statuses = cluster.statuses()
    assert {n: st["header"]["member_id"] for n, st in statuses.items()} == ids
    assert {st["header"]["cluster_id"] for st in statuses.values()} == {cluster_id}
    for m in cluster.members:
        wait_holds(m, acked)

    # A crash of everyone at once: SIGKILL all before reaping any.
    batch = keys_for("gen2", 50)
    put_all(lead, batch)
    acked |= batch
    for m in cluster.members:
        assert m.proc is not None
        m.proc.kill()
    for m in cluster.members:
        wait_exit(m, 10)
    lead = start_all(cluster)
    assert {n: st["header"]["member_id"] for n, st in cluster.statuses().items()} == ids
    for m in cluster.members:
        wait_holds(m, acked)
    put_eventually(lead, b"after-crash", b"ok")


# ----------------------------------------------------------------------------- 5. torn tail


def test_a_torn_wal_tail_is_repaired(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    acked = keys_for("torn", 30)
    put_all(lead, acked)
    victim = next(m for m in cluster.members if m is not lead)
    wait_holds(victim, acked, serializable=True)
    assert cluster.stop(victim) == 0

    # What a crash in the middle of a write leaves: a record header announcing a 4 KiB
    # SAVE record of which only a few bytes reached the disk.
    segment = wal_segments(victim)[-1]
    clean = segment.read_bytes()
    wal_records(clean)  # the segment is whole before we tear it
    torn = struct.pack(">II", 4096, 0x5EED1E55) + b"\x82\x02\x83\xf6\x81torn-record"
    segment.write_bytes(clean + torn)

    mark = len(victim.log_text())
    cluster.start(victim)
    cluster.wait_ready(victim)
    log = log_since(victim, mark)
    assert "repaired a torn WAL tail" in log
    assert f"bytes={len(torn)}" in log
    assert torn not in segment.read_bytes()

    batch = keys_for("after-repair", 10)
    put_all(lead, batch)
    acked |= batch
    wait_holds(victim, acked, serializable=True)
    wait_holds(victim, acked)
    assert victim.running


# ----------------------------------------------------------------------------- 6. corruption


def test_a_corrupt_record_in_the_middle_refuses_to_start(clusters: MakeCluster) -> None:
    c = clusters(1)
    (m,) = c.members
    lead = start_all(c)
    put_all(lead, keys_for("corrupt", 10))
    assert c.stop(m) == 0

    segment = wal_segments(m)[-1]
    data = bytearray(segment.read_bytes())
    records = wal_records(bytes(data))
    assert len(records) >= 4, records
    offset, length = records[1]  # the first record after the segment header
    data[offset + 8 + length // 2] ^= 0x40  # one flipped bit inside its payload
    segment.write_bytes(bytes(data))

    mark = len(m.log_text())
    started = time.monotonic()
    c.start(m)
    rc = wait_exit(m, 10)
    took = time.monotonic() - started
    out = log_since(m, mark)
    assert rc != 0, out
    assert took < 10
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{out}"
    assert lines[0].startswith("discoverd serve: "), lines[0]
    assert str(segment) in lines[0], lines[0]
    assert f"at byte offset {offset}:" in lines[0], lines[0]
    assert "corruption" in lines[0], lines[0]
    # Refusing means refusing: the damaged file is left exactly as it was, not "repaired".
    assert segment.read_bytes() == bytes(data)


# ----------------------------------------------------------------------------- 7. token


def test_a_member_with_another_cluster_token_is_refused(cluster: ProcessCluster) -> None:
    stranger = cluster.member("m3")
    assert cluster.stop(stranger) == 0
    rest = [m for m in cluster.members if m is not stranger]
    rest_ids = {member_id(m) for m in rest}

    # On its old data dir, another token is another identity: it refuses to start.
    mark = len(stranger.log_text())
    cluster.start(stranger, "--initial-cluster-token", "some-other-cluster")
    assert wait_exit(stranger, 10) == 1
    out = log_since(stranger, mark)
    assert "Traceback" not in out, out
    assert out.strip().startswith("discoverd serve: "), out
    assert "refusing to start with another member's data" in out, out

    # With a fresh data dir it starts, but the cluster refuses its peer connections.
    marks = {m.name: len(m.log_text()) for m in rest}

    def refused(m: MemberProcess) -> bool:
        return "peer refused: cluster id mismatch" in log_since(m, marks[m.name])

    cluster.start(stranger, "--initial-cluster-token", "some-other-cluster",
                  "--data-dir", str(stranger.data_dir.parent / "m3-other-token.discoverd"))
    cluster.wait_ready(stranger)
    for m in rest:
        wait_for(f"{m.name} to refuse the stranger", functools.partial(refused, m), timeout=10)
    wait_for("the stranger to log its refusal",
             lambda: "refused by peer" in stranger.log_text()[mark:]
             and "cluster id mismatch" in stranger.log_text()[mark:], timeout=10)

    # The other two keep committing, and the stranger takes no part.
    lead = leader_of(cluster, among=rest)
    batch = keys_for("without-stranger", 20)
    put_all(lead, batch)
    lead_status = lead.status()
    st = stranger.status()
    assert st["role"] != "leader", st
    assert st["leader"] not in rest_ids, st
    assert st["leader"] == 0, st
    assert not set(st["voters"]) & rest_ids, st  # its own idea of the cluster: other ids
    assert st["header"]["cluster_id"] != lead_status["header"]["cluster_id"]
    assert st["commit_index"] < lead_status["commit_index"]
    last = list(batch)[-1]
    assert read_all(stranger, [last], serializable=True)[last] is None
    assert rest_ids < set(lead_status["voters"])  # the real m3 is still a voter
    assert len(lead_status["voters"]) == 3
    for m in rest:
        wait_holds(m, batch)
    assert stranger.running


# ----------------------------------------------------------------------------- 8. SIGTERM


def test_graceful_sigterm_of_the_leader_hands_leadership_over(cluster: ProcessCluster) -> None:
    lead = leader_of(cluster)
    put_all(lead, keys_for("handover", 10))
    old_term = lead.status()["raft_term"]
    others = [m for m in cluster.members if m is not lead]
    ids = {member_id(m): m for m in others}

    started = time.monotonic()
    rc = cluster.stop(lead)
    bound = 3 * cluster.election_s
    new_lead = leader_of(cluster, among=others, timeout=bound)
    elapsed = time.monotonic() - started
    assert rc == 0
    assert elapsed <= bound, f"{elapsed:.2f}s without an agreed leader"
    assert new_lead.status()["raft_term"] > old_term

    log = lead.log_text()
    assert "transferring leadership before shutdown" in log
    assert "leadership transferred" in log
    target = next(m for mid, m in ids.items() if f"to={mid:x}" in log)
    assert target is new_lead, "the leader went to another member than the transfer target"
    put_eventually(new_lead, b"after-handover", b"ok", timeout=bound)


# ----------------------------------------------------------------------------- 9. defaults


def test_a_member_with_no_flags_uses_the_default_data_dir(tmp_path: Path) -> None:
    """No flags, empty cwd: ``default.discoverd`` is created there. The default ports
    (2379/2380) may be taken on a shared machine, so the listen/advertise URLs come from the
    ``DISCOVERD_*`` environment variables instead, which this also proves work."""
    cport, pport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERD_")}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "DISCOVERD_LISTEN_CLIENT_URLS": f"http://127.0.0.1:{cport}",
        "DISCOVERD_ADVERTISE_CLIENT_URLS": f"http://127.0.0.1:{cport}",
        "DISCOVERD_LISTEN_PEER_URLS": f"http://127.0.0.1:{pport}",
        "DISCOVERD_INITIAL_ADVERTISE_PEER_URLS": f"http://127.0.0.1:{pport}",
    }
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    log_path = tmp_path / "default.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "discoverd.cli", "serve"], cwd=workdir, env=env,
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        def status() -> dict[str, Any] | None:
            with NativeClient(cport, timeout=2) as c:
                st = c.status()
            return st if st["role"] == "leader" else None

        st = wait_for("the single member to lead", status, timeout=20)
        assert st["name"] == "default"
        assert st["voters"] == [st["header"]["member_id"]]
        with NativeClient(cport) as c:
            assert c.put(b"hello", b"world") > 0
            assert c.get(b"hello") == b"world"
            assert c.get(b"hello", serializable=True) == b"world"
        wal_dir = workdir / "default.discoverd" / "member" / "wal"
        assert wal_dir.is_dir()
        assert list(wal_dir.glob("*.wal"))
        assert sorted(p.name for p in workdir.iterdir()) == ["default.discoverd"]
        assert f"peer_urls=http://127.0.0.1:{pport}" in log_path.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        print(log_path.read_text(errors="replace"))


def test_a_port_in_use_is_a_one_line_error(clusters: MakeCluster) -> None:
    """What a user sees when 2379 is taken: the address, no traceback, a non-zero exit."""
    c = clusters(1)
    (m,) = c.members
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", m.client_port))
        squatter.listen()
        c.start(m)
        rc = wait_exit(m, 10)
    out = m.log_text()
    assert rc == 1, out
    assert "Traceback" not in out, out
    assert out.strip().splitlines()[-1] == (
        f"discoverd serve: Address already in use: http://127.0.0.1:{m.client_port}"
    ), out


# ----------------------------------------------------------------------------- 10. bad input

MAX_REQUEST_BYTES = 4096


def _error_of(c: NativeClient, payload: bytes) -> dict[str, Any]:
    c.send_raw(payload)
    answer = c.read_frame()
    assert isinstance(answer, dict), answer
    assert "err" in answer, f"no error for {payload[:40]!r}: {answer}"
    assert isinstance(answer["err"].get("code"), str), answer
    assert isinstance(answer["err"].get("message"), str), answer
    return answer


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _req(**fields: Any) -> bytes:
    return cbor2.dumps(fields)


BAD = "bad_request"
INVALID = "invalid_argument"


@pytest.mark.parametrize(
    ("payload", "rid", "code", "message"),
    [
        (b"\xff\xfe\xfd", 0, BAD, "bad request"),  # not cbor at all
        (b"", 0, BAD, "bad request"),  # an empty frame
        (b"\x81" * 1000, 0, BAD, "bad request"),  # nested past the decoder's depth limit
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", 0, BAD, "bad request"),  # 2**64 items
        (cbor2.dumps([1, 2, 3]), 0, BAD, "a request must be a cbor map"),
        (cbor2.dumps("status"), 0, BAD, "a request must be a cbor map"),
        (_req(op="status"), 0, INVALID, "request 'id' must be a non-negative integer"),
        (_req(id=-1, op="status"), -1, INVALID, "'id' must be a non-negative integer"),
        (_req(id="1", op="status"), 0, INVALID, "'id' must be a non-negative integer"),
        (_req(id=True, op="status"), 0, INVALID, "'id' must be a non-negative integer"),
        (b"\xa1\x81\x01\x01", 0, INVALID, "'id' must be a non-negative integer"),  # {[1]: 1}
        (_req(id=5), 5, INVALID, "request 'op' must be a string"),
        (_req(id=6, op="frobnicate"), 6, INVALID, "unknown op 'frobnicate'"),
        (_req(id=7, op="put", key=12, value=b"v"), 7, INVALID, "field 'key' must be bytes"),
        (_req(id=8, op="put", value=b"v"), 8, INVALID, "missing field 'key'"),
        (_req(id=9, op="put", key=b"", value=b"v"), 9, "empty_key", "key is not provided"),
        (_req(id=10, op="put", key=b"k", value=b"v", lease="x"), 10, INVALID,
         "field 'lease' must be int"),
        (_req(id=11, op="range", key=b"k", serializable="yes"), 11, INVALID,
         "field 'serializable' must be bool"),
        (_req(id=12, op="range", key=b"k", sort_order=99), 12, INVALID,
         "field 'sort_order' must be one of"),
        (_req(id=13, op="delete_range"), 13, INVALID, "missing field 'key'"),
        (_req(id=14, op="txn", success="abc"), 14, INVALID, "field 'success' must be a list"),
        (_req(id=15, op="txn", success=[{}]), 15, INVALID, "each txn operation must be a map"),
        (_req(id=16, op="txn", compare=[{"key": b"k", "value": 5}]), 16, INVALID,
         "field 'value' must be bytes"),
        (_req(id=17, op="compact"), 17, INVALID, "missing field 'revision'"),
        (_req(id=18, op="compact", revision="x"), 18, INVALID, "field 'revision' must be int"),
    ],
)
def test_malformed_requests_get_error_frames(
    single_member: MemberProcess, payload: bytes, rid: int, code: str, message: str
) -> None:
    """DESIGN §12: a clear error, and nothing changes (the store's revision stays put)."""
    with single_member.client() as c:
        revision = c.status()["header"]["revision"]
        answer = _error_of(c, payload)
        assert answer["id"] == rid, answer
        assert answer["err"]["code"] == code, answer
        assert message in answer["err"]["message"], answer
        # The same connection is still usable, and the bad request changed nothing.
        assert c.status()["header"]["revision"] == revision


@pytest.fixture(scope="module")
def single_member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    """One member with a small --max-request-bytes, shared by the bad-input tests (they
    only ever send it garbage and check it keeps serving)."""
    c = ProcessCluster(tmp_path_factory.mktemp("bad-input"), 1,
                       extra_args=["--max-request-bytes", str(MAX_REQUEST_BYTES)])
    try:
        start_all(c)
        (m,) = c.members
        yield m
        assert m.running, "the member died from bad input"
        assert "client connection failed" not in m.log_text(), "an error escaped a handler"
    finally:
        c.close()
        print(c.members[0].log_text())


def _put_of_size(rid: int, size: int) -> bytes:
    """A put request whose cbor encoding is exactly ``size`` bytes."""
    for n in range(size, 0, -1):
        payload = _req(id=rid, op="put", key=b"big", value=b"x" * n)
        if len(payload) == size:
            return payload
    raise AssertionError(f"no put request of exactly {size} bytes")


def test_bad_input_never_stops_the_member(single_member: MemberProcess) -> None:
    m = single_member
    with m.client() as bystander:
        bystander.put(b"before", b"1")

        # An oversized frame: an error frame, then the connection is closed.
        with m.client() as c:
            c.sock.sendall(struct.pack(">I", 10 * MAX_REQUEST_BYTES) + b"x" * 100)
            answer = c.read_frame()
            assert answer["err"]["code"] == "request_too_large", answer
            assert _recv_all(c.sock) == b"", "the connection should be closed"

        # The limit is on the request: exactly --max-request-bytes is served, one more is not.
        with m.client() as c:
            c.send_raw(_put_of_size(1, MAX_REQUEST_BYTES))
            assert "ok" in c.read_frame()
            c.send_raw(_put_of_size(2, MAX_REQUEST_BYTES + 1))
            answer = c.read_frame()
            assert answer["err"]["code"] == "request_too_large", answer
            assert _recv_all(c.sock) == b"", "the connection should be closed"

        # A frame cut off by the client going away.
        with socket.create_connection(("127.0.0.1", m.client_port), timeout=5) as s:
            s.sendall(b"DSC1" + struct.pack(">I", 100) + b"\xa2")

        # The port also speaks HTTP (the etcd gateway): a GET of a POST-only path is a 405.
        with socket.create_connection(("127.0.0.1", m.client_port), timeout=5) as s:
            s.sendall(b"GET /v3/kv/range HTTP/1.1\r\nHost: localhost\r\n"
                      b"Connection: close\r\n\r\n")
            response = _recv_all(s)
        assert response.startswith(b"HTTP/1.1 405 "), response[:100]

        # Garbage from many connections at once; half of them then reset the connection
        # (SO_LINGER 0: close sends RST), as a client that crashes does.
        socks = [socket.create_connection(("127.0.0.1", m.client_port), timeout=5)
                 for _ in range(20)]
        for i, s in enumerate(socks):
            s.sendall(b"DSC1" + struct.pack(">I", 3) + bytes([0xFF, i, 0xFE]))
        for i, s in enumerate(socks):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()

        # The connection that was open all along still works, and so does a new one.
        bystander.put(b"after", b"2")
        assert bystander.get(b"before") == b"1"
    with m.client() as c:
        assert c.get(b"after") == b"2"
        assert c.status()["role"] == "leader"
    with m.client() as c, pytest.raises(ClientFailure) as info:
        c.call("nope")  # and errors still come back as errors
    assert info.value.code == "invalid_argument"
