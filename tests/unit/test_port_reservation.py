"""The supervisor's port reservation, on real loopback sockets."""

from __future__ import annotations

import socket

import pytest

from keyturn.server.config import SettingsError
from keyturn.server.port_reservation import ADMIN_LISTEN, SERVE_LISTEN, reserve_port


def test_port_0_is_chosen_and_held_for_workers_only() -> None:
    with reserve_port("127.0.0.1:0") as reserved:
        assert reserved.port > 0
        assert reserved.address == f"127.0.0.1:{reserved.port}"
        # A worker binds the same port with SO_REUSEPORT, and listens...
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", reserved.port))
        # ...but nobody else can, with or without it being asked first.
        with (
            pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{reserved.port}"),
            reserve_port(reserved.address),
        ):
            pass
        with socket.socket() as other, pytest.raises(OSError, match="in use"):
            other.bind(("127.0.0.1", reserved.port))
        # The reserved socket itself never listens: no connection is taken by the supervisor.
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", reserved.port))


def test_a_port_some_other_program_listens_on_is_refused() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{port}: "),
            reserve_port(f"127.0.0.1:{port}"),
        ):
            pass


def test_the_port_is_free_again_after_the_reservation() -> None:
    with reserve_port("127.0.0.1:0") as reserved:
        port = reserved.port
    with socket.socket() as after:
        after.bind(("127.0.0.1", port))


def test_the_hint_names_only_the_ways_the_address_is_set() -> None:
    """`serve --listen` overrides KEYTURN_LISTEN; nothing but the variable sets the admin port."""
    hints = {SERVE_LISTEN: "--listen or KEYTURN_LISTEN", ADMIN_LISTEN: "KEYTURN_ADMIN_LISTEN"}
    with reserve_port("127.0.0.1:0") as reserved:
        for setting, ways in hints.items():
            with pytest.raises(SettingsError) as refused, reserve_port(reserved.address, setting):
                pass
            hint = f"; choose another HOST:PORT with {ways} (port 0: any free port)"
            assert str(refused.value).endswith(hint)
