"""One real single-member cluster shared by the HTTP tests that leave it healthy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from discoverd.testing.cluster import MemberProcess, ProcessCluster


@pytest.fixture(scope="session")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemberProcess]:
    cluster = ProcessCluster(tmp_path_factory.mktemp("http-member"), 1)
    try:
        cluster.start_all()
        cluster.wait_for_leader()
        (m,) = cluster.members
        yield m
        assert m.running, "the member died"
        assert "client connection failed" not in m.log_text(), "an error escaped a handler"
        assert "http handler failed" not in m.log_text(), "a gateway handler crashed"
    finally:
        cluster.close()
