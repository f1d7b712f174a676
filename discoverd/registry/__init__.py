"""The registry on top of the KV store (DESIGN §7): service registrations and config
documents validated against their JSON Schemas, judged when a write is *applied* — on every
member, whatever API wrote it — by a write hook the store runs before it commits.

Owns: the composed hook (``hook``), config documents, schemas, generations and status
reports (``config``), service records (``services``). The formats themselves (keys, JSON
values, health) are ``discoverd.wire.registry_codec``'s, shared with the SDK and the CLI.

May import: the standard library, ``jsonschema`` (with its ``referencing`` and
``jsonschema_specifications``), ``discoverd.errors``, ``discoverd.kv`` and
``discoverd.wire`` — no clock, no I/O, no randomness, and no network when resolving a
``$ref``: every member must reach the same verdict.

Usage::

    from discoverd import registry
    store.put(PutRequest(b"/config/app", b'{"port": 80}'), hook=registry.hook())
"""

from discoverd.registry.config import ConfigRules
from discoverd.registry.hook import MAX_VIOLATIONS, RegistryHook, hook

__all__ = ["MAX_VIOLATIONS", "ConfigRules", "RegistryHook", "hook"]
