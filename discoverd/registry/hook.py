"""``RegistryHook``: the one write hook the machine gives the store, dispatching each event
of a write to the rules of its key's prefix (services, config documents and schemas, config
history and status).

Writes that touch no registry key cost one ``startswith`` per event. The verdict depends on
the write and the store's state only, so every member reaches the same one, in the same
words: violations are sorted, and at most ``MAX_VIOLATIONS`` are listed.
"""

from __future__ import annotations

from collections.abc import Sequence

from discoverd.errors import ClientError, ValidationError
from discoverd.kv.revision import Event, EventType
from discoverd.kv.store import WriteView
from discoverd.registry import services
from discoverd.registry.config import DEFAULT_CACHE_SIZE, DEFAULT_HISTORY_LIMIT, ConfigRules
from discoverd.wire.registry_codec import (
    CONFIG_HISTORY_PREFIX,
    CONFIG_PREFIX,
    REGISTRY_PREFIXES,
    SCHEMAS_PREFIX,
    SERVICES_PREFIX,
    sort_violations,
    violation,
)

MAX_VIOLATIONS = 100
"""Violations listed in one refusal (the message gives the total): an array of a million
wrong items must not make an answer a hundred times the request's size."""


class RegistryHook:
    """A ``kv.store.WriteHook`` enforcing DESIGN §7 (see ``registry/config.py`` and
    ``registry/services.py`` for the rules). Keeps only a cache, so one instance serves a
    member for its life, snapshots and restores included.

    Args:
        history_limit: config generations kept per document.
        cache_size: compiled schema validators kept.
    """

    def __init__(
        self, *, history_limit: int = DEFAULT_HISTORY_LIMIT, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> None:
        self.config = ConfigRules(history_limit=history_limit, cache_size=cache_size)

    @property
    def compilations(self) -> int:
        """Schemas compiled so far (the validator cache's misses)."""
        return self.config.compilations

    def __call__(self, view: WriteView, events: Sequence[Event]) -> None:
        """Refuse the write (``ValidationError``, or ``ClientError`` for a client write to
        ``/config-history/``), or let it through with its config generations recorded."""
        mine = [ev for ev in events if ev.kv.key.startswith(REGISTRY_PREFIXES)]
        if not mine:
            return
        service_events: list[Event] = []
        config_events: list[Event] = []
        for ev in mine:
            key = ev.kv.key
            if key.startswith(CONFIG_HISTORY_PREFIX):
                raise ClientError(
                    f"{key.decode(errors='replace')}: /config-history/ is reserved for "
                    "discoverd (it records every config document generation itself)"
                )
            (service_events if key.startswith(SERVICES_PREFIX) else config_events).append(ev)
        found = services.check(service_events) if service_events else []
        # A document or schema must not vanish with a lease: its deletion would bypass the
        # generation record (lease revokes delete without this hook) and leave no history.
        found += [
            violation(ev.kv.key, "config documents and schemas cannot be attached to a lease")
            for ev in config_events
            if ev.type is EventType.PUT and ev.kv.lease
            and ev.kv.key.startswith((CONFIG_PREFIX, SCHEMAS_PREFIX))
        ]
        if config_events:
            found += self.config.check(view, config_events)
        if found:
            ordered = sort_violations(found)
            listed = ordered[:MAX_VIOLATIONS]
            raise ValidationError(violations=listed, total=len(ordered))
        if config_events:
            self.config.record_generations(view, config_events)


def hook(
    *, history_limit: int = DEFAULT_HISTORY_LIMIT, cache_size: int = DEFAULT_CACHE_SIZE
) -> RegistryHook:
    """The registry's write hook for a member's store."""
    return RegistryHook(history_limit=history_limit, cache_size=cache_size)
