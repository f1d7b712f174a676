"""Suite-wide set-up.

Ctrl-C tests (the CLI's watch, keep-alive and register; a member's SIGINT) send SIGINT to
processes they start, as a terminal would. A shell without job control starts background
commands with SIGINT *ignored*, and an ignored signal stays ignored across ``exec``: run the
suite that way (``pytest &`` in a script, some CI runners) and every child would shrug the
signal off — Python installs no KeyboardInterrupt handler for a signal it inherits ignored.
Restoring the default handler here (in the controller and in every xdist worker) makes the
children start as they would from a terminal.
"""

from __future__ import annotations

import signal

import pytest


def pytest_configure(config: pytest.Config) -> None:
    del config
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
