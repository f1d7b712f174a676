"""Operator metrics of one member, for ``GET /metrics`` (Prometheus text format).

``docs/metrics.md`` lists every metric; ``tests/server/test_metrics.py`` keeps that list and
this module in step. Names are etcd's with ``etcd`` replaced by ``discoverd`` wherever etcd
has the metric (``etcd_server_has_leader`` → ``discoverd_server_has_leader``,
``etcd_debugging_mvcc_keys_total`` → ``discoverd_debugging_mvcc_keys_total``), so an etcd
dashboard or alert ports by that one rename; the buckets are etcd's too.

Three choices keep the member's one thread from paying for being observed:

* **Values that already exist are read at scrape time.** Term, leader, indexes, revisions,
  key and lease counts, watchers, db size and the plain counters that ``RaftLoop``,
  ``PeerTransport``, ``WatchService`` keep anyway are turned into metric families only when
  someone scrapes (``_Collector``); between scrapes they cost nothing.
* **Durations go into ``Histogram`` below, not prometheus_client's.** Every observation
  happens on the trio thread (requests, applies, the fsync figure once its worker thread has
  returned, probe answers), so a histogram needs no lock: a bisect and two additions, about a
  fifth of prometheus_client's locked ``observe`` — which the per-request and per-entry paths
  would otherwise pay.
* **One registry per member** (``CollectorRegistry``, never the global default), so several
  members in one process (the tests) each report only their own.

prometheus_client still does what it is good at: the registry, the text exposition and the
``process_*`` metrics.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString

from discoverd import __version__
from discoverd.consensus.messages import Entry
from discoverd.errors import DiscoverdError
from discoverd.machine.applier import LeaseGranted, LeaseRevoked, LeasesExpired
from discoverd.member.core import StateMachine
from discoverd.server.limits import LIMIT_CODES

LIMITS = ("key_size", "value_size", "streams", "rate", "idle", "write_timeout")
"""The ``limit`` label's values, always all exposed (a refusal count is 0 before one)."""

if TYPE_CHECKING:
    from discoverd.server.member import Member

_le: Callable[[float], str] = floatToGoString  # a bucket bound as the text format writes it


def exponential_buckets(start: float, factor: float, count: int) -> tuple[float, ...]:
    """Upper bounds ``start * factor**i`` for ``i < count`` (Go's ``ExponentialBuckets``,
    which etcd's histograms are declared with)."""
    return tuple(start * factor**i for i in range(count))


# etcd's buckets, metric by metric, so that its dashboards' quantiles read the same.
APPLY_BUCKETS = exponential_buckets(0.0001, 2, 20)  # etcd_server_apply_duration_seconds
FSYNC_BUCKETS = exponential_buckets(0.001, 2, 14)  # etcd_disk_wal_fsync_duration_seconds
SNAPSHOT_BUCKETS = exponential_buckets(0.001, 2, 14)  # etcd_debugging_snap_save_*
RTT_BUCKETS = exponential_buckets(0.0001, 2, 16)  # etcd_network_peer_round_trip_time_seconds
# etcd's client latency (grpc_server_handling_seconds) uses Prometheus' default buckets,
# which start at 5 ms: every discoverd request would land in the first. 0.1 ms .. 3.3 s.
REQUEST_BUCKETS = exponential_buckets(0.0001, 2, 16)


class Histogram:
    """Counts of observations per bucket, and their sum, for one thread (see the module
    docstring for why not prometheus_client's): observing costs a bisect and two additions.

    ``counts[i]`` holds observations ``<= bounds[i]`` and ``> bounds[i-1]``; the last slot is
    everything above the largest bound (``+Inf``). Exposition makes them cumulative.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def __repr__(self) -> str:
        return f"<Histogram count={self.count} sum={self.total:g}>"

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as the text format wants them."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((_le(bound), running))
        return out


class TimedMachine:
    """The state machine as ``MemberCore`` sees it: ``KvMachine`` with each apply timed
    (split by whether the machine refused the command) and leases granted, revoked and
    expired counted from the results — the one place every applied entry passes, without
    timing code in the pure ``machine/`` and ``member/`` packages."""

    __slots__ = ("_machine", "_metrics")

    def __init__(self, machine: StateMachine, metrics: MemberMetrics) -> None:
        self._machine = machine
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"<TimedMachine {self._machine!r}>"

    def apply(self, entry: Entry) -> Any:
        started = time.perf_counter()
        result = self._machine.apply(entry)
        seconds = time.perf_counter() - started
        m = self._metrics
        if isinstance(result, DiscoverdError):
            m.apply_refused_seconds.observe(seconds)
            return result
        m.apply_seconds.observe(seconds)
        kind = type(result)
        if kind in _LEASE_RESULTS:
            if kind is LeaseGranted:
                m.leases_granted += 1
            elif kind is LeaseRevoked:
                m.leases_revoked += 1
            else:
                m.leases_expired += result.revoked
                m.leases_revoked += result.revoked
        return result

    def snapshot(self) -> bytes:
        return self.snapshot_builder()()

    def snapshot_builder(self) -> Callable[[], bytes]:
        """The machine's builder, timed from the freeze to the last byte encoded."""
        started = time.perf_counter()
        build = self._machine.snapshot_builder()

        def timed_build() -> bytes:
            data = build()
            self._metrics.snapshot_marshalled(time.perf_counter() - started)
            return data

        return timed_build

    def restore(self, data: bytes) -> None:
        self._machine.restore(data)


_LEASE_RESULTS = frozenset({LeaseGranted, LeaseRevoked, LeasesExpired})


class MemberMetrics:
    """Everything ``/metrics`` shows for one member; ``render()`` is the whole endpoint.

    Built by ``Member`` before its parts, which get the hooks they feed:
    ``timed(machine)`` (applies, snapshot marshalling), ``wal_fsync``/``snapshot_saved``
    (``RaftLoop``'s observer), ``observe_peer_rtt`` (``PeerTransport``'s probes),
    ``observe_request`` (``ClientApi``; another listener may call it too). The member's
    state is read at scrape time only, so this may be built before that state exists.
    """

    def __init__(self, member: Member) -> None:
        self._member = member
        self.apply_seconds = Histogram(APPLY_BUCKETS)
        self.apply_refused_seconds = Histogram(APPLY_BUCKETS)
        self.wal_fsync_seconds = Histogram(FSYNC_BUCKETS)
        self.snapshot_save_seconds = Histogram(SNAPSHOT_BUCKETS)
        self.snapshot_marshal_seconds = Histogram(SNAPSHOT_BUCKETS)
        self.peer_rtt_seconds: dict[int, Histogram] = {}
        self.requests: dict[tuple[str, str], int] = {}
        self.request_seconds: dict[str, Histogram] = {}
        self.leases_granted = 0
        self.leases_revoked = 0
        self.leases_expired = 0
        self._marshal_seconds = 0.0
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        ProcessCollector(registry=self.registry)

    def __repr__(self) -> str:
        return f"<MemberMetrics requests={sum(self.requests.values())}>"

    # ------------------------------------------------------------------ the endpoint

    def render(self) -> tuple[bytes, str]:
        """The body and Content-Type of a ``GET /metrics`` answer."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ hooks (trio thread)

    def timed(self, machine: StateMachine) -> TimedMachine:
        return TimedMachine(machine, self)

    def observe_request(self, op: str, code: str, seconds: float | None) -> None:
        """One client request finished with ``code`` ("ok" or an error code). ``op`` must
        come from a fixed set (a known op, or "unknown"): each value is a label. ``seconds``
        is None for a stream (a watch lives as long as its client wants: not a latency)."""
        key = (op, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            hist = self.request_seconds.get(op)
            if hist is None:
                hist = self.request_seconds[op] = Histogram(REQUEST_BUCKETS)
            hist.observe(seconds)

    def wal_fsync(self, seconds: float) -> None:
        self.wal_fsync_seconds.observe(seconds)

    def snapshot_marshalled(self, seconds: float) -> None:
        self.snapshot_marshal_seconds.observe(seconds)
        self._marshal_seconds = seconds

    def snapshot_saved(self, seconds: float) -> None:
        """A snapshot was written in ``seconds``; its total includes the marshalling that
        ``complete`` did just before in the same Ready (as etcd's total does)."""
        self.snapshot_save_seconds.observe(self._marshal_seconds + seconds)
        self._marshal_seconds = 0.0

    def observe_peer_rtt(self, peer: int, seconds: float) -> None:
        hist = self.peer_rtt_seconds.get(peer)
        if hist is None:
            hist = self.peer_rtt_seconds[peer] = Histogram(RTT_BUCKETS)
        hist.observe(seconds)

    # ------------------------------------------------------------------ scrape time

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read from the member now (docs/metrics.md says what each
        one means and which etcd metric it stands for)."""
        m = self._member
        core, loop, machine = m.core, m.loop, m.machine
        raft = core.node.raft
        store, hub = machine.store, machine.hub

        yield _gauge("discoverd_server_info",
                     "Which member this is: 1, with its name, ids and version as labels.",
                     1, member=m.cfg.name, member_id=f"{m.member_id:x}",
                     cluster=f"{m.cluster_id:x}", version=__version__)
        yield _gauge("discoverd_server_has_leader",
                     "Whether or not a leader exists. 1 is existence, 0 is not.",
                     1 if core.leader else 0)
        yield _gauge("discoverd_server_is_leader",
                     "Whether or not this member is the leader. 1 if is, 0 otherwise.",
                     1 if core.is_leader else 0)
        yield _gauge("discoverd_server_is_learner",
                     "Whether or not this member is a learner. 1 if is, 0 otherwise.",
                     1 if m.member_id in raft.conf_state.learners else 0)
        yield _gauge("discoverd_server_raft_term", "The current Raft term of this member.",
                     core.term)
        yield _gauge("discoverd_disk_wal_disk_full",
                     "1 while this member cannot write its WAL (disk full), else 0.",
                     1 if loop.disk_full else 0)
        yield _counter("discoverd_server_leader_changes_seen_total",
                       "The number of leader changes seen.", loop.leader_changes)
        yield _gauge("discoverd_server_proposals_committed_total",
                     "The total number of consensus proposals committed (the commit index).",
                     raft.log.committed)
        yield _gauge("discoverd_server_proposals_applied_total",
                     "The total number of consensus proposals applied (the applied index).",
                     core.applied)
        yield _gauge("discoverd_server_proposals_pending",
                     "The current number of pending proposals to commit.",
                     loop.proposals_pending)
        yield _counter("discoverd_server_proposals_failed_total",
                       "The total number of failed proposals seen.", loop.proposals_failed)
        yield _counter("discoverd_server_read_indexes_failed_total",
                       "The total number of failed read indexes seen.",
                       loop.read_indexes_failed)
        apply = HistogramMetricFamily(
            "discoverd_server_apply_duration_seconds",
            "The latency distributions of applying a committed entry to the state machine.",
            labels=["success"])
        apply.add_metric(["true"], self.apply_seconds.buckets(), self.apply_seconds.total)
        apply.add_metric(["false"], self.apply_refused_seconds.buckets(),
                         self.apply_refused_seconds.total)
        yield apply
        auth = getattr(m, "auth", None)
        if auth is not None:
            yield _gauge("discoverd_auth_enabled", "1 while authentication is enabled.",
                         1 if auth.store.enabled else 0)
            yield _gauge("discoverd_auth_revision", "The auth store's revision (it counts "
                         "every user, role and permission change).", auth.store.revision)
            logins = CounterMetricFamily(
                "discoverd_auth_authentications_total",
                "Authentications (logins) answered by this member, by result.",
                labels=["result"])
            logins.add_metric(["ok"], auth.authentications)
            logins.add_metric(["failed"], auth.failed_authentications)
            yield logins
            yield _counter("discoverd_auth_permission_denied_total",
                           "Requests refused by this member for lacking a permission, or "
                           "for no or a bad token.", auth.denials)
        yield _gauge("discoverd_server_quota_backend_bytes",
                     "Current backend storage quota size in bytes.",
                     m.cfg.quota_backend_bytes)

        yield _histogram("discoverd_disk_wal_fsync_duration_seconds",
                         "The latency distributions of fsync called by WAL.",
                         self.wal_fsync_seconds)
        yield _histogram("discoverd_debugging_snap_save_total_duration_seconds",
                         "The total latency distributions of save called by snapshot.",
                         self.snapshot_save_seconds)
        yield _histogram("discoverd_debugging_snap_save_marshalling_duration_seconds",
                         "The marshalling cost distributions of save called by snapshot.",
                         self.snapshot_marshal_seconds)

        freezer = m.gc_freezer
        if freezer is not None:  # only a member that owns its process (server/gc_policy.py)
            yield _gauge("discoverd_gc_frozen_objects", "Objects moved out of the cyclic "
                         "collector's sight (gc.freeze): the long-lived ones, the store's.",
                         freezer.frozen)
            yield _counter("discoverd_gc_freeze_rounds_total", "Collections of the not-yet-frozen "
                           "objects followed by a freeze.", freezer.rounds)
            yield _counter("discoverd_gc_freeze_pause_seconds_total", "Time the member's loop "
                           "stood still for those rounds.", freezer.pause_seconds_total)
            yield _gauge("discoverd_gc_freeze_longest_pause_seconds",
                         "The longest such round.", freezer.longest_pause_seconds)

        yield _gauge("discoverd_mvcc_db_total_size_in_bytes",
                     "Bytes of keys and values over every kept version (what the backend "
                     "quota is checked against).", store.size_bytes)
        yield _gauge("discoverd_debugging_mvcc_keys_total", "Total number of keys.",
                     store.key_count)
        yield _gauge("discoverd_debugging_mvcc_current_revision",
                     "The current revision of store.", store.revision)
        yield _gauge("discoverd_debugging_mvcc_compact_revision",
                     "The revision of the last compaction in store.", store.compact_revision)
        stats = hub.stats
        yield _gauge("discoverd_debugging_mvcc_watcher_total", "Total number of watchers.",
                     stats.watchers)
        yield _gauge("discoverd_debugging_mvcc_slow_watcher_total",
                     "Total number of unsynced slow watchers.", stats.unsynced)
        yield _gauge("discoverd_debugging_mvcc_watch_stream_total",
                     "Total number of watch streams (client connections with a watch).",
                     m.watches.connections_watching)
        yield _gauge("discoverd_debugging_mvcc_pending_events_total",
                     "Total number of pending events to be sent.", stats.buffered_events)
        yield _counter("discoverd_debugging_mvcc_events_total",
                       "Total number of events sent by this member.", m.watches.events_sent)

        yield _gauge("discoverd_lease_active", "The number of leases that exist now.",
                     len(machine.lessor))
        yield _counter("discoverd_debugging_lease_granted_total",
                       "The total number of granted leases.", self.leases_granted)
        yield _counter("discoverd_debugging_lease_revoked_total",
                       "The total number of revoked leases (expired ones included).",
                       self.leases_revoked)
        yield _counter("discoverd_debugging_server_lease_expired_total",
                       "The total number of expired leases.", self.leases_expired)

        requests = CounterMetricFamily(
            "discoverd_client_requests_total",
            "The total number of client requests answered, by op and outcome code.",
            labels=["op", "code"])
        for (op, code), n in sorted(self.requests.items()):
            requests.add_metric([op, code], n)
        yield requests
        durations = HistogramMetricFamily(
            "discoverd_client_request_duration_seconds",
            "The latency distributions of client requests (unary ops; not streams).",
            labels=["op"])
        for op, hist in sorted(self.request_seconds.items()):
            durations.add_metric([op], hist.buckets(), hist.total)
        yield durations
        yield self._limit_refusals()

        yield from self._network()

    def _limit_refusals(self) -> CounterMetricFamily:
        """Requests refused by a limit are read from their answer codes (native and HTTP
        alike reach ``observe_request``); connections a limit closed, and HTTP requests
        refused for their rate before any op ran, from the client port's own counter."""
        counts = dict.fromkeys(LIMITS, 0)
        for (_, code), n in self.requests.items():
            limit = LIMIT_CODES.get(code)
            if limit is not None:
                counts[limit] += n
        for limit, n in self._member.api.limit_refusals.items():
            counts[limit] = counts.get(limit, 0) + n
        family = CounterMetricFamily(
            "discoverd_client_limit_refusals_total",
            "Requests refused and client connections closed by a per-client limit.",
            labels=["limit"])
        for limit, n in counts.items():
            family.add_metric([limit], n)
        return family

    def _network(self) -> Iterator[Metric]:
        t = self._member.transport
        sent = CounterMetricFamily("discoverd_network_peer_sent_bytes_total",
                                   "The total number of bytes sent to peers.", labels=["To"])
        received = CounterMetricFamily("discoverd_network_peer_received_bytes_total",
                                       "The total number of bytes received from peers.",
                                       labels=["From"])
        failures = CounterMetricFamily(
            "discoverd_network_peer_sent_failures_total",
            "The total number of messages to peers that were dropped unsent.", labels=["To"])
        snap_sent = CounterMetricFamily("discoverd_network_snapshot_send_success",
                                        "Total number of successful snapshot sends.",
                                        labels=["To"])
        snap_failed = CounterMetricFamily("discoverd_network_snapshot_send_failures",
                                          "Total number of snapshot send failures.",
                                          labels=["To"])
        snap_received = CounterMetricFamily("discoverd_network_snapshot_receive_success",
                                            "Total number of successful snapshot receives.",
                                            labels=["From"])
        for peer, st in sorted(t.stats.items()):
            label = [f"{peer:x}"]
            sent.add_metric(label, st.bytes_sent)
            received.add_metric(label, st.bytes_received)
            failures.add_metric(label, st.messages_dropped)
            snap_sent.add_metric(label, st.snapshots_sent)
            snap_failed.add_metric(label, st.snapshots_failed)
            snap_received.add_metric(label, st.snapshots_received)
        yield from (sent, received, failures, snap_sent, snap_failed, snap_received)
        rtt = HistogramMetricFamily(
            "discoverd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers (transport probes, not Raft).",
            labels=["To"])
        for peer, hist in sorted(self.peer_rtt_seconds.items()):
            rtt.add_metric([f"{peer:x}"], hist.buckets(), hist.total)
        yield rtt


class _Collector:
    """Hands the registry ``MemberMetrics.collect`` (a registry wants a collector object)."""

    def __init__(self, metrics: MemberMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect()


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=sorted(labels))
    family.add_metric([labels[k] for k in sorted(labels)], value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=hist.buckets(), sum_value=hist.total)
