"""N concurrent SSE chats against ONE gunicorn gevent worker, with a paced generator.

The server is the Procfile's web command with one worker (``gunicorn -c gunicorn.conf.py
--workers 1``), ``SPACIO_GENERATOR=paced``: every answer is ``--tokens`` pieces at
``--rate`` pieces a second (40 at 20/s: 2 s of streaming, like a remote LLM), so the server
holds N streams open at once while it retrieves for the newcomers. The space holds
``--docs`` SciFact abstracts uploaded through the API; the questions are the SciFact test
claims that cite one of them (so answers are grounded and generated, not a one-piece "not
found"). Each chat embeds its question (the local MiniLM embedder), searches (hybrid),
stores the user message, streams, and stores the answer with its citations and usage.

Backends: ``postgres`` (PostgreSQL + pgvector and Redis, production-like: run inside
``bash tests/services.sh run -- ...``; a ``dramatiq tasks`` worker ingests) and
``sqlite`` (the embedded default: SQLite, the local vector store, in-process ingestion).

The client is asyncio with raw sockets, one connection per chat, all N started at once,
reading each response as a browser's ``fetch()`` reader does: status line, headers, the
chunked body as it arrives, SSE events split on blank lines. A chat counts as OK only if
it got HTTP 200 and ``start``, ``citations``, one or more ``delta``, ``end``, in that order.
Reported per N: time to first byte (status line) and to the first ``delta`` p50/p99, time
to ``end`` p50/p99, errors by kind, the worker's peak RSS and CPU, and the server log's
error lines. The load average is recorded: the client shares the 2 cores with the server.

``/search`` mode (``--endpoint search``) runs the same harness against POST /search (no
stream): a check of the client and of the retrieval phase alone.

Writes bench/results/stream.json. Not a test: numbers, not asserts.

    bash tests/services.sh run -- .venv/bin/python bench/stream.py [--n 100,500,1000]
        [--backends postgres,sqlite] [--rate 20] [--tokens 40] [--docs 50] [--py-spy]

Configurations tried are added to the same file with ``--merge --label``, e.g. a longer
pool checkout timeout, or streams long enough that all N are open at once:

    ... bench/stream.py --backends postgres --n 1000 --merge --label pool_timeout=120s \
        --env 'SPACIO_SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": true, "pool_timeout": 120}'
    ... bench/stream.py --backends postgres --n 1000 --tokens 800 --ramp 30 --timeout 300 --merge \
        --label '800 tokens, 30 s ramp, pool_timeout=120s' --env 'SPACIO_SQLALCHEMY_ENGINE_OPTIONS=...'

``--py-spy`` (``pip install py-spy``) samples the worker's GIL-holding thread during each
run and adds where the Python time goes (inclusive shares of the chat's phases).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from latency import (BIN, SCIFACT, fresh_schema, gunicorn, ingest, login, percentiles, process_cpu_s,  # noqa: E402
                     read_jsonl, scifact, server_env, wait_ready)

EXPECTED = "start citations delta+ end"


# ---------------------------------------------------------------- client


class StreamError(Exception):
    pass


async def read_body(reader, headers):
    """Yield the body's bytes as they arrive (chunked or until the connection closes)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise StreamError("connection closed inside the chunked body")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()  # the blank line after the last chunk (no trailers)
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


def parse_event(raw: bytes):
    kind, data = "message", []
    for line in raw.decode("utf-8").split("\n"):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    return kind, json.loads("\n".join(data)) if data else None


def in_order(kinds):
    """start, citations, delta (one or more), end."""
    return (len(kinds) >= 4 and kinds[0] == "start" and kinds[1] == "citations" and kinds[-1] == "end"
            and all(k == "delta" for k in kinds[2:-1]))


async def one_request(port, path, token, payload, stream, t_start):
    """One request on its own connection; a dict of timings (s from t_start) and outcome."""
    out = {"ok": False}
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        out["connected"] = time.perf_counter() - t_start
        body = json.dumps(payload).encode() if payload is not None else b""
        accept = "text/event-stream" if stream else "application/json"
        method = "POST" if payload is not None else "GET"
        writer.write((f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                      f"Content-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(body)}\r\n"
                      "Connection: close\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await reader.readline()
        if not status_line:
            raise StreamError("connection closed before the status line")
        out["first_byte"] = time.perf_counter() - t_start
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        if status != 200:
            text = b"".join([c async for c in read_body(reader, headers)])
            try:
                reason = json.loads(text).get("reason")
            except ValueError:
                reason = text[:80].decode("utf-8", "replace")
            raise StreamError(f"HTTP {status} {reason}")
        if not stream:
            b"".join([c async for c in read_body(reader, headers)])
            out["end"] = time.perf_counter() - t_start
            out["ok"] = True
            return out
        if not headers.get("content-type", "").startswith("text/event-stream"):
            raise StreamError(f"content type {headers.get('content-type')}")
        kinds, buffer = [], b""
        async for data in read_body(reader, headers):
            buffer += data
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                kind, event = parse_event(raw)
                now = time.perf_counter() - t_start
                if kind == "error":
                    raise StreamError(f"error event {event.get('reason') if isinstance(event, dict) else event}")
                if not kinds:
                    out["first_event"] = now
                if kind == "delta" and "first_delta" not in out:
                    out["first_delta"] = now
                if kind == "end" and isinstance(event, dict):
                    out["grounded"] = bool(event.get("grounded"))
                kinds.append(kind)
        out["end"] = time.perf_counter() - t_start
        out["deltas"] = kinds.count("delta")
        if not in_order(kinds):
            compact = [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]
            raise StreamError(f"events out of order: {compact[:6]}")
        out["ok"] = True
    except StreamError as error:
        out["error"] = str(error)
    except (OSError, asyncio.IncompleteReadError, ValueError, UnicodeDecodeError) as error:
        out["error"] = f"{type(error).__name__}: {error}"[:120]
    except asyncio.CancelledError:
        out["error"] = "client timeout"
    finally:
        if writer is not None:
            writer.close()
    return out


async def run_n(port, token, space_id, questions, n, endpoint, timeout, ramp=0.0):
    """n requests, started at once (or evenly over ``ramp`` seconds); per-request outcomes
    (times from the run's start) and the wall time. ``endpoint`` "space" is GET /spaces/{id}."""
    path = f"/api/v1/spaces/{space_id}" + ("" if endpoint == "space" else f"/{endpoint}")
    t_start = time.perf_counter()

    async def bounded(i):
        if ramp:
            await asyncio.sleep(ramp * i / n)
        question = questions[i % len(questions)]
        payload = {"message": question} if endpoint == "chat" else {"query": question} if endpoint == "search" else None
        sent = time.perf_counter() - t_start
        task = asyncio.ensure_future(one_request(port, path, token, payload, endpoint == "chat", t_start))
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
        out = await task
        for key in ("connected", "first_byte", "first_event", "first_delta", "end"):
            if key in out:  # from this request's own start
                out[key] -= sent
        out["sent"] = sent
        return out

    results = await asyncio.gather(*(bounded(i) for i in range(n)))
    return results, time.perf_counter() - t_start


def peak_open(results):
    """Most streams open at one moment (between their first byte and their end)."""
    edges = []
    for r in results:
        if "first_byte" in r and "end" in r:
            edges += [(r["sent"] + r["first_byte"], 1), (r["sent"] + r["end"], -1)]
    peak = current = 0
    for _, step in sorted(edges):
        current += step
        peak = max(peak, current)
    return peak


def summarise(results, wall, expected_stream_s=None):
    ok = [r for r in results if r["ok"]]
    errors = {}
    for r in results:
        if not r["ok"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    ms = lambda key: percentiles([r[key] * 1000 for r in ok if key in r])  # noqa: E731
    return {"n": len(results), "ok": len(ok), "errors": len(results) - len(ok), "error_kinds": errors,
            "wall_s": round(wall, 2), "first_byte": ms("first_byte"), "first_delta": ms("first_delta"),
            "end": ms("end"), "deltas_per_stream": sorted({r.get("deltas") for r in ok if "deltas" in r})[:5],
            "grounded": sum(1 for r in ok if r.get("grounded")),
            "peak_open_streams": peak_open(results), **stream_pace(ok, expected_stream_s)}


def stream_pace(ok, expected):
    """How much slower than the generator's pace the full-length streams were delivered
    (first delta to end over the paced duration): 1.0 = the worker kept up."""
    if not expected:
        return {}
    longest = max((r.get("deltas", 0) for r in ok), default=0)
    ratios = sorted((r["end"] - r["first_delta"]) / expected for r in ok
                    if r.get("deltas") == longest and "first_delta" in r)
    if not ratios:
        return {}
    return {"pace_ratio_p50": round(statistics.median(ratios), 2),
            "pace_ratio_p99": round(ratios[min(len(ratios) - 1, int(len(ratios) * 0.99))], 2)}


def cost_probe(port, token, space_id, questions, worker, n=60):
    """Worker CPU ms per request (n requests, 20 at a time): what one worker can start per second."""
    out = {}
    for endpoint, label in (("space", "GET /spaces/{id} (auth + access)"), ("search", "POST /search (hybrid)"),
                            ("chat", "POST /chat (SSE, whole stream)")):
        cpu, done = process_cpu_s(worker), 0
        for start in range(0, n, 20):
            results, _ = asyncio.run(run_n(port, token, space_id, questions[start:] + questions, 20, endpoint, 120))
            done += sum(r["ok"] for r in results)
        out[label] = round((process_cpu_s(worker) - cpu) * 1000 / max(1, done), 1)
    return out


# ---------------------------------------------------------------- server side


def worker_pid(master_pid):
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def vm_hwm_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def log_errors(path, since):
    """Error lines the server logged since byte offset ``since``: counts by first line."""
    with open(path, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    counts = {}
    for line in text.splitlines():
        if "ERROR" in line or "Error:" in line or "Exception" in line[:40]:
            key = line.split("] ", 2)[-1][:140] if line.startswith("[") else line[:140]
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:8])


def profile_summary(path, top=25):
    """Self and inclusive sample shares by function from py-spy's collapsed stacks."""
    own, inclusive, total = {}, {}, 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        count = int(count)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] for f in
                  stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    share = lambda d: {k: round(v / total, 3) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]}  # noqa
    focus = {}
    for name in FOCUS:
        focus[name] = round(sum(v for k, v in inclusive.items() if k.startswith(name + " (")) / max(1, total), 3)
    return {"samples": total, "phases_inclusive": focus, "self": share(own), "inclusive": share(inclusive)}


#: functions whose inclusive share of the GIL-holding samples says where a chat's time goes
FOCUS = ("jwt_required.<locals>.wrapper.<locals>.decorator", "RouteLimit.__call__.<locals>.__inner", "start_chat",
         "access", "retrieve", "MiniLMEmbedder.embed_documents", "PgVectorStore.search", "LocalVectorStore.search",
         "prepare", "Session.commit", "_remember", "events", "Generation.pieces", "frame", "finish_chat",
         "Hub.run")


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# ---------------------------------------------------------------- main


def answerable(docs):
    """The SciFact test claims that cite one of ``docs``: questions the space can answer
    (a question with nothing relevant gets a one-piece "not found" answer, no generation)."""
    held = {d for d, _ in docs}
    wanted = set()
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        if did in held:
            wanted.add(qid)
    return [q["text"] for q in read_jsonl(SCIFACT / "queries.jsonl") if q["_id"] in wanted]



def bench_backend(backend, args, docs, questions):
    database_url = os.environ.get("SPACIO_TEST_DATABASE_URL") if backend == "postgres" else None
    redis_url = os.environ.get("SPACIO_TEST_REDIS_URL") if backend == "postgres" else None
    extra = {"SPACIO_GENERATOR": "paced",
             "SPACIO_PLUGINS__GENERATOR__PACED__TOKENS_PER_SECOND": str(args.rate),
             "SPACIO_PLUGINS__GENERATOR__PACED__TOKENS": str(args.tokens),
             # one bench user asks N questions at once; the per-user limit is for humans
             "SPACIO_ASK_RATE_LIMIT": "1000000 per minute", "SPACIO_API_RATE_LIMIT": "1000000 per minute",
             "SPACIO_UPLOAD_RATE_LIMIT": "1000000 per minute"}
    for item in args.env:
        key, _, value = item.partition("=")
        extra[key] = value
    env = server_env(database_url, redis_url, extra)
    fresh_schema(env)
    log = Path(env["SPACIO_INSTANCE_PATH"]) / "gunicorn.log"
    out = {"backend": backend, "server_env": {k: v for k, v in extra.items()}}
    with gunicorn(env, dramatiq_threads=1 if backend == "postgres" else 0, log=log,
                  worker_connections=args.worker_connections) as (api, web):
        token = login(api)
        space = ingest(api, "SciFact chat", docs)
        out["ingest"] = wait_ready(api, space, len(docs))
        worker = worker_pid(web.pid)
        out["worker_rss_mib_before"] = vm_hwm_mib(worker)
        # warm: the model, the pools, the statistics
        asyncio.run(run_n(api.port, token, space, questions, 5, args.endpoint, args.timeout))
        out["worker_cpu_ms_per_request"] = cost_probe(api.port, token, space, questions, worker)
        print(f"  worker CPU ms per request: {out['worker_cpu_ms_per_request']}", flush=True)
        out["runs"] = {}
        for n in args.n:
            time.sleep(args.pause)
            offset = log.stat().st_size
            load = os.getloadavg()[0]
            cpu = process_cpu_s(worker)
            spy = None
            if args.py_spy:
                spy_out = Path(env["SPACIO_INSTANCE_PATH"]) / f"py-spy-{n}.txt"
                py_spy = str(BIN / "py-spy") if (BIN / "py-spy").exists() else "py-spy"
                spy = subprocess.Popen([py_spy, "record", "--pid", str(worker), "--format", "raw", "--rate", "200",
                                        "--nonblocking", "--gil", "--output", str(spy_out)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results, wall = asyncio.run(run_n(api.port, token, space, questions, n, args.endpoint, args.timeout,
                                              args.ramp))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            row = summarise(results, wall, (args.tokens - 1) / args.rate if args.endpoint == "chat" else None)
            row["load_1min_before"] = round(load, 2)
            row["worker_cpu_s"] = round(process_cpu_s(worker) - cpu, 1)
            row["worker_peak_rss_mib"] = vm_hwm_mib(worker)
            row["server_log_errors"] = log_errors(log, offset)
            if spy is not None and spy_out.exists():
                row["py_spy"] = profile_summary(spy_out)
            out["runs"][str(n)] = row
            print(f"  {backend} N={n}: ok {row['ok']}/{n}  first byte p50 {row['first_byte'].get('p50_ms')} "
                  f"p99 {row['first_byte'].get('p99_ms')} ms  end p50 {row['end'].get('p50_ms')} "
                  f"p99 {row['end'].get('p99_ms')} ms  errors {row['error_kinds']}  wall {row['wall_s']} s  "
                  f"peak open {row['peak_open_streams']}  "
                  f"pace x{row.get('pace_ratio_p50')}/{row.get('pace_ratio_p99')} "
                  f"(load {load:.1f})", flush=True)
            if row["server_log_errors"]:
                print(f"    server log: {row['server_log_errors']}")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", default="100,500,1000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--rate", type=float, default=20.0, help="generator pieces per second")
    parser.add_argument("--tokens", type=int, default=40, help="generator pieces per answer")
    parser.add_argument("--docs", type=int, default=50, help="SciFact abstracts in the space")
    parser.add_argument("--endpoint", choices=("chat", "search"), default="chat")
    parser.add_argument("--ramp", type=float, default=0.0, help="start the N requests evenly over this many s "
                        "(default 0: all at once)")
    parser.add_argument("--timeout", type=float, default=180.0, help="client timeout per request, s")
    parser.add_argument("--pause", type=float, default=5.0, help="seconds between runs")
    parser.add_argument("--worker-connections", type=int, default=None,
                        help="GUNICORN_WORKER_CONNECTIONS (default: gunicorn.conf.py's, 1000)")
    parser.add_argument("--py-spy", action="store_true", help="sample the worker with py-spy during each run")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (experiments)")
    parser.add_argument("--label", default="", help="suffix of the result's key (e.g. a configuration tried)")
    parser.add_argument("--merge", action="store_true", help="add to the results already in --out")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "stream.json"))
    args = parser.parse_args()

    limits = raise_fd_limit()
    docs, _, _ = scifact(args.docs, 0)
    claims = answerable(docs)
    report = {"benchmark": "stream", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "load_average_start": [round(x, 2) for x in os.getloadavg()],
              "setup": {"server": "gunicorn -c gunicorn.conf.py --workers 1",
                        "generator": f"paced: {args.tokens} pieces at {args.rate}/s", "endpoint": args.endpoint,
                        "documents": len(docs), "client": "asyncio raw sockets, one connection per request, "
                        + (f"N started evenly over {args.ramp} s" if args.ramp else "all N started at once"),
                        "client_fd_limit": list(limits),
                        "ok_means": "HTTP 200 and events " + EXPECTED if args.endpoint == "chat" else "HTTP 200"},
              "backends": {}}
    for backend in args.backends.split(","):
        if backend == "postgres" and not (os.environ.get("SPACIO_TEST_DATABASE_URL")
                                          and os.environ.get("SPACIO_TEST_REDIS_URL")):
            print("postgres: skipped (run inside `bash tests/services.sh run -- ...`)")
            continue
        print(f"{backend}: ingesting {len(docs)} abstracts, then N = {args.n} ...", flush=True)
        key = f"{backend} {args.label}".strip()
        report["backends"][key] = bench_backend(backend, args, docs, claims)
        report["backends"][key]["setup"] = dict(report["setup"])
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]

    print(f"\n{'backend':<24}{'N':>6}{'ok':>6}{'errors':>7}{'grounded':>9}{'TTFB p50':>10}{'p99':>8}"
          f"{'1st delta p50':>14}"
          f"{'p99':>8}{'end p50':>9}{'p99':>8}{'peak open':>10}{'pace':>6}   (ms)")
    for backend, b in report["backends"].items():
        for n, r in b["runs"].items():
            f = lambda key, p: r[key].get(p, "-")  # noqa: E731
            print(f"{backend:<24}{n:>6}{r['ok']:>6}{r['errors']:>7}{r['grounded']:>9}{f('first_byte', 'p50_ms'):>10}"
                  f"{f('first_byte', 'p99_ms'):>8}{f('first_delta', 'p50_ms'):>14}{f('first_delta', 'p99_ms'):>8}"
                  f"{f('end', 'p50_ms'):>9}{f('end', 'p99_ms'):>8}{r['peak_open_streams']:>10}"
                  f"{r.get('pace_ratio_p50', '-'):>6}")
    out = Path(args.out)
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        previous["backends"].update(report["backends"])
        previous["load_average_end"] = report["load_average_end"]
        report = previous
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    sys.exit(main())
