"""The import rule of ARCHITECTURE.md, checked: pure packages import no clock, no global
randomness, no sockets, no trio, no metrics library, and nothing from the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "discoverd"

FORBIDDEN_EVERYWHERE_PURE = {"trio", "time", "random", "socket", "threading", "asyncio", "anyio",
                             "prometheus_client"}  # metrics are the shell's (server/metrics.py)
RULES: dict[str, set[str]] = {
    # package: the discoverd.* packages it may import (besides itself)
    "consensus": {"errors"},
    "wire": {"errors", "consensus", "kv"},
    "kv": {"errors"},
    "leases": {"errors"},
    "storage": {"errors", "consensus"},
    "member": {"errors", "consensus", "machine", "storage", "wire"},
    "machine": {"errors", "consensus", "kv", "leases", "registry", "wire"},
    "registry": {"errors", "kv", "wire"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_pure_package_imports(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    if not files:
        pytest.fail(f"discoverd/{package} has no modules")
    allowed = RULES[package] | {package}
    bad = []
    for f in files:
        for name in sorted(_imports(f)):
            top = name.split(".")[0]
            if top in FORBIDDEN_EVERYWHERE_PURE:
                bad.append(f"{f.relative_to(PACKAGE)} imports {name}")
            if top == "discoverd":
                sub = name.split(".")[1] if "." in name else ""
                if sub not in allowed:
                    bad.append(f"{f.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_rule_checker_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import time\nfrom discoverd.server import x\n")
    assert _imports(sample) == {"time", "discoverd.server"}


# Edges: they may use clocks, sockets and threads, but only the layers named here. (The
# SDK's rule is tests/sdk/test_sdk_client.py::test_sdk_imports_no_server_side_package.)
EDGE_RULES: dict[str, set[str]] = {
    "cli": {"errors", "wire", "sdk", "cli", "agents", "logs"},  # plus the entry points below
    "agents": {"errors", "sdk", "logs"},  # the sidecar uses the SDK only (DESIGN §2)
}
CLI_SERVER_ENTRY = {
    "discoverd.server.config", "discoverd.server.member",  # `serve`
    "discoverd.server.restore",  # `snapshot restore` (writes a data directory)
    "discoverd.testing.sim",  # `sim`
    "discoverd.tls_certs",  # `dev --tls` (a throwaway CA)
}
AGENT_CLI_ENTRY = {"discoverd.cli.__main__"}  # `python -m discoverd.agents` is `discoverd agent`


@pytest.mark.parametrize("package", sorted(EDGE_RULES))
def test_edge_package_imports(package: str) -> None:
    allowed = EDGE_RULES[package] | {package}
    bad = []
    for f in sorted((PACKAGE / package).rglob("*.py")):
        tree = ast.parse(f.read_text(), filename=str(f))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] != "discoverd" or name in ("discoverd",):
                    continue
                if package == "cli" and name in CLI_SERVER_ENTRY:
                    continue
                if f.name == "__main__.py" and package == "agents" and name in AGENT_CLI_ENTRY:
                    continue
                if len(parts) < 2 or parts[1] not in allowed:
                    bad.append(f"{f.relative_to(PACKAGE)} imports {name}")
    assert not bad, "\n".join(bad)
