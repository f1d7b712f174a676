"""Service registrations, judged when a write is applied (DESIGN §7).

A put under ``/services/`` must be a ``/services/<service>/<instance-id>`` key holding a JSON
object that ``wire/registry_codec.py`` accepts as a ``ServiceInstance`` for that key: the
format lives there, shared with the SDK and the CLI, and this module only applies it to the
writes. Deletes are always allowed (an owner deregistering, a lease expiring).
"""

from __future__ import annotations

from collections.abc import Sequence

from discoverd.kv.revision import Event, EventType
from discoverd.wire.registry_codec import Violation, service_value_violations


def check(events: Sequence[Event]) -> list[Violation]:
    """Every violation of the service events of one write."""
    out: list[Violation] = []
    for ev in events:
        if ev.type is EventType.PUT:
            out += service_value_violations(ev.kv.key, ev.kv.value)
    return out
