"""Latency of the identity and spaces API under gunicorn (gevent), over real HTTP.

Starts `gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port against a fresh
embedded SQLite database (or SPACIO_SQLALCHEMY_DATABASE_URI when set), registers a
user, then times sequential requests from one client:

- POST /api/v1/auth/login  (argon2id verification with the production parameters)
- GET  /api/v1/spaces      (JWT check + session lookup + one paginated query)
- GET  /health             (the floor: Flask + gunicorn alone)

Prints a table and writes bench/results/api-<database>.json. Not a test: numbers, not asserts.

    .venv/bin/python bench/api.py [--requests 2000] [--logins 50]
"""

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "lavender-Orbit-73-quietly"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(connection, method, path, body=None, headers=None):
    payload = json.dumps(body) if body is not None else None
    headers = {**(headers or {}), **({"Content-Type": "application/json"} if payload else {})}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)


def timed(connection, n, method, path, body=None, headers=None, expect=200):
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        status, _ = call(connection, method, path, body, headers)
        samples.append((time.perf_counter() - start) * 1000)
        assert status == expect, (path, status)
    samples.sort()
    return {
        "requests": n,
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "req_per_s_one_client": round(1000 / statistics.fmean(samples), 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--logins", type=int, default=50)
    args = parser.parse_args()

    port = free_port()
    instance = tempfile.mkdtemp(prefix="spacio-bench-")
    env = {**os.environ, "SPACIO_INSTANCE_PATH": instance, "GUNICORN_ACCESSLOG": "",
           "SPACIO_LOGIN_RATE_LIMIT": "100000 per minute", "SPACIO_REGISTER_RATE_LIMIT": "1000 per minute",
           # one bench user makes 2,000 requests in seconds: its limit is raised (the check still runs)
           "SPACIO_API_RATE_LIMIT": "1000000 per minute"}
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    command = [bin_dir / "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "1",
               "wsgi:app"]
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                call(connection, "GET", "/health")
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        email = "bench@example.com"
        call(connection, "POST", "/api/v1/auth/register", {"email": email, "password": PASSWORD, "name": "Bench"})
        _, tokens = call(connection, "POST", "/api/v1/auth/login", {"email": email, "password": PASSWORD})
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        for n in range(10):
            call(connection, "POST", "/api/v1/spaces", {"name": f"Space {n}"}, auth)
        results = {
            "login": timed(connection, args.logins, "POST", "/api/v1/auth/login",
                           {"email": email, "password": PASSWORD}),
            "list_spaces": timed(connection, args.requests, "GET", "/api/v1/spaces", headers=auth),
            "health": timed(connection, args.requests, "GET", "/health"),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)

    backend = "postgresql" if env.get("SPACIO_SQLALCHEMY_DATABASE_URI", "").startswith("postgres") else "sqlite"
    report = {
        "benchmark": "api",
        "database": backend,
        "server": "gunicorn, 1 gevent worker",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    print(f"{'endpoint':<14}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'req/s (1 client)':>18}")
    for name, r in results.items():
        print(f"{name:<14}{r['requests']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['req_per_s_one_client']:>18}")
    out = ROOT / "bench" / "results" / f"api-{backend}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
