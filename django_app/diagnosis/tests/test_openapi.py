"""The API's OpenAPI document is valid, names every API route and method the app has (and no
other), and the app's real answers match it: success, refusals and errors. Its fuzzing against
the packaged app under gunicorn is in test_deploy.py (schemathesis)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import URLPattern, get_resolver
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate

from diagnosis.models import ApiToken
from diagnosis.tests.conftest import METRICS, SIZE
from tests.bundles import make_bundle

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")
# Django's path parameters under the spec's names
PARAMETER_NAMES = {"pk": "id"}


@pytest.fixture(scope="session")
def bundle_dir(torch_model, tmp_path_factory):
    """A served bundle with its guard, so that refusals are real (conftest's served_model)."""
    return make_bundle(
        torch_model, SIZE, tmp_path_factory.mktemp("guarded") / "bundle", METRICS, guard=True
    )


@pytest.fixture
def document(client):
    response = client.get("/api/v1/openapi.json")  # no token: the description is public
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return response.json()


def api(user) -> Client:
    _, raw = ApiToken.issue(user, "openapi tests")
    return Client(headers={"Authorization": f"Bearer {raw}"})


def spec_path(route: str) -> str:
    """``api/v1/predictions/<int:pk>`` as the spec writes it: ``/api/v1/predictions/{id}``."""
    return "/" + re.sub(
        r"<(?:\w+:)?(\w+)>", lambda m: "{" + PARAMETER_NAMES.get(m[1], m[1]) + "}", route
    )


def api_routes() -> set[str]:
    routes = set()
    for pattern in get_resolver().url_patterns:
        if isinstance(pattern, URLPattern):
            route = str(pattern.pattern)
            if route.startswith("api/") or route == "health":
                routes.add(spec_path(route))
    return routes - {"/api/v1/openapi.json"}


def check(document: dict, path: str, method: str, response) -> None:
    """``response`` is one the spec lists for this operation, with its content type and body."""
    operation = document["paths"][path][method]
    status = str(response.status_code)
    assert status in operation["responses"], f"{method.upper()} {path} answered {status}"
    declared = operation["responses"][status]
    content_type = response["Content-Type"].split(";")[0]
    assert content_type in declared.get("content", {}), (path, status, content_type)
    if content_type == "application/json":
        pointer = "/".join(
            ["#/paths", path.replace("/", "~1"), method, "responses", status, "content"]
        )
        schema = {**document, "$ref": f"{pointer}/application~1json/schema"}
        errors = list(
            Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(
                response.json()
            )
        )
        assert not errors, [e.message for e in errors]
    for header in declared.get("headers", {}):
        assert response.has_header(header), (path, status, header)


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "http://testserver"}]


def test_it_names_every_api_route_and_no_other(document):
    assert set(document["paths"]) == api_routes()


def test_methods_it_does_not_name_are_405_with_the_allow_header_it_names(document, clinician):
    client = api(clinician)
    concrete = {"{id}": "1", "{token}": "abc"}
    for path, operations in document["paths"].items():
        url = path
        for name, value in concrete.items():
            url = url.replace(name, value)
        named = sorted(m.upper() for m in operations if m in METHODS)
        for method in (*METHODS, "query"):  # QUERY: the newest method, unknown to Django
            if method in operations:
                continue
            response = client.generic(method.upper(), url)
            assert response.status_code == 405, (method, path, response.status_code)
            allowed = sorted(m.strip() for m in response["Allow"].split(","))
            assert allowed == named or allowed == sorted({*named, "HEAD"}), (path, allowed)
            if path.startswith("/api/"):
                check(document, path, named[0].lower(), response)
                assert response.json()["error"]["code"] == "method_not_allowed"


def test_real_answers_match_it(document, clinician, other_clinician, staff, samples):
    client = api(clinician)
    check(document, "/health", "get", client.get("/health"))
    listing = "/api/v1/predictions"
    with open(samples[0], "rb") as f:
        made = client.post(listing, {"image": f, "case_reference": "ward 3 bed 2"})
    check(document, listing, "post", made)
    pk, heatmap = made.json()["id"], made.json()["heatmap_url"]
    check(document, listing, "get", client.get(listing))
    check(document, listing, "get", client.get(listing, {"label": "NORMAL", "page": "3"}))
    for bad in ({"label": "maybe"}, {"date_from": "yesterday"}, {"page": "0"}, {"page": "x"}):
        answer = client.get(listing, bad)
        assert answer.status_code == 400, bad
        check(document, listing, "get", answer)
    check(document, listing, "get", Client().get(listing))  # no token: 401
    check(document, listing, "post", client.post(listing, {}))  # no file: 400
    with open(__file__, "rb") as f:
        check(document, listing, "post", client.post(listing, {"image": f}))  # not an image
    one = "/api/v1/predictions/{id}"
    check(document, one, "get", client.get(f"/api/v1/predictions/{pk}"))
    check(document, one, "get", api(other_clinician).get(f"/api/v1/predictions/{pk}"))  # 404
    check(document, one, "get", client.get("/api/v1/predictions/99999999999999999999"))
    feedback = "/api/v1/predictions/{id}/feedback"
    url = f"/api/v1/predictions/{pk}/feedback"
    json = "application/json"
    check(document, feedback, "post", client.post(url, "[1]", content_type=json))  # 400
    check(document, feedback, "post", client.post(url, {"true_label": "X"}, content_type=json))
    given = client.post(url, {"true_label": "NORMAL", "consent": False}, content_type=json)
    assert given.status_code == 201
    check(document, feedback, "post", given)
    check(document, feedback, "post", client.post(url, {"true_label": "NORMAL"}, content_type=json))
    check(document, "/api/v1/drift", "get", client.get("/api/v1/drift"))  # not staff: 403
    check(document, "/api/v1/drift", "get", Client().get("/api/v1/drift"))  # 401
    check(document, "/api/v1/drift", "get", api(staff).get("/api/v1/drift"))  # 200
    map_path = "/api/v1/heatmaps/{token}.jpg"
    check(document, map_path, "get", client.get(heatmap.removeprefix("http://testserver")))
    check(document, map_path, "get", client.get("/api/v1/heatmaps/gone.jpg"))  # 404


def test_a_refusal_matches_it(document, clinician):
    """A uniform image is no chest X-ray: 422 with the refusal's record."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (512, 512), 128).save(buffer, "PNG")
    buffer.seek(0)
    buffer.name = "flat.png"
    refused = api(clinician).post("/api/v1/predictions", {"image": buffer})
    assert refused.status_code == 422
    check(document, "/api/v1/predictions", "post", refused)
