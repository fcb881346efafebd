"""The client installs without the server and without any package index of its own,
by each command clients/python/README.md gives (from a path, with the connectors'
extra, from a git URL with `#subdirectory=clients/python`, pinned to a commit, and
as a wheel), run as typed.

Each install goes into a fresh venv outside the repository, and the import runs
from a folder outside it too, so only what was installed can answer. The
client's dependencies (grpcio, protobuf, pyjwt...) come from the package index as
for any user (cached by pip after the first run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.doc_blocks import block, commands_of
from support.repository import ROOT, copy_clone

TIMEOUT_S = 600.0
# What a user of the client imports: the client, the stubs, the error enum.
PROBE = """
import sys, keyturn.client, keyturn.licensing.v1.licensing_pb2_grpc, keyturn.errors.v1.error_reason_pb2
from importlib.metadata import version
from keyturn.client import LicensingClient, KeyturnError
try:
    import keyturn.server
except ImportError:
    server = "absent"
else:
    server = "present"
print(keyturn.client.__file__, version("keyturn-client"), server, sep="\\n")
"""


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One venv for both installs: the second finds the dependencies there and
    replaces only the client (the dependencies are not what is tested)."""
    folder = tmp_path_factory.mktemp("client-venv")
    venv.EnvBuilder(with_pip=True).create(folder)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def run(args: list[str | Path], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def without_the_client(client_venv: Path) -> Path:
    """The venv's python, once no keyturn-client is installed in it."""
    python = client_venv / "bin" / "python"
    removed = run([python, "-m", "pip", "uninstall", "-y", "-q", "keyturn-client"], client_venv)
    assert removed.returncode == 0, removed.stderr
    assert probe_fails(python, client_venv)
    return python


def probe_fails(python: Path, cwd: Path) -> bool:
    return run([python, "-I", "-c", "import keyturn.client"], cwd).returncode != 0


def probe(python: Path, workspace: Path) -> list[str]:
    result = run([python, "-I", "-c", PROBE], workspace)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def assert_installs(client_venv: Path, requirement: str, workspace: Path) -> None:
    """`pip install requirement` puts this version of the client, without the
    server, into the venv, where it imports from the venv itself."""
    python = without_the_client(client_venv)
    installed = run([python, "-m", "pip", "install", "-q", requirement], workspace)
    assert installed.returncode == 0, installed.stderr
    location, version, server = probe(python, workspace)
    assert Path(location).is_relative_to(client_venv)
    assert version == version_in_pyproject()
    assert server == "absent"


def version_in_pyproject() -> str:
    text = (ROOT / "clients" / "python" / "pyproject.toml").read_text()
    return next(line.split('"')[1] for line in text.splitlines() if line.startswith("version ="))


README = "clients/python/README.md"
INSTALLS = commands_of(block(README, "Install").text)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A git repository holding this checkout's client files as one commit (what a
    user clones), and that commit's id."""
    repo = tmp_path_factory.mktemp("clone")
    copy_clone(repo, under="clients/python")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        result = run([*git, *step], repo)
        assert result.returncode == 0, result.stderr
    commit = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    yield repo, commit
    shutil.rmtree(repo, ignore_errors=True)


def in_venv(command: str, client_venv: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` in bash as typed in a shell where the venv is active."""
    env = {**os.environ, "PATH": f"{client_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def test_the_readme_gives_every_way_to_install() -> None:
    assert [command.split()[:2] for command in INSTALLS] == [["pip", "install"]] * 4
    assert any("[connectors]" in command for command in INSTALLS)
    assert any("<tag-or-commit>" in command for command in INSTALLS)


@pytest.mark.parametrize("command", INSTALLS)
def test_each_install_command_of_the_client_readme_installs_the_client(
    command: str, clone: tuple[Path, str], client_venv: Path, workspace: Path
) -> None:
    """Run from the clone's root with the venv active, `<repo-url>` that clone's
    `file://` URL and `<tag-or-commit>` its commit."""
    repo, commit = clone
    python = without_the_client(client_venv)
    typed = command.replace("<repo-url>", repo.as_uri()).replace("<tag-or-commit>", commit)
    installed = in_venv(typed, client_venv, repo)
    assert installed.returncode == 0, installed.stderr
    location, version, server = probe(python, workspace)
    assert Path(location).is_relative_to(client_venv)
    assert version == version_in_pyproject()
    assert server == "absent"
    if "[connectors]" in command:
        assert run([python, "-I", "-c", "import stripe"], workspace).returncode == 0


def test_the_documented_wheel_builds_and_installs_without_the_server(
    clone: tuple[Path, str], client_venv: Path, workspace: Path
) -> None:
    [command] = re.findall(r"`(pip wheel [^`]*)`", (ROOT / README).read_text())
    repo, _ = clone
    built = in_venv(command, client_venv, repo)
    assert built.returncode == 0, built.stderr
    [wheel] = (repo / "dist").glob("keyturn_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licenses = [name for name in names if name.endswith("/licenses/LICENSE")]
        assert [archive.read(name) for name in licenses] == [(ROOT / "LICENSE").read_bytes()]
    assert {"keyturn/client/py.typed", "keyturn/licensing/v1/licensing_pb2.pyi"} <= set(names)

    assert_installs(client_venv, str(wheel), workspace)
