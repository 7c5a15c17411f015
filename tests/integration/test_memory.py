"""The embedded default's web worker gives back what an ingestion used: `make run`'s server
(gunicorn, one gevent worker ingesting on real threads, SQLite, the local store, the local
MiniLM embedder) ingests three large real files, and its resident set returns close to where
it was before (bench/memory.py measures the same on all 128 eval files)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import STRONG_PASSWORD
from tests.integration.workers import ROOT, Web, wait_for

EVAL_DOCS = Path(__file__).resolve().parents[3] / "shared" / "eval" / "docs"
# a 2.4 MB HTML page, a 2.3 MB and a 1.2 MB PDF: much to parse, ~250 chunks to embed (~15 s)
LARGE = ["html/example-10k.html", "pdf/arxiv/2203.06947.pdf", "pdf/unstructured/invalid-pdf-structure-one-page.pdf"]
# Measured growth after these three files: 97-98 MiB before the worker gave memory back,
# 26-41 MiB after (parser modules imported on first use, SQLite's page caches, fragments).
MAX_GROWTH_MIB = 64


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_the_web_worker_gives_back_the_memory_an_ingestion_used(tmp_path, unused_port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACIO_")}
    env.update({"SPACIO_INSTANCE_PATH": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # what `make run` does first
    web = Web(env, unused_port)
    try:
        web.wait_up()
        master = web.process.pid
        pid = int(Path(f"/proc/{master}/task/{master}/children").read_text().split()[0])
        web.call("POST", "/api/v1/auth/register", {"email": "rss@example.com", "password": STRONG_PASSWORD,
                                                    "name": "R"})
        token = web.call("POST", "/api/v1/auth/login", {"email": "rss@example.com",
                                                         "password": STRONG_PASSWORD})[1]["access_token"]
        space_id = web.call("POST", "/api/v1/spaces", {"name": "rss"}, token)[1]["id"]

        def ingest(files):
            response = requests.post(f"{web.root}/api/v1/spaces/{space_id}/documents",
                                     headers={"Authorization": f"Bearer {token}"},
                                     files=[("files", (name, data)) for name, data in files], timeout=60)
            assert response.status_code == 202, response.text

            def finished():
                listing = web.call("GET", f"/api/v1/spaces/{space_id}/documents?page_size=100", token=token)[1]
                return all(d["status"] in ("ready", "failed") for d in listing) and listing

            return wait_for(finished, 120, interval=0.5, what="every document to finish")

        # the baseline: the model loaded and the worker threads started by a short document
        ingest([("warm-up.txt", b"A short note that loads the model and starts the worker threads.")])
        time.sleep(1)
        warm = rss_mib(pid)
        documents = ingest([(Path(name).name, (EVAL_DOCS / name).read_bytes()) for name in LARGE])
        time.sleep(2)
        after = rss_mib(pid)
    finally:
        web.stop()
    assert all(d["status"] == "ready" for d in documents), documents
    assert after - warm < MAX_GROWTH_MIB, f"{warm:.0f} MiB before the files, {after:.0f} MiB after"
