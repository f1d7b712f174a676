"""The replicated state machines: what a committed entry does. Pure and deterministic.

May import kv, leases, registry, wire, consensus (types) and errors — never trio or sockets.
"""
