"""The production entry point's body bounds (xrayweb.limits.BoundedRequests), driven with real
ASGI messages around a small ASGI app that reads the whole body, as Django's handler does."""

from __future__ import annotations

import asyncio
import json

import pytest
from xrayweb.limits import BoundedRequests


async def read_all(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def call(
    chunks,
    delay=0.0,
    length=None,
    max_bytes=100,
    seconds=1.0,
    path="/api/v1/predictions",
    **bounds,
):
    """Status and body of one request whose body arrives in ``chunks``, ``delay`` s apart."""
    sent, queue = [], list(chunks)

    async def receive():
        await asyncio.sleep(delay)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        sent.append(message)

    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "path": path, "headers": headers}
    asyncio.run(BoundedRequests(read_all, max_bytes, seconds, **bounds)(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def content_type(chunks, **kwargs) -> str:
    sent = []

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": kwargs.pop("path"), "headers": []}
    asyncio.run(BoundedRequests(read_all, 100, 1.0)(scope, receive, send))
    return dict(sent[0]["headers"])[b"content-type"].decode()


def test_a_body_within_the_bounds_reaches_the_app():
    assert call([b"a" * 50, b"b" * 50], length=100) == (200, b"100")


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    status, body = call([b"never read"], length=101)
    assert status == 413 and "upload limit" in json.loads(body)["error"]["message"]


def test_a_streamed_body_over_the_limit_is_refused():
    assert call([b"a" * 60, b"a" * 60])[0] == 413  # chunked: no length declared


@pytest.mark.parametrize("delay", [0.4])
def test_a_body_arriving_too_slowly_is_refused(delay):
    status, body = call([b"a"] * 5, delay=delay, seconds=1.0)
    assert status == 408 and "too slowly" in json.loads(body)["error"]["message"]


def test_a_browser_gets_the_apps_page_not_json():
    """A form upload over the limit (the web page, not the API): the app's error page saying
    what to do, and nothing about an account or a model it cannot know of here."""
    status, body = call([b"never read"], length=11 * 2**20, path="/")
    html = body.decode()
    assert status == 413 and html.lstrip().startswith("<!doctype html>")
    assert "The file is too large" in html and "larger than the upload limit of 10 MB" in html
    assert "Choose a smaller file" in html
    assert "Sign in" not in html and "No model loaded" not in html
    assert content_type([b"a" * 60, b"a" * 60], path="/").startswith("text/html")
    assert content_type([b"a" * 60, b"a" * 60], path="/api/v1/predictions") == "application/json"


class Sender:
    """What decides whether the client is signed in: answers ``signed_in``, counts the asks."""

    def __init__(self, signed_in: bool):
        self.signed_in, self.asked = signed_in, 0

    def __call__(self, headers) -> bool:
        self.asked += 1
        return self.signed_in


def test_a_large_body_from_someone_not_signed_in_is_refused_before_reading():
    anonymous = Sender(False)
    bounds = {"anonymous_bytes": 10, "may_send": anonymous}
    status, body = call([b"never read"], length=50, **bounds)
    assert status == 401 and "Sign in" in json.loads(body)["error"]["message"]
    assert call([b"a" * 30, b"a" * 30], **bounds)[0] == 401, "chunked: no length declared"
    assert call([b"a" * 8], length=8, **bounds) == (200, b"8"), "a small body is read"
    assert anonymous.asked == 2, "asked only for the large bodies, once each"
    signed_in = Sender(True)
    assert call([b"a" * 50], length=50, anonymous_bytes=10, may_send=signed_in) == (200, b"50")
    assert call([b"a" * 30] * 3, anonymous_bytes=10, may_send=signed_in) == (200, b"90")


def test_the_refusal_leads_a_browser_to_the_sign_in_page():
    status, body = call(
        [b"never read"], length=50, path="/", anonymous_bytes=10, may_send=Sender(False)
    )
    html = body.decode()
    assert status == 401 and "Sign in first" in html and 'href="/account/login"' in html
