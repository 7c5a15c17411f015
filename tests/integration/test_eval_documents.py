"""Every real-world file of ../shared/eval/docs/ through the API, with a real worker on
Redis + PostgreSQL: each ends `ready` or `failed` with a specific reason; no worker
crash, nothing stuck. (The fast test embedder: this is about parsing and the lifecycle.)"""

import collections
from pathlib import Path

import pytest

from tests.conftest import ApiClient, redis_url
from tests.integration.workers import Worker, flush_redis, wait_for, worker_env

EVAL_DOCS = Path(__file__).resolve().parents[3] / "shared" / "eval" / "docs"
# what a file may fail with: each names its cause (nothing generic like ingestion_error)
SPECIFIC = {"encrypted", "corrupt_file", "no_text_layer", "too_many_pages", "empty_document",
            "unsupported_media_type", "file_too_large", "archive_too_large", "parse_timeout"}
EXPECTED = {  # files whose outcome is known (../shared/eval/MANIFEST.md)
    "pdf/py-pdf-sample-files/005-libreoffice-writer-password__libreoffice-writer-password.pdf": "encrypted",
    "pdf/unstructured/password.pdf": "encrypted",
    "pdf/unstructured/copy-protected.pdf": "ready",
    "pdf/unstructured/loremipsum-flat.pdf": "no_text_layer",
    "pdf/derived-corrupt/zero-bytes.pdf": "empty_document",
    "pdf/derived-corrupt/truncated-50pct-2203.06947.pdf": "corrupt_file",
    "pdf/derived-corrupt/html-renamed-as.pdf": "ready",
    "pdf/arxiv/multi-column-DPR-2004.04906.pdf": "ready",
    "pdf/unstructured/pdf2image-memory-error-test-400p.pdf": "ready",
    "txt/empty.txt": "empty_document",
    "txt/fake-text-all-whitespace.txt": "empty_document",
    "txt/book-war-and-peace-1225p.txt": "ready",
    "txt/fake-text-utf-16-be.txt": "ready",
    "docx/handbook-872p.docx": "ready",
    "html/example-10k.html": "ready",
}

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


def test_every_eval_document_ends_ready_or_failed_with_a_reason(make_app, tmp_path):
    files = sorted(p for p in EVAL_DOCS.rglob("*") if p.is_file())
    assert len(files) > 100, f"expected the eval corpus at {EVAL_DOCS}"
    flush_redis()
    client = ApiClient(make_app(REDIS_URL=redis_url()).test_client())
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    worker = Worker(worker_env(tmp_path, EMBEDDER="hashing"), processes=1, threads=2).wait_ready()
    try:
        ids = {}
        for start in range(0, len(files), 20):
            group = files[start:start + 20]
            response = client.upload(owner, space_id, *[(p.read_bytes(), p.name) for p in group])
            assert response.status_code in (202, 413, 415), response.json
            entries = (response.json["documents"] if response.status_code == 202
                       else response.json["errors"]["files"])
            for path, entry in zip(group, entries):
                ids[path.relative_to(EVAL_DOCS).as_posix()] = entry.get("document_id") or entry["id"]

        def finished():
            listing = []
            page = 1
            while True:
                response = client.get(f"/api/v1/spaces/{space_id}/documents?page_size=200&page={page}",
                                      headers=owner.headers)
                listing += response.json
                if len(response.json) < 200:
                    break
                page += 1
            by_id = {d["id"]: d for d in listing}
            return by_id if all(d["status"] in ("ready", "failed") for d in by_id.values()) else None

        documents = wait_for(finished, timeout=600, interval=2, what="every document to finish")
        assert worker.process.poll() is None, "the worker died:\n" + worker.output()
    finally:
        worker.kill()

    outcomes = collections.Counter()
    unexplained = {}
    for name, document_id in sorted(ids.items()):
        doc = documents[document_id]
        outcome = doc["status"] if doc["status"] == "ready" else doc["error"]["reason"]
        outcomes[outcome] += 1
        if doc["status"] == "failed" and outcome not in SPECIFIC:
            unexplained[name] = doc["error"]
        if doc["status"] == "ready":
            assert doc["chunks"] > 0, name
        if name in EXPECTED:
            assert outcome == EXPECTED[name], (name, doc)
    print("\noutcomes over", len(ids), "files:", dict(sorted(outcomes.items())))
    assert not unexplained, unexplained
    assert "Traceback" not in worker.output(), worker.output()
