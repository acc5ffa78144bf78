"""Bounded request bodies: an ASGI middleware answering 413 when a body is larger than allowed,
whether it says so in Content-Length or streams past the limit, before anything parses it; and a
route class that parses large JSON bodies off the event loop."""

from __future__ import annotations

import contextlib

import anyio
import orjson
from fastapi import Request
from fastapi.routing import APIRoute


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Bodies up to ``max_bytes``; file uploads (multipart) up to ``max_upload_bytes``."""

    def __init__(self, app, max_bytes: int, max_upload_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        upload = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        limit = self.max_upload_bytes if upload else self.max_bytes
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            return await self._too_large(send, limit)
        received, overflowed, started = 0, False, False

        async def counted_receive():
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflowed = True
                    raise BodyTooLarge
            return message

        async def tracked_send(message):
            # A framework may turn the interrupted read into its own error answer: send 413 instead.
            nonlocal started
            if overflowed:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await self._too_large(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await self._too_large(send, limit)

    @staticmethod
    async def _too_large(send, limit: int) -> None:
        body = orjson.dumps({"detail": f"the request body is larger than this server accepts ({limit:,} bytes)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


OFF_LOOP_BYTES = 64 * 1024  # JSON bodies from this size are parsed on a worker thread


class ParsedOffLoop(APIRoute):
    """Parse a large JSON body on a worker thread, not on the event loop.

    FastAPI reads a JSON body with ``await request.json()`` on the event loop, where a 1 MB body
    takes a tenth of a second or more of one core, during which no other request is answered.
    This route parses bodies of ``OFF_LOOP_BYTES`` or more on a worker thread first and leaves the
    result where Starlette caches it, so FastAPI's own validation finds it parsed.  A body the fast
    parser refuses is left to FastAPI, which answers it as it always does."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def parse_then_handle(request: Request):
            declared = request.headers.get("content-length", "")
            if (request.method in ("POST", "PUT", "PATCH") and "json" in request.headers.get("content-type", "")
                    and declared.isdigit() and int(declared) >= OFF_LOOP_BYTES):
                try:
                    body = await request.body()
                except Exception:  # noqa: BLE001 - e.g. past the body limit: FastAPI answers it as always
                    return await handler(request)
                with contextlib.suppress(orjson.JSONDecodeError):
                    request._json = await anyio.to_thread.run_sync(orjson.loads, body)
            return await handler(request)

        return parse_then_handle
