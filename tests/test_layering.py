"""The import rule of ARCHITECTURE.md, checked: pure packages import no clock, no global
randomness, no sockets, no trio, and nothing from the layers above them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "discoverd"

FORBIDDEN_EVERYWHERE_PURE = {"trio", "time", "random", "socket", "threading", "asyncio", "anyio"}
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
