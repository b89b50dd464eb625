"""Bounds on a request body for the ASGI entry point: its size and the time it may take."""

import asyncio
import json


class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class BoundedRequests:
    """ASGI middleware: refuse a body larger than ``max_bytes`` or slower than ``seconds``."""

    def __init__(self, app, max_bytes: int, seconds: float):
        self.app, self.max_bytes, self.seconds = app, max_bytes, seconds

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _reply(scope, send, 413, TOO_LARGE)
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


TOO_LARGE = (
    "The request is larger than the upload limit of {mb} MB and was not read. Choose a smaller "
    "file (a JPEG or PNG export of the image)."
)
TOO_SLOW = "The request body arrived too slowly and was not read. Try again on a better connection."


def _page(status: int, message: str) -> bytes:
    """The app's error page for a browser (no request context: nothing about the account)."""
    from django.template.loader import render_to_string

    title = "The file is too large" if status == 413 else "The upload took too long"
    try:
        html = render_to_string(
            "diagnosis/error.html",
            {"title": title, "message": message, "back": "/", "plain": True},
        )
    except Exception:  # noqa: BLE001 - the refusal must be answered whatever the templates do
        html = f"<!doctype html><title>{title}</title><h1>{title}</h1><p>{message}</p>"
    return html.encode()


async def _reply(scope, send, status: int, message: str) -> None:
    """JSON under /api/, the app's error page elsewhere (a browser's form upload)."""
    from django.conf import settings

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
