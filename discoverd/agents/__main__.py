"""``python -m discoverd.agents ...`` is ``discoverd agent ...``."""

from __future__ import annotations

import sys

from discoverd.cli.__main__ import main

if __name__ == "__main__":
    main(["agent", *sys.argv[1:]])
