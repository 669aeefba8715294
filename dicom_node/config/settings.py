"""One typed, frozen ``Settings`` for the whole node (a pydantic-settings model that forbids extras).

``Settings(...)`` checks the values it is given and reads nothing else; ``load_settings`` (sources.py)
gathers them from the TOML file, the environment and flags. Copy with changes by
``settings.model_copy(update={...})``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dicom_node.config.routes import PIPELINES, RouteSpec
from dicom_node.config.tables import (
    DEFAULT_TIMEOUTS,
    AccessPolicy,
    AnalysisSettings,
    Destination,
    DicomWebSettings,
    DimseTimeouts,
    JobSettings,
    QueryRetrieveSettings,
    TlsConfig,
)
from dicom_node.config.values import (
    AeTitle,
    Count,
    Days,
    Host,
    LogFormat,
    LogLevel,
    PathValue,
    Port,
    PositiveCount,
    Seconds,
    invalid,
)
from dicom_node.errors import ConfigError

ENV_PREFIX = "DICOM_NODE_"
ENV_NESTED_DELIMITER = "__"
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Settings(BaseSettings):
    """Everything the node needs to run; built once by ``load_settings`` and passed in explicitly."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        case_sensitive=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
    )

    ae_title: AeTitle = "DICOMNODE"
    host: Host = "0.0.0.0"
    port: Port = 11112
    data_dir: PathValue = Path("./var")
    database_url: str = ""
    broker_url: str = ""
    models_dir: PathValue = Path("./models")
    quiet_period: Seconds = 30.0
    series_quiet_period: Seconds = 10.0
    max_study_age: Seconds = 6 * 3600.0
    association_settle: Seconds = 0.5
    """After the sender released its association: how long no new instance may arrive before a route with
    ``complete_on = "association"`` takes the study as complete (docs/completion.md)."""
    max_pdu: Count = 1024**2
    max_instance_bytes: Count = 4 * 1024**3
    max_associations: PositiveCount = 16
    """Per receiver process: with ``receivers`` = N the node accepts up to N × this many at once."""
    receivers: PositiveCount = 1
    """Processes that accept associations on the DICOM port (``SO_REUSEPORT``: the kernel spreads new
    connections over them); more than one uses more CPU cores for concurrent senders (docs/ingest.md)."""
    shutdown_grace: Seconds = 30.0
    min_free_bytes: Count = 64 * 1024**2
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS
    access: AccessPolicy = AccessPolicy()
    tls: TlsConfig | None = None
    destinations: tuple[Destination, ...] = ()
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"
    retention_days: Days = 0.0
    jobs: JobSettings = JobSettings()
    analysis: AnalysisSettings = AnalysisSettings()
    dicomweb: DicomWebSettings = DicomWebSettings()
    query_retrieve: QueryRetrieveSettings = QueryRetrieveSettings()
    routes: tuple[RouteSpec, ...] = ()
    """Empty: the shipped ``workflow.routing.DEFAULT_ROUTES`` apply."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Constructing Settings reads nothing: load_settings layers file, environment and flags itself,
        # so that it knows where each value came from.
        return (init_settings,)

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise invalid(f"expected a database URL, got {value!r}")
        if value:
            try:
                make_url(value)
            except ArgumentError:
                raise invalid(
                    "expected a SQLAlchemy URL such as postgresql+psycopg://user@host/db or "
                    "sqlite:///path, got a value that does not parse"
                ) from None
        return value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _broker_url(cls, value: Any) -> Any:
        if not isinstance(value, str) or (value and not _URL_SCHEME.match(value)):
            raise invalid("expected a broker URL such as redis://host:6379/0, got a value without scheme://")
        return value

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, destinations: tuple[Destination, ...]) -> tuple[Destination, ...]:
        names = [d.name for d in destinations]
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise invalid(f"destination names must differ; given more than once: {', '.join(twice)}")
        return destinations

    @field_validator("routes", mode="wrap")
    @classmethod
    def _known_pipelines(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> tuple[RouteSpec, ...]:
        # A name outside PIPELINES is a plugin's only when [jobs] plugins are configured. Checked on the
        # raw rules beside their own checks, so every error is reported at once.
        jobs = info.data.get("jobs")
        unknown: list[InitErrorDetails] = []
        if isinstance(jobs, JobSettings) and not jobs.plugins and isinstance(value, list | tuple):
            for index, rule in enumerate(value):
                name = rule.get("pipeline") if isinstance(rule, Mapping) else getattr(rule, "pipeline", None)
                if isinstance(name, str) and name.strip() and name.strip() not in PIPELINES:
                    unknown.append(_unknown_pipeline(index, name))
        try:
            routes: tuple[RouteSpec, ...] = handler(value)
        except ValidationError as error:
            raise _merged(error, unknown) from None
        if unknown:
            raise ValidationError.from_exception_data("routes", unknown)
        return routes

    @property
    def allow_untrained(self) -> bool:
        """``[analysis] allow_untrained``."""
        return self.analysis.allow_untrained

    @property
    def storage_root(self) -> Path:
        return self.data_dir / "store"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def move_destination(self, ae_title: str) -> Destination | None:
        """The C-MOVE destination with ``ae_title``: a ``[query_retrieve]`` peer, else a destination."""
        wanted = ae_title.strip()
        for destination in (*self.query_retrieve.peers, *self.destinations):
            if destination.ae_title == wanted:
                return destination
        return None

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise ConfigError(f"destination {name!r} is not configured")


def _unknown_pipeline(index: int, name: str) -> InitErrorDetails:
    close = difflib.get_close_matches(name.strip(), PIPELINES, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(PIPELINES)}"
    message = f"unknown pipeline {name!r}; {hint} (or name its module in [jobs] plugins)"
    return InitErrorDetails(type=invalid(message), loc=(index, "pipeline"), input=name)


def _merged(error: ValidationError, more: list[InitErrorDetails]) -> ValidationError:
    """``error``'s problems followed by ``more``, as one error (messages kept as they were)."""
    details = [
        InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]), loc=e["loc"], input=e["input"])
        for e in error.errors()
    ]
    return ValidationError.from_exception_data(error.title, details + more)
