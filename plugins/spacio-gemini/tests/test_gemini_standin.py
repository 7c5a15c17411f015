"""The stand-in itself, over plain HTTP: the wire shapes the plugin tests rely on (SSE
framing, chunk and error bodies, request validation) and the faults it injects."""

import json
import time

import httpx
import pytest
from gemini_standin import API_KEY

STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
EMBED = "/v1beta/models/gemini-embedding-001:batchEmbedContents"
CHAT = {"contents": [{"role": "user", "parts": [{"text": "hello there"}]}]}


def post(standin, path, body, key=API_KEY, **kwargs):
    headers = {"x-goog-api-key": key} if key else {}
    return httpx.post(standin.url + path, json=body, headers=headers, timeout=5, **kwargs)


def events(response) -> list[dict]:
    frames = response.text.split("\r\n\r\n")
    assert frames[-1] == "", "the stream must end with a complete frame"
    assert all(frame.startswith("data: ") for frame in frames[:-1])
    return [json.loads(frame[len("data: "):]) for frame in frames[:-1]]


def test_a_stream_is_sse_chunks_with_running_usage_and_a_finish_chunk(standin):
    response = post(standin, STREAM, CHAT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    chunks = events(response)
    assert [c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks] == ["You ", "said: ", "hello ",
                                                                                   "there", ""]
    assert all(c["candidates"][0]["content"]["role"] == "model" and c["modelVersion"] == "gemini-2.5-flash"
               for c in chunks)
    assert [c["usageMetadata"].get("candidatesTokenCount") for c in chunks] == [1, 2, 3, 4, 4]
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None] * 4 + ["STOP"]
    assert len({c["responseId"] for c in chunks}) == 1


def test_the_key_may_come_as_a_query_parameter(standin):
    assert post(standin, STREAM + f"&key={API_KEY}", CHAT, key=None).status_code == 200


@pytest.mark.parametrize("key, status, state", [(None, 403, "PERMISSION_DENIED"), ("wrong", 400, "INVALID_ARGUMENT")])
def test_key_errors_have_googles_body(standin, key, status, state):
    response = post(standin, STREAM, CHAT, key=key)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == status and error["status"] == state
    if key:
        assert error["message"] == "API key not valid. Please pass a valid API key."
        assert error["details"][0]["reason"] == "API_KEY_INVALID"


def test_a_429_carries_retry_info(standin):
    standin.fail(429, retry_delay="7s")
    error = post(standin, STREAM, CHAT).json()["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED"
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in error["details"]


@pytest.mark.parametrize("path, body, message", [
    ("/v1beta/models/gemini-0:streamGenerateContent?alt=sse", CHAT, "models/gemini-0 is not found"),
    ("/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse", CHAT, "v1beta only"),
    (STREAM, {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
    (STREAM, {"contents": [{"role": "user", "parts": [{"text": ""}]}]}, "empty text"),
    (STREAM, {**CHAT, "generationConfig": {"temperature": 3}}, "temperature"),
    (EMBED, {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]}}] * 101},
     "at most 100"),
    (EMBED, {"requests": [{"model": "models/text-embedding-004", "content": {"parts": [{"text": "x"}]}}]},
     "Model mismatch"),
    (EMBED, {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": ""}]}}]},
     "empty Part"),
    (EMBED, {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]},
                           "outputDimensionality": 64}]}, "between 128 and 3072"),
])
def test_requests_are_validated_like_the_api(standin, path, body, message):
    response = post(standin, path, body)
    assert response.status_code in (400, 404) and message in response.json()["error"]["message"]


def test_embeddings_are_cut_without_normalising(standin):
    body = {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "some words"}]},
                          "taskType": "RETRIEVAL_DOCUMENT", "outputDimensionality": 768}]}
    (embedding,) = post(standin, EMBED, body).json()["embeddings"]
    assert len(embedding["values"]) == 768
    assert abs(sum(v * v for v in embedding["values"]) ** 0.5 - 0.5) < 1e-3


def test_faults_inside_a_stream(standin):
    standin.stop_mid_line_after = 1
    text = post(standin, STREAM, CHAT).text
    assert text.endswith('data: {"candidates": [{"content": {"parts": [{"te') and text.count("\r\n\r\n") == 1

    standin.stop_mid_line_after = None
    standin.cut_after = 2
    with pytest.raises(httpx.RemoteProtocolError):
        post(standin, STREAM, CHAT)

    standin.cut_after = None
    standin.finish_after = (1, "SAFETY")
    chunks = events(post(standin, STREAM, CHAT))
    assert chunks[-1]["candidates"][0]["finishReason"] == "SAFETY" and "content" not in chunks[-1]["candidates"][0]

    standin.finish_after = None
    standin.block_prompt = "PROHIBITED_CONTENT"
    (chunk,) = events(post(standin, STREAM, CHAT))
    assert "candidates" not in chunk and chunk["promptFeedback"]["blockReason"] == "PROHIBITED_CONTENT"

    standin.block_prompt = None
    standin.error_after = (1, 503)
    chunks = events(post(standin, STREAM, CHAT))
    assert chunks[-1] == {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                    "status": "UNAVAILABLE"}}


def test_a_stream_sends_its_headers_before_a_pause(standin):
    """``stream_pause=(0, s)`` is a stall after the headers, before the first chunk."""
    standin.stream_pause = (0, 1.0)
    started = time.monotonic()
    with httpx.stream("POST", standin.url + STREAM, json=CHAT, headers={"x-goog-api-key": API_KEY},
                      timeout=5) as response:
        headers_after = time.monotonic() - started
        assert response.status_code == 200
        response.read()
    assert headers_after < 0.5 < time.monotonic() - started


def test_generate_content_and_embed_content_without_streaming(standin):
    answer = post(standin, "/v1beta/models/gemini-2.5-flash:generateContent", CHAT).json()
    assert answer["candidates"][0]["content"] == {"parts": [{"text": "You said: hello there"}], "role": "model"}
    assert answer["candidates"][0]["finishReason"] == "STOP" and answer["usageMetadata"]["candidatesTokenCount"] == 4
    one = post(standin, "/v1beta/models/text-embedding-004:embedContent",
               {"content": {"parts": [{"text": "one text"}]}, "taskType": "RETRIEVAL_QUERY"}).json()
    assert len(one["embedding"]["values"]) == 768
