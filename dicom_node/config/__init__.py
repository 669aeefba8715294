"""The node's settings: typed, frozen, checked once at load (see docs/configuration.md).

    values.py    one validator per kind of value (durations, ports, AE titles, networks, paths)
    routes.py    ``[[routes]]`` specs and their vocabulary; ``workflow.routing`` compiles them
    tables.py    ``[access]``, ``[tls]``, ``[timeouts]``, ``[[destinations]]``, ``[jobs]``,
                 ``[query_retrieve]``
    settings.py  ``Settings``
    sources.py   ``load_settings``: file, environment and flags, each value's origin, every error at once

Of the node's packages, config imports only ``dicom_node.errors``.
"""

from __future__ import annotations

from dicom_node.config.routes import CRITERIA, PIPELINES, SELECTIONS, NumberTest, RouteSpec
from dicom_node.config.settings import ENV_PREFIX, Settings
from dicom_node.config.sources import (
    InvalidSettingsError,
    Origin,
    Problem,
    ResolvedSettings,
    load_settings,
    redact_url,
    resolve_settings,
)
from dicom_node.config.tables import (
    DEFAULT_TIMEOUTS,
    PRESENTATION_STATE_SUFFIX,
    REPORT_PROFILES,
    AccessPolicy,
    AnalysisSettings,
    Destination,
    DicomWebSettings,
    DimseTimeouts,
    JobSettings,
    QueryRetrieveSettings,
    TlsConfig,
    parse_address,
)
from dicom_node.config.values import parse_ae_title, parse_port
from dicom_node.errors import ConfigError

__all__ = [
    "CRITERIA",
    "DEFAULT_TIMEOUTS",
    "ENV_PREFIX",
    "PIPELINES",
    "PRESENTATION_STATE_SUFFIX",
    "REPORT_PROFILES",
    "SELECTIONS",
    "AccessPolicy",
    "AnalysisSettings",
    "ConfigError",
    "Destination",
    "DicomWebSettings",
    "DimseTimeouts",
    "InvalidSettingsError",
    "JobSettings",
    "NumberTest",
    "Origin",
    "Problem",
    "QueryRetrieveSettings",
    "ResolvedSettings",
    "RouteSpec",
    "Settings",
    "TlsConfig",
    "load_settings",
    "parse_address",
    "parse_ae_title",
    "parse_port",
    "redact_url",
    "resolve_settings",
]
