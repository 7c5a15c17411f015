"""POST /spaces/{id}/search (API.md): ranked hits, best first, without generation.

Runs on SQLite (``local`` vector store) and PostgreSQL (``pgvector``) with the ``hashing``
test embedder, whose cosines come from shared words: a question shares words with the
chunks it should find and almost none with the others. Documents go through the real
upload and in-process ingestion.
"""

import re
import uuid

import pytest
from sqlalchemy import delete, update

from spacio.documents.models import Chunk, Document
from spacio.extensions import db
from spacio.rag import contracts, registry
from spacio.spaces.models import Space
from tests.api.helpers import space_url
from tests.api.test_documents import pdf
from tests.conftest import ApiClient, assert_error

HIT_FIELDS = {"document_id", "filename", "chunk_id", "page", "text", "score", "mode"}
# the grounded threshold is the hashing embedder's own (grounded_min_similarity = 0.3):
# a question sharing a few content words with a text scores 0.4-0.6 there, an unrelated one
# -0.2..0.2

VOLCANO = ("Volcanoes erupt when magma rises through the crust. Basalt lava flows from shield volcanoes "
           "such as Mauna Loa, while explosive eruptions throw ash and pumice into the stratosphere.")
BAKING = ("Sourdough bread rises because wild yeast and lactobacilli ferment the flour. Bakers feed the "
          "starter daily and proof the dough overnight before baking it in a hot oven.")
CHESS = ("The Sicilian Defence is a chess opening that answers the king's pawn with the c-pawn. Grandmasters "
         "value its imbalanced positions and sharp tactical middlegames.")


def search(client, user, space_id, query, **body):
    return client.post(space_url(space_id, "search"), json={"query": query, **body}, headers=user.headers)


@pytest.fixture
def library(client, alice, space):
    """Three one-topic text documents in Alice's space: {topic: document}."""
    return {name: client.document(alice, space["id"], text.encode(), f"{name}.txt")
            for name, text in (("volcano", VOLCANO), ("baking", BAKING), ("chess", CHESS))}


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_hits_are_best_first_with_document_chunk_and_score(client, alice, space, library, mode):
    response = search(client, alice, space["id"], "How does magma make volcanoes erupt lava?", mode=mode)
    assert response.status_code == 200, response.json
    assert set(response.json) == {"hits", "grounded", "mode"} and response.json["mode"] == mode
    hits = response.json["hits"]
    assert hits and all(set(h) == HIT_FIELDS and h["mode"] == mode for h in hits)
    best = hits[0]
    volcano = library["volcano"]
    assert (best["document_id"], best["filename"], best["page"]) == (volcano["id"], "volcano.txt", None)
    assert best["chunk_id"] in client.chunks(alice, space["id"], volcano["id"])
    assert "magma" in best["text"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len({h["chunk_id"] for h in hits}) == len(hits)
    assert response.json["grounded"] is True


def test_a_pdf_hit_carries_the_page_it_is_on(client, alice):
    space_id = client.space(alice, "Small chunks", settings={"chunk_size": 64, "chunk_overlap": 0})["id"]
    pages = [" ".join(f"Revenue grew in region {i}." for i in range(30)),
             " ".join(f"Turbine blade {i} was inspected for cracks." for i in range(30)),
             " ".join(f"Employees work from home on Friday {i}." for i in range(30))]
    document = client.document(alice, space_id, pdf(*pages), "report.pdf")
    assert document["pages"] == 3
    # each page has words of its own: a chunk's page is the page of its first word
    page_of = {w: n for n, text in enumerate(pages, 1) for w in re.findall(r"[A-Za-z]+", text)}

    def starts_on(text):
        return page_of[re.findall(r"[A-Za-z]+", text)[0]]

    for query in ("revenue region", "turbine blade inspected cracks", "employees home Friday"):
        for mode in ("hybrid", "vector", "keyword"):
            hits = search(client, alice, space_id, query, mode=mode, top_k=100).json["hits"]
            assert query.split()[0] in hits[0]["text"].lower()
            assert {h["filename"] for h in hits} == {"report.pdf"}
            assert all(h["page"] == starts_on(h["text"]) for h in hits), (mode, hits)
            assert {h["page"] for h in hits} == ({1, 2, 3} if mode != "keyword" else {h["page"] for h in hits})


def test_keyword_mode_returns_only_chunks_with_the_words_vector_mode_ranks_everything(client, alice, space,
                                                                                     library):
    keyword = search(client, alice, space["id"], "sourdough starter", mode="keyword").json["hits"]
    assert [h["filename"] for h in keyword] == ["baking.txt"]
    vector = search(client, alice, space["id"], "sourdough starter", mode="vector").json["hits"]
    assert vector[0]["filename"] == "baking.txt"
    assert {h["filename"] for h in vector} == {"baking.txt", "volcano.txt", "chess.txt"}  # ranked, not matched
    hybrid = search(client, alice, space["id"], "sourdough starter").json["hits"]  # hybrid is the default
    assert hybrid[0]["filename"] == "baking.txt"
    assert {h["filename"] for h in hybrid} == {"baking.txt", "volcano.txt", "chess.txt"}


def test_every_chunk_of_a_document_is_embedded_under_its_title(make_app):
    """Only the first chunk's text has the title; the embedder reads it above every chunk,
    so a question about what the document is titled ranks all of its chunks above those of
    a like document without that title. Keyword search and the hits' text keep each chunk's
    own words. (Short chunks and more hashing buckets, so three shared words stand out.)"""
    client = ApiClient(make_app(PLUGINS={"embedder": {"hashing": {"dimensions": 2048}}}).test_client())
    alice = client.user("alice@example.com")
    space_id = client.space(alice)["id"]
    assert client.patch(space_url(space_id), json={"settings": {"chunk_size": 64, "chunk_overlap": 0}},
                        headers=alice.headers).status_code == 200

    def body(noun):
        return "\n".join(f"Sentence {i} counts the {noun} of the number {i * 37 % 101}." for i in range(40))

    titled = client.document(alice, space_id, f"Zanzibar spice markets\n\n{body('tides')}".encode(), "spice.txt")
    other = client.document(alice, space_id, f"Harbour ledgers\n\n{body('waves')}".encode(), "ledgers.txt")
    assert titled["chunks"] >= 3 and other["chunks"] >= 3
    vector = search(client, alice, space_id, "Zanzibar spice markets", mode="vector", top_k=50).json["hits"]
    scores = {document["id"]: [h["score"] for h in vector if h["document_id"] == document["id"]]
              for document in (titled, other)}
    assert len(scores[titled["id"]]) == titled["chunks"] and len(scores[other["id"]]) == other["chunks"]
    assert min(scores[titled["id"]]) > max(scores[other["id"]])
    assert sum("Zanzibar" in h["text"] for h in vector) == 1
    keyword = search(client, alice, space_id, "Zanzibar spice markets", mode="keyword", top_k=50).json["hits"]
    assert len(keyword) == 1 and keyword[0]["text"].startswith("Zanzibar spice markets")


def test_hybrid_finds_what_either_part_finds(client, alice, space, library):
    # "pumice" is a word only the volcano text holds; "Grandmasters openings" only chess's
    hits = search(client, alice, space["id"], "pumice grandmasters", top_k=2).json["hits"]
    assert {h["filename"] for h in hits} == {"volcano.txt", "chess.txt"}


def test_top_k_bounds_and_defaults(client, alice, space, library):
    url = space["id"]
    assert len(search(client, alice, url, "volcano", top_k=1).json["hits"]) == 1
    assert len(search(client, alice, url, "volcano", top_k=100).json["hits"]) == 3  # all there is
    for bad in (0, 101, -1, "many"):
        assert_error(search(client, alice, url, "volcano", top_k=bad), 422, "validation_error")
    for bad in ({"query": ""}, {"query": "   "}, {}, {"query": "x", "mode": "semantic"}, {"query": "x" * 2001}):
        response = client.post(space_url(url, "search"), json=bad, headers=alice.headers)
        assert_error(response, 422, "validation_error")
    # the space's own top_k is the default
    for i in range(12):
        client.upload(alice, url, (f"Note {i} about volcanoes and basalt.".encode(), f"note{i}.txt"))
    client.ingested()
    assert len(search(client, alice, url, "volcanoes basalt").json["hits"]) == 10
    client.patch(space_url(url), json={"settings": {"top_k": 4}}, headers=alice.headers)
    assert len(search(client, alice, url, "volcanoes basalt").json["hits"]) == 4
    assert len(search(client, alice, url, "volcanoes basalt", top_k=13).json["hits"]) == 13


def test_an_empty_space_has_no_hits_and_is_not_grounded(client, alice, space):
    for mode in ("hybrid", "vector", "keyword"):
        response = search(client, alice, space["id"], "What causes volcanic eruptions?", mode=mode)
        assert response.status_code == 200, response.json
        assert response.json == {"hits": [], "grounded": False, "mode": mode}


def test_an_unrelated_question_is_not_grounded(client, alice, space, library):
    for mode in ("hybrid", "vector", "keyword"):
        response = search(client, alice, space["id"], "quarterly tax filing deadlines", mode=mode)
        assert response.status_code == 200
        assert response.json["grounded"] is False, (mode, response.json)


def test_the_grounded_threshold_is_configuration(make_app):
    app = make_app(GROUNDED_MIN_SIMILARITY=1.01)  # nothing is ever similar enough
    from tests.conftest import ApiClient

    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com")
    space = client.space(alice)
    client.document(alice, space["id"], VOLCANO.encode(), "volcano.txt")
    response = search(client, alice, space["id"], VOLCANO)
    assert response.json["hits"] and response.json["grounded"] is False


def test_members_of_every_role_can_search_others_get_404(client, alice, bob, carol, space, library):
    client.member(alice, space["id"], bob, "viewer")
    response = search(client, bob, space["id"], "chess opening")
    assert response.status_code == 200 and response.json["hits"][0]["filename"] == "chess.txt"
    assert_error(search(client, carol, space["id"], "chess opening"), 404)
    assert_error(search(client, alice, str(uuid.uuid4()), "chess opening"), 404)
    anonymous = client.post(space_url(space["id"], "search"), json={"query": "chess"})
    assert_error(anonymous, 401)


def test_one_space_never_sees_another_spaces_chunks(client, alice, bob, space, library):
    other = client.space(bob, "Bob's")
    client.document(bob, other["id"], b"Volcanoes and magma chambers under Iceland erupt basalt.", "iceland.txt")
    mine = search(client, alice, space["id"], "volcanoes magma basalt Iceland", top_k=100).json["hits"]
    theirs = search(client, bob, other["id"], "volcanoes magma basalt Iceland", top_k=100).json["hits"]
    assert "iceland.txt" not in {h["filename"] for h in mine}
    assert {h["filename"] for h in theirs} == {"iceland.txt"}
    assert_error(search(client, bob, space["id"], "volcanoes"), 404)


def test_a_deleted_documents_chunks_are_never_returned(client, alice, space, library):
    volcano = library["volcano"]
    assert client.delete(space_url(space["id"], "documents", volcano["id"]), headers=alice.headers).status_code == 204
    for mode in ("hybrid", "vector", "keyword"):
        hits = search(client, alice, space["id"], "magma volcanoes erupt lava", mode=mode, top_k=100).json["hits"]
        assert volcano["id"] not in {h["document_id"] for h in hits}


def test_vectors_of_a_document_deleted_meanwhile_are_skipped(client, alice, space, library):
    """The row goes before a store that was down gets to forget the vectors: the search
    must still never return them (and still fill top_k from what exists)."""
    volcano = library["volcano"]
    with client.app.app_context():
        db.session.execute(delete(Chunk).where(Chunk.document_id == uuid.UUID(volcano["id"])))
        db.session.execute(delete(Document).where(Document.id == uuid.UUID(volcano["id"])))
        db.session.commit()
        assert registry().vector_store.count(space["id"], volcano["id"]) > 0  # vectors still there
    for mode in ("hybrid", "vector", "keyword"):
        hits = search(client, alice, space["id"], "magma volcanoes erupt lava sourdough chess", mode=mode,
                      top_k=2).json["hits"]
        assert volcano["id"] not in {h["document_id"] for h in hits}
        assert len(hits) == 2


def test_a_space_made_with_other_plugins_answers_409_pipeline_changed(client, alice, space, library):
    with client.app.app_context():
        record = db.session.get(Space, uuid.UUID(space["id"]))
        pipeline = {**record.pipeline, "embedder": {**record.pipeline["embedder"], "model": "another-model"}}
        db.session.execute(update(Space).where(Space.id == record.id).values(pipeline=pipeline))
        db.session.commit()
    assert_error(search(client, alice, space["id"], "volcano"), 409, "pipeline_changed")


def test_a_vector_store_that_is_down_answers_503(make_app, unused_port):
    from tests.conftest import ApiClient

    app = make_app(VECTOR_STORE="pgvector", PLUGINS={"vector_store": {"pgvector": {
        "database_url": f"postgresql://spacio@127.0.0.1:{unused_port}/spacio", "pool_timeout": 1}}})
    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com")
    space = client.space(alice)
    for mode in ("hybrid", "vector", "keyword"):
        body = assert_error(search(client, alice, space["id"], "volcano", mode=mode), 503)
        assert "vector store" in body["message"].lower()


@pytest.mark.parametrize("error, code, reason", [
    (contracts.UpstreamUnavailable("model server down", retry_after=7), 503, "upstream_unavailable"),
    (contracts.PluginError("the model returned garbage"), 502, "plugin_error"),
])
def test_an_embedder_failure_is_the_one_error_body(client, alice, space, library, monkeypatch, error, code, reason):
    with client.app.app_context():
        embedder = registry().embedder

    def fail(text):
        raise error

    monkeypatch.setattr(embedder, "embed_query", fail)
    response = search(client, alice, space["id"], "volcano")
    assert_error(response, code, reason)
    if code == 503:
        assert response.headers["Retry-After"] == "7"
    keyword = search(client, alice, space["id"], "volcano", mode="keyword")  # needs no embedding
    assert keyword.status_code == 200 and keyword.json["hits"][0]["filename"] == "volcano.txt"
