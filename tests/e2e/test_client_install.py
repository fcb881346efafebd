"""The client installs without the server and without any package index of its own:
as a wheel built from `clients/python`, and from a git URL with
`#subdirectory=clients/python`, as clients/python/README.md says.

Each install goes into a fresh venv outside the repository, and the import runs
from a folder outside it too, so only what was installed can answer. The
client's dependencies (grpcio, protobuf, pyjwt...) come from the package index as
for any user (cached by pip after the first run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_a_wheel_of_clients_python_installs_and_imports_without_the_server(
    workspace: Path, client_venv: Path
) -> None:
    source = copy_clone(workspace / "clone", under="clients/python")
    built = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", workspace / "dist", "."],
        source,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (workspace / "dist").glob("keyturn_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        licenses = [name for name in names if name.endswith("/licenses/LICENSE")]
        assert [archive.read(name) for name in licenses] == [(ROOT / "LICENSE").read_bytes()]
    assert {"keyturn/client/py.typed", "keyturn/licensing/v1/licensing_pb2.pyi"} <= set(names)

    assert_installs(client_venv, str(wheel), workspace)


def test_the_client_installs_from_a_git_url_with_its_subdirectory(
    workspace: Path, client_venv: Path
) -> None:
    """`pip install "git+URL#subdirectory=clients/python"`, the URL a local clone's
    (`file://`), holding this checkout's client files as one commit."""
    repo = workspace / "repo"
    copy_clone(repo, under="clients/python")
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        result = run([*git, *step], repo)
        assert result.returncode == 0, result.stderr

    assert_installs(client_venv, f"git+{repo.as_uri()}#subdirectory=clients/python", workspace)
