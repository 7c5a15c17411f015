"""What ingestion writes to a real process's output: an encrypted, scanned or corrupt file is
one JSON line with its reason and no traceback; a plugin that crashes is logged with its
traceback inside the JSON line (``exc``), never as a raw print on stderr. Both shapes: the
embedded default (gunicorn's gevent worker ingesting on real threads, SQLite, the local
store) and a `dramatiq tasks` worker on PostgreSQL + Redis."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ApiClient, STRONG_PASSWORD, redis_url
from tests.integration.workers import ROOT, Web, Worker, flush_redis, wait_for, worker_env

EVAL_DOCS = Path(__file__).resolve().parents[3] / "shared" / "eval" / "docs" / "pdf"
EXPECTED_FAILURES = {  # ../shared/eval/MANIFEST.md
    "py-pdf-sample-files/005-libreoffice-writer-password__libreoffice-writer-password.pdf": "encrypted",
    "unstructured/password.pdf": "encrypted",
    "py-pdf-sample-files/019-grayscale-image__grayscale-image.pdf": "no_text_layer",
    "unstructured/loremipsum-flat.pdf": "no_text_layer",
    "py-pdf-sample-files/017-unreadable-meta-data__unreadablemetadata.pdf": "corrupt_file",
    "derived-corrupt/bad-header-minimal-document.pdf": "corrupt_file",
    "derived-corrupt/truncated-50pct-2203.06947.pdf": "corrupt_file",
    "derived-corrupt/xref-garbled-minimal-document.pdf": "corrupt_file",
}
CRASH_WORD = "kaboom"  # the hashing embedder raises RuntimeError on a text with it (a plugin's bug)
PLUGINS = {"EMBEDDER": "hashing", "INGEST_MAX_RETRIES": 1, "INGEST_MIN_BACKOFF_MS": 50,
           "INGEST_MAX_BACKOFF_MS": 100, "PLUGINS__EMBEDDER__HASHING__CRASH_ON": CRASH_WORD, "LOG_FORMAT": "json"}


def files():
    """(name, bytes) of the files to upload: the expected failures, a good text, a crashing one."""
    found = [(Path(name).name, (EVAL_DOCS / name).read_bytes()) for name in EXPECTED_FAILURES]
    return found + [("fine.txt", b"An ordinary note about tides and the moon.\n\nIt ingests fine."),
                    ("crash.txt", f"This note makes the embedder go {CRASH_WORD}.".encode())]


def json_line(line):
    """The JSON object a log line is, or None (a `dramatiq tasks` main process prefixes its
    children's lines with nothing, its own with its own format)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def check_output(lines, documents):
    """One JSON line per expected failure, with its reason and no traceback; the crash logged
    with its traceback inside JSON lines only; no line of a raw traceback anywhere."""
    raw = [line for line in lines if line.strip() and json_line(line) is None]
    assert not [line for line in raw if line.startswith(("Traceback", "  File ", "RuntimeError", "spacio."))], \
        "".join(lines)
    entries = [entry for entry in map(json_line, lines) if entry]
    by_name = {d["filename"]: d for d in documents}
    for name, reason in EXPECTED_FAILURES.items():
        document = by_name[Path(name).name]
        assert document["status"] == "failed" and document["error"]["reason"] == reason, document
        mine = [entry for entry in entries if document["id"] in entry["message"]]
        assert len(mine) == 1, (name, mine)
        assert mine[0]["message"] == f"document {document['id']} failed: {reason}" and "exc" not in mine[0], mine
    crash = by_name["crash.txt"]
    assert crash["status"] == "failed" and crash["error"]["reason"] == "ingestion_error", crash
    mine = [entry for entry in entries if crash["id"] in entry["message"]]
    assert [entry["level"] for entry in mine] == ["WARNING", "ERROR"], mine  # retried once, then failed
    for entry in mine:
        assert entry["exc"].startswith("Traceback") and "RuntimeError: the hashing embedder crashed" in entry["exc"]
    assert by_name["fine.txt"]["status"] == "ready"
    assert sum(1 for entry in entries if "exc" in entry) == 2, [entry for entry in entries if "exc" in entry]


def test_the_embedded_default_logs_each_failed_document_in_one_json_line(tmp_path, unused_port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACIO_")}
    env.update({"SPACIO_INSTANCE_PATH": str(tmp_path), "PYTHONUNBUFFERED": "1"})
    env.update({f"SPACIO_{k}": str(v) for k, v in PLUGINS.items()})
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # what `make run` does first
    web = Web(env, unused_port)
    try:
        web.wait_up()
        web.call("POST", "/api/v1/auth/register", {"email": "logs@example.com", "password": STRONG_PASSWORD,
                                                    "name": "L"})
        token = web.call("POST", "/api/v1/auth/login", {"email": "logs@example.com",
                                                         "password": STRONG_PASSWORD})[1]["access_token"]
        space_id = web.call("POST", "/api/v1/spaces", {"name": "logs"}, token)[1]["id"]
        response = requests.post(f"{web.root}/api/v1/spaces/{space_id}/documents",
                                 headers={"Authorization": f"Bearer {token}"},
                                 files=[("files", (name, data)) for name, data in files()], timeout=60)
        assert response.status_code == 202, response.text

        def finished():
            listing = web.call("GET", f"/api/v1/spaces/{space_id}/documents?page_size=100", token=token)[1]
            return all(d["status"] in ("ready", "failed") for d in listing) and listing

        documents = wait_for(finished, 120, what="every document to finish")
    finally:
        web.stop()
    assert all(json_line(line) for line in web.lines if line.strip()), web.output()  # gunicorn's own lines too
    check_output(web.lines, documents)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
def test_a_dramatiq_worker_logs_each_failed_document_in_one_json_line(make_app, tmp_path):
    flush_redis()
    client = ApiClient(make_app(REDIS_URL=redis_url()).test_client())
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    worker = Worker(worker_env(tmp_path, **PLUGINS)).wait_ready()
    try:
        response = client.upload(owner, space_id, *[(data, name) for name, data in files()])
        assert response.status_code == 202, response.json

        def finished():
            listing = client.get(f"/api/v1/spaces/{space_id}/documents?page_size=100", headers=owner.headers).json
            return all(d["status"] in ("ready", "failed") for d in listing) and listing

        documents = wait_for(finished, 120, what="every document to finish")
    finally:
        worker.terminate()
    check_output(worker.lines, documents)
