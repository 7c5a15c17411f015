"""The Procfile's web command, gunicorn with a gevent worker, on PostgreSQL + pgvector + Redis."""

import json
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import STRONG_PASSWORD
from tests.integration.workers import ROOT, flush_redis, wait_for, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


class Web:
    """`gunicorn -c gunicorn.conf.py wsgi:app` with one worker, its output kept."""

    def __init__(self, env, port):
        self.root = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--workers", "1",
             "--bind", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env={**env, "GUNICORN_ACCESSLOG": ""}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def call(self, method, path, body=None, token=None):
        request = urllib.request.Request(self.root + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if token else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def wait_up(self, timeout=60):
        def answering():
            if self.process.poll() is not None:
                raise AssertionError("gunicorn exited:\n" + self.output())
            try:
                return self.call("GET", "/health")[0] == 200
            except OSError:
                return False

        wait_for(answering, timeout, what="gunicorn to answer /health")

    def stop(self, timeout=60):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout)
        self._reader.join(10)

    def output(self):
        return "".join(self.lines)


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
