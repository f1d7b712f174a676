"""A member's id on restart: the one its data directory was created with when that
directory is its own (same name, same cluster) — so ``member update`` can move it to other
peer URLs — and the one its flags derive otherwise (a fresh directory, or another's)."""

from __future__ import annotations

from pathlib import Path

from discoverd.server.config import MemberConfig
from discoverd.server.membership import member_identity
from discoverd.storage.fs import OsFS
from discoverd.storage.meta import MemberMeta, write_meta


def config(tmp_path: Path, name: str, peer: str, token: str = "t") -> MemberConfig:
    return MemberConfig(name=name, data_dir=str(tmp_path / "d"),
                        initial_advertise_peer_urls=peer,
                        initial_cluster=f"{name}={peer}", initial_cluster_token=token)


def test_a_fresh_data_dir_takes_the_id_the_flags_derive(tmp_path: Path) -> None:
    cfg = config(tmp_path, "m1", "http://127.0.0.1:2380")
    assert member_identity(cfg) == cfg.member_id


def test_its_own_data_dir_keeps_its_id_when_its_peer_urls_changed(tmp_path: Path) -> None:
    old = config(tmp_path, "m1", "http://127.0.0.1:2380")
    (tmp_path / "d" / "member").mkdir(parents=True)
    write_meta(OsFS(), old.member_dir + "/meta", MemberMeta(old.cluster_id, old.member_id, "m1"))
    moved = config(tmp_path, "m1", "http://127.0.0.1:2390")
    assert moved.member_id != old.member_id
    assert member_identity(moved) == old.member_id
    # Another member's directory, or another cluster's: the derived id, which the storage
    # layer then refuses as not this directory's.
    other = config(tmp_path, "m2", "http://127.0.0.1:2390")
    assert member_identity(other) == other.member_id
    stranger = config(tmp_path, "m1", "http://127.0.0.1:2390", token="another")
    assert member_identity(stranger) == stranger.member_id
