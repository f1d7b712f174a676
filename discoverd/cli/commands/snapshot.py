"""``discoverd snapshot save|status|restore``: backups, as etcdctl's ``snapshot`` verbs
(docs/operations.md "Backup and restore").

* ``save FILE``: streams the current member's key-value store into FILE (temp file, fsync,
  rename), with a progress bar on stderr; prints etcdctl's ``Snapshot saved at FILE`` and the
  file's SHA-256.
* ``status FILE``: checks the file's hash and prints HASH, REVISION, TOTAL KEYS, TOTAL SIZE
  as etcdctl does (``-w simple|table|json``); the hash is the file's SHA-256 (etcd prints a
  CRC-32 of its bolt file; ours covers the whole file and is what ``save`` printed).
* ``restore FILE --data-dir D --name N --initial-cluster ... --initial-cluster-token T
  --initial-advertise-peer-urls U``: seeds one member of a new cluster; then start it with
  ``discoverd serve`` and the same flags.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from discoverd.cli.options import global_options, take_globals
from discoverd.cli.output import CliError, humanize_bytes, render_table, write_out


@click.group("snapshot", short_help="Manages etcd node snapshots.")
@global_options(root=False)
def snapshot(**_flags: Any) -> None:
    """Save, inspect and restore backups of the key-value store."""


@snapshot.command("save", short_help="Stores a snapshot of a member to a given file.")
@click.argument("filename", type=click.Path(dir_okay=False, path_type=Path))
@global_options(root=False)
@click.pass_context
def save(ctx: click.Context, /, filename: Path, **flags: Any) -> None:
    g = take_globals(ctx, flags)
    if len(g.endpoints) != 1:
        raise CliError(f"snapshot must be requested to one selected node, not multiple "
                       f"{list(g.endpoints)}")
    bar: Any = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=max(total, 1), label="receiving snapshot",
                                    file=sys.stderr, show_pos=False, show_percent=True)
            bar.__enter__()
        bar.update(done - bar.pos)

    with g.client() as client:
        try:
            saved = client.snapshot_save(filename, progress=progress)
        finally:
            if bar is not None:
                bar.__exit__(None, None, None)
    h = saved.header
    sys.stderr.write(f"fetched snapshot from {saved.endpoint}: revision {h.revision}, "
                     f"{h.keys} keys, {humanize_bytes(saved.file_size)}\n")
    write_out(f"Snapshot saved at {filename}\nsha256 {saved.sha256}\n".encode())


@snapshot.command("status", short_help="Gets backend snapshot status of a given file.")
@click.argument("filename", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@global_options(root=False)
@click.pass_context
def status(ctx: click.Context, /, filename: Path, **flags: Any) -> None:
    from discoverd.wire.snapshot_file import SnapshotFileError, read_snapshot

    g = take_globals(ctx, flags)
    try:
        with filename.open("rb") as f:
            header, _, digest = read_snapshot(f, keep_image=False)
    except SnapshotFileError as e:
        raise CliError(f"{filename}: {e}") from None
    size = filename.stat().st_size
    if g.write_out == "json":
        out = json.dumps({"hash": digest, "revision": header.revision, "totalKey": header.keys,
                          "totalSize": size, "compactRevision": header.compact_revision,
                          "index": header.index, "term": header.term,
                          "memberId": f"{header.member_id:x}", "version": header.version},
                         separators=(",", ":")) + "\n"
    elif g.write_out == "table":
        out = render_table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                           [[digest[:16], str(header.revision), str(header.keys),
                             humanize_bytes(size)]])
    elif g.write_out in ("simple", "fields"):
        out = f"{digest}, {header.revision}, {header.keys}, {humanize_bytes(size)}\n"
    else:
        raise CliError(f"{g.write_out} not supported as output format")
    write_out(out.encode())


@snapshot.command("restore", short_help="Restores a snapshot into a new member's data "
                                        "directory.")
@click.argument("filename", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--data-dir", required=True, help="The new member's data directory.")
@click.option("--name", default="default", show_default=True, help="The new member's name.")
@click.option("--initial-cluster", default="", help="NAME=PEER_URL,... of the new cluster "
              "(default: this member alone).")
@click.option("--initial-cluster-token", default="discoverd-cluster", show_default=True,
              help="The new cluster's token (give it a new one).")
@click.option("--initial-advertise-peer-urls", default="http://127.0.0.1:2380",
              show_default=True, help="This member's peer URLs.")
@global_options(root=False)
@click.pass_context
def restore(ctx: click.Context, /, filename: Path, data_dir: str, name: str,
            initial_cluster: str, initial_cluster_token: str,
            initial_advertise_peer_urls: str, **flags: Any) -> None:
    from discoverd.errors import ClientError
    from discoverd.server.config import MemberConfig
    from discoverd.server.restore import restore_member
    from discoverd.wire.snapshot_file import SnapshotFileError

    take_globals(ctx, flags)
    cfg = MemberConfig(name=name, data_dir=data_dir, initial_cluster=initial_cluster,
                       initial_cluster_token=initial_cluster_token,
                       initial_advertise_peer_urls=initial_advertise_peer_urls)
    try:
        header = restore_member(filename, cfg,
                                say=lambda line: sys.stderr.write(f"{line}\n"))
    except (ClientError, SnapshotFileError) as e:
        raise CliError(str(e)) from None
    write_out(f"restored snapshot {filename} (revision {header.revision}, {header.keys} "
              f"keys) into {data_dir} as member {name} ({cfg.member_id:x}) of cluster "
              f"{cfg.cluster_id:x}\n".encode())
