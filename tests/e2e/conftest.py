"""Fixtures shared by the multi-process tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from discoverd.testing.cluster import ProcessCluster

MakeCluster = Callable[..., ProcessCluster]


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[MakeCluster]:
    """A factory of clusters (not started): ``clusters(size, *extra_serve_flags, **kwargs)``.
    Every member of every cluster made is killed at teardown, and the logs' tails are printed
    for the failure report."""
    made: list[ProcessCluster] = []

    def make(size: int = 3, *extra: str, **kwargs: Any) -> ProcessCluster:
        root = tmp_path / f"cluster{len(made)}"
        root.mkdir()
        if extra:
            kwargs["extra_args"] = [*kwargs.get("extra_args", []), *extra]
        c = ProcessCluster(root, size, **kwargs)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
        for c in made:
            c.print_log_tails(40)
