"""Imported first in a client subprocess: refuses, and reports on stderr, every DNS lookup of an outside
name and every connection to an outside address. CI reaches package registries only, so a client SDK
that fetches something at run time (a cost map, a tokenizer) would hang or fail there."""

from __future__ import annotations

import ipaddress
import socket
import sys

MARK = "OFFLINE-GUARD refused"
_LOCAL_NAMES = {None, "", "localhost", "localhost.localdomain"}
_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str, host: object) -> None:
    print(f"{MARK} {what} {host!r}", file=sys.stderr, flush=True)


def _getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        _refuse("lookup of", host)
        raise socket.gaierror(socket.EAI_NONAME, f"offline: {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


def _check(sock: socket.socket, address: object) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):  # type: ignore[index]
        _refuse("connection to", address)
        raise OSError(101, f"offline: {address}")


def _connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


socket.getaddrinfo = _getaddrinfo
socket.socket.connect = _connect  # type: ignore[method-assign]
socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
