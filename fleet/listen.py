"""Binding a listener, with one clear line when the address cannot be had.

`listen(label, address, bind)` runs `bind()` (a server constructor that binds
its port and raises OSError when it cannot) and turns any failure into
`cannot listen LABEL=ADDRESS: why`, e.g. `cannot listen http=127.0.0.1:8080:
address already in use`. The reason is the operating system's, learnt by
binding a plain socket to the address first: the libraries' own messages are
vague ("Failed to bind to address") and gRPC core also writes its own lines to
stderr, so on a taken port neither library is even tried.

With `reuse_port` (manager workers) the probe sets SO_REUSEPORT like the
servers do, so a port the workers' parent holds (reserve()) counts as free to
them, and one taken by another program does not.
"""
from __future__ import annotations

import socket
from typing import Callable, TypeVar

from fleet.values import split_address

T = TypeVar("T")


def listen(label: str, address: str, bind: Callable[[], T], reuse_port: bool = False) -> T:
    """bind()'s result; OSError `cannot listen LABEL=ADDRESS: why` if address cannot be bound."""
    why = bind_problem(address, reuse_port)
    if why is None:
        try:
            return bind()
        except OSError as exc:   # taken between the check and the bind, or the library's own
            why = _reason(exc)
    raise OSError(f"cannot listen {label}={address}: {why}")


def bind_problem(address: str, reuse_port: bool = False) -> str | None:
    """Why a TCP listener cannot bind HOST:PORT now, or None if it can.

    Like the servers (SO_REUSEADDR, every address the host resolves to), the
    address is usable when any of its resolved addresses binds.
    """
    host, port = split_address(address)
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    problem = None
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(sockaddr)
            return None
        except OSError as exc:
            problem = problem or _reason(exc)
    return problem


def reserve(label: str, address: str) -> socket.socket:
    """A socket bound (not listening) to HOST:PORT with SO_REUSEPORT: it holds the
    port, picked here when PORT is 0, for processes that bind it the same way; the
    kernel hands connections only to listening sockets. OSError `cannot listen
    LABEL=ADDRESS: why` when it cannot be had."""
    host, port = split_address(address)
    why = bind_problem(address, reuse_port=True)
    if why is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        held = socket.socket(family, socket.SOCK_STREAM)
        try:
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            held.bind((host, port))
            return held
        except OSError as exc:
            held.close()
            why = _reason(exc)
    raise OSError(f"cannot listen {label}={address}: {why}")


def _reason(exc: OSError) -> str:
    """`address already in use` from [Errno 98] Address already in use."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
