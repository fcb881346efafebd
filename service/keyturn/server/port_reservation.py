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

from .config import SettingsError


@dataclass(frozen=True)
class ReservedPort:
    host: str  # as given in --listen (a name, an address, [v6])
    port: int  # the chosen one when --listen asked for 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def socket_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """The first address `host` resolves to, for binding."""
    infos = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _, _, _, address = infos[0]
    return family, (str(address[0]), int(address[1]))


@dataclass(frozen=True)
class ListenSetting:
    """Where a listen address is set, for the hint when it cannot be bound: its
    variable, and the command-line option that overrides it when there is one."""

    variable: str
    flag: str | None = None

    def __str__(self) -> str:
        return f"{self.flag} or {self.variable}" if self.flag else self.variable


SERVE_LISTEN = ListenSetting("KEYTURN_LISTEN", "--listen")
ADMIN_LISTEN = ListenSetting("KEYTURN_ADMIN_LISTEN")  # no option: only the variable sets it
STRIPE_LISTEN = ListenSetting("KEYTURN_STRIPE_LISTEN", "--listen")  # keyturn connect stripe
ORDER_WEBHOOK_LISTEN = ListenSetting("KEYTURN_ORDER_WEBHOOK_LISTEN", "--listen")  # ... orders
CHARGIFY_LISTEN = ListenSetting("KEYTURN_CHARGIFY_LISTEN", "--listen")  # keyturn connect chargify
SALESFORCE_LISTEN = ListenSetting("KEYTURN_SALESFORCE_LISTEN", "--listen")  # connect salesforce
NETSUITE_LISTEN = ListenSetting("KEYTURN_NETSUITE_LISTEN", "--listen")  # keyturn connect netsuite
HTTP_LISTEN = ListenSetting("KEYTURN_HTTP_LISTEN", "--http-listen")


def cannot_listen(
    listen: str, error: OSError, setting: ListenSetting = SERVE_LISTEN
) -> SettingsError:
    """The one line for a port taken (or no address here), naming the setting to change."""
    return SettingsError(
        f"cannot listen on {listen}: {error.strerror or error}; choose another HOST:PORT "
        f"with {setting} (port 0: any free port)"
    )


def _free_port(
    listen: str, setting: ListenSetting
) -> tuple[socket.AddressFamily, tuple[str, int], int]:
    """`listen`'s family, address and port (the chosen one for 0), once a plain bind (no
    SO_REUSEPORT: it fails if anything holds the port) shows it free; SettingsError if not."""
    host, _, port_text = listen.rpartition(":")
    try:
        family, address = socket_address(host, int(port_text))
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind(address)
            return family, address, int(probe.getsockname()[1])
    except OSError as exc:
        raise cannot_listen(listen, exc, setting) from None


def check_port_free(listen: str, setting: ListenSetting = SERVE_LISTEN) -> None:
    """SettingsError naming the fix when `listen` is in use or not an address here (before
    gRPC tries, which would log its own lines first)."""
    _free_port(listen, setting)


@contextlib.contextmanager
def reserve_port(listen: str, setting: ListenSetting = SERVE_LISTEN) -> Iterator[ReservedPort]:
    """Hold `listen` (HOST:PORT, PORT may be 0) with SO_REUSEPORT until the block ends.

    SettingsError `cannot listen on ...` when the port is taken, by anyone."""
    host = listen.rpartition(":")[0]
    family, address, port = _free_port(listen, setting)
    try:
        held = socket.socket(family, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], port))
    except OSError as exc:
        raise cannot_listen(listen, exc, setting) from None
    try:
        yield ReservedPort(host, port)
    finally:
        held.close()
