"""Throwaway certificate authorities for ``discoverd dev --tls`` and the tests.

Not a PKI: a self-signed CA that issues certificates usable as both server and client
(``serverAuth`` + ``clientAuth``, as etcd's examples do), so one member certificate serves
its client port, its peer port and its dials to other members. Every certificate names
127.0.0.1, ::1 and localhost besides the hosts asked for, because clients verify the
host name they dialled. ``expired=True`` issues one whose validity ended yesterday, which is
how the tests show that an expired certificate is refused.

Key files are written with mode 0600: a private key readable by others is no secret.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_DAYS = 365


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate (tests make dozens) and accepted by every TLS stack.
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys((*DEFAULT_HOSTS, *hosts)):  # ordered, no duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose certificate and key are PEM files in ``directory``."""

    name: str
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_path(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / f"{self.name}-key.pem"

    @classmethod
    def create(cls, name: str, directory: str | os.PathLike[str], *,
               days: int = DEFAULT_DAYS) -> CertificateAuthority:
        """A new CA, written as ``<name>.pem`` and ``<name>-key.pem`` in ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        key = _key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "discoverd")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False),
                critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(name, d, cert, key)
        _write_cert(ca.cert_path, cert)
        _write_key(ca.key_path, key)
        return ca

    @classmethod
    def load(cls, name: str, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """The CA ``create`` wrote earlier (``discoverd dev --tls`` keeps its CA across runs,
        so that clients configured with its path go on working)."""
        d = Path(directory)
        cert = x509.load_pem_x509_certificate((d / f"{name}.pem").read_bytes())
        key = serialization.load_pem_private_key((d / f"{name}-key.pem").read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{d / f'{name}-key.pem'} is not an EC key")
        return cls(name, d, cert, key)

    def issue(
        self,
        name: str,
        *,
        common_name: str | None = None,
        hosts: tuple[str, ...] | list[str] = (),
        days: int = DEFAULT_DAYS,
        expired: bool = False,
    ) -> tuple[Path, Path]:
        """Issue a certificate for ``common_name`` (default ``name``), valid for ``days``
        from yesterday — or, with ``expired``, from ten days ago to yesterday. Written as
        ``<name>.pem`` and ``<name>-key.pem`` next to the CA; returns (cert, key) paths."""
        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, common_name or name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "discoverd")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_encipherment=True, content_commitment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_san(tuple(hosts)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_path = self.directory / f"{name}.pem"
        key_path = self.directory / f"{name}-key.pem"
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return cert_path, key_path


def main(argv: list[str] | None = None) -> int:
    """``python -m discoverd.tls_certs DIR NAME...``: a CA in DIR (made once, then reused)
    and a certificate for each NAME (CN NAME, valid for localhost), for trying TLS without
    openssl; prints the files written, one per line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m discoverd.tls_certs",
                                     description=main.__doc__)
    parser.add_argument("directory")
    parser.add_argument("names", nargs="+", metavar="NAME")
    parser.add_argument("--host", action="append", default=[],
                        help="Another host name or IP the certificates are valid for.")
    args = parser.parse_args(argv)
    if "ca" in args.names:
        parser.error("'ca' is the CA's own file name; pick another NAME")
    directory = Path(args.directory)
    try:
        ca = CertificateAuthority.load("ca", directory)
    except (OSError, ValueError):
        ca = CertificateAuthority.create("ca", directory)
    print(ca.cert_path)
    for name in args.names:
        for path in ca.issue(name, common_name=name, hosts=args.host):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
