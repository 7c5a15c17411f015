"""Reindexing a space without a gap (``spacio.rag.reindexing``): the new index is built beside
the old one, which answers until the switch; a failure leaves the old one in place; documents
uploaded, reindexed or deleted meanwhile join the build, run again in it, or leave it."""

import uuid

from sqlalchemy import func, select

from spacio.documents.models import Chunk, IndexBuild
from spacio.extensions import db
from spacio.rag import registry
from tests.api.helpers import space_url
from tests.api.test_documents import (FAST_RETRIES, GatedStore, assert_one_copy_of_each_chunk, docs_url,
                                      get_document, prose, search_hits, stored)
from tests.conftest import ApiClient


def chunk_count(app, space_id):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Chunk).where(Chunk.space_id == uuid.UUID(space_id)))


def reindex_status(client, user, space_id):
    response = client.get(space_url(space_id, "reindex"), headers=user.headers)
    assert response.status_code == 200, response.json
    return response.json


def test_a_space_never_reindexed_says_so(client, alice, space):
    status = reindex_status(client, alice, space["id"])
    assert (status["id"], status["status"], status["total"]) == (None, "none", 0)
    assert status["pipeline"] == client.get(space_url(space["id"]), headers=alice.headers).json["pipeline"]


def test_a_reindex_that_fails_leaves_the_old_index_answering(make_app):
    """The new embedder crashes on one document through every retry: the build fails with the
    reason, the space keeps its plugins, documents, chunks and hits, and the new namespace goes."""
    first = ApiClient(make_app().test_client())
    alice = first.user("alice@example.com")
    space_id = first.space(alice)["id"]
    for topic in ("volcanoes", "glaciers"):
        first.document(alice, space_id, prose(topic).encode(), f"{topic}.txt")
    answered, chunks = search_hits(first, alice, space_id), chunk_count(first.app, space_id)

    app = make_app(**FAST_RETRIES, PLUGINS={"EMBEDDER": {"HASHING": {"DIMENSIONS": 32, "CRASH_ON": "glaciers"}}})
    client = ApiClient(app.test_client())
    started = client.post(space_url(space_id, "reindex"), headers=alice.headers).json
    client.ingested()

    status = reindex_status(client, alice, space_id)
    assert (status["id"], status["status"]) == (started["id"], "failed")
    assert status["error"]["reason"] == "ingestion_error" and status["error"]["message"]
    assert client.get(space_url(space_id), headers=alice.headers).json["pipeline"]["embedder"]["dimensions"] == 64
    assert search_hits(client, alice, space_id) == answered
    assert chunk_count(app, space_id) == chunks
    assert all(d["status"] == "ready" for d in client.get(docs_url(space_id), headers=alice.headers).json)
    with app.app_context():
        namespace = db.session.get(IndexBuild, uuid.UUID(started["id"])).pipeline["namespace"]
    assert stored(app, namespace) == (False, 0)
    # and a reindex may be asked again
    assert client.post(space_url(space_id, "reindex"), headers=alice.headers).status_code == 202


def test_documents_uploaded_reindexed_and_deleted_during_a_reindex(client, alice, space):
    """While the build waits: an upload is indexed in the old index (searchable now) and joins
    the build; a document's reindex runs again in both; a deleted document leaves it. After the
    switch every document is in the new index once, and nothing of the deleted one is left."""
    app, space_id = client.app, space["id"]
    kept = client.document(alice, space_id, prose("volcanoes").encode(), "volcanoes.txt")
    doomed = client.document(alice, space_id, prose("glaciers").encode(), "glaciers.txt")
    store = registry(app).vector_store = GatedStore(registry(app).vector_store)

    store.write.clear()
    assert client.post(space_url(space_id, "reindex"), headers=alice.headers).status_code == 202
    assert store.writing.wait(30)  # the build, and from now on every write, waits
    added = client.upload(alice, space_id, (prose("geysers").encode(), "geysers.txt")).json["documents"][0]
    assert client.post(docs_url(space_id, kept["id"], "reindex"), headers=alice.headers).status_code == 202
    assert client.delete(docs_url(space_id, doomed["id"]), headers=alice.headers).status_code == 204
    assert reindex_status(client, alice, space_id)["total"] == 2  # the upload joined, the deleted one left
    store.write.set()
    client.ingested()

    status = reindex_status(client, alice, space_id)
    assert (status["status"], status["done"], status["queued"]) == ("switched", 2, 0), status
    for document_id in (kept["id"], added["id"]):
        document = get_document(client, alice, space_id, document_id)
        assert document["status"] == "ready"
        assert_one_copy_of_each_chunk(app, space_id, document)
    assert {d for d, _ in search_hits(client, alice, space_id, "volcanoes geysers glaciers")} == {
        kept["id"], added["id"]}
    assert chunk_count(app, space_id) == sum(get_document(client, alice, space_id, d)["chunks"]
                                             for d in (kept["id"], added["id"]))


def test_deleting_a_space_during_a_reindex_leaves_nothing_in_the_store(client, alice, space):
    app, space_id = client.app, space["id"]
    client.document(alice, space_id, prose("volcanoes").encode(), "volcanoes.txt")
    store = registry(app).vector_store = GatedStore(registry(app).vector_store)
    store.write.clear()
    started = client.post(space_url(space_id, "reindex"), headers=alice.headers).json
    assert store.writing.wait(30)
    with app.app_context():
        namespace = db.session.get(IndexBuild, uuid.UUID(started["id"])).pipeline["namespace"]
    assert client.delete(space_url(space_id), headers=alice.headers).status_code == 204
    store.write.set()  # the build writes after the delete, finds nothing, takes it back out
    client.ingested()
    assert stored(app, space_id) == (False, 0) and stored(app, namespace) == (False, 0)


def test_the_reindex_command_moves_the_spaces_on_other_plugins(make_app):
    """`flask spacio reindex --all` takes the spaces built with other plugins (not the one already
    on the server's), with a progress bar, and reports each; named spaces are taken as asked."""
    first = ApiClient(make_app().test_client())
    alice = first.user("alice@example.com")
    old = first.space(alice, "Old")["id"]
    first.document(alice, old, prose("volcanoes").encode(), "volcanoes.txt")
    first.document(alice, old, prose("glaciers").encode(), "glaciers.txt")

    app = make_app(PLUGINS={"EMBEDDER": {"HASHING": {"DIMENSIONS": 32}}})
    client = ApiClient(app.test_client())
    current = client.space(alice, "Current")["id"]
    runner = app.test_cli_runner()

    result = runner.invoke(args=["spacio", "reindex", "--all"])

    assert result.exit_code == 0, result.output
    assert "1 spaces use other plugins" in result.output and "Reindexing" in result.output
    assert f"{old}: switched; 2 documents indexed, 0 failed" in result.output
    assert current not in result.output
    assert client.get(space_url(old), headers=alice.headers).json["pipeline"]["embedder"]["dimensions"] == 32
    assert "0 spaces" in runner.invoke(args=["spacio", "reindex", "--all"]).output

    named = runner.invoke(args=["spacio", "reindex", current])
    assert named.exit_code == 0 and f"{current}: switched; 0 documents indexed" in named.output
    assert runner.invoke(args=["spacio", "reindex"]).exit_code == 2  # neither spaces nor --all
    assert "No space" in runner.invoke(args=["spacio", "reindex", str(uuid.uuid4())]).output
