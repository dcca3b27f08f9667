"""Binding a listener, with one clear line when the address cannot be had.

`listen(label, address, bind)` runs `bind()` (a server constructor that binds
its port and raises OSError when it cannot) and turns any failure into
`cannot listen LABEL=ADDRESS: why`, e.g. `cannot listen http=127.0.0.1:8080:
address already in use`. The reason is the operating system's, learnt by
binding a plain socket to the address first: the libraries' own messages are
vague ("Failed to bind to address") and gRPC core also writes its own lines to
stderr, so on a taken port neither library is even tried.
"""
from __future__ import annotations

import socket
from typing import Callable, TypeVar

from fleet.values import split_address

T = TypeVar("T")


def listen(label: str, address: str, bind: Callable[[], T]) -> T:
    """bind()'s result; OSError `cannot listen LABEL=ADDRESS: why` if address cannot be bound."""
    why = bind_problem(address)
    if why is None:
        try:
            return bind()
        except OSError as exc:   # taken between the check and the bind, or the library's own
            why = _reason(exc)
    raise OSError(f"cannot listen {label}={address}: {why}")


def bind_problem(address: str) -> str | None:
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
                probe.bind(sockaddr)
            return None
        except OSError as exc:
            problem = problem or _reason(exc)
    return problem


def _reason(exc: OSError) -> str:
    """`address already in use` from [Errno 98] Address already in use."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
