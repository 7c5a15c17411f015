"""Ingestion throughput on SciFact (../shared/eval/retrieval/scifact/corpus.jsonl), through
the real API, against the embedder alone and against a LangChain pipeline, in one run.

Each abstract (title, blank line, text) is one `.txt` document, uploaded 20 per request to
a running server; the clock runs from the first upload to the last document `ready`.

- embedded: `gunicorn` on the embedded default (SQLite, local vector store, the in-process
  worker inside the web process), the `local` MiniLM embedder.
- postgres: `gunicorn` + a `dramatiq tasks` worker on PostgreSQL + pgvector and Redis
  (SPACIO_TEST_DATABASE_URL / SPACIO_TEST_REDIS_URL, as `tests/services.sh run --` sets).
- embedder-alone: Spacio's chunks (read back from the database) through the same embedder,
  nothing else: the physical limit.
- langchain: RecursiveCharacterTextSplitter(1000, 200) -> the same int8 MiniLM model in
  batches of 32 in input order (sentence-transformers' default batch size, no length
  bucketing, as a plain LangChain Embeddings class calls a model) -> langchain-postgres PGVector. Needs PostgreSQL and, in the venv,
  `pip install langchain-postgres langchain-text-splitters 'pgvector>=0.4'` (langchain-postgres
  pins pgvector<0.4 but runs with 0.5, which spacio-pgvector needs).

Reports docs/s, chunks/s, embedder tokens/s and peak RSS of the process(es) that ingest.
Writes bench/results/ingest.json. Not a test: numbers, not asserts.

    bash tests/services.sh run -- .venv/bin/python bench/ingest.py [--docs 1000] [--backends embedded,postgres]
"""

import argparse
import http.client
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "eval" / "retrieval" / "scifact" / "corpus.jsonl"
PASSWORD = "lavender-Orbit-73-quietly"
SECRET = "bench-secret-" + "x" * 40
BIN = Path(sys.executable).parent


def load_corpus(limit, seed=13):
    docs = [json.loads(line) for line in CORPUS.open()]
    if limit and limit < len(docs):
        docs = random.Random(seed).sample(docs, limit)
    return [(d["_id"], (d.get("title", "").strip() + "\n\n" + d["text"].strip()).strip()) for d in docs]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pids):
    """Sum over processes (and their children) of VmHWM, the peak resident set."""
    total = 0
    for pid in all_pids(pids):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024, 1)


def all_pids(roots):
    seen, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            children = []
        todo += [int(c) for c in children]
    return seen


class Api:
    def __init__(self, port):
        self.port = port
        self.headers = {}

    def call(self, method, path, body=None, headers=None, raw=None, content_type=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        hdrs = {**self.headers, **(headers or {})}
        if payload is not None:
            hdrs["Content-Type"] = content_type or "application/json"
        connection.request(method, path, body=payload, headers=hdrs)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if response.status == 401 and self.headers and not path.startswith("/api/v1/auth/"):
            self.login()  # the access token expired during a long run
            return self.call(method, path, body, headers, raw, content_type)
        return response.status, (json.loads(data) if data and response.getheader("Content-Type", "").startswith(
            "application/json") else data)

    def wait_up(self, process=None, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not start")

    def login(self):
        self.call("POST", "/api/v1/auth/register", {"email": "bench@example.com", "password": PASSWORD, "name": "B"})
        status, tokens = self.call("POST", "/api/v1/auth/login", {"email": "bench@example.com", "password": PASSWORD})
        assert status == 200, tokens
        self.headers = {"Authorization": f"Bearer {tokens['access_token']}"}

    def upload(self, space_id, files):
        boundary = uuid.uuid4().hex
        parts = []
        for name, data in files:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                         f"Content-Type: text/plain\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, result = self.call("POST", f"/api/v1/spaces/{space_id}/documents", raw=body,
                                   content_type=f"multipart/form-data; boundary={boundary}")
        assert status == 202, result
        return result

    def statuses(self, space_id):
        """Documents per status, from X-Pagination totals: a frontend's cheap poll, so the
        clock measures ingestion and not the listing of 1,000 documents twice a second."""
        counts = {}
        for status in ("queued", "parsing", "embedding", "ready", "failed"):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            connection.request("GET", f"/api/v1/spaces/{space_id}/documents?status={status}&page_size=1",
                               headers=self.headers)
            response = connection.getresponse()
            response.read()
            total = json.loads(response.getheader("X-Pagination"))["total"]
            connection.close()
            if total:
                counts[status] = total
        return counts


def run_spacio(backend, docs, env_extra, worker_threads):
    instance = tempfile.mkdtemp(prefix=f"spacio-ingest-{backend}-")
    env = {**os.environ, "SPACIO_INSTANCE_PATH": instance, "GUNICORN_ACCESSLOG": "", "SPACIO_JWT_SECRET_KEY": SECRET,
           "SPACIO_REGISTER_RATE_LIMIT": "1000 per minute",
           # one bench user uploads and polls far faster than a person: its limits are raised
           # (every check still runs)
           "SPACIO_API_RATE_LIMIT": "1000000 per minute", "SPACIO_UPLOAD_RATE_LIMIT": "1000000 per minute",
           **env_extra}
    env = {k: v for k, v in env.items() if not k.startswith("SPACIO_TEST_")}
    if backend == "postgres":  # a fresh schema: drop what a previous run left
        subprocess.run([BIN / "flask", "--app", "wsgi", "db", "downgrade", "base"], cwd=ROOT, env=env,
                       capture_output=True)
    subprocess.run([BIN / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    port = free_port()
    web = subprocess.Popen([BIN / "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                            "--workers", "1", "wsgi:app"], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    if backend == "postgres":
        worker = subprocess.Popen([BIN / "dramatiq", "tasks", "--processes", "1", "--threads", str(worker_threads)],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = Api(port)
        api.wait_up()
        api.login()
        status, space = api.call("POST", "/api/v1/spaces", {"name": f"SciFact {backend}"})
        assert status == 201, space
        if worker is not None:  # the worker imports the app and loads the model before it takes work
            time.sleep(3)
        start = time.perf_counter()
        for i in range(0, len(docs), 20):
            api.upload(space["id"], [(f"{doc_id}.txt", text.encode()) for doc_id, text in docs[i:i + 20]])
        uploaded = time.perf_counter() - start
        while True:
            counts = api.statuses(space["id"])
            if counts.get("ready", 0) + counts.get("failed", 0) >= len(docs):
                break
            time.sleep(0.5)
        elapsed = time.perf_counter() - start
        rss = peak_rss_mib([worker.pid] if worker else [web.pid])
    finally:
        for process in (web, worker):
            if process is not None:
                process.terminate()
                process.wait(30)
    chunks, tokens, texts = read_chunks(env, space["id"])
    return {
        "backend": backend, "documents": len(docs), "outcomes": counts, "seconds": round(elapsed, 1),
        "upload_seconds": round(uploaded, 1), "docs_per_s": round(len(docs) / elapsed, 2),
        "chunks": chunks, "chunks_per_s": round(chunks / elapsed, 1), "embedded_tokens": tokens,
        "tokens_per_s": round(tokens / elapsed), "peak_rss_mib": rss,
        "worker": "in-process (web)" if backend == "embedded" else f"dramatiq tasks, 1 process x {worker_threads}",
    }, texts


def read_chunks(env, space_id):
    os.environ.update({k: v for k, v in env.items() if k.startswith("SPACIO_")})
    from sqlalchemy import func, select

    from spacio import create_app
    from spacio.documents.models import Chunk, Document
    from spacio.extensions import db

    app = create_app()
    with app.app_context():
        sid = uuid.UUID(space_id)
        tokens = db.session.scalar(select(func.sum(Document.tokens)).where(Document.space_id == sid)) or 0
        texts = list(db.session.scalars(select(Chunk.text).where(Chunk.space_id == sid)))
        db.engine.dispose()
    return len(texts), int(tokens), texts


def run_embedder_alone(texts, bucketed=True, batch=64, batch_size=None):
    from spacio_minilm import MiniLMEmbedder

    # the peer's way (input order, fixed batches) has no token budget per run
    options = {"batch_size": batch_size, "batch_tokens": 10 ** 9} if batch_size else {}
    embedder = MiniLMEmbedder(bucketed=bucketed, **options)
    embedder.embed_documents(["warm up"])
    start, tokens = time.perf_counter(), 0
    for i in range(0, len(texts), batch):
        tokens += embedder.embed_documents(texts[i:i + batch]).tokens
    return time.perf_counter() - start, tokens


def run_langchain(docs, database_url):
    """The peer: LangChain's usual ingestion into PGVector with the same model."""
    from langchain_core.documents import Document as LcDocument
    from langchain_core.embeddings import Embeddings
    from langchain_postgres import PGVector
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from spacio_minilm import MiniLMEmbedder

    model = MiniLMEmbedder(bucketed=False, batch_size=32, batch_tokens=10 ** 9)
    counted = {"tokens": 0}

    class SameModel(Embeddings):
        def embed_documents(self, texts):
            result = model.embed_documents(texts)
            counted["tokens"] += result.tokens
            return result.vectors.tolist()

        def embed_query(self, text):
            return model.embed_query(text).vectors[0].tolist()

    url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    store = PGVector(embeddings=SameModel(), collection_name=f"bench_{uuid.uuid4().hex[:8]}", connection=url,
                     use_jsonb=True)
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    model.embed_documents(["warm up"])
    start, chunks, texts = time.perf_counter(), 0, []
    for i in range(0, len(docs), 20):  # like uploads of 20 files
        pieces = splitter.split_documents([LcDocument(page_content=t, metadata={"id": d}) for d, t in docs[i:i + 20]])
        chunks += len(pieces)
        texts += [p.page_content for p in pieces]
        store.add_documents(pieces)
    elapsed = time.perf_counter() - start
    store.delete_collection()
    return {"documents": len(docs), "seconds": round(elapsed, 1), "docs_per_s": round(len(docs) / elapsed, 2),
            "chunks": chunks, "chunks_per_s": round(chunks / elapsed, 1), "embedded_tokens": counted["tokens"],
            "tokens_per_s": round(counted["tokens"] / elapsed)}, texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="abstracts to ingest (0 = all 5,183)")
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--threads", type=int, default=2,
                        help="dramatiq worker threads (postgres backend; the Procfile's default is 2)")
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()

    docs = load_corpus(args.docs)
    database_url = os.environ.get("SPACIO_TEST_DATABASE_URL")
    redis_url = os.environ.get("SPACIO_TEST_REDIS_URL")
    results = {"corpus": "SciFact", "documents": len(docs), "machine": {"cpus": os.cpu_count(),
               "python": platform.python_version()}, "runs": {}}
    texts = None
    for backend in args.backends.split(","):
        if backend == "postgres":
            if not (database_url and redis_url):
                print("postgres: skipped (run inside `bash tests/services.sh run --`)")
                continue
            extra = {"SPACIO_SQLALCHEMY_DATABASE_URI": database_url, "SPACIO_REDIS_URL": redis_url}
        else:
            extra = {}
        run, texts = run_spacio(backend, docs, extra, args.threads)
        results["runs"][backend] = run
        print(f"{backend:>14}: {run['docs_per_s']:6.2f} docs/s  {run['chunks_per_s']:6.1f} chunks/s  "
              f"{run['tokens_per_s']:6d} tokens/s  {run['chunks']} chunks  peak RSS {run['peak_rss_mib']} MiB  "
              f"({run['seconds']} s, {run['outcomes']})")
    if texts:
        seconds, tokens = run_embedder_alone(texts)
        results["runs"]["embedder_alone"] = {
            "chunks": len(texts), "seconds": round(seconds, 1), "docs_per_s": round(len(docs) / seconds, 2),
            "chunks_per_s": round(len(texts) / seconds, 1), "tokens_per_s": round(tokens / seconds)}
        print(f"{'embedder alone':>14}: {len(docs) / seconds:6.2f} docs/s  {len(texts) / seconds:6.1f} chunks/s  "
              f"{round(tokens / seconds):6d} tokens/s  (Spacio's chunks, bucketed batches of 64)")
    if not args.no_peer and database_url:
        peer, peer_texts = run_langchain(docs, database_url)
        seconds, _ = run_embedder_alone(peer_texts, bucketed=False, batch=len(peer_texts), batch_size=32)
        peer["embedder_alone_docs_per_s"] = round(len(docs) / seconds, 2)
        results["runs"]["langchain"] = peer
        print(f"{'langchain':>14}: {peer['docs_per_s']:6.2f} docs/s  {peer['chunks_per_s']:6.1f} chunks/s  "
              f"{peer['tokens_per_s']:6d} tokens/s  {peer['chunks']} chunks  "
              f"(its embedder alone: {peer['embedder_alone_docs_per_s']} docs/s)")
        for backend in ("embedded", "postgres"):
            if backend in results["runs"]:
                ratio = results["runs"][backend]["docs_per_s"] / peer["docs_per_s"]
                results["runs"][backend]["vs_langchain"] = round(ratio, 2)
                print(f"{backend} / langchain: {ratio:.2f}x")
    out = ROOT / "bench" / "results" / "ingest.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
