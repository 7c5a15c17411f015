"""Chat (API.md "Asking"): a whole answer as JSON, or Server-Sent Events read by a real HTTP
client from a real server; history; citations that lead to real chunks and pages;
interrupted streams (a client that leaves, a generator that fails mid-stream); the order
of storing (question before the answer, no open session while it streams).

The generator is ``paced`` (spacio.testing.generators): a known answer citing every
offered passage, at a fixed rate, optionally failing after N pieces. ``Recording`` wraps
the app's generator to see the prompts it gets and whether its stream was closed.
"""

import http.client
import json
import re
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from spacio.chat.models import Conversation, Message
from spacio.extensions import db
from spacio.rag import answering, contracts, registry
from tests.api.helpers import count_rows, hold_row, lock_waits, space_url
from tests.api.test_documents import pdf
from tests.conftest import ApiClient, assert_error
from tests.integration.workers import wait_for

FACTS = {
    "cats.txt": "Cats sleep sixteen hours each day. A house cat hunts small birds at dawn.",
    "comets.txt": "The lavender comet returns every eleven years on its long orbit around the sun.",
    "bread.txt": "Sourdough bread rises overnight because wild yeast ferments the flour slowly.",
}
CATS_QUESTION = "How many hours do cats sleep each day?"
HUNT_QUESTION = "When does a house cat hunt small birds at dawn?"
UNRELATED = "Which recipe uses saffron and rice?"


def paced(**options):
    return {"GENERATOR": "paced", "PLUGINS": {"generator": {"paced": {"tokens_per_second": 2000, **options}}}}


@pytest.fixture
def app(make_app):
    return make_app(**paced())


@pytest.fixture
def library(client, alice, space):
    """Alice's space with three one-topic documents, ready."""
    for filename, text in FACTS.items():
        client.document(alice, space["id"], text.encode(), filename)
    return space


class Recording:
    """Wraps a Generator: keeps each prompt, counts pieces, and notes streams stopped early."""

    def __init__(self, inner):
        self.inner = inner
        self.prompts, self.pieces, self.finished, self.stopped = [], 0, 0, 0

    def stream(self, prompt):
        self.prompts.append(prompt)
        done = False
        try:
            for item in self.inner.stream(prompt):
                if isinstance(item, str):
                    self.pieces += 1
                yield item
            done = True
        finally:
            if done:
                self.finished += 1
            else:
                self.stopped += 1


def recording(app):
    reg = registry(app)
    reg.generator = Recording(reg.generator)
    return reg.generator


# --------------------------------------------------------------------------- SSE, read as a browser would

def parse_sse(raw: bytes):
    """Events of a text/event-stream body, checked against the framing API.md fixes: each
    event is exactly ``event: <type>`` and one ``data: <json>`` line, then a blank line."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    events = []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 2, block
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][len("event: "):], json.loads(lines[1][len("data: "):])))
    return events


def check_order(events):
    """start, citations, delta..., then end or error: the order API.md fixes."""
    kinds = [kind for kind, _ in events]
    assert kinds[:2] == ["start", "citations"], kinds
    assert kinds[-1] in ("end", "error"), kinds
    assert set(kinds[2:-1]) <= {"delta"}, kinds
    if kinds[-1] == "end":
        assert kinds.count("delta") >= 1, kinds
    return kinds


@contextmanager
def served(app):
    """The app behind a real threaded HTTP/1.1 server on loopback."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        thread.join(10)


class Stream:
    """A POST /chat read with http.client, event by event as the bytes arrive."""

    def __init__(self, port, path, body, headers):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.connection.request("POST", path, json.dumps(body).encode(),
                                {**headers, "Accept": "text/event-stream", "Content-Type": "application/json"})
        self.response = self.connection.getresponse()
        self.buffer, self.raw = b"", b""

    def next_event(self):
        while b"\n\n" not in self.buffer:
            chunk = self.response.read1(65536)
            if not chunk:
                return None
            self.buffer += chunk
            self.raw += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return parse_sse(block + b"\n\n")[0]

    def all_events(self):
        events = []
        while (event := self.next_event()) is not None:
            events.append(event)
        assert self.buffer == b"", self.buffer
        return events

    def close(self):
        self.response.close()
        self.connection.close()


def sse_post(client, user, space_id, body, **kwargs):
    response = client.post(space_url(space_id, "chat"), json=body,
                           headers={**user.headers, "Accept": "text/event-stream"}, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    return parse_sse(response.get_data())


def chat(client, user, space_id, message, conversation_id=None):
    body = {"message": message, **({"conversation_id": conversation_id} if conversation_id else {})}
    response = client.post(space_url(space_id, "chat"), json=body, headers=user.headers)
    assert response.status_code == 200, response.json
    return response.json


def messages(client, user, space_id, conversation_id):
    response = client.get(space_url(space_id, "conversations", conversation_id, "messages"),
                          headers=user.headers, query_string={"page_size": 200})
    assert response.status_code == 200, response.json
    return response.json


# --------------------------------------------------------------------------- streams

def test_a_stream_read_by_a_real_client_has_the_events_in_order(app, client, alice, library):
    space_id = library["id"]
    with served(app) as port:
        stream = Stream(port, f"/api/v1/spaces/{space_id}/chat", {"message": CATS_QUESTION}, alice.headers)
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type").startswith("text/event-stream")
        assert stream.response.getheader("Cache-Control") == "no-cache"
        assert stream.response.getheader("X-Accel-Buffering") == "no"
        assert stream.response.getheader("Content-Length") is None
        events = stream.all_events()
        stream.close()
    assert check_order(events)[-1] == "end"
    assert parse_sse(stream.raw) == events  # the whole body is well framed, not only event by event

    start, offered, end = events[0][1], events[1][1], events[-1][1]
    assert set(start) == {"conversation_id", "message_id"}
    assert end["message_id"] == start["message_id"]
    assert end["grounded"] is True
    assert set(end["usage"]) == {"prompt_tokens", "completion_tokens", "embedding_tokens", "estimated"}
    assert end["usage"]["embedding_tokens"] > 0 and end["usage"]["completion_tokens"] > 0
    assert offered and [c["n"] for c in offered] == list(range(1, len(offered) + 1))
    assert offered[0]["filename"] == "cats.txt"
    for citation in offered:
        assert set(citation) == {"n", "document_id", "filename", "chunk_id", "page", "snippet", "score"}
    answer = "".join(data["text"] for kind, data in events if kind == "delta")

    question, stored = messages(client, alice, space_id, start["conversation_id"])
    assert (question["role"], question["content"], question["status"]) == ("user", CATS_QUESTION, "complete")
    assert (question["citations"], question["grounded"], question["usage"]) == ([], None, None)
    assert stored["id"] == start["message_id"]
    assert (stored["role"], stored["status"], stored["grounded"]) == ("assistant", "complete", True)
    assert stored["content"] == answer
    assert stored["usage"] == end["usage"]
    # the stored answer keeps the offered passages it cites (paced cites them all), by n
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    assert [c["n"] for c in stored["citations"]] == sorted(cited)
    assert stored["citations"] == [c for c in offered if c["n"] in cited]


def test_a_stream_continues_a_conversation(client, alice, library):
    space_id = library["id"]
    first = sse_post(client, alice, space_id, {"message": CATS_QUESTION})
    conversation_id = first[0][1]["conversation_id"]
    second = sse_post(client, alice, space_id, {"message": "What does a house cat hunt at dawn?",
                                                "conversation_id": conversation_id})
    check_order(second)
    assert second[0][1]["conversation_id"] == conversation_id
    assert second[0][1]["message_id"] != first[0][1]["message_id"]
    assert [m["role"] for m in messages(client, alice, space_id, conversation_id)] == \
        ["user", "assistant", "user", "assistant"]


def test_a_client_that_disconnects_stops_the_generation_and_the_partial_answer_is_kept(make_app, alice, library):
    app = make_app(**paced(tokens_per_second=40, tokens=400))  # 10 s for the whole answer
    generator = recording(app)
    space_id = library["id"]
    with served(app) as port:
        stream = Stream(port, f"/api/v1/spaces/{space_id}/chat", {"message": CATS_QUESTION}, alice.headers)
        start = stream.next_event()
        assert start[0] == "start"
        assert stream.next_event()[0] == "citations"
        first = stream.next_event()
        assert first[0] == "delta"
        left_at = time.monotonic()
        stream.close()
        stored = wait_for_answer(app, start[1]["message_id"])
    assert time.monotonic() - left_at < 5, "the generation went on after the client left"
    assert stored.status == "interrupted"
    assert stored.content.startswith(first[1]["text"])
    assert 0 < generator.pieces < 400
    assert generator.stopped == 1 and generator.finished == 0  # its stream was closed, not run out
    assert stored.grounded is True


def wait_for_answer(app, message_id, timeout=10):
    deadline = time.monotonic() + timeout
    with app.app_context():
        while time.monotonic() < deadline:
            found = db.session.get(Message, uuid.UUID(message_id))
            if found is not None:
                db.session.expunge(found)
                return found
            db.session.rollback()
            time.sleep(0.05)
    raise AssertionError("the answer was not stored")


def test_a_generator_failing_mid_stream_sends_one_error_event_and_keeps_the_part(make_app, alice, library):
    failing = ApiClient(make_app(**paced(fail_after=3)).test_client())
    space_id = library["id"]
    events = sse_post(failing, alice, space_id, {"message": CATS_QUESTION})
    kinds = check_order(events)
    assert kinds[-1] == "error" and kinds.count("delta") >= 1
    body = events[-1][1]
    assert set(body) == {"code", "status", "message", "reason", "errors"}
    assert (body["code"], body["status"], body["reason"]) == (503, "Service Unavailable", "upstream_error")
    partial = "".join(data["text"] for kind, data in events if kind == "delta")
    question, stored = messages(failing, alice, space_id, events[0][1]["conversation_id"])
    assert stored["id"] == events[0][1]["message_id"]
    assert (stored["status"], stored["content"]) == ("interrupted", partial)
    assert stored["usage"]["embedding_tokens"] > 0


def test_a_generator_failing_on_a_json_chat_answers_503_and_keeps_the_part(make_app, alice, library):
    failing = ApiClient(make_app(**paced(fail_after=2)).test_client())
    space_id = library["id"]
    response = failing.post(space_url(space_id, "chat"), json={"message": CATS_QUESTION}, headers=alice.headers)
    assert_error(response, 503, "upstream_error")
    with failing.app.app_context():
        stored = db.session.scalars(select(Message).where(Message.role == "assistant")).one()
        assert stored.status == "interrupted" and stored.content == "Answer from"


def test_errors_before_the_stream_are_ordinary_http_errors(client, alice, bob, library):
    space_id = library["id"]
    stream_headers = {**alice.headers, "Accept": "text/event-stream"}
    cases = [
        ({"message": ""}, 422, "validation_error"),
        ({"message": "   "}, 422, "validation_error"),
        ({"message": "x" * 4001}, 422, "validation_error"),
        ({"message": "hi\x00"}, 422, "validation_error"),
        ({"message": CATS_QUESTION, "conversation_id": "not-a-uuid"}, 422, "validation_error"),
        ({"message": CATS_QUESTION, "conversation_id": str(uuid.uuid4())}, 404, "conversation_not_found"),
    ]
    for body, code, reason in cases:
        assert_error(client.post(space_url(space_id, "chat"), json=body, headers=stream_headers), code, reason)
    assert_error(client.post(space_url(uuid.uuid4(), "chat"), json={"message": "hi"}, headers=stream_headers),
                 404, "space_not_found")
    assert_error(client.post(space_url(space_id, "chat"), json={"message": "hi"},
                             headers={**bob.headers, "Accept": "text/event-stream"}), 404, "space_not_found")
    assert count_rows(client.app, Conversation) == 0 and count_rows(client.app, Message) == 0


def test_a_message_keeps_its_line_breaks(client, alice, library):
    reply = chat(client, alice, library["id"], "  First line\n\tsecond line  ")
    question = messages(client, alice, library["id"], reply["conversation_id"])[0]
    assert question["content"] == "First line\n\tsecond line"


def test_the_chat_rate_limit_answers_429_before_any_stream(make_app, alice, library):
    limited = ApiClient(make_app(ASK_RATE_LIMIT="2 per minute", **paced()).test_client())
    for _ in range(2):
        sse_post(limited, alice, library["id"], {"message": CATS_QUESTION})
    response = limited.post(space_url(library["id"], "chat"), json={"message": CATS_QUESTION},
                            headers={**alice.headers, "Accept": "text/event-stream"})
    assert_error(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) > 0


def test_the_session_is_released_while_the_answer_streams(make_app, alice, library):
    """While a stream is open, the request holds no pooled connection: every connection
    the pool handed out is back (ARCHITECTURE "Concurrency rules")."""
    app = make_app(**paced(tokens_per_second=200, tokens=40))
    with app.app_context():
        pool = db.engine.pool
    response, body, seen = open_stream(app, alice, library["id"], CATS_QUESTION)
    if hasattr(pool, "checkedout"):  # QueuePool (PostgreSQL); SQLite's file pool counts too
        assert pool.checkedout() == 0, pool.status()
    rest = b"".join(body)
    response.close()
    assert parse_sse(seen + rest)[-1][0] == "end"


def open_stream(app, user, space_id, message):
    """A streamed chat read piece by piece (the test client, not buffered): (first bytes up to a delta, rest)."""
    response = app.test_client().post(space_url(space_id, "chat"), json={"message": message},
                                      headers={**user.headers, "Accept": "text/event-stream"}, buffered=False)
    assert response.status_code == 200
    body = iter(response.response)
    seen = b""
    while b"event: delta" not in seen:
        seen += next(body)
    return response, body, seen


def test_the_question_is_stored_before_the_answer_streams(make_app, client, alice, library):
    app = make_app(**paced(tokens_per_second=200, tokens=40))
    response, body, seen = open_stream(app, alice, library["id"], CATS_QUESTION)
    conversation_id = parse_sse(seen.split(b"event: delta")[0])[0][1]["conversation_id"]
    assert [m["role"] for m in messages(client, alice, library["id"], conversation_id)] == ["user"]
    rest = b"".join(body)
    response.close()
    assert parse_sse(seen + rest)[-1][0] == "end"
    assert [m["role"] for m in messages(client, alice, library["id"], conversation_id)] == ["user", "assistant"]


def test_a_conversation_deleted_while_its_answer_streams(make_app, client, alice, library):
    app = make_app(**paced(tokens_per_second=200, tokens=40))
    response, body, seen = open_stream(app, alice, library["id"], CATS_QUESTION)
    conversation_id = parse_sse(seen.split(b"event: delta")[0])[0][1]["conversation_id"]
    deleted = client.delete(space_url(library["id"], "conversations", conversation_id), headers=alice.headers)
    assert deleted.status_code == 204
    events = parse_sse(seen + b"".join(body))
    response.close()
    assert events[-1][0] == "end"  # the stream ends normally; the answer has nowhere to go
    assert count_rows(client.app, Message) == 0
    with client.app.app_context():
        from spacio.usage.models import UsageRecord

        assert db.session.scalars(select(UsageRecord.kind).where(UsageRecord.kind == "chat")).all() == ["chat"]


def test_a_space_deleted_while_an_answer_streams(make_app, client, alice, library):
    app = make_app(**paced(tokens_per_second=200, tokens=40))
    response, body, seen = open_stream(app, alice, library["id"], CATS_QUESTION)
    assert client.delete(space_url(library["id"]), headers=alice.headers).status_code == 204
    events = parse_sse(seen + b"".join(body))
    response.close()
    assert events[-1][0] == "end"
    assert count_rows(client.app, Conversation) == 0 and count_rows(client.app, Message) == 0


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # row locks: SQLite locks the whole file
@pytest.mark.parametrize("operation", ["delete the space", "the asker leaves Spacio"])
def test_storing_an_answer_and_deleting_what_it_belongs_to_lock_rows_in_one_order(
        make_app, client, alice, bob, library, operation):
    """The answer is stored (the conversation's row, then usage under the user and the space)
    while the space or the asker's account is deleted (that row, then the conversations under
    it). Storing had taken the conversation first, so each side could hold what the other
    waited for. A third transaction holds the conversation's row until both are queued."""
    client.member(alice, library["id"], bob, "viewer")
    app = make_app(**paced(tokens_per_second=200, tokens=20))
    outcome, started, held = {}, threading.Event(), threading.Event()

    def answer():  # one thread: a streamed response keeps its context where it started
        response, body, seen = open_stream(app, bob, library["id"], CATS_QUESTION)
        outcome["conversation"] = uuid.UUID(parse_sse(seen.split(b"event: delta")[0])[0][1]["conversation_id"])
        started.set()
        held.wait(10)
        outcome["events"] = parse_sse(seen + b"".join(body))  # runs the generation, then stores the answer
        response.close()

    def request():
        call = client.delete(space_url(library["id"]), headers=alice.headers) if operation == "delete the space" \
            else client.delete("/api/v1/auth/me", headers=bob.headers)
        outcome["request"] = call.status_code

    answering_thread = threading.Thread(target=answer)
    answering_thread.start()
    assert started.wait(10)
    blocker = hold_row(app, "conversations", outcome["conversation"])
    try:
        held.set()
        wait_for(lambda: lock_waits(app) == 1, 10, interval=0.02, what="the answer's lock wait")
        request_thread = threading.Thread(target=request)
        request_thread.start()
        wait_for(lambda: lock_waits(app) == 2, 10, interval=0.02, what="the request's lock wait")
    finally:
        blocker.close()
    for thread in (answering_thread, request_thread):
        thread.join(30)

    assert outcome["events"][-1][0] == "end"
    assert outcome["request"] == 204
    assert count_rows(app, Conversation) == 0 and count_rows(app, Message) == 0
    with app.app_context():
        from spacio.usage.models import UsageRecord

        kept = db.session.execute(select(UsageRecord.user_id, UsageRecord.space_id)
                                  .where(UsageRecord.kind == "chat")).all()
    if operation == "delete the space":
        assert kept == []  # usage under a deleted space goes with it
    else:
        assert kept == [(None, uuid.UUID(library["id"]))]  # the space keeps its totals, anonymously


# --------------------------------------------------------------------------- JSON answers and conversations

def test_a_json_chat_starts_a_conversation_titled_after_its_message(client, alice, library):
    reply = chat(client, alice, library["id"], "  How many hours\n do cats   sleep each day?  ")
    assert set(reply) == {"conversation_id", "message_id", "answer", "citations", "grounded", "usage"}
    assert reply["grounded"] is True and reply["citations"]
    assert reply["citations"][0]["filename"] == "cats.txt"
    conversations = client.get(space_url(library["id"], "conversations"), headers=alice.headers).json
    assert [(c["id"], c["title"], c["message_count"]) for c in conversations] == \
        [(reply["conversation_id"], "How many hours do cats sleep each day?", 2)]
    stored = messages(client, alice, library["id"], reply["conversation_id"])[1]
    assert (stored["id"], stored["content"], stored["citations"]) == \
        (reply["message_id"], reply["answer"], reply["citations"])
    assert stored["usage"] == reply["usage"]


def test_a_long_first_message_makes_a_short_title():
    from spacio.chat.services import title_of

    title = title_of("word " * 60)
    assert len(title) <= 80 and title.endswith("…") and "  " not in title
    assert title_of("Short question?") == "Short question?"


def test_the_second_turn_sees_the_first(make_app, alice, library):
    app = make_app(**paced())
    generator = recording(app)
    client = ApiClient(app.test_client())
    first = chat(client, alice, library["id"], CATS_QUESTION)
    chat(client, alice, library["id"], HUNT_QUESTION, first["conversation_id"])
    assert generator.prompts[0].history == ()
    assert generator.prompts[1].history == (contracts.Turn("user", CATS_QUESTION),
                                            contracts.Turn("assistant", first["answer"]))
    assert generator.prompts[1].question == HUNT_QUESTION
    # a new conversation starts without history
    chat(client, alice, library["id"], HUNT_QUESTION)
    assert generator.prompts[2].history == ()


def test_the_prompt_carries_only_the_last_turns(make_app, alice, library):
    app = make_app(CHAT_HISTORY_TURNS=3, **paced())
    generator = recording(app)
    client = ApiClient(app.test_client())
    conversation_id = None
    for question in (CATS_QUESTION, HUNT_QUESTION, "What does a house cat hunt at dawn?", CATS_QUESTION):
        conversation_id = chat(client, alice, library["id"], question, conversation_id)["conversation_id"]
    history = generator.prompts[-1].history
    stored = messages(client, alice, library["id"], conversation_id)
    assert [(t.role, t.content) for t in history] == [(m["role"], m["content"]) for m in stored[3:6]]


def test_an_interrupted_answer_is_history_too(make_app, alice, library):
    failing = ApiClient(make_app(**paced(fail_after=2)).test_client())
    response = failing.post(space_url(library["id"], "chat"), json={"message": CATS_QUESTION}, headers=alice.headers)
    assert response.status_code == 503
    with failing.app.app_context():
        conversation_id = str(db.session.scalars(select(Conversation.id)).one())
    app = make_app(**paced())
    generator = recording(app)
    chat(ApiClient(app.test_client()), alice, library["id"], HUNT_QUESTION, conversation_id)
    assert generator.prompts[0].history == (contracts.Turn("user", CATS_QUESTION),
                                            contracts.Turn("assistant", "Answer from"))


def test_nothing_relevant_gives_the_not_grounded_answer_without_citations(make_app, alice, library):
    app = make_app(**paced())
    generator = recording(app)
    client = ApiClient(app.test_client())
    reply = chat(client, alice, library["id"], UNRELATED)
    assert (reply["grounded"], reply["citations"], reply["answer"]) == (False, [], answering.NOT_GROUNDED_ANSWER)
    assert reply["usage"]["embedding_tokens"] > 0
    events = sse_post(client, alice, library["id"], {"message": UNRELATED})
    assert [kind for kind, _ in events] == ["start", "citations", "delta", "end"]
    assert events[1][1] == [] and events[2][1] == {"text": answering.NOT_GROUNDED_ANSWER}
    assert events[3][1]["grounded"] is False
    assert generator.prompts == []  # no generator was asked
    stored = messages(client, alice, library["id"], reply["conversation_id"])[1]
    assert (stored["grounded"], stored["citations"], stored["status"]) == (False, [], "complete")


def test_an_empty_space_answers_not_grounded(client, alice, space):
    reply = chat(client, alice, space["id"], CATS_QUESTION)
    assert (reply["grounded"], reply["citations"]) == (False, [])


def test_citations_lead_to_real_chunks_and_pages(client, alice):
    space = client.space(alice, "Atlas", settings={"chunk_size": 64, "chunk_overlap": 8})
    pages = [
        "Glaciers carve deep valleys as the ice grinds granite bedrock over thousands of winters.\n" * 3,
        "Volcanic basalt cools into hexagonal columns along the northern coastline cliffs.\n" * 3,
        "Tidal estuaries mix salt water and river silt where herons wade at low tide.\n" * 3,
    ]
    document = client.document(alice, space["id"], pdf(*pages), "atlas.pdf")
    assert document["pages"] == 3
    reply = chat(client, alice, space["id"], "Volcanic basalt cools into hexagonal columns along the coastline cliffs")
    assert reply["grounded"] and reply["citations"]
    assert reply["citations"][0]["page"] == 2
    for citation in reply["citations"]:
        assert f"[{citation['n']}]" in reply["answer"]
        chunk = client.get(space_url(space["id"], "chunks", citation["chunk_id"]), headers=alice.headers)
        assert chunk.status_code == 200, chunk.json
        chunk = chunk.json
        assert (chunk["document_id"], chunk["page"]) == (citation["document_id"], citation["page"])
        assert citation["filename"] == "atlas.pdf"
        flat = " ".join(chunk["text"].split())
        assert flat.startswith(citation["snippet"].rstrip("…"))
        # the passage starts on the page the citation names
        assert " ".join(flat.split()[:3]) in " ".join(pages[citation["page"] - 1].split())


def test_the_answer_is_stored_after_the_question(client, alice, library):
    reply = chat(client, alice, library["id"], CATS_QUESTION)
    with client.app.app_context():
        rows = db.session.execute(select(Message.seq, Message.role, Message.created_at)
                                  .where(Message.conversation_id == uuid.UUID(reply["conversation_id"]))
                                  .order_by(Message.seq)).all()
    assert [(seq, role) for seq, role, _ in rows] == [(1, "user"), (2, "assistant")]
    assert rows[0][2] <= rows[1][2]
