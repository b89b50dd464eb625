"""Who may see what, for every page and API route: anonymous, another clinician, the owner, staff.

Predictions are made through the real API by the owner first, so every route has something to
show (a prediction, its feedback form, its heat map)."""

from __future__ import annotations

import pytest
from django.test import Client

from diagnosis.models import Prediction
from diagnosis.tests.conftest import logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(clinician, other_clinician, staff, samples):
    owner = logged_in(clinician)
    with open(samples[0], "rb") as f:
        made = owner.post("/api/v1/predictions", {"image": f}).json()
    return {
        "owner": owner,
        "other": logged_in(other_clinician),
        "staff": logged_in(staff),
        "anonymous": Client(),
        "id": made["id"],
        "heatmap": made["heatmap_url"].split("testserver", 1)[1],
    }


PUBLIC = ["/", "/model", "/health"]


@pytest.mark.parametrize("who", ["anonymous", "other", "owner", "staff"])
def test_public_pages_are_public(world, who):
    for path in PUBLIC:
        assert world[who].get(path).status_code == 200, path
    signed_in = world[who].get("/account/login")
    assert signed_in.status_code == (200 if who == "anonymous" else 302)  # already signed in


# path -> expected status for (anonymous, other clinician, owner, staff); "login" = redirect
PAGES = {
    "/history": ("login", 200, 200, 200),
    "/predictions/{id}": ("login", 404, 200, 200),
    "/monitoring": ("login", 403, 403, 200),
    "/account/tokens": ("login", 200, 200, 200),
    "/account/password": ("login", 200, 200, 200),
    "/admin/": ("admin-login", "admin-login", "admin-login", 200),
    "/admin/diagnosis/prediction/": ("admin-login",) * 3 + (200,),
    "/admin/diagnosis/feedback/": ("admin-login",) * 3 + (200,),
    "/admin/auth/user/": ("admin-login",) * 3 + (200,),
}


@pytest.mark.parametrize("path", list(PAGES))
@pytest.mark.parametrize("who", ["anonymous", "other", "owner", "staff"])
def test_pages(world, path, who):
    expected = PAGES[path][["anonymous", "other", "owner", "staff"].index(who)]
    response = world[who].get(path.format(id=world["id"]))
    if expected == "login":
        assert response.status_code == 302 and response["Location"].startswith("/account/login")
    elif expected == "admin-login":
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    else:
        assert response.status_code == expected


def test_history_pages_show_only_what_the_user_may_see(world, clinician):
    own = world["owner"].get("/history").content.decode()
    other = world["other"].get("/history").content.decode()
    staff = world["staff"].get("/history").content.decode()
    link = f'href="/predictions/{world["id"]}"'
    assert link in own and link in staff and link not in other
    assert "dr_ada" in staff  # staff see who made it


def test_api_routes(world):
    pid, heatmap = world["id"], world["heatmap"]
    for who, detail, heat, listed in (
        ("other", 404, 404, 0),
        ("owner", 200, 200, 1),
        ("staff", 200, 404, 1),
    ):
        client = world[who]
        assert client.get(f"/api/v1/predictions/{pid}").status_code == detail, who
        assert client.get(heatmap).status_code == heat, who  # heat maps: their maker only
        assert client.get("/api/v1/predictions").json()["count"] == listed, who
    anonymous = world["anonymous"]
    for path in ("/api/v1/predictions", f"/api/v1/predictions/{pid}", heatmap):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post(f"/api/v1/predictions/{pid}/feedback").status_code == 401


def test_feedback_routes(world):
    pid = world["id"]
    body = {"true_label": "NORMAL", "consent": False}
    api = lambda who: world[who].post(  # noqa: E731
        f"/api/v1/predictions/{pid}/feedback", body, content_type="application/json"
    )
    other = api("other")
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    staff = api("staff")
    assert staff.status_code == 403 and staff.json()["error"]["code"] == "not_yours"
    page = world["other"].post(f"/predictions/{pid}/feedback", {"true_label": "NORMAL"})
    assert page.status_code == 404
    anonymous = world["anonymous"].post(f"/predictions/{pid}/feedback", {"true_label": "NORMAL"})
    assert anonymous.status_code == 302 and "/account/login" in anonymous["Location"]
    assert not hasattr(Prediction.objects.get(pk=pid), "feedback")  # nobody else's counted
    assert api("owner").status_code == 201


def test_anonymous_uploads_are_sent_to_sign_in(world, samples):
    with open(samples[0], "rb") as f:
        response = world["anonymous"].post("/", {"image": f})
    assert response.status_code == 302 and response["Location"].startswith("/account/login")
    assert Prediction.objects.count() == 1  # only the owner's from the fixture
