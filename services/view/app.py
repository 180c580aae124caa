"""``vlm view``: the live web view (FastAPI + uvicorn).

One page shows every camera's live frames with their results drawn over them in the
browser's canvas, per-camera rates, the serving model versions and the event feed. Frames
travel over one WebSocket per page as the camera's own JPEG bytes plus the result's JSON:
the server never decodes or re-encodes a frame (see README, "Live view", for the
measurements behind that choice). Everything is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.view.hub import LiveHub
from vlm_core.errors import ConfigError, InfrastructureError

TOKEN_ENV = "VLM_VIEW_TOKEN"
TOKEN_COOKIE = "vlm_view_token"
#: The page's own files only: no inline script, no third-party origin.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ViewSettings:
    host: str = "127.0.0.1"
    port: int = 28000
    #: Required from every request when set; required to be set beyond loopback.
    token: str | None = None

    def check(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(
                f"the view would listen on {self.host} without a token",
                hint=f"set {TOKEN_ENV} to a long random secret, or listen on 127.0.0.1",
            )
        if self.token is not None and len(self.token) < 16:
            raise ConfigError(f"{TOKEN_ENV} is too short ({len(self.token)} characters)", hint="use 16 or more")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenGate:
    """Pure ASGI middleware (it sees WebSockets too): a request passes with the token as
    ``?token=``, ``Authorization: Bearer``, or the cookie the page sets once it got it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    def presented(self, scope: Scope) -> str | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][-1]
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        cookie = SimpleCookie(headers.get("cookie", ""))
        return cookie[TOKEN_COOKIE].value if TOKEN_COOKIE in cookie else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = self.presented(scope)
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # the connect message
            await send({"type": "websocket.close", "code": 4401, "reason": "token required"})
            return
        response = PlainTextResponse(
            f"401: this view needs its token ({TOKEN_ENV}); open it as /?token=...", status_code=401
        )
        await response(scope, receive, send)


def _static(name: str) -> str:
    return resources.files("services.view").joinpath("static", name).read_text()


def build_view_app(hub: LiveHub, settings: ViewSettings) -> Any:
    """The FastAPI app over a hub; wrapped in the token gate when a token is set."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            hub.stop()

    app = FastAPI(title="vlm-stream live view", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def security_headers(request: Any, call_next: Callable[[Any], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.get("/", response_class=HTMLResponse)
    async def page(token: str | None = None) -> HTMLResponse:
        response = HTMLResponse(_static("index.html"))
        if token is not None and settings.token is not None:
            # The gate has checked it; later requests and the WebSocket carry the cookie.
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    @app.get("/view.js")
    async def script() -> Response:
        return Response(_static("view.js"), media_type="text/javascript")

    @app.get("/view.css")
    async def style() -> Response:
        return Response(_static("view.css"), media_type="text/css")

    @app.get("/api/state")
    async def state() -> JSONResponse:
        return JSONResponse(hub.state())

    @app.get("/api/events")
    async def events() -> JSONResponse:
        return JSONResponse(list(hub.recent_events))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        healthy = hub.error is None
        return JSONResponse({"ok": healthy, "error": hub.error}, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        hub.state()  # brings the per-camera gauges (live accuracy) up to date
        return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.websocket("/ws")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        viewer = hub.subscribe()
        try:
            while True:
                await viewer.wake.wait()
                frames, events = viewer.take()
                for event in events:
                    await websocket.send_json({"type": "event", "event": event})
                for message in frames:
                    await websocket.send_bytes(message)
                    viewer.sent += 1
                    hub.metrics.sent.inc()
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            hub.unsubscribe(viewer)

    return TokenGate(app, settings.token)


def _server(hub: LiveHub, settings: ViewSettings) -> Any:
    import uvicorn

    settings.check()
    config = uvicorn.Config(
        build_view_app(hub, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        ws="websockets-sansio",
        # Viewers' sockets stay open forever: do not wait for them on SIGTERM / Ctrl-C.
        timeout_graceful_shutdown=3,
    )
    return uvicorn.Server(config)


def serve_view(hub: LiveHub, settings: ViewSettings) -> None:
    """Run the view until interrupted (``vlm view``)."""
    _server(hub, settings).run()


class ViewServer:
    """The view in a background thread, for ``vlm demo`` and the tests."""

    def __init__(self, hub: LiveHub, settings: ViewSettings) -> None:
        self.hub, self.settings = hub, settings
        self.server = _server(hub, settings)
        self.thread = threading.Thread(target=self.server.run, name="view-server", daemon=True)

    def start(self, timeout_s: float = 30.0) -> ViewServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise InfrastructureError(f"the view did not start on {self.settings.url}", hint="is the port free?")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
