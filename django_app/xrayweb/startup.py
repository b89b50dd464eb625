"""What every web worker does at start, whichever server runs it (ASGI in production, WSGI for
``runserver`` and tests of the WSGI entry point)."""

import ctypes
import ctypes.util
import os

# onnxruntime (1.2x+) persists a telemetry device id and an event store under
# $XDG_CACHE_HOME/Microsoft/DeveloperTools when it is imported; pointed at a path that cannot be
# written, it keeps an in-memory id and writes nothing (one warning line at start). Set before
# the first import of onnxruntime, which happens when the model loads.
os.environ.setdefault("XDG_CACHE_HOME", "/dev/null")


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


def start_serving() -> None:
    """Load the model now, not on the first request (a clinician never waits for it), and
    start deleting expired held images on a clock."""
    from diagnosis.held import start_purger
    from diagnosis.inference import warm_up

    warm_up()
    start_purger()
