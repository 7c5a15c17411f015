"""Query (API.md "Asking"): a stateless question -> {answer, citations, grounded, usage}."""

import re
import uuid

from sqlalchemy import select

from spacio.chat.models import Conversation, Message
from spacio.extensions import db
from spacio.rag import answering
from spacio.usage.models import UsageRecord
from tests.api.helpers import count_rows, space_url
from tests.api.test_chat import CATS_QUESTION, HUNT_QUESTION, UNRELATED, paced, recording
from tests.api.test_chat import app, library  # noqa: F401  (the same fixtures: a paced generator, three documents)
from tests.conftest import ApiClient, assert_error


def ask(client, user, space_id, question, **extra):
    return client.post(space_url(space_id, "query"), json={"question": question, **extra}, headers=user.headers)


def test_a_question_gets_a_cited_answer(client, alice, library):
    response = ask(client, alice, library["id"], CATS_QUESTION)
    assert response.status_code == 200, response.json
    body = response.json
    assert set(body) == {"answer", "citations", "grounded", "usage"}
    assert body["grounded"] is True
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
    assert markers and [c["n"] for c in body["citations"]] == sorted(markers)  # exactly those it cites
    assert body["citations"][0]["filename"] == "cats.txt"
    assert "sixteen hours" in body["citations"][0]["snippet"]
    for citation in body["citations"]:
        chunk = client.get(space_url(library["id"], "chunks", citation["chunk_id"]), headers=alice.headers)
        assert chunk.status_code == 200 and chunk.json["document_id"] == citation["document_id"]
    usage = body["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "embedding_tokens", "estimated"}
    assert usage["estimated"] is False  # the generator reported its counts
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 20 and usage["embedding_tokens"] > 0


def test_a_query_is_stateless(make_app, alice, library):
    app = make_app(**paced())
    generator = recording(app)
    client = ApiClient(app.test_client())
    for question in (CATS_QUESTION, HUNT_QUESTION):
        assert ask(client, alice, library["id"], question).status_code == 200
    assert [p.history for p in generator.prompts] == [(), ()]
    assert count_rows(app, Conversation) == 0 and count_rows(app, Message) == 0
    with app.app_context():
        kinds = db.session.scalars(select(UsageRecord.kind).where(UsageRecord.kind != "ingest")).all()
    assert kinds == ["query", "query"]


def test_top_k_bounds_the_passages_offered(make_app, alice, library):
    app = make_app(**paced())
    generator = recording(app)
    client = ApiClient(app.test_client())
    body = ask(client, alice, library["id"], CATS_QUESTION, top_k=1).json
    assert len(generator.prompts[0].passages) == 1
    assert [c["n"] for c in body["citations"]] == [1]
    assert_error(ask(client, alice, library["id"], CATS_QUESTION, top_k=0), 422, "validation_error")
    assert_error(ask(client, alice, library["id"], CATS_QUESTION, top_k=101), 422, "validation_error")


def test_the_space_prompt_settings_reach_the_generator(make_app, client, alice, library):
    response = client.patch(space_url(library["id"]), headers=alice.headers,
                            json={"settings": {"system_prompt": "Answer like a pirate.", "temperature": 0.2}})
    assert response.status_code == 200, response.json
    app = make_app(**paced())
    generator = recording(app)
    assert ask(ApiClient(app.test_client()), alice, library["id"], CATS_QUESTION).status_code == 200
    prompt = generator.prompts[0]
    assert (prompt.system_prompt, prompt.temperature, prompt.question) == ("Answer like a pirate.", 0.2,
                                                                           CATS_QUESTION)


def test_nothing_relevant_says_so(client, alice, library):
    body = ask(client, alice, library["id"], UNRELATED).json
    assert body == {"answer": answering.NOT_GROUNDED_ANSWER, "citations": [], "grounded": False,
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False,
                              "embedding_tokens": body["usage"]["embedding_tokens"]}}
    assert body["usage"]["embedding_tokens"] > 0


def test_bad_questions_and_strangers_are_refused(client, alice, bob, library):
    for body in ({}, {"question": ""}, {"question": " \n "}, {"question": 42}, {"question": "x" * 4001},
                 {"question": "ok", "extra": 1}):
        assert_error(client.post(space_url(library["id"], "query"), json=body, headers=alice.headers), 422)
    assert_error(ask(client, bob, library["id"], CATS_QUESTION), 404, "space_not_found")
    assert_error(ask(client, alice, uuid.uuid4(), CATS_QUESTION), 404, "space_not_found")
    response = client.post(space_url(library["id"], "query"), data="question", headers=alice.headers,
                           content_type="text/plain")
    assert_error(response, 415)


def test_a_failing_generator_answers_503_and_the_request_still_counts(make_app, alice, library):
    failing = ApiClient(make_app(**paced(fail_after=1)).test_client())
    assert_error(ask(failing, alice, library["id"], CATS_QUESTION), 503, "upstream_error")
    with failing.app.app_context():
        record = db.session.scalars(select(UsageRecord).where(UsageRecord.kind == "query")).one()
        assert record.embedding_tokens > 0 and record.completion_tokens == 0


def test_no_generator_configured_is_503_only_when_one_is_needed(make_app, alice, library):
    bare = ApiClient(make_app(GENERATOR=None).test_client())
    assert_error(ask(bare, alice, library["id"], CATS_QUESTION), 503, "generator_not_configured")
    assert ask(bare, alice, library["id"], UNRELATED).json["grounded"] is False
