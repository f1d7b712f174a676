"""``discoverd serve``: run a member, with etcd's flag names."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click


def _flag(
    name: str, default: object, help_text: str, kind: object = str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An option named as etcd's, with a ``DISCOVERD_*`` environment variable."""
    env = "DISCOVERD_" + name.upper().replace("-", "_")
    if kind is bool:  # a switch, as etcd's: --client-cert-auth (env: true/false)
        return click.option(f"--{name}", is_flag=True, default=default, envvar=env,
                            show_envvar=True, help=help_text)
    return click.option(f"--{name}", default=default, type=kind, envvar=env,
                        show_default=True, show_envvar=True, help=help_text)


_FIELDS = {
    "heartbeat_interval": "heartbeat_interval_ms",
    "election_timeout": "election_timeout_ms",
    "experimental_snapshot_catchup_entries": "snapshot_catchup_entries",
    "experimental_snapshot_catchup_bytes": "snapshot_catchup_bytes",
    "experimental_watch_progress_notify_interval": "watch_progress_notify_interval_ms",
    "experimental_auto_compaction_check_interval": "auto_compaction_check_interval_ms",
    "experimental_auto_compaction_watch_bound": "auto_compaction_watch_bound",
    "client_idle_timeout": "client_idle_timeout_ms",
    "client_write_timeout": "client_write_timeout_ms",
}
"""Flags whose MemberConfig field has another name (the rest match with '-' → '_')."""


@click.command()
@_flag("name", "default", "Human-readable name for this member.")
@_flag("data-dir", "", "Path to the data directory (default: NAME.discoverd).")
@_flag("listen-client-urls", "http://127.0.0.1:2379", "URLs to listen on for client traffic.")
@_flag("advertise-client-urls", "http://127.0.0.1:2379", "Client URLs told to the cluster.")
@_flag("listen-peer-urls", "http://127.0.0.1:2380", "URLs to listen on for peer traffic.")
@_flag("initial-advertise-peer-urls", "http://127.0.0.1:2380", "Peer URLs told to the cluster.")
@_flag("initial-cluster", "", "Initial cluster: NAME=PEER_URL,... (default: just this member).")
@_flag("initial-cluster-state", "new", "'new' to bootstrap, 'existing' to join.",
       click.Choice(["new", "existing"]))
@_flag("initial-cluster-token", "discoverd-cluster", "Cluster token; members with another "
       "token refuse each other.")
@_flag("heartbeat-interval", 100, "Time (ms) of a heartbeat interval (one Raft tick).", int)
@_flag("election-timeout", 1000, "Time (ms) for an election to time out.", int)
@_flag("snapshot-count", 10_000, "Applied entries between snapshots.", int)
@_flag("experimental-snapshot-catchup-entries", 5_000, "Entries kept behind a snapshot for "
       "slow followers to catch up from (older ones get the snapshot).", int)
@_flag("snapshot-bytes", 64 * 1024**2, "Also snapshot once the entries applied since the "
       "last snapshot hold this many bytes (bounds the log kept in memory; 0: by count "
       "only).", int)
@_flag("experimental-snapshot-catchup-bytes", 32 * 1024**2, "At most this many bytes of "
       "entries are kept behind a snapshot, whatever the entry count (0: no bound).", int)
@_flag("quota-backend-bytes", 2 * 1024**3, "Storage size at which writes stop (NOSPACE).", int)
@_flag("max-request-bytes", 1536 * 1024, "Largest client request accepted.", int)
@_flag("experimental-watch-progress-notify-interval", 10_000,
       "Time (ms) between progress notifications to idle watches that asked for them.", int)
@_flag("max-watches-per-connection", 10_000, "Most concurrent watches on one connection.", int)
@_flag("auto-compaction-mode", "periodic", "'periodic' (keep a duration of history) or "
       "'revision' (keep a number of revisions).", click.Choice(["periodic", "revision"]))
@_flag("auto-compaction-retention", "1h", "History to keep: a duration ('1h', '30m'; a bare "
       "number is hours) in periodic mode, a count in revision mode; '0' turns it off.")
@_flag("experimental-auto-compaction-check-interval", 0, "Time (ms) between compaction "
       "checks; 0: retention/10 (periodic, at most 6 min) or 5 min (revision), as etcd.", int)
@_flag("experimental-auto-compaction-watch-bound", 100_000, "Compaction never passes a "
       "watcher that still needs history, unless it is this many revisions behind.", int)
@_flag("cert-file", "", "Client TLS certificate (PEM); needed by https:// client URLs.")
@_flag("key-file", "", "Client TLS private key (PEM).")
@_flag("trusted-ca-file", "", "CA bundle (PEM) that client certificates must chain to.")
@_flag("client-cert-auth", False, "Refuse clients without a certificate from "
       "--trusted-ca-file (with auth on, the certificate's CN is the user).", bool)
@_flag("peer-cert-file", "", "Peer TLS certificate (PEM); needed by https:// peer URLs.")
@_flag("peer-key-file", "", "Peer TLS private key (PEM).")
@_flag("peer-trusted-ca-file", "", "CA bundle (PEM) that peers' certificates must chain to.")
@_flag("peer-client-cert-auth", False, "Refuse peers without a certificate from "
       "--peer-trusted-ca-file (mutual TLS between members).", bool)
@_flag("auth-token-ttl", 300, "Seconds an auth token stays valid.", int)
@_flag("bcrypt-cost", 10, "bcrypt cost (4-31) of stored password hashes.", int)
@_flag("max-key-bytes", 8 * 1024, "Longest key (or range end) accepted.", int)
@_flag("max-value-bytes", 1536 * 1024, "Longest value accepted.", int)
@_flag("max-concurrent-streams", 1000, "Most streams (watch, keep-alive, snapshot) open "
       "at once on one client connection.", int)
@_flag("client-idle-timeout", 300_000, "Time (ms) after which a client connection with "
       "nothing in flight and no stream open is closed; 0: never.", int)
@_flag("client-write-timeout", 30_000, "Time (ms) a client may take to read an answer "
       "before its connection is closed (a client that stopped reading); 0: never.", int)
@_flag("max-requests-per-second", 50_000, "Requests per second one client connection may "
       "send (bursts of twice that); more are refused with too_many_requests; 0: no bound.",
       int)
@_flag("log-format", "console", "Log format.", click.Choice(["console", "json"]))
@_flag("log-level", "info", "Log level.", click.Choice(["debug", "info", "warning", "error"]))
def serve(**flags: Any) -> None:
    """Run a discoverd member (a single-member cluster with no flags)."""
    from discoverd.errors import ClientError, CorruptData
    from discoverd.server.config import MemberConfig
    from discoverd.server.member import serve as run

    cfg = MemberConfig(**{_FIELDS.get(flag, flag): value for flag, value in flags.items()})
    try:
        cfg.validate()
        run(cfg)
    except (ClientError, CorruptData) as e:
        click.echo(f"discoverd serve: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"discoverd serve: {e.strerror or e}: {getattr(e, 'filename', '') or ''}",
                   err=True)
        sys.exit(1)
