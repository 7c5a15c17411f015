"""A space's own generator (and model), chosen by its owner among those that can answer on
this server; and usage that says when its tokens were counted by Spacio, not reported."""

import pytest

from spacio.rag import registry
from tests.api.helpers import space_url
from tests.conftest import ApiClient, assert_error

FACT = b"Lichens are a symbiosis of a fungus with algae or cyanobacteria; they grow on bare rock."
QUESTION = "What are lichens a symbiosis of?"


@pytest.fixture
def app(make_app):
    # the server answers with the extractive quoter; the paced test generator is installed too
    return make_app(GENERATOR="extractive", PLUGINS={"generator": {"paced": {"tokens_per_second": 2000}}})


@pytest.fixture
def lichens(client, alice, space):
    client.document(alice, space["id"], FACT, "lichens.txt")
    return space


def choose(client, user, space_id, generator):
    return client.patch(space_url(space_id), json={"settings": {"generator": generator}}, headers=user.headers)


def ask(client, user, space_id):
    response = client.post(space_url(space_id, "query"), json={"question": QUESTION}, headers=user.headers)
    assert response.status_code == 200, response.json
    return response.json


def test_the_owner_picks_the_spaces_generator_and_its_model(client, alice, lichens):
    assert not ask(client, alice, lichens["id"])["answer"].startswith("Answer from [1]:")  # the server's quoter

    response = choose(client, alice, lichens["id"], {"name": "paced", "model": "paced-large"})
    assert response.status_code == 200, response.json
    assert response.json["settings"]["generator"] == {"name": "paced", "model": "paced-large"}
    assert client.get(space_url(lichens["id"]), headers=alice.headers).json["settings"]["generator"] == {
        "name": "paced", "model": "paced-large"}
    body = ask(client, alice, lichens["id"])
    assert body["answer"].startswith("Answer from [1]:") and body["grounded"]  # the paced generator's answer
    with client.app.app_context():
        chosen = registry().generator_for({"name": "paced", "model": "paced-large"})
        assert chosen.model == "paced-large" and chosen is not registry().generator

    # null: back to the server's generator; other spaces never changed
    assert choose(client, alice, lichens["id"], None).json["settings"] == {}
    assert not ask(client, alice, lichens["id"])["answer"].startswith("Answer from [1]:")


@pytest.mark.parametrize("generator, says", [
    ({"name": "cohere"}, "API key"),  # installed, but this server has no key for it
    ({"name": "nowhere"}, "not installed"),
    ({"name": "extractive", "model": "gpt-9"}, "no model to choose"),
])
def test_a_generator_that_cannot_answer_here_is_refused(client, alice, space, generator, says):
    body = assert_error(choose(client, alice, space["id"], generator), 422, "generator_not_usable")
    assert says in body["message"] and body["errors"] == {"settings": {"generator": [body["message"]]}}
    assert "generator" not in client.get(space_url(space["id"]), headers=alice.headers).json["settings"]


def test_only_the_owner_chooses_the_generator(client, alice, bob, space):
    client.member(alice, space["id"], bob, "editor")
    assert_error(choose(client, bob, space["id"], {"name": "paced"}), 403)


def test_usage_counted_by_the_plugin_says_so(make_app):
    """A model server that sends no token counts (the paced generator with reports_usage off):
    the answer's usage, the stored message and /usage say the counts are Spacio's."""
    client = ApiClient(make_app(GENERATOR="paced", PLUGINS={"generator": {"paced": {
        "tokens_per_second": 2000, "reports_usage": False}}}).test_client())
    alice = client.user("alice@example.com")
    space = client.space(alice)
    client.document(alice, space["id"], FACT, "lichens.txt")

    assert ask(client, alice, space["id"])["usage"]["estimated"] is True
    reply = client.post(space_url(space["id"], "chat"), json={"message": QUESTION}, headers=alice.headers).json
    assert reply["usage"]["estimated"] is True
    messages = client.get(space_url(space["id"], "conversations", reply["conversation_id"], "messages"),
                          headers=alice.headers).json
    assert [m["usage"]["estimated"] for m in messages if m["role"] == "assistant"] == [True]
    usage = client.get("/api/v1/usage", headers=alice.headers).json
    assert (usage["requests"], usage["estimated_requests"]) == (2, 2)
    assert usage["by_space"][0]["estimated_requests"] == 2
    client.post(space_url(space["id"], "search"), json={"query": QUESTION}, headers=alice.headers)
    assert client.get("/api/v1/usage", headers=alice.headers).json["estimated_requests"] == 2  # no generator
