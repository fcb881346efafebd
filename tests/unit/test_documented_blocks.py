"""Every shell and Python block of the documents is run by a test, or says why not.

`RUN_BY` names the test module that runs each block of the READMEs (it finds the
block by its section, so the module names that heading); a new block that no test
runs fails here until one does. The few blocks that cannot run on a CI machine
(`NOT_RUN`: a container engine, a database of the reader's own) are still checked
for what can be checked without running them: each `keyturn` command in them parses
with the real command line, and each `KEYTURN_*` variable any block names is a
setting.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from keyturn.server.catalog_file import read_catalog_file
from keyturn.server.cli import _parser
from keyturn.server.config import known_variables

from support.doc_blocks import (
    RUNNABLE,
    Block,
    block,
    blocks_of,
    commands_of,
    runnable_blocks,
)
from support.repository import ROOT, clone_files

Key = tuple[str, str, int]  # document, section heading, index in the section

RUN_BY: dict[Key, str] = {
    ("README.md", "Quick start", 0): "tests/e2e/test_quick_start.py",
    ("README.md", "Walk-through with grpcurl", 0): "tests/e2e/test_quick_start.py",
    ("README.md", "Walk-through with grpcurl", 1): "tests/e2e/test_quick_start.py",
    ("README.md", "Walk-through with grpcurl", 2): "tests/e2e/test_quick_start.py",
    ("README.md", "Walk-through with curl", 0): "tests/e2e/test_http_json_workers.py",
    ("README.md", "Benchmark", 0): "tests/unit/test_documented_blocks.py",
    ("README.md", "Signed orders from any system", 0): "tests/connectors/test_signed_orders.py",
    ("README.md", "Usage reports", 0): "tests/connectors/test_usage_report_command.py",
    ("README.md", "The audit trail", 0): "tests/e2e/test_audit_cli.py",
    ("README.md", "Outbound webhooks", 0): "tests/e2e/test_webhooks_cli.py",
    ("README.md", "Running with a certificate", 0): "tests/e2e/test_readme_tls.py",
    ("README.md", "Running with a certificate", 1): "tests/e2e/test_readme_tls.py",
    ("README.md", "Running with a certificate", 2): "tests/e2e/test_readme_tls.py",
    ("README.md", "Mutual TLS for the admin services", 0): "tests/e2e/test_readme_tls.py",
    ("README.md", "Mutual TLS for the admin services", 1): "tests/e2e/test_readme_tls.py",
    ("clients/python/README.md", "Install", 0): "tests/e2e/test_client_install.py",
    ("clients/python/README.md", "Activate in three lines", 0): (
        "tests/client/test_readme_snippets.py"
    ),
    ("clients/python/README.md", "Heartbeat and `on_lost`", 0): (
        "tests/client/test_readme_snippets.py"
    ),
    ("clients/python/README.md", "Offline verification", 0): (
        "tests/client/test_readme_snippets.py"
    ),
    ("clients/python/README.md", "TLS", 0): "tests/e2e/test_readme_tls.py",
    ("clients/python/README.md", "TLS", 1): "tests/e2e/test_readme_tls.py",
    ("clients/python/README.md", "TLS", 2): "tests/e2e/test_readme_tls.py",
    ("clients/python/README.md", "asyncio", 0): "tests/client/test_readme_snippets.py",
    ("clients/python/README.md", "Order connectors and catalog tools", 0): (
        "tests/client/test_readme_snippets.py"
    ),
}
NOT_RUN: dict[Key, str] = {
    ("docs/deployment.md", "1. One container, SQLite", 0): "needs a Docker engine",
    ("docs/deployment.md", "2. Admin commands inside the container", 0): ("needs a Docker engine"),
    ("docs/deployment.md", "3. PostgreSQL", 0): "settings for the reader's own database",
}
SHELL_OPERATORS = frozenset({"<", ">", ">>", "|", "&&", "||", ";"})
READMES = ("README.md", "clients/python/README.md")


def key_of(found: Block) -> Key:
    return (found.document, found.heading, found.index)


def documents() -> list[str]:
    return [name for name in clone_files("*.md", new_too=True) if "node_modules" not in name]


def test_every_shell_and_python_block_is_run_by_a_test_or_says_why_not() -> None:
    unclaimed = [
        found.where
        for document in documents()
        for found in runnable_blocks(document)
        if key_of(found) not in RUN_BY and key_of(found) not in NOT_RUN
    ]
    assert unclaimed == []
    readme_not_run = [key for key in NOT_RUN if key[0] in READMES]
    assert readme_not_run == []  # every README block runs


def test_the_tests_named_look_their_blocks_up() -> None:
    for (document, heading, index), module in RUN_BY.items():
        assert block(document, heading, index).language in ("bash", "python")
        assert heading in (ROOT / module).read_text(), f"{module} never names {heading!r}"
    for document, heading, index in NOT_RUN:
        block(document, heading, index)


def test_the_proxy_configurations_are_configuration_not_commands() -> None:
    """Envoy's and nginx's blocks are files for those proxies: marked as such, run by none."""
    proxy = "Behind a TLS-terminating proxy"
    assert [block("README.md", proxy, index).language for index in (0, 1)] == ["yaml", "nginx"]
    assert [b.where for b in runnable_blocks("README.md") if b.heading == proxy] == []
    assert {"yaml", "nginx", "text"}.isdisjoint(RUNNABLE)


def test_every_keyturn_variable_a_block_names_is_a_setting() -> None:
    named = {
        (found.where, variable)
        for document in documents()
        for found in blocks_of(document)
        for variable in re.findall(r"\bKEYTURN_[A-Z0-9_]+\b", found.text)
    }
    assert named, "no block names a setting: the pattern is wrong"
    assert [(where, v) for where, v in sorted(named) if v not in known_variables()] == []


def keyturn_commands(found: Block) -> list[list[str]]:
    """The arguments of each `keyturn` command inside `docker exec` / `docker run`."""
    commands = []
    for line in commands_of(found.text):
        words = shlex.split(line.replace("$(", " ").rstrip(")"))
        cut = [at for at, word in enumerate(words) if word in SHELL_OPERATORS]
        words = words[: cut[0]] if cut else words  # a redirection is the shell's
        if "docker" not in words or "keyturn" not in words:
            continue
        after_image = len(words) - 1 - words[::-1].index("keyturn")
        if words[after_image - 1] == "keyturn" or words[words.index("docker") + 1] == "run":
            commands.append(words[after_image + 1 :])
    return commands


@pytest.mark.parametrize(
    "key", [key for key, why in NOT_RUN.items() if "Docker" in why], ids=lambda key: key[1]
)
def test_the_keyturn_commands_of_the_container_blocks_parse(key: Key) -> None:
    parser = _parser()
    found = block(*key)
    commands = keyturn_commands(found)
    if key[1].startswith("2."):
        assert len(commands) == 4, commands
    for arguments in commands:
        if not arguments:  # `docker run ... keyturn`: the image's own command
            continue
        parsed = parser.parse_args(arguments)
        assert parsed.command == arguments[0], arguments


def test_the_catalog_example_of_the_readme_is_a_catalog_file(tmp_path: Path) -> None:
    example = block("README.md", "The catalog file")
    assert example.language == "yaml"
    written = tmp_path / "catalog.yaml"
    written.write_text(example.text)
    catalog = read_catalog_file(written)
    assert [p.product_id for p in catalog.products] == ["acme-cad"]
    assert [s.sku_id for s in catalog.skus] == ["CAD-STD-1Y"]


def test_the_benchmark_synopsis_names_only_options_the_benchmark_has() -> None:
    synopsis = block("README.md", "Benchmark").text
    documented = set(re.findall(r"--[a-z][a-z-]*", synopsis))
    assert documented >= {"--scale", "--duration", "--admin-url"}
    offered = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "licensing.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert sorted(option for option in documented if option not in offered) == []
