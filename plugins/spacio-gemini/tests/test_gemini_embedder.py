"""GeminiEmbedder through the real ``google-genai`` SDK against the local stand-in (wire
format, batching, task types, output sizes, normalisation, token estimates, retries, error
mapping), the embedder contract, the local tokenizer, and the same contract against the
real API when ``GEMINI_API_KEY`` is set."""

import os
import re
import socket
from pathlib import Path

import numpy as np
import pytest
from gemini_standin import API_KEY, hashed_bag_of_words
from marshmallow import ValidationError

from spacio.rag.contracts import Embedder, InvalidInput, PluginError, UpstreamUnavailable
from spacio.testing.contracts.embedder import LEXICAL_CASES, EmbedderContract
from spacio_gemini import GeminiApproxTokenizer, GeminiEmbedder

EVAL_DOCS = Path(__file__).resolve().parents[3] / ".." / "shared" / "eval" / "docs"


class TestGeminiEmbedderContract(EmbedderContract):
    similarity_cases = LEXICAL_CASES  # the stand-in's vectors are a bag of words

    @pytest.fixture(scope="class")
    def embedder(self, gemini_server):
        return GeminiEmbedder(api_key=API_KEY, base_url=gemini_server.url, backoff=0.001)


def embedder_for(standin_options, **options):
    return GeminiEmbedder(**{**standin_options, **options})


def record_sleeps(embedder, monkeypatch) -> list[float]:
    """Retries sleep through the caller's ``_sleep``; record the delays instead of waiting."""
    sleeps: list[float] = []
    monkeypatch.setattr(embedder._caller, "_sleep", sleeps.append)
    return sleeps


def sent_texts(call) -> list[str]:
    return [part["text"] for request in call.body["requests"] for part in request["content"]["parts"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- wire format

def test_batches_of_100_in_order(standin, standin_options):
    embedder = embedder_for(standin_options)
    texts = [f"passage {i} about subject{i}" for i in range(250)]
    result = embedder.embed_documents(texts)
    calls = standin.calls("embed")
    assert [len(c.body["requests"]) for c in calls] == [100, 100, 50]
    assert [t for c in calls for t in sent_texts(c)] == texts
    assert result.vectors.shape == (250, 768) and result.vectors.dtype == np.float32
    expected = np.asarray([hashed_bag_of_words(t, 768, "RETRIEVAL_DOCUMENT") for t in texts], dtype=np.float32)
    assert np.allclose(result.vectors, expected, atol=1e-6), "rows are not in the order of the texts"


def test_request_body_for_documents_and_queries(standin, standin_options):
    embedder = embedder_for(standin_options)
    embedder.embed_documents(["a document", "another one"])
    embedder.embed_query("a question?")
    documents, query = standin.calls("embed")
    assert documents.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert documents.headers["x-goog-api-key"] == API_KEY
    # one content per text, each naming the model, as the API requires
    assert documents.body == {"requests": [
        {"content": {"parts": [{"text": "a document"}]}, "taskType": "RETRIEVAL_DOCUMENT",
         "outputDimensionality": 768, "model": "models/gemini-embedding-001"},
        {"content": {"parts": [{"text": "another one"}]}, "taskType": "RETRIEVAL_DOCUMENT",
         "outputDimensionality": 768, "model": "models/gemini-embedding-001"}]}
    assert [r["taskType"] for r in query.body["requests"]] == ["RETRIEVAL_QUERY"]


def test_documents_and_queries_embed_differently_but_close(standin, standin_options):
    embedder = embedder_for(standin_options)
    text = "how vectors find passages"
    document, query = embedder.embed_documents([text]).vectors[0], embedder.embed_query(text).vectors[0]
    assert 0.9 < float(document @ query) < 0.9999


def test_cut_vectors_are_normalised_here(standin, standin_options):
    """Gemini normalises only full-size vectors: a 768-dimension prefix is shorter."""
    vectors = embedder_for(standin_options).embed_documents(["some words", "other words here"]).vectors
    returned = np.asarray([e["values"] for e in standin.calls("embed")[0].response["embeddings"]])
    assert np.allclose(np.linalg.norm(returned, axis=1), 0.5, atol=1e-3)  # sqrt(768 / 3072)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert np.allclose(vectors, returned / np.linalg.norm(returned, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("model, dimensions, expected, sent", [
    ("gemini-embedding-001", None, 768, 768),
    ("gemini-embedding-001", 1536, 1536, 1536),
    ("gemini-embedding-001", 3072, 3072, None),  # the model's own size: not asked for
    ("gemini-embedding-001", 128, 128, 128),
    ("text-embedding-004", None, 768, None),
    ("text-embedding-004", 256, 256, 256),
])
def test_models_and_output_sizes(standin, standin_options, model, dimensions, expected, sent):
    embedder = embedder_for(standin_options, model=model, dimensions=dimensions)
    assert (embedder.dimensions, embedder.max_batch_size, embedder.max_tokens) == (expected, 100, 2048)
    vectors = embedder.embed_documents(["x y z"]).vectors
    assert vectors.shape == (1, expected)
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)
    assert standin.calls("embed")[0].body["requests"][0].get("outputDimensionality") == sent


def test_unknown_model_needs_dimensions(standin, standin_options):
    standin.embed_models["gemini-embedding-2-preview"] = (3072, 128)
    embedder = embedder_for(standin_options, model="gemini-embedding-2-preview", dimensions=1536)
    assert embedder.embed_documents(["one", "two", "three"]).vectors.shape == (3, 1536), \
        "one vector per text (the SDK folds a list of strings into one content for this model)"


def test_empty_texts_are_sent_as_a_space(standin, standin_options):
    """The API refuses an empty part (400 'contains an empty Part')."""
    result = embedder_for(standin_options).embed_documents(["", "   \n\t ", "words"])
    assert sent_texts(standin.calls("embed")[0]) == [" ", " ", "words"]
    assert result.vectors.shape == (3, 768)
    assert np.allclose(result.vectors[0], result.vectors[1])


def test_a_text_longer_than_the_model_reads_is_cut_here(standin, standin_options):
    embedder = embedder_for(standin_options)
    text = "The quick brown fox jumps over the lazy dog near the river bank. " * 400
    (count,) = embedder.tokenizer.count([text])
    assert count > 2 * embedder.max_tokens
    result = embedder.embed_documents([text])
    (sent,) = sent_texts(standin.calls("embed")[0])
    assert text.startswith(sent) and len(sent) < len(text)
    assert embedder.tokenizer.count([sent]) == [embedder.max_tokens] == [result.tokens]


def test_tokens_are_the_local_estimate(standin, standin_options):
    """The Gemini Developer API reports no usage for embeddings."""
    embedder = embedder_for(standin_options)
    texts = [f"Tokens are estimated here, passage number {i}!" for i in range(150)]
    result = embedder.embed_documents(texts)
    assert "usageMetadata" not in standin.calls("embed")[0].response
    assert result.tokens == sum(embedder.tokenizer.count(texts))


def test_tokens_reported_by_the_service_win(standin, standin_options):
    embedder = embedder_for(standin_options, model="embed-custom", dimensions=2)
    standin.fail(200, raw_body='{"embeddings": [{"values": [0.3, 0.4]}], "usageMetadata": {"promptTokenCount": 9}}')
    result = embedder.embed_query("a b")
    assert result.tokens == 9
    assert np.allclose(result.vectors, [[0.6, 0.8]])


def test_base_url_is_honoured_with_or_without_trailing_slash(standin, standin_options, monkeypatch):
    # GOOGLE_GEMINI_BASE_URL is what the SDK would use without base_url; ours must win over it
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9")
    for base_url in (standin.url, standin.url + "/"):
        embedder_for(standin_options, base_url=base_url).embed_query("where am I?")
    assert [c.path for c in standin.requests] == ["/v1beta/models/gemini-embedding-001:batchEmbedContents"] * 2


def test_without_base_url_the_sdk_variable_applies(standin, monkeypatch):
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", standin.url)
    GeminiEmbedder(api_key=API_KEY).embed_query("via the SDK's variable")
    assert len(standin.calls("embed")) == 1


# --------------------------------------------------------------------------- dimension changes

@pytest.mark.parametrize("body", [
    '{"embeddings": [{"values": [0.5, 0.5]}]}',  # another model's (or size's) vectors
    '{"embeddings": [{"values": [%s]}]}' % ", ".join(["0.1"] * 3072),  # the model's full size
])
def test_vectors_of_another_size_are_pipeline_changed(standin, standin_options, body):
    """The space recorded 768 dimensions: other vectors must fail the document, not be stored."""
    embedder = embedder_for(standin_options)
    standin.fail(200, raw_body=body)
    with pytest.raises(PluginError) as error:
        embedder.embed_query("hi")
    assert error.value.reason == "pipeline_changed" and not error.value.retryable
    assert "768" in error.value.message


# --------------------------------------------------------------------------- construction

def test_constructor_does_no_io(standin, standin_options):
    embedder = embedder_for(standin_options)
    assert isinstance(embedder, Embedder)
    assert embedder._caller._client is None
    assert standin.requests == []
    closed = GeminiEmbedder(api_key="k", base_url=f"http://127.0.0.1:{free_port()}")
    assert closed.dimensions == 768


def test_api_key_falls_back_to_environment(standin, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    GeminiEmbedder(base_url=standin.url).embed_query("hello")
    assert standin.calls("embed")[0].headers["x-goog-api-key"] == API_KEY


def test_missing_api_key_is_a_clear_config_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValidationError) as error:
        GeminiEmbedder()
    assert "GEMINI_API_KEY" in str(error.value.messages["api_key"])


@pytest.mark.parametrize("options, field", [
    ({"model": "gemini-embedding-001", "dimensions": 64}, "dimensions"),
    ({"model": "gemini-embedding-001", "dimensions": 4096}, "dimensions"),
    ({"model": "text-embedding-004", "dimensions": 1024}, "dimensions"),
    ({"model": "gemini-embedding-new"}, "dimensions"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"timeout": 0}, "timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"colour": "blue"}, "colour"),
    ({"api_key": "ключ"}, "api_key"),
    ({"api_key": "two words"}, "api_key"),
])
def test_invalid_options(options, field):
    with pytest.raises(ValidationError) as error:
        GeminiEmbedder(**{"api_key": "k", **options})
    assert field in error.value.messages


def test_options_as_strings_from_the_environment(standin):
    """The host passes SPACIO_PLUGINS__... values as strings; the schema converts them."""
    embedder = GeminiEmbedder(api_key=API_KEY, base_url=standin.url, dimensions="1536", timeout="2.5",
                              max_retries="2", backoff="0.001")
    assert (embedder.dimensions, embedder._caller.timeout, embedder._caller.max_retries) == (1536, 2.5, 2)
    assert embedder.embed_query("q").vectors.shape == (1, 1536)


def test_api_key_is_stripped(standin):
    GeminiEmbedder(api_key=f"  {API_KEY}\n", base_url=standin.url).embed_query("x")
    assert standin.calls("embed")[0].headers["x-goog-api-key"] == API_KEY


def test_repr_does_not_show_the_key():
    assert "secret" not in repr(GeminiEmbedder(api_key="secret-key"))


def test_close_then_use_again(standin, standin_options):
    embedder = embedder_for(standin_options)
    embedder.embed_query("first")
    embedder.close()
    embedder.close()
    embedder.embed_query("second")
    assert len(standin.calls("embed")) == 2


# --------------------------------------------------------------------------- retries and errors

def test_429_waits_the_retry_delay(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, times=2, retry_delay="1.5s")
    result = embedder.embed_documents(["rate limited at first"])
    assert result.vectors.shape == (1, 768)
    assert [c.status for c in standin.calls("embed")] == [429, 429, 200]
    assert sleeps == [1.5, 1.5], "google.rpc.RetryInfo.retryDelay was not honoured"


def test_5xx_backs_off_exponentially_then_succeeds(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options, backoff=1.0, max_retries=3)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(500)
    standin.fail(503)
    standin.fail(504)
    assert embedder.embed_query("flaky").vectors.shape == (1, 768)
    assert [c.status for c in standin.calls("embed")] == [500, 503, 504, 200]
    for delay, base in zip(sleeps, (1, 2, 4)):
        assert 0.75 * base <= delay <= 1.25 * base, sleeps


def test_persistent_503_gives_up_after_max_retries(standin, standin_options):
    embedder = embedder_for(standin_options, max_retries=2)
    standin.fail(503, times=10)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_documents(["never"])
    assert error.value.retryable and error.value.reason == "upstream_unavailable"
    assert "503 UNAVAILABLE" in error.value.message and "overloaded" in error.value.message
    assert len(standin.calls("embed")) == 3, "SDK retries are not off, or ours are"


def test_a_long_retry_delay_is_left_to_the_host(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, retry_delay="3600s")
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("later")
    assert error.value.retry_after == 3600 and sleeps == []
    assert len(standin.calls("embed")) == 1


def test_timeout_is_retried_then_unavailable(standin, standin_options):
    embedder = embedder_for(standin_options, timeout=0.2, max_retries=1)
    standin.stall(1.0, times=1)
    assert embedder.embed_query("slow once").vectors.shape == (1, 768)
    standin.stall(1.0, times=2)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("slow twice")
    assert error.value.reason == "upstream_timeout"


def test_connection_refused_is_unavailable(standin_options):
    embedder = embedder_for(standin_options, base_url=f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("anyone there?")
    assert "ConnectError" in error.value.message


def test_wrong_key_is_an_upstream_error_and_not_retried(standin, standin_options):
    embedder = embedder_for(standin_options, api_key="AIzaWrong-key")
    with pytest.raises(PluginError) as error:
        embedder.embed_query("let me in")
    assert type(error.value) is PluginError and error.value.reason == "upstream_error"
    assert "API key" in error.value.message and "gemini embedder" in error.value.message
    assert "AIzaWrong-key" not in error.value.message
    assert len(standin.calls("embed")) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_unauthenticated_and_permission_denied_are_upstream_errors(standin, standin_options, status):
    standin.fail(status, message="Permission denied: Consumer has been suspended.")
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options).embed_query("suspended")
    assert type(error.value) is PluginError and error.value.reason == "upstream_error"
    assert str(status) in error.value.message and "GEMINI_API_KEY" in error.value.message
    assert len(standin.calls("embed")) == 1


@pytest.mark.parametrize("status", [408, 409, 499, 502])
def test_other_transient_statuses_are_retried(standin, standin_options, monkeypatch, status):
    embedder = embedder_for(standin_options)
    record_sleeps(embedder, monkeypatch)
    standin.fail(status)
    assert embedder.embed_query("once more").vectors.shape == (1, 768)
    assert [c.status for c in standin.calls("embed")] == [status, 200]


def test_unknown_model_at_the_api_is_an_upstream_error(standin, standin_options):
    embedder = embedder_for(standin_options, model="embedding-retired-1", dimensions=768)
    with pytest.raises(PluginError) as error:
        embedder.embed_query("hello")
    assert error.value.reason == "upstream_error" and "embedding-retired-1" in error.value.message
    assert len(standin.calls("embed")) == 1


def test_a_rejected_request_is_invalid_input(standin, standin_options):
    standin.fail(400, message="* BatchEmbedContentsRequest.requests[0].content: text is too large")
    with pytest.raises(InvalidInput) as error:
        embedder_for(standin_options).embed_documents(["bad"])
    assert error.value.reason == "upstream_rejected_input" and "too large" in error.value.message
    assert len(standin.calls("embed")) == 1


@pytest.mark.parametrize("body", [
    "<html>proxy says hi</html>", "null", "[]", "{}", '{"embeddings": {}}',
    '{"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}',  # two vectors for one text
    '{"embeddings": [{"values": ["a"]}]}', '{"embeddings": [{}]}', '{"embeddings": [{"values": []}]}',
    '{"embeddings": [{"values": [NaN, 1]}]}',
])
def test_an_unreadable_success_is_a_bad_response(standin, standin_options, body):
    """A 200 that is not Gemini's answer (a misconfigured proxy) never leaks a library error."""
    embedder = embedder_for(standin_options, max_retries=0)
    standin.fail(200, raw_body=body)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("through a bad proxy")
    assert error.value.reason == "upstream_bad_response"


def test_second_batch_failure_fails_the_whole_call(standin, standin_options):
    """No partial result: 100 vectors of 150 texts would misalign chunks and vectors."""
    embedder = embedder_for(standin_options, max_retries=0)
    standin.fail(500, after=1)
    with pytest.raises(UpstreamUnavailable):
        embedder.embed_documents([f"text {i}" for i in range(150)])
    assert [c.status for c in standin.calls("embed")] == [200, 500]


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_costs():
    tokenizer = GeminiApproxTokenizer()
    assert tokenizer.count(["information", "a b", "2024", "中", "🙂", "é", "\n\n", "  x", "", "x" * 9]) == \
        [3, 2, 4, 1, 4, 1, 1, 2, 0, 3]
    assert tokenizer.spans("HTTPServer ok") == [(0, 4), (4, 8), (8, 10), (11, 13)]
    assert tokenizer.spans("中🙂!") == [(0, 1), (1, 2), (1, 2), (1, 2), (1, 2), (2, 3)]


def test_truncate_cuts_after_a_whole_token():
    tokenizer = GeminiApproxTokenizer()
    assert tokenizer.truncate("Hello wonderful world", 3) == "Hello wond"  # Hell|o|wond|erfu|l
    assert tokenizer.truncate("short", 10) == "short"
    assert tokenizer.truncate("anything", 0) == ""
    text = "one 22 three! " * 1000
    assert tokenizer.count([tokenizer.truncate(text, 2048)]) == [2048]


def test_tokenizer_never_counts_fewer_than_words_and_marks():
    """A tokenizer needs at least a token per word and per punctuation mark: a cheap lower
    bound the estimate must stay above, on real documents of several languages."""
    tokenizer = GeminiApproxTokenizer()
    files = sorted((EVAL_DOCS / "txt").glob("*.txt")) + sorted((EVAL_DOCS / "md").glob("*.md"))
    assert files, f"evaluation documents not found under {EVAL_DOCS}"
    for path in files:
        if "utf-16" in path.name or "utf-32" in path.name:
            continue
        text = path.read_bytes().decode("utf-8", "replace")[:200_000]
        floor = len(re.findall(r"\w+|[^\w\s]", text))
        (count,) = tokenizer.count([text])
        assert count >= floor, path.name


# --------------------------------------------------------------------------- the real API

@pytest.mark.external
@pytest.mark.skipif(not os.environ.get("GEMINI_API_KEY"), reason="GEMINI_API_KEY is not set")
class TestGeminiEmbedderExternal(EmbedderContract):
    """The contract against the Gemini Developer API with the default model (semantic cases).
    ``tokens`` is the local estimate there too, so the token checks hold as they are."""

    @pytest.fixture(scope="class")
    def embedder(self):
        return GeminiEmbedder(api_key=os.environ["GEMINI_API_KEY"],
                              base_url=os.environ.get("GEMINI_BASE_URL") or None)

    def test_task_types_give_related_but_different_vectors(self, embedder):
        text = "Gemini embeds documents and queries with different task types."
        document, query = embedder.embed_documents([text]).vectors[0], embedder.embed_query(text).vectors[0]
        assert 0.5 < float(document @ query) < 0.9999

    @pytest.mark.parametrize("dimensions", [1536, 3072])
    def test_output_sizes(self, dimensions):
        embedder = GeminiEmbedder(api_key=os.environ["GEMINI_API_KEY"], dimensions=dimensions,
                                  base_url=os.environ.get("GEMINI_BASE_URL") or None)
        vectors = embedder.embed_query("hello").vectors
        assert vectors.shape == (1, dimensions) and np.isclose(np.linalg.norm(vectors), 1.0, atol=1e-5)

    def test_the_tokenizer_errs_high(self, embedder):
        """The local estimate against the API's own count (countTokens of a Gemini model,
        whose tokenizer the embedding model shares)."""
        from google import genai
        from google.genai import types

        client = genai.Client(api_key=os.environ["GEMINI_API_KEY"], http_options=types.HttpOptions(
            base_url=os.environ.get("GEMINI_BASE_URL") or None, api_version="v1beta"))
        files = sorted((EVAL_DOCS / "txt").glob("*.txt"))[:6] + sorted((EVAL_DOCS / "md").glob("*.md"))[:4]
        for path in files:
            text = path.read_bytes().decode("utf-8", "replace")[:20_000]
            if not text.strip() or "utf-16" in path.name or "utf-32" in path.name:
                continue
            real = client.models.count_tokens(model="gemini-2.5-flash", contents=text).total_tokens
            (estimate,) = embedder.tokenizer.count([text])
            assert estimate >= real, f"{path.name}: estimate {estimate} < Gemini's {real}"

    def test_bad_key_is_an_upstream_error(self):
        embedder = GeminiEmbedder(api_key="not-a-real-key", max_retries=0,
                                  base_url=os.environ.get("GEMINI_BASE_URL") or None)
        with pytest.raises(PluginError) as error:
            embedder.embed_query("hello")
        assert error.value.reason == "upstream_error" and "not-a-real-key" not in error.value.message
