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
            return await _reply(send, 413, "The request is larger than the upload limit.")
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
                await _reply(send, 408, "The request body arrived too slowly.")
        except BodyTooLarge:
            if not started:
                await _reply(send, 413, "The request is larger than the upload limit.")


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": {"code": str(status), "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
