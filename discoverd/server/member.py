"""``run_member``: one discoverd member as a trio program — storage, Raft loop, peer
transport, client API — plus graceful shutdown (SIGTERM/SIGINT: hand leadership to a
caught-up peer first, then stop).
"""

from __future__ import annotations

import fcntl
import math
import os
import random
import signal
import ssl
from functools import partial
from typing import IO, Any

import trio

from discoverd import __version__
from discoverd.consensus.messages import AppMessage, Message
from discoverd.consensus.raft import Config, Role
from discoverd.errors import ClientError, DiscoverdError
from discoverd.kv.auto_compaction import AutoCompaction
from discoverd.kv.limits import check_request_sizes
from discoverd.kv.requests import RangeRequest, TxnRequest
from discoverd.kv.txn import has_writes
from discoverd.logs import configure_logging
from discoverd.machine.applier import KvMachine, encode_command
from discoverd.member.core import MemberCore
from discoverd.server.alarm_service import AlarmService
from discoverd.server.api_server import ClientApi, Connection, Handler
from discoverd.server.auth_service import AuthService
from discoverd.server.compactor import Compactor
from discoverd.server.config import MemberConfig, parse_url, parse_urls
from discoverd.server.disk_faults import wrap_fs
from discoverd.server.gc_policy import (
    SurvivorFreezer,
    configure_for_serving,
    loading_long_lived,
)
from discoverd.server.http import HttpServer, gateway_router
from discoverd.server.lease_service import LeaseService
from discoverd.server.limits import seconds
from discoverd.server.membership import MembershipService, member_identity
from discoverd.server.metrics import MemberMetrics
from discoverd.server.raft_loop import RaftLoop
from discoverd.server.snapshot_service import SnapshotService
from discoverd.server.tls import is_https, member_tls
from discoverd.server.transport import PROBE_INTERVAL_SECONDS, PeerTransport
from discoverd.server.watch_service import WatchService
from discoverd.storage.disk_storage import DiskStorage
from discoverd.storage.fs import OsFS
from discoverd.wire.kv_codec import WRITE_OPS, decode_request, encode_response
from discoverd.wire.registry_codec import config_key

REMOVED_STOP_DELAY = 1.0
"""Seconds between applying this member's own removal and stopping (etcd: 1 s)."""


class Member:
    """Everything one running member owns; built by ``run_member``."""

    def __init__(self, cfg: MemberConfig, log: Any,
                 gc_freezer: SurvivorFreezer | None = None) -> None:
        """``gc_freezer``: when this member owns its process (``serve``), what keeps the
        cyclic collector's full collections short (``server/gc_policy.py``)."""
        cfg.validate()
        self.gc_freezer = gc_freezer
        # Certificates are loaded first: a bad file is reported before anything is touched.
        self.tls = member_tls(cfg)
        self.cfg = cfg
        self.log = log
        self.cluster_id = cfg.cluster_id
        self.member_id = member_identity(cfg)
        members = cfg.members()
        self._lock = _lock_data_dir(cfg.data_dir)
        os_fs = OsFS()
        fs = wrap_fs(os_fs)  # os_fs itself unless a test hook's variable is set
        if fs is not os_fs:
            log.warning("disk fault test hooks are on", fs=repr(fs))
        self.storage = DiskStorage(
            fs, cfg.member_dir, cluster_id=self.cluster_id, member_id=self.member_id,
            name=cfg.name, keep_entries=cfg.snapshot_catchup_entries,
            keep_bytes=cfg.snapshot_catchup_bytes or None,
        )
        if self.storage.torn_tail_bytes:
            log.warning("repaired a torn WAL tail", bytes=self.storage.torn_tail_bytes)
        voters = tuple(sorted(members)) if cfg.initial_cluster_state == "new" else ()
        raft_cfg = Config(
            id=self.member_id,
            election_ticks=cfg.election_ticks,
            heartbeat_ticks=1,
            voters=voters,
        )
        election_timeout = cfg.election_ticks * cfg.tick_seconds
        self.machine = KvMachine(
            max_txn_ops=cfg.max_txn_ops, min_ttl=cfg.min_lease_ttl, grace=election_timeout,
            max_buffered_events=cfg.watch_buffer_events, members_seed=members,
        )
        self._auth_revision_seen = self.machine.auth.revision
        self.metrics = MemberMetrics(self)  # reads the parts below at scrape time only
        self.core = MemberCore(
            raft_cfg, self.storage, self.metrics.timed(self.machine), random.Random(),
            snapshot_count=cfg.snapshot_count,
            snapshot_catchup_entries=cfg.snapshot_catchup_entries,
            snapshot_bytes=cfg.snapshot_bytes or None,
            snapshot_catchup_bytes=cfg.snapshot_catchup_bytes or None,
        )
        self.loop = RaftLoop(self.core, self._send, tick_seconds=cfg.tick_seconds, log=log,
                             after_ready=self._after_ready, observer=self.metrics,
                             fork_snapshots=True, child_closes=(self._lock.fileno(),))
        self.leases = LeaseService(
            self.core, self.machine, self.loop, member_id=self.member_id, send=self._send,
            header=self.header, tick_seconds=cfg.tick_seconds,
            election_timeout=election_timeout, log=log,
        )
        self.watches = WatchService(
            self.core, self.machine.hub, self.machine.store, header=self.header,
            progress_interval=cfg.watch_progress_notify_interval_ms / 1000,
            election_timeout=election_timeout, tick_seconds=cfg.tick_seconds,
            max_watches_per_connection=cfg.max_watches_per_connection, log=log,
            max_key_bytes=cfg.max_key_bytes,
        )
        peers = {
            mid: parse_url(urls[0]) for mid, (_, urls) in members.items() if mid != self.member_id
        }
        self.transport = PeerTransport(
            cluster_id=self.cluster_id, member_id=self.member_id, peers=peers,
            on_message=self._on_peer_message, on_unreachable=self.loop.on_unreachable,
            on_snapshot_status=self.loop.on_snapshot_status, log=log,
            probe_interval=PROBE_INTERVAL_SECONDS, on_rtt=self.metrics.observe_peer_rtt,
            server_ssl=self.tls.peer_server, client_ssl=self.tls.peer_client,
            dial_tls=self._peer_is_https,
        )
        self.membership = MembershipService(
            self.core, self.machine, self.loop, self.transport, cfg=cfg,
            member_id=self.member_id, send=self._send, header=self.header, log=log)
        self.compactor = Compactor(
            AutoCompaction(cfg.auto_compaction_mode, cfg.auto_compaction_retention_value,
                           watch_bound=cfg.auto_compaction_watch_bound,
                           check_interval=cfg.auto_compaction_check_interval_ms / 1000),
            self.core, self.machine, self.loop, member_id=self.member_id, send=self._send,
            log=log)
        self.alarm_service = AlarmService(
            self.core, self.machine, self.loop, member_id=self.member_id,
            quota_bytes=cfg.quota_backend_bytes, header=self.header, log=log)
        self.snapshots = SnapshotService(
            self.core, self.machine, cluster_id=self.cluster_id, member_id=self.member_id,
            header=self.header, log=log,
            spool_dir=os.path.join(cfg.member_dir, "snapshot-spool"),
            child_closes=(self._lock.fileno(),))
        self.auth = AuthService(self.machine, self.loop, header=self.header,
                                token_ttl=cfg.auth_token_ttl, bcrypt_cost=cfg.bcrypt_cost,
                                log=log)
        self.api = ClientApi(self.ops(), streams={**self.watches.streams(),
                                                  **self.snapshots.streams()},
                             max_request_bytes=cfg.max_request_bytes, log=log,
                             on_request=self.metrics.observe_request,
                             max_concurrent_streams=cfg.max_concurrent_streams,
                             idle_timeout=seconds(cfg.client_idle_timeout_ms),
                             write_timeout=seconds(cfg.client_write_timeout_ms),
                             max_requests_per_second=cfg.max_requests_per_second,
                             auth=self.auth,
                             fast={"range": self.fast_range, **self.leases.fast_ops()},
                             http=HttpServer(gateway_router(), metrics=self._metrics_text,
                                             idle_timeout=seconds(cfg.client_idle_timeout_ms)
                                             or math.inf, log=log))

    def _metrics_text(self) -> tuple[bytes, str] | None:
        """``GET /metrics``: the member's metrics, once it has them (``self.metrics``)."""
        metrics = getattr(self, "metrics", None)
        return metrics.render() if metrics is not None else None

    def _send(self, messages: list[Any]) -> None:
        self.transport.send(messages)

    def _on_peer_message(self, msg: Message) -> None:
        if isinstance(msg, AppMessage):
            if not (self.compactor.on_app_message(msg)
                    or self.membership.on_app_message(msg)):
                self.leases.on_app_message(msg)
        else:
            self.loop.on_message(msg)

    def _after_ready(self) -> None:
        """After each Ready is applied: let the peer links follow the member table, wake
        the watch streams the applied writes concern, and let the lessor follow leadership
        as soon as it changes."""
        self.membership.after_ready()
        if self.machine.auth.revision != self._auth_revision_seen:
            self._auth_revision_seen = self.machine.auth.revision
            self.watches.rejudge(self.machine.auth)
        woken = self.machine.woken
        if woken:
            self.machine.woken = set()
            self.watches.wake(woken)
        self.leases.after_apply()

    # ------------------------------------------------------------------ client ops

    def header(self, revision: int | None = None) -> dict[str, int]:
        return {
            "cluster_id": self.cluster_id,
            "member_id": self.member_id,
            "revision": self.machine.store.revision if revision is None else revision,
            "raft_term": self.core.term,
        }

    def ops(self) -> dict[str, Handler]:
        ops: dict[str, Handler] = {"status": self.op_status, "range": self.op_range}
        for op in WRITE_OPS:
            ops[op] = self._write_op(op)
        ops["config_validate"] = self.op_config_validate
        ops.update(self.membership.ops())
        ops.update(self.leases.ops())
        ops.update(self.watches.ops())
        ops.update(self.alarm_service.ops())
        ops.update(self.auth.ops())
        return ops

    async def op_status(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        st = self.core.node.status()
        return {
            "header": self.header(),
            "name": self.cfg.name,
            "version": __version__,
            "leader": st.leader,
            "role": st.role.value,
            "raft_term": st.term,
            "raft_index": st.last_index,
            "commit_index": st.commit,
            "raft_applied_index": self.core.applied,
            "voters": list(st.conf_state.voters),
            "learners": list(st.conf_state.learners),
            "is_learner": self.member_id in st.conf_state.learners,
            "db_size": self.machine.store.size_bytes,
            "fsyncs": self.loop.fsyncs,
            "leases": len(self.machine.lessor),
            "watchers": len(self.machine.hub),
            "errors": self.alarm_service.errors(),
            "disk_full": self.loop.disk_full,
        }

    def fast_range(self, req: dict[str, Any], conn: Connection) -> dict[str, Any] | None:
        """A serializable range needs no Raft round: answered at once
        (``api_server.FastHandler``); a linearizable one takes ``op_range``'s path."""
        if req.get("serializable") is not True:
            return None
        return self._range(self._range_request(req))

    async def op_range(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        rr = self._range_request(req)
        if not rr.serializable:
            await self.loop.read_barrier()
        return self._range(rr)

    def _range_request(self, req: dict[str, Any]) -> RangeRequest:
        rr: RangeRequest = decode_request("range", req)
        check_request_sizes(rr, self.cfg.max_key_bytes, self.cfg.max_value_bytes)
        return rr

    def _range(self, rr: RangeRequest) -> dict[str, Any]:
        resp = self.machine.store.range(rr)
        return {"header": self.header(resp.header_revision), **encode_response(resp)}

    async def op_config_validate(self, req: dict[str, Any], conn: Connection) -> dict[str, Any]:
        """Dry run of a config write (``{name, value}``): judged against the current schema
        after a ReadIndex round, so against what a write now would meet; nothing changes."""
        name, value = req.get("name"), req.get("value")
        if not isinstance(name, str) or not name:
            raise ClientError("field 'name' must be a non-empty string")
        if not isinstance(value, bytes | str):
            raise ClientError("field 'value' must be bytes (the JSON document)")
        try:
            key = config_key(name)
        except ValueError as e:
            raise ClientError(str(e)) from None
        await self.loop.read_barrier()
        self.machine.validate_put(key, value.encode() if isinstance(value, str) else bytes(value))
        return {"header": self.header(), "valid": True}

    def _write_op(self, op: str) -> Handler:
        async def handle(req: dict[str, Any], conn: Connection) -> dict[str, Any]:
            decoded = decode_request(op, req)  # refuse a bad request before proposing it
            check_request_sizes(decoded, self.cfg.max_key_bytes, self.cfg.max_value_bytes)
            fields = {k: v for k, v in req.items() if k not in ("id", "op")}
            if isinstance(decoded, TxnRequest) and not has_writes(decoded):
                # A read-only txn is a read: one ReadIndex round, no log entry.
                await self.loop.read_barrier()
                resp: Any = self.machine.store.txn(decoded)[0]
            else:
                await self.alarm_service.check_quota(decoded)
                resp = await self.loop.propose(encode_command(op, fields))
            if isinstance(resp, DiscoverdError):
                raise resp
            return {"header": self.header(getattr(resp, "header_revision", None)),
                    **encode_response(resp)}
        return handle

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Member] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        try:
            # Bind before opening the nursery: a port in use is then a plain OSError that
            # `discoverd serve` reports in one line, not an ExceptionGroup traceback.
            peer_listeners = await _listen(parse_urls(cfg.listen_peer_urls))
            try:
                client_listeners, client_tls = await self._listen_clients()
            except OSError:
                await _close_all(peer_listeners)
                raise
            async with trio.open_nursery() as nursery:
                await nursery.start(self.transport.serve, peer_listeners)
                await nursery.start(self.transport.run)
                await nursery.start(self.membership.run)
                await nursery.start(self.loop.run)
                await nursery.start(self.leases.run)
                await nursery.start(self.watches.run)
                await nursery.start(partial(self.api.serve, tls=client_tls), client_listeners)
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                nursery.start_soon(self._watch_removed, nursery.cancel_scope)
                nursery.start_soon(self.compactor.run)
                nursery.start_soon(self.alarm_service.run)
                if self.gc_freezer is not None:
                    nursery.start_soon(self.gc_freezer.run)
                self.log.info(
                    "member ready", version=__version__,
                    client_urls=cfg.listen_client_urls, peer_urls=cfg.listen_peer_urls,
                    cluster_id=f"{self.cluster_id:x}", member_id=f"{self.member_id:x}",
                    data_dir=cfg.data_dir,
                )
                task_status.started(self)
        finally:
            self.storage.close()
            self._lock.close()
            self.log.info("member stopped")

    async def _listen_clients(
        self,
    ) -> tuple[list[trio.SocketListener], list[ssl.SSLContext | None]]:
        """The client listeners and, for each, its TLS context: https:// URLs get TLS,
        http:// ones stay plain on the same member (etcd allows both at once)."""
        listeners: list[trio.SocketListener] = []
        contexts: list[ssl.SSLContext | None] = []
        try:
            for url in parse_urls(self.cfg.listen_client_urls):
                got = await _listen([url])
                listeners.extend(got)
                contexts.extend([self.tls.client_server if is_https(url) else None] * len(got))
        except OSError:
            await _close_all(listeners)
            raise
        return listeners, contexts

    def _peer_is_https(self, addr: tuple[str, int]) -> bool:
        """Whether the peer listening at ``addr`` is dialled over TLS: its peer URL says
        (the member table's, newest, else ``--initial-cluster``'s); an address no URL names
        is dialled as this member's own peer URLs are served."""
        urls = [u for _, us in self.cfg.members().values() for u in us]
        membership = getattr(self, "membership", None)
        if membership is not None:
            urls += [u for m in membership.table.members() for u in m.peer_urls]
        for url in reversed(urls):
            try:
                if parse_url(url) == addr:
                    return is_https(url)
            except ClientError:
                continue
        return self.tls.peer_server is not None

    async def _watch_removed(self, scope: trio.CancelScope) -> None:
        """Stop once this member's removal is applied (the raft loop logs why), a moment
        later — as etcd does — so that the answer to the request that removed it and the
        messages telling the others it committed still go out."""
        await self.loop.removed.wait()
        await trio.sleep(REMOVED_STOP_DELAY)
        scope.cancel()

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.log.info("shutting down", signal=signal.Signals(signum).name)
                await self.hand_over_leadership()
                scope.cancel()
                return

    async def hand_over_leadership(self) -> None:
        """If leading, transfer leadership to the most caught-up voter (bounded by an
        election timeout) so the cluster does not wait a full timeout to notice we left."""
        raft = self.core.node.raft
        if raft.role is not Role.LEADER:
            return
        peers = [
            (pr.match, pid) for pid, pr in raft.prs.items()
            if pid != self.member_id and pid in raft.conf_state.voters
        ]
        if not peers:
            return
        _, target = max(peers)
        self.log.info("transferring leadership before shutdown", to=f"{target:x}",
                      term=self.core.term)
        with trio.move_on_after(self.cfg.election_timeout_ms / 1000):
            await self.loop.transfer_leadership(target)
            self.log.info("leadership transferred", to=f"{target:x}")


def _lock_data_dir(data_dir: str) -> IO[bytes]:
    """Hold an exclusive lock on ``<data-dir>/lock`` for the member's lifetime: two members
    writing one WAL would corrupt it, so the second is refused with a clear message."""
    os.makedirs(data_dir, exist_ok=True)
    f = open(os.path.join(data_dir, "lock"), "ab")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ClientError(
            f"data dir {data_dir!r} is in use by another discoverd process"
        ) from None
    return f


async def _listen(urls: list[str]) -> list[trio.SocketListener]:
    """Listen on every URL; an ``OSError`` names the URL that failed (as its filename)."""
    listeners: list[trio.SocketListener] = []
    for url in urls:
        host, port = parse_url(url)
        try:
            listeners.extend(await trio.open_tcp_listeners(port, host=host))
        except OSError as e:
            await _close_all(listeners)
            raise OSError(e.errno, e.strerror or str(e), url) from e
    return listeners


async def _close_all(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        await listener.aclose()


def serve(cfg: MemberConfig) -> None:
    """Run a member until SIGTERM/SIGINT (the ``discoverd serve`` command)."""
    log = configure_logging(cfg.log_format, cfg.log_level, member=cfg.name)
    configure_for_serving()

    async def main() -> None:
        with loading_long_lived():  # the store, restored from the snapshot: millions
            member = Member(cfg, log, SurvivorFreezer(log=log))
        await member.run()

    trio.run(main)
