"""The trio shell: the only place with sockets, clocks and threads.

Everything that decides (Raft, the state machine, the storage logic) lives below in pure,
synchronous code whose time and randomness are passed in; this package runs it against the
real world: it owns the tasks, the timers, the fsync threads and the TCP connections. Keeping
I/O here and only here is what lets ``testing/sim`` run a whole cluster deterministically.

May import everything below it, plus trio and structlog.
"""
