"""Orders: lines of SKUs bought, validated and fingerprinted for idempotency."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from .entitlement import Customer
from .errors import FieldViolation
from .validation import check_count, check_sku_id

SOURCE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MAX_LINES = 100
MAX_QUANTITY = 100_000
MAX_EMAIL = 254
MAX_REFERENCE = 200
MAX_NAMED_USERS_PER_LINE = 1000


@dataclass(frozen=True)
class OrderLine:
    sku_id: str
    quantity: int
    entitlement_id: str = ""
    external_reference: str = ""
    named_user_emails: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderRequest:
    source: str
    order_id: str
    customer: Customer
    ship_to_email: str
    lines: tuple[OrderLine, ...]

    @property
    def key(self) -> tuple[str, str]:
        """The idempotency key: the order's source and its id there."""
        return self.source, self.order_id

    @property
    def delivery_email(self) -> str:
        return self.ship_to_email or self.customer.email

    def fingerprint(self) -> str:
        """A digest of the whole content: equal orders have equal fingerprints."""
        content = asdict(self)
        for line in content["lines"]:  # orders stored before named users keep their digest
            if not line["named_user_emails"]:
                del line["named_user_emails"]
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class LineResult:
    line_index: int
    sku_id: str
    entitlement_id: str
    operations: tuple[str, ...]


def check_email(path: str, value: str, required: bool) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(path, "an email address is required")] if required else []
    if len(value) > MAX_EMAIL or not EMAIL.fullmatch(value):
        return [FieldViolation(path, "must be an email address of at most 254 characters")]
    return []


def check_text(path: str, value: str, limit: int, what: str) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(path, f"{what} is required")]
    if len(value) > limit or not PRINTABLE.fullmatch(value):
        return [FieldViolation(path, f"{what} must be 1 to {limit} printable characters")]
    return []


MAX_REASON = 500  # an administrator's reason (a suspension's, a deactivation's)


def check_reason(reason: str, *, required: bool) -> list[FieldViolation]:
    """An administrator's reason: free text for people (spaces and any script allowed),
    but no control characters, at most MAX_REASON characters."""
    if required and not reason.strip():
        return [FieldViolation("reason", "a reason is required")]
    if len(reason) > MAX_REASON or not reason.isprintable():
        bounds = f"1 to {MAX_REASON}" if required else f"at most {MAX_REASON}"
        return [FieldViolation("reason", f"must be {bounds} printable characters")]
    return []


def check_named_user_emails(path: str, emails: tuple[str, ...]) -> list[FieldViolation]:
    """Every email of a line well formed, at most MAX_NAMED_USERS_PER_LINE of them."""
    if len(emails) > MAX_NAMED_USERS_PER_LINE:
        return [FieldViolation(path, f"at most {MAX_NAMED_USERS_PER_LINE} named users per line")]
    violations: list[FieldViolation] = []
    for index, email in enumerate(emails):
        violations += check_email(f"{path}[{index}]", email, required=True)
    return violations


def check_reference(path: str, value: str) -> list[FieldViolation]:
    return check_text(path, value, MAX_REFERENCE, "reference")


def check_order_key(source: str, order_id: str) -> list[FieldViolation]:
    """The idempotency key of an order: its source and its id there."""
    violations: list[FieldViolation] = []
    if not SOURCE.fullmatch(source):
        violations.append(
            FieldViolation("source", "must be 1 to 64 characters of a-z, 0-9, '_' or '-'")
        )
    return violations + check_text("order_id", order_id, 128, "order id")


def validate_order(order: OrderRequest) -> list[FieldViolation]:
    violations = check_order_key(order.source, order.order_id)
    violations += check_text("customer.customer_id", order.customer.customer_id, 128, "customer id")
    if len(order.customer.name) > 200:
        violations.append(FieldViolation("customer.name", "must be at most 200 characters"))
    violations += check_email("customer.email", order.customer.email, required=False)
    violations += check_email("ship_to_email", order.ship_to_email, required=False)
    if not order.lines:
        violations.append(FieldViolation("lines", "at least one line is required"))
    if len(order.lines) > MAX_LINES:
        violations.append(FieldViolation("lines", f"at most {MAX_LINES} lines"))
    for i, line in enumerate(order.lines):
        path = f"lines[{i}]"
        violations += check_sku_id(f"{path}.sku_id", line.sku_id)
        violations += check_count(f"{path}.quantity", line.quantity, 1, MAX_QUANTITY)
        if line.entitlement_id:
            violations += check_text(f"{path}.entitlement_id", line.entitlement_id, 64, "id")
        if line.external_reference:
            violations += check_reference(f"{path}.external_reference", line.external_reference)
        violations += check_named_user_emails(f"{path}.named_user_emails", line.named_user_emails)
    return violations
