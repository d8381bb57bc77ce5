"""The API formats as records: the app routes exactly what ``serve/apis.py`` lists, each request to an API's path is
answered in that API's own shapes and counted under its name, and each listing answers from the served model."""

from __future__ import annotations

from pathlib import Path

from starlette.testclient import TestClient

from diffship.serve.apis import API_FORMATS, FORMATS
from diffship.serve.app import create_app
from diffship.serve.service import ImageService, ServeConfig
from diffship.serve.webui_routes import WebUi
from tests.serve.conftest import metric

STARTING = "the service is starting (engines loading or warming up); retry shortly"


def test_api_formats_have_distinct_names_and_routes() -> None:
    assert len(API_FORMATS) == len(FORMATS) == len({(api.method, api.path) for api in FORMATS})
    listed = [listing.path for api in FORMATS for listing in api.listings]
    assert len(set(listed)) == len(listed) and not set(listed) & {api.path for api in FORMATS}


def test_the_app_routes_each_api_format_record_and_answers_in_its_shapes(tmp_path: Path) -> None:
    # A service that has not started: every API request is refused (503) in the API's own error body.
    service = ImageService(ServeConfig(package=tmp_path / "my-model", warmup=False))
    app = create_app(service, manage_backend=False)
    routed = {(route.path, method) for route in app.routes for method in getattr(route, "methods", ()) - {"HEAD"}}
    expected = {(api.path, api.method) for api in FORMATS} | {
        (listing.path, "GET") for api in FORMATS for listing in api.listings}
    web_ui = {(route.path, method) for route in WebUi(service).routes for method in route.methods or ()} - {
        (route.path, "HEAD") for route in WebUi(service).routes}
    assert routed == expected | web_ui | {("/healthz", "GET"), ("/readyz", "GET"), ("/metrics", "GET")}
    with TestClient(app) as client:
        for api in FORMATS:
            answer = client.request(api.method, api.path, content=b'{"prompt": "a"}')
            assert answer.status_code == 503 and answer.json() == api.error(STARTING, "closed"), api.name
            timed = client.request(api.method, api.path, content=b"{}", headers={"X-Request-Timeout": "-1"})
            assert timed.status_code == 422 and timed.json() == api.error(
                "X-Request-Timeout must be a positive number of seconds, got '-1'", "invalid"), api.name
            for listing in api.listings:
                assert client.get(listing.path).json() == listing.answer("my-model")
        metrics = client.get("/metrics").text
    for api in FORMATS:
        assert metric(metrics, "diffship_requests_total", api=api.name, outcome="closed") == 1, api.name
