"""The service's front door (pure ASGI, before any body is read): the API key and the request
body limit. Reads and writes nothing."""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Paths served without the API key: the health check and the API's own documentation.
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


class _TooLarge(Exception):
    """The request body passed the limit while being read."""


async def send_error(send: Send, status: int, detail: str, headers: dict[str, str] | None = None):
    """Send a JSON error `{"detail": ...}` as the whole response."""
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Checks each HTTP request before the app sees it.

    - With `api_key`, every path outside `open_paths` needs `Authorization: Bearer <key>`
      (compared in constant time); otherwise 401.
    - A body over `max_body_bytes` is refused with 413: from its Content-Length before a byte
      is read, or, without one, as soon as the bytes read pass the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        api_key: str | None,
        max_body_bytes: int,
        open_paths: Collection[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)

    def _authorised(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        return hmac.compare_digest(given, self.api_key or b"")

    def _too_large_text(self) -> str:
        mb = self.max_body_bytes / 2**20
        return f"request body is over the {mb:.1f} MB limit — send a smaller photo (or fewer)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_key and scope["path"] not in self.open_paths and not self._authorised(headers):
            await send_error(
                send,
                401,
                "missing or wrong API key — send the header `Authorization: Bearer <key>` with "
                "the key in $LOOKALIKE_API_KEY",
                {"www-authenticate": "Bearer"},
            )
            return
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await send_error(send, 400, f"Content-Length must be a number, got {declared!r}")
                return
            if int(declared) > self.max_body_bytes:
                await send_error(send, 413, self._too_large_text())
                return

        seen = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    too_large = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await send_error(send, 413, self._too_large_text())
