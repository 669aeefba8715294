"""The tables of the settings file: ``[access]``, ``[tls]``, ``[timeouts]``, ``[[destinations]]``, ``[jobs]``,
``[dicomweb]``.

Each is a small frozen pydantic model that refuses keys it does not know (``extra="forbid"``).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from dicom_node.config.values import (
    AeTitle,
    ExistingFile,
    Host,
    ModuleName,
    Network,
    PeerPort,
    Port,
    PositiveCount,
    PositiveSeconds,
    Seconds,
    comma_list,
    invalid,
    parse_ae_title,
    parse_port,
)
from dicom_node.errors import ConfigError

REPORT_PROFILES = ("standard", "ohif", "labelmap")
"""The names of ``dicom_node.reports.profile.PROFILES`` (config may not import reports; a test checks)."""
PRESENTATION_STATE_SUFFIX = "+presentation-state"
"""Appended to a destination's profile name when it gets presentation states (``report_profile``)."""


class Table(BaseModel):
    """A frozen settings table that refuses unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessPolicy(Table):
    """Who may associate. Empty lists mean 'anyone'; the called AE title must always match."""

    allowed_ae_titles: Annotated[tuple[AeTitle, ...], NoDecode, BeforeValidator(comma_list)] = ()
    allowed_networks: Annotated[tuple[Network, ...], NoDecode, BeforeValidator(comma_list)] = ()

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


class TlsConfig(Table):
    """DICOM TLS for the listener: a server certificate, optionally required client certificates.

    The files must exist when the settings load; their contents are read only by the listener.
    """

    certificate: ExistingFile
    private_key: ExistingFile
    ca_certificates: ExistingFile | None = None
    require_client_certificate: bool = False

    @field_validator("require_client_certificate")
    @classmethod
    def _needs_a_ca(cls, required: bool, info: ValidationInfo) -> bool:
        # A CA that was given but failed its own check is absent from ``info.data``: reported already.
        if required and "ca_certificates" in info.data and info.data["ca_certificates"] is None:
            raise invalid("needs tls.ca_certificates, the CAs client certificates are checked against")
        return required


class DimseTimeouts(Table):
    """Network timeouts in seconds, for both the listener and the sender."""

    acse: PositiveSeconds = 30.0
    dimse: PositiveSeconds = 60.0
    network: PositiveSeconds = 60.0


DEFAULT_TIMEOUTS = DimseTimeouts()


class Destination(Table):
    """A DICOM peer results are sent to, and the report profile its results are encoded with."""

    name: str
    ae_title: AeTitle
    host: Host
    port: PeerPort
    tls: bool = False
    """C-STORE over TLS 1.2+ only, with the peer's certificate checked; never falls back to clear text."""
    ca_certificates: ExistingFile | None = None
    """The CAs the peer's certificate is checked against (PEM); absent: the system's trusted CAs."""
    certificate: ExistingFile | None = None
    """This node's client certificate (PEM), for peers that require one; with ``private_key``."""
    private_key: ExistingFile | None = None
    server_name: str | None = None
    """The name the peer's certificate must carry; absent: ``host`` (a DNS name or an IP address)."""
    profile: str = "standard"
    presentation_state: bool = False
    """Also a Grayscale Softcopy Presentation State with each SR's outlines and labels (docs/reports.md)."""

    @property
    def report_profile(self) -> str:
        """The name results are written and delivered under: ``profile``, plus the presentation state."""
        return self.profile + (PRESENTATION_STATE_SUFFIX if self.presentation_state else "")

    @model_validator(mode="after")
    def _tls_settings(self) -> Destination:
        given = [
            k for k in ("ca_certificates", "certificate", "private_key", "server_name") if getattr(self, k)
        ]
        if given and not self.tls:
            raise invalid(f"{', '.join(given)} given but tls is not true: set tls = true or remove them")
        if (self.certificate is None) != (self.private_key is None):
            raise invalid("certificate and private_key go together: give both or neither")
        return self

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise invalid(f"every destination needs a name, got {value!r}")
        return value.strip()

    @field_validator("profile", mode="before")
    @classmethod
    def _profile(cls, value: Any) -> Any:
        if value not in REPORT_PROFILES:
            raise invalid(f"unknown report profile {value!r}; one of {', '.join(REPORT_PROFILES)}")
        return value

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class QueryRetrieveSettings(Table):
    """The ``[query_retrieve]`` table: where C-MOVE may send, and who may move where.

    A move destination is found by its AE title among ``peers`` (move-only peers, which get no results)
    and then ``[[destinations]]``. ``moves`` maps a calling AE title (or ``"*"``, anyone admitted) to the
    destination AE titles it may move to (``"*"``: every known one). Without an entry for a caller, it
    may move only to its own AE title, as a viewer or PACS retrieving into itself does.
    """

    peers: tuple[Destination, ...] = ()
    moves: dict[str, tuple[str, ...]] = {}

    @field_validator("moves", mode="before")
    @classmethod
    def _moves(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: comma_list(v) if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("peers")
    @classmethod
    def _plain_peers(cls, peers: tuple[Destination, ...]) -> tuple[Destination, ...]:
        for peer in peers:
            if peer.tls:
                raise invalid(f"peer {peer.name!r}: C-MOVE over TLS is not supported yet; remove tls")
        return peers

    def may_move(self, calling_ae: str, destination_ae: str) -> bool:
        """Whether ``calling_ae`` may ask for a C-MOVE to ``destination_ae``."""
        calling, destination = calling_ae.strip(), destination_ae.strip()
        allowed = self.moves.get(calling, self.moves.get("*"))
        if allowed is None:
            return destination == calling
        return "*" in allowed or destination in allowed


class AnalysisSettings(Table):
    """The ``[analysis]`` table."""

    allow_untrained: bool = False
    """Run models whose weights are an untrained scaffold (tests, benchmarks, site training); their
    results are marked UNTRAINED. Off (the default): such jobs end ``skipped`` with the reason."""

    mode: Literal["exact", "fast"] = "exact"
    """``exact`` (the default): the published bundles' computation, voxel for voxel. ``fast``: for a site
    without a GPU, the CT pipelines trade exactness for time (nodules: the detector sees only the
    lungs' bounding box; vertebrae: sliding windows without overlap); the algorithm version of every
    such result ends in ``+fast`` (docs/pipelines.md). The radiograph pipeline is the same in both."""

    batch_size: PositiveCount = 1
    """The most radiograph jobs (``cxr-classification``) one worker analyses in one network pass when
    they are queued together, e.g. a backlog of studies from several modalities: the worker that takes
    one queued job claims up to ``batch_size - 1`` more of the same pipeline (oldest first), each still
    its own job with its own lease, outcome and deliveries; an image the pipeline refuses fails only its
    own job. ``1`` (the default) turns batching off. For a GPU worker (deploy/compose.yaml sets 8): on a
    GPU a batch costs about as much as one image, while on a CPU it does not pay (8 radiographs of
    2048²: 1.83 s each in one batch against 1.56 s alone, bench/pipelines.py --batch 8, 2 cores,
    2026-12-01) and the first job of a batch waits for the others. The CT pipelines run one job at a
    time."""


class JobSettings(Table):
    """The ``[jobs]`` table: leases, limits and retry policy (seconds)."""

    queued_lease: PositiveSeconds = 600.0
    running_lease: PositiveSeconds = 120.0
    reconcile_interval: PositiveSeconds = 10.0
    task_time_limit: PositiveSeconds = 3600.0
    max_attempts: PositiveCount = 3
    delivery_backoff: Seconds = 10.0
    delivery_backoff_max: Seconds = 600.0
    delivery_horizon: PositiveSeconds = 24 * 3600.0
    send_to_caller: bool = False
    polling_interval: PositiveSeconds = 0.05
    worker_seen_within: PositiveSeconds = 60.0
    plugins: Annotated[tuple[ModuleName, ...], NoDecode, BeforeValidator(comma_list)] = ()

    @field_validator("delivery_backoff_max")
    @classmethod
    def _backoff_order(cls, ceiling: float, info: ValidationInfo) -> float:
        first = info.data.get("delivery_backoff")
        if first is not None and ceiling < first:
            raise invalid(f"must be at least delivery_backoff ({first:g}), got {ceiling:g}")
        return ceiling


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class DicomWebSettings(Table):
    """The ``[dicomweb]`` table: QIDO-RS, WADO-RS and STOW-RS over HTTP(S) (docs/dicomweb.md).

    Off unless ``enabled``. On a host other than loopback it needs a way to tell clients apart: a
    ``token_file`` (bearer tokens) or ``tls`` with ``require_client_certificate``.
    """

    enabled: bool = False
    host: Host = "127.0.0.1"
    port: Port = 8080
    """0: any free port (the one bound is logged)."""
    token_file: ExistingFile | None = None
    """One token a line, ``name:token`` or a bare token (named ``token<line>``); ``#`` starts a comment."""
    cors_origins: Annotated[tuple[str, ...], NoDecode, BeforeValidator(comma_list)] = ()
    """Origins allowed to call from a browser (``*``: any); empty: no CORS headers at all."""
    tls: TlsConfig | None = None
    """HTTPS with this certificate; with ``require_client_certificate``, mutual TLS."""
    max_request_bytes: PositiveCount = 2 * 1024**3
    """The largest STOW-RS request body accepted (413 above it)."""
    public_url: str | None = None
    """The DICOMweb root as clients reach it (``https://pacs.example.org/dicom-web``), for the
    BulkDataURIs and RetrieveURLs in responses behind a reverse proxy; absent: from each request."""

    @model_validator(mode="after")
    def _identifies_clients(self) -> DicomWebSettings:
        open_to_all = self.token_file is None and not (self.tls and self.tls.require_client_certificate)
        if self.enabled and open_to_all and self.host not in LOOPBACK_HOSTS:
            raise invalid(
                f"dicomweb.host {self.host!r} is not loopback: set dicomweb.token_file or "
                "dicomweb.tls with require_client_certificate, or listen on 127.0.0.1"
            )
        return self


def parse_address(text: str) -> Destination:
    """``AE@HOST:PORT`` → an ad-hoc destination (``ConfigError`` if it is not one)."""
    try:
        ae_title, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
    except ValueError:
        raise ConfigError(f"{text!r} is not AE@HOST:PORT") from None
    try:
        return Destination(name=text, ae_title=parse_ae_title(ae_title), host=host, port=parse_port(port))
    except ValidationError as error:
        raise ConfigError(f"{text!r}: {error.errors()[0]['msg']}") from None


__all__ = [
    "DEFAULT_TIMEOUTS",
    "PRESENTATION_STATE_SUFFIX",
    "REPORT_PROFILES",
    "AccessPolicy",
    "Destination",
    "DicomWebSettings",
    "DimseTimeouts",
    "JobSettings",
    "QueryRetrieveSettings",
    "TlsConfig",
    "parse_address",
]
