"""``MemberConfig`` and the ``discoverd serve`` flags, without starting a member.

DESIGN §10: flags named as etcd's, defaults name ``default``, data dir ``default.discoverd``,
client ``http://127.0.0.1:2379``, peer ``http://127.0.0.1:2380``; a bad flag is a one-line
error naming it and a non-zero exit.
"""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

import discoverd.server.member
from discoverd.cli.__main__ import cli
from discoverd.errors import ClientError
from discoverd.server.config import MemberConfig


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[MemberConfig]:
    """Replace the server entry point: ``discoverd serve`` only builds and validates its
    config, which lands in the yielded list (a test can never start a real member)."""
    configs: list[MemberConfig] = []
    monkeypatch.setattr(discoverd.server.member, "serve", configs.append)
    return configs


def _clean_env() -> dict[str, str | None]:
    """CliRunner env overrides that remove any DISCOVERD_* variable of the outer shell."""
    return {k: None for k in os.environ if k.startswith("DISCOVERD_")}


# ----------------------------------------------------------------------------- defaults


def test_defaults_are_etcds() -> None:
    cfg = MemberConfig()
    assert cfg.name == "default"
    assert cfg.data_dir == "default.discoverd"
    assert cfg.member_dir == "default.discoverd/member"
    assert cfg.listen_client_urls == "http://127.0.0.1:2379"
    assert cfg.advertise_client_urls == "http://127.0.0.1:2379"
    assert cfg.listen_peer_urls == "http://127.0.0.1:2380"
    assert cfg.initial_advertise_peer_urls == "http://127.0.0.1:2380"
    assert cfg.initial_cluster == "default=http://127.0.0.1:2380"
    assert cfg.initial_cluster_state == "new"
    assert cfg.heartbeat_interval_ms == 100
    assert cfg.election_timeout_ms == 1000
    cfg.validate()  # the defaults are a valid single-member cluster
    assert list(cfg.members()) == [cfg.member_id]


def test_data_dir_defaults_to_the_name() -> None:
    assert MemberConfig(name="infra1").data_dir == "infra1.discoverd"
    assert MemberConfig(name="infra1", data_dir="/var/lib/d").data_dir == "/var/lib/d"


def test_serve_without_flags_builds_the_default_config(captured: list[MemberConfig]) -> None:
    result = CliRunner().invoke(cli, ["serve"], env=_clean_env())
    assert result.exit_code == 0, result.output
    assert captured == [MemberConfig()]


def test_serve_reads_discoverd_env_vars(captured: list[MemberConfig]) -> None:
    env = {
        **_clean_env(),
        "DISCOVERD_NAME": "infra7",
        "DISCOVERD_LISTEN_CLIENT_URLS": "http://127.0.0.1:12379",
        "DISCOVERD_INITIAL_ADVERTISE_PEER_URLS": "http://127.0.0.1:12380",
        "DISCOVERD_ELECTION_TIMEOUT": "2000",
    }
    result = CliRunner().invoke(cli, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    (cfg,) = captured
    assert cfg.name == "infra7"
    assert cfg.data_dir == "infra7.discoverd"
    assert cfg.listen_client_urls == "http://127.0.0.1:12379"
    assert cfg.initial_cluster == "infra7=http://127.0.0.1:12380"
    assert cfg.election_timeout_ms == 2000


def test_a_repeated_flag_takes_its_last_value(captured: list[MemberConfig]) -> None:
    """What the process tests rely on to override one of a member's flags."""
    result = CliRunner().invoke(
        cli, ["serve", "--initial-cluster-token", "a", "--initial-cluster-token", "b"],
        env=_clean_env(),
    )
    assert result.exit_code == 0, result.output
    assert captured[0].initial_cluster_token == "b"


# ----------------------------------------------------------------------------- bad flags


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen_client_urls": "localhost:2379"},
         "invalid URL 'localhost:2379': expected http://HOST:PORT"),
        ({"listen_client_urls": "http://127.0.0.1"},
         "invalid URL 'http://127.0.0.1': expected http://HOST:PORT"),
        ({"listen_peer_urls": "ftp://127.0.0.1:2380"},
         "invalid URL 'ftp://127.0.0.1:2380': expected http://HOST:PORT"),
        ({"listen_peer_urls": " , "}, "expected at least one URL"),
        ({"initial_cluster": "other=http://127.0.0.1:2380"},
         "--initial-cluster has no entry for this member's --name 'default'"),
        ({"initial_cluster": "default"},
         "invalid --initial-cluster item 'default': expected NAME=URL"),
        ({"initial_cluster": "default=http://127.0.0.1"},
         "invalid URL 'http://127.0.0.1': expected http://HOST:PORT"),
        ({"heartbeat_interval_ms": 100, "election_timeout_ms": 499},
         "--election-timeout must be at least 5 times --heartbeat-interval"),
        ({"heartbeat_interval_ms": 0}, "--heartbeat-interval must be positive"),
        ({"snapshot_count": 0}, "--snapshot-count must be positive"),
        ({"snapshot_bytes": -1}, "--snapshot-bytes and --experimental-snapshot-catchup-bytes "
         "must be >= 0 (0: no bound by bytes)"),
        ({"snapshot_catchup_bytes": -1}, "--snapshot-bytes and "
         "--experimental-snapshot-catchup-bytes must be >= 0 (0: no bound by bytes)"),
    ],
)
def test_validate_names_the_bad_flag(kwargs: dict[str, object], message: str) -> None:
    cfg = MemberConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ClientError) as info:
        cfg.validate()
    assert str(info.value) == message


def test_election_timeout_of_exactly_five_heartbeats_is_fine() -> None:
    MemberConfig(heartbeat_interval_ms=100, election_timeout_ms=500).validate()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen-client-urls", "nonsense"],
         "discoverd serve: invalid URL 'nonsense': expected http://HOST:PORT"),
        (["--name", "m1", "--initial-cluster", "m2=http://127.0.0.1:2380"],
         "discoverd serve: --initial-cluster has no entry for this member's --name 'm1'"),
        (["--heartbeat-interval", "100", "--election-timeout", "200"],
         "discoverd serve: --election-timeout must be at least 5 times --heartbeat-interval"),
    ],
)
def test_serve_refuses_a_bad_flag_with_one_line(
    captured: list[MemberConfig], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(cli, ["serve", *args], env=_clean_env())
    assert result.exit_code == 1
    assert captured == []  # never got as far as starting
    assert result.stderr.strip() == message
    assert "Traceback" not in result.output
