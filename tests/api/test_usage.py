"""Usage (API.md "Usage and operations"): the caller's tokens and requests by space in a
window; the owner also sees each owned space's totals. The sums are checked against what
each response and each stored message reported."""

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from spacio.documents.models import Document
from spacio.extensions import db
from spacio.rag import registry
from spacio.usage.models import UsageRecord
from tests.api.helpers import space_url
from tests.api.test_chat import CATS_QUESTION, FACTS, HUNT_QUESTION, chat, messages, paced
from tests.conftest import assert_error

USAGE = "/api/v1/usage"
COUNTS = ("prompt_tokens", "completion_tokens", "embedding_tokens", "requests", "estimated_requests")


@pytest.fixture
def app(make_app):
    return make_app(**paced())


@pytest.fixture
def library(client, alice, bob, space):
    for filename, text in FACTS.items():
        client.document(alice, space["id"], text.encode(), filename)
    client.member(alice, space["id"], bob, "viewer")
    return space


def usage(client, user, **query):
    response = client.get(USAGE, headers=user.headers, query_string=query)
    assert response.status_code == 200, response.json
    return response.json


def query_embedding_tokens(app, text):
    with app.app_context():
        return int(registry(app).embedder.embed_query(text).tokens)


def ingestion_tokens(app, space_id):
    with app.app_context():
        return int(db.session.scalar(select(func.sum(Document.tokens)).where(Document.space_id == uuid.UUID(space_id))))


def add(total, part):
    for key in ("prompt_tokens", "completion_tokens", "embedding_tokens"):
        total[key] += part[key]
    total["requests"] += 1


def test_usage_sums_match_what_each_request_reported(client, alice, bob, library):
    space_id = library["id"]
    expected = {user.id: dict.fromkeys(COUNTS, 0) for user in (alice, bob)}

    # a search: its embedding tokens, not reported in its response
    response = client.post(space_url(space_id, "search"), json={"query": CATS_QUESTION}, headers=bob.headers)
    assert response.status_code == 200, response.json
    add(expected[bob.id], {"prompt_tokens": 0, "completion_tokens": 0,
                           "embedding_tokens": query_embedding_tokens(client.app, CATS_QUESTION)})
    # queries: what their responses said
    for user, question in ((alice, CATS_QUESTION), (bob, HUNT_QUESTION)):
        response = client.post(space_url(space_id, "query"), json={"question": question}, headers=user.headers)
        assert response.status_code == 200, response.json
        add(expected[user.id], response.json["usage"])
    # chats: what the stored answers say
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    chat(client, alice, space_id, HUNT_QUESTION, conversation_id)
    for message in messages(client, alice, space_id, conversation_id):
        if message["role"] == "assistant":
            add(expected[alice.id], message["usage"])
    # Alice uploaded the documents: their embedding tokens are hers, and not requests
    ingested = ingestion_tokens(client.app, space_id)
    assert ingested > 0
    expected[alice.id]["embedding_tokens"] += ingested

    mine = usage(client, alice)
    assert mine["window"] == "24h"
    assert {key: mine[key] for key in COUNTS} == expected[alice.id]
    assert mine["requests"] == 3 and mine["completion_tokens"] > 0
    (entry,) = mine["by_space"]
    assert (entry["space_id"], entry["name"]) == (space_id, "Research")
    assert {key: entry[key] for key in COUNTS} == expected[alice.id]
    assert entry["space_totals"] == {key: expected[alice.id][key] + expected[bob.id][key] for key in COUNTS}

    theirs = usage(client, bob)
    assert {key: theirs[key] for key in COUNTS} == expected[bob.id]
    (entry,) = theirs["by_space"]
    assert "space_totals" not in entry  # Bob does not own the space
    assert {key: entry[key] for key in COUNTS} == expected[bob.id]


def test_usage_by_space_and_window(client, alice, bob, library):
    other = client.space(bob, "Bob's notes")
    client.document(bob, other["id"], FACTS["cats.txt"].encode(), "cats.txt")
    for space_id in (library["id"], other["id"]):
        response = client.post(space_url(space_id, "query"), json={"question": CATS_QUESTION}, headers=bob.headers)
        assert response.status_code == 200, response.json
    by_name = {entry["name"]: entry for entry in usage(client, bob)["by_space"]}
    assert list(by_name) == ["Bob's notes", "Research"]
    assert "space_totals" in by_name["Bob's notes"] and "space_totals" not in by_name["Research"]
    assert by_name["Research"]["requests"] == by_name["Bob's notes"]["requests"] == 1
    # the owner sees the totals of her space, which only Bob used
    alice_entry, = usage(client, alice)["by_space"]
    assert alice_entry["requests"] == 0 and alice_entry["space_totals"]["requests"] == 1

    # three days ago: in the 7-day window, not in the 24-hour one
    with client.app.app_context():
        db.session.execute(update(UsageRecord).where(UsageRecord.space_id == uuid.UUID(other["id"]))
                           .values(created_at=datetime.now(timezone.utc) - timedelta(days=3)))
        db.session.commit()
    assert [e["name"] for e in usage(client, bob, window="24h")["by_space"]] == ["Research"]
    week = usage(client, bob, window="7d")
    assert week["window"] == "7d" and [e["name"] for e in week["by_space"]] == ["Bob's notes", "Research"]
    assert week["requests"] == 2


def test_no_use_is_zero(client, carol):
    assert usage(client, carol) == {"window": "24h", "prompt_tokens": 0, "completion_tokens": 0,
                                    "embedding_tokens": 0, "requests": 0, "estimated_requests": 0, "by_space": []}


def test_bad_windows_and_anonymous_callers_are_refused(client, alice):
    for window in ("1h", "30d", ""):
        assert_error(client.get(USAGE, headers=alice.headers, query_string={"window": window}), 422)
    assert_error(client.get(USAGE), 401)


def test_a_deleted_account_leaves_its_use_in_the_space_totals(client, alice, bob, library):
    response = client.post(space_url(library["id"], "query"), json={"question": CATS_QUESTION}, headers=bob.headers)
    assert response.status_code == 200
    assert client.delete("/api/v1/auth/me", headers=bob.headers).status_code == 204
    (entry,) = usage(client, alice)["by_space"]
    assert entry["space_totals"]["requests"] == 1 and entry["requests"] == 0


def test_a_reindex_counts_its_embedding_again(client, alice, library):
    before = usage(client, alice)["embedding_tokens"]
    document_id = client.get(space_url(library["id"], "documents"), headers=alice.headers).json[0]["id"]
    response = client.post(space_url(library["id"], "documents", document_id, "reindex"), headers=alice.headers)
    assert response.status_code == 202, response.json
    client.ingested()
    with client.app.app_context():
        tokens = db.session.get(Document, uuid.UUID(document_id)).tokens
    assert usage(client, alice)["embedding_tokens"] == before + tokens
