"""WSGI entry point (gunicorn xrayweb.wsgi). Loads the model at worker start, not on the first
request, so a clinician never waits for it."""

import ctypes
import ctypes.util
import os

from django.core.wsgi import get_wsgi_application


def return_large_buffers_to_the_os(threshold: int = 256 * 1024) -> None:
    """Serve every allocation above ``threshold`` bytes with its own mmap (glibc only).

    A full-size upload is decoded into buffers of several MB; glibc's default raises its mmap
    threshold after the first such buffer is freed and keeps later ones in the heap, so a
    worker's RSS crept up by 8-15% over its first thousand predictions. With a fixed threshold
    they go back to the OS when freed: 118-126 MiB per worker, +1-6% after ~2,900
    predictions, for 5-12% less throughput (docs/benchmarks.md, Web)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name and "libc.so" in libc_name:
        M_MMAP_THRESHOLD = -3  # noqa: N806 (glibc's name)
        ctypes.CDLL(libc_name).mallopt(M_MMAP_THRESHOLD, threshold)


return_large_buffers_to_the_os()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xrayweb.settings")
application = get_wsgi_application()

from diagnosis.held import start_purger  # noqa: E402  (needs the configured settings)
from diagnosis.inference import warm_up  # noqa: E402

warm_up()
start_purger()
