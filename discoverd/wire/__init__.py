"""Encodings only, no logic and no I/O: cbor2 for peer messages and (later) client frames.

May import ``discoverd.consensus`` (message types) and ``discoverd.errors``.
"""
