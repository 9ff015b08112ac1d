"""Bearer tokens on every route: 401 without (or with a wrong) token, 403 for the read
token on admin routes, open routes under --insecure-dev only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_hub.api import ApiConfig, create_app
from cloud_hub.api.auth import token_access
from cloud_hub.pipeline.build import DEFAULT_VERSION
from cloud_hub.store import open_store
from shared.errors import ConfigError
from tests.cloud_hub.api.conftest import ADMIN_TOKEN, JOB_ID, READ_TOKEN, Hub
from tests.cloud_hub.api.server import live_server

pytestmark = pytest.mark.timeout(30)

ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/{device}"),
    ("GET", "/v1/devices/{device}/telemetry"),
    ("GET", "/v1/devices/{device}/baseline"),
    ("GET", "/v1/devices/{device}/desired"),
    ("PUT", "/v1/devices/{device}/desired"),
    ("GET", "/v1/events"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}/{version}"),
    ("GET", "/v1/models/{name}/{version}/artifact"),
    ("GET", "/v1/models/{name}/{version}/signature"),
    ("GET", "/v1/models/{name}/{version}/files/{path}"),
    ("GET", "/v1/models/{name}/{version}/record"),
    ("POST", "/v1/models/{name}/{version}/stage"),
    ("POST", "/v1/models"),
    ("GET", "/v1/stats/ingest"),
    ("GET", "/v1/dead-letters"),
    ("POST", "/v1/predict"),
    ("POST", "/v1/batch/jobs"),
    ("GET", "/v1/batch/jobs"),
    ("GET", "/v1/batch/jobs/{job_id}"),
    ("GET", "/v1/batch/jobs/{job_id}/result"),
    ("GET", "/v1/rollouts"),
    ("POST", "/v1/rollouts"),
    ("GET", "/v1/rollouts/{rollout_id}"),
    ("POST", "/v1/rollouts/{rollout_id}/{what}"),
    ("GET", "/v1/labels"),
    ("POST", "/v1/labels"),
    ("GET", "/v1/pipeline/runs"),
    ("POST", "/v1/pipeline/runs"),
    ("GET", "/v1/pipeline/runs/{run_id}"),
    ("GET", "/v1/drift"),
    ("GET", "/v1/devices/{device}/drift"),
    ("GET", "/v1/fleet"),
    ("GET", "/v1/devices/{device}/series"),
    ("GET", "/v1/devices/{device}/ota"),
    ("POST", "/v1/session/codes"),
    ("POST", "/v1/session/exchange"),
}
"""Every route of the API, as OpenAPI lists it (HEAD of the artifact is served too)."""
ADMIN_ROUTES = {
    ("GET", "/v1/dead-letters"),
    ("POST", "/v1/labels"),
    ("POST", "/v1/pipeline/runs"),
    ("POST", "/v1/rollouts"),
    ("POST", "/v1/rollouts/{rollout_id}/{what}"),
    ("PUT", "/v1/devices/{device}/desired"),
    ("POST", "/v1/models/{name}/{version}/stage"),
    ("POST", "/v1/models"),
    ("POST", "/v1/batch/jobs"),
    ("GET", "/v1/batch/jobs"),
    ("GET", "/v1/batch/jobs/{job_id}"),
    ("GET", "/v1/batch/jobs/{job_id}/result"),
    ("POST", "/v1/session/codes"),
}
# The exchange's body (a one-time code) is its credential.
OPEN_ROUTES = {("GET", "/healthz"), ("POST", "/v1/session/exchange")}
_SAMPLE = {
    "device": "pi-online",
    "name": "machine-heavy",
    "version": DEFAULT_VERSION,
    "job_id": JOB_ID,
    "path": "model.onnx",
    "rollout_id": "no-such-rollout",
    "what": "pause",
    "run_id": "no-such-run",
}
_BODIES: dict[str, Any] = {
    "/v1/predict": {"model": "machine-heavy", "features": [[0.0] * 32]},
    "/v1/batch/jobs": {"devices": ["pi-online"], "from": 0, "model": "machine-heavy"},
    "/v1/models/{name}/{version}/stage": {"stage": "canary", "reason": "auth test"},
    # Not a zip: past the token check, the upload is refused as such (422).
    "/v1/models": {"not": "a zip"},
    "/v1/devices/{device}/desired": {"model": "machine-edge", "version": DEFAULT_VERSION},
    "/v1/rollouts": {"model": "machine-edge", "version": DEFAULT_VERSION},
    "/v1/rollouts/{rollout_id}/{what}": {"reason": "auth test"},
    # A class the model does not have: refused after the token check, nothing stored.
    "/v1/labels": {"device": "pi-online", "from": 0, "to": 1, "class": "auth-test"},
    "/v1/pipeline/runs": {"model": "machine-edge", "window": {"from": 0, "to": 1}},
    "/v1/session/codes": {"access": "read"},
    "/v1/session/exchange": {"code": "no-such-code"},
}
_AFTER_AUTH = {
    ("POST", "/v1/models"): 422,
    # The test hub has no broker link to send desired state with; none is set.
    ("PUT", "/v1/devices/{device}/desired"): 503,
    ("GET", "/v1/devices/{device}/desired"): 404,
    # The test hub runs no rollouts, and there is none by that id.
    ("POST", "/v1/rollouts"): 503,
    ("GET", "/v1/rollouts/{rollout_id}"): 404,
    ("POST", "/v1/rollouts/{rollout_id}/{what}"): 503,
    ("POST", "/v1/labels"): 422,
    # The test hub runs no pipeline, and there is no run by that id.
    ("POST", "/v1/pipeline/runs"): 503,
    ("GET", "/v1/pipeline/runs/{run_id}"): 404,
    # Not a code the hub issued.
    ("POST", "/v1/session/exchange"): 400,
}
"""Routes whose request above is refused after the token check, with this status."""


def _calls() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, route, request kwargs with a concrete ``path``) for every route, HEAD included."""
    routes = sorted(
        ROUTES
        | {
            ("HEAD", "/v1/models/{name}/{version}/artifact"),
            ("HEAD", "/v1/models/{name}/{version}/files/{path}"),
        }
    )
    calls = []
    for method, template in routes:
        kwargs: dict[str, Any] = {"path": template.format(**_SAMPLE)}
        if method in ("POST", "PUT"):
            kwargs["json_body"] = _BODIES[template]
        calls.append((method, template, kwargs))
    return calls


def test_openapi_lists_every_route(hub: Hub) -> None:
    spec = hub.anon.get("/openapi.json").json()
    listed = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert listed == ROUTES


def test_every_non_health_route_needs_a_token(hub: Hub) -> None:
    for method, template, kw in _calls():
        if (method, template) in OPEN_ROUTES:
            continue
        path = kw.pop("path")
        reply = hub.anon.request(method, path, **kw)
        assert reply.status == 401, (method, path, reply.body)
        assert reply.headers["www-authenticate"].startswith("Bearer"), (method, path)
        if method != "HEAD":
            assert "Authorization: Bearer" in reply.detail


def test_a_wrong_token_or_scheme_is_401_with_a_reason(hub: Hub) -> None:
    for method, template, kw in _calls():
        if (method, template) in OPEN_ROUTES or method == "HEAD":
            continue
        path = kw.pop("path")
        reply = hub.anon.with_token("not-" + READ_TOKEN).request(method, path, **kw)
        assert reply.status == 401, (method, path)
        assert 'error="invalid_token"' in reply.headers["www-authenticate"]
        assert "not one of this hub's tokens" in reply.detail
    basic = hub.anon.get("/v1/devices", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status == 401 and "'Basic'" in basic.detail and "Bearer" in basic.detail
    assert "dXNlcjpwYXNz" not in basic.body.decode()


@pytest.mark.parametrize(
    ("header", "says"),
    [
        (READ_TOKEN, "no scheme"),
        (f"{READ_TOKEN} {READ_TOKEN}", "does not start with 'Bearer '"),
        ("Bearer", "no token after it"),
        (f"Basic {READ_TOKEN}", "'Basic'"),
    ],
    ids=["bare-token", "two-words", "bearer-alone", "basic"],
)
def test_a_header_without_bearer_never_echoes_the_credentials(
    hub: Hub, header: str, says: str
) -> None:
    reply = hub.anon.get("/v1/devices", headers={"Authorization": header})
    assert reply.status == 401
    assert says in reply.detail and "Authorization: Bearer <token>" in reply.detail
    body = reply.body.decode() + str(reply.headers)
    # No piece of the token, however short, comes back.
    assert not any(READ_TOKEN[i : i + 6] in body for i in range(len(READ_TOKEN) - 5)), body


def test_read_token_is_refused_on_admin_routes_and_admin_token_passes(hub: Hub) -> None:
    for method, template, kw in _calls():
        path = kw.pop("path")
        as_read = hub.read.request(method, path, **kw)
        as_admin = hub.admin.request(method, path, **kw)
        want = _AFTER_AUTH.get((method, template))
        if (method, template) in ADMIN_ROUTES:
            assert as_read.status == 403, (method, path)
            assert "admin token" in as_read.detail
        elif want is not None:
            assert as_read.status == want, (method, path, as_read.body[:300])
        else:
            assert as_read.status in (200, 206), (method, path, as_read.body[:300])
        if want is not None:
            assert as_admin.status == want, (method, path, as_admin.body[:300])
        else:
            assert as_admin.status in (200, 201, 202, 206), (method, path, as_admin.body[:300])


def test_health_needs_no_token(hub: Hub) -> None:
    reply = hub.anon.get("/healthz")
    assert reply.status == 200
    body = reply.json()
    assert body["status"] == "ok" and body["store"] == "ok" and body["auth"] == "tokens"


def test_token_access_rules() -> None:
    both = ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN)
    assert token_access(both, ADMIN_TOKEN) == "admin"
    assert token_access(both, READ_TOKEN) == "read"
    assert token_access(both, READ_TOKEN[:-1]) is None
    assert token_access(both, None) is None
    open_all = ApiConfig(read_token=None, admin_token=None, insecure_dev=True)
    assert token_access(open_all, None) == "admin"
    assert token_access(open_all, "anything") == "admin"
    open_read = ApiConfig(read_token=None, admin_token=ADMIN_TOKEN, insecure_dev=True)
    assert token_access(open_read, None) == "read"
    assert token_access(open_read, ADMIN_TOKEN) == "admin"
    assert token_access(open_read, "typo") is None


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"read_token": None, "admin_token": None}, "insecure_dev"),
        ({"read_token": READ_TOKEN, "admin_token": None}, "admin_token missing"),
        ({"read_token": READ_TOKEN, "admin_token": READ_TOKEN}, "must differ"),
        ({"read_token": "has space", "admin_token": ADMIN_TOKEN}, "whitespace"),
        ({"read_token": READ_TOKEN, "admin_token": None, "insecure_dev": True}, "admin_token"),
        ({"read_token": READ_TOKEN, "admin_token": ADMIN_TOKEN, "max_page": 0}, "max_page"),
    ],
)
def test_config_refuses_senseless_access_rules(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ApiConfig(**kwargs)


def test_insecure_dev_without_tokens_opens_everything_and_says_so(hub: Hub) -> None:
    store = hub.app.state.edgeloop.store
    app = create_app(store, ApiConfig(read_token=None, admin_token=None, insecure_dev=True))
    with live_server(app) as client:
        assert client.get("/v1/devices").status == 200
        assert client.get("/v1/dead-letters").status == 200
        assert client.get("/healthz").json()["auth"] == "open"
        description = client.get("/openapi.json").json()["info"]["description"]
        assert "every route is open" in description


def test_docs_and_openapi_describe_the_api_and_its_tokens(hub: Hub) -> None:
    spec = hub.anon.get("/openapi.json").json()
    assert spec["info"]["title"] == "edgeloop hub API" and spec["info"]["version"]
    assert "read token" in spec["info"]["description"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    predict = spec["paths"]["/v1/predict"]["post"]
    assert {"401", "404", "413", "422"} <= set(predict["responses"])
    assert predict["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    docs = hub.anon.get("/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower()


def test_a_failing_store_is_503_on_healthz_and_500_elsewhere(hub: Hub, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'closed.db'}")
    store.close()
    app = create_app(store, ApiConfig(read_token=READ_TOKEN, admin_token=ADMIN_TOKEN))
    with live_server(app) as anon:
        client = anon.with_token(READ_TOKEN)
        health = client.get("/healthz")
        assert health.status == 503
        body = health.json()
        assert body["status"] == "degraded" and body["store"] == "unreachable"
        assert "StoreError" in body["detail"]
        reply = client.get("/v1/devices")
        assert reply.status == 500
        assert "GET /v1/devices" in reply.detail and "hub's log" in reply.detail
