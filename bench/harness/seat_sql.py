"""pgbench scripts made from the server's own seat SQL (store/pg_seats.py), so that the
database ceiling runs exactly the statements ActivateSeat sends, parameters filled in.

Variables (pgbench -D): first and last, the range of seeded entitlements
ent_seed_<first> .. ent_seed_<last> (harness/seed.py); each transaction picks one at
random (first = last: one hot row).
"""

from __future__ import annotations

import re

from keyturn.server.store.event_numbering import BATCH, NUMBER
from keyturn.server.store.pg_seats import (
    INSERT_ACTIVATION,
    LOCK_BY_KEY,
    NOTE_LAPSES_AND_FIND_DEVICE,
)

ENTITLEMENT = "('ent_seed_' || :n)"
DEVICE = "('pgbench-device-' || :device)"
ACTIVATION = "('act_pgb_' || :client_id || '_' || :device)"
SNAPSHOT = (
    '\'{"edition_id": "standard", "seats": 10000, "seats_in_use": 1, "features": {}, '
    '"start_time": "2026-01-01T00:00:00+00:00", "end_time": null, "cancel_time": null, '
    '"trial": false, "status": "active", "external_references": [], '
    '"update_time": "2026-01-01T00:00:00+00:00"}\''
)


def _filled(statement: str, values: dict[int, str]) -> str:
    """`statement` with each $N replaced by values[N] (pgbench expressions)."""
    filled = re.sub(r"\$(\d+)", lambda m: values[int(m[1])], statement)
    return " ".join(filled.split()) + ";"


def activate_seat_script() -> str:
    """A new device's activation: lock, note lapses and look for the device, write the
    activation, the count and the event; then the numbering the server runs after commit."""
    lock = _filled(LOCK_BY_KEY, {1: "('seedkey' || lpad(CAST(:n AS text), 57, '0'))"})
    state = _filled(
        NOTE_LAPSES_AND_FIND_DEVICE,
        {1: "NULL", 2: "0", 3: ENTITLEMENT, 4: "30", 5: "true", 6: DEVICE},
    )
    write = _filled(
        INSERT_ACTIVATION,
        {
            1: ACTIVATION,
            2: ENTITLEMENT,
            3: DEVICE,
            4: "'bench device'",
            5: "('lease_pgb_' || :device)",
            6: "(now() + interval '3600 seconds')",
            7: "now()",
            8: "now()",
            9: "NULL",
            10: "(seats_held + 1)",
            11: f"ARRAY[{ENTITLEMENT}]",
            12: "ARRAY['seat_activated']",
            13: "ARRAY[now()]",
            14: "ARRAY['']",
            15: "ARRAY['']",
            16: f"ARRAY[{ACTIVATION}]",
            17: f"ARRAY[{SNAPSHOT}]",
            18: "ARRAY[NULL::timestamptz]",
            19: f"ARRAY['device:' || {ACTIVATION}]",
        },
    )
    number = _filled(NUMBER, {1: str(BATCH)})
    return "\n".join(
        [
            "\\set n random(:first, :last)",
            "\\set device random(1, 9223372036854775806)",
            "BEGIN;",
            lock,
            state,
            write,
            "COMMIT;",
            number,
            "",
        ]
    )


GENERATED = {"activate_seat": activate_seat_script}
