"""The supervisor's hold on the listen port, as in grpc's multiprocessing example.

A socket bound with SO_REUSEPORT (and never listening, so it takes no
connection) keeps the port while workers come and go; each worker binds the
same port with `grpc.so_reuseport` and the kernel spreads new connections over
the listening ones. Before that, a plain bind checks that the port is free: with
SO_REUSEPORT alone a second Keyturn on the same port would silently share it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ReservedPort:
    host: str  # as given in --listen (a name, an address, [v6])
    port: int  # the chosen one when --listen asked for 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _socket_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The first address `host` resolves to, for binding."""
    infos = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


@contextlib.contextmanager
def reserve_port(listen: str) -> Iterator[ReservedPort]:
    """Hold `listen` (HOST:PORT, PORT may be 0) with SO_REUSEPORT until the block ends.

    OSError `cannot listen on ...` when the port is taken, by anyone."""
    host, _, port_text = listen.rpartition(":")
    try:
        family, address = _socket_address(host, int(port_text))
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)  # no SO_REUSEPORT: fails if anything holds the port
            port = int(probe.getsockname()[1])
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], port))
    except OSError as exc:
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    try:
        yield ReservedPort(host, port)
    finally:
        held.close()
