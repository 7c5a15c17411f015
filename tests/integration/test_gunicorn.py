"""The Procfile's web command, gunicorn with gevent workers, on PostgreSQL + pgvector + Redis."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.integration.workers import Web, flush_redis, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def test_a_worker_that_used_pgvector_shuts_down_without_a_traceback(database, tmp_path, unused_port):
    """SIGTERM after a search: the worker closes the store's connection pool while its
    gevent hub still runs (gunicorn.conf.py worker_exit); left to the garbage collector,
    psycopg_pool printed "Exception ignored ... Traceback" on every shutdown."""
    flush_redis()
    web = Web(worker_env(tmp_path), unused_port)
    try:
        web.wait_up()
        email = f"shutdown-{uuid.uuid4().hex[:8]}@example.com"
        assert web.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD, "name": "S"})[0] == 201
        status, tokens = web.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
        assert status == 200, tokens
        token = tokens["access_token"]
        status, space = web.call("POST", "/api/v1/spaces", {"name": "shutdown"}, token)
        assert status == 201, space
        status, found = web.call("POST", f"/api/v1/spaces/{space['id']}/search", {"query": "anything at all"}, token)
        assert status == 200, found  # the pgvector pool is open now
    finally:
        web.stop()
    output = web.output()
    assert web.process.returncode == 0, output
    assert "Worker exiting" in output, output
    assert "Traceback" not in output and "Exception ignored" not in output, output


def test_two_refreshes_at_once_on_two_workers_get_one_pair(database, tmp_path, unused_port):
    """Two tabs refreshing with one refresh token at the same moment, on two gevent workers:
    exactly one rotation happens (a compare-and-swap on the session row) and both requests
    answer 200 with the same pair; the session lives on. Before the grace window, the loser
    got 401 and often revoked the session."""
    flush_redis()
    web = Web(worker_env(tmp_path), unused_port, workers=2)
    try:
        web.wait_up()
        email = f"tabs-{uuid.uuid4().hex[:8]}@example.com"
        assert web.call("POST", "/api/v1/auth/register", {"email": email, "password": STRONG_PASSWORD, "name": "T"})[0] == 201
        status, tokens = web.call("POST", "/api/v1/auth/login", {"email": email, "password": STRONG_PASSWORD})
        assert status == 200, tokens
        start = threading.Barrier(2)

        def tab(token):
            start.wait()
            return web.call("POST", "/api/v1/auth/refresh", token=token)

        with ThreadPoolExecutor(2) as pool:
            for _ in range(25):
                answers = list(pool.map(tab, [tokens["refresh_token"]] * 2))
                assert [status for status, _ in answers] == [200, 200], answers
                assert answers[0][1] == answers[1][1], answers  # the same pair, not two
                tokens = answers[0][1]
        assert web.call("GET", "/api/v1/auth/me", token=tokens["access_token"])[0] == 200
        status, rotated = web.call("POST", "/api/v1/auth/refresh", token=tokens["refresh_token"])
        assert status == 200, rotated
    finally:
        web.stop()
    output = web.output()
    assert web.process.returncode == 0, output
    assert "Traceback" not in output, output
