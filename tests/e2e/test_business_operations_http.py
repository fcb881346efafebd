"""The business operations of `test_business_operations` over HTTP/JSON: the same tests,
with the stub fixtures calling Keyturn's HTTP/JSON port (support/http_stub.py). The same
order gets the same answer, and the same mistake the same code and reason, over both
transports. A module of its own, so that pytest-xdist (--dist loadfile) runs the two
transports side by side.
"""

from __future__ import annotations

import pytest
from test_business_operations import *  # noqa: F403  (every test and fixture of the module)

from conftest import HTTP


@pytest.fixture
def transport() -> str:
    return HTTP
