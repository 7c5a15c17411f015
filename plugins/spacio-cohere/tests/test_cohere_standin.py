"""The stand-in speaks what the real ``cohere`` SDK parses: chat (JSON and SSE streaming),
rerank and embed validation. The generator and reranker plugins are built on these."""

import httpx
import pytest
from cohere.errors import BadRequestError, NotFoundError, TooManyRequestsError, UnauthorizedError
from cohere_standin import API_KEY, count_tokens

import cohere

CHAT_MODEL = "command-a-03-2025"


@pytest.fixture
def client(standin):
    return cohere.ClientV2(api_key=API_KEY, base_url=standin.url, max_retries=0, timeout=5)


# --------------------------------------------------------------------------- chat

def test_chat_stream_events_through_the_sdk(standin, client):
    standin.chat_reply = "Spacio answers from your documents [1]."
    events = list(client.chat_stream(model=CHAT_MODEL, messages=[
        {"role": "system", "content": "Answer from the passages."},
        {"role": "user", "content": "What does Spacio do?"},
    ], temperature=0.3, max_tokens=100))

    types = [e.type for e in events]
    assert types[:2] == ["message-start", "content-start"]
    assert types[-2:] == ["content-end", "message-end"]
    assert set(types[2:-2]) == {"content-delta"} and len(types) > 5
    assert events[0].id and events[0].delta.message.role == "assistant"
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert text == "Spacio answers from your documents [1]."
    end = events[-1].delta
    assert end.finish_reason == "COMPLETE"
    prompt = count_tokens("Answer from the passages.") + count_tokens("What does Spacio do?")
    assert (end.usage.billed_units.input_tokens, end.usage.billed_units.output_tokens) == (prompt, 6)
    assert end.usage.tokens.input_tokens > prompt  # the real API counts its template too

    (call,) = standin.calls("/v2/chat")
    assert call.body["stream"] is True and call.body["temperature"] == 0.3 and call.body["max_tokens"] == 100


def test_chat_stream_wire_format(standin):
    """Raw HTTP: the content type and the frames, as an SSE client other than the SDK sees them."""
    with httpx.stream("POST", standin.url + "/v2/chat", headers={"Authorization": f"Bearer {API_KEY}"},
                      json={"model": CHAT_MODEL, "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    frames = [f for f in body.split("\n\n") if f]
    assert frames[0].startswith("event: message-start\ndata: {")
    assert all(f.split("\n")[1].startswith("data: ") for f in frames)


def test_chat_max_tokens_ends_with_max_tokens(standin, client):
    standin.chat_reply = "one two three four five"
    events = list(client.chat_stream(model=CHAT_MODEL, messages=[{"role": "user", "content": "count"}],
                                     max_tokens=2))
    assert "".join(e.delta.message.content.text for e in events if e.type == "content-delta") == "one two "
    assert events[-1].delta.finish_reason == "MAX_TOKENS"


def test_chat_without_streaming(standin, client):
    response = client.chat(model=CHAT_MODEL, messages=[{"role": "user", "content": "hello there"}])
    assert response.finish_reason == "COMPLETE"
    assert response.message.content[0].text == "You said: hello there"
    assert response.usage.billed_units.output_tokens == 4  # "You ", "said: ", "hello ", "there"


def test_chat_stream_cut_off_raises_in_the_sdk(standin, client):
    standin.cut_stream_after = 3
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        for event in client.chat_stream(model=CHAT_MODEL, messages=[{"role": "user", "content": "a b c d"}]):
            received.append(event.type)
    assert received == ["message-start", "content-start", "content-delta"]


def test_chat_errors(standin, client):
    with pytest.raises(BadRequestError):
        list(client.chat_stream(model=CHAT_MODEL, messages=[]))
    with pytest.raises(NotFoundError):
        list(client.chat_stream(model="gpt-4", messages=[{"role": "user", "content": "hi"}]))
    standin.fail(429, retry_after=7, path="/v2/chat")
    with pytest.raises(TooManyRequestsError) as error:
        list(client.chat_stream(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]))
    assert error.value.headers["retry-after"] == "7"


# --------------------------------------------------------------------------- rerank

def test_rerank_through_the_sdk(standin, client):
    documents = ["The cat sat on the mat.", "Vector search ranks passages.", "Search the vector index fast."]
    response = client.rerank(model="rerank-v3.5", query="vector search", documents=documents, top_n=2)
    assert [r.index for r in response.results] == [1, 2]
    assert response.results[0].relevance_score == 1.0
    assert response.meta.billed_units.search_units == 1
    everything = client.rerank(model="rerank-v3.5", query="vector search", documents=documents)
    assert [r.index for r in everything.results] == [1, 2, 0]
    assert everything.results[-1].relevance_score == 0.0


def test_rerank_errors(client):
    with pytest.raises(BadRequestError):
        client.rerank(model="rerank-v3.5", query="q", documents=[])
    with pytest.raises(NotFoundError):
        client.rerank(model="embed-english-v3.0", query="q", documents=["d"])


# --------------------------------------------------------------------------- embed validation

def test_embed_validation_like_the_api(standin, client):
    with pytest.raises(BadRequestError) as error:
        client.embed(model="embed-english-v3.0", texts=["t"] * 97, input_type="search_document",
                     embedding_types=["float"])
    assert "96" in error.value.body["message"]
    with pytest.raises(BadRequestError) as error:
        client.embed(model="embed-english-v3.0", texts=["t"], input_type=None, embedding_types=["float"])
    assert "input_type" in error.value.body["message"]
    with pytest.raises(BadRequestError):
        client.embed(model="embed-english-v3.0", texts=["t"], input_type="search_query", output_dimension=256)
    with pytest.raises(NotFoundError):
        client.embed(model="embed-english-v2.0", texts=["t"], input_type="search_query")
    response = client.embed(model="embed-english-v3.0", texts=["t"], input_type="search_query",
                            embedding_types=["float"])
    assert response.meta.api_version.version == "2"
    assert response.texts == ["t"] and len(response.embeddings.float_[0]) == 1024


def test_auth_is_required(standin):
    wrong = cohere.ClientV2(api_key="nope", base_url=standin.url, max_retries=0)
    with pytest.raises(UnauthorizedError):
        wrong.embed(model="embed-english-v3.0", texts=["t"], input_type="search_query")
    response = httpx.post(standin.url + "/v2/embed", json={})
    assert response.status_code == 401 and response.json()["message"] == "no api key supplied"
