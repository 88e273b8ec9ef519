"""Plain ASGI middlewares (no per-request task or body copy): bearer-token auth, the body-size limit,
and request metrics. Each refusal is the contract's one-line JSON error."""
from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mupath.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: never need the token (`/` is the page: no data, see serve/page.py; `/v2` and `/v2/health/*` are the Open
#: Inference Protocol's server metadata and health, as `/healthz`: what a platform's probes call)
OPEN_PATHS = frozenset({"/healthz", "/", "/v2", "/v2/health/live", "/v2/health/ready"})


async def send_error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BearerAuth:
    """Every route but OPEN_PATHS needs `Authorization: Bearer TOKEN`. Both sides are hashed first, so
    `hmac.compare_digest` compares equal lengths and the time taken says nothing about the token."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._digest = hashlib.sha256(token.encode()).digest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, given = (_header(scope, b"authorization") or "").partition(" ")
        digest = hashlib.sha256(given.strip().encode("latin-1", "replace")).digest()
        if not (scheme.lower() == "bearer" and hmac.compare_digest(digest, self._digest)):
            return await send_error(send, 401, "missing or wrong token; send 'Authorization: Bearer TOKEN'",
                                    [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class BodyLimit:
    """Bodies over `limit` bytes are refused with 413: at once from Content-Length, else as soon as the
    bytes actually received pass the limit (reading stops there and the app's answer is replaced)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.limit):
            return await send_error(send, 413 if declared.strip().isdigit() else 400, self._message()
                                    if declared.strip().isdigit() else "invalid Content-Length header")
        state = {"received": 0, "over": False, "answered": False}

        async def counted() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not state["over"]:
                await send(message)
            elif not state["answered"]:
                state["answered"] = True
                await send_error(send, 413, self._message())

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["answered"]:
            state["answered"] = True
            await send_error(send, 413, self._message())

    def _message(self) -> str:
        return f"request body over the limit of {self.limit / 2 ** 20:g} MiB (--max-body-mb)"


class RequestMetrics:
    """Counts and times every HTTP request by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
