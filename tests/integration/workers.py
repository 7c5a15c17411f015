"""Real processes for the integration tests, the commands the Procfile runs on PostgreSQL +
Redis, started and killed like a platform would: `dramatiq tasks` workers (``Worker``) and
the gunicorn web (``Web``)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis

from tests.conftest import TEST_SECRET, postgres_url, redis_url

ROOT = Path(__file__).resolve().parents[2]


class Worker:
    """One `dramatiq tasks` main process (and its children), with its output kept."""

    def __init__(self, env, processes=1, threads=2):
        command = [sys.executable, "-m", "dramatiq", "tasks", "--processes", str(processes),
                   "--threads", str(threads)]
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if "ready for action" in line:
                self._ready.set()

    def wait_ready(self, timeout=60):
        if not self._ready.wait(timeout):
            self.kill()
            raise AssertionError("the worker did not start:\n" + self.output())
        return self

    def output(self):
        return "".join(self.lines[-200:])

    def kill(self):
        """SIGKILL the whole process group: the main process and its worker children."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout=60):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout)


def worker_env(instance_path, **settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACIO_") or k.startswith("SPACIO_TEST_")}
    env.update({
        "SPACIO_SQLALCHEMY_DATABASE_URI": postgres_url(),
        "SPACIO_REDIS_URL": redis_url(),
        "SPACIO_JWT_SECRET_KEY": TEST_SECRET,
        "SPACIO_INSTANCE_PATH": str(instance_path),
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"SPACIO_{k}": str(v) for k, v in settings.items()})
    return env


def flush_redis():
    redis.Redis.from_url(redis_url()).flushdb()


def wait_for(predicate, timeout, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Web:
    """The Procfile's web command, `gunicorn -c gunicorn.conf.py wsgi:app`, with ``workers``
    gevent workers and its output kept (gunicorn's access log off unless ``env`` sets it)."""

    def __init__(self, env, port, workers=1):
        self.port, self.root = port, f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--workers", str(workers),
             "--bind", f"127.0.0.1:{port}", "wsgi:app"],
            cwd=ROOT, env={"GUNICORN_ACCESSLOG": "", **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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

    def get(self, path, headers=None):
        """(status, body text) of a GET."""
        request = urllib.request.Request(self.root + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

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
