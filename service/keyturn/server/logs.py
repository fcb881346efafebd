"""Logging set-up for every command: text lines (default) or one JSON object per line.

JSON lines carry the record's own fields (the RPC line's method, code, reason,
duration_ms and peer are passed as `extra`), so that log pipelines need no
parsing of the message. Workers of a supervisor tag their lines with their
index and pid, as they share the supervisor's stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
WORKER_TEXT_FORMAT = (
    "%(asctime)s %(levelname)s [worker %(worker)s pid %(process)d] %(name)s %(message)s"
)

# What every LogRecord has; anything else on a record came in through `extra`.
_STANDARD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(
            (key, value) for key, value in vars(record).items() if key not in _STANDARD_FIELDS
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _WorkerTag(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._index
        return True


def configure_logging(
    level: str, log_format: Literal["text", "json"], worker: int | None = None
) -> None:
    """Log to stderr at `level`; `worker`: this process is that worker of a supervisor."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(TEXT_FORMAT if worker is None else WORKER_TEXT_FORMAT)
        )
    if worker is not None:
        handler.addFilter(_WorkerTag(worker))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.root.level))
    # aiosqlite's DEBUG lines show each statement with its parameters (customer names,
    # emails, key hashes); its INFO and above carry none. SQLAlchemy's own statement log
    # stays at its default (WARNING), and its errors hide parameters (store/database.py).
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, logging.root.level))
