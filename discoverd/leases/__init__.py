"""Leases: TTLs that keys attach to (DESIGN §5). Pure: time is passed in."""

from discoverd.leases.lessor import MAX_LEASE_TTL, Lease, Lessor

__all__ = ["MAX_LEASE_TTL", "Lease", "Lessor"]
