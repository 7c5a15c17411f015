"""Rate limits on Redis: shared by every worker and surviving restarts; Redis down never means 500."""

import io

import pytest
import redis

from spacio.extensions import limiter
from tests.conftest import ApiClient, assert_error, redis_url


@pytest.fixture
def redis_limited(make_app):
    redis.Redis.from_url(redis_url()).flushdb()  # each test counts alone

    def make(**overrides):
        return make_app(REDIS_URL=redis_url(), **overrides).test_client()

    return make


def attempt(client, address="10.0.0.1", email="victim@example.com"):
    return client.post("/api/v1/auth/login", json={"email": email, "password": "guess"},
                       environ_base={"REMOTE_ADDR": address})


def test_counts_are_shared_between_workers(redis_limited):
    """Two app instances (two gunicorn workers, or a restart) share one count in Redis;
    the in-process storage would let each of them through on its own."""
    first = redis_limited(LOGIN_RATE_LIMIT="3 per minute")
    for _ in range(3):
        assert attempt(first).status_code == 401
    second = redis_limited(LOGIN_RATE_LIMIT="3 per minute")
    response = attempt(second)
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


def test_one_account_is_protected_across_client_addresses(redis_limited):
    client = redis_limited(LOGIN_RATE_LIMIT="3 per minute")
    for n in range(3):
        assert attempt(client, address=f"10.0.1.{n}").status_code == 401
    assert_error(attempt(client, address="10.0.1.99"), 429, "rate_limited")
    assert attempt(client, address="10.0.1.99", email="someone-else@example.com").status_code == 401


def test_bodies_the_key_function_cannot_read_do_not_reopen_the_limit(redis_limited):
    """Wrong passwords for one account, interleaved with bodies over the JSON limit (413) and
    too deep to parse (400): the 4th password is refused; the storage stays Redis."""
    client = redis_limited(LOGIN_RATE_LIMIT="3 per minute")
    oversized = '{"email": "victim@example.com", "password": "%s"}' % ("x" * (1024 * 1024))
    deep = '{"email": %s}' % ("[" * 2000 + "]" * 2000)
    for n in range(3):
        assert attempt(client, address=f"10.0.2.{n}").status_code == 401
        for body in (oversized, deep):
            assert client.post("/api/v1/auth/login", data=body, content_type="application/json",
                               environ_base={"REMOTE_ADDR": f"10.0.3.{n}"}).status_code in (400, 413)
    assert_error(attempt(client, address="10.0.2.99"), 429, "rate_limited")
    assert not limiter._storage_dead


def test_redis_down_falls_back_to_in_process_limits(make_app, unused_port):
    client = make_app(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0", LOGIN_RATE_LIMIT="3 per minute").test_client()
    responses = [attempt(client).status_code for _ in range(5)]
    assert 500 not in responses
    assert responses[:3] == [401, 401, 401]
    assert responses[-1] == 429, "the in-memory fallback still limits"


# ---------------------------------------------------------------- per principal: users and API keys


SPACES = "/api/v1/spaces"


def new_key(client, user, space_id, role="viewer"):
    response = client.post("/api/v1/api-keys", json={"name": "k", "space_id": space_id, "role": role},
                           headers=user.headers)
    assert response.status_code == 201, response.json
    return {"X-API-Key": response.json["key"]}


def assert_limited(response, limit):
    assert_error(response, 429, "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > 0


def test_every_authenticated_request_counts_per_user(redis_limited):
    client = ApiClient(redis_limited(API_RATE_LIMIT="5 per minute"))
    alice = client.user("alice@example.com")
    bob = client.user("bob@example.com")
    laptop = client.login(alice.email)  # a second session of the same user shares the count
    remaining = []
    for headers in [alice.headers] * 3 + [{"Authorization": f"Bearer {laptop['access_token']}"}] * 2:
        response = client.get(SPACES, headers=headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        assert "Retry-After" not in response.headers, "only a 429 (or a 503) says when to retry"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
    assert remaining == [4, 3, 2, 1, 0]
    assert_limited(client.get(SPACES, headers=alice.headers), 5)
    assert_limited(client.get("/api/v1/auth/me", headers=alice.headers), 5)  # every route, one budget
    assert client.get(SPACES, headers=bob.headers).status_code == 200


def test_each_api_key_has_its_own_budget(redis_limited):
    """Decision: a key counts as `apikey:<id>`, apart from its creator's JWT requests and from
    the creator's other keys (an integration cannot starve the user's own frontend);
    API_KEYS_MAX_PER_USER bounds how many budgets one user can hold."""
    client = ApiClient(redis_limited(API_RATE_LIMIT="3 per minute"))
    alice = client.user("alice@example.com")
    space = client.space(alice)["id"]  # alice's JWT: 1 of 3
    first, second = new_key(client, alice, space), new_key(client, alice, space)  # 3 of 3
    for _ in range(3):
        assert client.get(f"{SPACES}/{space}", headers=first).status_code == 200
    assert_limited(client.get(f"{SPACES}/{space}", headers=first), 3)
    assert client.get(f"{SPACES}/{space}", headers=second).status_code == 200
    assert_limited(client.get(SPACES, headers=alice.headers), 3)


def test_refused_credentials_do_not_spend_a_principals_budget(redis_limited):
    client = ApiClient(redis_limited(API_RATE_LIMIT="2 per minute"))
    alice = client.user("alice@example.com")
    for _ in range(5):
        assert client.get(SPACES, headers={"X-API-Key": "spk_" + "0" * 32 + "_" + "x" * 43}).status_code == 401
        assert client.get(SPACES, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(SPACES, headers=alice.headers).status_code == 200


def test_uploads_have_a_stricter_limit_on_top(redis_limited):
    client = ApiClient(redis_limited(UPLOAD_RATE_LIMIT="2 per minute", API_RATE_LIMIT="100 per minute"))
    alice = client.user("alice@example.com")
    space = client.space(alice)["id"]
    key = new_key(client, alice, space, "editor")
    for _ in range(2):
        assert client.upload(alice, space, (b"Rate limits are tested.", "a.txt")).status_code == 202
    assert_limited(client.upload(alice, space, (b"One too many.", "b.txt")), 2)
    # other requests of the same user are still served, and a key has its own upload budget
    assert client.get(f"{SPACES}/{space}/documents", headers=alice.headers).status_code == 200
    response = client.post(f"{SPACES}/{space}/documents", headers=key,
                           data={"files": [(io.BytesIO(b"By key."), "c.txt")]})
    assert response.status_code == 202, response.json


def test_the_default_lets_a_frontend_poll_every_second(redis_limited):
    """A minute of polling a document's status once a second, plus the page's own requests."""
    client = ApiClient(redis_limited())
    alice = client.user("alice@example.com")
    space = client.space(alice)["id"]
    upload = client.upload(alice, space, (b"Polled.", "p.txt"))
    assert upload.status_code == 202, upload.json
    url = f"{SPACES}/{space}/documents/{upload.json['documents'][0]['id']}"
    for _ in range(60 + 20):
        response = client.get(url, headers=alice.headers)
        assert response.status_code == 200
    assert int(response.headers["X-RateLimit-Remaining"]) >= 60 * 5, "room for several polling tabs"


def test_redis_down_still_serves_and_limits_each_principal_in_process(make_app, unused_port):
    client = ApiClient(make_app(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0",
                                API_RATE_LIMIT="8 per minute").test_client())
    alice = client.user("alice@example.com")
    space = client.space(alice)["id"]  # 1
    key = new_key(client, alice, space)  # 2
    statuses = [client.get(SPACES, headers=alice.headers).status_code for _ in range(8)]
    assert 500 not in statuses
    assert statuses[:6] == [200] * 6 and statuses[-1] == 429, statuses
    assert [client.get(f"{SPACES}/{space}", headers=key).status_code for _ in range(9)] == [200] * 8 + [429]


def test_an_authenticated_request_makes_one_redis_round_trip(redis_limited, monkeypatch):
    """Taking from the budget and reading it for the X-RateLimit-* headers is one script call."""
    client = ApiClient(redis_limited(API_RATE_LIMIT="50 per minute"))
    alice = client.user("alice@example.com")
    assert client.get(SPACES, headers=alice.headers).status_code == 200  # Redis learns the script
    sent = []
    execute = redis.Redis.execute_command

    def counted(self, *args, **options):
        sent.append(args[0])
        return execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    responses = [client.get(SPACES, headers=alice.headers) for _ in range(3)]
    assert sent == ["EVALSHA"] * 3
    assert [r.status_code for r in responses] == [200] * 3
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["48", "47", "46"]
    assert all(r.headers["X-RateLimit-Limit"] == "50" and int(r.headers["X-RateLimit-Reset"]) > 0 for r in responses)


def test_redis_stopping_mid_run_falls_back_to_in_process_limits(make_app, tmp_path):
    from tests.integration.test_chat_memory import RedisServer

    server = RedisServer(tmp_path).start()
    try:
        client = ApiClient(make_app(REDIS_URL=server.url, API_RATE_LIMIT="4 per minute").test_client())
        alice = client.user("alice@example.com")
        assert client.get(SPACES, headers=alice.headers).headers["X-RateLimit-Remaining"] == "3"
        server.stop()
        responses = [client.get(SPACES, headers=alice.headers) for _ in range(5)]
    finally:
        server.stop()
    # the process counts on its own from here: a fresh budget, still enforced, with its headers
    assert [r.status_code for r in responses] == [200] * 4 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["3", "2", "1", "0", "0"]
    assert_limited(responses[-1], 4)
