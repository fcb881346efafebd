"""What one caller can make a server process hold, and for how long: gRPC server options.

grpc's own defaults suit a server inside a trusted network: no bound on
connections, 120 s to finish a handshake, idle connections kept forever, 8 KiB
of metadata refused only at random below 16 KiB. Keyturn also faces licensees'
machines, so each limit is explicit, set from Settings (README "Limits of the
transport"), and refused with a clear status: RESOURCE_EXHAUSTED for an
oversize message or metadata, decided by grpc-core before the request reaches
Python (so these carry no ErrorInfo). A connection that sends its preface or
headers byte by byte is closed after `handshake_timeout_seconds` or
`max_connection_idle_seconds`; one that holds a call open by trickling it, after
`max_connection_age_seconds` and its grace, or sooner by keepalive when it does
not answer pings.

grpc closes connections past `max_connections` at once, which bounds memory
(about 18 KB an idle one) and descriptors. A descriptor each needs an
open-files limit to match: the process raises its soft limit as far as its hard
limit allows, and warns when that is still too low (then connections past it
wait in the kernel's listen queue, and so may the database's).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, fields

from keyturn.server.config import Settings

log = logging.getLogger("keyturn.server")

GRPC_INT_MAX = 2**31 - 1  # grpc's integer options are C ints
# Descriptors besides the callers' connections: the database pools, the log, secret and
# SQLite files, pipes to a supervisor, the metrics port, grpc's own.
DESCRIPTOR_RESERVE = 256


def _ms(seconds: float) -> int:
    return min(GRPC_INT_MAX, max(1, round(seconds * 1000)))


@dataclass(frozen=True)
class TransportLimits:
    """The Settings of the same names (see config.py for what each means)."""

    max_request_bytes: int
    max_metadata_bytes: int
    max_streams_per_connection: int
    max_connections: int
    handshake_timeout_seconds: float
    max_connection_idle_seconds: float
    max_connection_age_seconds: float
    max_connection_age_grace_seconds: float
    keepalive_seconds: float
    keepalive_timeout_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportLimits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    @classmethod
    def defaults(cls) -> TransportLimits:
        """Those of Settings, not read from the environment (for servers built in tests)."""
        return cls.from_settings(Settings.model_construct())

    def grpc_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.max_receive_message_length", self.max_request_bytes),
            # Soft and hard limit alike: past a soft limit grpc refuses only some calls, at random.
            ("grpc.max_metadata_size", self.max_metadata_bytes),
            ("grpc.absolute_max_metadata_size", self.max_metadata_bytes),
            ("grpc.max_concurrent_streams", self.max_streams_per_connection),
            ("grpc.max_allowed_incoming_connections", self.max_connections),
            ("grpc.server_handshake_timeout_ms", _ms(self.handshake_timeout_seconds)),
            ("grpc.keepalive_time_ms", _ms(self.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout_seconds)),
        ]
        if self.max_connection_idle_seconds > 0:
            options.append(("grpc.max_connection_idle_ms", _ms(self.max_connection_idle_seconds)))
        if self.max_connection_age_seconds > 0:
            options += [
                ("grpc.max_connection_age_ms", _ms(self.max_connection_age_seconds)),
                ("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace_seconds)),
            ]
        return options

    @property
    def open_files_needed(self) -> int:
        return self.max_connections + DESCRIPTOR_RESERVE


def fit_open_files(needed: int) -> None:
    """Raise this process's soft open-files limit to `needed`, as far as the hard limit
    allows (never lowering it); warn when the hard limit is lower."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning(
            "open files limited to %d (the hard limit), below the %d that "
            "KEYTURN_MAX_CONNECTIONS needs: past about %d connections new ones wait; "
            "raise `ulimit -n`",
            target,
            needed,
            max(0, target - DESCRIPTOR_RESERVE),
        )
