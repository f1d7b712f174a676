"""The module-level API: ``discoverd.sdk.register("api", ttl=10)`` with nothing configured.

Each function is the same-named method of one process-wide blocking ``Client``, created on
first use with the defaults (endpoints from ``$DISCOVERD_ENDPOINTS``, else 127.0.0.1:2379;
cache in ``$DISCOVERD_CACHE_DIR``, else ~/.cache/discoverd) and closed at interpreter exit
(``sync``'s exit hook, which also deregisters what it registered). Scripts and small
services get discovery in one line; anything that needs other options builds its own
``Client``.

The functions are generated from the ``Client`` methods, so their signatures and
documentation cannot drift from the methods they stand for.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from discoverd.sdk.sync import Client

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_client: Client | None = None


def default_client() -> Client:
    """The process-wide client behind the module-level functions (created on first use;
    a new one if the previous was closed)."""
    global _client
    with _lock:
        if _client is None or _client._closed:
            _client = Client()
        return _client


def _default(method: Callable[Concatenate[Client, P], R]) -> Callable[P, R]:
    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return method(default_client(), *args, **kwargs)

    signature = inspect.signature(method)
    call.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:])
    call.__qualname__ = call.__name__ = method.__name__
    call.__module__ = "discoverd.sdk"
    del call.__wrapped__  # so that help() shows the signature above, without self
    return call


register = _default(Client.register)
discover = _default(Client.discover)
watch_services = _default(Client.watch_services)
picker = _default(Client.picker)
pick = _default(Client.pick)
get_config = _default(Client.get_config)
put_config = _default(Client.put_config)
put_schema = _default(Client.put_schema)
get_schema = _default(Client.get_schema)
validate_config = _default(Client.validate_config)
watch_config = _default(Client.watch_config)
config_history = _default(Client.config_history)
rollback_config = _default(Client.rollback_config)
config_handle = _default(Client.config_handle)
config_status = _default(Client.config_status)
