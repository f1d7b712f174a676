"""A TCP proxy on 127.0.0.1 that a test can cut: ``block()`` drops every open connection and
refuses new ones (the far side looks unreachable), ``unblock()`` heals. Threads, so that it
works beside any event loop and any subprocess.

Used to make the cluster unreachable for one client (the agent) while others keep writing.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from discoverd.server.transport import refuse_self_connection


class TcpProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._blocked = False
        self._open: set[socket.socket] = set()
        self._closed = False
        self.accepted = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def block(self) -> None:
        with self._lock:
            self._blocked = True
            for s in list(self._open):
                _close(s)
            self._open.clear()

    def unblock(self) -> None:
        with self._lock:
            self._blocked = False

    def close(self) -> None:
        self._closed = True
        self.block()
        _close(self._listener)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                blocked = self._blocked
            if blocked:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _close(client)
                continue
            try:
                refuse_self_connection(upstream)  # a stopped target's port, held by us
                upstream.settimeout(None)
            except OSError:
                _close(upstream)
                _close(client)
                continue
            with self._lock:
                if self._blocked:
                    _close(client)
                    _close(upstream)
                    continue
                self._open.update((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
