"""kv/ is pure: it imports the standard library, sortedcontainers and discoverd.errors only
(DESIGN §2), and nothing that reads a clock, draws random numbers or does I/O."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

KV = Path(__file__).resolve().parents[2] / "discoverd" / "kv"
ALLOWED_THIRD_PARTY = {"sortedcontainers"}
ALLOWED_DISCOVERD = {"discoverd.errors", "discoverd.kv"}
FORBIDDEN_STDLIB = {"time", "random", "socket", "threading", "asyncio", "os", "io", "secrets"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_kv_imports_only_what_it_may() -> None:
    files = sorted(KV.glob("*.py"))
    assert files
    bad = []
    for f in files:
        for name in sorted(_imports(f)):
            top = name.split(".")[0]
            if top == "discoverd":
                if not any(name == a or name.startswith(a + ".") for a in ALLOWED_DISCOVERD):
                    bad.append(f"{f.name} imports {name}")
            elif top in FORBIDDEN_STDLIB or (
                top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY
            ):
                bad.append(f"{f.name} imports {name}")
    assert not bad, "\n".join(bad)
