"""Bounds on a request body for the ASGI entry point: its size, the time it may take, and who
may send a large one."""

import asyncio
import json
from collections.abc import Callable

from asgiref.sync import sync_to_async


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BodyNotAllowed(Exception):
    pass


class BoundedRequests:
    """ASGI middleware: refuse a body larger than ``max_bytes`` or slower than ``seconds``, and
    one larger than ``anonymous_bytes`` unless ``may_send(headers)`` (a sync callable, run in
    a worker thread) says the client is signed in: 401 before reading it."""

    def __init__(
        self,
        app,
        max_bytes: int,
        seconds: float,
        anonymous_bytes: int | None = None,
        may_send: Callable[[dict], bool] | None = None,
    ):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds
        self.anonymous_bytes = max_bytes if anonymous_bytes is None else anonymous_bytes
        self.may_send = may_send

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _reply(scope, send, 413, TOO_LARGE)
        allowed: bool | None = None  # asked once, only for a body over anonymous_bytes

        async def may_send_large() -> bool:
            nonlocal allowed
            if allowed is None:
                allowed = self.may_send is None or await sync_to_async(
                    self.may_send, thread_sensitive=False
                )(headers)
            return allowed

        if length.isdigit() and int(length) > self.anonymous_bytes and not await may_send_large():
            return await _reply(scope, send, 401, NOT_SIGNED_IN)
        loop = asyncio.get_running_loop()
        deadline, received, complete = loop.time() + self.seconds, 0, False
        started = False

        async def bounded_receive():
            nonlocal received, complete
            if complete:  # after the body: Django waits for the disconnect, unbounded
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise BodyTooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
                if received > self.anonymous_bytes and not await may_send_large():
                    raise BodyNotAllowed
                complete = not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooSlow:
            if not started:
                await _reply(scope, send, 408, TOO_SLOW)
        except BodyTooLarge:
            if not started:
                await _reply(scope, send, 413, TOO_LARGE)
        except BodyNotAllowed:
            if not started:
                await _reply(scope, send, 401, NOT_SIGNED_IN)


TOO_LARGE = (
    "The request is larger than the upload limit of {mb} MB and was not read. Choose a smaller "
    "file (a JPEG or PNG export of the image)."
)
TOO_SLOW = "The request body arrived too slowly and was not read. Try again on a better connection."
NOT_SIGNED_IN = (
    "Sign in (or send your API token: 'Authorization: Bearer <token>') before uploading: an"
    " upload from someone not signed in is not read."
)


def _page(status: int, message: str) -> bytes:
    """The app's error page for a browser (no request context: nothing about the account)."""
    from django.template.loader import render_to_string

    title, back = {
        413: ("The file is too large", "/"),
        408: ("The upload took too long", "/"),
        401: ("Sign in first", "/account/login"),
    }[status]
    try:
        html = render_to_string(
            "diagnosis/error.html",
            {"title": title, "message": message, "back": back, "plain": True},
        )
    except Exception:  # noqa: BLE001 - the refusal must be answered whatever the templates do
        html = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{message}</p>"
    return html.encode()


async def _reply(scope, send, status: int, message: str) -> None:
    """JSON under /api/, the app's error page elsewhere (a browser's form upload)."""
    from diagnosis import metrics
    from django.conf import settings

    metrics.count_refusal({413: "too_large", 408: "too_slow", 401: "not_signed_in"}[status])
    message = message.format(mb=settings.MAX_UPLOAD_BYTES // 2**20)
    if scope.get("path", "").startswith("/api/"):
        body = json.dumps({"error": {"code": str(status), "message": message}}).encode()
        content_type = b"application/json"
    else:
        body, content_type = _page(status, message), b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
