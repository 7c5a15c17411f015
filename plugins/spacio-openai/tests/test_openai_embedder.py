"""OpenAIEmbedder through the real ``openai`` SDK against the local stand-in (wire format,
base64 and float vectors, batching within the API's limits, truncation, dimensions,
retries, error mapping, usage), the embedder contract, and the same contract against the
real API when ``OPENAI_API_KEY`` is set."""

import logging
import os
import socket

import numpy as np
import pytest
from marshmallow import ValidationError
from openai_external import EXTERNAL, external, openai_only
from openai_standin import API_KEY, EMBED_MAX_REQUEST_TOKENS, count_tokens, hashed_bag_of_words

from spacio.rag.contracts import Embedder, InvalidInput, PluginError, UpstreamUnavailable
from spacio.testing.contracts.embedder import LEXICAL_CASES, EmbedderContract
from spacio_openai import OpenAIEmbedder
from spacio_openai.embedder import REQUEST_TOKENS

# The local tokenizer overestimates English on purpose (about 1.3x a real BPE, see
# spacio_openai/tokenizer.py), and the stand-in bills a little under a real BPE.
TOKEN_TOLERANCE = 0.6


class TestOpenAIEmbedderContract(EmbedderContract):
    similarity_cases = LEXICAL_CASES  # the stand-in's vectors are a bag of words
    token_tolerance = TOKEN_TOLERANCE

    @pytest.fixture(scope="class")
    def embedder(self, openai_server):
        return OpenAIEmbedder(api_key=API_KEY, base_url=openai_server.base_url, backoff=0.001)


def embedder_for(standin_options, **options):
    return OpenAIEmbedder(**{**standin_options, **options})


def record_sleeps(embedder, monkeypatch) -> list[float]:
    """Retries sleep through the caller's ``_sleep``; record the delays instead of waiting."""
    sleeps: list[float] = []
    monkeypatch.setattr(embedder._caller, "_sleep", sleeps.append)
    return sleeps


def expected(texts, dimensions=1536):
    return np.asarray([hashed_bag_of_words(t, dimensions) for t in texts], dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- wire format

def test_request_body_and_base64_vectors(standin, standin_options):
    embedder = embedder_for(standin_options)
    result = embedder.embed_documents(["a document", "another one"])
    (call,) = standin.calls("/v1/embeddings")
    assert call.body == {"model": "text-embedding-3-small", "input": ["a document", "another one"],
                         "encoding_format": "base64"}
    assert call.headers["authorization"] == f"Bearer {API_KEY}"
    assert isinstance(call.response["data"][0]["embedding"], str)
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (2, 1536)
    assert np.allclose(result.vectors, expected(["a document", "another one"]), atol=1e-6)


@pytest.mark.parametrize("server, option", [("floats_only", "base64"), (None, "float")])
def test_float_vectors_give_the_same_result(standin, standin_options, server, option):
    """A server that ignores encoding_format, or the float option: lists of floats."""
    if server:
        setattr(standin, server, True)
    result = embedder_for(standin_options, encoding_format=option).embed_documents(["same words", "x"])
    (call,) = standin.calls("/v1/embeddings")
    assert call.body["encoding_format"] == option and isinstance(call.response["data"][0]["embedding"], list)
    assert np.allclose(result.vectors, expected(["same words", "x"]), atol=1e-6)


def test_a_server_that_refuses_base64_gets_floats_from_then_on(standin, standin_options, caplog):
    standin.reject_base64 = True
    embedder = embedder_for(standin_options)
    first = embedder.embed_documents(["some words"])
    embedder.embed_query("more words")
    assert [(c.body["encoding_format"], c.status) for c in standin.calls("/v1/embeddings")] == \
        [("base64", 422), ("float", 200), ("float", 200)]
    assert np.allclose(first.vectors, expected(["some words"]), atol=1e-6)
    assert "does not take encoding_format=base64" in caplog.text


def test_vectors_are_reordered_by_index_and_normalised(standin, standin_options):
    body = ('{"object": "list", "model": "m", "usage": {"prompt_tokens": 2, "total_tokens": 2}, "data": ['
            '{"object": "embedding", "index": 1, "embedding": [0, 2]},'
            '{"object": "embedding", "index": 0, "embedding": [3, 4]}]}')
    standin.fail(200, raw_body=body, content_type="application/json")
    embedder = embedder_for(standin_options, model="local-model", dimensions=2)
    result = embedder.embed_documents(["first", "second"])
    assert np.allclose(result.vectors, [[0.6, 0.8], [0.0, 1.0]]) and result.tokens == 2


def test_batches_of_2048_in_order(standin, standin_options):
    embedder = embedder_for(standin_options)
    assert embedder.max_batch_size == 2048
    texts = [f"passage {i} about subject{i}" for i in range(2050)]
    result = embedder.embed_documents(texts)
    calls = standin.calls("/v1/embeddings")
    assert [len(c.body["input"]) for c in calls] == [2048, 2]
    assert [t for c in calls for t in c.body["input"]] == texts
    assert np.allclose(result.vectors[2040:], expected(texts[2040:]), atol=1e-6)


def test_batches_stay_under_the_request_token_limit(standin, standin_options):
    """The API refuses more than 300,000 tokens in one request: long texts go in several."""
    embedder = embedder_for(standin_options)
    # about 3,800 counted tokens each: not cut, but 64 of them are over the budget of one request
    text = "Long passages about the weather in the mountains and the valleys below them. " * 180
    texts = [f"{i} {text}" for i in range(64)]
    assert max(embedder.tokenizer.count(texts)) <= embedder.max_tokens  # none is truncated
    result = embedder.embed_documents(texts)
    calls = standin.calls("/v1/embeddings")
    assert len(calls) > 1 and all(c.status == 200 for c in calls)
    for call in calls:
        assert sum(embedder.tokenizer.count(call.body["input"])) <= REQUEST_TOKENS
        assert sum(count_tokens(t) for t in call.body["input"]) <= EMBED_MAX_REQUEST_TOKENS
    assert [t for c in calls for t in c.body["input"]] == texts
    assert result.vectors.shape == (64, 1536)


def test_batch_size_option(standin, standin_options):
    embedder = embedder_for(standin_options, batch_size=10)
    assert embedder.max_batch_size == 10
    embedder.embed_documents([f"t{i}" for i in range(25)])
    assert [len(c.body["input"]) for c in standin.calls("/v1/embeddings")] == [10, 10, 5]


def test_long_texts_are_truncated_so_the_api_accepts_them(standin, standin_options):
    """The API refuses an input over 8192 tokens instead of cutting it."""
    embedder = embedder_for(standin_options)
    text = "word " * 50_000
    assert count_tokens(text) > 8192
    result = embedder.embed_query(text)
    (call,) = standin.calls("/v1/embeddings")
    sent = call.body["input"][0]
    assert call.status == 200 and text.startswith(sent) and len(sent) < len(text)
    assert embedder.tokenizer.count([sent])[0] <= embedder.max_tokens == 4096
    assert 0 < result.tokens <= 4096


def test_empty_texts_are_sent_as_a_space(standin, standin_options):
    """The API refuses an empty string (400 '$.input' is invalid)."""
    result = embedder_for(standin_options).embed_documents(["", "text", "   "])
    (call,) = standin.calls("/v1/embeddings")
    assert call.body["input"] == [" ", "text", "   "] and call.status == 200
    assert result.vectors.shape == (3, 1536)


def test_tokens_are_the_usage_summed(standin, standin_options):
    embedder = embedder_for(standin_options, batch_size=100)
    texts = [f"Tokens are counted per request, passage number {i}!" for i in range(150)]
    result = embedder.embed_documents(texts)
    used = [c.response["usage"]["prompt_tokens"] for c in standin.calls("/v1/embeddings")]
    assert len(used) == 2 and result.tokens == sum(used)
    assert result.tokens != sum(embedder.tokenizer.count(texts)), "tokens came from the local estimate"


def test_a_server_without_usage_falls_back_to_the_estimate(standin, standin_options):
    standin.embed_usage = False
    embedder = embedder_for(standin_options)
    texts = ["one two", "three"]
    assert embedder.embed_documents(texts).tokens == sum(embedder.tokenizer.count(texts))


def test_prefixes_for_models_that_want_them(standin, standin_options):
    """nomic-embed-text reads "search_document: " and "search_query: " task prefixes."""
    standin.embed_models["nomic-embed-text"] = (768, False)
    embedder = embedder_for(standin_options, model="nomic-embed-text", dimensions=768,
                            document_prefix="search_document: ", query_prefix="search_query: ")
    embedder.embed_documents(["a chunk"])
    embedder.embed_query("a question")
    assert [c.body["input"] for c in standin.calls("/v1/embeddings")] == \
        [["search_document: a chunk"], ["search_query: a question"]]
    assert all("dimensions" not in c.body for c in standin.calls("/v1/embeddings"))


# --------------------------------------------------------------------------- models and dimensions

@pytest.mark.parametrize("model, dimensions", [
    ("text-embedding-3-small", 1536), ("text-embedding-3-large", 3072), ("text-embedding-ada-002", 1536)])
def test_known_models_need_no_call_for_their_dimensions(standin, standin_options, model, dimensions):
    embedder = embedder_for(standin_options, model=model)
    assert (embedder.model, embedder.dimensions, embedder.max_tokens) == (model, dimensions, 4096)
    assert standin.requests == []
    assert embedder.embed_query("x y z").vectors.shape == (1, dimensions)
    assert "dimensions" not in standin.calls("/v1/embeddings")[0].body


def test_shortened_vectors(standin, standin_options):
    embedder = embedder_for(standin_options, model="text-embedding-3-large", dimensions=256)
    assert embedder.dimensions == 256
    assert embedder.embed_documents(["a", "b"]).vectors.shape == (2, 256)
    assert standin.calls("/v1/embeddings")[0].body["dimensions"] == 256


def test_an_unknown_model_needs_dimensions_with_a_clear_message():
    with pytest.raises(ValidationError) as error:
        OpenAIEmbedder(base_url="http://localhost:11434/v1", model="nomic-embed-text")
    message = str(error.value.messages["dimensions"])
    assert "nomic-embed-text" in message and "SPACIO_PLUGINS__EMBEDDER__OPENAI__DIMENSIONS" in message
    embedder = OpenAIEmbedder(base_url="http://localhost:11434/v1", model="nomic-embed-text", dimensions=768,
                              max_tokens=2048)
    assert (embedder.dimensions, embedder.max_tokens) == (768, 2048)
    assert OpenAIEmbedder(base_url="http://localhost:11434/v1", model="bge-m3", dimensions=1024).max_tokens == 512


def test_vectors_of_other_dimensions_are_pipeline_changed(standin, standin_options):
    """Another model behind the same name: the document fails, nothing is written."""
    standin.wrong_dimensions = 1024
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options).embed_documents(["a", "b"])
    assert error.value.reason == "pipeline_changed" and not error.value.retryable
    assert "1024 dimensions" in error.value.message and "configured for 1536" in error.value.message


def test_unknown_model_with_wrong_dimensions_option_is_pipeline_changed(standin, standin_options):
    standin.embed_models["nomic-embed-text"] = (768, False)
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options, model="nomic-embed-text", dimensions=512).embed_query("hi")
    assert error.value.reason == "pipeline_changed" and "768" in error.value.message


# --------------------------------------------------------------------------- construction and options

def test_constructor_does_no_io(standin, standin_options):
    embedder = embedder_for(standin_options)
    assert isinstance(embedder, Embedder)
    assert embedder._caller._client is None and standin.requests == []
    assert OpenAIEmbedder(api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1").dimensions == 1536


def test_a_server_without_a_key(standin, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    standin.api_key = None
    standin.embed_models["nomic-embed-text"] = (768, False)
    result = OpenAIEmbedder(base_url=standin.base_url, model="nomic-embed-text", dimensions=768).embed_query("hi")
    assert result.vectors.shape == (1, 768)


def test_api_key_and_base_url_from_the_environment(standin, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", f"  {API_KEY}\n")
    monkeypatch.setenv("OPENAI_BASE_URL", standin.base_url + "/")
    OpenAIEmbedder().embed_query("hello")
    assert standin.calls("/v1/embeddings")[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_missing_api_key_for_openai_is_a_clear_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValidationError) as error:
        OpenAIEmbedder()
    assert "OPENAI_API_KEY" in str(error.value.messages["api_key"])


@pytest.mark.parametrize("options, field", [
    ({"model": "text-embedding-3-small", "dimensions": 2048}, "dimensions"),
    ({"model": "text-embedding-ada-002", "dimensions": 512}, "dimensions"),
    ({"model": "something-new"}, "dimensions"),
    ({"dimensions": 0}, "dimensions"),
    ({"batch_size": 4096}, "batch_size"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"timeout": 0}, "timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"colour": "blue"}, "colour"),
    ({"api_key": "ключ"}, "api_key"),
])
def test_invalid_options(options, field):
    with pytest.raises(ValidationError) as error:
        OpenAIEmbedder(**{"api_key": "k", **options})
    assert field in error.value.messages


def test_options_as_strings_from_the_environment(standin):
    """The host passes SPACIO_PLUGINS__... values as strings; the schema converts them."""
    embedder = OpenAIEmbedder(api_key=API_KEY, base_url=standin.base_url, model="text-embedding-3-small",
                              dimensions="512", timeout="2.5", max_retries="2", backoff="0.001", batch_size="100")
    assert (embedder.dimensions, embedder.max_batch_size, embedder._caller.timeout) == (512, 100, 2.5)
    assert embedder.embed_query("q").vectors.shape == (1, 512)


def test_repr_does_not_show_the_key():
    assert "secret" not in repr(OpenAIEmbedder(api_key="secret-key"))


# --------------------------------------------------------------------------- retries and errors

def test_429_with_retry_after_is_retried(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, times=2, retry_after=2)
    assert embedder.embed_documents(["rate limited at first"]).vectors.shape == (1, 1536)
    assert [c.status for c in standin.calls("/v1/embeddings")] == [429, 429, 200]
    assert sleeps == [2.0, 2.0], "Retry-After was not honoured"


def test_5xx_backs_off_exponentially_then_succeeds(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options, backoff=1.0, max_retries=3)
    sleeps = record_sleeps(embedder, monkeypatch)
    for status in (500, 502, 503):
        standin.fail(status)
    assert embedder.embed_query("flaky").vectors.shape == (1, 1536)
    assert [c.status for c in standin.calls("/v1/embeddings")] == [500, 502, 503, 200]
    for delay, base in zip(sleeps, (1, 2, 4)):
        assert 0.75 * base <= delay <= 1.25 * base, sleeps


def test_persistent_503_gives_up_after_max_retries(standin, standin_options):
    embedder = embedder_for(standin_options, max_retries=2)
    standin.fail(503, times=10)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_documents(["never"])
    assert error.value.retryable and error.value.reason == "upstream_unavailable"
    assert "503" in error.value.message and "overloaded" in error.value.message
    assert len(standin.calls("/v1/embeddings")) == 3, "SDK retries are not disabled, or ours are off"


def test_long_retry_after_is_left_to_the_host(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, retry_after=3600)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("later")
    assert error.value.retry_after == 3600 and sleeps == []
    assert len(standin.calls("/v1/embeddings")) == 1


def test_timeout_is_retried_then_unavailable(standin, standin_options):
    embedder = embedder_for(standin_options, timeout=0.2, max_retries=1)
    standin.stall(1.0, times=1)
    assert embedder.embed_query("slow once").vectors.shape == (1, 1536)
    standin.stall(1.0, times=2)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("slow twice")
    assert error.value.reason == "upstream_timeout"


def test_connection_refused_is_unavailable(standin_options):
    embedder = embedder_for(standin_options, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("anyone there?")
    assert "ConnectError" in error.value.message


def test_bad_key_is_an_upstream_error_without_the_key(standin, standin_options, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "sk-wrong-embedding-key-4321"
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options, api_key=secret).embed_query("let me in")
    assert error.value.reason == "upstream_error" and not error.value.retryable
    assert "401" in error.value.message and "text-embedding-3-small" in error.value.message
    assert "4321" not in error.value.message and secret not in caplog.text and "4321" not in caplog.text
    assert len(standin.calls("/v1/embeddings")) == 1


def test_a_key_that_may_not_use_the_model_is_an_upstream_error(standin, standin_options):
    standin.fail(403, message="You are not allowed to sample from this model")
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options).embed_query("hello")
    assert error.value.reason == "upstream_error" and "not allowed to sample" in error.value.message
    assert "403" in error.value.message and len(standin.calls("/v1/embeddings")) == 1


def test_unknown_model_at_the_server_is_an_upstream_error(standin, standin_options):
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options, model="embed-retired-v1", dimensions=768).embed_query("hello")
    assert error.value.reason == "upstream_error" and "embed-retired-v1" in error.value.message


def test_a_refused_request_is_invalid_input(standin, standin_options):
    standin.fail(400, message="'$.input' is invalid. Please check the API reference.")
    with pytest.raises(InvalidInput) as error:
        embedder_for(standin_options).embed_documents(["bad"])
    assert error.value.reason == "upstream_rejected_input" and "'$.input' is invalid" in error.value.message
    assert len(standin.calls("/v1/embeddings")) == 1


@pytest.mark.parametrize("body", [
    '{"object": "list", "data": []}',
    '{"object": "list", "data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]}',
    '{"object": "list", "data": [{"index": 0, "embedding": "not base64!"}, {"index": 1, "embedding": [1]}]}',
    '{"object": "list", "data": [{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": "AAA="}]}',
    '{"object": "list", "data": [{"index": 0, "embedding": ["a"]}, {"index": 1, "embedding": [1]}]}',
    '{"object": "list", "data": [{"index": 0, "embedding": null}, {"index": 1, "embedding": [1]}]}',
    '{"object": "list", "data": [{"index": 0, "embedding": [NaN]}, {"index": 1, "embedding": [1]}]}',
    '{"object": "list", "data": [{"index": 7, "embedding": [1]}, {"index": 1, "embedding": [1]}]}',
])
def test_an_unreadable_success_is_a_bad_response(standin, standin_options, body):
    """A 200 that is not OpenAI's answer (a misconfigured proxy) never leaks a library error."""
    standin.fail(200, raw_body=body, content_type="application/json")
    with pytest.raises(UpstreamUnavailable) as error:
        embedder_for(standin_options, model="m", dimensions=1, max_retries=0).embed_documents(["a", "b"])
    assert error.value.reason == "upstream_bad_response"


@pytest.mark.parametrize("body, content_type", [("<html>proxy says hi</html>", "text/html"),
                                                ("null", "application/json"), ("{}", "application/json")])
def test_a_success_that_is_not_json_or_not_a_list(standin, standin_options, body, content_type):
    standin.fail(200, raw_body=body, content_type=content_type)
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options, max_retries=0).embed_documents(["a"])
    assert error.value.reason == "upstream_bad_response"


def test_second_batch_failure_fails_the_whole_call(standin, standin_options):
    """No partial result: 2048 vectors of 2050 texts would misalign chunks and vectors."""
    embedder = embedder_for(standin_options, max_retries=0, batch_size=10)
    standin.fail(500, after=1)
    with pytest.raises(UpstreamUnavailable):
        embedder.embed_documents([f"text {i}" for i in range(15)])
    assert [c.status for c in standin.calls("/v1/embeddings")] == [200, 500]


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_costs():
    from spacio_openai import OpenAIApproxTokenizer

    tokenizer = OpenAIApproxTokenizer()
    assert tokenizer.count(["information", "a b", "2024", "1234567", "中", "🙂", "é", "\n\n", "  x"]) == \
        [3, 2, 2, 3, 3, 4, 2, 1, 2]
    assert tokenizer.spans("HTTPServer ok") == [(0, 4), (4, 8), (8, 10), (11, 13)]
    assert tokenizer.spans("中!") == [(0, 1), (0, 1), (0, 1), (1, 2)]
    assert tokenizer.truncate("one two three four", 3) == "one two thre"
    assert tokenizer.count([tokenizer.truncate("中中中", 4)]) == [3]


# --------------------------------------------------------------------------- the real API

@pytest.mark.external
@external
class TestOpenAIEmbedderExternal(EmbedderContract):
    """The contract against api.openai.com (or OPENAI_BASE_URL) with text-embedding-3-small
    (OPENAI_EMBEDDING_MODEL and OPENAI_EMBEDDING_DIMENSIONS pick another)."""

    token_tolerance = TOKEN_TOLERANCE

    @pytest.fixture(scope="class")
    def embedder(self):
        options = {**EXTERNAL, "model": os.environ.get("OPENAI_EMBEDDING_MODEL") or "text-embedding-3-small"}
        if os.environ.get("OPENAI_EMBEDDING_DIMENSIONS"):
            options["dimensions"] = int(os.environ["OPENAI_EMBEDDING_DIMENSIONS"])
        return OpenAIEmbedder(**options)

    @openai_only
    def test_usage_tokens_and_shortened_vectors(self):
        embedder = OpenAIEmbedder(**EXTERNAL, model="text-embedding-3-small", dimensions=256)
        result = embedder.embed_documents(["OpenAI bills input tokens for embeddings."] * 3)
        assert result.vectors.shape == (3, 256) and result.tokens > 0

    @openai_only
    def test_bad_key_is_upstream_error(self):
        embedder = OpenAIEmbedder(**{**EXTERNAL, "api_key": "sk-not-a-real-key"}, max_retries=0)
        with pytest.raises(PluginError) as error:
            embedder.embed_query("hello")
        assert error.value.reason == "upstream_error"
