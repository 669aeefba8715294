"""OHIF's prebuilt viewer served on loopback with one data source: a node's DICOMweb, nothing else.

The viewer and the node are different origins (two ports), so the browser talks to the node directly
and the node's CORS settings are what let it (``[dicomweb] cors_origins`` must name this site). The
site sends COOP/COEP headers so that the viewer gets SharedArrayBuffer, as OHIF's own server does;
under COEP a cross-origin fetch must be a CORS one, which is what OHIF's DICOMweb client makes.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

OHIF_DIST = Path("/tmp/ohif/dist-3.13.2")
ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def app_config(dicomweb_url: str) -> str:
    """``window.config`` with the node's DICOMweb as the one data source (wadors images, bulk data)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "node",
        "configuration": {
            "friendlyName": "dicom-node DICOMweb",
            "name": "node",
            "wadoUriRoot": dicomweb_url,
            "qidoRoot": dicomweb_url,
            "wadoRoot": dicomweb_url,
            "qidoSupportsIncludeField": True,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "dicomUploadEnabled": False,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "node",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"


class _Isolated:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in ISOLATION.items()),
                ]
            await send(message)

        await self.app(scope, receive, with_headers)


class _SinglePage(StaticFiles):
    """Files of the dist; any other path is the app's (``index.html``), as a single-page app wants."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as error:
            if error.status_code != 404:
                raise
            return FileResponse(Path(str(self.directory)) / "index.html")


def build_site(dist: Path, dicomweb_url: str) -> ASGIApp:
    config = app_config(dicomweb_url)

    def config_js(request: Request) -> Response:
        return Response(config, media_type="application/javascript", headers={"Cache-Control": "no-cache"})

    app = Starlette(
        routes=[
            Route("/app-config.js", config_js),
            Mount("/", app=_SinglePage(directory=dist, html=True)),
        ]
    )
    return _Isolated(app)


class OhifSite:
    """The site on 127.0.0.1 (a free port), in a thread; ``url`` once started."""

    def __init__(self, dist: Path = OHIF_DIST) -> None:
        self.dist = dist
        self.dicomweb_url = ""
        self.server: uvicorn.Server | None = None
        self.port = 0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bind(self) -> None:
        """Choose the port first: the node's CORS settings must name this origin before it starts."""
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])

    def start(self, dicomweb_url: str) -> None:
        self.dicomweb_url = dicomweb_url
        config = uvicorn.Config(
            build_site(self.dist, dicomweb_url),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the OHIF site did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
