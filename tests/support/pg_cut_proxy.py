"""A TCP proxy to PostgreSQL that can lose a connection in the middle of a commit.

Armed, it lets the next ``COMMIT`` reach the server (which commits) and cuts the connection before
the server's answer reaches the client: the client sees the connection lost during its commit,
although the transaction is durable. That is the ambiguous commit a real network or a server
restart can cause. Clients must not negotiate TLS/GSS (``PGSSLMODE=disable``,
``PGGSSENCMODE=disable``): the server's answers are then plain protocol messages from the start.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class CommitCuttingProxy:
    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.armed = threading.Event()
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, name="pg-cut-proxy", daemon=True).start()

    def arm(self) -> None:
        """Cut the connection that commits next, after the server committed."""
        self.armed.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    @staticmethod
    def _cut(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        """Client to server, as is."""
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        self._cut(client, server)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client, message by message (type byte, int32 length), watching for COMMIT's answer."""
        buf = bytearray()
        try:
            while data := server.recv(65536):
                buf += data
                out = bytearray()
                while len(buf) >= 5:
                    (n,) = struct.unpack_from("!I", buf, 1)
                    if len(buf) < 1 + n:
                        break
                    msg = bytes(buf[:1 + n])
                    del buf[:1 + n]
                    if msg[0] == ord("C") and msg[5:].rstrip(b"\0") == b"COMMIT" and self.armed.is_set():
                        self.armed.clear()
                        self.cuts += 1
                        client.sendall(out)
                        self._cut(client, server)  # committed on the server; the client never hears it
                        return
                    out += msg
                client.sendall(out)
        except OSError:
            pass
        self._cut(client, server)
