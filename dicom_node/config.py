"""One typed, frozen ``Settings`` for the whole node.

Resolution order: command-line flag > ``DICOM_NODE_*`` environment variable > TOML file (``--config``
or ``DICOM_NODE_CONFIG``) > defaults. Every parser names the setting it failed on, so a typo in a
hospital's config file is one clear line rather than a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError

ENV_PREFIX = "DICOM_NODE_"
AE_TITLE_MAX = 16


def parse_ae_title(value: str, *, name: str = "ae_title") -> str:
    """An AE title: 1–16 printable ASCII characters, no backslash, not all spaces."""
    stripped = value.strip()
    if not stripped or len(value) > AE_TITLE_MAX:
        raise ConfigError(f"{name}: an AE title must have 1 to 16 characters, got {value!r}")
    if any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in stripped):
        raise ConfigError(f"{name}: an AE title may hold printable ASCII only, got {value!r}")
    return stripped


def parse_port(value: str | int, *, name: str = "port") -> int:
    """A TCP port number, 0 meaning 'any free port' (tests)."""
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{name}: port {port} is outside 0–65535")
    return port


def parse_seconds(value: str | float | int, *, name: str) -> float:
    """A non-negative duration in seconds."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ConfigError(f"{name}: must not be negative, got {seconds}")
    return seconds


def parse_bool(value: str | bool, *, name: str) -> bool:
    """true/false, yes/no, 1/0, on/off."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class AccessPolicy:
    """Who may associate. Empty lists mean 'anyone'; the called AE title must always match."""

    allowed_ae_titles: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def ae_allowed(self, calling_ae: str) -> bool:
        return not self.allowed_ae_titles or calling_ae.strip() in self.allowed_ae_titles

    def address_allowed(self, address: str) -> bool:
        if not self.allowed_networks:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.allowed_networks)


@dataclass(frozen=True)
class TlsConfig:
    """DICOM TLS for the listener: a server certificate, optionally required client certificates."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


@dataclass(frozen=True)
class DimseTimeouts:
    """Network timeouts in seconds, for both the listener and the sender."""

    acse: float = 30.0
    dimse: float = 60.0
    network: float = 60.0


DEFAULT_TIMEOUTS = DimseTimeouts()


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False
    profile: str = "standard"

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class JobSettings:
    """The ``[jobs]`` table of the settings file: leases, limits and retry policy (seconds)."""

    queued_lease: float = 600.0
    running_lease: float = 120.0
    reconcile_interval: float = 10.0
    task_time_limit: float = 3600.0
    max_attempts: int = 3
    delivery_backoff: float = 10.0
    delivery_backoff_max: float = 600.0
    delivery_horizon: float = 24 * 3600.0
    send_to_caller: bool = False
    polling_interval: float = 0.05
    worker_seen_within: float = 60.0
    plugins: tuple[str, ...] = field(default=())

    @classmethod
    def from_table(cls, table: Any) -> JobSettings:
        if not isinstance(table, Mapping):
            raise ConfigError("jobs: expected a table ([jobs])")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"jobs.{key}: unknown setting; known: {sorted(known)}")
            if key == "plugins":
                values[key] = tuple(str(v) for v in value)
            elif key == "send_to_caller":
                values[key] = bool(value)
            elif key == "max_attempts":
                values[key] = int(value)
                if values[key] < 1:
                    raise ConfigError("jobs.max_attempts: must be at least 1")
            else:
                values[key] = parse_seconds(value, name=f"jobs.{key}")
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    """Everything the node needs to run; built once by ``load_settings`` and passed in explicitly."""

    ae_title: str = "DICOMNODE"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = Path("./var")
    database_url: str = ""
    broker_url: str = ""
    models_dir: Path = Path("./models")
    quiet_period: float = 30.0
    series_quiet_period: float = 10.0
    max_study_age: float = 6 * 3600.0
    max_pdu: int = 1024**2
    max_instance_bytes: int = 4 * 1024**3
    max_associations: int = 16
    shutdown_grace: float = 30.0
    min_free_bytes: int = 64 * 1024**2
    timeouts: DimseTimeouts = DEFAULT_TIMEOUTS
    access: AccessPolicy = AccessPolicy()
    tls: TlsConfig | None = None
    destinations: tuple[Destination, ...] = ()
    routes: tuple[Mapping[str, Any], ...] = ()
    log_level: str = "INFO"
    retention_days: float = 0.0
    jobs: JobSettings = JobSettings()
    extra: Mapping[str, Any] = field(default_factory=dict)

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

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise ConfigError(f"destination {name!r} is not configured")


_SCALARS: dict[str, Any] = {
    "ae_title": parse_ae_title,
    "host": lambda v, name: str(v),
    "port": parse_port,
    "data_dir": lambda v, name: Path(v),
    "database_url": lambda v, name: str(v),
    "broker_url": lambda v, name: str(v),
    "models_dir": lambda v, name: Path(v),
    "quiet_period": lambda v, name: parse_seconds(v, name=name),
    "series_quiet_period": lambda v, name: parse_seconds(v, name=name),
    "max_study_age": lambda v, name: parse_seconds(v, name=name),
    "shutdown_grace": lambda v, name: parse_seconds(v, name=name),
    "max_pdu": lambda v, name: _parse_int(v, name=name),
    "max_instance_bytes": lambda v, name: _parse_int(v, name=name),
    "max_associations": lambda v, name: _parse_int(v, name=name),
    "min_free_bytes": lambda v, name: _parse_int(v, name=name),
    "log_level": lambda v, name: str(v).upper(),
    "retention_days": lambda v, name: parse_days(v, name=name),
}


def parse_days(value: str | float | int, *, name: str) -> float:
    """A finite, non-negative number of days (``retention_days``: 0 keeps received images forever)."""
    try:
        days = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number of days, got {value!r}") from None
    if not 0 <= days < float("inf"):
        raise ConfigError(f"{name}: must be a finite number of days, 0 or more, got {value!r}")
    return days


def _parse_int(value: str | int, *, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if number < 0:
        raise ConfigError(f"{name}: must not be negative, got {number}")
    return number


def _parse_scalar(key: str, value: Any, source: str) -> Any:
    """Parse one setting; errors name it as the user wrote it (TOML key, env var or flag)."""
    if source == ENV_PREFIX:
        name = ENV_PREFIX + key.upper()
    elif source == "--":
        name = "--" + key.replace("_", "-")
    else:
        name = key
    parser = _SCALARS[key]
    if key == "ae_title":
        return parser(str(value), name=name)
    return parser(value, name=name)


def _parse_access(table: Mapping[str, Any]) -> AccessPolicy:
    titles = tuple(
        parse_ae_title(str(t), name="access.allowed_ae_titles") for t in table.get("allowed_ae_titles", [])
    )
    networks = []
    for text in table.get("allowed_networks", []):
        try:
            networks.append(ipaddress.ip_network(str(text), strict=False))
        except ValueError:
            raise ConfigError(
                f"access.allowed_networks: {text!r} is not a network (e.g. 10.0.0.0/8)"
            ) from None
    unknown = set(table) - {"allowed_ae_titles", "allowed_networks"}
    if unknown:
        raise ConfigError(f"access: unknown keys {sorted(unknown)}")
    return AccessPolicy(allowed_ae_titles=titles, allowed_networks=tuple(networks))


def _parse_tls(table: Mapping[str, Any]) -> TlsConfig:
    try:
        certificate = Path(table["certificate"])
        private_key = Path(table["private_key"])
    except KeyError as missing:
        raise ConfigError(f"tls: {missing.args[0]} is required") from None
    ca = table.get("ca_certificates")
    return TlsConfig(
        certificate=certificate,
        private_key=private_key,
        ca_certificates=Path(ca) if ca else None,
        require_client_certificate=parse_bool(
            table.get("require_client_certificate", False), name="tls.require_client_certificate"
        ),
    )


def parse_destination(table: Mapping[str, Any]) -> Destination:
    """One ``[[destinations]]`` entry."""
    try:
        name = str(table["name"])
        ae_title = parse_ae_title(str(table["ae_title"]), name=f"destinations.{name}.ae_title")
        host = str(table["host"])
        port = parse_port(table["port"], name=f"destinations.{name}.port")
    except KeyError as missing:
        raise ConfigError(f"destinations: every entry needs {missing.args[0]}") from None
    return Destination(
        name=name,
        ae_title=ae_title,
        host=host,
        port=port,
        tls=parse_bool(table.get("tls", False), name=f"destinations.{name}.tls"),
        profile=str(table.get("profile", "standard")),
    )


def parse_address(text: str) -> Destination:
    """``AE@HOST:PORT`` → an ad-hoc destination."""
    try:
        ae_title, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
    except ValueError:
        raise ConfigError(f"{text!r} is not AE@HOST:PORT") from None
    return Destination(name=text, ae_title=parse_ae_title(ae_title), host=host, port=parse_port(port))


def _from_mapping(base: Settings, values: Mapping[str, Any], source: str) -> Settings:
    changes: dict[str, Any] = {}
    known = {f.name for f in fields(Settings)}
    for key, value in values.items():
        if key in _SCALARS:
            changes[key] = _parse_scalar(key, value, source)
        elif key == "access":
            changes["access"] = _parse_access(value)
        elif key == "tls":
            changes["tls"] = _parse_tls(value)
        elif key == "destinations":
            changes["destinations"] = tuple(parse_destination(d) for d in value)
        elif key == "jobs":
            changes["jobs"] = JobSettings.from_table(value)
        elif key == "routes":
            changes["routes"] = tuple(dict(r) for r in value)
        elif key == "timeouts":
            changes["timeouts"] = DimseTimeouts(
                **{k: parse_seconds(v, name=f"timeouts.{k}") for k, v in value.items()}
            )
        elif key in known:
            raise ConfigError(f"{source}{key} cannot be set here")
        else:
            changes.setdefault("extra", dict(base.extra))[key] = value
    return replace(base, **changes)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then the environment, then ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options can be passed straight through.
    """
    env = os.environ if environ is None else environ
    settings = Settings()
    path = config_file or (Path(env["DICOM_NODE_CONFIG"]) if env.get("DICOM_NODE_CONFIG") else None)
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path}: {error}") from None
        settings = _from_mapping(settings, document, "")
    from_env = {
        key: env[ENV_PREFIX + key.upper()]
        for key in _SCALARS
        if env.get(ENV_PREFIX + key.upper()) is not None
    }
    settings = _from_mapping(settings, from_env, ENV_PREFIX)
    given = {k: v for k, v in overrides.items() if v is not None}
    return _from_mapping(settings, given, "--") if given else settings
