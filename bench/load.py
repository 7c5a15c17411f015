"""Throughput of ONE gevent worker on authenticated ``GET /api/v1/spaces``, measured with wrk.

The server is the Procfile's web command with one worker (``gunicorn -c gunicorn.conf.py``,
``WEB_CONCURRENCY=1``: gevent, gunicorn.conf.py's worker connections and keep-alive) on
PostgreSQL + Redis (run inside ``bash tests/services.sh run -- ...``), rate limiting ON with
the per-user API limit raised by config for the one bench user (``SPACIO_API_RATE_LIMIT``;
every check still runs). The bench user owns ``--spaces`` spaces, so each response lists
real rows. Every request does the full work: JWT decode, the session (blocklist) lookup
with its user, the rate-limit check, the page query with its total, serialisation.

Targets, same wrk settings (``--connections`` keep-alive connections, ``--duration`` s):

- ``bare Flask GET /ping``: a Flask app with one JSON route and nothing else
  (``bench/bare_flask.py``), same gunicorn worker settings: the ceiling;
- ``Spacio GET /health``: the app's request hooks, no auth, no database;
- ``Spacio GET /api/v1/spaces?page_size=1``: every check and both queries, one row to load
  and serialise (the per-request cost without the per-row cost);
- ``Spacio GET /api/v1/spaces``: the measured endpoint, ``--spaces`` rows (target >= 1000 req/s);
- two ceilings of that endpoint (``bench/ceiling_app.py``: Spacio's app, which the server
  serves here, with two extra routes answering the same page from memory): every check but
  no page query, and neither checks nor query (the serialisation through the same schema
  and pagination, the app's hooks, logging and metrics).

Reported per target: req/s, latency p50/p90/p99 (wrk's ``--latency``), non-2xx responses,
socket errors, and the worker's CPU ms per request (from /proc: the client shares the 2
cores). ``--py-spy`` adds a separate profiled run of ``/api/v1/spaces`` (py-spy on the worker,
GIL-holding samples) and reports where a request's time goes: inclusive shares of JWT
decoding, the session and user lookups, the rate-limit check, the list query, the driver,
serialisation, logging, and what lies outside the Flask app (gunicorn + gevent HTTP).

wrk is the Debian package: ``apt-get install wrk`` (as root), or build it from
https://github.com/wg/wrk. py-spy: ``pip install py-spy`` (into the venv or any other
environment; found next to the interpreter or on PATH).

Writes bench/results/load.json. Not a test: numbers, not asserts.

    bash tests/services.sh run -- .venv/bin/python bench/load.py [--duration 15] [--connections 50]
        [--threads 1] [--spaces 20] [--py-spy]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from ingest import BIN, free_port  # noqa: E402
from latency import fresh_schema, gunicorn, login, process_cpu_s, server_env  # noqa: E402
from stream import worker_pid  # noqa: E402

RAISED = "1000000 per minute"
CEILING_CHECKS = "ceiling: the checks, the page from memory"
CEILING_SCHEMA = "ceiling: no checks, the page from memory"

#: where a request's time goes: a sample counts for a phase when any frame of its stack
#: matches (inclusive share). py-spy's frames read "Class.function (package/file.py:line)".
PHASES = {
    "Flask app (Flask.wsgi_app, all of it)": r"Flask\.wsgi_app \(flask/app\.py",
    "JWT check (verify_jwt_in_request: decode + loaders)": r"verify_jwt_in_request \(",
    "  JWT decode + signature (PyJWT)": r"\(jwt/",
    "  session + user lookup (blocklist: session_user)": r"session_user \(",
    "  user loader (hands on the blocklist's user)": r"_user \(spacio/app\.py|_load_user \(",
    "API key lookup": r"\(spacio/apikeys/",
    "rate-limit check (flask_limiter + limits + redis)": r"\((flask_limiter|limits)/",
    "view: list spaces (spacio/spaces)": r"\(spacio/spaces/",
    "  page with its total (spacio.http.paginate)": r"paginate \(spacio/http\.py",
    "serialisation (marshmallow)": r"\(marshmallow/",
    "JSON encoding (json)": r"\(json/",
    "SQLAlchemy (all of it)": r"\(sqlalchemy/",
    "  ORM object loading (loading.instances)": r"instances \(sqlalchemy/orm/loading\.py",
    "  SQL compilation and cache keys": r"\(sqlalchemy/sql/(compiler|cache_key)\.py",
    "  pool checkout incl. the liveness check": r"_checkout \(sqlalchemy/pool",
    "psycopg (driver: sending, waiting, parsing)": r"\(psycopg/",
    "Redis client (redis-py)": r"\(redis/",
    "request hooks (spacio/app.py before/after)": r"_(before|after) \(spacio/app\.py",
    "logging (logging + spacio/logs.py)": r"\(logging/__init__\.py|\(spacio/logs\.py",
    "metrics (prometheus_client + spacio/metrics.py)": r"\(prometheus_client/|\(spacio/metrics\.py",
    "session teardown (scoped_session.remove)": r"(scoped_session\.remove|_teardown_session) \(",
    "CORS (flask_cors)": r"\(flask_cors/",
}


#: the same samples split into parts that add up to 100 %: a sample belongs to the DEEPEST
#: frame of its stack that matches one of these (in this order of precedence at equal depth),
#: so the database time under the session lookup is the session lookup's, Redis under the
#: limiter is the limiter's, marshmallow under the view is serialisation's.
OWNERS = {
    "JWT decode + signature (PyJWT)": r"\(jwt/",
    "session + user lookup (session_user: 1 query)": r"session_user \(",
    "user loader (user_lookup_loader: no query)": r"_user \(spacio/app\.py",
    "API key code (spacio/apikeys)": r"\(spacio/apikeys/",
    "rate-limit check (flask_limiter, limits, Redis)": r"\((flask_limiter|limits)/",
    "page query with its total (spacio.http.paginate)": r"paginate \(spacio/http\.py",
    "list view, rest (spacio/spaces)": r"\(spacio/spaces/",
    "serialisation (marshmallow)": r"\(marshmallow/",
    "JSON encoding (json)": r"\(json/",
    "session teardown (rollback + return to pool)": r"(_teardown_session|scoped_session\.remove) \(",
    "logging (logging, spacio/logs.py)": r"\(logging/|\(spacio/logs\.py",
    "metrics (prometheus_client, spacio/metrics.py)": r"\(prometheus_client/|\(spacio/metrics\.py",
    "request hooks and auth glue (spacio/app.py, http.py, auth)": r"\(spacio/(app|http)\.py|\(spacio/auth/",
    "CORS (flask_cors)": r"\(flask_cors/",
    "flask_jwt_extended (rest)": r"\(flask_jwt_extended/",
    "Flask, smorest, werkzeug (rest)": r"\((flask|flask_smorest|werkzeug|webargs)/",
    "gunicorn + gevent (HTTP parsing, writing, hub)": r"\((gunicorn|gevent)/",
}
#: samples none of OWNERS claims: the driver's query generators run from psycopg's C wait
#: loop, so py-spy sees their frames without the request's stack above them
FALLBACK = {
    "psycopg driver, caller unknown (its C wait loop cuts the stack)": r"\(psycopg/",
    "SQLAlchemy, caller unknown": r"\(sqlalchemy/",
}


# ---------------------------------------------------------------- wrk


def wrk_binary():
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (Debian package, as root) "
                         "or build it from https://github.com/wg/wrk, then run again.")
    return found


def to_ms(value):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return round(float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit], 2)


def parse_wrk(text):
    out = {}
    for label, key in (("50%", "p50_ms"), ("75%", "p75_ms"), ("90%", "p90_ms"), ("99%", "p99_ms")):
        match = re.search(rf"^\s+{re.escape(label)}\s+(\S+)", text, re.M)
        if match:
            out[key] = to_ms(match.group(1))
    match = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if match:
        out["mean_ms"], out["max_ms"] = to_ms(match.group(1)), to_ms(match.group(3))
    match = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if match:
        out["requests"] = int(match.group(1))
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["req_per_s"] = round(float(match.group(1)), 1) if match else None
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, match.groups()))) \
        if match else {}
    return out


def run_wrk(args, port, path, headers=None, duration=None, worker=None):
    command = [wrk_binary(), "--latency", "-t", str(args.threads), "-c", str(args.connections),
               "-d", f"{duration or args.duration}s", "--timeout", "10s"]
    for key, value in (headers or {}).items():
        command += ["-H", f"{key}: {value}"]
    command.append(f"http://127.0.0.1:{port}{path}")
    load = os.getloadavg()[0]
    cpu = process_cpu_s(worker) if worker else None
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    out = parse_wrk(text)
    out["load_1min_before"] = round(load, 2)
    if worker and out.get("requests"):
        out["worker_cpu_ms_per_request"] = round((process_cpu_s(worker) - cpu) * 1000 / out["requests"], 3)
    return out


# ---------------------------------------------------------------- servers


@contextmanager
def bare_flask(args):
    """bench/bare_flask.py under gunicorn with the web process's worker settings (run from
    bench/, so gunicorn does not pick up the project's gunicorn.conf.py and its app hooks)."""
    port = free_port()
    web = subprocess.Popen([BIN / "gunicorn", "-k", "gevent", "--workers", "1", "--worker-connections",
                            os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"), "--keep-alive",
                            os.environ.get("GUNICORN_KEEPALIVE", "5"), "--bind", f"127.0.0.1:{port}",
                            "bare_flask:app"], cwd=ROOT / "bench", stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/ping")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or web.poll() is not None:
                    raise SystemExit("the bare Flask server did not start") from None
                time.sleep(0.2)
        yield port, worker_pid(web.pid)
    finally:
        web.terminate()
        web.wait(30)


def probe(port, path, token):
    """One request: its status and the rate-limit headers it carries."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    body = response.read()
    headers = {k: v for k, v in response.getheaders() if k.lower().startswith(("x-ratelimit", "retry-after"))}
    return response.status, headers, len(json.loads(body)) if response.status == 200 else body[:200]


# ---------------------------------------------------------------- profile


def py_spy_binary():
    local = BIN / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def owner_of(frames, owners):
    for frame in reversed(frames):
        for name, rx in owners.items():
            if rx.search(frame):
                return name
    return "other"


def profile(path, top=20):
    """Inclusive shares of PHASES and the top self-time functions from py-spy raw output."""
    patterns = {name: re.compile(rx) for name, rx in PHASES.items()}
    inclusive, own, total = dict.fromkeys(PHASES, 0), {}, 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():  # a line py-spy left unfinished when it was stopped
            continue
        count = int(count)
        total += count
        frames = stack.split(";")
        for name, rx in patterns.items():
            if any(rx.search(f) for f in frames):
                inclusive[name] += count
        leaf = frames[-1]
        short = leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf
        own[short] = own.get(short, 0) + count
    owners = {name: re.compile(rx) for name, rx in OWNERS.items()}
    fallback = {name: re.compile(rx) for name, rx in FALLBACK.items()}
    split = dict.fromkeys(list(OWNERS) + list(FALLBACK) + ["other"], 0)
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            owner = owner_of(frames, owners)
            split[owner if owner != "other" else owner_of(frames, fallback)] += int(count)
    share = lambda v: round(v / max(1, total), 3)  # noqa: E731
    app = inclusive["Flask app (Flask.wsgi_app, all of it)"]
    return {"samples": total,
            "split": {k: share(v) for k, v in sorted(split.items(), key=lambda kv: -kv[1])},
            "phases_inclusive": {k: share(v) for k, v in inclusive.items()},
            "outside the Flask app (gunicorn + gevent HTTP)": share(total - app),
            "self_top": {k: share(v) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]}}


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (the client shares the 2 cores)")
    parser.add_argument("--spaces", type=int, default=20, help="spaces the bench user owns (rows listed)")
    parser.add_argument("--py-spy", action="store_true", help="profile the worker during an extra run")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (experiments)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args()

    database_url, redis_url = os.environ.get("SPACIO_TEST_DATABASE_URL"), os.environ.get("SPACIO_TEST_REDIS_URL")
    if not (database_url and redis_url):
        raise SystemExit("run inside `bash tests/services.sh run -- ...` (PostgreSQL + Redis)")
    wrk_binary()
    extra = {"WEB_CONCURRENCY": "1", "SPACIO_RATELIMIT_ENABLED": "true", "SPACIO_API_RATE_LIMIT": RAISED}
    for item in args.env:
        key, _, value = item.partition("=")
        extra[key] = value
    env = server_env(database_url, redis_url, extra)
    fresh_schema(env)
    report = {"benchmark": "load", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "setup": {"server": "gunicorn -c gunicorn.conf.py, WEB_CONCURRENCY=1 (one gevent worker)",
                        "database": "PostgreSQL + pgvector", "rate_limits": "Redis, API limit " + RAISED,
                        "client": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency "
                                  "(keep-alive), same machine",
                        "spaces_listed": args.spaces, "server_env": extra},
              "targets": {}}

    print("bare Flask GET /ping ...", flush=True)
    with bare_flask(args) as (port, worker):
        run_wrk(args, port, "/ping", duration=args.warmup)
        report["targets"]["bare Flask GET /ping"] = run_wrk(args, port, "/ping", worker=worker)

    log = Path(env["SPACIO_INSTANCE_PATH"]) / "gunicorn.log"
    with gunicorn(env, log=log, app="bench.ceiling_app:app") as (api, web):
        token = login(api)
        for i in range(args.spaces):
            status, space = api.call("POST", "/api/v1/spaces", {"name": f"Load {i}"})
            assert status == 201, space
        worker = worker_pid(web.pid)
        status, limit_headers, listed = probe(api.port, "/api/v1/spaces", token)
        assert status == 200, (status, listed)
        report["setup"]["rate_limit_headers_on_spaces"] = limit_headers
        report["setup"]["spaces_per_response"] = listed
        if not limit_headers:
            print("  note: GET /api/v1/spaces carries no X-RateLimit-* headers: no rate limit applies to it "
                  "(yet); the number below is without one", flush=True)
        auth = {"Authorization": f"Bearer {token}"}
        assert probe(api.port, "/ceiling/checks", token)[2] == listed  # loads the page the ceilings serve
        for name, path, headers in (("Spacio GET /health", "/health", None),
                                    ("Spacio GET /api/v1/spaces?page_size=1", "/api/v1/spaces?page_size=1", auth),
                                    ("Spacio GET /api/v1/spaces", "/api/v1/spaces", auth),
                                    (CEILING_CHECKS, "/ceiling/checks", auth),
                                    (CEILING_SCHEMA, "/ceiling/schema", None)):
            print(f"{name} ...", flush=True)
            run_wrk(args, api.port, path, headers, duration=args.warmup)
            report["targets"][name] = run_wrk(args, api.port, path, headers, worker=worker)
        if args.py_spy:
            spy_bin = py_spy_binary()
            if not spy_bin:
                print("  --py-spy: py-spy not found (pip install py-spy)", flush=True)
            else:
                print("profiled GET /api/v1/spaces (py-spy) ...", flush=True)
                spy_out = Path(env["SPACIO_INSTANCE_PATH"]) / "py-spy-spaces.txt"
                spy = subprocess.Popen([spy_bin, "record", "--pid", str(worker), "--format", "raw", "--rate", "250",
                                        "--nonblocking", "--gil", "--output", str(spy_out)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                run = run_wrk(args, api.port, "/api/v1/spaces", auth, worker=worker)
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
                report["profile"] = {"run_under_py_spy": run, **(profile(spy_out) if spy_out.exists() else {})}
                cpu_ms = run.get("worker_cpu_ms_per_request")
                if cpu_ms and "split" in report["profile"]:  # the shares as worker CPU ms per request
                    report["profile"]["split_cpu_ms_per_request"] = {
                        k: round(v * cpu_ms, 2) for k, v in report["profile"]["split"].items()}
        errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line or
                  '"level": "ERROR"' in line or "[ERROR]" in line]
        report["server_log_error_lines"] = errors[:10]
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\n{'target':<40}{'req/s':>9}{'p50':>8}{'p90':>8}{'p99':>8}{'non-2xx':>9}{'CPU ms/req':>11}   (ms)")
    for name, r in report["targets"].items():
        print(f"{name:<40}{r['req_per_s']:>9}{r.get('p50_ms', '-'):>8}{r.get('p90_ms', '-'):>8}"
              f"{r.get('p99_ms', '-'):>8}{r['non_2xx']:>9}{r.get('worker_cpu_ms_per_request', '-'):>11}")
    if "profile" in report and "split" in report["profile"]:
        print("\nwhere GET /api/v1/spaces spends the worker's Python time (share of samples, adds up to 100 %):")
        ms = report["profile"].get("split_cpu_ms_per_request", {})
        for name, value in report["profile"]["split"].items():
            print(f"  {name:<60}{value * 100:6.1f} %{ms.get(name, '-'):>8} ms")
        print("\nthe same, inclusive (a sample counts for every phase on its stack):")
        for name, value in report["profile"]["phases_inclusive"].items():
            print(f"  {name:<55}{value * 100:6.1f} %")
        print(f"  {'outside the Flask app (gunicorn + gevent HTTP)':<55}"
              f"{report['profile']['outside the Flask app (gunicorn + gevent HTTP)'] * 100:6.1f} %")
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    sys.exit(main())
