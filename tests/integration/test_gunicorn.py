"""The Procfile's web command, gunicorn with a gevent worker, on PostgreSQL + pgvector + Redis."""

import uuid

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
