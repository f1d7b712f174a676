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
    return click.option(f"--{name}", default=default, type=kind, envvar=env,
                        show_default=True, show_envvar=True, help=help_text)


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
@_flag("log-format", "console", "Log format.", click.Choice(["console", "json"]))
@_flag("log-level", "info", "Log level.", click.Choice(["debug", "info", "warning", "error"]))
def serve(**flags: Any) -> None:
    """Run a discoverd member (a single-member cluster with no flags)."""
    from discoverd.errors import ClientError, CorruptData
    from discoverd.server.config import MemberConfig
    from discoverd.server.member import serve as run

    cfg = MemberConfig(
        name=flags["name"],
        data_dir=flags["data_dir"],
        listen_client_urls=flags["listen_client_urls"],
        advertise_client_urls=flags["advertise_client_urls"],
        listen_peer_urls=flags["listen_peer_urls"],
        initial_advertise_peer_urls=flags["initial_advertise_peer_urls"],
        initial_cluster=flags["initial_cluster"],
        initial_cluster_state=flags["initial_cluster_state"],
        initial_cluster_token=flags["initial_cluster_token"],
        heartbeat_interval_ms=flags["heartbeat_interval"],
        election_timeout_ms=flags["election_timeout"],
        snapshot_count=flags["snapshot_count"],
        snapshot_catchup_entries=flags["experimental_snapshot_catchup_entries"],
        quota_backend_bytes=flags["quota_backend_bytes"],
        max_request_bytes=flags["max_request_bytes"],
        watch_progress_notify_interval_ms=flags["experimental_watch_progress_notify_interval"],
        max_watches_per_connection=flags["max_watches_per_connection"],
        auto_compaction_mode=flags["auto_compaction_mode"],
        auto_compaction_retention=flags["auto_compaction_retention"],
        auto_compaction_check_interval_ms=flags["experimental_auto_compaction_check_interval"],
        auto_compaction_watch_bound=flags["experimental_auto_compaction_watch_bound"],
        log_format=flags["log_format"],
        log_level=flags["log_level"],
    )
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
