"""The ``ssl.SSLContext``s a member serves and dials with, built from ``MemberConfig``.

Built once, at start-up, so that a missing, unreadable or mismatched file (a key that does
not belong to its certificate, a CA bundle that is not PEM) stops ``discoverd serve`` with
one line naming the flag and the file, instead of failing every handshake later.

Three contexts, etcd's model:

* client port (``--cert-file``/``--key-file``; with ``--client-cert-auth`` a client must
  present a certificate chaining to ``--trusted-ca-file``);
* peer port, accepting (``--peer-cert-file``/``--peer-key-file``; with
  ``--peer-client-cert-auth`` a dialling member must present a certificate chaining to
  ``--peer-trusted-ca-file``);
* peer dials: verify the other member against ``--peer-trusted-ca-file`` (host name
  included) and present our own peer certificate, so mutual TLS works both ways with one
  certificate per member.

TLS 1.2 is the floor everywhere: older versions have known breaks and nothing that speaks
to discoverd needs them.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from discoverd.errors import ClientError
from discoverd.server.config import MemberConfig

HANDSHAKE_TIMEOUT_SECONDS = 10.0
"""How long an accepted connection may take to finish its TLS handshake (like the wait for
the native protocol's magic bytes): a client that connects and says nothing costs a socket
for this long, no more."""


@dataclass(frozen=True, slots=True)
class MemberTls:
    """The contexts one member uses; None where that side is plain TCP."""

    client_server: ssl.SSLContext | None = None
    peer_server: ssl.SSLContext | None = None
    peer_client: ssl.SSLContext | None = None


def _readable(flag: str, path: str) -> None:
    if not os.path.isfile(path):
        raise ClientError(f"{flag} {path!r}: no such file")
    if not os.access(path, os.R_OK):
        raise ClientError(f"{flag} {path!r}: not readable (permission denied)")


def _load_chain(ctx: ssl.SSLContext, prefix: str, cert: str, key: str) -> None:
    _readable(f"{prefix}cert-file", cert)
    _readable(f"{prefix}key-file", key)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ClientError(
            f"{prefix}cert-file {cert!r} / {prefix}key-file {key!r}: cannot be used "
            f"together ({_ssl_reason(e)}); is the key the certificate's?") from None
    except (OSError, ValueError) as e:
        raise ClientError(f"{prefix}cert-file {cert!r}: {e}") from None


def _load_ca(ctx: ssl.SSLContext, flag: str, path: str) -> None:
    _readable(flag, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise ClientError(f"{flag} {path!r}: not a PEM CA bundle ({_ssl_reason(e)})") from None


def _ssl_reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    return str(reason or e).lower().replace("_", " ")


def server_context(*, cert: str, key: str, ca: str, require_client_cert: bool,
                   prefix: str) -> ssl.SSLContext:
    """An accepting context. ``prefix`` ("--" or "--peer-") names the flags in errors."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, prefix, cert, key)
    if ca:
        _load_ca(ctx, f"{prefix}trusted-ca-file", ca)
    # Without client-cert-auth a client certificate is not asked for at all (etcd): a CA
    # file alone only matters to a member that requires certificates.
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


def peer_client_context(cfg: MemberConfig) -> ssl.SSLContext:
    """The context a member dials https:// peers with: it verifies them against
    ``--peer-trusted-ca-file`` (the system's CAs without one) and presents its own peer
    certificate, which members started with ``--peer-client-cert-auth`` demand."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.peer_trusted_ca_file:
        _load_ca(ctx, "--peer-trusted-ca-file", cfg.peer_trusted_ca_file)
    else:
        ctx.load_default_certs()
    if cfg.peer_cert_file:
        _load_chain(ctx, "--peer-", cfg.peer_cert_file, cfg.peer_key_file)
    return ctx


def member_tls(cfg: MemberConfig) -> MemberTls:
    """Every context ``cfg`` asks for. Raises ``ClientError`` naming the flag and file."""
    client_https = _any_https(cfg.listen_client_urls)
    peer_https = _any_https(cfg.listen_peer_urls)
    client_server = server_context(
        cert=cfg.cert_file, key=cfg.key_file, ca=cfg.trusted_ca_file,
        require_client_cert=cfg.client_cert_auth, prefix="--",
    ) if client_https else None
    peer_server = server_context(
        cert=cfg.peer_cert_file, key=cfg.peer_key_file, ca=cfg.peer_trusted_ca_file,
        require_client_cert=cfg.peer_client_cert_auth, prefix="--peer-",
    ) if peer_https else None
    dials_https = peer_https or cfg.peer_cert_file or any(
        _any_https(",".join(urls)) for _, urls in cfg.members().values())
    peer_client = peer_client_context(cfg) if dials_https else None
    return MemberTls(client_server, peer_server, peer_client)


def _any_https(urls: str) -> bool:
    return any(u.strip().lower().startswith("https://") for u in urls.split(","))


def is_https(url: str) -> bool:
    return url.strip().lower().startswith("https://")


def peer_common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a verified peer certificate (``SSLObject.getpeercert()``): the
    user name a client certificate stands for, as in etcd."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return str(value)
    return None


def handshake_failure(exc: BaseException) -> str:
    """A one-line reason for a failed handshake, for the log: the TLS alert or verify error
    when there is one (``certificate verify failed: certificate has expired``), else what
    happened to the connection."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return _ssl_reason(seen)
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
