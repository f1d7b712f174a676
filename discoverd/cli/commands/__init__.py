"""The ``discoverd`` verbs, one module per verb family (``get``, ``put``, ``del``, ``txn``,
``compaction``, ``endpoint``, ``serve``, ``sim``); ``__main__`` registers them."""
