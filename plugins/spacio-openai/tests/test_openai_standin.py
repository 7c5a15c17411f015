"""The stand-in speaks OpenAI's wire format: the bare ``openai`` SDK (no plugin) parses what
it sends into its own types, the way it parses OpenAI's answers."""

import base64
import struct

import numpy as np
import openai
import pytest
from openai_standin import API_KEY, count_tokens, hashed_bag_of_words
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk


@pytest.fixture
def client(standin):
    with openai.OpenAI(api_key=API_KEY, base_url=standin.base_url, max_retries=0, timeout=5) as client:
        yield client


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


def test_streamed_chunks_have_openais_shapes(standin, client):
    standin.chat_reply = "Hello there."
    chunks = list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(isinstance(c, ChatCompletionChunk) and c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    role, *deltas, finish, usage = chunks
    assert role.choices[0].delta.role == "assistant" and role.choices[0].delta.content == ""
    assert [d.choices[0].delta.content for d in deltas] == ["Hello ", "there."]
    assert all(c.usage is None for c in (role, *deltas, finish))
    assert finish.choices[0].finish_reason == "stop" and finish.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage.completion_tokens == 2
    assert usage.usage.prompt_tokens == sum(count_tokens(m["content"]) + 4 for m in MESSAGES)
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 2
    assert standin.calls("/v1/chat/completions")[0].response[-1] == "[DONE]"


def test_without_include_usage_there_is_no_usage_field(standin, client):
    chunks = list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all("usage" not in c.model_fields_set for c in chunks)


def test_a_json_completion(standin, client):
    standin.chat_reply = "Hi."
    completion = client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    assert isinstance(completion, ChatCompletion) and completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hi." and completion.choices[0].message.role == "assistant"
    assert completion.usage.completion_tokens == 1


def test_embeddings_base64_by_default_as_the_sdk_asks(standin, client):
    """The SDK asks for base64 and decodes it itself when no encoding_format is given."""
    response = client.embeddings.create(model="text-embedding-3-small", input=["hello world", "bye"])
    assert isinstance(response, CreateEmbeddingResponse)
    assert standin.calls("/v1/embeddings")[0].body["encoding_format"] == "base64"
    assert isinstance(standin.calls("/v1/embeddings")[0].response["data"][0]["embedding"], str)
    assert [d.index for d in response.data] == [0, 1] and response.usage.prompt_tokens == 3
    assert np.allclose(response.data[0].embedding, hashed_bag_of_words("hello world", 1536), atol=1e-6)
    as_floats = client.embeddings.create(model="text-embedding-3-small", input="hello world", encoding_format="float")
    assert np.allclose(as_floats.data[0].embedding, response.data[0].embedding, atol=1e-6)
    raw = base64.b64decode(standin.calls("/v1/embeddings")[0].response["data"][0]["embedding"])
    assert len(raw) == 1536 * 4 and struct.unpack("<f", raw[:4])[0] == pytest.approx(response.data[0].embedding[0])


def test_embedding_limits_are_the_apis(standin, client):
    with pytest.raises(openai.BadRequestError, match=r"'\$.input' is invalid"):
        client.embeddings.create(model="text-embedding-3-small", input=["ok", ""])
    with pytest.raises(openai.BadRequestError, match="maximum context length is 8192"):
        client.embeddings.create(model="text-embedding-3-small", input="word " * 9000)
    with pytest.raises(openai.BadRequestError, match="array too long"):
        client.embeddings.create(model="text-embedding-3-small", input=["x"] * 2049)
    with pytest.raises(openai.BadRequestError, match="does not support specifying dimensions"):
        client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=256)
    assert len(client.embeddings.create(model="text-embedding-3-large", input="x", dimensions=256,
                                        encoding_format="float").data[0].embedding) == 256


def test_models(standin, client):
    ids = {model.id for model in client.models.list()}
    assert {"gpt-4.1-mini", "text-embedding-3-small", "llama3.1"} <= ids


def test_error_bodies_are_openais(standin, client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert missing.value.code == "model_not_found" and "gpt-9" in missing.value.message
    standin.fail(429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    assert limited.value.code == "rate_limit_exceeded" and limited.value.response.headers["retry-after"] == "7"
    bad = openai.OpenAI(api_key="sk-bad-key-abcd", base_url=standin.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.embeddings.create(model="text-embedding-3-small", input="x")
    assert refused.value.code == "invalid_api_key" and "sk-********abcd" in refused.value.message


def test_a_reasoning_model_refuses_max_tokens_and_temperature(standin, client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="o4-mini", messages=MESSAGES, max_tokens=5)
    assert error.value.param == "max_tokens" and error.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="o4-mini", messages=MESSAGES, temperature=0.2)
    assert error.value.param == "temperature"


def test_faults_reach_the_sdk(standin, client):
    standin.error_after = 1
    with pytest.raises(openai.APIError, match="The server had an error"):
        list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    standin.reset()
    standin.malformed_event = 1
    with pytest.raises(ValueError):
        list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    standin.reset()
    standin.cut_stream_after = 2
    with pytest.raises(openai.APIConnectionError):
        list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    standin.reset()
    standin.stop_mid_line_at = 2  # ends cleanly: the SDK just stops, with no finish chunk
    chunks = list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    assert len(chunks) == 2 and all(c.choices[0].finish_reason is None for c in chunks)
    standin.reset()
    standin.empty_choices = True
    chunks = list(client.chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    assert chunks and all(c.choices == [] for c in chunks)
    standin.reset()
    standin.api_key = None
    keyless = openai.OpenAI(api_key="anything", base_url=standin.base_url, max_retries=0)
    assert keyless.embeddings.create(model="text-embedding-3-small", input="x").data
