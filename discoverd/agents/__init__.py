"""The sidecar agent (DESIGN §11): lets any program use discoverd through files.

``discoverd agent --dir DIR --prefix /config/`` keeps ``DIR/<name>.json|.toml`` and the
documents ``/config/<name>`` in sync, both ways, through the SDK only. ``files`` owns the
directory side (names, formats, atomic writes), ``sync_core`` the decisions (pure),
``agent`` the I/O shell (watchdog, the informer, pushes, exec, state in diskcache). The
command line is ``discoverd/cli/commands/agent.py``; ``python -m discoverd.agents`` runs it
too. docs/agent.md is the user's manual.
"""
