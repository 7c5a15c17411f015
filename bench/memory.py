"""Memory of the web worker on the embedded default, before, during and after an ingestion.

`make run`'s server (``gunicorn -c gunicorn.conf.py wsgi:app``: one gevent worker, SQLite, the
in-process ingestion worker, the ``local`` MiniLM embedder, pypdf), on a temporary instance
path. The real-world files of ../shared/eval/docs (PDF, DOCX, HTML, Markdown, text; encrypted,
scanned, broken and huge ones among them; repeated if there are fewer than ``--files``) are
uploaded over HTTP, 20 per request (each repetition into a space of its own: a space keeps
one document per content), and the worker's resident set is read from
/proc/<pid>/status:

- ``start``: the server answers, before any upload;
- ``warm``: one short text document ingested (the model loaded, the worker threads started):
  the floor an idle server can return to;
- ``ingested``: every document is ``ready`` or ``failed``;
- ``settled``: ``--settle`` seconds later, the server idle (the last sample and the lowest);
- ``peak``: VmHWM over the whole run.

RssAnon is the heap (Python objects, malloc arenas, onnxruntime's buffers); RssFile the
mapped libraries and model file. Writes bench/results/memory.json (or ``--out``), with a
``--label`` to tell runs apart. Not a test: numbers, not asserts.

    .venv/bin/python bench/memory.py [--files 128] [--settle 30] [--env MALLOC_ARENA_MAX=2] [--label ...]
"""

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_DOCS = ROOT.parent / "shared" / "eval" / "docs"
PASSWORD = "lavender-Orbit-73-quietly"
SECRET = "bench-secret-" + "x" * 40
BIN = Path(sys.executable).parent
PER_REQUEST = 20  # UPLOAD_MAX_FILES


def eval_files(count):
    """``count`` (name, bytes) from the eval documents in a fixed order, in rounds of at most
    all of them (a file repeats only in the next round)."""
    paths = sorted(p for p in EVAL_DOCS.rglob("*") if p.is_file())
    if not paths:
        raise SystemExit(f"no documents in {EVAL_DOCS}")
    files = [(path.name, path.read_bytes()) for path in paths]
    return [files[:count - start] for start in range(0, count, len(files))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid):
    """VmRSS, RssAnon, RssFile and VmHWM of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss": fields["VmRSS"], "anon": fields["RssAnon"], "file": fields["RssFile"], "hwm": fields["VmHWM"]}


def worker_pid(master_pid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.1)
    raise SystemExit("gunicorn started no worker")


class Api:
    def __init__(self, port):
        self.port = port
        self.headers = {}

    def call(self, method, path, body=None, raw=None, content_type=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        payload = raw if raw is not None else (json.dumps(body) if body is not None else None)
        headers = dict(self.headers)
        if payload is not None:
            headers["Content-Type"] = content_type or "application/json"
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        if response.status == 401 and self.headers and not path.startswith("/api/v1/auth/"):
            self.login()  # the access token expired during a long run
            return self.call(method, path, body, raw, content_type)
        is_json = response.getheader("Content-Type", "").startswith("application/json")
        return response.status, (json.loads(data) if data and is_json else data)

    def wait_up(self, process, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
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
        """The uploaded documents' ids (none if the whole request was refused, 413/415)."""
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, result = self.call("POST", f"/api/v1/spaces/{space_id}/documents", raw=body,
                                   content_type=f"multipart/form-data; boundary={boundary}")
        if status != 202:
            return []
        return [d["id"] for d in result["documents"]]

    def outcomes(self, space_id):
        """Documents per status (and failure reason), one listing."""
        counts, page = {}, 1
        while True:
            status, listing = self.call("GET", f"/api/v1/spaces/{space_id}/documents?page_size=200&page={page}")
            assert status == 200, listing
            for doc in listing:
                key = doc["status"] if doc["status"] != "failed" else f"failed:{doc['error']['reason']}"
                counts[key] = counts.get(key, 0) + 1
            if len(listing) < 200:
                return counts
            page += 1


def finished(counts):
    return sum(n for key, n in counts.items() if key == "ready" or key.startswith("failed"))


def ingest(api, rounds, pid=None, samples=None, began=None):
    """Upload each round into a new space and wait until every document is done; returns
    the number of documents and their outcomes (summed over spaces)."""
    spaces = []
    for files in rounds:
        status, space = api.call("POST", "/api/v1/spaces", {"name": f"memory {len(spaces)}"})
        assert status == 201, space
        ids = set()
        for i in range(0, len(files), PER_REQUEST):
            ids.update(api.upload(space["id"], files[i:i + PER_REQUEST]))
        spaces.append((space["id"], len(ids)))
    while True:
        counts = {}
        for space_id, _ in spaces:
            for key, n in api.outcomes(space_id).items():
                counts[key] = counts.get(key, 0) + n
        if samples is not None:
            samples.append((round(time.monotonic() - began, 1), memory_mib(pid)["rss"]))
        documents = sum(n for _, n in spaces)
        if finished(counts) >= documents:
            return documents, counts
        time.sleep(1)


def run(rounds, settle, env_extra, label):
    instance = tempfile.mkdtemp(prefix="spacio-memory-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACIO_")}
    env.update({"SPACIO_INSTANCE_PATH": instance, "GUNICORN_ACCESSLOG": "", "SPACIO_JWT_SECRET_KEY": SECRET,
                # one bench user uploads and polls far faster than a person: its limits are raised
                "SPACIO_API_RATE_LIMIT": "1000000 per minute", "SPACIO_UPLOAD_RATE_LIMIT": "1000000 per minute",
                **env_extra})
    subprocess.run([BIN / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    port = free_port()
    log = open(Path(instance) / "gunicorn.log", "w")
    web = subprocess.Popen([BIN / "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        api = Api(port)
        api.wait_up(web)
        pid = worker_pid(web.pid)
        api.login()
        time.sleep(2)
        start = memory_mib(pid)
        print(f"start:    RSS {start['rss']:7.1f} MiB (anon {start['anon']}, file {start['file']})", flush=True)
        ingest(api, [[("warm-up.txt", b"A short text that loads the model and starts the worker threads.")]])
        time.sleep(2)
        warm = memory_mib(pid)
        print(f"warm:     RSS {warm['rss']:7.1f} MiB (anon {warm['anon']}, file {warm['file']})", flush=True)
        began, samples = time.monotonic(), []
        documents, counts = ingest(api, rounds, pid, samples, began)
        seconds = time.monotonic() - began
        ingested = memory_mib(pid)
        print(f"ingested: RSS {ingested['rss']:7.1f} MiB (anon {ingested['anon']}, file {ingested['file']}) "
              f"after {seconds:.0f} s, {documents} documents: {counts}", flush=True)
        lowest = ingested["rss"]
        for _ in range(settle):
            time.sleep(1)
            lowest = min(lowest, memory_mib(pid)["rss"])
        settled = memory_mib(pid)
        print(f"settled:  RSS {settled['rss']:7.1f} MiB (anon {settled['anon']}, file {settled['file']}) "
              f"{settle} s later (lowest {lowest}); peak {settled['hwm']} MiB", flush=True)
    finally:
        web.terminate()
        web.wait(60)
        log.close()
    return {
        "label": label, "server_env": env_extra, "files": sum(map(len, rounds)), "documents": documents,
        "outcomes": counts, "ingest_seconds": round(seconds, 1), "settle_seconds": settle,
        "rss_mib": {"start": start["rss"], "warm": warm["rss"], "ingested": ingested["rss"],
                    "settled": settled["rss"], "settled_lowest": lowest, "peak": settled["hwm"]},
        "anon_mib": {"start": start["anon"], "warm": warm["anon"], "ingested": ingested["anon"],
                     "settled": settled["anon"]},
        "file_mib": {"start": start["file"], "warm": warm["file"], "ingested": ingested["file"],
                     "settled": settled["file"]},
        "rss_during_ingestion": samples[::max(1, len(samples) // 60)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=128, help="files to upload (the eval set, repeated if needed)")
    parser.add_argument("--settle", type=int, default=30, help="seconds to watch the idle server afterwards")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the server (repeatable)")
    parser.add_argument("--label", default="default")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "memory.json"))
    args = parser.parse_args()

    env_extra = dict(item.partition("=")[::2] for item in args.env)
    result = run(eval_files(args.files), args.settle, env_extra, args.label)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    sys.exit(main())
