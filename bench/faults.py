"""Proof under faults: real processes killed, real servers stopped, and what the service does.

Production shape: the Procfile's web command (gunicorn -c gunicorn.conf.py, one gevent
worker) and ``dramatiq tasks`` worker processes (tests/integration/workers.py: the Procfile's
worker command, killed and restarted like a platform), on the PostgreSQL + Redis that
``tests/services.sh`` starts. Run inside it:

    bash tests/services.sh run -- .venv/bin/python bench/faults.py [--scenarios kill,term,redis,postgres]
        [--docs 20] [--delay-ms 150] [--redis-down 10] [--pg-down 8] [--clients 8]

Scenarios (each reports what happened and how long recovery took):

``kill``      SIGKILL the worker's process group mid-ingestion of ``--docs`` documents, start a new
              worker at once (a platform restarting a crashed process): all documents must end
              ``ready``, with exactly one copy of each chunk in the database and in the vector
              store (counted per document). Recovery: kill -> all ready.
``term``      SIGTERM the worker (1 process, 1 thread) while it embeds a document: that document
              must finish, the queued ones must stay ``queued`` (none failed, none lost) and be
              ingested by the next worker. Then: SIGKILL ONE child of a 2-process worker, and
              report what the dramatiq main process does (exit code, time).
``redis``     Redis stopped (SHUTDOWN NOSAVE) during a conversation: chat answers must still be
              served (history from the database); status counts of chats, list calls and an upload
              while Redis is down and after it is back. The upload while down must give a document
              ``failed`` with ``queue_unavailable`` (never one ``queued`` for a message that does not
              exist); after Redis is back its reindex and a new upload must be ingested, and chat
              memory and rate limits must work again (memory key written, limiter keys in Redis).
``postgres``  PostgreSQL stopped (pg_ctl stop -m fast, as the server's own user) and started again
              under a loop of authenticated GET /api/v1/spaces from ``--clients`` keep-alive
              clients: while down, requests must fail fast (<= a few s) with 503 at most, never 500;
              after, all 2xx again (dead pooled connections are replaced at checkout: none stuck). Counts by status per phase,
              time to recover.

The documents are generated text; the embedder is the ``hashing`` test embedder with a delay per
batch (``--delay-ms``, ``EMBED_BATCH_SIZE`` 4), so a document takes long enough to be killed in
the middle: these scenarios test the queue and the pipeline's idempotence, not the model.
Writes bench/results/faults.json. Not a test: numbers, and a verdict per scenario.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latency import fresh_schema, gunicorn, login, server_env  # noqa: E402
from tests.integration.workers import Worker  # noqa: E402

SETTINGS = {"SPACIO_EMBEDDER": "hashing", "SPACIO_EMBED_BATCH_SIZE": "4",
            "SPACIO_ASK_RATE_LIMIT": "100000 per minute", "SPACIO_API_RATE_LIMIT": "100000 per minute",
            "SPACIO_UPLOAD_RATE_LIMIT": "100000 per minute"}


def text_of(seed, paragraphs=40):
    return "\n\n".join(f"Document {seed}, paragraph {i} is about topic {i % 17} and the number "
                       f"{(seed * 31 + i) * 7919 % 1000}. " * 6 for i in range(paragraphs)).encode()


def now():
    return time.monotonic()


# ---------------------------------------------------------------- database views


def conninfo(env):
    from spacio_pgvector.store import conninfo as pg_conninfo

    return pg_conninfo(env["SPACIO_SQLALCHEMY_DATABASE_URI"])


def documents(env, space_id):
    """{document id: (status, chunks field, error reason)} from the database."""
    with psycopg.connect(conninfo(env)) as conn:
        rows = conn.execute("SELECT id::text, status, chunks, error_reason FROM documents WHERE space_id = %s",
                            (space_id,)).fetchall()
    return {r[0]: r[1:] for r in rows}


def statuses(env, space_id):
    counts = {}
    for status, *_ in documents(env, space_id).values():
        counts[status] = counts.get(status, 0) + 1
    return counts


def chunk_copies(env, space_id):
    """Per document: chunk rows in the database, distinct ordinals, and rows in the vector
    store's table(s) (pgvector: one table per dimension, keyed by namespace + document)."""
    out = {}
    with psycopg.connect(conninfo(env)) as conn:
        for doc, rows, distinct in conn.execute(
                "SELECT c.document_id::text, count(*), count(DISTINCT c.ordinal) FROM chunks c "
                "JOIN documents d ON d.id = c.document_id WHERE d.space_id = %s GROUP BY 1", (space_id,)):
            out[doc] = {"db": rows, "db_distinct": distinct, "store": 0, "store_distinct": 0}
        tables = [r[0] for r in conn.execute(  # the chunk tables (one per dimension), not the bookkeeping ones
            "SELECT table_name FROM information_schema.columns WHERE table_name LIKE 'vs\\_pgvector%%' "
            "AND column_name = 'document_id'")]
        for table in tables:
            for doc, rows, distinct in conn.execute(
                    f'SELECT document_id, count(*), count(DISTINCT ordinal) FROM "{table}" '
                    "WHERE document_id = ANY(%s) GROUP BY 1", (list(out) or [""],)):
                out.setdefault(doc, {"db": 0, "db_distinct": 0, "store": 0, "store_distinct": 0})
                out[doc]["store"] += rows
                out[doc]["store_distinct"] += distinct
    return out


def duplicates(copies, docs):
    """Documents whose chunks are not exactly one copy each: rows in the database, distinct
    ordinals, rows and distinct ordinals in the vector store and the document's own count agree."""
    bad = {}
    for d, (status, chunks, _) in docs.items():
        c = copies.get(d, {"db": 0, "db_distinct": 0, "store": 0, "store_distinct": 0})
        if status == "ready" and not (c["db"] == c["db_distinct"] == c["store"] == c["store_distinct"] == chunks > 0):
            bad[d] = {**c, "chunks_field": chunks}
    return bad


def wait_until(predicate, timeout, interval=0.2):
    deadline = now() + timeout
    while now() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def upload(api, space_id, docs):
    return api.upload(space_id, [(f"doc-{i:02d}.txt", text_of(i)) for i in docs])


def new_space(api, name):
    status, space = api.call("POST", "/api/v1/spaces", {"name": name})
    assert status == 201, space
    return space["id"]


def children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# ---------------------------------------------------------------- scenarios


def scenario_kill(api, env, args):
    space = new_space(api, "kill -9")
    worker = Worker(env, processes=1, threads=2).wait_ready()
    upload(api, space, range(args.docs))
    t0 = now()
    wait_until(lambda: statuses(env, space).get("ready", 0) >= max(2, args.docs // 5), 120)
    at_kill = statuses(env, space)
    worker.kill()
    killed = now()
    print(f"  SIGKILL after {killed - t0:.1f} s: {at_kill}", flush=True)
    worker = Worker(env, processes=1, threads=2)
    worker.wait_ready()
    restarted = now() - killed
    done = wait_until(lambda: (c := statuses(env, space)).get("ready", 0) + c.get("failed", 0) >= args.docs and c,
                      args.timeout)
    recovery = now() - killed
    worker.terminate()
    final = statuses(env, space)
    copies = chunk_copies(env, space)
    dup = duplicates(copies, documents(env, space))
    ok = final.get("ready", 0) == args.docs and not dup
    return {"verdict": "ok" if ok else "FAILED", "documents": args.docs, "statuses_at_kill": at_kill,
            "statuses_final": final, "finished": bool(done), "worker_restarted_ready_s": round(restarted, 1),
            "recovery_s_kill_to_all_ready": round(recovery, 1),
            "chunks_total_db": sum(c["db"] for c in copies.values()),
            "chunks_total_store": sum(c["store"] for c in copies.values()),
            "documents_with_duplicate_or_missing_chunks": dup}


def scenario_term(api, env, args):
    """SIGTERM to the main process only (Docker, Kubernetes: PID 1), then to the whole process
    group (a platform that signals every process of the container, as Heroku does)."""
    out = {"sigterm_main": sigterm(api, env, args, group=False),
           "sigterm_group": sigterm(api, env, args, group=True)}
    out["child_killed"] = child_death(env)
    return out


def sigterm(api, env, args, group):
    space = new_space(api, f"SIGTERM {'group' if group else 'main'}")
    worker = Worker(env, processes=1, threads=1).wait_ready()
    upload(api, space, range(args.docs))
    in_flight = wait_until(lambda: [d for d, (s, *_) in documents(env, space).items() if s in ("parsing", "embedding")],
                           120, interval=0.05)
    time.sleep(0.3)  # well inside the document
    in_flight = [d for d, (s, *_) in documents(env, space).items() if s in ("parsing", "embedding")] or in_flight
    before = statuses(env, space)
    t = now()
    if group:
        os.killpg(worker.process.pid, signal.SIGTERM)
    else:
        worker.process.send_signal(signal.SIGTERM)
    try:
        worker.process.wait(120)
    except subprocess.TimeoutExpired:
        worker.kill()
    exit_s = now() - t
    after = statuses(env, space)
    states = documents(env, space)
    finished = {d: states[d][0] for d in in_flight}
    print(f"  SIGTERM to the {'process group' if group else 'main process'} with {before}: exited "
          f"{worker.process.returncode} after {exit_s:.1f} s; in flight -> {finished}; now {after}", flush=True)
    tail = [line.rstrip()[:200] for line in worker.lines[-6:]]
    exit_code = worker.process.returncode
    t = now()
    worker = Worker(env, processes=1, threads=2).wait_ready()
    done = wait_until(lambda: (c := statuses(env, space)).get("ready", 0) + c.get("failed", 0) >= args.docs and c,
                      args.timeout)
    rest_s = now() - t
    worker.terminate()
    final = statuses(env, space)
    dup = duplicates(chunk_copies(env, space), documents(env, space))
    lost = args.docs - sum(after.values())
    ok = (all(s == "ready" for s in finished.values()) and after.get("failed", 0) == 0 and not lost
          and final.get("ready", 0) == args.docs and not dup)
    return {"verdict": "ok" if ok else "FAILED", "signal_to": "process group" if group else "main process",
            "statuses_at_sigterm": before, "in_flight_at_sigterm": finished,
            "worker_exit_code": exit_code, "worker_exit_s": round(exit_s, 1), "worker_output_tail": tail, "statuses_after_exit": after,
            "next_worker_finished_rest_s": round(rest_s, 1), "finished": bool(done),
            "statuses_final": final, "documents_with_duplicate_or_missing_chunks": dup}


def child_death(env):
    """SIGKILL one child process of `dramatiq tasks --processes 2`: what does the main do?"""
    worker = Worker(env, processes=2, threads=1)
    worker.wait_ready()
    wait_until(lambda: len(children(worker.process.pid)) >= 2, 30)
    kids = children(worker.process.pid)
    time.sleep(1)
    victim = kids[0]
    os.kill(victim, signal.SIGKILL)
    t = now()
    try:
        worker.process.wait(30)
        exited, code = True, worker.process.returncode
    except subprocess.TimeoutExpired:
        exited, code = False, None
    elapsed = now() - t
    left = children(worker.process.pid) if not exited else []
    tail = [line.rstrip() for line in worker.lines[-8:]]
    worker.kill()
    verdict = "exits non-zero (the platform restarts it)" if exited and code else \
        "exits 0 (a platform may NOT restart it)" if exited else "keeps running without the child"
    print(f"  child {victim} killed: main {verdict} (code {code}, {elapsed:.1f} s)", flush=True)
    return {"verdict": verdict, "main_exited": exited, "exit_code": code, "seconds_to_exit": round(elapsed, 1),
            "children_before": len(kids), "children_left_if_running": len(left), "main_output_tail": tail}


# ---------------------------------------------------------------- Redis


class RedisServer:
    """The test Redis: stopped with SHUTDOWN NOSAVE and started again on the same port."""

    def __init__(self, url):
        self.url = url
        client = redis.Redis.from_url(url)
        info = client.info("server")
        self.port, self.executable = info["tcp_port"], info["executable"]
        self.process = None
        self.dir = tempfile.mkdtemp(prefix="spacio-faults-redis-")

    def ping(self):
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self):
        try:
            redis.Redis.from_url(self.url).shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        if self.process is not None:
            self.process.wait(10)
        wait_until(lambda: not self.ping(), 10)

    def start(self):
        self.process = subprocess.Popen([self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        if not wait_until(self.ping, 20, 0.05):
            raise SystemExit("Redis did not come back")

    def close(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Loop:
    """Requests in a loop on a thread; each result is (t, phase, status or error, seconds)."""

    def __init__(self, fn, interval=0.0):
        self.fn, self.interval, self.results, self.phase = fn, interval, [], "before"
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            phase, t = self.phase, now()
            try:
                status = self.fn()
            except Exception as error:  # noqa: BLE001 - every failure is a result here
                status = type(error).__name__
            self.results.append((t, phase, status, now() - t))
            if self.interval:
                time.sleep(self.interval)

    def stop(self):
        self._stop.set()
        self.thread.join(60)


def by_phase(results):
    out = {}
    for _, phase, status, seconds in results:
        row = out.setdefault(phase, {"statuses": {}, "max_s": 0.0, "n": 0})
        row["statuses"][str(status)] = row["statuses"].get(str(status), 0) + 1
        row["max_s"] = round(max(row["max_s"], seconds), 2)
        row["n"] += 1
    return out


def request(port, method, path, token, body=None, timeout=30, headers_out=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = json.dumps(body) if body is not None else None
        connection.request(method, path, body=payload, headers={"Authorization": f"Bearer {token}",
                                                                "Content-Type": "application/json",
                                                                "Accept": "application/json"})
        response = connection.getresponse()
        data = response.read()
        if headers_out is not None:
            headers_out.update({k.lower(): v for k, v in response.getheaders()})
        return response.status, data
    finally:
        connection.close()


def scenario_redis(api, env, args, token, redis_server):
    space = new_space(api, "Redis down")
    worker = Worker(env, processes=1, threads=2).wait_ready()
    upload(api, space, range(3))
    wait_until(lambda: statuses(env, space).get("ready", 0) >= 3, 120)
    status, first = request(api.port, "POST", f"/api/v1/spaces/{space}/chat", token, {"message": "What is topic 3?"})
    assert status == 200, first
    conversation = json.loads(first)["conversation_id"]
    chat_path = f"/api/v1/spaces/{space}/chat"

    def chat():
        return request(api.port, "POST", chat_path, token, {"message": "And the number of topic 5?",
                                                              "conversation_id": conversation}, timeout=30)[0]

    chats = Loop(chat, interval=0.2)
    lists = Loop(lambda: request(api.port, "GET", "/api/v1/spaces", token, timeout=30)[0], interval=0.1)
    time.sleep(3)
    chats.phase = lists.phase = "stopping"
    redis_server.stop()
    stopped = now()
    chats.phase = lists.phase = "down"
    print("  Redis stopped", flush=True)
    time.sleep(1)
    t = now()
    try:
        (down_doc,) = api.upload(space, [("during-outage.txt", text_of(99))])["documents"]
        upload_down = {"status": 202, "document": down_doc["status"], "reason": (down_doc["error"] or {}).get("reason")}
    except AssertionError as error:
        upload_down = {"status": "not 202", "detail": str(error)[:300]}
    except Exception as error:  # noqa: BLE001
        upload_down = {"status": type(error).__name__, "detail": str(error)[:300]}
    upload_down["seconds"] = round(now() - t, 2)
    time.sleep(max(0.0, args.redis_down - (now() - stopped)))
    worker_alive_while_down = worker.process.poll() is None
    chats.phase = lists.phase = "starting"
    redis_server.start()
    chats.phase = lists.phase = "after"
    back = now()
    print("  Redis started again", flush=True)
    time.sleep(args.after)
    chats.stop()
    lists.stop()
    # memory: the next turn writes the conversation's list to Redis again
    client = redis.Redis.from_url(redis_server.url)
    headers = {}
    status_after, _ = request(api.port, "POST", chat_path, token, {"message": "One more?", "conversation_id": conversation},
                              headers_out=headers)
    memory_key = client.exists(f"spacio:chat:{conversation}") == 1
    limiter_keys = [k.decode() for k in client.scan_iter(count=1000) if b"LIMIT" in k.upper() or b"spacio/" in k][:5]
    worker_alive_after = worker.process.poll() is None
    if not worker_alive_after:
        worker = Worker(env, processes=1, threads=2).wait_ready()
    t = now()
    try:
        api.upload(space, [("after-outage.txt", text_of(100))])
        upload_after = 202
    except AssertionError as error:
        upload_after = str(error)[:200]
    if upload_down.get("status") == 202:  # the document the queue refused: a reindex retries it
        reindex_status, _ = api.call("POST", f"/api/v1/spaces/{space}/documents/{down_doc['id']}/reindex")
        upload_down["reindex_after"] = reindex_status
    ingested = wait_until(lambda: (documents(env, space) and
                                   sum(1 for s, *_ in documents(env, space).values() if s == "ready") >= 4 +
                                   (1 if upload_down.get("status") == 202 else 0)), 90)
    ingest_after_s = now() - t
    final = statuses(env, space)
    worker.terminate()
    chat_phases, list_phases = by_phase(chats.results), by_phase(lists.results)
    first_ok_after = next((t - back for t, phase, status, _ in chats.results if phase == "after" and status == 200), None)
    problems = []
    for what, phases in (("chat", chat_phases), ("GET /spaces", list_phases)):
        for phase, row in phases.items():
            if set(row["statuses"]) - {"200"}:
                problems.append(f"{what} {phase}: {row['statuses']}")
    if upload_down.get("status") != 202 and "'code': 503" not in upload_down.get("detail", ""):
        problems.append(f"upload while Redis is down: not 202 and not 503 ({upload_down.get('detail', '')[:80]})")
    if upload_down.get("status") == 202 and upload_down.get("reason") != "queue_unavailable":
        problems.append(f"upload while Redis is down: {upload_down}, not failed with queue_unavailable")
    if status_after != 200 or not memory_key:
        problems.append("chat memory not back in Redis")
    if not limiter_keys:
        problems.append("no rate-limit keys in Redis after it came back")
    if upload_after != 202 or not ingested:
        problems.append("upload after Redis came back not ingested")
    stuck = final.get("queued", 0)
    if stuck:
        problems.append(f"{stuck} document(s) left queued (the upload during the outage never reached the queue)")
    print(f"  chats {chat_phases}\n  lists {list_phases}\n  upload while down {upload_down}; memory key {memory_key}, "
          f"limiter keys {len(limiter_keys)}, upload after {upload_after}, statuses {final}", flush=True)
    return {"verdict": "FAILED" if problems else "ok", "problems": problems, "redis_down_s": args.redis_down,
            "chats_by_phase": chat_phases, "list_spaces_by_phase": list_phases,
            "first_chat_200_after_redis_back_s": round(first_ok_after, 2) if first_ok_after is not None else None,
            "upload_while_down": upload_down, "worker_alive_while_down": worker_alive_while_down,
            "worker_alive_after": worker_alive_after,
            "after": {"chat_status": status_after, "chat_memory_key_in_redis": memory_key,
                      "rate_limit_headers": {k: v for k, v in headers.items() if k.startswith("x-ratelimit")},
                      "limiter_keys_in_redis": limiter_keys, "upload_status": upload_after,
                      "upload_ingested": bool(ingested), "upload_to_ready_s": round(ingest_after_s, 1)},
            "statuses_final": final}


# ---------------------------------------------------------------- PostgreSQL


class PostgresServer:
    """The test PostgreSQL, stopped and started with its own pg_ctl as the data directory's owner."""

    def __init__(self, env):
        with psycopg.connect(conninfo(env), autocommit=True) as conn:
            self.data = conn.execute("SHOW data_directory").fetchone()[0]
        pid = int(Path(self.data, "postmaster.pid").read_text().split()[0])
        self.bin = Path(os.readlink(f"/proc/{pid}/exe")).parent
        self.options = shlex.split(Path(self.data, "postmaster.opts").read_text())[1:]
        owner = pwd.getpwuid(os.stat(self.data).st_uid).pw_name
        self.prefix = ["runuser", "-u", owner, "--"] if os.getuid() == 0 and owner != "root" else []
        self.cwd = str(Path(self.data).parent)

    def pg_ctl(self, *arguments):
        return subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", self.data, *arguments], cwd=self.cwd,
                              capture_output=True, text=True, timeout=120)

    def stop(self):
        result = self.pg_ctl("-m", "fast", "-w", "stop")
        if result.returncode:
            raise SystemExit(f"pg_ctl stop failed: {result.stderr}")

    def start(self):
        options = [o for i, o in enumerate(self.options)
                   if o != "-D" and (i == 0 or self.options[i - 1] != "-D")]
        result = self.pg_ctl("-w", "-t", "60", "-l", str(Path(self.data, "log")), "-o", shlex.join(options), "start")
        if result.returncode:
            raise SystemExit(f"pg_ctl start failed: {result.stderr}{result.stdout}")


def scenario_postgres(api, env, args, token, pg):
    class Client:
        def __init__(self):
            self.connection = None

        def __call__(self):
            for attempt in (1, 2):
                try:
                    if self.connection is None:
                        self.connection = http.client.HTTPConnection("127.0.0.1", api.port, timeout=args.client_timeout)
                    self.connection.request("GET", "/api/v1/spaces", headers={"Authorization": f"Bearer {token}"})
                    response = self.connection.getresponse()
                    response.read()
                    return response.status
                except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                    self.connection = None  # the server closed an idle keep-alive connection: once more
                    if attempt == 2:
                        raise

    loops = [Loop(Client()) for _ in range(args.clients)]

    def phase(name):
        for loop in loops:
            loop.phase = name

    time.sleep(4)
    phase("stopping")  # requests in flight while the server shuts down (-m fast ends their sessions)
    t_stop = now()
    pg.stop()
    stopped = now()
    phase("down")
    print(f"  PostgreSQL stopped ({stopped - t_stop:.1f} s)", flush=True)
    time.sleep(args.pg_down)
    phase("starting")
    t_start = now()
    pg.start()
    started = now()
    phase("after")
    print(f"  PostgreSQL started ({started - t_start:.1f} s)", flush=True)
    time.sleep(args.after)
    for loop in loops:
        loop.stop()
    results = sorted(r for loop in loops for r in loop.results)
    phases = by_phase(results)
    after = [r for r in results if r[1] == "after"]
    first_ok = next((t for t, _, status, seconds in after if status == 200), None)
    last_bad = max((t + seconds for t, _, status, seconds in after if status != 200), default=None)
    tail = [r for r in after if r[0] > started + args.after - 5]
    down = phases.get("down", {"statuses": {}, "max_s": 0})
    not_503 = {phase: {s: n for s, n in row["statuses"].items() if not s.isdigit() or (int(s) >= 500 and s != "503")}
               for phase, row in phases.items()}
    not_503 = {phase: bad for phase, bad in not_503.items() if bad}
    problems = []
    if not_503:
        problems.append(f"5xx other than 503 (or no response): {not_503}")
    if down["max_s"] > 5:
        problems.append(f"a request took {down['max_s']} s while the database was down")
    if not (tail and all(s == 200 for _, _, s, _ in tail)):
        problems.append("not all 200 in the last 5 s after the restart")
    print(f"  by phase {phases}", flush=True)
    return {"verdict": "FAILED" if problems else "ok", "problems": problems, "clients": args.clients,
            "pg_down_s": args.pg_down, "pg_stop_s": round(stopped - t_stop, 1),
            "pg_start_s": round(started - t_start, 1), "by_phase": phases,
            "first_200_after_start_s": round(first_ok - started, 2) if first_ok else None,
            "last_non_200_after_start_s": round(last_bad - started, 2) if last_bad else 0.0,
            "all_200_in_last_5_s": all(s == 200 for _, _, s, _ in tail) and bool(tail)}


# ---------------------------------------------------------------- main


def server_log_errors(log):
    """The web server's error lines by kind: (logger, message, the exception's last line)."""
    counts, tracebacks = {}, 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("level") not in ("ERROR", "CRITICAL"):
            continue
        exc = (entry.get("exc") or "").strip().splitlines()
        tracebacks += bool(exc)
        last = next((x for x in reversed(exc) if "Error" in x or "Exception" in x), exc[-1] if exc else "")
        message = " ".join(w if not any(c.isdigit() for c in w) or len(w) < 16 else "<id>"
                           for w in entry.get("message", "").split())
        key = f"{entry.get('logger')}: {message[:100]} | {last.strip()[:160]}"
        counts[key] = counts.get(key, 0) + 1
    return {"error_lines_with_traceback": tracebacks,
            "by_kind": dict(sorted(counts.items(), key=lambda kv: -kv[1])[:10])}


def scrub(text):
    """No machine paths in the results: the checkout and the temporary directory."""
    return text.replace(str(ROOT), ".").replace(tempfile.gettempdir(), "<tmp>")



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", default="kill,term,redis,postgres")
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--delay-ms", type=int, default=150, help="hashing embedder delay per batch of 4")
    parser.add_argument("--redis-down", type=float, default=10.0)
    parser.add_argument("--pg-down", type=float, default=8.0)
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after a server is back")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--client-timeout", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="max seconds to wait for ingestion")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    args = parser.parse_args()
    database_url, redis_url = os.environ.get("SPACIO_TEST_DATABASE_URL"), os.environ.get("SPACIO_TEST_REDIS_URL")
    if not (database_url and redis_url):
        raise SystemExit("run inside `bash tests/services.sh run -- ...` (PostgreSQL + Redis)")
    env = server_env(database_url, redis_url, {**SETTINGS, "PYTHONUNBUFFERED": "1",
                                               "SPACIO_PLUGINS__EMBEDDER__HASHING__DELAY_MS": str(args.delay_ms)})
    fresh_schema(env)
    redis.Redis.from_url(redis_url).flushdb()
    report = {"benchmark": "faults", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "setup": {"web": "gunicorn -c gunicorn.conf.py --workers 1",
                        "worker": "dramatiq tasks --processes P --threads T (the Procfile's)",
                        "embedder": f"hashing, {args.delay_ms} ms per batch of 4", "documents": args.docs},
              "scenarios": {}}
    redis_server = RedisServer(redis_url)
    log = Path(env["SPACIO_INSTANCE_PATH"]) / "gunicorn.log"
    try:
        with gunicorn(env, log=log) as (api, web):
            token = login(api)
            for name in args.scenarios.split(","):
                print(f"{name} ...", flush=True)
                t = now()
                if name == "kill":
                    result = scenario_kill(api, env, args)
                elif name == "term":
                    result = scenario_term(api, env, args)
                elif name == "redis":
                    result = scenario_redis(api, env, args, token, redis_server)
                elif name == "postgres":
                    result = scenario_postgres(api, env, args, token, PostgresServer(env))
                else:
                    raise SystemExit(f"unknown scenario {name}")
                result["wall_s"] = round(now() - t, 1)
                report["scenarios"][name] = result
                print(f"  -> {json.dumps(result)[:600]}", flush=True)
            report["web_alive_at_end"] = web.poll() is None
        report["server_log"] = server_log_errors(log)
    finally:
        redis_server.close()
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out)
    out.write_text(scrub(json.dumps(report, indent=2)) + "\n")
    print("\n" + "\n".join(f"{name:<10} {r.get('verdict', {k: v.get('verdict') for k, v in r.items() if isinstance(v, dict)})}"
                           for name, r in report["scenarios"].items()))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    sys.exit(main())
