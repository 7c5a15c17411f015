"""Rate limits on Redis: shared by every worker and surviving restarts; Redis down never means 500."""

import pytest
import redis

from tests.conftest import assert_error, redis_url


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


def test_redis_down_falls_back_to_in_process_limits(make_app, unused_port):
    client = make_app(REDIS_URL=f"redis://127.0.0.1:{unused_port}/0", LOGIN_RATE_LIMIT="3 per minute").test_client()
    responses = [attempt(client).status_code for _ in range(5)]
    assert 500 not in responses
    assert responses[:3] == [401, 401, 401]
    assert responses[-1] == 429, "the in-memory fallback still limits"
