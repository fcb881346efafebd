"""Settings from the environment (prefix KEYTURN_), with defaults that run out of the box."""

from __future__ import annotations

import difflib
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import limits
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from keyturn.server.store.database import DatabaseLimits

LIMIT_OFF = ("", "off")  # how a rate limit setting says "no limit"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./keyturn.db"
ENV_PREFIX = "KEYTURN_"
ACCEPTED_DATABASE_URLS = (
    "sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
)
# The one async driver Keyturn ships for each backend: a URL naming the backend alone
# (as libpq, psql and hosting providers write it) can only mean that driver.
DRIVER_OF = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
# The logging levels KEYTURN_LOG_LEVEL accepts, most verbose first.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Settings whose empty value means "none": checked only when set.
OPTIONAL_ADDRESSES = frozenset(
    {"read_database_url", "metrics_listen", "admin_listen", "http_listen"}
)
# PEM files of the server's TLS and of the commands that call it; empty means unset.
TLS_FILES = (
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "target_ca_file",
    "target_cert_file",
    "target_key_file",
)
# Variables of earlier versions, each pointed at the setting that took its place (too far
# from it for the closest-name hint: it would not be found).
FORMER_NAMES = {"KEYTURN_TOKEN": "KEYTURN_FULFILL_TOKEN"}  # of the client's examples
# What each secret an order connector needs is, for the line that asks for it.
ConnectorSecret = Literal[
    "stripe_webhook_secret",
    "order_webhook_secrets",
    "chargify_site_key",
    "fulfill_token",
    "read_token",
    "salesforce_client_secret",
    "netsuite_secret",
]
CONNECTOR_SECRETS: dict[ConnectorSecret, str] = {
    "stripe_webhook_secret": "the signing secret of the Stripe webhook endpoint, whsec_...",
    "order_webhook_secrets": "each order source and its signing secret, SOURCE=whsec_...",
    "salesforce_client_secret": "the consumer secret of the connected app that "
    "KEYTURN_SALESFORCE_CLIENT_ID names",
    "fulfill_token": "a token with the fulfill scope: keyturn tokens create --scope fulfill",
    "read_token": "a token with the read scope: keyturn tokens create --scope read",
    "chargify_site_key": "the Site shared key of the Chargify site, which signs its webhooks",
    "netsuite_secret": "the value of the NetSuite API secret the Keyturn scripts sign with",
}


class SettingsError(Exception):
    """Settings that are each valid but do not work together, or that the machine refuses
    (a port in use, a database that does not exist): a mistake to fix, one line naming it."""


def database_url_of(value: str) -> str:
    """`value` with its driver named: `postgresql://` and `postgres://` mean asyncpg,
    `sqlite://` aiosqlite; ValueError naming the accepted forms for anything else."""
    try:
        url = make_url(value)
    except ArgumentError:
        # Not echoed: it may hold a password.
        raise ValueError(f"not a database URL; use {ACCEPTED_DATABASE_URLS}") from None
    driver = DRIVER_OF.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"{url.drivername}:// is not a database Keyturn can use; use {ACCEPTED_DATABASE_URLS}"
        )
    if driver.startswith("postgresql") and not url.database:
        raise ValueError(f"names no database; use {ACCEPTED_DATABASE_URLS}")
    if driver == url.drivername:
        return value
    return url.set(drivername=driver).render_as_string(hide_password=False)


def known_variables() -> frozenset[str]:
    return frozenset(ENV_PREFIX + name.upper() for name in Settings.model_fields)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each KEYTURN_* variable no setting reads, naming the closest one
    (a misspelled setting would otherwise be ignored without a word)."""
    known = known_variables()
    warnings = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        # Compared without the prefix, which every name shares.
        close = [FORMER_NAMES[name].removeprefix(ENV_PREFIX)] if name in FORMER_NAMES else []
        close = close or difflib.get_close_matches(
            name.removeprefix(ENV_PREFIX), [k.removeprefix(ENV_PREFIX) for k in known], n=1
        )
        hint = (
            f"; did you mean {ENV_PREFIX}{close[0]}?" if close else "; see README 'Configuration'"
        )
        warnings.append(f"{name} is not a Keyturn setting and is ignored{hint}")
    return warnings


def describe_invalid(error: ValidationError, flags: Mapping[str, str] | None = None) -> str:
    """A pydantic error about settings as one line: each bad variable (or the command-line
    flag in `flags`, field: flag, that set it) and why."""
    parts = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not field:  # settings that do not go together: the message names them
            parts.append(message)
            continue
        name = (flags or {}).get(field) or f"{ENV_PREFIX}{field.upper()}"
        parts.append(f"{name}: {message}")
    return "; ".join(parts)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a container
    pinned to 2 of 64 CPUs gets 2), else os.cpu_count()."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _default_of(settings: type[BaseSettings], info: ValidationInfo) -> str:
    """The default of the field being validated, shown as the example of a good value."""
    assert info.field_name is not None
    return str(settings.model_fields[info.field_name].default)


def _check_url_path(value: str, example: str) -> str:
    """A connector's URL path: absolute, without a query."""
    if not value.startswith("/") or "?" in value:
        raise ValueError(f"{value!r} is not a URL path, for example {example}")
    return value


def _check_host_port(value: str, example: str = "127.0.0.1:50051") -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not HOST:PORT (PORT 0-65535), for example {example}")
    return value


class Settings(BaseSettings):
    """Every knob of the `keyturn` command, the server's and its order connectors'; see
    README 'Configuration'. One class, so that every KEYTURN_* variable is checked, shown
    with its default and never echoed when secret, in one place."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://...",
    )
    database_pool_size: int = Field(
        10,
        ge=1,
        le=1000,
        description="PostgreSQL connections one `keyturn serve` keeps open for each of the seat "
        "path and the rest, shared out over its workers (each keeps at least 2); under load "
        "each pool may open as many again",
    )
    database_transaction_pooler: bool = Field(
        False,
        description="The database URL points at a pooler in transaction mode (PgBouncer): "
        "no prepared statement is kept from one transaction to the next. Migrate against "
        "the database itself (KEYTURN_AUTO_MIGRATE=false here)",
    )
    database_connect_timeout_seconds: float = Field(
        5.0, gt=0, le=600, description="How long opening a database connection may take"
    )
    database_statement_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long one statement may run (PostgreSQL statement_timeout); past it "
        "the call is answered UNAVAILABLE / DATABASE_BUSY. SQLite: how long a writer waits "
        "for the file",
    )
    database_lock_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="How long a statement may wait for a row lock (PostgreSQL lock_timeout), "
        "and a seat claim for its turn on a busy entitlement, before DATABASE_BUSY",
    )
    database_pool_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=600,
        description="How long a call may wait for a free pooled connection before "
        "DATABASE_BUSY (PostgreSQL)",
    )
    read_database_url: str = Field(
        "",
        description="A streaming standby of the PostgreSQL database (postgresql+asyncpg://...) "
        "that serves the read-only RPCs (CheckLicense, Get/List, GetSigningKeys, the change "
        "stream), up to its replication lag behind; empty: everything from the primary. "
        "Treated as behind a transaction pooler too when KEYTURN_DATABASE_TRANSACTION_POOLER is set",
    )
    health_check_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Health turns NOT_SERVING when the database takes longer than this to "
        "answer its check (run every second), and SERVING again once it answers",
    )
    listen: str = Field("127.0.0.1:50051", description="HOST:PORT the gRPC server binds")
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate chain of the server (its own certificate first); with "
        "KEYTURN_TLS_KEY_FILE the server speaks TLS (1.2 or 1.3) only, on the HTTP/JSON port "
        "too. A new pair written "
        "over the files is served from the next connection on, without a restart",
    )
    tls_key_file: Path | None = Field(
        None, description="PEM private key (unencrypted) of KEYTURN_TLS_CERT_FILE"
    )
    tls_client_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates of the clients that may call Fulfillment and "
        "Catalog (mutual TLS): those then answer only to clients with a certificate from "
        "this CA, on KEYTURN_ADMIN_LISTEN or over HTTP/JSON (which asks for one without "
        "requiring it), while KEYTURN_LISTEN keeps serving the licensing API to apps "
        "without one",
    )
    admin_listen: str = Field(
        "",
        description="HOST:PORT of the admin port, which requires a client certificate from "
        "KEYTURN_TLS_CLIENT_CA_FILE (set both or neither); empty: no admin port",
    )
    http_listen: str = Field(
        "127.0.0.1:50052",
        description="HOST:PORT of the same API over HTTP/JSON (the Connect protocol: POST "
        "/keyturn.licensing.v1.LicensingService/ActivateSeat...) and GET /healthz; empty: "
        "off. With several workers they share it as they share KEYTURN_LISTEN",
    )
    console_session_idle_minutes: int = Field(
        30,
        ge=1,
        le=24 * 60,
        description="A console session (GET /console/ on KEYTURN_HTTP_LISTEN) unused this "
        "long ends; staff sign in again with their API token",
    )
    console_session_hours: int = Field(
        12,
        ge=1,
        le=24 * 30,
        description="A console session ends this long after sign-in, however busy",
    )
    reflect_admin_services: bool = Field(
        True,
        description="Server reflection also describes FulfillmentService and CatalogService "
        "(for grpcurl); false: it lists only LicensingService, health and reflection, so "
        "that a stranger is not shown the admin API (calls to it still need a token)",
    )
    workers: int = Field(
        default_factory=available_cpus,
        ge=1,
        le=256,
        description="Server processes behind the one port (SO_REUSEPORT), supervised and "
        "restarted by `keyturn serve`; default: the number of CPUs. 1: a single process, "
        "no supervisor",
    )
    metrics_listen: str = Field(
        "",
        description="HOST:PORT of the Prometheus /metrics endpoint (empty: off); with several "
        "workers it shows all of them",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text, or json: one JSON object per line (one per RPC)"
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Master secret (at least 32 characters, not an obvious pattern) from "
        "which the keys that hash and encrypt license keys and signing keys are derived. "
        "Required for PostgreSQL; for SQLite it is generated on first start into a file "
        "beside the database (mode 0600).",
    )
    secrets_file: Path | None = Field(
        None, description="Where the generated secret is kept (default: DATABASE.secrets)"
    )
    issuer: str = Field("keyturn", description="The iss claim of leases")
    lapse_grace_seconds: int = Field(
        30, ge=0, le=3600, description="How long a lapsed floating lease still holds its seat"
    )
    api_token_lifetime_days: int = Field(
        365,
        ge=0,
        le=36_500,
        description="How long a new API token lasts, unless `keyturn tokens create` says "
        "otherwise (--expires-in, --no-expiry); 0: new tokens never expire. Tokens made "
        "before schema revision 0008 never expire",
    )
    identity_token_idle_days: int = Field(
        180,
        ge=0,
        le=36_500,
        description="An identity token unused this long (no ActivateSeat, CheckLicense or "
        "RenewLease of its user) expires; ResendCredentials then sends a new invitation. "
        "0: identity tokens never expire",
    )
    auto_migrate: bool = Field(True, description="Upgrade the database schema on start")
    shutdown_grace_seconds: float = Field(
        15.0, gt=0, description="How long in-flight calls may run on shutdown"
    )
    clock_offset_seconds: float = Field(
        0.0, description="Shift the server clock (testing of expiry and lapse only)"
    )
    log_level: str = Field(
        "INFO", description="Python logging level; INFO logs one line per RPC, never a secret"
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="The event loop of the server's commands (uvloop: libuv's)"
    )
    watch_poll_seconds: float = Field(
        0.5,
        gt=0,
        le=10,
        description="How often this process looks for events written by other replicas, "
        "for every change stream it serves (those of this process arrive at once)",
    )
    watch_max_streams: int = Field(
        3_000,
        ge=1,
        le=1_000_000,
        description="Most change streams (WatchEntitlementEvents) open at once on this "
        "process; one more is refused with RESOURCE_EXHAUSTED / WATCH_STREAMS_EXHAUSTED. "
        "Each costs about 28 KiB: 3,000 keep a process within 200 MB",
    )

    # What one caller can make a server process hold, and for how long (gRPC server
    # options; see api/transport_limits.py and README "Limits of the transport").
    max_request_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request message accepted; a larger one is refused with "
        "RESOURCE_EXHAUSTED before it is read into memory. Keyturn's requests are a few KB: "
        "below this, an overlong field gets its own INVALID_ARGUMENT",
    )
    max_metadata_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request metadata (all headers of a call together); more is "
        "refused with RESOURCE_EXHAUSTED",
    )
    max_streams_per_connection: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Calls (HTTP/2 streams) one connection may have open at once; a client's "
        "further calls on that connection wait for one to end",
    )
    max_connections: int = Field(
        4000,
        ge=1,
        le=1_000_000,
        description="Connections one server process holds at once; one more is closed at once "
        "(the client sees UNAVAILABLE and retries). The process raises its open-files limit "
        "to fit, up to the hard limit (ulimit -Hn)",
    )
    handshake_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="A new connection must send the HTTP/2 preface and settings within this "
        "time, else it is closed",
    )
    max_connection_idle_seconds: float = Field(
        300.0,
        ge=0,
        description="A connection without a call for this long is closed (the client "
        "reconnects at its next call); 0: never",
    )
    max_connection_age_seconds: float = Field(
        3600.0,
        ge=0,
        description="A connection older than this is asked to go away (GOAWAY; clients "
        "reconnect, possibly to another replica); 0: never",
    )
    max_connection_age_grace_seconds: float = Field(
        300.0,
        ge=0,
        description="How long calls may still run on a connection asked to go away by age; "
        "then it is closed (a change stream ends UNAVAILABLE and is resumed)",
    )
    keepalive_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the server pings a connection with calls open (change streams), "
        "to find peers that are gone",
    )
    keepalive_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="A ping unanswered for this long closes the connection and its calls",
    )
    rate_limit_per_peer: str = Field(
        "100/second;3000/minute",
        description="Calls of ActivateSeat, CheckLicense, RedeemInvitation and RenewLease one "
        "peer may make, per server process (`N/second;M/minute`, the `limits` library's "
        "notation); more are refused RATE_LIMITED. `off`: no limit",
    )
    rate_limit_per_credential: str = Field(
        "50/second;1500/minute",
        description="Calls of those methods with one license key, identity token, invitation "
        "code or lease token, per server process. `off`: no limit",
    )
    rate_limit_per_token: str = Field(
        "300/second",
        description="Calls of the Fulfillment and Catalog services with one API token, per "
        "server process. `off`: no limit",
    )
    failed_credentials_limit: str = Field(
        "30/10 minutes",
        description="Wrong license keys, identity tokens, invitation codes, leases and API "
        "tokens one peer may present per window, counted in the database across every "
        "worker and replica; then its calls with a credential are refused RATE_LIMITED "
        "until the window ends. `off`: no limit",
    )
    rate_limit_peer_header: str = Field(
        "",
        description="Behind a proxy: the request header (gRPC metadata) whose last address "
        "names the peer, e.g. `x-forwarded-for`; empty: the connection's address",
    )

    signing_key_refresh_seconds: float = Field(
        10.0,
        ge=0,
        lt=300,
        description="How often a process looks up which key signs: a rotation by any process "
        "(keyturn keys rotate) signs everywhere within this time",
    )

    lapse_sweep_seconds: float = Field(
        60.0,
        ge=0,
        description="How often lapsed leases are written to the change stream (0: never; "
        "seats are freed at lapse either way). With several workers only worker 0 sweeps",
    )

    smtp_host: str = Field(
        "",
        description="SMTP server for credential emails; empty: emails stay queued (GetOrder "
        "shows them) until one is configured",
    )
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["auto", "starttls", "tls", "none"] = Field(
        "auto",
        description="auto: STARTTLS when the server offers it; starttls: required; tls: "
        "implicit TLS (port 465); none: plain",
    )
    smtp_username: str = Field("", description="SMTP AUTH user (empty: no AUTH)")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password")
    smtp_timeout_seconds: float = Field(30.0, gt=0, le=600)
    mail_from: str = Field(
        "Keyturn <licenses@localhost>", description="From header of credential emails"
    )
    mail_templates: Path | None = Field(
        None,
        description="Folder with KIND.subject.j2 / KIND.txt.j2 / KIND.html.j2 templates "
        "(KIND: license_key, invitation) that replace the shipped ones",
    )
    dispatch_in_server: bool = Field(
        True,
        description="Run the email dispatcher inside `keyturn serve` (when SMTP is set); "
        "with several workers every worker runs one (claims keep each email to one sender)",
    )
    dispatch_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the dispatcher looks for due emails"
    )
    dispatch_retry_initial_seconds: float = Field(
        5.0, gt=0, description="First retry delay after a temporary failure (then doubling)"
    )
    dispatch_retry_max_seconds: float = Field(600.0, gt=0, description="Longest retry delay")
    dispatch_max_attempts: int = Field(
        50, ge=1, description="Attempts before a message is marked failed"
    )

    webhooks_in_server: bool = Field(
        True,
        description="Send outbound webhooks from `keyturn serve`; every worker and replica "
        "sends (claims keep each subscription to one sender at a time)",
    )
    webhooks_poll_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often the webhook sender looks for events other replicas wrote "
        "and for retries that came due",
    )
    webhooks_timeout_seconds: float = Field(
        10.0, gt=0, le=120, description="How long one webhook POST may take"
    )
    webhooks_retry_initial_seconds: float = Field(
        5.0, gt=0, description="First retry delay after a failed webhook (then doubling)"
    )
    webhooks_retry_max_seconds: float = Field(
        3600.0, gt=0, description="Longest delay between two attempts of a webhook"
    )
    webhooks_pause_after_seconds: float = Field(
        259_200.0,
        ge=0,
        description="Pause a subscription whose endpoint has failed for this long in a row "
        "(3 days), with an audit record webhook.pause",
    )
    webhooks_log_attempts: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Delivery attempts kept per subscription (ListWebhookDeliveries); older "
        "ones are forgotten",
    )
    webhooks_notify_email: str = Field(
        "",
        max_length=254,
        description="Email the operator here when Keyturn pauses a subscription (through "
        "KEYTURN_SMTP_HOST); empty: the audit record and the log line only",
    )

    # The order connectors (`keyturn connect stripe`, `keyturn orders import`); they reach
    # the server at --target, else at KEYTURN_LISTEN.
    fulfill_token: SecretStr | None = Field(
        None,
        description="API token with the fulfill scope that the order connectors send "
        "(keyturn tokens create --scope fulfill); required by them",
    )
    read_token: SecretStr | None = Field(
        None,
        description="API token with the read scope that `keyturn report usage` sends "
        "(keyturn tokens create --scope read); required by it",
    )
    stripe_webhook_secret: SecretStr | None = Field(
        None,
        description="Signing secret (whsec_...) of the Stripe webhook endpoint; required by "
        "`keyturn connect stripe`",
    )
    stripe_api_key: SecretStr | None = Field(
        None,
        description="Stripe API key that may read prices, for invoices that name only a "
        "price id (Stripe API versions after 2025-02-24); unset: those are refused with 422",
    )
    stripe_api_base: str = Field(
        "", description="Base URL of Stripe's API (a test double's); empty: Stripe's own"
    )
    stripe_listen: str = Field(
        "127.0.0.1:8080", description="HOST:PORT the Stripe webhook endpoint binds"
    )
    stripe_path: str = Field("/stripe/webhook", description="URL path of the Stripe webhook")
    order_webhook_secrets: SecretStr | None = Field(
        None,
        description="The sources `keyturn connect orders` takes signed orders from, each "
        "with its Standard Webhooks secret: SOURCE=whsec_... separated by commas (a source "
        "named twice has two secrets, while one is rotated); required by it",
    )
    order_webhook_listen: str = Field(
        "127.0.0.1:8084", description="HOST:PORT the signed order endpoint binds"
    )
    order_webhook_path: str = Field(
        "/orders/", description="URL path prefix of the signed order endpoint, /orders/SOURCE"
    )
    chargify_site_key: SecretStr | None = Field(
        None,
        description="Site shared key of the Chargify / Maxio site (it signs the webhooks); "
        "required by `keyturn connect chargify`",
    )
    chargify_listen: str = Field(
        "127.0.0.1:8083", description="HOST:PORT the Chargify webhook endpoint binds"
    )
    chargify_path: str = Field("/chargify/webhook", description="URL path of the Chargify webhook")
    chargify_api_key: SecretStr | None = Field(
        None,
        description="Chargify API key, to read the seats a subscription signed up with "
        "(its seat components); unset: a signup orders one unit",
    )
    chargify_api_base: str = Field(
        "",
        description="Base URL of the Chargify site's API (an EU site's, a test double's); "
        "empty: https://SUBDOMAIN.chargify.com, the subdomain from the webhook",
    )
    chargify_seat_components: str = Field(
        "",
        description="Chargify components (ids or handles, comma-separated) whose allocation "
        "counts seats; empty: every quantity-based component",
    )
    salesforce_organization_id: str = Field(
        "",
        description="Id of the Salesforce org whose outbound messages `keyturn connect "
        "salesforce` takes (00D..., 15 or 18 characters; Setup > Company Information); "
        "messages of any other organization are refused. Required by it",
    )
    salesforce_instance_url: str = Field(
        "",
        description="The org's My Domain URL (https://acme.my.salesforce.com), the only "
        "place the connector calls Salesforce's REST API. Required by `keyturn connect "
        "salesforce`",
    )
    salesforce_api_version: str = Field(
        "62.0", description="Salesforce REST API version of the connector's queries"
    )
    salesforce_client_id: str = Field(
        "",
        description="Consumer key of a connected app with the client credentials flow; "
        "set: the connector queries as that app, else as the session each outbound "
        "message carries (tick Send Session ID)",
    )
    salesforce_client_secret: SecretStr | None = Field(
        None, description="Consumer secret of that connected app; required with its id"
    )
    salesforce_listen: str = Field(
        "127.0.0.1:8081", description="HOST:PORT the Salesforce outbound message endpoint binds"
    )
    salesforce_path: str = Field(
        "/salesforce/outbound", description="URL path of the Salesforce outbound message endpoint"
    )
    netsuite_secret: SecretStr | None = Field(
        None,
        description="The value of the API secret (custsecret_keyturn_netsuite) the NetSuite "
        "scripts sign Sales Orders with; required by `keyturn connect netsuite`",
    )
    netsuite_listen: str = Field(
        "127.0.0.1:8082", description="HOST:PORT the NetSuite order endpoint binds"
    )
    netsuite_path: str = Field("/netsuite/orders", description="URL path of the NetSuite endpoint")
    netsuite_tolerance_seconds: int = Field(
        300,
        ge=1,
        le=3600,
        description="How far a NetSuite post's X-Keyturn-Timestamp may be from now",
    )
    product_map: str = Field(
        "",
        description="YAML file mapping each billing system's product ids to base SKUs "
        "(examples/product-map.yaml), read by `keyturn connect salesforce|netsuite|chargify` and `keyturn reconcile "
        "chargify`",
    )

    # How the commands that call the server (the connectors, `keyturn health`) reach it.
    target_tls: Literal["auto", "on", "off"] = Field(
        "auto",
        description="How the connectors and `keyturn health` talk to the server. on: TLS; "
        "off: plaintext; auto: TLS when KEYTURN_TARGET_CA_FILE or KEYTURN_TLS_CERT_FILE "
        "is set",
    )
    target_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates the connectors and `keyturn health` trust for the "
        "server's certificate; unset: the server's own KEYTURN_TLS_CERT_FILE when set (the "
        "same host, as in a container's health check), else the system's roots",
    )
    target_server_name: str = Field(
        "",
        description="The name checked on the server's certificate; empty: the target's host, "
        "or the first name of KEYTURN_TLS_CERT_FILE when that file is what is trusted",
    )
    target_cert_file: Path | None = Field(
        None,
        description="PEM client certificate the connectors present, for mutual TLS to "
        "KEYTURN_ADMIN_LISTEN (with KEYTURN_TARGET_KEY_FILE)",
    )
    target_key_file: Path | None = Field(
        None, description="PEM private key (unencrypted) of KEYTURN_TARGET_CERT_FILE"
    )

    @field_validator("database_url", "read_database_url")
    @classmethod
    def _check_database_urls(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name in OPTIONAL_ADDRESSES:
            return value
        return database_url_of(value)

    @field_validator(*TLS_FILES, mode="before")
    @classmethod
    def _empty_file_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("listen", "metrics_listen", "admin_listen", "http_listen")
    @classmethod
    def _check_listen_addresses(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name in OPTIONAL_ADDRESSES:
            return value
        return _check_host_port(value)

    @field_validator(
        "rate_limit_per_peer",
        "rate_limit_per_credential",
        "rate_limit_per_token",
        "failed_credentials_limit",
    )
    @classmethod
    def _check_rate_limits(cls, value: str, info: ValidationInfo) -> str:
        text = value.strip()
        if text.lower() in LIMIT_OFF:
            return "off"
        try:
            rules = limits.parse_many(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate limit: write e.g. 100/second;3000/minute, or off"
            ) from None
        if info.field_name == "failed_credentials_limit" and len(rules) != 1:
            raise ValueError(f"{value!r}: give one budget, e.g. 30/10 minutes, or off")
        return text

    @field_validator("rate_limit_peer_header")
    @classmethod
    def _check_peer_header(cls, value: str) -> str:
        header = value.strip().lower()
        if header and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", header):
            raise ValueError(f"{value!r} is not a header name (e.g. x-forwarded-for)")
        return header

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(
                f"{value!r} is not a logging level: use one of {', '.join(LOG_LEVELS)}"
            )
        return level

    @field_validator("mail_templates")
    @classmethod
    def _check_mail_templates(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"no folder {value}: give the folder that holds the templates")
        return value

    @field_validator(
        "stripe_listen",
        "order_webhook_listen",
        "chargify_listen",
        "salesforce_listen",
        "netsuite_listen",
    )
    @classmethod
    def _check_connector_listen(cls, value: str, info: ValidationInfo) -> str:
        return _check_host_port(value, example=_default_of(cls, info))

    @field_validator(
        "stripe_path", "order_webhook_path", "chargify_path", "salesforce_path", "netsuite_path"
    )
    @classmethod
    def _check_connector_path(cls, value: str, info: ValidationInfo) -> str:
        return _check_url_path(value, example=_default_of(cls, info))

    @property
    def chargify_seat_component_keys(self) -> frozenset[str]:
        """The seat components named by KEYTURN_CHARGIFY_SEAT_COMPONENTS."""
        return frozenset(
            part.strip() for part in self.chargify_seat_components.split(",") if part.strip()
        )

    @field_validator("order_webhook_path")
    @classmethod
    def _check_order_webhook_path(cls, value: str) -> str:
        if not value.endswith("/"):
            raise ValueError(f"{value!r} must end with / (the source follows it)")
        return value

    @field_validator("order_webhook_secrets")
    @classmethod
    def _check_order_webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        from keyturn.client.connectors.signed_orders import parse_source_secrets

        from .domain.orders import SOURCE

        if value is not None:
            for source in parse_source_secrets(value.get_secret_value()):
                if not SOURCE.fullmatch(source):
                    raise ValueError(
                        f"{source!r} is not an order source: 1 to 64 of a-z, 0-9, '_', '-'"
                    )
        return value

    @field_validator("salesforce_organization_id")
    @classmethod
    def _check_salesforce_organization_id(cls, value: str) -> str:
        from keyturn.client.connectors.salesforce_message import salesforce_id_15

        if value and (salesforce_id_15(value) is None or not value.startswith("00D")):
            raise ValueError(
                f"{value!r} is not an organization id (00D and 12 more letters or digits, "
                "or the 18-character form)"
            )
        return value

    @field_validator("salesforce_instance_url")
    @classmethod
    def _check_salesforce_instance_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if value and (parts.scheme not in ("https", "http") or not parts.netloc or parts.query):
            raise ValueError(f"{value!r} is not a URL like https://acme.my.salesforce.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_tls_together(self) -> Settings:
        """TLS settings that only work together: one line naming what is missing."""
        name = {field: f"{ENV_PREFIX}{field.upper()}" for field in (*TLS_FILES, "admin_listen")}
        pairs = (("tls_cert_file", "tls_key_file"), ("target_cert_file", "target_key_file"))
        for first, second in pairs:
            if (getattr(self, first) is None) != (getattr(self, second) is None):
                given, missing = (first, second) if getattr(self, first) else (second, first)
                raise ValueError(
                    f"{name[given]} is set without {name[missing]}: set both (a certificate "
                    "and its key) or neither"
                )
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError(
                f"{name['tls_client_ca_file']} needs {name['tls_cert_file']} and "
                f"{name['tls_key_file']}: mutual TLS is TLS first"
            )
        if (self.tls_client_ca_file is None) != (not self.admin_listen):
            given, missing = (
                ("tls_client_ca_file", "admin_listen")
                if self.tls_client_ca_file is not None
                else ("admin_listen", "tls_client_ca_file")
            )
            raise ValueError(
                f"{name[given]} is set without {name[missing]}: the admin port serves "
                "Fulfillment and Catalog to clients with a certificate from the client CA; "
                "set both or neither"
            )
        return self

    def connector_secrets(self, *fields: ConnectorSecret) -> list[str]:
        """The values of the secrets `fields`; SettingsError naming each one unset (or
        empty), so that a connector stops before it listens or calls."""
        values, missing = [], []
        for field in fields:
            secret: SecretStr | None = getattr(self, field)
            if secret is None or not secret.get_secret_value():
                missing.append(f"{ENV_PREFIX}{field.upper()} ({CONNECTOR_SECRETS[field]})")
            else:
                values.append(secret.get_secret_value())
        if missing:
            raise SettingsError("set " + " and ".join(missing))
        return values

    @property
    def database_limits(self) -> DatabaseLimits:
        return DatabaseLimits(
            connect=self.database_connect_timeout_seconds,
            statement=self.database_statement_timeout_seconds,
            lock=self.database_lock_timeout_seconds,
            pool=self.database_pool_timeout_seconds,
        )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def has_read_database(self) -> bool:
        return bool(self.read_database_url)
