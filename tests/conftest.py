"""Fixtures of the whole suite: paths, databases (SQLite and PostgreSQL), a running node."""

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
# The real DICOM and NIfTI files the tests read, kept in the repository (provenance: tests/data/README.md).
DATA = REPO / "tests" / "data"
CT_DIR = DATA / "ct" / "totalseg_dicom"  # 20 CT slices, JPEG 2000 lossless
CXR = DATA / "cxr" / "txrv_siim_cxr_sc_jpeg.dcm"  # a PA chest radiograph, JPEG baseline
# Published MONAI bundle configs are not ours to copy: tests that compare with them read the folder
# named by this variable and are skipped without it (.ci/run sets it when ../shared/reference exists).
REFERENCE_ENV = "DICOM_NODE_REFERENCE"
POSTGRES_ADMIN_URL = os.environ.get(
    "DICOM_NODE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The folder of real test files, ``tests/data``."""
    if not (DATA / "SHA256SUMS").is_file():
        pytest.fail(f"the real test data is missing: {DATA} holds no SHA256SUMS")
    return DATA


@pytest.fixture(scope="session")
def bundle_reference() -> Path:
    """The published MONAI bundles' configs: ``$DICOM_NODE_REFERENCE/monai-bundles/<bundle>/configs``."""
    folder = os.environ.get(REFERENCE_ENV)
    if not folder:
        pytest.skip(f"{REFERENCE_ENV} is not set: it names the folder of the published bundle configs")
    bundles = (REPO / Path(folder).expanduser()).resolve() / "monai-bundles"  # relative: to the repo root
    if not bundles.is_dir():
        pytest.fail(f"{REFERENCE_ENV}={folder} has no monai-bundles/ folder")
    return bundles


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
    """Start ``Node``s in this process (options as ``Node`` takes them); all are stopped at the end."""
    from dicom_node.node import Node

    started: list[Node] = []

    def start(settings: Settings, **options: Any) -> Node:
        node = Node(settings, **options)
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
