"""Ingestion with the production shape: PostgreSQL + pgvector, Redis, and real
`dramatiq tasks` worker processes (started, SIGKILLed and restarted like a platform)."""

import socket
import time
import uuid

import pytest
from sqlalchemy import func, select, text

from spacio.documents.models import Chunk
from spacio.extensions import db
from spacio.rag import registry
from tests.conftest import ApiClient, redis_url
from tests.integration.workers import Worker, flush_redis, wait_for, worker_env

pytestmark = pytest.mark.parametrize("database", ["postgres"], indirect=True)


@pytest.fixture
def web(make_app, tmp_path):
    """The web side: enqueues to Redis, never ingests itself."""

    def build(**settings):
        flush_redis()
        app = make_app(REDIS_URL=redis_url(), **settings)
        return ApiClient(app.test_client())

    return build


@pytest.fixture
def workers():
    started = []

    def start(env, **kw):
        worker = Worker(env, **kw)
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.kill()


def port_is_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def status(client, user, space_id, document_id):
    return client.get(f"/api/v1/spaces/{space_id}/documents/{document_id}", headers=user.headers).json


def text_of(paragraphs):
    return "\n\n".join(f"Paragraph {i} talks about topic {i % 17} and the number {i * 7919 % 1000}." * 6
                       for i in range(paragraphs)).encode()


def test_a_worker_process_ingests_an_upload(web, workers, tmp_path):
    client = web()
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    workers(worker_env(tmp_path, EMBEDDER="hashing"))

    response = client.upload(owner, space_id, (text_of(40), "notes.txt"), (b"%PDF-1.4 broken", "broken.pdf"))
    assert response.status_code == 202, response.json
    first, second = response.json["documents"]
    assert response.json["ingestion"] == {"count": 2}

    done = wait_for(lambda: (d := status(client, owner, space_id, first["id"]))["status"] == "ready" and d,
                    timeout=60, what="the text document to be ready")
    assert done["chunks"] > 1 and done["progress"] == 1.0 and done["error"] is None
    broken = wait_for(lambda: (d := status(client, owner, space_id, second["id"]))["status"] == "failed" and d,
                      timeout=60, what="the broken PDF to fail")
    assert broken["error"]["reason"] == "corrupt_file"

    with client.app.app_context():
        stored = registry().vector_store.count(space_id, first["id"])
        rows = db.session.scalar(select(func.count()).select_from(Chunk).where(Chunk.document_id == uuid.UUID(first["id"])))
    assert stored == rows == done["chunks"]


def test_a_killed_worker_leaves_no_half_state(web, workers, tmp_path):
    """kill -9 mid-document; a new worker finishes it with exactly one copy of each chunk,
    within 30 s (the broker's heartbeat and maintenance settings make the message come back)."""
    settings = {"EMBEDDER": "hashing", "EMBED_BATCH_SIZE": 4,
                "PLUGINS__EMBEDDER__HASHING__DELAY_MS": 150}  # slow enough to kill in the middle
    client = web(**{k: v for k, v in settings.items() if not k.startswith("PLUGINS")})
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    first = workers(worker_env(tmp_path, **settings))

    response = client.upload(owner, space_id, (text_of(160), "long.txt"))
    document_id = response.json["documents"][0]["id"]
    wait_for(lambda: status(client, owner, space_id, document_id)["progress"] > 0.2, timeout=60,
             what="embedding to be under way")
    first.kill()
    killed_at = time.monotonic()
    assert status(client, owner, space_id, document_id)["status"] == "embedding"

    workers(worker_env(tmp_path, **settings))
    done = wait_for(lambda: (d := status(client, owner, space_id, document_id))["status"] == "ready" and d,
                    timeout=90, interval=0.5, what="the document to be ready after the crash")
    recovery = time.monotonic() - killed_at
    print(f"\nrecovered {done['chunks']} chunks {recovery:.1f} s after SIGKILL")
    assert recovery < 30 + 20, recovery  # redelivery ≤ 30 s, plus the re-ingestion itself

    with client.app.app_context():
        stored = registry().vector_store.count(space_id, document_id)
        ordinals = db.session.scalars(select(Chunk.ordinal).where(Chunk.document_id == uuid.UUID(document_id))).all()
    assert sorted(ordinals) == list(range(done["chunks"]))
    assert stored == done["chunks"]


def test_an_unreachable_service_is_retried_then_fails_with_its_reason(web, workers, tmp_path, unused_port):
    """A vector store that is down: transient, retried with backoff, then `failed`."""
    grpc_port = next(port for port in range(unused_port + 1, unused_port + 100) if port_is_free(port))
    settings = {"EMBEDDER": "hashing", "VECTOR_STORE": "weaviate", "INGEST_MAX_RETRIES": 2,
                "INGEST_MIN_BACKOFF_MS": 100, "INGEST_MAX_BACKOFF_MS": 300}
    plugin = {"PLUGINS": {"VECTOR_STORE": {"WEAVIATE": {"URL": f"http://127.0.0.1:{unused_port}",
                                                         "GRPC_PORT": grpc_port}}}}
    client = web(**settings, **plugin)
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    workers(worker_env(tmp_path, **settings, PLUGINS__VECTOR_STORE__WEAVIATE__URL=f"http://127.0.0.1:{unused_port}",
                       PLUGINS__VECTOR_STORE__WEAVIATE__GRPC_PORT=grpc_port))

    document_id = client.upload(owner, space_id, (b"Plain words to index.", "a.txt")).json["documents"][0]["id"]
    failed = wait_for(lambda: (d := status(client, owner, space_id, document_id))["status"] == "failed" and d,
                      timeout=60, what="the document to fail")
    assert failed["error"]["reason"] == "upstream_unavailable"
    with client.app.app_context():
        from spacio.documents.models import Document

        assert db.session.get(Document, uuid.UUID(document_id)).attempts == 3  # first try + 2 retries


def test_a_reindexed_space_is_found_again_and_a_deleted_one_leaves_no_rows(web, workers, tmp_path):
    """The web drops a space's namespace (reindex, delete) that a worker process has written
    before and still remembers. Its next write registered nothing, trusting that memory: the
    web's searches then found nothing in the reindexed space, and its drop of a deleted space
    left the rows behind."""
    client = web()
    owner = client.user("owner@example.com")
    space_id = client.space(owner)["id"]
    workers(worker_env(tmp_path, EMBEDDER="hashing"))

    def ready(document_id):
        return wait_for(lambda: (d := status(client, owner, space_id, document_id))["status"] == "ready" and d,
                        timeout=60, what="the document to be ready")

    first = client.upload(owner, space_id, (text_of(20), "first.txt")).json["documents"][0]["id"]
    ready(first)
    assert client.post(f"/api/v1/spaces/{space_id}/reindex", headers=owner.headers).status_code == 202
    done = ready(first)  # the reindex set it queued before it answered
    found = client.post(f"/api/v1/spaces/{space_id}/search", headers=owner.headers,
                        json={"query": "Paragraph 3 talks about topic 3", "mode": "keyword"})
    assert found.status_code == 200 and found.json["hits"], found.json

    assert client.delete(f"/api/v1/spaces/{space_id}", headers=owner.headers).status_code == 204
    with client.app.app_context():
        prefix = registry().vector_store.prefix
        left = db.session.scalar(text(f"SELECT count(*) FROM {prefix}_64 WHERE namespace = :n"), {"n": space_id})
    assert left == 0 and done["chunks"] > 0
