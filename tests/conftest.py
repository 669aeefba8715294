"""Fixtures shared by the whole suite: paths, databases (SQLite and PostgreSQL), a running node."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom.config
import pytest

from dicom_node.config import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DICOM_NODE_SHARED", REPO.parent / "shared")).resolve()
SHARED_DATA = SHARED / "data"
POSTGRES_ADMIN_URL = os.environ.get(
    "DICOM_NODE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"../shared/data is missing (looked in {SHARED_DATA}); set DICOM_NODE_SHARED")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _strict_pydicom() -> Iterator[None]:
    # Writers must produce valid values; readers stay lenient because received data is whatever
    # modalities send (the edge validates what it needs itself).
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


@pytest.fixture(autouse=True)
def _nodelay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # DCMTK tools leave Nagle's algorithm on (≈ 20 images/s) unless this is set.
    monkeypatch.setenv("TCP_NODELAY", "1")


def _postgres_database() -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"dn_test_{secrets.token_hex(4)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable: {error}")
    url = make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that takes this runs over SQLite and over PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a node on a free loopback port with its data in tmp_path."""

    def make(**changes: Any) -> Settings:
        base = Settings(
            host="127.0.0.1",
            port=0,
            data_dir=tmp_path / "var",
            quiet_period=1.0,
            series_quiet_period=0.5,
            min_free_bytes=0,
        )
        return base.model_copy(update=changes)

    return make


@pytest.fixture
def run_node() -> Iterator[Callable[[Settings], Any]]:
    """Start ``Node``s in this process; all are stopped at the end of the test."""
    from dicom_node.node import Node

    started: list[Node] = []

    def start(settings: Settings) -> Node:
        node = Node(settings)
        node.start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop(grace=5)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup --test")
    return path
