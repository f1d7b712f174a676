"""Reusable test harness for discoverd, in the spirit of ``trio.testing`` and etcd's ``rafttest``.

Modules here may import ``consensus``, ``storage``, ``member`` and ``wire``; production code
never imports this package. ``interaction`` is the data-driven Raft interaction runner behind
``tests/consensus/testdata/*.txt``; ``sim`` is the deterministic cluster simulator.
"""
