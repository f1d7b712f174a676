"""TLS for the SDK's connections: which files a client was given (``cacert``, ``cert``,
``key``), and the ``ssl.SSLContext`` they make. Owned by the TLS work (issue 11)."""

from __future__ import annotations

import functools
import os
import ssl
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

    def context(self) -> ssl.SSLContext:
        """The context to dial with: members verified against ``cacert`` (else the system's
        CAs), host names checked (member certificates carry their IPs and names), and
        ``cert``/``key`` presented for members that require a client certificate.

        Raises:
            ClientError: a file is missing, unreadable, or the key is not the cert's.
        """
        return _context(self)


@functools.lru_cache(maxsize=16)
def _context(files: TlsFiles) -> ssl.SSLContext:
    # Cached: a client redials on every failover, and loading the system's CA store takes
    # tens of milliseconds. Keyed on the paths, so a new client with new files gets a new one.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if files.cacert:
            ctx.load_verify_locations(cafile=files.cacert)
        else:
            ctx.load_default_certs()
    except (OSError, ssl.SSLError) as e:
        raise ClientError(f"--cacert {files.cacert!r}: {_why(e)}") from None
    if files.cert and files.key:
        try:
            ctx.load_cert_chain(files.cert, files.key)
        except (OSError, ssl.SSLError) as e:
            raise ClientError(
                f"--cert {files.cert!r} / --key {files.key!r}: {_why(e)}") from None
    return ctx


def _why(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e).lower().replace("_", " ")
    return str(e)


def tls_failure(exc: BaseException) -> str | None:
    """``TLS: certificate verify failed: <why>`` (or the TLS alert) if ``exc`` — or what
    caused it — is a TLS error; None for any other failure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS: certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS: {_why(seen)}"
        seen = seen.__cause__ or seen.__context__
    return None
