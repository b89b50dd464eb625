"""Held images (the display copy kept for consent, the API's heat maps) are really gone when
their time is up: deleted on every write, by each worker's purger and by ``purge_held``,
whatever the traffic."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from diagnosis.tests.conftest import logged_in

TABLE = "heatmap_cache"


def rows() -> list[tuple[str, object]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT cache_key, expires FROM {TABLE}")
        return cursor.fetchall()


def backdate(hours: float = 2) -> None:
    """What the clock does: every held row expired ``hours`` ago."""
    past = timezone.now() - timedelta(hours=hours)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET expires = %s", [past])


def upload(client, samples, api: bool = False):
    with open(samples[0], "rb") as f:
        response = client.post("/api/v1/predictions" if api else "/", {"image": f})
    assert response.status_code == 200, response.content[:200]
    return response


@pytest.fixture
def empty_table(db):
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")


def test_an_upload_holds_its_display_copy_and_heat_map(clinician, samples, empty_table):
    client = logged_in(clinician)
    upload(client, samples)
    upload(client, samples, api=True)
    keys = [key for key, _ in rows()]
    assert sum("held-image" in k for k in keys) == 2 and sum("heatmap" in k for k in keys) == 1


def test_expired_held_images_are_deleted_on_the_next_write(clinician, samples, empty_table):
    client = logged_in(clinician)
    upload(client, samples, api=True)
    backdate()
    upload(client, samples)
    assert len(rows()) == 1, "only the new upload's display copy is left"


def test_purge_held_deletes_what_expired_and_keeps_the_rest(clinician, samples, empty_table):
    client = logged_in(clinician)
    upload(client, samples, api=True)
    backdate()
    upload(client, samples)  # fresh: 30 minutes to go
    backdate(hours=-0.25)  # every row still has 15 minutes: nothing to delete yet
    call_command("purge_held")
    assert len(rows()) == 1
    backdate()
    call_command("purge_held")
    assert rows() == []


@pytest.mark.django_db(transaction=True)
def test_each_worker_deletes_expired_images_without_any_traffic(clinician, samples, settings):
    from diagnosis import held

    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    upload(logged_in(clinician), samples, api=True)
    backdate()
    assert len(rows()) == 2
    held.start_purger(interval=0.05)
    try:
        deadline = time.monotonic() + 10
        while rows() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows() == [], "no request came, yet the expired images are gone"
    finally:
        held.stop_purger()
