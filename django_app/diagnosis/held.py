"""Images held for a short while, and their deletion on time.

Two things of an upload outlive its request: the metadata-free 512 px display copy (for the
clinician's consent, ``FEEDBACK_HOLD_SECONDS``) and the API's heat map (for its link, the
cache's ``TIMEOUT``). Both live in the database cache table, and expired rows are deleted on
every write, by a thread in each web worker every ``HELD_PURGE_SECONDS`` whatever the traffic,
and by ``manage.py purge_held`` (the release phase; Heroku Scheduler where dynos sleep).
Django's own culling would keep them until the table held ``MAX_ENTRIES`` rows.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.utils import timezone

logger = logging.getLogger(__name__)
_purger: threading.Thread | None = None
_stop = threading.Event()


def hold(key: str, value, seconds: int | None = None) -> None:
    """Keep ``value`` under ``key`` for ``seconds`` (the cache's TIMEOUT by default), and
    delete whatever else has expired."""
    if seconds is None:
        cache.set(key, value)
    else:
        cache.set(key, value, timeout=seconds)
    purge_expired()


def purge_expired() -> int:
    """Delete every expired row of the cache table; return how many."""
    table = connection.ops.quote_name(settings.CACHES["default"]["LOCATION"])
    now = connection.ops.adapt_datetimefield_value(timezone.now().replace(microsecond=0))
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE expires < %s", [now])
        return cursor.rowcount


def start_purger(interval: float | None = None) -> threading.Thread:
    """A daemon thread deleting expired rows every ``interval`` seconds (one per process)."""
    global _purger
    if _purger is not None and _purger.is_alive():
        return _purger
    interval = settings.HELD_PURGE_SECONDS if interval is None else interval

    def run() -> None:
        while not _stop.is_set():
            try:
                purge_expired()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the thread
                logger.exception("purging expired held images failed; retrying")
            finally:
                close_old_connections()
            _stop.wait(interval)

    _stop.clear()
    _purger = threading.Thread(target=run, name="purge-held-images", daemon=True)
    _purger.start()
    return _purger


def stop_purger() -> None:
    """End the purger thread (tests; a worker's ends with its process)."""
    global _purger
    _stop.set()
    if _purger is not None:
        _purger.join(timeout=5)
    _purger = None
