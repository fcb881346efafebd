"""Settings from the environment (prefix KEYTURN_), with defaults that run out of the box."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./keyturn.db"


class Settings(BaseSettings):
    """Every knob of the server; see README 'Configuration'."""

    model_config = SettingsConfigDict(env_prefix="KEYTURN_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://...",
    )
    listen: str = Field("127.0.0.1:50051", description="HOST:PORT the gRPC server binds")
    secret_key: SecretStr | None = Field(
        None,
        description="Master secret (at least 32 characters) from which the keys that hash and "
        "encrypt license keys and signing keys are derived. Required for PostgreSQL; for "
        "SQLite it is generated on first start into a file beside the database.",
    )
    secrets_file: Path | None = Field(
        None, description="Where the generated secret is kept (default: DATABASE.secrets)"
    )
    issuer: str = Field("keyturn", description="The iss claim of leases")
    lapse_grace_seconds: int = Field(
        30, ge=0, le=3600, description="How long a lapsed floating lease still holds its seat"
    )
    auto_migrate: bool = Field(True, description="Upgrade the database schema on start")
    shutdown_grace_seconds: float = Field(
        15.0, gt=0, description="How long in-flight calls may run on shutdown"
    )
    clock_offset_seconds: float = Field(
        0.0, description="Shift the server clock (testing of expiry and lapse only)"
    )
    log_level: str = Field("INFO", description="Python logging level")
    watch_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often a change stream looks for events written by other replicas "
        "(those of this process arrive at once)",
    )

    lapse_sweep_seconds: float = Field(
        60.0,
        ge=0,
        description="How often lapsed leases are written to the change stream (0: never; "
        "seats are freed at lapse either way)",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:50051")
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
