"""The ```console blocks of a Markdown page as commands with the output shown under them:
what the doc tests (tests/http/test_docs_curl.py, tests/e2e/test_security_docs.py) replay, so
that every command a page shows is one a test ran."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ConsoleCommand:
    line: int
    """Where the command is on the page (1-based), for failure messages."""
    command: str
    """The text after ``$ ``."""
    expected: list[str] = field(default_factory=list)
    """The non-empty lines under it, up to the next command or the block's end."""


def console_commands(text: str) -> list[ConsoleCommand]:
    """Every ``$ `` line of every ```console block of ``text``, in page order."""
    found: list[ConsoleCommand] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console"
            if in_block:
                found.append(ConsoleCommand(0, ""))  # a marker: output stops at a block's end
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            found.append(ConsoleCommand(number, line[2:]))
        elif found and found[-1].line and line.strip():
            found[-1].expected.append(line.rstrip())
    return [c for c in found if c.line]
