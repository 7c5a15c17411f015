"""Conversations (API.md "Asking"): your own list, the owner's `scope=all`, messages oldest
first, rename and delete (own only), and what happens when members leave or the space goes."""

import uuid

import pytest
from sqlalchemy import update

from spacio.chat.models import Conversation, Message
from spacio.extensions import db
from tests.api.helpers import assert_pagination, assert_recent, count_rows, space_url
from tests.api.test_chat import CATS_QUESTION, FACTS, HUNT_QUESTION, chat, messages, paced
from tests.conftest import assert_error

FIELDS = {"id", "title", "user", "created_at", "updated_at", "message_count"}


@pytest.fixture
def app(make_app):
    return make_app(**paced())


@pytest.fixture
def library(client, alice, bob, carol, space):
    """Alice's space with Bob as a viewer and Carol as an editor."""
    for filename, text in FACTS.items():
        client.document(alice, space["id"], text.encode(), filename)
    client.member(alice, space["id"], bob, "viewer")
    client.member(alice, space["id"], carol, "editor")
    return space


def conversations(client, user, space_id, **query):
    response = client.get(space_url(space_id, "conversations"), headers=user.headers, query_string=query)
    assert response.status_code == 200, response.json
    return response


def touch(app, conversation_id, minutes_ago):
    """Date a conversation's last activity back, so the order does not depend on timing."""
    from datetime import datetime, timedelta, timezone

    with app.app_context():
        db.session.execute(update(Conversation).where(Conversation.id == uuid.UUID(conversation_id))
                           .values(updated_at=datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)))
        db.session.commit()


def test_your_conversations_newest_activity_first(client, alice, library):
    first = chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"]
    second = chat(client, alice, library["id"], HUNT_QUESTION)["conversation_id"]
    touch(client.app, first, 10)
    touch(client.app, second, 5)
    listed = conversations(client, alice, library["id"]).json
    assert [c["id"] for c in listed] == [second, first]
    assert set(listed[0]) == FIELDS
    assert listed[0]["user"] == {"id": alice.id, "name": "Alice", "email": "alice@example.com"}
    assert listed[0]["message_count"] == 2
    assert_recent(listed[0]["created_at"])

    chat(client, alice, library["id"], CATS_QUESTION, first)  # activity moves it to the top
    listed = conversations(client, alice, library["id"]).json
    assert [(c["id"], c["message_count"]) for c in listed] == [(first, 4), (second, 2)]


def test_conversations_are_paginated(client, alice, library):
    ids = [chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"] for _ in range(3)]
    for minutes, conversation_id in enumerate(ids):
        touch(client.app, conversation_id, 10 - minutes)  # the last one is the newest
    response = conversations(client, alice, library["id"], page=2, page_size=2)
    assert_pagination(response, total=3, total_pages=2, page=2, page_size=2)
    assert [c["id"] for c in response.json] == [ids[0]]


def test_members_see_only_their_own(client, alice, bob, carol, library):
    mine = chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"]
    bobs = chat(client, bob, library["id"], HUNT_QUESTION)["conversation_id"]
    carols = chat(client, carol, library["id"], CATS_QUESTION)["conversation_id"]
    assert [c["id"] for c in conversations(client, alice, library["id"]).json] == [mine]
    assert [c["id"] for c in conversations(client, bob, library["id"]).json] == [bobs]
    assert [c["id"] for c in conversations(client, carol, library["id"]).json] == [carols]
    for member in (bob, carol):
        response = client.get(space_url(library["id"], "conversations"), headers=member.headers,
                              query_string={"scope": "all"})
        assert_error(response, 403, "forbidden")
    assert_error(client.get(space_url(library["id"], "conversations"), headers=alice.headers,
                            query_string={"scope": "everyone"}), 422, "validation_error")


def test_the_owner_sees_everyones_grouped_by_user(client, alice, bob, carol, library):
    bob_old = chat(client, bob, library["id"], CATS_QUESTION)["conversation_id"]
    alices = chat(client, alice, library["id"], HUNT_QUESTION)["conversation_id"]
    bob_new = chat(client, bob, library["id"], HUNT_QUESTION)["conversation_id"]
    carols = chat(client, carol, library["id"], CATS_QUESTION)["conversation_id"]
    touch(client.app, bob_old, 30)
    touch(client.app, bob_new, 1)
    response = conversations(client, alice, library["id"], scope="all")
    listed = response.json
    assert_pagination(response, total=4, total_pages=1, page=1, page_size=50)
    # by user (name order), newest activity first within each user
    assert [(c["user"]["name"], c["id"]) for c in listed] == [
        ("Alice", alices), ("Bob", bob_new), ("Bob", bob_old), ("Carol", carols)]
    assert listed[1]["user"] == {"id": bob.id, "name": "Bob", "email": "bob@example.com"}


def test_messages_oldest_first_paginated(client, alice, library):
    conversation_id = None
    for question in (CATS_QUESTION, HUNT_QUESTION, CATS_QUESTION):
        conversation_id = chat(client, alice, library["id"], question, conversation_id)["conversation_id"]
    everything = messages(client, alice, library["id"], conversation_id)
    assert [(m["role"], m["content"]) for m in everything[::2]] == [
        ("user", CATS_QUESTION), ("user", HUNT_QUESTION), ("user", CATS_QUESTION)]
    assert [m["role"] for m in everything] == ["user", "assistant"] * 3
    assert set(everything[1]) == {"id", "role", "content", "citations", "grounded", "status", "usage", "created_at"}
    response = client.get(space_url(library["id"], "conversations", conversation_id, "messages"),
                          headers=alice.headers, query_string={"page": 2, "page_size": 4})
    assert_pagination(response, total=6, total_pages=2, page=2, page_size=4)
    assert [m["id"] for m in response.json] == [m["id"] for m in everything[4:]]


def test_messages_of_others_are_not_found_except_for_the_owner(client, alice, bob, carol, library):
    bobs = chat(client, bob, library["id"], CATS_QUESTION)["conversation_id"]
    alices = chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"]
    url = space_url(library["id"], "conversations", bobs, "messages")
    assert_error(client.get(url, headers=carol.headers), 404, "conversation_not_found")
    assert_error(client.get(space_url(library["id"], "conversations", alices, "messages"), headers=bob.headers),
                 404, "conversation_not_found")
    assert len(messages(client, alice, library["id"], bobs)) == 2  # the owner may read them (scope=all)
    assert_error(client.get(space_url(library["id"], "conversations", uuid.uuid4(), "messages"),
                            headers=alice.headers), 404, "conversation_not_found")


def test_a_conversation_of_another_space_is_not_found(client, alice, library):
    other = client.space(alice, "Other")
    client.document(alice, other["id"], FACTS["cats.txt"].encode(), "cats.txt")
    elsewhere = chat(client, alice, other["id"], CATS_QUESTION)["conversation_id"]
    for response in (
        client.post(space_url(library["id"], "chat"), json={"message": CATS_QUESTION, "conversation_id": elsewhere},
                    headers=alice.headers),
        client.get(space_url(library["id"], "conversations", elsewhere, "messages"), headers=alice.headers),
        client.patch(space_url(library["id"], "conversations", elsewhere), json={"title": "x"}, headers=alice.headers),
        client.delete(space_url(library["id"], "conversations", elsewhere), headers=alice.headers),
    ):
        assert_error(response, 404, "conversation_not_found")


def test_continuing_someone_elses_conversation_is_not_found(client, alice, bob, library):
    bobs = chat(client, bob, library["id"], CATS_QUESTION)["conversation_id"]
    response = client.post(space_url(library["id"], "chat"), json={"message": "mine now", "conversation_id": bobs},
                           headers=alice.headers)  # not even the owner writes into Bob's conversation
    assert_error(response, 404, "conversation_not_found")
    assert len(messages(client, bob, library["id"], bobs)) == 2


def test_rename_and_delete_your_own(client, alice, bob, library):
    mine = chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"]
    bobs = chat(client, bob, library["id"], CATS_QUESTION)["conversation_id"]
    url = space_url(library["id"], "conversations", mine)

    response = client.patch(url, json={"title": "  Sleepy cats  "}, headers=alice.headers)
    assert response.status_code == 200, response.json
    assert (response.json["id"], response.json["title"]) == (mine, "Sleepy cats")
    assert conversations(client, alice, library["id"]).json[0]["title"] == "Sleepy cats"
    for body in ({"title": ""}, {"title": "   "}, {}, {"title": "x" * 201}):
        assert_error(client.patch(url, json=body, headers=alice.headers), 422, "validation_error")

    # others' conversations: not found, for the owner too
    other = space_url(library["id"], "conversations", bobs)
    assert_error(client.patch(other, json={"title": "Mine"}, headers=alice.headers), 404, "conversation_not_found")
    assert_error(client.delete(other, headers=alice.headers), 404, "conversation_not_found")
    assert_error(client.patch(url, json={"title": "Bob's"}, headers=bob.headers), 404, "conversation_not_found")

    assert client.delete(url, headers=alice.headers).status_code == 204
    assert conversations(client, alice, library["id"]).json == []
    assert_error(client.get(space_url(library["id"], "conversations", mine, "messages"), headers=alice.headers),
                 404, "conversation_not_found")
    assert_error(client.delete(url, headers=alice.headers), 404, "conversation_not_found")
    assert count_rows(client.app, Message) == 2  # Bob's two remain
    assert len(messages(client, bob, library["id"], bobs)) == 2


def test_a_member_who_leaves_keeps_nothing_and_breaks_nothing(client, alice, bob, library):
    bobs = chat(client, bob, library["id"], CATS_QUESTION)["conversation_id"]
    response = client.delete(space_url(library["id"], "members", bob.id), headers=bob.headers)
    assert response.status_code == 204, response.json
    assert_error(client.get(space_url(library["id"], "conversations"), headers=bob.headers), 404, "space_not_found")
    listed = conversations(client, alice, library["id"], scope="all").json
    assert [c["id"] for c in listed] == [bobs]  # the owner still sees what was asked
    assert len(messages(client, alice, library["id"], bobs)) == 2


def test_deleting_the_space_deletes_its_conversations(client, alice, bob, library):
    chat(client, bob, library["id"], CATS_QUESTION)
    chat(client, alice, library["id"], CATS_QUESTION)
    assert client.delete(space_url(library["id"]), headers=alice.headers).status_code == 204
    assert count_rows(client.app, Conversation) == 0 and count_rows(client.app, Message) == 0


def test_deleting_an_account_deletes_its_conversations(client, alice, bob, library):
    chat(client, bob, library["id"], CATS_QUESTION)
    mine = chat(client, alice, library["id"], CATS_QUESTION)["conversation_id"]
    response = client.delete("/api/v1/auth/me", headers=bob.headers)
    assert response.status_code == 204, response.json
    assert [c["id"] for c in conversations(client, alice, library["id"], scope="all").json] == [mine]
