"""The provider plugins through the whole app, each against its local stand-in (the wire
protocol of the real service, driven by the real SDK): the `openai` generator answering
/chat (SSE and JSON) and /query, and the `pinecone` vector store, which has no keyword search,
behind /search in every mode."""

import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

from tests.api.helpers import space_url
from tests.api.test_chat import check_order, sse_post
from tests.conftest import ApiClient, assert_error

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
FACTS = {"lichens.txt": "Lichens are a symbiosis of a fungus with algae or cyanobacteria. They grow on bare rock "
                        "and tree bark, and some survive for centuries in the Arctic.",
         "tides.txt": "Tides rise and fall twice a day because the Moon's gravity pulls the oceans. Spring tides "
                      "come at full and new moon."}
QUESTION = "What are lichens a symbiosis of?"
REPLY = "Lichens are a fungus living with algae [1]. They grow on rock [1][7]."


def standin_module(plugin, name):
    """A plugin's stand-in module, loaded from its tests folder."""
    if name in sys.modules:  # collected with its plugin's tests already
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PLUGINS / plugin / "tests" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


openai_standin = standin_module("spacio-openai", "openai_standin")
pinecone_standin = standin_module("spacio-pinecone", "pinecone_standin")


@pytest.fixture(scope="module")
def openai_server():
    with openai_standin.OpenAIStandIn() as server:
        yield server


@pytest.fixture
def openai(openai_server):
    openai_server.reset()
    openai_server.chat_reply = REPLY
    yield openai_server
    openai_server.reset()


def openai_app(make_app, server, **options):
    return make_app(GENERATOR="openai", PLUGINS={"generator": {"openai": {
        "api_key": openai_standin.API_KEY, "base_url": server.base_url, "model": "gpt-4.1-mini",
        "max_retries": 0, **options}}})


def library(client):
    alice = client.user("alice@example.com")
    space = client.space(alice)
    for filename, text in FACTS.items():
        client.document(alice, space["id"], text.encode(), filename)
    return alice, space["id"]


def test_the_openai_generator_streams_a_cited_answer_through_chat(make_app, openai):
    client = ApiClient(openai_app(make_app, openai).test_client())
    alice, space_id = library(client)

    events = sse_post(client, alice, space_id, {"message": QUESTION})

    kinds = check_order(events)
    assert kinds[-1] == "end" and kinds.count("delta") >= 5  # token by token, as the server streamed
    offered = events[1][1]
    assert offered and offered[0]["filename"] == "lichens.txt"
    text = "".join(data["text"] for kind, data in events if kind == "delta")
    assert text == "Lichens are a fungus living with algae [1]. They grow on rock [1]."  # [7] cites nothing
    end = events[-1][1]
    assert end["grounded"] is True and end["usage"]["estimated"] is False
    assert end["usage"]["completion_tokens"] == 13 and end["usage"]["prompt_tokens"] > 0  # the server's counts
    sent = openai.calls("/v1/chat/completions")[-1].body
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "gpt-4.1-mini"
    assert "lichens" in sent["messages"][-1]["content"].lower() and "<passage" in sent["messages"][-1]["content"]

    stored = client.get(space_url(space_id, "conversations", events[0][1]["conversation_id"], "messages"),
                        headers=alice.headers).json
    assert stored[-1]["content"] == text and [c["n"] for c in stored[-1]["citations"]] == [1]


def test_the_openai_generator_answers_query_and_a_json_chat(make_app, openai):
    client = ApiClient(openai_app(make_app, openai).test_client())
    alice, space_id = library(client)
    for path, body in (("query", {"question": QUESTION}), ("chat", {"message": QUESTION})):
        response = client.post(space_url(space_id, path), json=body, headers=alice.headers)
        assert response.status_code == 200, response.json
        assert response.json["answer"].startswith("Lichens are a fungus living with algae [1].")
        assert [c["n"] for c in response.json["citations"]] == [1]
        assert response.json["usage"]["completion_tokens"] == 13


def test_a_server_that_sends_no_usage_is_counted_and_says_so(make_app, openai):
    openai.send_usage = False  # older Ollama, llama.cpp's server
    client = ApiClient(openai_app(make_app, openai).test_client())
    alice, space_id = library(client)
    body = client.post(space_url(space_id, "query"), json={"question": QUESTION}, headers=alice.headers).json
    assert body["usage"]["estimated"] is True and body["usage"]["completion_tokens"] > 0
    assert client.get("/api/v1/usage", headers=alice.headers).json["estimated_requests"] == 1


def test_a_bad_key_is_502_upstream_error_naming_the_plugin(make_app, openai):
    client = ApiClient(openai_app(make_app, openai).test_client())
    alice, space_id = library(client)
    openai.fail(401, message="Incorrect API key provided: sk-stand*****cdef.", code="invalid_api_key",
                type="invalid_request_error")
    body = assert_error(client.post(space_url(space_id, "query"), json={"question": QUESTION},
                                    headers=alice.headers), 502, "upstream_error")
    assert "'openai'" in body["message"] and "cdef" not in body["message"]


def test_a_stream_cut_after_the_first_tokens_ends_with_the_error_event(make_app, openai):
    openai.cut_stream_after = 4
    client = ApiClient(openai_app(make_app, openai).test_client())
    alice, space_id = library(client)
    events = sse_post(client, alice, space_id, {"message": QUESTION})
    assert check_order(events)[-1] == "error" and events[-1][1]["code"] == 503
    stored = client.get(space_url(space_id, "conversations", events[0][1]["conversation_id"], "messages"),
                        headers=alice.headers).json
    assert stored[-1]["status"] == "interrupted" and stored[-1]["content"]


def test_a_space_can_answer_with_openai_while_the_server_answers_with_the_quoter(make_app, openai):
    app = make_app(GENERATOR="extractive", PLUGINS={"generator": {"openai": {
        "api_key": openai_standin.API_KEY, "base_url": openai.base_url, "max_retries": 0}}})
    client = ApiClient(app.test_client())
    alice, space_id = library(client)
    plugins = {p["name"]: p for p in client.get("/api/v1/plugins", headers=alice.headers).json["generator"]}
    assert plugins["openai"]["usable"] is True
    choice = {"generator": {"name": "openai", "model": "llama3.1"}}
    chosen = client.patch(space_url(space_id), json={"settings": choice}, headers=alice.headers)
    assert chosen.status_code == 200, chosen.json
    body = client.post(space_url(space_id, "query"), json={"question": QUESTION}, headers=alice.headers).json
    assert body["answer"].startswith("Lichens are a fungus")
    assert openai.calls("/v1/chat/completions")[-1].body["model"] == "llama3.1"


# --------------------------------------------------------------------------- pinecone


@pytest.fixture(scope="module")
def pinecone_server():
    with pinecone_standin.PineconeStandin() as server:
        yield server


def test_a_vector_store_without_keyword_search_answers_every_mode_from_vectors(make_app, pinecone_server):
    """Pinecone has no keyword search: hybrid and keyword searches are answered from the
    vectors, and every hit says so; what the store holds follows uploads and deletes."""
    index = f"spacio-{uuid.uuid4().hex[:8]}"
    app = make_app(VECTOR_STORE="pinecone", PLUGINS={"vector_store": {"pinecone": {
        "api_key": pinecone_standin.API_KEY, "controller_host": pinecone_server.url, "index": index,
        "backoff": 0.001, "timeout": 5}}})
    client = ApiClient(app.test_client())
    alice, space_id = library(client)

    for mode in ("hybrid", "vector", "keyword"):
        response = client.post(space_url(space_id, "search"), json={"query": QUESTION, "mode": mode},
                               headers=alice.headers)
        assert response.status_code == 200, response.json
        assert response.json["mode"] == "vector" and response.json["grounded"] is True
        hits = response.json["hits"]
        assert hits and {h["mode"] for h in hits} == {"vector"}
        assert hits[0]["filename"] == "lichens.txt"
    assert client.post(space_url(space_id, "query"), json={"question": QUESTION},
                       headers=alice.headers).json["grounded"] is True


def test_an_embedding_model_that_changed_dimensions_fails_the_document_with_nothing_written(make_app, openai):
    """The `openai` embedder on a server whose model now answers other dimensions than the
    space recorded: the document fails `pipeline_changed` at once, no chunk and no vector."""
    app = make_app(EMBEDDER="openai", PLUGINS={"embedder": {"openai": {
        "api_key": openai_standin.API_KEY, "base_url": openai.base_url, "model": "text-embedding-3-small",
        "dimensions": 256, "max_retries": 0}}})
    client = ApiClient(app.test_client())
    alice = client.user("alice@example.com")
    space_id = client.space(alice)["id"]
    assert client.document(alice, space_id, FACTS["tides.txt"].encode(), "tides.txt")["chunks"] > 0
    openai.wrong_dimensions = 128
    failed = client.document(alice, space_id, FACTS["lichens.txt"].encode(), "lichens.txt", ready=False)
    assert failed["status"] == "failed" and failed["error"]["reason"] == "pipeline_changed", failed
    assert failed["chunks"] == 0
    with app.app_context():
        from spacio.documents.models import Chunk
        from spacio.extensions import db
        from spacio.rag import registry

        assert db.session.query(Chunk).filter_by(document_id=uuid.UUID(failed["id"])).count() == 0
        assert registry().vector_store.count(space_id, failed["id"]) == 0
