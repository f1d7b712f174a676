"""discoverd: service discovery and shared configuration on a Raft-replicated MVCC store.

Layout (see ARCHITECTURE.md): pure cores (``consensus``, ``storage`` logic, ``kv`` …) with
no I/O, one trio shell (``server``), and thin edges (``sdk``, ``cli``, ``agents``).
"""

__version__ = "0.1.0"
