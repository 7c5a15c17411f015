"""Request bodies a careless or hostile client sends: every endpoint that reads JSON answers
them with the one error body, never a 500, and the rate limits count them like any request."""

import io
import json
import re
import uuid

import pytest
from flask import Blueprint

from spacio.extensions import limiter
from tests.conftest import STRONG_PASSWORD, ApiClient, assert_error

LOGIN = "/api/v1/auth/login"
DEEP = "[" * 2000 + "]" * 2000  # a RecursionError in Python's json module
LONG_INT = "9" * 5000  # a ValueError of Python's int conversion limit (4,300 digits)
HOSTILE = {"nested 2,000 deep": '{"email": %s, "password": "x"}' % DEEP,
           "a 5,000-digit integer": '{"email": "a@example.com", "password": %s}' % LONG_INT,
           "nested 33 deep": '{"email": %s}' % ("[" * 32 + "]" * 32),
           "not UTF-8": b'{"email": "\xff\xfe"}'}


def json_operations(client):
    """(method, path template) of every operation the spec says takes a JSON body."""
    spec = client.get("/api/v1/openapi.json").json
    return sorted((method.upper(), path) for path, item in spec["paths"].items() for method, op in item.items()
                  if method in {"post", "put", "patch", "delete"}
                  and "application/json" in (op.get("requestBody") or {}).get("content", {}))


def test_every_json_endpoint_answers_hostile_bodies_with_400(client):
    owner = client.user("alice@example.com")
    space = client.space(owner)
    operations = json_operations(client)
    assert ("POST", LOGIN) in operations and ("PATCH", "/api/v1/spaces/{space_id}") in operations
    assert len(operations) >= 15, operations
    for method, template in operations:
        path = re.sub(r"\{(\w+)\}", lambda m: space["id"] if m[1] == "space_id" else str(uuid.uuid4()), template)
        for what, body in HOSTILE.items():
            response = client.open(path, method=method, data=body, content_type="application/json",
                                   headers=owner.headers)
            assert_error(response, 400, "invalid_json")
            assert response.json["message"] != "The request body is not valid JSON.", (method, template, what)


def test_a_body_within_the_limits_still_parses(client):
    client.register("alice@example.com")
    nested = '{"email": "alice@example.com", "password": "%s"}' % STRONG_PASSWORD
    assert client.post(LOGIN, data=nested, content_type="application/json").status_code == 200
    # 32 levels (the object and 31 arrays) and a 1,000-digit integer: the schema answers them
    body = '{"email": %s, "password": %s}' % ("[" * 31 + "]" * 31, "9" * 1000)
    assert set(assert_error(client.post(LOGIN, data=body, content_type="application/json"), 422,
                            "validation_error")["errors"]) == {"email", "password"}


def test_a_body_that_is_not_json_says_where(client):
    body = assert_error(client.post(LOGIN, data='{"email": ', content_type="application/json"), 400, "invalid_json")
    assert "line 1, column 11" in body["message"], body


@pytest.mark.parametrize("what", ["nested 2,000 deep", "a 5,000-digit integer"])
def test_hostile_logins_count_against_the_login_limit(make_app, what):
    client = make_app(LOGIN_RATE_LIMIT="3 per minute").test_client()
    statuses = [client.post(LOGIN, data=HOSTILE[what], content_type="application/json").status_code
                for _ in range(5)]
    assert statuses == [400, 400, 400, 429, 429]


def test_a_body_too_large_for_the_key_function_does_not_reopen_the_login_limit(make_app):
    """The per-email limit holds across addresses, whatever the client sends in between:
    a body over the JSON limit (413) made the email key function raise, and flask-limiter
    took that for its storage failing: it switched to fresh in-memory counts."""
    app = make_app(LOGIN_RATE_LIMIT="3 per minute")
    client = ApiClient(app.test_client())
    client.register("alice@example.com")
    oversized = json.dumps({"email": "alice@example.com", "password": "x" * (app.config["JSON_MAX_BYTES"] + 1)})
    for n in range(3):
        address = {"REMOTE_ADDR": f"10.0.0.{n + 1}"}
        wrong = client.post(LOGIN, json={"email": "alice@example.com", "password": "not-the-Password-42"},
                            environ_base=address)
        assert_error(wrong, 401, "invalid_credentials")
        assert_error(client.post(LOGIN, data=oversized, content_type="application/json",
                                 environ_base={"REMOTE_ADDR": f"10.0.1.{n + 1}"}), 413)
    right = client.post(LOGIN, json={"email": "alice@example.com", "password": STRONG_PASSWORD},
                        environ_base={"REMOTE_ADDR": "10.0.9.9"})
    assert_error(right, 429, "rate_limited")


def test_a_key_function_that_fails_still_counts_the_request(make_app):
    """Any error inside a key function: the request is counted (by its address), and the
    limiter does not fall back to a second, empty storage."""
    app = make_app()
    probe = Blueprint("probe", __name__)

    def broken_key():
        raise RuntimeError("cannot tell")

    def limited():
        return {"ok": True}

    # the limiter is a module singleton that keeps decorated limits by the view's name
    limited.__name__ = limited.__qualname__ = f"limited_{uuid.uuid4().hex}"
    probe.route("/api/v1/probe")(limiter.limit("2 per minute", key_func=broken_key)(limited))
    app.register_blueprint(probe)
    client = app.test_client()
    assert [client.get("/api/v1/probe").status_code for _ in range(3)] == [200, 200, 429]
    assert [client.get("/api/v1/probe", environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code
            for _ in range(3)] == [200, 200, 429]
    assert not limiter._storage_dead


def chunked(client, path, body):
    """POST ``body`` as a chunked stream: no Content-Length (gunicorn terminates it)."""
    return client.post(path, input_stream=io.BytesIO(body), content_type="application/json",
                       headers={"Transfer-Encoding": "chunked"}, environ_overrides={"wsgi.input_terminated": True})


def test_a_chunked_json_body_over_the_limit_is_413_like_a_declared_one(app):
    client = app.test_client()
    limit = app.config["JSON_MAX_BYTES"]
    body = json.dumps({"email": "a@example.com", "password": "x" * limit, "name": "A"}).encode()
    assert_error(client.post("/api/v1/auth/register", data=body, content_type="application/json"), 413)
    assert_error(chunked(client, "/api/v1/auth/register", body), 413, "payload_too_large")
    # exactly at the limit: read whole, then judged by the schema
    body = b'{"email": "a@example.com", "name": "A", "password": "' + b"x" * limit
    body = body[: limit - 2] + b'"}'
    assert len(body) == limit
    response = chunked(client, "/api/v1/auth/register", body)
    assert "password" in assert_error(response, 422, "validation_error")["errors"]


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(client, scheme):
    alice = client.user("alice@example.com")
    token = alice.headers["Authorization"].split()[1]
    response = client.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} {token}"})
    assert response.status_code == 200, response.json
    assert response.json["email"] == "alice@example.com"
    assert_error(client.get("/api/v1/auth/me", headers={"Authorization": f"{scheme} not.a.token"}), 401, "token_invalid")
