"""``MemberConfig``: what ``discoverd serve`` was told, with etcd's flag names and defaults.

Also the two identities a member derives from its flags: the cluster id (from
``--initial-cluster-token``: members started with different tokens refuse each other's peer
traffic) and each member's id (from its name, peer URLs and the token, so every member
computes the same ids for the same ``--initial-cluster``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from discoverd.errors import ClientError
from discoverd.kv.auto_compaction import parse_retention

DEFAULT_NAME = "default"
DEFAULT_CLIENT_URL = "http://127.0.0.1:2379"
DEFAULT_PEER_URL = "http://127.0.0.1:2380"
DEFAULT_TOKEN = "discoverd-cluster"


def _id(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1) or 1


def cluster_id_for(token: str) -> int:
    return _id("cluster", token)


def member_id_for(name: str, peer_urls: list[str], token: str) -> int:
    return _id("member", name, *sorted(peer_urls), token)


def parse_url(url: str) -> tuple[str, int]:
    """``http://host:port`` → (host, port); raises ``ClientError`` with the bad URL named."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https", "") or not parts.hostname or not parts.port:
        raise ClientError(f"invalid URL {url!r}: expected http://HOST:PORT")
    return parts.hostname, parts.port


def parse_urls(value: str) -> list[str]:
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ClientError("expected at least one URL")
    for u in urls:
        parse_url(u)
    return urls


def parse_initial_cluster(value: str) -> dict[str, list[str]]:
    """``a=http://h:1,b=http://h:2`` → {"a": [...], "b": [...]} (a name may repeat for
    several URLs, as in etcd)."""
    members: dict[str, list[str]] = {}
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        if not sep or not name:
            raise ClientError(f"invalid --initial-cluster item {item!r}: expected NAME=URL")
        parse_url(url)
        members.setdefault(name.strip(), []).append(url.strip())
    if not members:
        raise ClientError("--initial-cluster is empty")
    return members


@dataclass(slots=True)
class MemberConfig:
    name: str = DEFAULT_NAME
    data_dir: str = ""
    listen_client_urls: str = DEFAULT_CLIENT_URL
    advertise_client_urls: str = DEFAULT_CLIENT_URL
    listen_peer_urls: str = DEFAULT_PEER_URL
    initial_advertise_peer_urls: str = DEFAULT_PEER_URL
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = DEFAULT_TOKEN
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    snapshot_count: int = 10_000
    snapshot_catchup_entries: int = 5_000
    snapshot_bytes: int = 64 * 1024**2
    snapshot_catchup_bytes: int = 32 * 1024**2
    quota_backend_bytes: int = 2 * 1024**3
    max_request_bytes: int = 1536 * 1024
    max_txn_ops: int = 128
    watch_progress_notify_interval_ms: int = 10_000
    max_watches_per_connection: int = 10_000
    watch_buffer_events: int = 1024
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "1h"
    auto_compaction_check_interval_ms: int = 0
    auto_compaction_watch_bound: int = 100_000
    log_format: str = "console"
    log_level: str = "info"
    # -- TLS (docs/security.md): an https:// URL needs cert_file/key_file (peer_* for peers)
    cert_file: str = ""
    key_file: str = ""
    trusted_ca_file: str = ""
    client_cert_auth: bool = False
    peer_cert_file: str = ""
    peer_key_file: str = ""
    peer_trusted_ca_file: str = ""
    peer_client_cert_auth: bool = False
    # -- authentication
    auth_token_ttl: int = 300
    bcrypt_cost: int = 10
    # -- limits on what one client may ask (DESIGN §12)
    max_key_bytes: int = 8 * 1024
    max_value_bytes: int = 1536 * 1024
    max_concurrent_streams: int = 1000
    client_idle_timeout_ms: int = 300_000
    client_write_timeout_ms: int = 30_000
    max_requests_per_second: int = 50_000

    def __post_init__(self) -> None:
        if not self.data_dir:
            self.data_dir = f"{self.name}.discoverd"
        if not self.initial_cluster:
            self.initial_cluster = f"{self.name}={self.initial_advertise_peer_urls.split(',')[0]}"

    def validate(self) -> None:
        """Raise ``ClientError`` naming the first bad flag."""
        parse_urls(self.listen_client_urls)
        parse_urls(self.listen_peer_urls)
        parse_urls(self.initial_advertise_peer_urls)
        members = parse_initial_cluster(self.initial_cluster)
        if self.name not in members:
            raise ClientError(
                f"--initial-cluster has no entry for this member's --name {self.name!r}"
            )
        if self.initial_cluster_state not in ("new", "existing"):
            raise ClientError("--initial-cluster-state must be 'new' or 'existing'")
        if self.heartbeat_interval_ms <= 0:
            raise ClientError("--heartbeat-interval must be positive")
        if self.election_timeout_ms < 5 * self.heartbeat_interval_ms:
            raise ClientError(
                "--election-timeout must be at least 5 times --heartbeat-interval"
            )
        if self.watch_progress_notify_interval_ms <= 0:
            raise ClientError("--experimental-watch-progress-notify-interval must be positive")
        if self.max_watches_per_connection <= 0:
            raise ClientError("--max-watches-per-connection must be positive")
        if self.snapshot_count <= 0:
            raise ClientError("--snapshot-count must be positive")
        if self.snapshot_catchup_entries < 0:
            raise ClientError("--experimental-snapshot-catchup-entries must be >= 0")
        if self.snapshot_bytes < 0 or self.snapshot_catchup_bytes < 0:
            raise ClientError("--snapshot-bytes and --experimental-snapshot-catchup-bytes "
                              "must be >= 0 (0: no bound by bytes)")
        self.auto_compaction_retention_value  # noqa: B018 - parses, raising ClientError
        if self.auto_compaction_check_interval_ms < 0 or self.auto_compaction_watch_bound < 0:
            raise ClientError("--experimental-auto-compaction-check-interval and "
                              "--experimental-auto-compaction-watch-bound must be >= 0")
        if self.log_format not in ("console", "json"):
            raise ClientError("--log-format must be 'console' or 'json'")
        self._validate_security()

    def _validate_security(self) -> None:
        if self.auth_token_ttl <= 0:
            raise ClientError("--auth-token-ttl must be positive")
        if not 4 <= self.bcrypt_cost <= 31:
            raise ClientError("--bcrypt-cost must be between 4 and 31")
        for flag, value in (("--max-key-bytes", self.max_key_bytes),
                            ("--max-value-bytes", self.max_value_bytes),
                            ("--max-concurrent-streams", self.max_concurrent_streams)):
            if value <= 0:
                raise ClientError(f"{flag} must be positive")
        for flag, value in (("--client-idle-timeout", self.client_idle_timeout_ms),
                            ("--client-write-timeout", self.client_write_timeout_ms),
                            ("--max-requests-per-second", self.max_requests_per_second)):
            if value < 0:
                raise ClientError(f"{flag} must be >= 0 (0: no limit)")
        for role, urls, cert, key in (
                ("client", self.listen_client_urls, self.cert_file, self.key_file),
                ("peer", self.listen_peer_urls, self.peer_cert_file, self.peer_key_file)):
            prefix = "--" if role == "client" else "--peer-"
            if bool(cert) != bool(key):
                raise ClientError(f"{prefix}cert-file and {prefix}key-file go together")
            if any(u.strip().startswith("https://") for u in urls.split(",")) and not cert:
                raise ClientError(f"an https:// {role} URL needs {prefix}cert-file and "
                                  f"{prefix}key-file")
        if self.client_cert_auth and not self.trusted_ca_file:
            raise ClientError("--client-cert-auth needs --trusted-ca-file")
        if self.peer_client_cert_auth and not self.peer_trusted_ca_file:
            raise ClientError("--peer-client-cert-auth needs --peer-trusted-ca-file")

    # -- derived

    @property
    def auto_compaction_retention_value(self) -> float:
        """Seconds (periodic) or revisions (revision) of history to keep; 0: off."""
        return parse_retention(self.auto_compaction_mode, self.auto_compaction_retention)

    @property
    def cluster_id(self) -> int:
        return cluster_id_for(self.initial_cluster_token)

    def members(self) -> dict[int, tuple[str, list[str]]]:
        """Member id → (name, peer URLs) for every member of ``--initial-cluster``."""
        return {
            member_id_for(name, urls, self.initial_cluster_token): (name, urls)
            for name, urls in parse_initial_cluster(self.initial_cluster).items()
        }

    @property
    def member_id(self) -> int:
        urls = parse_initial_cluster(self.initial_cluster)[self.name]
        return member_id_for(self.name, urls, self.initial_cluster_token)

    @property
    def tick_seconds(self) -> float:
        return self.heartbeat_interval_ms / 1000

    @property
    def election_ticks(self) -> int:
        return max(2, self.election_timeout_ms // self.heartbeat_interval_ms)

    @property
    def min_lease_ttl(self) -> int:
        """etcd's minimum lease TTL: 1.5 election timeouts, rounded up to whole seconds, so
        that a lease can outlive one leader change."""
        return max(1, -(-3 * self.election_ticks * self.heartbeat_interval_ms // 2000))

    @property
    def member_dir(self) -> str:
        return f"{self.data_dir.rstrip('/')}/member"
