"""Migration 0002 and those above it: up, down to 0001 and up again on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from dicom_node.index.database import MIGRATIONS, Database

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


def _head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def _round_trip(url: str) -> None:
    database = Database(url)
    try:
        database.upgrade()
        assert database.current_revision() == _head()
        tables = set(inspect(database.engine).get_table_names())
        assert {"job", "result", "delivery", "worker"} <= tables
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with database.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0001")
        assert database.current_revision() == "0001"
        assert "job" not in set(inspect(database.engine).get_table_names())
        database.upgrade()
        assert database.current_revision() == _head()
    finally:
        database.dispose()


def test_sqlite(tmp_path):
    _round_trip(f"sqlite:///{tmp_path / 'index.sqlite3'}")


@pytest.mark.postgres
def test_postgresql():
    name = f"jobs_migration_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        _round_trip(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
