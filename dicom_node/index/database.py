"""Engine, sessions and schema upgrades for the index (SQLite by default, PostgreSQL in production).

Schema upgrades happen once, under a lock, whoever starts first: ``serve``, ``worker`` and ``db upgrade``
call ``Database.upgrade``, which takes the schema lock exclusively (``pg_advisory_xact_lock`` on
PostgreSQL, ``fcntl.flock`` on a file beside the SQLite file) and runs Alembic only if the schema is not
at the code's head yet. Processes started at the same instant on a new index wait for the first one's
upgrade and then find nothing to do. Read-only commands call ``Database.require_schema`` instead: it
waits (shared lock) while an upgrade runs, never writes the schema, and raises ``SchemaError`` saying
what to run when the schema is missing or older than the code.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.errors import DicomNodeError

LOG = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# The key of the PostgreSQL advisory lock that serialises schema upgrades (any constant shared by all
# versions of the node; "dcmn" in ASCII).
SCHEMA_LOCK_KEY = 0x64636D6E
SCHEMA_LOCK_SUFFIX = ".schema-lock"
UPGRADE_WAIT = 600.0
READ_WAIT = 60.0


class SchemaError(DicomNodeError):
    """The index has no schema, or one older or newer than this code, and this command may not upgrade it."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the CLI read while the edge writes; busy_timeout queues concurrent writers.
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return set_pragmas


def create_index_engine(url: str, *, synchronous: str = "FULL") -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and commits that are durable on return.

    ``synchronous="NORMAL"`` (SQLite only) gives commits that survive the process being killed but not
    a power loss: in WAL mode the log is then fsynced at checkpoints, not at every commit. Only the
    ingest of files that are durable already uses it (``Database.ingest_engine``).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas(synchronous))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


class Database:
    """The index database: an engine plus a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_index_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Celery's prefork pool forks worker children from a process whose reconciler holds pooled
        # connections. A child must never use (or close) a connection it inherited: for SQLite that
        # would drop or confuse the parent's file locks. SQLAlchemy's documented remedy is to forget
        # inherited connections in the child without closing them.
        engine_ref = weakref.ref(self.engine)

        def _forget_inherited_connections() -> None:
            engine = engine_ref()
            if engine is not None:
                engine.dispose(close=False)

        os.register_at_fork(after_in_child=_forget_inherited_connections)
        self._ingest_engine: Engine | None = None

    @property
    def ingest_engine(self) -> Engine:
        """The engine for the index rows of received instances whose file is already durable.

        On SQLite its commits are ``synchronous=NORMAL``: in WAL mode they survive a crash of the
        process (kill -9) but the last ones may be lost on a power failure. That loses no acknowledged
        instance: its file was fsynced and renamed into place, and the folder fsynced, before the
        commit, and start-up recovery indexes every file without a row (docs/ingest.md, "Ack means
        durable"). Everything else (jobs, leases, the audit trail) keeps ``synchronous=FULL`` through
        ``engine``. PostgreSQL: the same engine as ``engine``.
        """
        if self._ingest_engine is None:
            if not self.is_sqlite:
                self._ingest_engine = self.engine
            else:
                self._ingest_engine = create_index_engine(self.url, synchronous="NORMAL")
                engine_ref = weakref.ref(self._ingest_engine)

                def _forget() -> None:
                    engine = engine_ref()
                    if engine is not None:
                        engine.dispose(close=False)

                os.register_at_fork(after_in_child=_forget)
        return self._ingest_engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any exception."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file, or ``None`` for PostgreSQL and in-memory SQLite."""
        database = self.engine.url.database
        if not self.is_sqlite or not database or database == ":memory:":
            return None
        return Path(database)

    def upgrade(self, revision: str = "head", *, wait: float = UPGRADE_WAIT) -> None:
        """Bring the schema to ``revision`` with Alembic, once: under the exclusive schema lock."""
        with self._schema_lock(exclusive=True, wait=wait) as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    def require_schema(self, *, wait: float = READ_WAIT) -> str:
        """The schema revision, which is the code's head; waits while another process upgrades it.

        Never writes the schema. Raises ``SchemaError`` with what to run when the index has no schema,
        an older one (nobody upgraded it) or a newer one (this code is older than the index).
        """
        path = self.sqlite_path
        if path is not None and not path.exists():
            raise SchemaError(f"the index {path} has no schema yet: {_HOW_TO_UPGRADE}")
        with self._schema_lock(exclusive=False, wait=wait) as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        head = head_revision()
        if current == head:
            return head
        where = self.engine.url.render_as_string(hide_password=True)
        if current is None:
            raise SchemaError(f"the index {where} has no schema yet: {_HOW_TO_UPGRADE}")
        known = {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
        if current not in known:
            raise SchemaError(
                f"the index {where} is at schema revision {current}, newer than this version of dicom-node "
                f"knows (newest {head}): run a dicom-node at least as new as the one that upgraded it"
            )
        raise SchemaError(
            f"the index {where} is at schema revision {current}, older than this version of dicom-node "
            f"needs ({head}): {_HOW_TO_UPGRADE}"
        )

    def current_revision(self) -> str | None:
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @contextmanager
    def _schema_lock(self, *, exclusive: bool, wait: float) -> Iterator[Connection]:
        """A connection in a transaction, holding the schema lock (exclusive for upgrades)."""
        if self.is_sqlite:
            with _file_lock(self.sqlite_path, exclusive=exclusive, wait=wait), self.engine.begin() as conn:
                yield conn
            return
        function = "pg_try_advisory_xact_lock" if exclusive else "pg_try_advisory_xact_lock_shared"
        statement = text(f"SELECT {function}(:key)")
        with self.engine.begin() as conn:
            _wait_for(
                lambda: bool(conn.execute(statement, {"key": SCHEMA_LOCK_KEY}).scalar()),
                wait,
                "the index schema lock (another process is upgrading the schema)",
            )
            yield conn  # the transaction's end releases the advisory lock

    def dispose(self) -> None:
        if self._ingest_engine is not None and self._ingest_engine is not self.engine:
            self._ingest_engine.dispose()
        self.engine.dispose()


_HOW_TO_UPGRADE = "run `dicom-node db upgrade` (or start `dicom-node serve`, which upgrades it) and try again"


def _wait_for(acquire: Callable[[], bool], wait: float, what: str) -> None:
    """Call ``acquire`` until it returns ``True``; log once if that takes a while, fail after ``wait``."""
    deadline = time.monotonic() + wait
    logged = False
    while not acquire():
        if time.monotonic() > deadline:
            raise SchemaError(f"gave up after {wait:.0f} s waiting for {what}")
        if not logged:
            LOG.info("waiting for %s", what)
            logged = True
        time.sleep(0.1)


@contextmanager
def _file_lock(database: Path | None, *, exclusive: bool, wait: float) -> Iterator[None]:
    """``flock`` on ``<database>.schema-lock``; readers that cannot open it (a read-only folder) go on."""
    if database is None:
        yield
        return
    lock_path = database.with_name(database.name + SCHEMA_LOCK_SUFFIX)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB

        def acquire() -> bool:
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                return False
            return True

        _wait_for(acquire, wait, "the index schema lock (another process is upgrading the schema)")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
