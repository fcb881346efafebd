"""The `keyturn` command: serve, migrate, load a catalog, manage API tokens, check health,
print the OpenAPI document."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pydantic import ValidationError

from .app.audit import acting_as, cli_actor
from .app.context import AppContext
from .bootstrap import build_context, build_dispatcher, migrate
from .config import (
    ENV_PREFIX,
    ConnectorSecret,
    Settings,
    SettingsError,
    describe_invalid,
    unknown_variables,
)
from .domain.errors import DomainError
from .logs import configure_logging
from .sealing import SecretError
from .signals import stop_on_signal

if TYPE_CHECKING:
    from keyturn.client import FulfillmentClient
    from keyturn.client.connectors.product_map import ProductMap
    from keyturn.client.connectors.reconcile import Subscription
    from keyturn.client.connectors.webhook_server import ConnectorServer

    from .port_reservation import ListenSetting

UTC_TIME = "%Y-%m-%dT%H:%M:%SZ"  # how the admin commands show a stored (UTC) time


def _flags(args: argparse.Namespace) -> dict[str, str]:
    """The settings the options of this command set (field: option), as _with_settings
    declared them; a bad value is then reported under the option that gave it."""
    flags: dict[str, str] = getattr(args, "setting_flags", {})
    return {field: flag for field, flag in flags.items() if _given(args, flag) is not None}


def _given(args: argparse.Namespace, flag: str) -> object:
    return getattr(args, flag.removeprefix("--").replace("-", "_"), None)


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with this command's options over them."""
    overrides = {field: _given(args, flag) for field, flag in _flags(args).items()}
    return Settings(**overrides)  # type: ignore[arg-type]


def _with_settings(parser: argparse.ArgumentParser, **flags: str) -> None:
    """Declare which settings the options of `parser` set (field=option); each such option
    defaults to None, so that the setting (and its default) applies unless it is given."""
    parser.set_defaults(setting_flags=flags)


def _from_setting(field: str, what: str) -> str:
    """The help of an option that overrides a setting: its variable and default."""
    return f"{what} (default: {ENV_PREFIX}{field.upper()}, else {Settings.model_fields[field].default})"


@contextlib.asynccontextmanager
async def _opened(settings: Settings, args: argparse.Namespace) -> AsyncIterator[AppContext]:
    """The application context of one admin command; its database is closed at the end.

    Says on stderr which database it acts on and, unless --create, refuses to make a new
    SQLite database or secret: run in the wrong folder, it would otherwise act on a fresh
    database the server never reads."""
    from .bootstrap import admin_database

    print(f"keyturn: database {admin_database(settings, create=args.create)}", file=sys.stderr)
    ctx = await build_context(settings)
    try:
        with acting_as(cli_actor()):  # what the command changes is recorded as the user's
            yield ctx
    finally:
        await ctx.close()


async def _serve(args: argparse.Namespace) -> int:
    """One process (--workers 1), a supervisor of N, or (hidden flags) one of those N."""
    from .serving import WorkerRole, serve
    from .supervisor import Supervisor
    from .worker_link import WorkerEnd

    settings = _settings(args)
    if args.worker_link is not None:
        return await serve(settings, WorkerRole(args.worker_index, WorkerEnd(args.worker_link)))
    if settings.workers == 1:
        return await serve(settings)
    return await Supervisor(settings).run()


async def _dispatch(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.smtp_host:
        print("keyturn: KEYTURN_SMTP_HOST is not set: nothing to dispatch to", file=sys.stderr)
        return 2
    async with _opened(settings, args) as ctx:
        dispatcher = build_dispatcher(ctx, settings)
        assert dispatcher is not None
        stop = stop_on_signal()
        running = asyncio.create_task(dispatcher.run())
        print(f"keyturn dispatching to {settings.smtp_host}:{settings.smtp_port}", flush=True)
        await stop.wait()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    return 0


async def _migrate(args: argparse.Namespace) -> int:
    """Creates the database (and, for SQLite, its secret) when there is none: the one
    admin command that does without --create, as it exists to prepare a database. It
    needs no secret itself: one already sealing data is neither asked for nor made."""
    from .bootstrap import describe_database, holds_sealed_data, resolve_secret
    from .store.database import sqlite_file

    settings = _settings(args)
    database = sqlite_file(settings.database_url)
    if settings.secret_key is None and database is not None and not holds_sealed_data(database):
        resolve_secret(settings)
    migration = await migrate(settings)
    print(f"{migration.describe()} ({describe_database(settings)})")
    return 0


async def _catalog_apply(args: argparse.Namespace) -> int:
    from .catalog_file import apply_catalog_file

    async with _opened(_settings(args), args) as ctx:
        applied = await apply_catalog_file(ctx, Path(args.file))
    print(f"applied {len(applied.products)} products and {len(applied.skus)} SKUs")
    return 0


def _expiry(end: datetime | None) -> str:
    return "never" if end is None else f"{end:{UTC_TIME}}"


async def _tokens_create(args: argparse.Namespace) -> int:
    from .app.tokens import Lifetime, create_token

    lifetime: timedelta | Lifetime | None = Lifetime.DEFAULT
    if args.no_expiry:
        lifetime = None
    elif args.expires_in is not None:
        lifetime = timedelta(days=args.expires_in)
    async with _opened(_settings(args), args) as ctx:
        token, secret = await create_token(
            ctx, set(args.scope), args.description, lifetime=lifetime
        )
    print(secret)
    print(
        f"token {token.token_id} scopes={','.join(sorted(token.scopes))} "
        f"expires {_expiry(token.expire_time)}",
        file=sys.stderr,
    )
    return 0


async def _tokens_revoke(args: argparse.Namespace) -> int:
    from .app.tokens import revoke_token

    async with _opened(_settings(args), args) as ctx:
        revoked = await revoke_token(ctx, args.token)
    if revoked is None:
        print("keyturn: no such active token", file=sys.stderr)
        return 1
    print(f"revoked {revoked}")
    return 0


async def _tokens_list(args: argparse.Namespace) -> int:
    from .app.tokens import list_tokens
    from .domain.credential_expiry import has_expired

    async with _opened(_settings(args), args) as ctx:
        tokens = await list_tokens(ctx, include_revoked=args.all)
        now = ctx.clock.now()
    for token in tokens:
        if token.revoke_time is not None:
            state = f"revoked {token.revoke_time:{UTC_TIME}}"
        else:
            state = "expired" if has_expired(token.expire_time, now) else "active"
        used = "never" if token.last_used_time is None else f"{token.last_used_time:{UTC_TIME}}"
        print(
            f"{token.token_id}  scopes={','.join(sorted(token.scopes))}  "
            f"created {token.create_time:{UTC_TIME}}  expires {_expiry(token.expire_time)}  "
            f"last used {used}  {state}  {token.description}".rstrip()
        )
    return 0


async def _keys_rotate(args: argparse.Namespace) -> int:
    from .app.signing_keys import rotate_signing_keys

    async with _opened(_settings(args), args) as ctx:
        rotation = await rotate_signing_keys(ctx)
    print(f"new signing key {rotation.new_kid}")
    for kid in rotation.retired:
        print(f"key {kid} stops signing now and retires at {rotation.retire_time.isoformat()}")
    return 0


async def _keys_list(args: argparse.Namespace) -> int:
    async with _opened(_settings(args), args) as ctx, ctx.store.read() as tx:
        keys = await tx.signing_keys.list_all()
        signing = await tx.signing_keys.signing_kid()
    now = ctx.clock.now()
    for key in keys:
        if key.kid == signing:
            state = "signing"
        elif key.retire_time is not None and key.retire_time <= now:
            state = f"retired {key.retire_time.isoformat()}"
        else:
            retire = "" if key.retire_time is None else key.retire_time.isoformat()
            state = f"published until {retire}"
        print(f"{key.kid}  created {key.create_time.isoformat()}  {state}")
    return 0


async def _audit_list(args: argparse.Namespace) -> int:
    """The audit trail on the database, as `tokens list` reads the tokens: newest first,
    one aligned row per record (the server's ListAuditEvents gives the same over the API)."""
    from .app.audit_trail import list_audit_events
    from .store.audit_repository import AuditEvent, AuditFilter

    where = AuditFilter(
        actor=args.actor,
        action=args.action,
        entitlement_id=args.entitlement,
        resource=args.resource,
        start_time=args.since,
        end_time=args.until,
    )
    found: list[AuditEvent] = []
    token = ""
    async with _opened(_settings(args), args) as ctx:
        while len(found) < args.limit:
            page, token = await list_audit_events(
                ctx, where=where, page_size=min(500, args.limit - len(found)), page_token=token
            )
            found += page
            if not token:
                break
    table = [("TIME", "ACTOR", "ACTION", "RESOURCE", "ENTITLEMENT")] + [
        (f"{e.create_time:{UTC_TIME}}", e.actor, e.action, e.resource, e.entitlement_id or "-")
        for e in found
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _sqlite_path(settings: Settings) -> Path:
    from sqlalchemy.engine import make_url

    return Path(make_url(settings.database_url).database or "keyturn.db")


async def _backup(args: argparse.Namespace) -> int:
    from .bootstrap import secrets_file_for
    from .store.backup import BackupError

    settings = _settings(args)
    target = Path(args.file)
    try:
        if settings.is_sqlite:
            from .store.sqlite_backup import backup_sqlite

            secrets = None if settings.secret_key is not None else secrets_file_for(settings)
            made = await asyncio.to_thread(
                backup_sqlite,
                _sqlite_path(settings),
                target,
                force=args.force,
                secrets_file=secrets,
            )
            point, kept = made.point, made.secrets
        else:
            from .store.pg_backup import backup_postgres

            point = await backup_postgres(settings.database_url, target, force=args.force)
            kept = None
    except BackupError as error:
        print(f"keyturn: {error}", file=sys.stderr)
        return 1
    print(f"backup written to {target}: {point.describe()}")
    if kept is not None:
        print(
            f"its secret is in {kept} (mode 0600): keep the two files together; without the "
            "secret the backup's license keys and signing keys cannot be used"
        )
    else:
        print(
            f"keyturn: WARNING: {target} does not hold the secret: keep KEYTURN_SECRET_KEY "
            "with it; without the secret the backup's license keys and signing keys cannot "
            "be used",
            file=sys.stderr,
        )
    return 0


async def _restore(args: argparse.Namespace) -> int:
    from .bootstrap import secrets_file_for
    from .store.backup import BackupError

    settings = _settings(args)
    source = Path(args.file)
    given = None if settings.secret_key is None else settings.secret_key.get_secret_value()
    try:
        if settings.is_sqlite:
            from .store.sqlite_backup import restore_sqlite

            target = str(_sqlite_path(settings))
            restored = await asyncio.to_thread(
                restore_sqlite,
                source,
                _sqlite_path(settings),
                force=args.force,
                given_secret=given,
                secrets_file=secrets_file_for(settings),
            )
        else:
            from .store.pg_backup import restore_postgres, shown

            if given is None:
                print(
                    "keyturn: restore needs KEYTURN_SECRET_KEY: the secret of the database "
                    "the backup was made from",
                    file=sys.stderr,
                )
                return 2
            target = shown(settings.database_url)
            restored = await restore_postgres(
                source, settings.database_url, force=args.force, secret=given
            )
    except BackupError as error:
        print(f"keyturn: {error}", file=sys.stderr)
        return 1
    print(
        f"restored {source} into {target}: {restored.describe()}; what was written after "
        "the backup began is not in it"
    )
    if given is None:
        print(f"its secret was put in {secrets_file_for(settings)}")
    else:
        print(
            "servers on it need this KEYTURN_SECRET_KEY (the secret of the database the "
            "backup was made from: it opens the backup's signing keys)"
        )
    return 0


def _connect_stripe(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.stripe_webhook import StripePriceLookup, StripeWebhookServer

    from .port_reservation import STRIPE_LISTEN

    settings = _settings(args)
    secret, token = settings.connector_secrets("stripe_webhook_secret", "fulfill_token")
    api_key = settings.stripe_api_key
    prices = (
        StripePriceLookup(api_key.get_secret_value(), settings.stripe_api_base or None)
        if api_key is not None and api_key.get_secret_value()
        else None
    )
    with _fulfillment_client(args, settings, token) as client:
        return _run_connector(
            "stripe webhook",
            settings.stripe_listen,
            STRIPE_LISTEN,
            settings.stripe_path,
            lambda listen: StripeWebhookServer(
                listen, secret, client.fulfill_order, settings.stripe_path, prices
            ),
        )


def _connect_orders(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.signed_orders import SignedOrderServer, parse_source_secrets

    from .port_reservation import ORDER_WEBHOOK_LISTEN

    settings = _settings(args)
    secrets, token = settings.connector_secrets("order_webhook_secrets", "fulfill_token")
    sources = parse_source_secrets(secrets)
    prefix = settings.order_webhook_path
    with _fulfillment_client(args, settings, token) as client:
        return _run_connector(
            f"signed order endpoint ({', '.join(sorted(sources))})",
            settings.order_webhook_listen,
            ORDER_WEBHOOK_LISTEN,
            f"{prefix}SOURCE",
            lambda listen: SignedOrderServer(listen, sources, client.fulfill_order, prefix),
        )


def _connect_chargify(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.chargify_api import ChargifySeats
    from keyturn.client.connectors.chargify_webhook import ChargifyWebhookServer

    from .port_reservation import CHARGIFY_LISTEN

    settings = _settings(args)
    site_key, token = settings.connector_secrets("chargify_site_key", "fulfill_token")
    products = _product_map(settings)
    seat_components = settings.chargify_seat_component_keys
    api_key = settings.chargify_api_key
    signup_seats = (
        ChargifySeats(api_key.get_secret_value(), settings.chargify_api_base, seat_components)
        if api_key is not None and api_key.get_secret_value()
        else None
    )
    with _fulfillment_client(args, settings, token) as client:
        return _run_connector(
            "chargify webhook",
            settings.chargify_listen,
            CHARGIFY_LISTEN,
            settings.chargify_path,
            lambda listen: ChargifyWebhookServer(
                listen,
                site_key,
                client.fulfill_order,
                products,
                settings.chargify_path,
                seat_components,
                signup_seats,
            ),
        )


def _connect_netsuite(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.netsuite_webhook import NetSuiteOrderServer

    from .port_reservation import NETSUITE_LISTEN

    settings = _settings(args)
    secret, token = settings.connector_secrets("netsuite_secret", "fulfill_token")
    products = _product_map(settings)
    with _fulfillment_client(args, settings, token) as client:
        return _run_connector(
            "netsuite orders",
            settings.netsuite_listen,
            NETSUITE_LISTEN,
            settings.netsuite_path,
            lambda listen: NetSuiteOrderServer(
                listen,
                secret,
                products,
                client.fulfill_order,
                settings.netsuite_path,
                settings.netsuite_tolerance_seconds,
            ),
        )


def _product_map(settings: Settings) -> ProductMap:
    """The vendor's product map (KEYTURN_PRODUCT_MAP), required by the connectors that
    name products by the billing system's own ids; SettingsError when unset or unreadable."""
    from keyturn.client.connectors.product_map import ProductMapError, load_product_map

    if not settings.product_map:
        raise SettingsError(
            f"set {ENV_PREFIX}PRODUCT_MAP (the YAML file mapping each billing system's "
            "product ids to base SKUs, like examples/product-map.yaml)"
        )
    try:
        return load_product_map(settings.product_map)
    except ProductMapError as exc:
        raise SettingsError(str(exc)) from None


def _connect_salesforce(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.product_map import ProductMapError, load_product_map
    from keyturn.client.connectors.salesforce_api import ClientCredentials, SalesforceApi
    from keyturn.client.connectors.salesforce_outbound import (
        SalesforceEndpoint,
        SalesforceOutboundServer,
    )

    from .port_reservation import SALESFORCE_LISTEN

    settings = _settings(args)
    required = {
        "salesforce_organization_id": "the id of the org that sends the outbound messages",
        "salesforce_instance_url": "the org's My Domain URL, https://NAME.my.salesforce.com",
        "product_map": "the product map file, like examples/product-map.yaml",
    }
    unset = [
        f"{ENV_PREFIX}{f.upper()} ({why})"
        for f, why in required.items()
        if not getattr(settings, f)
    ]
    if unset:
        raise SettingsError("set " + " and ".join(unset))
    wanted: list[ConnectorSecret] = ["fulfill_token"]
    if settings.salesforce_client_id:
        wanted.append("salesforce_client_secret")
    token, *app_secret = settings.connector_secrets(*wanted)
    try:
        products = load_product_map(settings.product_map)
    except ProductMapError as exc:
        raise SettingsError(f"{ENV_PREFIX}PRODUCT_MAP: {exc}") from None
    credentials = (
        ClientCredentials(settings.salesforce_client_id, app_secret[0]) if app_secret else None
    )
    api = SalesforceApi(
        settings.salesforce_instance_url, settings.salesforce_api_version, credentials
    )
    with _fulfillment_client(args, settings, token) as client:
        endpoint = SalesforceEndpoint(
            settings.salesforce_organization_id, api, products, client.fulfill_order
        )
        return _run_connector(
            "salesforce outbound messages",
            settings.salesforce_listen,
            SALESFORCE_LISTEN,
            settings.salesforce_path,
            lambda listen: SalesforceOutboundServer(listen, endpoint, settings.salesforce_path),
        )


def _run_connector(
    name: str,
    listen: str,
    setting: ListenSetting,
    path: str,
    build: Callable[[tuple[str, int]], ConnectorServer],
) -> int:
    """Bind a connector's HTTP server, say where, and serve until SIGTERM or SIGINT."""
    from .port_reservation import cannot_listen

    host, _, port = listen.rpartition(":")
    try:
        server = build((host, int(port)))
    except OSError as exc:
        raise cannot_listen(listen, exc, setting) from None
    bound_host, bound_port = server.address
    print(f"keyturn {name} on http://{bound_host}:{bound_port}{path}", flush=True)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


def _orders_import(args: argparse.Namespace) -> int:
    from keyturn.client.connectors.file_import import import_orders

    settings = _settings(args)
    [token] = settings.connector_secrets("fulfill_token")
    with _fulfillment_client(args, settings, token) as client:
        try:
            summary = import_orders(
                Path(args.file),
                client.fulfill_order,
                source=args.source,
                file_format=args.format,
                rejects=Path(args.rejects) if args.rejects else None,
                keys_out=Path(args.keys_out) if args.keys_out else None,
                progress=not args.no_progress,
            )
        except UnicodeDecodeError as exc:
            print(
                f"keyturn: {args.file} is not UTF-8 text (byte {exc.start}: {exc.reason})",
                file=sys.stderr,
            )
            return 2
    print(summary.describe())
    return 0 if not summary.rejected else 1


def _report_usage(args: argparse.Namespace) -> int:
    from .domain.usage import Granularity
    from .usage_export import entitlements_to_report, fetch_usage, usage_chart, usage_csv

    settings = _settings(args)
    [token] = settings.connector_secrets("read_token")
    if not args.entitlement and not args.customer:
        print("keyturn: name an --entitlement or a --customer", file=sys.stderr)
        return 2
    from keyturn.client import KeyturnError

    granularity = Granularity(args.by)
    with _fulfillment_client(args, settings, token) as client:
        try:
            ids = entitlements_to_report(client, args.entitlement, args.customer)
            reports = fetch_usage(
                client, ids, start=args.start, end=args.end, granularity=granularity
            )
        except KeyturnError as error:
            wrong = "".join(f"; {field}: {why}" for field, why in error.field_violations)
            print(f"keyturn: {error}{wrong}", file=sys.stderr)
            return 1
    table = usage_csv(reports)
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    else:
        sys.stdout.write(table)
    if args.chart:
        Path(args.chart).write_text(usage_chart(reports, granularity), encoding="utf-8")
    return 0


def _reconcile(args: argparse.Namespace) -> int:
    """Billing's current subscriptions against Keyturn's entitlements: 0 when they agree,
    1 when anything differs (or a call fails), 2 when the source cannot be read."""
    from datetime import UTC

    import stripe

    from keyturn.client import KeyturnError
    from keyturn.client.connectors.product_map import ProductMapError
    from keyturn.client.connectors.reconcile import (
        corrections_jsonl,
        reconcile,
        report_csv,
        report_table,
    )
    from keyturn.client.connectors.reconcile_keyturn import held_entitlements
    from keyturn.client.connectors.reconcile_sources import SourceError

    settings = _settings(args)
    [token] = settings.connector_secrets("read_token")
    try:
        subscriptions, systems = _billing_side(args, settings)
    except (SourceError, ProductMapError, UnicodeDecodeError, OSError) as exc:
        print(f"keyturn: {exc}", file=sys.stderr)
        return 2
    except stripe.AuthenticationError as exc:
        print(f"keyturn: Stripe refused the API key: {exc.user_message}", file=sys.stderr)
        return 2
    except stripe.StripeError as exc:
        print(f"keyturn: Stripe: {exc.user_message or exc}", file=sys.stderr)
        return 1
    with _fulfillment_client(args, settings, token) as client:
        try:
            held = held_entitlements(client, systems | set(args.system))
        except KeyturnError as error:
            print(f"keyturn: {error}", file=sys.stderr)
            return 1
    result = reconcile(
        subscriptions, held, now=datetime.now(UTC), tolerance=timedelta(hours=args.end_tolerance)
    )
    sys.stdout.write(report_table(result, len(subscriptions)))
    if args.output:
        Path(args.output).write_text(report_csv(result.mismatches), encoding="utf-8")
    if args.corrections:
        Path(args.corrections).write_text(corrections_jsonl(result.orders), encoding="utf-8")
    return 0 if result.clean else 1


def _billing_side(
    args: argparse.Namespace, settings: Settings
) -> tuple[list[Subscription], set[str]]:
    """The billing system's current subscriptions, and the systems whose references they
    carry; SettingsError for what is not set."""
    from keyturn.client.connectors.product_map import load_product_map
    from keyturn.client.connectors.reconcile_keyturn import system_of
    from keyturn.client.connectors.reconcile_sources import (
        CHARGIFY,
        chargify_subscriptions,
        csv_subscriptions,
        stripe_subscriptions,
    )

    if args.source == "stripe":
        api_key = settings.stripe_api_key
        if api_key is None or not api_key.get_secret_value():
            raise SettingsError(f"{ENV_PREFIX}STRIPE_API_KEY is not set")
        found = stripe_subscriptions(api_key.get_secret_value(), settings.stripe_api_base or None)
        return list(found), {"stripe"}
    if not args.file:
        raise SettingsError(f"name the {args.source} export FILE")
    if args.source == "chargify":
        if not settings.product_map:
            raise SettingsError(
                f"{ENV_PREFIX}PRODUCT_MAP is not set (it maps Chargify's product handles to "
                "SKUs; see examples/product-map.yaml)"
            )
        products = load_product_map(settings.product_map)
        return list(chargify_subscriptions(Path(args.file), products)), {CHARGIFY}
    subscriptions = list(csv_subscriptions(Path(args.file)))
    return subscriptions, {system_of(s.reference) for s in subscriptions}


@contextlib.contextmanager
def _fulfillment_client(
    args: argparse.Namespace, settings: Settings, token: str
) -> Iterator[FulfillmentClient]:
    """The connectors' client: to --target, else the admin port when there is one (mutual
    TLS), else KEYTURN_LISTEN; over TLS as the KEYTURN_TARGET_* settings say."""
    from keyturn.client import FulfillmentClient

    from .target import open_target

    target = _local_target(args.target or settings.admin_listen or None, settings)
    with (
        open_target(target, settings) as channel,
        FulfillmentClient(target, token, channel=channel) as client,
    ):
        yield client


def _local_target(address: str | None, settings: Settings) -> str:
    """HOST:PORT to reach the server on this machine: `address`, or KEYTURN_LISTEN (a
    wildcard host there means this machine's loopback)."""
    host, _, port = (address or settings.listen).rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .target import open_target

    settings = _settings(args)
    with open_target(_local_target(args.address, settings), settings) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1


def _openapi(args: argparse.Namespace) -> int:
    """Writes the OpenAPI document: JSON, or YAML when asked or for a .yaml/.yml FILE."""
    import json

    import yaml

    from .api.openapi import openapi_document

    document = openapi_document()
    output: str | None = args.output
    as_yaml = args.format == "yaml" or (
        args.format is None and output is not None and output.endswith((".yaml", ".yml"))
    )
    if as_yaml:
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    else:
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
    return 0


class _DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and default is not None
            and default is not False  # a flag: off unless given
            and default not in ("", argparse.SUPPRESS)
            and "default" not in help_text
        ):
            help_text += " (default: %(default)s)"
        return help_text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsShown)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A mistake on the command line: one line that names it and where help is, exit 2
        (argparse's own also prints the usage, several lines before the one that matters)."""
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keyturn")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# Connectors and health reach the server where `keyturn serve` listens, unless told.
TARGET_DEFAULT = f"(default: KEYTURN_LISTEN, else {Settings.model_fields['listen'].default})"
TARGET_HELP = (
    "the Keyturn gRPC server HOST:PORT (default: KEYTURN_ADMIN_LISTEN when set, else "
    f"KEYTURN_LISTEN, else {Settings.model_fields['listen'].default})"
)
# The options of every command that calls the server: how it speaks TLS to it.
TARGET_TLS_FLAGS = {
    "target_tls": "--tls",
    "target_ca_file": "--ca-file",
    "target_server_name": "--server-name",
    "target_cert_file": "--cert-file",
    "target_key_file": "--key-file",
}


def _target_tls_options() -> _Parser:
    options = _Parser(add_help=False)
    group = options.add_argument_group("TLS to the server")
    group.add_argument(
        "--tls",
        choices=["auto", "on", "off"],
        help="on: TLS; off: plaintext; auto: TLS when a CA file, a client certificate or "
        "the server's KEYTURN_TLS_CERT_FILE is set (default: KEYTURN_TARGET_TLS, else auto)",
    )
    group.add_argument(
        "--ca-file",
        help="PEM CA certificates to trust for the server (default: KEYTURN_TARGET_CA_FILE, "
        "else the server's own KEYTURN_TLS_CERT_FILE when set, else gRPC's default roots)",
    )
    group.add_argument(
        "--server-name",
        help="name to check on the server's certificate (default: KEYTURN_TARGET_SERVER_NAME, "
        "else the first name of KEYTURN_TLS_CERT_FILE when that is trusted, else the host)",
    )
    group.add_argument(
        "--cert-file",
        help="PEM client certificate for mutual TLS (default: KEYTURN_TARGET_CERT_FILE)",
    )
    group.add_argument(
        "--key-file", help="PEM key of --cert-file (default: KEYTURN_TARGET_KEY_FILE)"
    )
    return options


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="keyturn",
        description="Keyturn licensing service. Settings come from KEYTURN_* environment "
        "variables (see README 'Configuration').",
    )
    parser.add_argument("--version", action="version", version=f"keyturn {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # The commands that act on a database someone else serves: --create, and nothing new
    # made without it.
    admin = _Parser(add_help=False)
    admin.add_argument(
        "--create",
        action="store_true",
        help="make the SQLite database or its secret if missing (without: an error, so "
        "that a command run in the wrong folder does not act on a new database)",
    )
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help=_from_setting("listen", "HOST:PORT to bind"))
    serve.add_argument(
        "--workers",
        type=_positive,
        help="server processes on the one port (default: KEYTURN_WORKERS, else the number "
        "of CPUs); 1: a single process",
    )
    serve.add_argument(
        "--http-listen",
        help=_from_setting("http_listen", "HOST:PORT of the HTTP/JSON API; empty: off"),
    )
    _with_settings(serve, listen="--listen", workers="--workers", http_listen="--http-listen")
    # Set by the supervisor for the workers it starts; not for people.
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-link", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    commands.add_parser(
        "migrate",
        help="create or upgrade the database schema (and a new SQLite database's secret)",
    ).set_defaults(run=_migrate)
    commands.add_parser(
        "dispatch", parents=[admin], help="send queued credential emails (without serving gRPC)"
    ).set_defaults(run=_dispatch)

    catalog = commands.add_parser("catalog", help="manage the catalog")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    apply = catalog_commands.add_parser(
        "apply", parents=[admin], help="load products and SKUs from a YAML file"
    )
    apply.add_argument("file", help="catalog file, see examples/catalog.yaml")
    apply.set_defaults(run=_catalog_apply)

    tokens = commands.add_parser("tokens", help="manage API tokens of order connectors")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    create = token_commands.add_parser(
        "create", parents=[admin], help="create a token and print it once"
    )
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=["catalog", "fulfill", "read", "webhooks"],
        help="a scope the token grants; repeat for several",
    )
    create.add_argument("--description", default="", help="what the token is for")
    lifetime = create.add_mutually_exclusive_group()
    lifetime.add_argument(
        "--expires-in",
        type=_days,
        metavar="DAYS",
        help=_from_setting("api_token_lifetime_days", "the token ends DAYS days from now")
        + "; 0 there: never",
    )
    lifetime.add_argument(
        "--no-expiry", action="store_true", help="the token never ends (revoke it to end it)"
    )
    create.set_defaults(run=_tokens_create)
    listing = token_commands.add_parser(
        "list",
        parents=[admin],
        help="show the tokens: id, scopes, created, expires, last used (within a minute), "
        "active/expired/revoked, description",
    )
    listing.add_argument("--all", action="store_true", help="revoked tokens too (expired always)")
    listing.set_defaults(run=_tokens_list)
    revoke = token_commands.add_parser("revoke", parents=[admin], help="revoke a token")
    revoke.add_argument("token", help="its id (tok_...) or the token itself (kt_...)")
    revoke.set_defaults(run=_tokens_revoke)

    keys = commands.add_parser("keys", help="manage the keys that sign leases")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    key_commands.add_parser(
        "rotate",
        parents=[admin],
        help="add a signing key that signs from now on; older keys stay published until "
        "every lease they signed has expired",
    ).set_defaults(run=_keys_rotate)
    key_commands.add_parser(
        "list", parents=[admin], help="show every signing key and its state"
    ).set_defaults(run=_keys_list)

    audit = commands.add_parser("audit", help="read the audit trail: who changed what")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_list = audit_commands.add_parser(
        "list",
        parents=[admin],
        help="the newest changes first: time, actor, action, resource, entitlement",
    )
    audit_list.add_argument("--actor", default="", help="only this actor (token:tok_..., cli:USER)")
    audit_list.add_argument("--action", default="", help="only this action (order.fulfil, ...)")
    audit_list.add_argument("--entitlement", default="", help="only changes of this entitlement")
    audit_list.add_argument(
        "--resource", default="", help="only this resource; ending in /, every one below it"
    )
    audit_list.add_argument(
        "--since", type=_utc_time, metavar="TIME", help="only changes at or after TIME (UTC)"
    )
    audit_list.add_argument(
        "--until", type=_utc_time, metavar="TIME", help="only changes before TIME (UTC)"
    )
    audit_list.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N records"
    )
    audit_list.set_defaults(run=_audit_list)

    from .webhook_commands import add_webhook_commands

    add_webhook_commands(commands, admin, _opened, _settings)

    backup = commands.add_parser(
        "backup",
        help="write a consistent copy of the database while servers run (SQLite: a database "
        "file and FILE.secrets; PostgreSQL: a pg_dump archive, without KEYTURN_SECRET_KEY)",
    )
    backup.add_argument("file", help="where the backup goes")
    backup.add_argument("--force", action="store_true", help="replace FILE if it exists")
    backup.set_defaults(run=_backup)
    restore = commands.add_parser(
        "restore",
        help="replace the database by a backup, in one transaction; needs the backup's secret "
        "(FILE.secrets beside a SQLite backup, or KEYTURN_SECRET_KEY)",
    )
    restore.add_argument("file", help="a file written by keyturn backup")
    restore.add_argument("--force", action="store_true", help="replace a database that holds data")
    restore.set_defaults(run=_restore)

    target_tls = _target_tls_options()
    connect = commands.add_parser("connect", help="run an order connector")
    connectors = connect.add_subparsers(dest="connector", required=True)

    def connector(
        name: str, run: Callable[[argparse.Namespace], int], help: str, setting: str
    ) -> None:
        """`keyturn connect NAME`: --listen and --path over KEYTURN_{SETTING}_LISTEN/_PATH."""
        parser = connectors.add_parser(name, parents=[target_tls], help=help)
        listen, path = f"{setting}_listen", f"{setting}_path"
        parser.add_argument("--listen", help=_from_setting(listen, "HOST:PORT for HTTP"))
        parser.add_argument("--path", help=_from_setting(path, "the endpoint's URL path"))
        parser.add_argument("--target", help=TARGET_HELP)
        _with_settings(parser, **{listen: "--listen", path: "--path"}, **TARGET_TLS_FLAGS)
        parser.set_defaults(run=run, sync=True)

    connector(
        "stripe",
        _connect_stripe,
        "an HTTP endpoint for Stripe webhooks (KEYTURN_STRIPE_WEBHOOK_SECRET, "
        "KEYTURN_FULFILL_TOKEN; KEYTURN_STRIPE_API_KEY for invoices that name only a price id)",
        "stripe",
    )
    connector(
        "salesforce",
        _connect_salesforce,
        "an HTTP endpoint for Salesforce outbound messages (KEYTURN_SALESFORCE_"
        "ORGANIZATION_ID, KEYTURN_SALESFORCE_INSTANCE_URL, KEYTURN_PRODUCT_MAP, "
        "KEYTURN_FULFILL_TOKEN)",
        "salesforce",
    )
    connector(
        "netsuite",
        _connect_netsuite,
        "an HTTP endpoint for the Sales Orders the Keyturn SuiteScripts post "
        "(KEYTURN_NETSUITE_SECRET, KEYTURN_PRODUCT_MAP, KEYTURN_FULFILL_TOKEN)",
        "netsuite",
    )
    connector(
        "chargify",
        _connect_chargify,
        "an HTTP endpoint for Chargify / Maxio webhooks (KEYTURN_CHARGIFY_SITE_KEY, "
        "KEYTURN_FULFILL_TOKEN, KEYTURN_PRODUCT_MAP; KEYTURN_CHARGIFY_API_KEY for the seats "
        "a subscription signs up with)",
        "chargify",
    )
    connector(
        "orders",
        _connect_orders,
        "an HTTP endpoint for orders signed per Standard Webhooks, from any system "
        "(KEYTURN_ORDER_WEBHOOK_SECRETS, KEYTURN_FULFILL_TOKEN); the path is a prefix, "
        "the source follows it",
        "order_webhook",
    )

    orders = commands.add_parser("orders", help="work with orders")
    order_commands = orders.add_subparsers(dest="orders_command", required=True)
    importer = order_commands.add_parser(
        "import",
        parents=[target_tls],
        help="fulfil the orders of a CSV or JSONL export (KEYTURN_FULFILL_TOKEN)",
    )
    importer.add_argument("file", help="the export; see README 'File import' for its columns")
    importer.add_argument("--source", default="import", help="order source (salesforce...)")
    importer.add_argument(
        "--format", choices=["csv", "jsonl"], help="default: from the file extension"
    )
    importer.add_argument("--rejects", help="write refused lines here, with reasons")
    importer.add_argument(
        "--keys-out", help="write the created license keys here (CSV), not on stdout"
    )
    importer.add_argument("--target", help=TARGET_HELP)
    importer.add_argument("--no-progress", action="store_true", help="no progress bar")
    _with_settings(importer, **TARGET_TLS_FLAGS)
    importer.set_defaults(run=_orders_import, sync=True)

    reconciler = commands.add_parser(
        "reconcile",
        parents=[target_tls],
        help="compare a billing system's current subscriptions with Keyturn's entitlements "
        "(KEYTURN_READ_TOKEN; KEYTURN_STRIPE_API_KEY for stripe); exit 1 when they differ",
    )
    reconciler.add_argument(
        "source",
        choices=["stripe", "chargify", "csv"],
        help="stripe: its API; chargify: a subscriptions export; csv: subscription_id, sku, "
        "quantity, period_end (README 'Reconciliation')",
    )
    reconciler.add_argument("file", nargs="?", help="the export (chargify, csv)")
    reconciler.add_argument("--output", metavar="FILE", help="also write the report as CSV")
    reconciler.add_argument(
        "--corrections",
        metavar="FILE",
        help="write the corrective orders as JSONL for `keyturn orders import`",
    )
    reconciler.add_argument(
        "--system",
        action="append",
        default=[],
        help="also look for extra entitlements with references SYSTEM:...; repeatable "
        "(default: stripe, chargify, or the systems the CSV's references name)",
    )
    reconciler.add_argument(
        "--end-tolerance",
        type=_hours,
        default=24.0,
        metavar="HOURS",
        help="end dates this close count as equal (default: 24)",
    )
    reconciler.add_argument("--target", help=TARGET_HELP)
    _with_settings(reconciler, **TARGET_TLS_FLAGS)
    reconciler.set_defaults(run=_reconcile, sync=True)

    report = commands.add_parser("report", help="reports from the server")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    usage = report_commands.add_parser(
        "usage",
        parents=[target_tls],
        help="seats in use per hour or day (peak, average, limit) as CSV (KEYTURN_READ_TOKEN)",
    )
    usage.add_argument(
        "--entitlement", action="append", default=[], help="an entitlement id; repeatable"
    )
    usage.add_argument(
        "--customer", action="append", default=[], help="every entitlement of a customer id"
    )
    usage.add_argument(
        "--from",
        dest="start",
        required=True,
        type=_utc_time,
        help="start, inclusive: an ISO date or time on a whole hour or day (UTC unless given)",
    )
    usage.add_argument(
        "--to", dest="end", required=True, type=_utc_time, help="end, exclusive, as --from"
    )
    usage.add_argument("--by", choices=["hour", "day"], default="day", help="bucket length")
    usage.add_argument("--output", help="write the CSV here instead of stdout")
    usage.add_argument("--chart", help="also draw the report as an SVG file")
    usage.add_argument("--target", help=TARGET_HELP)
    _with_settings(usage, **TARGET_TLS_FLAGS)
    usage.set_defaults(run=_report_usage, sync=True)

    health = commands.add_parser(
        "health", parents=[target_tls], help="ask a running server whether it is SERVING"
    )
    health.add_argument("--address", help=f"HOST:PORT {TARGET_DEFAULT}")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    _with_settings(health, **TARGET_TLS_FLAGS)
    health.set_defaults(run=_health, sync=True)

    openapi = commands.add_parser(
        "openapi", help="print the OpenAPI 3.1 document of the HTTP/JSON API (from the protos)"
    )
    openapi.add_argument("--output", metavar="FILE", help="write it to FILE, not stdout")
    openapi.add_argument(
        "--format",
        choices=["json", "yaml"],
        help="default: yaml for a FILE ending .yaml or .yml, else json",
    )
    openapi.set_defaults(run=_openapi, sync=True)
    return parser


def _loop_factory(
    settings: Settings, args: argparse.Namespace
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where calls are served; the supervisor of workers (which only starts and
    watches processes, with options uvloop's subprocess support lacks) keeps asyncio's."""
    supervising = (
        getattr(args, "run", None) is _serve
        and getattr(args, "worker_link", None) is None
        and settings.workers > 1
    )
    if settings.event_loop == "uvloop" and not supervising:
        import uvloop

        return uvloop.new_event_loop
    return None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _hours(text: str) -> float:
    """A tolerance in hours: 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not 0 <= value <= 24 * 366:
        raise argparse.ArgumentTypeError("must be 0 to 8784 hours")
    return value


def _days(text: str) -> int:
    """A token lifetime in whole days, 1 to MAX_LIFETIME's (an end a date can hold)."""
    from .app.tokens import MAX_LIFETIME

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= MAX_LIFETIME.days:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LIFETIME.days} days")
    return value


def _utc_time(text: str) -> datetime:
    """An ISO 8601 date or time; one without an offset is UTC, as the commands show times."""
    from .domain.durations import utc_time

    try:
        return utc_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date or time") from None


def main(argv: list[str] | None = None) -> int:
    import os

    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"keyturn: {describe_invalid(exc, _flags(args))}", file=sys.stderr)
        return 2
    worker = args.worker_index if getattr(args, "worker_link", None) is not None else None
    if worker is None:  # a worker's environment is its supervisor's, already reported
        for warning in unknown_variables(os.environ):
            print(f"keyturn: warning: {warning}", file=sys.stderr)
    configure_logging(settings.log_level, settings.log_format, worker)
    run: Callable[[argparse.Namespace], Awaitable[int] | int] = args.run
    try:
        if getattr(args, "sync", False):
            return run(args)  # type: ignore[return-value]
        with asyncio.Runner(loop_factory=_loop_factory(settings, args)) as runner:
            return runner.run(run(args))  # type: ignore[arg-type]
    except (SecretError, SettingsError) as exc:  # a mistake in the settings: fix and retry
        print(f"keyturn: {exc}", file=sys.stderr)
        return 2
    except (DomainError, OSError) as exc:
        print(f"keyturn: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from .catalog_file import CatalogFileError

        if isinstance(exc, CatalogFileError):
            print(f"keyturn: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
