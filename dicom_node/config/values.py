"""The value types of the settings: each checks one kind of value and says what it expected.

Every validator raises ``invalid(message)``: a pydantic error whose message is final (it names what was
expected and what was given), so ``sources.describe`` only puts the setting's name in front of it.
Values from the environment and from flags arrive as strings; TOML gives numbers and booleans.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

from dicom_node.errors import ConfigError

INVALID = "invalid_setting"
"""The pydantic error type of every check here; its message needs no rewording."""

AE_TITLE_MAX = 16
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "d": 86400, "w": 604800}
_WITH_UNIT = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]+)\s*$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def invalid(message: str) -> PydanticCustomError:
    """A validation error with a finished message (no template fields are filled in)."""
    return PydanticCustomError(INVALID, message)


def _number(value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(f"expected {expected}, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"expected {expected}, got {value!r}") from None
    if not math.isfinite(number):
        raise invalid(f"expected {expected}, got {value!r}")
    return number


def _example_seconds(value: Any) -> str:
    """``"2m"`` → ``"120"``: the number the user most likely meant, for the hint."""
    match = _WITH_UNIT.match(value) if isinstance(value, str) else None
    if match and match.group(2).lower() in _UNITS:
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
        return f"{seconds:g}"
    return "120"


def _seconds(minimum: float, inclusive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        seconds = _number(value, f"a number of seconds, e.g. {_example_seconds(value)}")
        if seconds < minimum or (not inclusive and seconds == minimum):
            bound = "0 or more" if inclusive else "more than 0"
            raise invalid(f"expected a number of seconds, {bound}, got {value!r}")
        return seconds

    return check


def _days(value: Any) -> float:
    days = _number(value, "a number of days, e.g. 30")
    if days < 0:
        raise invalid(f"expected a number of days, 0 or more, got {value!r}")
    return days


def _integer(minimum: int, maximum: int | None = None, what: str = "an integer") -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise invalid(f"expected {what}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise invalid(f"expected {what}, got {value!r}") from None
        if number < minimum or (maximum is not None and number > maximum):
            span = f"{minimum}–{maximum}" if maximum is not None else f"{minimum} or more"
            raise invalid(f"expected {what} ({span}), got {value!r}")
        return number

    return check


def check_ae_title(value: Any) -> str:
    """An AE title: 1–16 printable ASCII characters, no backslash, not all spaces; returned stripped."""
    if not isinstance(value, str):
        raise invalid(f"expected an AE title (text), got {value!r}")
    stripped = value.strip()
    if not stripped or len(value) > AE_TITLE_MAX:
        raise invalid(f"an AE title must have 1 to 16 characters, got {value!r}")
    if any(ord(c) < 0x20 or ord(c) > 0x7E or c == "\\" for c in stripped):
        raise invalid(f"an AE title may hold printable ASCII only (no backslash), got {value!r}")
    return stripped


def check_host(value: Any) -> str:
    """An IP address or a DNS host name (service names such as ``orthanc`` included)."""
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"expected a host name or IP address, got {value!r}")
    host = value.strip()
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise invalid(f"expected a host name or IP address, got {value!r}")
    return host


def check_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        raise invalid(f"expected a network such as 10.0.0.0/8 or an address, got {value!r}") from None


def check_path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise invalid(f"expected a path, got {value!r}")
    return Path(value)


def check_existing_file(value: Any) -> Path:
    """A path to a file that exists now (read by the node at start; never read here)."""
    path = check_path(value)
    if not path.exists():
        raise invalid(f"no such file: {str(path)!r}")
    if not path.is_file():
        raise invalid(f"not a file: {str(path)!r}")
    return path


def check_log_level(value: Any) -> str:
    level = str(value).strip().upper() if isinstance(value, str) else ""
    if level not in LOG_LEVELS:
        raise invalid(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
    return level


def check_log_format(value: Any) -> str:
    """``text`` (the default) or ``json`` (one JSON object per log line)."""
    fmt = value.strip().lower() if isinstance(value, str) else ""
    if fmt not in {"text", "json"}:
        raise invalid(f'expected "text" or "json", got {value!r}')
    return fmt


def check_module(value: Any) -> str:
    if not isinstance(value, str) or not _MODULE.match(value.strip()):
        raise invalid(f"expected a Python module name such as my_site.pipelines, got {value!r}")
    return value.strip()


def comma_list(value: Any) -> Any:
    """``"a, b"`` (an environment variable) → ``["a", "b"]``; anything else unchanged."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _stringify(value: Any) -> str:
    return str(value)


Seconds = Annotated[float, PlainValidator(_seconds(0.0, inclusive=True))]
"""A duration: a number of seconds, 0 or more. ``"2m"`` is refused with the hint ``e.g. 120``."""
PositiveSeconds = Annotated[float, PlainValidator(_seconds(0.0, inclusive=False))]
Days = Annotated[float, PlainValidator(_days)]
Port = Annotated[int, PlainValidator(_integer(0, 65535, "a port number"))]
"""A listening port; 0 means any free port (tests)."""
PeerPort = Annotated[int, PlainValidator(_integer(1, 65535, "a port number"))]
Count = Annotated[int, PlainValidator(_integer(0, None, "a whole number"))]
PositiveCount = Annotated[int, PlainValidator(_integer(1, None, "a whole number"))]
AeTitle = Annotated[str, PlainValidator(check_ae_title)]
Host = Annotated[str, PlainValidator(check_host)]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(check_network),
    PlainSerializer(_stringify, return_type=str),
]
PathValue = Annotated[Path, PlainValidator(check_path), PlainSerializer(_stringify, return_type=str)]
ExistingFile = Annotated[
    Path, PlainValidator(check_existing_file), PlainSerializer(_stringify, return_type=str)
]
LogLevel = Annotated[str, PlainValidator(check_log_level)]
LogFormat = Annotated[str, PlainValidator(check_log_format)]
ModuleName = Annotated[str, PlainValidator(check_module)]


def _checked(check: Callable[[Any], Any], value: Any, name: str) -> Any:
    try:
        return check(value)
    except PydanticCustomError as error:
        raise ConfigError(f"{name}: {error.message()}") from None


def parse_ae_title(value: str, *, name: str = "ae_title") -> str:
    """An AE title, stripped; ``ConfigError`` naming ``name`` if it is not one."""
    result: str = _checked(check_ae_title, value, name)
    return result


def parse_port(value: str | int, *, name: str = "port") -> int:
    """A TCP port number (0–65535); ``ConfigError`` naming ``name`` if it is not one."""
    result: int = _checked(_integer(0, 65535, "a port number"), value, name)
    return result
