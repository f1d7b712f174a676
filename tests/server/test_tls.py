"""TLS pieces in one process, over real TLS on 127.0.0.1: the certificate maker, the
member's contexts and their start-up errors, the client port (``ClientApi``: per-listener
TLS, failed handshakes, ``Connection.cert_common_name``), peer links (``PeerTransport``:
mutual TLS) and the SDK's dial. Every wait is bounded; nothing sleeps to synchronise."""

from __future__ import annotations

import datetime
import random
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
from cryptography import x509
from structlog.testing import LogCapture

from discoverd.consensus.messages import Heartbeat, Message
from discoverd.errors import ClientError
from discoverd.sdk import AsyncClient
from discoverd.sdk._connection import parse_endpoint
from discoverd.server.api_server import ClientApi, Connection
from discoverd.server.config import MemberConfig
from discoverd.server.tls import member_tls, peer_client_context, server_context
from discoverd.server.transport import PeerTransport
from discoverd.testing.cluster import free_port
from discoverd.tls_certs import CertificateAuthority

CLUSTER = 0xC0FFEE


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    """A good CA with a server, a client and an expired client certificate; an evil CA
    with a client certificate that names the same CN."""
    ca = CertificateAuthority.create("ca", tmp_path / "good")
    evil = CertificateAuthority.create("evil", tmp_path / "evil")
    return {
        "ca": ca, "evil": evil,
        "server": ca.issue("server", common_name="m1"),
        "client": ca.issue("alice", common_name="alice"),
        "expired": ca.issue("old", common_name="alice", expired=True),
        "evil_client": evil.issue("alice", common_name="alice"),
    }


def client_ctx(cafile: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


# ------------------------------------------------------------------ certificates


def test_issued_certificates_name_localhost_and_keys_are_private(pki: dict[str, Any]) -> None:
    cert_path, key_path = pki["server"]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(pki["ca"].key_path.stat().st_mode) == 0o600
    old = x509.load_pem_x509_certificate(pki["expired"][0].read_bytes())
    assert old.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    # The CA round-trips (``dev --tls`` reuses it).
    again = CertificateAuthority.load("ca", pki["ca"].directory)
    assert again.cert == pki["ca"].cert


# ------------------------------------------------------------------ start-up errors


def tls_config(tmp_path: Path, **kw: Any) -> MemberConfig:
    cfg = MemberConfig(name="m1", data_dir=str(tmp_path / "d"),
                       listen_client_urls="https://127.0.0.1:2379", **kw)
    cfg.validate()
    return cfg


def test_unusable_files_are_named_at_start_up(pki: dict[str, Any], tmp_path: Path) -> None:
    cert, key = (str(p) for p in pki["server"])
    other_key = str(pki["client"][1])
    with pytest.raises(ClientError, match=r"--cert-file '/nonexistent\.pem': no such file"):
        member_tls(tls_config(tmp_path, cert_file="/nonexistent.pem", key_file=key))
    with pytest.raises(ClientError, match=r"cannot be used together.*is the key the cert"):
        member_tls(tls_config(tmp_path, cert_file=cert, key_file=other_key))
    with pytest.raises(ClientError, match=r"--trusted-ca-file .*not a PEM CA bundle"):
        member_tls(tls_config(tmp_path, cert_file=cert, key_file=key, trusted_ca_file=key,
                              client_cert_auth=True))
    unreadable = tmp_path / "locked.pem"
    unreadable.write_bytes(Path(cert).read_bytes())
    unreadable.chmod(0)
    if not (unreadable.stat().st_mode & 0o444) and not _is_root():
        with pytest.raises(ClientError, match="not readable"):
            member_tls(tls_config(tmp_path, cert_file=str(unreadable), key_file=key))
    good = member_tls(tls_config(tmp_path, cert_file=cert, key_file=key))
    assert good.client_server is not None
    assert good.peer_server is None
    assert good.peer_client is None  # http:// peers only: nothing to dial over TLS


def _is_root() -> bool:
    import os

    return os.geteuid() == 0


def test_serve_reports_a_mismatched_key_in_one_line(pki: dict[str, Any],
                                                    tmp_path: Path) -> None:
    cert = str(pki["server"][0])
    done = subprocess.run(
        [sys.executable, "-m", "discoverd.cli", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"https://127.0.0.1:{free_port()}",
         "--listen-peer-urls", f"http://127.0.0.1:{free_port()}",
         "--cert-file", cert, "--key-file", str(pki["client"][1])],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("discoverd serve: --cert-file ")
    assert "cannot be used together" in lines[0]


# ------------------------------------------------------------------ the client port


class Api:
    """A ClientApi with one TLS listener (client certificates required) and one plain
    listener, whose ``whoami`` op answers with the connection's certificate CN."""

    def __init__(self, pki: dict[str, Any]) -> None:
        self.logs = LogCapture()
        cert, key = (str(p) for p in pki["server"])
        self.ctx = server_context(cert=cert, key=key, ca=str(pki["ca"].cert_path),
                                  require_client_cert=True, prefix="--")

        async def whoami(req: dict[str, Any], conn: Connection) -> dict[str, Any]:
            return {"cn": conn.cert_common_name}

        self.api = ClientApi({"whoami": whoami}, max_request_bytes=1 << 20,
                             log=structlog.wrap_logger(None, processors=[self.logs]))

    async def start(self, nursery: trio.Nursery) -> tuple[int, int]:
        tls = await trio.open_tcp_listeners(0, host="127.0.0.1")
        plain = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(lambda task_status=trio.TASK_STATUS_IGNORED: self.api.serve(
            [*tls, *plain], tls=[self.ctx, None], task_status=task_status))
        return (tls[0].socket.getsockname()[1], plain[0].socket.getsockname()[1])


async def whoami(stream: trio.abc.Stream) -> Any:
    import cbor2

    from discoverd.wire.framing import FrameDecoder, encode_frame

    await stream.send_all(b"DSC1" + encode_frame(cbor2.dumps({"id": 1, "op": "whoami"})))
    decoder = FrameDecoder(1 << 20)
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(65536)
        if not data:
            raise trio.BrokenResourceError("closed")
        decoder.feed(data)
    return cbor2.loads(frame)["ok"]["cn"]


async def tls_dial(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(raw, ctx, server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def test_client_port_tls_names_the_certificate_and_refuses_the_rest(
        pki: dict[str, Any]) -> None:
    api = Api(pki)
    cafile = pki["ca"].cert_path
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            tls_port, plain_port = await api.start(nursery)
            # A verified client certificate: its CN is the connection's.
            stream = await tls_dial(tls_port, client_ctx(cafile, pki["client"]))
            assert await whoami(stream) == "alice"
            await stream.aclose()
            # The plain listener of the same ClientApi stays plain, with no CN.
            plain = await trio.open_tcp_stream("127.0.0.1", plain_port)
            assert await whoami(plain) is None
            await plain.aclose()
            # Refused: no certificate, another CA's, an expired one; plain bytes.
            refusals = {"none": None, "evil": pki["evil_client"], "expired": pki["expired"]}
            for what, cert in refusals.items():
                with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):  # noqa: PT012
                    s = await tls_dial(tls_port, client_ctx(cafile, cert))
                    await whoami(s)  # TLS 1.3: the refusal arrives on the first read
                assert api.api.tls_refused >= 1, what
            garbage = await trio.open_tcp_stream("127.0.0.1", tls_port)
            await garbage.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
            assert await garbage.receive_some(100) == b""  # closed, nothing answered
            await garbage.aclose()
            assert api.api.tls_refused == 4
            reasons = [e["reason"] for e in api.logs.entries
                       if e["event"] == "client TLS handshake failed"]
            assert len(reasons) == 4
            assert all(e.get("remote", "?") != "?"
                                             for e in api.logs.entries
                                             if e["event"] == "client TLS handshake failed")
            assert any("certificate" in r for r in reasons), reasons
            assert any("expired" in r for r in reasons), reasons
            # The member is undisturbed: a good client still gets through.
            stream = await tls_dial(tls_port, client_ctx(cafile, pki["client"]))
            assert await whoami(stream) == "alice"
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_sdk_dials_https_and_explains_a_verify_failure(pki: dict[str, Any]) -> None:
    api = Api(pki)
    cert, key = (str(p) for p in pki["client"])
    assert parse_endpoint("https://127.0.0.1:5").tls
    assert not parse_endpoint("http://127.0.0.1:5").tls
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            tls_port, _ = await api.start(nursery)
            evil_ca = str(pki["evil"].cert_path)
            async with AsyncClient(f"https://127.0.0.1:{tls_port}", cacert=evil_ca,
                                   cert=cert, key=key, command_timeout=3) as client:
                with pytest.raises(Exception, match="TLS: certificate verify failed"):
                    await client.status()
            async with AsyncClient(f"https://127.0.0.1:{tls_port}",
                                   cacert=str(pki["ca"].cert_path), command_timeout=3) as c:
                with pytest.raises(Exception, match="TLS: the member ended the handshake"):
                    await c.status()
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ peer links


class Peer:
    def __init__(self, member_id: int, *, ca: Path, cert: tuple[Path, Path]) -> None:
        self.id = member_id
        self.received: list[Message] = []
        self.logs = LogCapture()
        cfg = MemberConfig(name=f"p{member_id}", peer_cert_file=str(cert[0]),
                           peer_key_file=str(cert[1]), peer_trusted_ca_file=str(ca),
                           peer_client_cert_auth=True)
        self.t = PeerTransport(
            cluster_id=CLUSTER, member_id=member_id, peers={},
            on_message=self.received.append, on_unreachable=lambda peer: None,
            on_snapshot_status=lambda peer, ok: None,
            log=structlog.wrap_logger(None, processors=[self.logs]),
            rng=random.Random(member_id),
            server_ssl=server_context(cert=str(cert[0]), key=str(cert[1]), ca=str(ca),
                                      require_client_cert=True, prefix="--peer-"),
            client_ssl=peer_client_context(cfg))

    @property
    def addr(self) -> tuple[str, int]:
        host, port = self.t.listeners[0].socket.getsockname()[:2]
        return host, port


async def test_peer_links_need_a_certificate_from_the_peer_ca(pki: dict[str, Any],
                                                              tmp_path: Path) -> None:
    ca = pki["ca"]
    a = Peer(1, ca=ca.cert_path, cert=ca.issue("p1"))
    b = Peer(2, ca=ca.cert_path, cert=ca.issue("p2"))
    # Trusts the cluster's CA (so it gets as far as presenting itself) but holds a
    # certificate from another CA: the members must refuse it at the TLS handshake.
    intruder = Peer(3, ca=ca.cert_path, cert=pki["evil"].issue("p3"))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for p in (a, b, intruder):
                await nursery.start(p.t.serve, ("127.0.0.1", 0))
            addrs = {p.id: p.addr for p in (a, b, intruder)}
            for p in (a, b, intruder):
                p.t.set_peers(addrs)
                await nursery.start(p.t.run)
            probe = Heartbeat(term=1, src=1, dst=2)
            while probe not in b.received:
                a.t.send([probe])
                await trio.sleep(0.01)
            while a.t.inbound_tls_refused < 2 or b.t.inbound_tls_refused < 2:
                intruder.t.send([Heartbeat(term=1, src=3, dst=1),
                                 Heartbeat(term=1, src=3, dst=2)])
                await trio.sleep(0.01)
            assert not [m for m in a.received + b.received if m.src == 3]
            assert not intruder.t.is_connected(1)
            assert not intruder.t.is_connected(2)
            refused = [e for e in a.logs.entries
                       if e["event"] == "peer refused: TLS handshake failed"]
            assert refused
            assert "certificate" in refused[0]["reason"]
            # The intruder's own side says why, naming TLS.
            assert any(str(e.get("reason", "")).startswith("TLS: ")
                       for e in intruder.logs.entries if e["event"] == "peer refused: TLS")
            # The good link is undisturbed.
            again = Heartbeat(term=2, src=1, dst=2)
            while again not in b.received:
                a.t.send([again])
                await trio.sleep(0.01)
            for p in (a, b, intruder):
                await p.t.aclose()
            nursery.cancel_scope.cancel()
