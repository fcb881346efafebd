"""Shape and consistency rules for catalog entries and orders.

Each check returns field violations named by their path in the API request,
so one INVALID_REQUEST error can list everything wrong at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import assert_never

from .catalog import (
    MAX_GRACE,
    MAX_LEASE_DURATION,
    MAX_SEATS_PER_UNIT,
    MIN_LEASE_DURATION,
    AddFeatures,
    AddSeats,
    Cancel,
    ChangeEdition,
    ConvertTrial,
    Create,
    Feature,
    Operation,
    Product,
    Reinstate,
    RemoveFeatures,
    RemoveSeats,
    Renew,
    Sku,
    Suspend,
)
from .deactivation_limits import check_deactivation_limit
from .durations import parse_iso_duration
from .errors import FieldViolation

SLUG = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")
SKU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_DISPLAY_NAME = 200
MAX_EDITIONS = 100
MAX_FEATURES = 200
MAX_OPERATIONS = 16


def check_slug(path: str, value: str, what: str) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(path, f"{what} is required")]
    if not SLUG.fullmatch(value):
        return [
            FieldViolation(
                path,
                f"{what} must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-', "
                "starting with a letter",
            )
        ]
    return []


def check_display_name(path: str, value: str) -> list[FieldViolation]:
    if len(value) > MAX_DISPLAY_NAME:
        return [FieldViolation(path, f"must be at most {MAX_DISPLAY_NAME} characters")]
    return []


def check_term(path: str, term: str) -> list[FieldViolation]:
    try:
        parse_iso_duration(term)
    except ValueError as exc:
        return [FieldViolation(path, str(exc))]
    return []


def check_count(path: str, value: int, low: int, high: int) -> list[FieldViolation]:
    if not low <= value <= high:
        return [FieldViolation(path, f"must be between {low} and {high}, got {value}")]
    return []


def check_features(path: str, features: Iterable[Feature]) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    seen: set[str] = set()
    listed = list(features)
    if len(listed) > MAX_FEATURES:
        violations.append(FieldViolation(path, f"at most {MAX_FEATURES} features"))
    for i, feature in enumerate(listed):
        violations += check_slug(f"{path}[{i}].name", feature.name, "feature name")
        if feature.name in seen:
            violations.append(FieldViolation(f"{path}[{i}].name", f"{feature.name!r} is repeated"))
        seen.add(feature.name)
        if feature.limit is not None and feature.limit < 0:
            violations.append(FieldViolation(f"{path}[{i}].limit", "must not be negative"))
    return violations


def validate_product(product: Product, path: str = "product") -> list[FieldViolation]:
    violations = check_slug(f"{path}.product_id", product.product_id, "product id")
    violations += check_display_name(f"{path}.display_name", product.display_name)
    if not product.editions:
        violations.append(FieldViolation(f"{path}.editions", "at least one edition is required"))
    if len(product.editions) > MAX_EDITIONS:
        violations.append(FieldViolation(f"{path}.editions", f"at most {MAX_EDITIONS} editions"))
    seen: set[str] = set()
    for i, edition in enumerate(product.editions):
        epath = f"{path}.editions[{i}]"
        violations += check_slug(f"{epath}.edition_id", edition.edition_id, "edition id")
        if edition.edition_id in seen:
            violations.append(
                FieldViolation(f"{epath}.edition_id", f"{edition.edition_id!r} is repeated")
            )
        seen.add(edition.edition_id)
        violations += check_display_name(f"{epath}.display_name", edition.display_name)
        violations += check_features(f"{epath}.features", edition.features)
    return violations


def check_sku_id(path: str, sku_id: str) -> list[FieldViolation]:
    if not sku_id:
        return [FieldViolation(path, "SKU id is required")]
    if not SKU_ID.fullmatch(sku_id):
        return [
            FieldViolation(
                path, "SKU id must be 1 to 128 characters of letters, digits, '.', '_', ':' or '-'"
            )
        ]
    return []


def validate_sku_shape(sku: Sku, path: str = "sku") -> list[FieldViolation]:
    """Rules that need no other catalog entry."""
    violations = check_sku_id(f"{path}.sku_id", sku.sku_id)
    violations += check_display_name(f"{path}.display_name", sku.display_name)
    violations += check_slug(f"{path}.product_id", sku.product_id, "product id")
    ops = sku.operations
    if not ops:
        violations.append(
            FieldViolation(f"{path}.operations", "at least one operation is required")
        )
    if len(ops) > MAX_OPERATIONS:
        violations.append(
            FieldViolation(f"{path}.operations", f"at most {MAX_OPERATIONS} operations")
        )
    for i, op in enumerate(ops):
        opath = f"{path}.operations[{i}].{op.name}"
        if isinstance(op, Create) and i > 0:
            violations.append(FieldViolation(opath, "create may only be the first operation"))
        violations += _check_operation(opath, op)
    return violations


def _check_create(path: str, op: Create) -> list[FieldViolation]:
    violations = check_slug(f"{path}.edition_id", op.edition_id, "edition id")
    violations += check_count(f"{path}.seats_per_unit", op.seats_per_unit, 1, MAX_SEATS_PER_UNIT)
    if op.term is None and op.trial:
        violations.append(FieldViolation(f"{path}.perpetual", "a trial cannot be perpetual"))
    if op.term is not None:
        violations += check_term(f"{path}.term", op.term)
    violations += check_features(f"{path}.features", op.features)
    if not MIN_LEASE_DURATION <= op.lease_duration <= MAX_LEASE_DURATION:
        violations.append(
            FieldViolation(f"{path}.lease_duration", "must be between 1 minute and 30 days")
        )
    if not timedelta(0) <= op.grace <= MAX_GRACE:
        violations.append(FieldViolation(f"{path}.grace_period", "must be between 0 and 90 days"))
    if op.deactivation_limit is not None:
        violations += check_deactivation_limit(f"{path}.deactivation_limit", op.deactivation_limit)
    return violations


def _check_operation(path: str, op: Operation) -> list[FieldViolation]:
    match op:
        case Create():
            return _check_create(path, op)
        case Renew():
            return check_term(f"{path}.term", op.term)
        case AddSeats() | RemoveSeats():
            return check_count(f"{path}.seats_per_unit", op.seats_per_unit, 1, MAX_SEATS_PER_UNIT)
        case ChangeEdition():
            return check_slug(f"{path}.edition_id", op.edition_id, "edition id")
        case AddFeatures():
            if not op.features:
                return [FieldViolation(f"{path}.features", "at least one feature is required")]
            return check_features(f"{path}.features", op.features)
        case RemoveFeatures():
            if not op.feature_names:
                return [FieldViolation(f"{path}.feature_names", "at least one name is required")]
            return [
                v
                for i, name in enumerate(op.feature_names)
                for v in check_slug(f"{path}.feature_names[{i}]", name, "feature name")
            ]
        case ConvertTrial():
            return [] if op.term is None else check_term(f"{path}.term", op.term)
        case Cancel() | Suspend() | Reinstate():
            return []  # nothing to check: they carry no fields
        case unreachable:
            assert_never(unreachable)


def validate_sku_against_product(
    sku: Sku, product: Product, path: str = "sku"
) -> list[FieldViolation]:
    """Every edition a SKU names must exist in its product."""
    violations: list[FieldViolation] = []
    for i, op in enumerate(sku.operations):
        if isinstance(op, Create | ChangeEdition) and product.edition(op.edition_id) is None:
            violations.append(
                FieldViolation(
                    f"{path}.operations[{i}].{op.name}.edition_id",
                    f"product {product.product_id!r} has no edition {op.edition_id!r}",
                )
            )
    return violations
