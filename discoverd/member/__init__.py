"""Sans-I/O member glue: RawNode + the replicated state machine + request waiters.

May import consensus, storage (protocols), machine, wire and errors — never trio or sockets.
"""
