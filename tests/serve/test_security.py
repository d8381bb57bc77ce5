"""Who may talk to the service (serve/security.py), on a real server on localhost: the official openai client with
its key, HTTP basic auth as web UI clients send it, 401 without; /healthz open, /metrics by choice; cross-origin
requests (a text/plain "simple" POST included) refused unless allow-listed; a Host not served refused (DNS
rebinding); the keys file and the CLI's warning."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from diffship.runtime import Pipeline
from diffship.serve.security import SecurityError, SecurityPolicy, load_keys, parse_basic
from tests.conftest import run_cli
from tests.serve.conftest import metric, running_service

KEY = "sk-test-0123456789"
POLICY = SecurityPolicy(api_keys=frozenset({KEY}), basic=frozenset({"me:secret"}),
                        cors_origins=("https://app.example",), allowed_hosts=("localhost", "127.0.0.1", "::1"))
BODY = {"prompt": "a fox", "size": "64x64", "steps": 1}


def test_the_openai_client_with_its_key_generates_and_without_is_refused(serve_pipe: Pipeline,
                                                                         tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, security=POLICY) as (url, _):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        response = client.images.generate(prompt="a fox", size="64x64", response_format="b64_json",
                                          extra_body={"steps": 1})
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="missing or wrong credentials"):
            wrong.images.generate(prompt="a fox", size="64x64", response_format="b64_json")
    assert response.data is not None and len(response.data) == 1


def test_basic_auth_as_the_web_ui_takes_it_and_the_open_routes(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, security=POLICY) as (url, service):
        body = {"prompt": "a fox", "steps": 1, "width": 64, "height": 64}
        basic = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=("me", "secret"), timeout=60)
        wrong = httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=("me", "guess"))
        anonymous = httpx.get(f"{url}/sdapi/v1/samplers")
        health = httpx.get(f"{url}/healthz")
        metrics = httpx.get(f"{url}/metrics")
    assert basic.status_code == 200, basic.text
    assert wrong.status_code == anonymous.status_code == metrics.status_code == 401
    assert "Basic" in wrong.headers["www-authenticate"] and wrong.json()["detail"].startswith("missing or wrong")
    assert health.status_code == 200
    assert metric(service.metrics_text().decode(), "diffship_requests_total", api="a1111", outcome="ok") == 1


def test_metrics_can_be_public(serve_pipe: Pipeline, tiny_package: Path) -> None:
    policy = SecurityPolicy(api_keys=frozenset({KEY}), public_metrics=True)
    with running_service(serve_pipe, tiny_package, security=policy) as (url, _):
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 401


def test_cross_origin_requests_need_the_allow_list(serve_pipe: Pipeline, tiny_package: Path) -> None:
    bearer = {"authorization": f"Bearer {KEY}"}
    with running_service(serve_pipe, tiny_package, security=POLICY) as (url, service):
        simple = httpx.post(f"{url}/v1/images/generations", content=b'{"prompt": "a fox", "size": "64x64"}',
                            headers={"origin": "https://evil.example", "content-type": "text/plain", **bearer})
        preflight = httpx.options(f"{url}/v1/images/generations", headers={
            "origin": "https://app.example", "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        refused_preflight = httpx.options(f"{url}/v1/images/generations", headers={
            "origin": "https://evil.example", "access-control-request-method": "POST"})
        allowed = httpx.post(f"{url}/v1/images/generations", json=BODY, timeout=60,
                             headers={"origin": "https://app.example", **bearer})
        generated = metric(service.metrics_text().decode(), "diffship_requests_total", api="openai", outcome="ok")
    assert simple.status_code == 403 and "evil.example" in simple.json()["error"]["message"]
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert refused_preflight.status_code == 403
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert generated == 1  # only the allowed one generated


def test_a_host_not_served_is_refused(serve_pipe: Pipeline, tiny_package: Path) -> None:
    with running_service(serve_pipe, tiny_package, security=POLICY) as (url, _):
        rebound = httpx.get(f"{url}/healthz", headers={"host": "attacker.example:8000"})
        local = httpx.get(f"{url}/healthz")
    assert rebound.status_code == 400 and "attacker.example" in rebound.json()["detail"]
    assert local.status_code == 200


def test_keys_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# service keys\nsk-one\n\n  sk-two  \n")
    assert load_keys(keys, {"DIFFSHIP_API_KEYS": "sk-three, sk-four"}) == {"sk-one", "sk-two", "sk-three", "sk-four"}
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(SecurityError, match="holds no key"):
        load_keys(tmp_path / "empty", {})
    with pytest.raises(SecurityError, match="user:password"):
        parse_basic(("nopassword",))
    assert parse_basic(("a:1,b:2",)) == {"a:1", "b:2"}


def test_serve_refuses_an_empty_key_file_in_one_line(tmp_path: Path, tiny_package: Path) -> None:
    (tmp_path / "keys").write_text("\n")
    result = run_cli("serve", "--package", str(tiny_package), "--api-key-file", str(tmp_path / "keys"))
    assert result.returncode == 2 and result.stderr.startswith("error:") and "holds no key" in result.stderr
