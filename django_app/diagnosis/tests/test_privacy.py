"""Held images (the display copy kept for consent, the API's heat maps) are really gone when
their time is up: deleted on every write, by each worker's purger and by ``purge_held``,
whatever the traffic; and never before it, however many are held."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from diagnosis.held import held, hold
from diagnosis.models import HeldItem
from diagnosis.tests.conftest import logged_in


def rows() -> list[tuple[str, object]]:
    return list(HeldItem.objects.values_list("key", "expires"))


def backdate(hours: float = 2) -> None:
    """What the clock does: every held row expired ``hours`` ago."""
    HeldItem.objects.update(expires=timezone.now() - timedelta(hours=hours))


def upload(client, samples, api: bool = False):
    with open(samples[0], "rb") as f:
        response = client.post("/api/v1/predictions" if api else "/", {"image": f})
    assert response.status_code == 200, response.content[:200]
    return response


@pytest.fixture
def empty_table(db):
    HeldItem.objects.all().delete()


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

    HeldItem.objects.all().delete()
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


def test_nothing_held_is_evicted_before_its_time_however_many_are_held(clinician, empty_table):
    """Under load a cache culls: past 2,000 entries Django's deleted a third of them, unexpired
    ones included, and consent came back "410: 30 minutes passed" after 8 minutes."""
    many = 2_100  # Django's database cache culled past MAX_ENTRIES = 2,000
    for n in range(many):
        hold(f"held-image:{n}", clinician.pk, b"png %d" % n, 1800)
    assert HeldItem.objects.count() == many
    assert held("held-image:0", clinician.pk) == b"png 0", "the oldest is still there"
    assert held(f"held-image:{many - 1}", clinician.pk) == b"png %d" % (many - 1)


def test_what_is_held_is_given_only_to_its_owner_and_only_in_time(clinician, django_user_model):
    other = django_user_model.objects.create_user("other-clinician", password="x")
    hold("heatmap:abc", clinician.pk, b"jpeg", 60)
    assert held("heatmap:abc", other.pk) is None, "someone else's"
    assert held("heatmap:abc", clinician.pk) == b"jpeg"
    backdate(hours=1 / 3600)  # a second past its time, not yet purged
    assert HeldItem.objects.count() == 1 and held("heatmap:abc", clinician.pk) is None


@pytest.mark.django_db(transaction=True)
def test_the_release_drops_the_old_cache_table_with_what_it_held():
    """Before HeldItem, held images lived in the cache table heatmap_cache: the migration
    drops it, so none of them outlives the release."""
    from django.db.migrations.executor import MigrationExecutor

    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS heatmap_cache (cache_key varchar(255))")
        cursor.execute("INSERT INTO heatmap_cache VALUES ('held-image:1')")
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate([("diagnosis", "0004_refusal")])
    executor.loader.build_graph()
    executor.migrate(latest)
    assert "heatmap_cache" not in connection.introspection.table_names()
