"""The DICOMweb HTTP application (Starlette): routes, access checks, CORS, access log and counters.

Routes live under ``/dicom-web`` (``PREFIX``), as PS3.18 §8.2 leaves the base to the origin server:

* QIDO-RS ``GET /studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
  ``/studies/{s}/instances``, ``/studies/{s}/series/{se}/instances``;
* WADO-RS ``GET /studies/{s}[/series/{se}[/instances/{i}]]`` (``application/dicom`` parts), the same with
  ``/metadata`` (DICOM JSON), ``…/instances/{i}/frames/{list}`` and ``…/instances/{i}/bulkdata/{tag}``;
* STOW-RS ``POST /studies`` and ``/studies/{s}``.

From the outside in: CORS (answers preflights itself), the access log and request counter, the
``[access] allowed_networks`` check (403), then authentication (401). The log line names the method,
the path (UIDs, never the query string, which may carry a patient's name), the status and the caller;
the query string is logged at DEBUG only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicom_node.config import AccessPolicy, DicomWebSettings
from dicom_node.index.database import Database
from dicom_node.ops.metrics import DICOMWEB_REQUESTS
from dicom_node.storage.ingest import Ingest
from dicom_node.storage.store import InstanceStore
from dicom_node.web import media, qido, stow, wado
from dicom_node.web.auth import ANONYMOUS, CLIENT_CERTIFICATE, BearerTokens, read_tokens, refused
from dicom_node.web.multipart import (
    MultipartError,
    encode_parts,
    media_type_parameters,
    new_boundary,
    split_parts,
)

LOG = logging.getLogger(__name__)
PREFIX = "/dicom-web"
CONTROL_PARAMETERS = ("includefield", "limit", "offset", "fuzzymatching")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _dicom_json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body), status_code=status, media_type=media.DICOM_JSON)


def _base_url(request: Request) -> str:
    """The URL BulkDataURIs and RetrieveURLs start with: ``[dicomweb] public_url``, else this request's.

    A Host header without a port (dicomweb-client sends one) gets the port the request came in on.
    """
    public: str | None = request.app.state.public_url
    if public:
        return public.rstrip("/")
    base = request.base_url
    server = request.scope.get("server")
    if base.port is None and server and server[1] not in (80, 443):
        base = base.replace(port=int(server[1]))
    return str(base).rstrip("/") + PREFIX


class DicomWeb:
    """The endpoints, bound to one index, store and ingest."""

    def __init__(
        self, database: Database, store: InstanceStore, ingest: Ingest, access: AccessPolicy
    ) -> None:
        self.database = database
        self.store = store
        self.ingest = ingest
        self.access = access
        self.search = qido.Search(database, store)

    # --- QIDO-RS ------------------------------------------------------------------------------------
    def _query(self, request: Request, level: qido.Level) -> qido.Query:
        keys, include = [], []
        include_all = False
        limit: int | None = None
        offset = 0
        for name, value in request.query_params.multi_items():
            if name == "includefield":
                for field in value.split(","):
                    if field.strip() == "all":
                        include_all = True
                    elif field.strip():
                        include.append(qido.attribute(field.strip())[1])
            elif name in ("limit", "offset"):
                try:
                    number = int(value)
                except ValueError:
                    raise qido.QueryKeyError(f"{name} must be a whole number, got {value!r}") from None
                if number < 0:
                    raise qido.QueryKeyError(f"{name} must not be negative")
                if name == "limit":
                    limit = number
                else:
                    offset = number
            elif name == "fuzzymatching":
                continue  # not supported: matching is exact (PS3.18 lets the server ignore it)
            else:
                keys.append(qido.key(name, value))
        params = request.path_params
        return qido.Query(
            level,
            keys=keys,
            include=include,
            include_all=include_all,
            limit=limit,
            offset=offset,
            study_instance_uid=params.get("study"),
            series_instance_uid=params.get("series"),
        )

    def _search(self, request: Request, level: qido.Level) -> Response:
        try:
            query = self._query(request, level)
            found = self.search.run(query)
        except qido.QueryKeyError as error:
            return _error(400, str(error))
        response = _dicom_json([ds.to_json_dict() for ds in found.datasets])
        if found.ignored:
            # PS3.18 §8.3.4 / PS3.4 C.2.2.1: a key the index does not hold is not matched; say so.
            names = ", ".join(dict.fromkeys(found.ignored))
            response.headers["Warning"] = f'299 dicom-node "not matched (not indexed): {names}"'
            LOG.info("QIDO-RS did not match on keys the index does not hold: %s", names)
        return response

    def search_studies(self, request: Request) -> Response:
        return self._search(request, qido.Level.STUDY)

    def search_series(self, request: Request) -> Response:
        return self._search(request, qido.Level.SERIES)

    def search_instances(self, request: Request) -> Response:
        return self._search(request, qido.Level.IMAGE)

    # --- WADO-RS ------------------------------------------------------------------------------------
    def _located(self, request: Request) -> list[wado.Located]:
        params = request.path_params
        return wado.locate(
            self.database, self.store, params["study"], params.get("series"), params.get("instance")
        )

    def retrieve(self, request: Request) -> Response:
        try:
            items = self._located(request)
            ranges = media.accepted(request.headers.get("accept"), media.DICOM)
            syntax = wado.choose_instance_syntax(ranges, [i.transfer_syntax_uid for i in items])
        except wado.NotFoundError as error:
            return _error(404, str(error))
        except wado.NotAcceptableError as error:
            return _error(406, str(error))
        boundary = new_boundary()

        def parts() -> Iterator[tuple[str, bytes]]:
            for item in items:
                try:
                    data = wado.instance_bytes(item, syntax)
                except (OSError, wado.NotAcceptableError) as error:
                    # The response has started: the instance is left out, and the log says why.
                    LOG.warning("WADO-RS left out instance %s: %s", item.sop_instance_uid, error)
                    continue
                sent = item.transfer_syntax_uid if syntax == media.ANY_SYNTAX else syntax
                yield f"{media.DICOM}; transfer-syntax={sent}", data

        return StreamingResponse(
            encode_parts(parts(), boundary),
            media_type=f'{media.MULTIPART}; type="{media.DICOM}"; boundary={boundary}',
        )

    def retrieve_metadata(self, request: Request) -> Response:
        try:
            items = self._located(request)
        except wado.NotFoundError as error:
            return _error(404, str(error))
        base = _base_url(request)
        documents = []
        for item in items:
            try:
                documents.append(wado.metadata(item, base))
            except OSError as error:
                LOG.warning("WADO-RS metadata left out instance %s: %s", item.sop_instance_uid, error)
        return _dicom_json(documents)

    def _binary(self, request: Request, frames: wado.Frames) -> Response:
        ranges = media.accepted(request.headers.get("accept"), media.OCTET_STREAM)
        part_type = f"{frames.media_type}; transfer-syntax={frames.transfer_syntax}"
        if len(frames.data) == 1 and ranges and not ranges[0].multipart:
            return Response(frames.data[0], media_type=part_type)
        boundary = new_boundary()
        body = b"".join(encode_parts(iter([(part_type, f) for f in frames.data]), boundary))
        return Response(
            body, media_type=f'{media.MULTIPART}; type="{frames.media_type}"; boundary={boundary}'
        )

    def retrieve_frames(self, request: Request) -> Response:
        try:
            numbers = wado.parse_frame_list(request.path_params["frames"])
        except ValueError as error:
            return _error(400, str(error))
        try:
            item = self._located(request)[0]
            ranges = media.accepted(request.headers.get("accept"), media.OCTET_STREAM)
            return self._binary(request, wado.frames(item, numbers, ranges))
        except wado.NotFoundError as error:
            return _error(404, str(error))
        except wado.NotAcceptableError as error:
            return _error(406, str(error))

    def retrieve_bulkdata(self, request: Request) -> Response:
        try:
            item = self._located(request)[0]
            ranges = media.accepted(request.headers.get("accept"), media.OCTET_STREAM)
            return self._binary(request, wado.bulkdata(item, request.path_params["tag"], ranges))
        except wado.NotFoundError as error:
            return _error(404, str(error))
        except wado.NotAcceptableError as error:
            return _error(406, str(error))

    # --- STOW-RS ------------------------------------------------------------------------------------
    async def stow(self, request: Request) -> Response:
        caller = request.user.display_name if request.user.is_authenticated else ANONYMOUS
        if self.access.allowed_ae_titles and not self.access.ae_allowed(caller):
            return _error(403, f"caller {caller!r} may not store: not in access.allowed_ae_titles")
        kind, parameters = media_type_parameters(request.headers.get("content-type", ""))
        if kind != media.MULTIPART or parameters.get("type", media.DICOM).lower() != media.DICOM:
            return _error(
                415,
                f'STOW-RS takes {media.MULTIPART}; type="{media.DICOM}" '
                "(DICOM JSON with bulk data is not supported)",
            )
        limit: int = request.app.state.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return _error(413, f"the request is larger than dicomweb.max_request_bytes ({limit})")
        body = bytearray()
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                return _error(413, f"the request is larger than dicomweb.max_request_bytes ({limit})")
        try:
            parts = split_parts(bytes(body), parameters.get("boundary", ""))
        except MultipartError as error:
            return _error(400, f"the body is not multipart/related: {error}")
        if not parts:
            return _error(400, "the body holds no part")
        study = request.path_params.get("study")
        outcome = await run_in_threadpool(stow.store_parts, self.ingest, parts, caller, study)
        response: Dataset = outcome.response(_base_url(request), study)
        return _dicom_json(response.to_json_dict(), outcome.http_status)


def _service(method: str, path: str) -> str:
    if not path.startswith(PREFIX + "/"):
        return "other"
    if method == "POST":
        return "stow"
    tail = path[len(PREFIX) :].rstrip("/").split("/")
    if tail[-1] in ("studies", "series", "instances") and len(tail) % 2 == 0:
        return "qido"
    return "wado"


class AccessLog:
    """One log line and one count per request: method, path, status, caller (no query values)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method, path = scope["method"], scope["path"]
            user = scope.get("user")
            caller = getattr(user, "display_name", "-") if user is not None else "-"
            service = _service(method, path)
            DICOMWEB_REQUESTS.labels(service=service, status=str(status)).inc()
            client = scope.get("client") or ("-", 0)
            LOG.info(
                "%s %s %d %s from %s (%.0f ms)",
                method,
                path,
                status,
                caller,
                client[0],
                (time.monotonic() - started) * 1000,
                extra={"http_method": method, "http_path": path, "http_status": status, "caller": caller},
            )
            if scope.get("query_string"):
                LOG.debug("query of %s %s: %s", method, path, scope["query_string"].decode("latin-1"))


class NetworkCheck:
    """``[access] allowed_networks`` for HTTP: a client outside them gets 403 before anything else."""

    def __init__(self, app: ASGIApp, access: AccessPolicy) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.access.allowed_networks:
            client = scope.get("client")
            address = client[0] if client else ""
            try:
                ipaddress.ip_address(address)
                allowed = self.access.address_allowed(address)
            except ValueError:
                allowed = False
            if not allowed:
                response = _error(403, f"source address {address} is not in access.allowed_networks")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    settings: DicomWebSettings, access: AccessPolicy, database: Database, store: InstanceStore, ingest: Ingest
) -> Starlette:
    """The ASGI application for ``settings``; reads the token file (``ConfigError`` if it is bad)."""
    tokens = read_tokens(settings.token_file) if settings.token_file is not None else None
    mutual = settings.tls is not None and settings.tls.require_client_certificate
    backend = BearerTokens(tokens, default=CLIENT_CERTIFICATE if mutual else ANONYMOUS)
    web = DicomWeb(database, store, ingest, access)
    study = PREFIX + "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    routes = [
        Route(PREFIX + "/studies", web.search_studies, methods=["GET"]),
        Route(PREFIX + "/studies", web.stow, methods=["POST"]),
        Route(PREFIX + "/series", web.search_series, methods=["GET"]),
        Route(PREFIX + "/instances", web.search_instances, methods=["GET"]),
        Route(study, web.retrieve, methods=["GET"]),
        Route(study, web.stow, methods=["POST"]),
        Route(study + "/metadata", web.retrieve_metadata, methods=["GET"]),
        Route(study + "/series", web.search_series, methods=["GET"]),
        Route(study + "/instances", web.search_instances, methods=["GET"]),
        Route(series, web.retrieve, methods=["GET"]),
        Route(series + "/metadata", web.retrieve_metadata, methods=["GET"]),
        Route(series + "/instances", web.search_instances, methods=["GET"]),
        Route(instance, web.retrieve, methods=["GET"]),
        Route(instance + "/metadata", web.retrieve_metadata, methods=["GET"]),
        Route(instance + "/frames/{frames}", web.retrieve_frames, methods=["GET"]),
        Route(instance + "/bulkdata/{tag}", web.retrieve_bulkdata, methods=["GET"]),
    ]
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "Accept"],
                allow_credentials="*" not in settings.cors_origins,
            )
        )
    middleware += [
        Middleware(AccessLog),
        Middleware(NetworkCheck, access=access),
        Middleware(AuthenticationMiddleware, backend=backend, on_error=refused),
    ]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.max_request_bytes = settings.max_request_bytes
    app.state.public_url = settings.public_url
    return app
