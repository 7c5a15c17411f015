"""One error body for every source of errors (API.md, "Errors")."""

import logging
import re

import pytest

from tests.conftest import STRONG_PASSWORD, assert_error


def test_unknown_route_is_404(client):
    assert_error(client.get("/api/v1/no-such-thing"), 404, "not_found")


def test_wrong_method_is_405_with_allow_header(client):
    response = client.delete("/api/v1/auth/login")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}


def test_malformed_space_id_is_404(client):
    alice = client.user("alice@example.com")
    assert_error(client.get("/api/v1/spaces/not-a-uuid", headers=alice.headers), 404)


def test_json_body_over_the_limit_is_413(client):
    alice = client.user("alice@example.com")
    body = '{"name": "' + "x" * (2 * 1024 * 1024) + '"}'
    response = client.post("/api/v1/spaces", data=body, content_type="application/json", headers=alice.headers)
    assert_error(response, 413, "payload_too_large")


def test_non_json_body_is_415(client):
    alice = client.user("alice@example.com")
    response = client.post("/api/v1/spaces", data="name=Research", headers=alice.headers,
                           content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_invalid_json_is_400(client):
    response = client.post("/api/v1/auth/login", data="{not json", content_type="application/json")
    assert_error(response, 400, "invalid_json")


def required_json_bodies(spec):
    """(method, path) of every operation whose spec says it takes a required JSON body."""
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            body = operation.get("requestBody") if isinstance(operation, dict) else None
            if body and body.get("required") and "application/json" in body["content"]:
                yield method.upper(), path


@pytest.mark.parametrize("content_type", [None, "application/json"])
def test_a_required_json_body_that_is_missing_is_400_everywhere(client, content_type):
    """The spec marks these bodies required; an operation whose fields are all optional
    (PATCH /spaces/{space_id}) answered 200 to a request without one."""
    alice = client.user("alice@example.com")
    space = client.space(alice)
    spec = client.get("/api/v1/openapi.json").json
    operations = sorted(required_json_bodies(spec))
    assert ("PATCH", "/api/v1/spaces/{space_id}") in operations and len(operations) >= 15, operations
    for method, path in operations:
        url = re.sub(r"\{\w+\}", space["id"], path)  # the one id that exists; 400 comes first anyway
        response = client.open(url, method=method, headers=alice.headers, content_type=content_type)
        assert response.status_code == 400, (method, path, response.status_code, response.json)
        assert_error(response, 400, "invalid_json")
        assert "400" in spec["paths"][path][method.lower()]["responses"], f"{method} {path} does not document 400"
    renamed = client.patch(f"/api/v1/spaces/{space['id']}", json={}, headers=alice.headers)
    assert renamed.status_code == 200 and renamed.json["name"] == space["name"]  # an empty object is a body


def test_validation_errors_are_422_per_field(client):
    response = client.post("/api/v1/auth/register", json={"email": "not-an-email", "password": 5})
    body = assert_error(response, 422, "validation_error")
    assert set(body["errors"]) == {"email", "password", "name"}
    assert all(isinstance(v, list) and v for v in body["errors"].values())


def test_unknown_field_is_422(client):
    response = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "x", "admin": True})
    assert "admin" in assert_error(response, 422, "validation_error")["errors"]


def test_body_that_is_not_an_object_is_422(client):
    assert_error(client.post("/api/v1/auth/login", json=["a", "b"]), 422, "validation_error")


def test_missing_token_is_401(client):
    response = client.get("/api/v1/auth/me")
    assert_error(response, 401, "token_missing")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_malformed_token_is_401_not_422(client):
    for header in ("Bearer", "Bearer abc", "Bearer a.b.c", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 5000):
        assert_error(client.get("/api/v1/auth/me", headers={"Authorization": header}), 401)


def test_forbidden_is_403(client):
    alice, bob = client.user("alice@example.com"), client.user("bob@example.com")
    space = client.space(alice)
    client.member(alice, space["id"], bob, "viewer")
    response = client.delete(f"/api/v1/spaces/{space['id']}", headers=bob.headers)
    assert_error(response, 403, "forbidden")


def test_conflict_is_409(client):
    client.register("alice@example.com")
    response = client.post("/api/v1/auth/register",
                           json={"email": "ALICE@example.com", "password": STRONG_PASSWORD, "name": "A"})
    assert_error(response, 409, "email_taken")


def test_rate_limit_is_429_with_retry_after(make_app):
    client = make_app(LOGIN_RATE_LIMIT="2 per minute").test_client()
    for _ in range(2):
        client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "wrong"})
    response = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": "wrong"})
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


def test_unexpected_error_is_500_without_internals(make_app, caplog):
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    def explode():
        raise RuntimeError("secret internals: postgresql://user:hunter2@db")

    app.add_url_rule("/api/v1/explode", view_func=explode)
    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/api/v1/explode")
    body = assert_error(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "hunter2" not in text and "RuntimeError" not in text and "Traceback" not in text
    assert body["errors"] == {}
    assert any("hunter2" in str(r.exc_info) for r in caplog.records if r.exc_info), "the error is logged"


def test_a_database_pool_that_stays_busy_is_503_with_retry_after(make_app):
    """Every pooled connection checked out for longer than pool_timeout (an overloaded
    worker): the request gets 503 database_busy, not a 500."""
    app = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2})
    from tests.conftest import ApiClient

    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com")
    with app.app_context():
        from spacio.extensions import db

        held = db.engine.connect()  # the only connection of the pool
        try:
            response = client.get("/api/v1/spaces", headers=alice.headers)
        finally:
            held.close()
    assert_error(response, 503, "database_busy")
    assert response.headers["Retry-After"] == "1"
    assert client.get("/api/v1/spaces", headers=alice.headers).status_code == 200  # served again once free


def test_mail_failure_is_503_and_keeps_nothing(make_app, unused_port):
    app = make_app(MAIL_URL=f"smtp://127.0.0.1:{unused_port}", MAIL_TIMEOUT=2)
    from tests.conftest import ApiClient

    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com")
    space = client.space(alice)
    response = client.post(f"/api/v1/spaces/{space['id']}/invites", json={"emails": ["bob@example.com"]},
                           headers=alice.headers)
    assert_error(response, 503, "mail_unavailable")
    listed = client.get(f"/api/v1/spaces/{space['id']}/invites", headers=alice.headers)
    assert listed.status_code == 200 and listed.json == []


@pytest.mark.parametrize("path", ["/api/v1/spaces", "/api/v1/auth/login", "/health"])
def test_every_response_carries_a_request_id(client, path):
    generated = client.get(path).headers["X-Request-ID"]
    assert len(generated) >= 16
    assert client.get(path, headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    # an id that could break a log line is replaced, not echoed
    assert client.get(path, headers={"X-Request-ID": "a\tb<script>"}).headers["X-Request-ID"] != "a\tb<script>"
