"""The ``discoverd`` command: etcdctl's habits (DESIGN §10). Uses the SDK only (plus the
server entry point for ``serve``/``dev``)."""
