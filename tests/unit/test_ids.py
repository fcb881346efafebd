"""Resource ids: prefix, 26 base32 symbols, sortable by creation time."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from hypothesis import example, given
from hypothesis import strategies as st

from keyturn.server.domain.base32 import ALPHABET, canonical, encode
from keyturn.server.domain.ids import new_id

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NOW = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
ID_FORMAT = re.compile(r"^ent_[0-9a-hjkmnp-tv-z]{26}$")
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(8000, 1, 1), timezones=st.just(UTC)
)


def decode(symbols: str) -> int:
    value = 0
    for symbol in symbols.upper():
        value = value * 32 + ALPHABET.index(symbol)
    return value


def millis_in(resource_id: str) -> int:
    return decode(resource_id.split("_", 1)[1]) >> 80


def exact_millis(instant: datetime) -> int:
    return (instant - EPOCH) // timedelta(milliseconds=1)


def test_an_id_is_a_prefix_and_26_lower_case_symbols() -> None:
    assert ID_FORMAT.match(new_id("ent", NOW))


def test_ids_of_the_same_instant_differ() -> None:
    ids = {new_id("ent", NOW) for _ in range(1000)}
    assert len(ids) == 1000


def test_the_first_symbols_carry_the_millisecond() -> None:
    assert millis_in(new_id("ent", NOW)) == exact_millis(NOW)


@given(instant=instants)
@example(instant=datetime(2038, 4, 23, 22, 41, 55, 615000, tzinfo=UTC))
def test_the_time_part_is_the_exact_millisecond(instant: datetime) -> None:
    assert millis_in(new_id("ent", instant)) == exact_millis(instant)


@given(first=instants, gap=st.integers(1, 10**12))
def test_ids_sort_by_time_a_millisecond_apart(first: datetime, gap: int) -> None:
    later = first + timedelta(milliseconds=gap)
    if later.year > 8000:
        return
    assert new_id("ent", first) < new_id("ent", later)


def test_ids_made_in_sequence_sort_in_sequence() -> None:
    times = [NOW + timedelta(milliseconds=3 * i) for i in range(200)]
    made = [new_id("act", t) for t in times]
    assert sorted(made) == made


def test_base32_encode_and_canonical() -> None:
    assert encode(0, 3) == "000"
    assert encode(31, 2) == "0Z"
    assert encode(32, 2) == "10"
    assert encode(32 * 32 + 1, 2) == "01"  # only the last `length` symbols
    assert canonical("oil-abc") == "011-ABC"
