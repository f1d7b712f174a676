"""A service process for test_sdk_services.py: what a real service does, nothing more.

It registers "api" with the module-level API (``discoverd.sdk.register``, endpoints from
``$DISCOVERD_ENDPOINTS``: nothing else configured), prints one JSON line describing its
registration, and then waits for a line on stdin, so that the test decides how it ends:
a line (or end of input) makes it exit normally, which must deregister it (atexit);
SIGTERM must deregister it and end it as SIGTERM does; SIGKILL leaves the record to expire.

Usage: python registry_service.py TTL
"""

from __future__ import annotations

import json
import sys

from discoverd import sdk


def main() -> None:
    ttl = int(sys.argv[1])
    reg = sdk.register("api", ttl=ttl, port=8080, meta={"role": "test"})
    if not any(inst.id == reg.id for inst in sdk.discover("api")):
        sys.exit("registered, but discover() does not show it")
    print(json.dumps({"id": reg.id, "lease": reg.lease_id, "address": reg.instance.address,
                      "ttl": reg.ttl}), flush=True)
    sys.stdin.readline()


if __name__ == "__main__":
    main()
