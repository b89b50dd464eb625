"""ASGI entry point of production: gunicorn with uvicorn workers (Procfile).

The request body is read by the event loop, so a client trickling a form at 10 bytes/s holds a
connection, not a worker: /health and every other request keep being served. Bodies are bounded
in size (413 before reading more than the upload limit), in time (408 when the body takes
longer than ``REQUEST_BODY_SECONDS``) and by sender (401 before reading more than
``ANONYMOUS_BODY_BYTES`` from a client that is not signed in); Django's sync views run as usual.
"""

import os

from django.core.asgi import get_asgi_application

from xrayweb.limits import BoundedRequests
from xrayweb.startup import return_large_buffers_to_the_os, start_serving

return_large_buffers_to_the_os()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")
django_application = get_asgi_application()
start_serving()

from diagnosis.accounts import may_send_a_large_body  # noqa: E402  (needs the apps loaded)
from django.conf import settings  # noqa: E402  (configured above)
from django.db import close_old_connections, connections  # noqa: E402


def _signed_in(headers: dict) -> bool:
    """The session/token check, in a worker thread outside any request: its own database
    connection, opened and closed around the check (a broken or stale one is never reused)."""
    close_old_connections()
    try:
        return may_send_a_large_body(headers)
    finally:
        connections.close_all()


application = BoundedRequests(
    django_application,
    max_bytes=settings.MAX_UPLOAD_BYTES + 1024 * 1024,  # the file and its multipart envelope
    seconds=settings.REQUEST_BODY_SECONDS,
    anonymous_bytes=settings.ANONYMOUS_BODY_BYTES,
    may_send=_signed_in,
)
