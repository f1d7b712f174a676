"""TLS for the SDK's connections: which files a client was given (``cacert``, ``cert``,
``key``), and the ``ssl.SSLContext`` they make. Owned by the TLS work (issue 11)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from discoverd.errors import ClientError


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None

    @classmethod
    def of(
        cls,
        *,
        cacert: str | os.PathLike[str] | None,
        cert: str | os.PathLike[str] | None,
        key: str | os.PathLike[str] | None,
    ) -> TlsFiles:
        if (cert is None) != (key is None):
            raise ClientError("cert and key go together (a client certificate and its key)")
        return cls(*(os.fspath(p) if p is not None else None for p in (cacert, cert, key)))

    @property
    def enabled(self) -> bool:
        """Whether any TLS file was given (an https:// endpoint turns TLS on as well)."""
        return any((self.cacert, self.cert, self.key))
