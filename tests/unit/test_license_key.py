"""License keys: format, tolerant normalisation, and typos rejected by the checksum."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.server.domain.base32 import ALPHABET
from keyturn.server.domain.license_key import generate_license_key, normalize_license_key

KEY_FORMAT = re.compile(r"^[0-9A-HJKMNP-TV-Z]{5}(-[0-9A-HJKMNP-TV-Z]{5}){5}$")
KEYS = [generate_license_key() for _ in range(64)]
# Where a look-alike may be typed for a canonical symbol.
LOOKALIKES = {"0": "Oo", "1": "IiLl"}


def symbols_of(key: str) -> str:
    return key.replace("-", "")


def grouped(symbols: str) -> str:
    return "-".join(symbols[i : i + 5] for i in range(0, len(symbols), 5))


def test_generated_keys_have_six_groups_of_five_base32_symbols() -> None:
    for key in KEYS:
        assert KEY_FORMAT.match(key), key


def test_generated_keys_differ() -> None:
    assert len(set(KEYS)) == len(KEYS)


def test_normalize_of_a_generated_key_is_the_identity() -> None:
    for _ in range(500):
        key = generate_license_key()
        assert normalize_license_key(key) == key


@given(
    key=st.sampled_from(KEYS),
    lower=st.lists(st.booleans(), min_size=30, max_size=30),
    lookalike=st.lists(st.integers(0, 3), min_size=30, max_size=30),
    separator=st.sampled_from(["", "-", " ", " - ", "\t", "  "]),
    padding=st.sampled_from(["", " ", "\n", "  \t"]),
)
def test_case_dashes_spaces_and_lookalikes_do_not_matter(
    key: str, lower: list[bool], lookalike: list[int], separator: str, padding: str
) -> None:
    typed = []
    for i, symbol in enumerate(symbols_of(key)):
        if symbol in LOOKALIKES:
            options = LOOKALIKES[symbol]
            symbol = options[lookalike[i] % len(options)]
        elif lower[i]:
            symbol = symbol.lower()
        typed.append(symbol)
    text = "".join(typed)
    text = separator.join(text[i : i + 5] for i in range(0, 30, 5))
    assert normalize_license_key(padding + text + padding) == key


def test_a_key_without_any_separator_is_accepted() -> None:
    key = KEYS[0]
    assert normalize_license_key(symbols_of(key)) == key
    assert normalize_license_key(symbols_of(key).lower()) == key


@given(
    key=st.sampled_from(KEYS),
    position=st.integers(0, 29),
    replacement=st.sampled_from(ALPHABET),
)
def test_a_single_mistyped_symbol_is_rejected(key: str, position: int, replacement: str) -> None:
    symbols = symbols_of(key)
    if symbols[position] == replacement:
        replacement = ALPHABET[(ALPHABET.index(replacement) + 1) % len(ALPHABET)]
    typo = symbols[:position] + replacement + symbols[position + 1 :]
    assert normalize_license_key(grouped(typo)) is None


@given(key=st.sampled_from(KEYS), position=st.integers(0, 28))
def test_two_swapped_neighbours_are_rejected(key: str, position: int) -> None:
    symbols = symbols_of(key)
    a, b = symbols[position], symbols[position + 1]
    if a == b:
        return
    swapped = symbols[:position] + b + a + symbols[position + 2 :]
    assert normalize_license_key(grouped(swapped)) is None


def test_a_mistyped_checksum_group_is_rejected() -> None:
    for key in KEYS[:8]:
        body, check = key[:-5], key[-5:]
        for i in range(5):
            other = "0" if check[i] != "0" else "1"
            assert normalize_license_key(body + check[:i] + other + check[i + 1 :]) is None


@given(key=st.sampled_from(KEYS), position=st.integers(0, 29))
def test_a_dropped_symbol_is_rejected(key: str, position: int) -> None:
    symbols = symbols_of(key)
    assert normalize_license_key(symbols[:position] + symbols[position + 1 :]) is None


@given(key=st.sampled_from(KEYS), position=st.integers(0, 30), extra=st.sampled_from(ALPHABET))
def test_an_extra_symbol_is_rejected(key: str, position: int, extra: str) -> None:
    symbols = symbols_of(key)
    assert normalize_license_key(symbols[:position] + extra + symbols[position:]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-----",
        "0",
        "00000-00000-00000-00000-00000",
        "00000-00000-00000-00000-00000-00000-00000",
    ],
)
def test_wrong_lengths_are_rejected(text: str) -> None:
    assert normalize_license_key(text) is None


def test_a_key_followed_by_another_group_is_rejected() -> None:
    assert normalize_license_key(KEYS[0] + "-00000") is None


def test_overlong_input_is_rejected_even_when_it_is_mostly_spaces() -> None:
    key = KEYS[0]
    assert normalize_license_key(key + " " * 100) is None


@pytest.mark.parametrize("bad", ["U", "u", "*", "#", "_", ".", "+", "é", "Ø", "\x00", "\uff10"])
def test_symbols_outside_the_alphabet_are_rejected(bad: str) -> None:
    symbols = symbols_of(KEYS[0])
    for position in (0, 12, 29):
        typed = symbols[:position] + bad + symbols[position + 1 :]
        assert normalize_license_key(grouped(typed)) is None


@pytest.mark.parametrize(
    ("symbol", "foreign"),
    [
        ("S", "\u017f"),  # LATIN SMALL LETTER LONG S: upper() gives "S"
        ("1", "\u0131"),  # LATIN SMALL LETTER DOTLESS I: upper() gives "I", folded to "1"
    ],
)
def test_non_ascii_letters_that_upper_case_into_the_alphabet_are_rejected(
    symbol: str, foreign: str
) -> None:
    """Only ASCII case, dashes, spaces and O/I/L are tolerated, not any Unicode letter."""
    key = next(k for k in (generate_license_key() for _ in range(10_000)) if symbol in k)
    typed = key.replace(symbol, foreign, 1)
    assert normalize_license_key(typed) is None
