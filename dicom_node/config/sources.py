"""Where settings come from: flag > ``DICOM_NODE_*`` environment > TOML file > default.

The file is read by pydantic-settings' ``TomlConfigSettingsSource`` (``--config`` or ``DICOM_NODE_CONFIG``),
the environment by its ``EnvSettingsSource`` (prefix ``DICOM_NODE_``, ``__`` into tables:
``DICOM_NODE_JOBS__MAX_ATTEMPTS``), flags are passed in. The layers are merged here, not inside
pydantic-settings, so that each value's origin is known: ``config check`` prints it and every error
names the setting as the user wrote it (``DICOM_NODE_PORT``, ``--port``, ``routes[0] (ct-lung-nodules)
.quiet_period``). All problems are reported at once, each unknown name with the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError, TomlConfigSettingsSource

from dicom_node.config.routes import MatchBlock
from dicom_node.config.settings import ENV_NESTED_DELIMITER, ENV_PREFIX, Settings
from dicom_node.config.values import INVALID
from dicom_node.errors import ConfigError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Origin:
    """Where one value came from: ``kind`` and the flag, variable or file that gave it."""

    kind: Literal["flag", "env", "file", "default"]
    name: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "default" else f"{self.kind} {self.name}"


DEFAULT = Origin("default")


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the setting as the user wrote it, and what is wrong with it."""

    setting: str
    message: str
    origin: Origin = DEFAULT

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


class InvalidSettingsError(ConfigError):
    """Every problem found in the settings at once; ``str()`` lists them, one per line."""

    def __init__(self, problems: Iterable[Problem], config_file: Path | None = None) -> None:
        self.problems = tuple(problems)
        self.config_file = config_file
        super().__init__(self._text())

    def _text(self) -> str:
        in_file = any(p.origin.kind == "file" for p in self.problems) and self.config_file is not None
        where = f" in {self.config_file}" if in_file else ""
        if len(self.problems) == 1:
            return f"{self.problems[0]}" + (f" ({where.strip()})" if where else "")
        return f"{len(self.problems)} problems{where}:\n" + "\n".join(f"  - {p}" for p in self.problems)


@dataclass(frozen=True)
class ResolvedSettings:
    """The settings, the file they were read from, and each value's origin by path (``("jobs", "x")``)."""

    settings: Settings
    config_file: Path | None
    origins: Mapping[Loc, Origin]

    def origin(self, *path: str) -> Origin:
        """The origin of the value at ``path``, or of the table or list holding it."""
        for end in range(len(path), 0, -1):
            if (found := self.origins.get(path[:end])) is not None:
                return found
        return DEFAULT


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(
            Settings,
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter=ENV_NESTED_DELIMITER,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._environ.items()}


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise ConfigError(f"config file {path} {what}")
    try:
        return dict(TomlConfigSettingsSource(Settings, toml_file=path)())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot be read: {error.strerror}") from None


def _read_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        return dict(_Environment(environ)())
    except SettingsError as error:
        field = str(error).split('"')[1] if '"' in str(error) else "?"
        raise ConfigError(
            f"{ENV_PREFIX}{field.upper()}: not valid JSON for a table or list ({error.__cause__})"
        ) from None


def _variable(leaf: Loc, environ: Mapping[str, str]) -> str:
    """The variable that gave ``leaf``: its own (``…_JOBS__MAX_ATTEMPTS``) or a table's JSON (``…_JOBS``)."""
    names = {key.upper() for key in environ}
    candidates = [
        ENV_PREFIX + ENV_NESTED_DELIMITER.join(map(str, leaf[:end])).upper()
        for end in range(len(leaf), 0, -1)
    ]
    return next((name for name in candidates if name in names), candidates[0])


def _leaves(values: Mapping[str, Any], prefix: Loc = ()) -> Iterable[Loc]:
    """The paths of the values given: into tables, not into lists (a list replaces a list)."""
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ResolvedSettings:
    """The settings with each value's origin; ``InvalidSettingsError`` listing every problem."""
    env = os.environ if environ is None else environ
    path = config_file or (Path(env["DICOM_NODE_CONFIG"]) if env.get("DICOM_NODE_CONFIG") else None)
    flags = {key: value for key, value in overrides.items() if value is not None}
    from_file = _read_file(path) if path else {}
    from_env = _read_environment(env)
    origins: dict[Loc, Origin] = {}
    for leaf in _leaves(from_file):
        origins[leaf] = Origin("file", str(path))
    for leaf in _leaves(from_env):
        origins[leaf] = Origin("env", _variable(leaf, env))
    for leaf in _leaves(flags):
        origins[leaf] = Origin("flag", "--" + str(leaf[0]).replace("_", "-"))
    data = _merge(_merge(from_file, from_env), flags)
    # Keyword arguments with a leading underscore configure pydantic-settings itself: never settings.
    hidden = {key: data.pop(key) for key in [k for k in data if k.startswith("_")]}
    problems = [describe("extra_forbidden", (k,), "", v, data, origins) for k, v in hidden.items()]
    try:
        settings = Settings(**data)
    except ValidationError as error:
        problems = [
            describe(e["type"], e["loc"], e["msg"], e["input"], data, origins) for e in error.errors()
        ] + problems
    if problems:
        raise InvalidSettingsError(problems, path)
    return ResolvedSettings(settings, path, origins)


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then the environment, then ``overrides``.

    ``overrides`` whose value is ``None`` are ignored, so CLI options can be passed straight through.
    """
    return resolve_settings(config_file, environ, **overrides).settings


def describe(
    kind: str, loc: Loc, message: str, given: Any, data: Mapping[str, Any], origins: Mapping[Loc, Origin]
) -> Problem:
    """One pydantic error as a ``Problem`` naming the setting as the user wrote it."""
    origin = next((origins[loc[:end]] for end in range(len(loc), 0, -1) if loc[:end] in origins), DEFAULT)
    dotted = dotted_name(loc, data)
    if origin.kind == "flag":
        setting = origin.name
    elif origin.kind == "env":
        exact = ENV_PREFIX + ENV_NESTED_DELIMITER.join(map(str, loc)).upper() == origin.name
        setting = origin.name if exact else f"{origin.name} ({dotted})"
    else:
        setting = dotted
    if kind == "extra_forbidden":
        message = _unknown(loc, given)
    elif kind == "missing":
        message = "is required"
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
        if expected == "a list" and len(loc) == 1 and loc[0] in ("destinations", "routes"):
            expected += f" ([[{loc[0]}]] tables)"
        message = f"expected {expected}, got {given!r}"
    elif kind != INVALID:
        message = f"{message[:1].lower()}{message[1:]}, got {given!r}"
    return Problem(setting, message, origin)


_EXPECTED = {
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
}
"""pydantic's wording for a wrong type, in the words of a TOML file."""


def dotted_name(loc: Loc, data: Mapping[str, Any]) -> str:
    """``("routes", 0, "match", "kvp")`` → ``routes[0] (ct-lung-nodules).match.kvp``."""
    text = ""
    node: Any = data
    for part in loc:
        node = _child(node, part)
        if isinstance(part, int):
            text += f"[{part}]"
            if (
                text.startswith("routes[")
                and isinstance(node, Mapping)
                and isinstance(node.get("pipeline"), str)
            ):
                text += f" ({node['pipeline']})"
        else:
            text += f".{part}" if text else str(part)
    return text


def _child(node: Any, part: str | int) -> Any:
    if isinstance(part, int) and isinstance(node, list | tuple) and 0 <= part < len(node):
        return node[part]
    if isinstance(part, str) and isinstance(node, Mapping):
        return node.get(part)
    return None


def _unknown(loc: Loc, given: Any) -> str:
    name = str(loc[-1])
    model = _model_at(loc[:-1])
    known = list(model.model_fields) if model is not None else []
    if model is MatchBlock:
        what = "criterion"
    elif not loc[:-1]:
        what = "section" if isinstance(given, Mapping) else "setting"
    else:
        what = "key"
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f"unknown {what}; did you mean {by_lower[close[0]]!r}?"
    return f"unknown {what}; known: {', '.join(known)}"


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class whose fields are valid at ``loc`` (list indexes skipped)."""
    model: type[BaseModel] = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is not None:
        for argument in get_args(annotation):
            if (found := _model_in(argument)) is not None:
                return found
    return None


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/…`` → ``scheme://user:***@host/…``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
