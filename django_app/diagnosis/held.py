"""Images held for a short while, and their deletion on time.

Two things of an upload outlive its request: the metadata-free 512 px display copy (for the
clinician's consent, ``FEEDBACK_HOLD_SECONDS``) and the API's heat map (for its link,
``HEATMAP_HOLD_SECONDS``). Both are rows of ``HeldItem`` with their own expiry: nothing evicts
one early, however many are held (a cache would cull unexpired ones past its ``MAX_ENTRIES``).
Expired rows are never returned, and are deleted on every write, by a thread in each web worker
every ``HELD_PURGE_SECONDS`` whatever the traffic, and by ``manage.py purge_held`` (the release
phase; Heroku Scheduler where dynos sleep).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from diagnosis.models import HeldItem

logger = logging.getLogger(__name__)
_purger: threading.Thread | None = None
_stop = threading.Event()


def hold(key: str, owner_id: int, data: bytes, seconds: int) -> None:
    """Keep ``data`` under ``key`` for the user ``owner_id`` for ``seconds``, and delete
    whatever else has expired."""
    expires = timezone.now() + timedelta(seconds=seconds)
    HeldItem.objects.update_or_create(
        key=key, defaults={"owner_id": owner_id, "data": bytes(data), "expires": expires}
    )
    purge_expired()


def held(key: str, owner_id: int) -> bytes | None:
    """What is held under ``key`` for ``owner_id``; None when there is none, it has expired or
    it is someone else's."""
    item = HeldItem.objects.filter(key=key, owner_id=owner_id, expires__gt=timezone.now()).first()
    return None if item is None else bytes(item.data)


def release(key: str) -> None:
    """Delete what is held under ``key`` now (no longer needed)."""
    HeldItem.objects.filter(key=key).delete()


def purge_expired() -> int:
    """Delete every expired held item; return how many."""
    deleted, _ = HeldItem.objects.filter(expires__lte=timezone.now()).delete()
    return deleted


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
