"""README's Configuration table and the Settings class say the same: every setting has a
row, every row names settings only, and each documented default is the field's.

The table is what operators read; Settings is what runs. A setting added without a row,
a row left behind by a removed one, or a default changed on one side only fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from keyturn.server.config import ENV_PREFIX, Settings

README = Path(__file__).resolve().parents[2] / "README.md"
VARIABLE = re.compile(r"`(KEYTURN_[A-Z0-9_]+)`")
VARIABLES_CELL = re.compile(r"`KEYTURN_[A-Z0-9_]+`(, `KEYTURN_[A-Z0-9_]+`)*")

# Rows whose default is not a plain value, because the field's default is decided at
# run time or stands for something only prose can name; each with the reason.
NOT_PLAIN = {
    "KEYTURN_WORKERS": "a default_factory: the CPUs this process may run on",
    "KEYTURN_SECRET_KEY": "None: for SQLite one is generated into DATABASE.secrets",
    "KEYTURN_SECRETS_FILE": "None: the path follows from KEYTURN_DATABASE_URL",
    "KEYTURN_MAIL_TEMPLATES": "None: the templates shipped in the package",
}

Row = tuple[list[str], str]


def configuration_rows() -> list[Row]:
    """(variables, default cell) of each row of README's Configuration table."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| variable | default | meaning |", lines[0]
    rows = []
    for line in lines[2:]:  # past the header and its rule
        variables, default, _meaning = line.strip("|").split(" | ", 2)
        assert VARIABLES_CELL.fullmatch(variables.strip()), line
        rows.append((VARIABLE.findall(variables), default.strip()))
    return rows


ROWS = configuration_rows()


def field_of(variable: str) -> FieldInfo:
    return Settings.model_fields[variable.removeprefix(ENV_PREFIX).lower()]


def as_documented(default: object) -> str:
    """A field's default as the table writes it: `true`, `5` for 5.0, `0.5`."""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def plain_defaults_agree(variables: list[str], cell: str) -> bool:
    """Whether `cell` gives each variable its field's default: `VALUE` for all of them,
    `VALUE1`, `VALUE2` one each (text after the values, like "(4 MiB)", is a gloss), or
    "empty" for a default of "" or None."""
    defaults = [field_of(variable).default for variable in variables]
    if PydanticUndefined in defaults:
        return False
    if cell.startswith("empty"):
        return all(default in ("", None) for default in defaults)
    values = re.findall(r"`([^`]*)`", cell)
    if len(values) == 1:
        values *= len(variables)
    return values == [as_documented(default) for default in defaults]


def test_every_setting_has_exactly_one_row() -> None:
    documented = [variable for variables, _ in ROWS for variable in variables]
    settings = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    assert sorted(set(settings) - set(documented)) == [], "settings without a README row"
    assert sorted(set(documented) - set(settings)) == [], "README rows that are no setting"
    assert len(documented) == len(set(documented)), "a variable in two rows"


@pytest.mark.parametrize(("variables", "cell"), ROWS, ids=[v[0] for v, _ in ROWS])
def test_the_documented_default_is_the_fields(variables: list[str], cell: str) -> None:
    if any(variable in NOT_PLAIN for variable in variables):
        [variable] = variables  # exceptions are rows of one variable
        # Still an exception: were the cell plain and right, it would belong above.
        assert not plain_defaults_agree(variables, cell), f"{variable} needs no exception"
        return
    shown = {variable: as_documented(field_of(variable).default) for variable in variables}
    assert plain_defaults_agree(variables, cell), f"README says {cell}, Settings {shown}"


def test_the_exceptions_are_settings_the_table_documents() -> None:
    documented = {variable for variables, _ in ROWS for variable in variables}
    assert set(NOT_PLAIN) <= documented
