"""``wsgi.py`` under gevent monkey patching (what gunicorn's gevent worker does) with
psycopg 3 on PostgreSQL: a query waits without blocking the other greenlets, and several
queries at once overlap instead of running one after the other.

The check runs in a subprocess: monkey patching has to happen before anything imports
``socket`` or ``threading``, which pytest itself has long done."""

import json
import subprocess
import sys

import pytest

from tests.integration.workers import ROOT, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)

SLEEP = 0.5
CONCURRENT = 5

SCRIPT = f"""
from gevent import monkey
monkey.patch_all()  # as gunicorn's gevent worker does, before the app is imported

import json, time
import gevent
from sqlalchemy import text

from wsgi import app  # the Procfile's entry point, configured from SPACIO_* like in production
from spacio.extensions import db


def sleep_in_db():
    with app.app_context():
        started = time.perf_counter()
        db.session.execute(text("SELECT pg_sleep({SLEEP})"))
        db.session.rollback()
        return time.perf_counter() - started


ticks = []
running = True


def ticker():
    while running:
        ticks.append(time.perf_counter())
        gevent.sleep(0.01)


with app.app_context():
    db.session.execute(text("SELECT 1"))  # connect once, outside the measurement
    engine = db.engine.url.get_backend_name() + "+" + db.engine.url.get_driver_name()

tick = gevent.spawn(ticker)
gevent.sleep(0.05)
one = gevent.spawn(sleep_in_db).get()
gaps_one = [b - a for a, b in zip(ticks, ticks[1:])]

ticks.clear()
started = time.perf_counter()
several = [g.get() for g in [gevent.spawn(sleep_in_db) for _ in range({CONCURRENT})]]
wall = time.perf_counter() - started
gaps_several = [b - a for a, b in zip(ticks, ticks[1:])]
running = False
tick.join()

import psycopg.waiting
print(json.dumps({{
    "engine": engine, "patched": monkey.is_module_patched("socket"),
    "wait": psycopg.waiting.wait.__name__,
    "one": one, "ticks_one": len(gaps_one) + 1, "max_gap_one": max(gaps_one),
    "several": several, "wall": wall, "ticks_several": len(gaps_several) + 1, "max_gap_several": max(gaps_several),
}}))
"""


def test_database_calls_do_not_block_other_greenlets(database, tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=worker_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    print("\n ", measured)

    assert measured["engine"] == "postgresql+psycopg" and measured["patched"]
    # one query of SLEEP seconds: the ticker kept its 10 ms beat all along
    assert measured["one"] >= SLEEP
    assert measured["ticks_one"] >= SLEEP / 0.01 * 0.6, measured
    assert measured["max_gap_one"] < 0.1, measured
    # several at once: they overlap (one after the other would take CONCURRENT * SLEEP)
    assert measured["wall"] < SLEEP * 2, measured
    assert all(s >= SLEEP for s in measured["several"])
    assert measured["max_gap_several"] < 0.1, measured


TURNS = 8

TURN_SCRIPT = f"""
from gevent import monkey
monkey.patch_all()

import json
import gevent
from sqlalchemy import text

from wsgi import app  # SPACIO_SQLALCHEMY_ENGINE_OPTIONS: a pool of one connection
from spacio.extensions import db

served = []


def request(i):
    for turn in (1, 2):  # asks again as soon as it has given the connection back
        with app.app_context():
            db.session.execute(text("SELECT pg_sleep(0.005)"))
            served.append([i, turn])
            db.session.remove()


with app.app_context():
    db.session.execute(text("SELECT 1"))
    db.session.remove()
    pool = type(db.engine.pool).__name__
gevent.joinall([gevent.spawn(request, i) for i in range({TURNS})], raise_error=True)
print(json.dumps({{"pool": pool, "served": served}}))
"""


def test_waiting_requests_get_the_pool_s_connections_in_turn(database, tmp_path):
    """Greenlets waiting for a pooled connection get one in the order they asked: one that
    gives its connection back and asks again queues behind them (SQLAlchemy's own queue let
    it take the connection straight back, so the others waited on; under load a few
    requests waited seconds, see ``spacio.db.FairQueue``)."""
    env = {**worker_env(tmp_path),
           "SPACIO_SQLALCHEMY_ENGINE_OPTIONS": json.dumps({"pool_size": 1, "max_overflow": 0, "pool_timeout": 30})}
    result = subprocess.run([sys.executable, "-c", TURN_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])

    assert measured["pool"] == "FairQueuePool"
    assert measured["served"] == [[i, 1] for i in range(TURNS)] + [[i, 2] for i in range(TURNS)]


KILLED_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import json
import gevent
from spacio.db import FairQueue

queue = FairQueue(1)
queue.put("connection")
held = queue.get(False)
waiter = gevent.spawn(queue.get, True, 5)
gevent.sleep(0.01)
waiting = len(queue.waiters)
waiter.kill()  # killed while it waits
left = len(queue.waiters)
queue.put(held)
print(json.dumps({"waiting": waiting, "left": left, "back": queue.get(False), "killed": waiter.dead}))
"""


def test_a_greenlet_killed_while_it_waits_for_a_connection_leaves_the_line(database, tmp_path):
    """gevent kills a greenlet by raising in it (a timeout, a client gone), also while it
    waits for a pooled connection: it leaves the line, so the next connection given back
    is not handed to a greenlet that is gone (tests/unit/test_fair_pool.py: one handed over
    just before goes on to the next waiter)."""
    result = subprocess.run([sys.executable, "-c", KILLED_SCRIPT], cwd=ROOT, env=worker_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "waiting": 1, "left": 0, "back": "connection", "killed": True}


INPROCESS_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import io
import json
import time
import gevent

from wsgi import app  # PostgreSQL + pgvector, no Redis: the in-process ingestion worker

client = app.test_client()
password = "lavender-Orbit-73-quietly"
client.post("/api/v1/auth/register", json={"email": "a@example.com", "name": "A", "password": password})
token = client.post("/api/v1/auth/login", json={"email": "a@example.com", "password": password}).get_json()
headers = {"Authorization": "Bearer " + token["access_token"]}
space = client.post("/api/v1/spaces", json={"name": "S"}, headers=headers).get_json()["id"]
files = [(io.BytesIO(f"Mitochondria make ATP, part {i}. Chloroplasts make sugar.".encode()), f"{i}.txt")
         for i in range(8)]
upload = client.post(f"/api/v1/spaces/{space}/documents", headers=headers, content_type="multipart/form-data",
                     data={"files": files})
assert upload.status_code == 202, upload.get_json()


def search():
    response = client.post(f"/api/v1/spaces/{space}/search", json={"query": "who makes ATP?"}, headers=headers)
    return response.status_code


statuses = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # searches at once, while the documents are ingested
    statuses += [job.get() for job in [gevent.spawn(search) for _ in range(6)]]
    listed = client.get(f"/api/v1/spaces/{space}/documents?page_size=50", headers=headers).get_json()
    if all(d["status"] in ("ready", "failed") for d in listed):
        break
status = sorted({d["status"] for d in listed})

statuses += [job.get() for job in [gevent.spawn(search) for _ in range(12)]]
print(json.dumps({"status": status, "searches": sorted(set(statuses))}))
"""


def test_in_process_ingestion_into_pgvector_then_searches_at_once(database, tmp_path):
    """PostgreSQL without Redis: the web process ingests on its own worker greenlets while
    searches run. The pgvector store is used from greenlets only: its pool's queues belong
    to the hub, and writing the vectors from one of gevent's real threads broke them (this
    test hung; bench/quality.py's searches failed with 502 AttributeError)."""
    env = worker_env(tmp_path, VECTOR_STORE="pgvector", EMBEDDER="hashing", REDIS_URL="")
    result = subprocess.run([sys.executable, "-c", INPROCESS_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured == {"status": ["ready"], "searches": [200]}, result.stderr[-3000:]
