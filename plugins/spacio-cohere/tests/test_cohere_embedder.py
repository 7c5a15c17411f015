"""CohereEmbedder through the real ``cohere`` SDK against the local stand-in (wire format,
batching, input types, retries, error mapping, billing), the embedder contract, and the
same contract against the real API when ``COHERE_API_KEY`` is set."""

import os
import socket
from pathlib import Path

import numpy as np
import pytest
from cohere_standin import API_KEY, EMBED_MODELS, hashed_bag_of_words
from marshmallow import ValidationError

from spacio.rag.contracts import Embedder, InvalidInput, PluginError, UpstreamUnavailable
from spacio.testing.contracts.embedder import LEXICAL_CASES, EmbedderContract
from spacio_cohere import CohereApproxTokenizer, CohereEmbedder

EVAL_DOCS = Path(__file__).resolve().parents[3] / ".." / "shared" / "eval" / "docs"

# The local tokenizer overestimates on purpose (about 1.6x a real BPE on English prose, see
# spacio_cohere/tokenizer.py), so billed tokens sit well below its counts.
TOKEN_TOLERANCE = 0.5


class TestCohereEmbedderContract(EmbedderContract):
    similarity_cases = LEXICAL_CASES  # the stand-in's vectors are a bag of words
    token_tolerance = TOKEN_TOLERANCE

    @pytest.fixture(scope="class")
    def embedder(self, cohere_server):
        return CohereEmbedder(api_key=API_KEY, base_url=cohere_server.url, backoff=0.001)


def embedder_for(standin_options, **options):
    return CohereEmbedder(**{**standin_options, **options})


def record_sleeps(embedder, monkeypatch) -> list[float]:
    """Retries sleep through the caller's ``_sleep``; record the delays instead of waiting."""
    sleeps: list[float] = []
    monkeypatch.setattr(embedder._caller, "_sleep", sleeps.append)
    return sleeps


# --------------------------------------------------------------------------- wire format

def test_batches_of_96_in_order(standin, standin_options):
    embedder = embedder_for(standin_options)
    texts = [f"passage {i} about subject{i}" for i in range(200)]
    result = embedder.embed_documents(texts)

    calls = standin.calls("/v2/embed")
    assert [len(c.body["texts"]) for c in calls] == [96, 96, 8]
    assert [t for c in calls for t in c.body["texts"]] == texts
    assert result.vectors.shape == (200, 1024) and result.vectors.dtype == np.float32
    expected = np.asarray([hashed_bag_of_words(t, 1024) for t in texts], dtype=np.float32)
    assert np.allclose(result.vectors, expected, atol=1e-6), "rows are not in the order of the texts"


def test_request_body_for_documents_and_queries(standin, standin_options):
    embedder = embedder_for(standin_options)
    embedder.embed_documents(["a document"])
    embedder.embed_query("a question")

    document, query = standin.calls("/v2/embed")
    assert document.body == {"model": "embed-english-v3.0", "texts": ["a document"],
                             "input_type": "search_document", "embedding_types": ["float"], "truncate": "END"}
    assert query.body == {**document.body, "texts": ["a question"], "input_type": "search_query"}
    assert document.headers["authorization"] == f"Bearer {API_KEY}"
    assert document.headers["content-type"] == "application/json"
    assert document.headers["user-agent"].startswith("cohere/")
    assert document.headers["x-client-name"] == "spacio"


def test_tokens_are_the_billed_units_summed(standin, standin_options):
    embedder = embedder_for(standin_options)
    texts = [f"Tokens are billed per request, passage number {i}!" for i in range(150)]
    result = embedder.embed_documents(texts)

    billed = [c.response["meta"]["billed_units"]["input_tokens"] for c in standin.calls("/v2/embed")]
    assert len(billed) == 2
    assert result.tokens == sum(billed)
    assert result.tokens != sum(embedder.tokenizer.count(texts)), "tokens came from the local estimate"
    assert embedder.embed_query("one two three").tokens == 3


def test_base_url_is_honoured_with_or_without_trailing_slash(standin, standin_options, monkeypatch):
    # CO_API_URL is what the SDK would use without base_url; ours must win over it
    monkeypatch.setenv("CO_API_URL", "http://127.0.0.1:9")
    for base_url in (standin.url, standin.url + "/"):
        embedder_for(standin_options, base_url=base_url).embed_query("where am I?")
    assert [c.path for c in standin.requests] == ["/v2/embed", "/v2/embed"]


def test_embed_v4_output_dimension(standin, standin_options):
    default = embedder_for(standin_options, model="embed-v4.0")
    assert default.dimensions == 1536
    assert default.embed_query("q").vectors.shape == (1, 1536)
    small = embedder_for(standin_options, model="embed-v4.0", dimensions=256)
    assert small.dimensions == 256
    assert small.embed_documents(["a", "b"]).vectors.shape == (2, 256)
    first, second = standin.calls("/v2/embed")
    assert "output_dimension" not in first.body
    assert second.body["output_dimension"] == 256


@pytest.mark.parametrize("model, dimensions", [
    ("embed-english-v3.0", 1024), ("embed-multilingual-v3.0", 1024),
    ("embed-english-light-v3.0", 384), ("embed-multilingual-light-v3.0", 384), ("embed-v4.0", 1536),
])
def test_known_models_and_their_dimensions(standin, standin_options, model, dimensions):
    embedder = embedder_for(standin_options, model=model)
    assert (embedder.dimensions, embedder.max_batch_size) == (dimensions, 96)
    assert embedder.max_tokens == (128_000 if model == "embed-v4.0" else 512)
    vectors = embedder.embed_documents(["x y z"]).vectors
    assert vectors.shape == (1, dimensions)
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-5)


def test_vectors_are_normalised_even_if_the_api_returns_raw_ones(standin, standin_options, monkeypatch):
    import cohere_standin

    monkeypatch.setattr(cohere_standin, "hashed_bag_of_words",
                        lambda text, dims: [3.0] + [4.0] + [0.0] * (dims - 2))
    vectors = embedder_for(standin_options).embed_documents(["anything"]).vectors
    assert np.allclose(vectors[0, :2], [0.6, 0.8], atol=1e-6)


def test_unknown_model_needs_dimensions_and_they_are_checked(standin, standin_options):
    standin.embed_models["embed-custom"] = (768, None)
    assert embedder_for(standin_options, model="embed-custom", dimensions=768) \
        .embed_query("hi").vectors.shape == (1, 768)
    with pytest.raises(PluginError) as error:
        embedder_for(standin_options, model="embed-custom", dimensions=512).embed_query("hi")
    assert error.value.reason == "dimension_mismatch"


# --------------------------------------------------------------------------- construction

def test_constructor_does_no_io(standin, standin_options):
    embedder = embedder_for(standin_options)
    assert isinstance(embedder, Embedder)
    assert embedder._caller._client is None
    assert standin.requests == []
    closed = CohereEmbedder(api_key="k", base_url=f"http://127.0.0.1:{free_port()}")
    assert closed.dimensions == 1024


def test_api_key_falls_back_to_environment(standin, monkeypatch):
    monkeypatch.setenv("COHERE_API_KEY", API_KEY)
    CohereEmbedder(base_url=standin.url).embed_query("hello")
    assert standin.calls("/v2/embed")[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_missing_api_key_is_a_clear_config_error(monkeypatch):
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    with pytest.raises(ValidationError) as error:
        CohereEmbedder()
    assert "COHERE_API_KEY" in str(error.value.messages["api_key"])


@pytest.mark.parametrize("options, field", [
    ({"model": "embed-english-v3.0", "dimensions": 512}, "dimensions"),
    ({"model": "embed-v4.0", "dimensions": 768}, "dimensions"),
    ({"model": "embed-something-new"}, "dimensions"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"timeout": 0}, "timeout"),
    ({"max_retries": -1}, "max_retries"),
    ({"colour": "blue"}, "colour"),
    ({"api_key": "ключ"}, "api_key"),
    ({"api_key": "two words"}, "api_key"),
])
def test_invalid_options(options, field):
    with pytest.raises(ValidationError) as error:
        CohereEmbedder(**{"api_key": "k", **options})
    assert field in error.value.messages


def test_options_as_strings_from_the_environment(standin):
    """The host passes SPACIO_PLUGINS__... values as strings; the schema converts them."""
    embedder = CohereEmbedder(api_key=API_KEY, base_url=standin.url, model="embed-v4.0", dimensions="512",
                              timeout="2.5", max_retries="2", backoff="0.001")
    assert (embedder.dimensions, embedder._caller.timeout, embedder._caller.max_retries) == (512, 2.5, 2)
    assert embedder.embed_query("q").vectors.shape == (1, 512)


def test_api_key_is_stripped(standin):
    CohereEmbedder(api_key=f"  {API_KEY}\n", base_url=standin.url).embed_query("x")
    assert standin.calls("/v2/embed")[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_repr_does_not_show_the_key():
    assert "secret" not in repr(CohereEmbedder(api_key="secret-key"))


# --------------------------------------------------------------------------- retries and errors

def test_429_with_retry_after_is_retried(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, times=2, retry_after=2)
    result = embedder.embed_documents(["rate limited at first"])
    assert result.vectors.shape == (1, 1024)
    assert [c.status for c in standin.calls("/v2/embed")] == [429, 429, 200]
    assert sleeps == [2.0, 2.0], "Retry-After was not honoured"


def test_5xx_backs_off_exponentially_then_succeeds(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options, backoff=1.0, max_retries=3)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(500)
    standin.fail(502)
    standin.fail(503)
    assert embedder.embed_query("flaky").vectors.shape == (1, 1024)
    assert [c.status for c in standin.calls("/v2/embed")] == [500, 502, 503, 200]
    for delay, base in zip(sleeps, (1, 2, 4)):
        assert 0.75 * base <= delay <= 1.25 * base, sleeps


def test_persistent_503_gives_up_after_max_retries(standin, standin_options):
    embedder = embedder_for(standin_options, max_retries=2)
    standin.fail(503, times=10, message="overloaded")
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_documents(["never"])
    assert error.value.retryable and error.value.reason == "upstream_unavailable"
    assert "503" in error.value.message and "overloaded" in error.value.message
    assert len(standin.calls("/v2/embed")) == 3, "SDK retries are not disabled, or ours are off"


def test_long_retry_after_is_left_to_the_host(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(429, retry_after=3600)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("later")
    assert error.value.retry_after == 3600 and sleeps == []
    assert len(standin.calls("/v2/embed")) == 1


def test_retry_after_as_http_date(standin, standin_options, monkeypatch):
    embedder = embedder_for(standin_options)
    sleeps = record_sleeps(embedder, monkeypatch)
    standin.fail(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: retry now
    embedder.embed_query("dated")
    assert sleeps == [0.0]


def test_timeout_is_retried_then_unavailable(standin, standin_options):
    embedder = embedder_for(standin_options, timeout=0.2, max_retries=1)
    standin.stall(1.0, times=1)
    assert embedder.embed_query("slow once").vectors.shape == (1, 1024)
    standin.stall(1.0, times=2)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("slow twice")
    assert error.value.reason == "upstream_timeout"


def test_connection_refused_is_unavailable(standin_options):
    embedder = embedder_for(standin_options, base_url=f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(UpstreamUnavailable) as error:
        embedder.embed_query("anyone there?")
    assert "ConnectError" in error.value.message


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_not_retried(standin, standin_options, status):
    if status == 401:
        embedder = embedder_for(standin_options, api_key="wrong-key")
    else:
        embedder = embedder_for(standin_options)
        standin.fail(403, message="this key cannot use the model")
    with pytest.raises(PluginError) as error:
        embedder.embed_query("let me in")
    assert error.value.reason == "upstream_auth" and not error.value.retryable
    assert "API key" in error.value.message and str(status) in error.value.message
    assert len(standin.calls("/v2/embed")) == 1


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_requests_are_invalid_input(standin, standin_options, status):
    embedder = embedder_for(standin_options)
    standin.fail(status, message="invalid request: text is not valid")
    with pytest.raises(InvalidInput) as error:
        embedder.embed_documents(["bad"])
    assert error.value.reason == "upstream_rejected_input"
    assert "text is not valid" in error.value.message
    assert len(standin.calls("/v2/embed")) == 1


def test_unknown_model_at_the_api_is_a_config_error(standin, standin_options):
    embedder = embedder_for(standin_options, model="embed-retired-v1", dimensions=768)
    with pytest.raises(PluginError) as error:
        embedder.embed_query("hello")
    assert error.value.reason == "upstream_not_found" and "embed-retired-v1" in error.value.message


@pytest.mark.parametrize("body", [
    "<html>proxy says hi</html>", "null", "[]", "{}", '{"id": "x", "embeddings": {}}',
    '{"id": "x", "embeddings": {"float": [[1, 2], [3]]}}', '{"id": "x", "embeddings": {"float": [["a"]]}}',
    '{"id": "x", "embeddings": {"float": [[0.5, 0.5]]}}',
])
def test_unreadable_success_is_unavailable(standin, standin_options, body):
    """A 200 that is not Cohere's answer (a misconfigured proxy) never leaks a library error."""
    embedder = embedder_for(standin_options, max_retries=0)
    standin.fail(200, raw_body=body)
    with pytest.raises(PluginError) as error:
        embedder.embed_query("through a bad proxy")
    expected = "dimension_mismatch" if "0.5" in body else "upstream_bad_response"
    assert error.value.reason == expected


def test_missing_billed_units_fall_back_to_the_estimate(standin, standin_options):
    embedder = embedder_for(standin_options, model="embed-custom", dimensions=2)
    standin.embed_models["embed-custom"] = (2, None)
    standin.fail(200, raw_body='{"id": "x", "embeddings": {"float": [[0.5, 0.5]]}, "texts": ["a b"]}')
    result = embedder.embed_query("a b")
    assert result.tokens == embedder.tokenizer.count(["a b"])[0] == 2
    assert np.allclose(result.vectors, [[2 ** -0.5, 2 ** -0.5]])


def test_second_batch_failure_fails_the_whole_call(standin, standin_options):
    """No partial result: 96 vectors of 100 texts would misalign chunks and vectors."""
    embedder = embedder_for(standin_options, max_retries=0)
    standin.fail(500, after=1)
    with pytest.raises(UpstreamUnavailable):
        embedder.embed_documents([f"text {i}" for i in range(100)])
    assert [c.status for c in standin.calls("/v2/embed")] == [200, 500]


# --------------------------------------------------------------------------- tokenizer

def test_tokenizer_costs():
    tokenizer = CohereApproxTokenizer()
    assert tokenizer.count(["information", "a b", "2024", "中", "🙂", "é", "\n\n", "  x"]) == \
        [4, 2, 4, 3, 4, 2, 1, 2]
    assert tokenizer.spans("HTTPServer ok") == [(0, 3), (3, 4), (4, 7), (7, 10), (11, 13)]
    assert tokenizer.spans("中!") == [(0, 1), (0, 1), (0, 1), (1, 2)]


def test_tokenizer_never_counts_fewer_than_words_and_marks():
    """A BPE needs at least a token per word and per punctuation mark: a cheap lower bound
    the estimate must stay above, on real documents of several languages."""
    import re

    tokenizer = CohereApproxTokenizer()
    files = sorted((EVAL_DOCS / "txt").glob("*.txt")) + sorted((EVAL_DOCS / "md").glob("*.md"))
    assert files, f"evaluation documents not found under {EVAL_DOCS}"
    for path in files:
        if "utf-16" in path.name or "utf-32" in path.name:
            continue
        text = path.read_bytes().decode("utf-8", "replace")[:200_000]
        floor = len(re.findall(r"\w+|[^\w\s]", text))
        (count,) = tokenizer.count([text])
        assert count >= floor, path.name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the real API

@pytest.mark.external
@pytest.mark.skipif(not os.environ.get("COHERE_API_KEY"), reason="COHERE_API_KEY is not set")
class TestCohereEmbedderExternal(EmbedderContract):
    """The contract against api.cohere.com with the default model (semantic cases)."""

    token_tolerance = TOKEN_TOLERANCE

    @pytest.fixture(scope="class")
    def embedder(self):
        return CohereEmbedder(base_url=os.environ.get("COHERE_BASE_URL") or None)

    def test_billed_tokens_and_input_types(self, embedder):
        texts = ["Cohere bills input tokens for embeddings."] * 3
        documents = embedder.embed_documents(texts)
        query = embedder.embed_query(texts[0])
        assert documents.tokens > 0 and query.tokens > 0
        # same text, different input_type: related but not identical vectors
        cosine = float(documents.vectors[0] @ query.vectors[0])
        assert 0.3 < cosine < 0.9999

    def test_v4_output_dimension(self):
        embedder = CohereEmbedder(model="embed-v4.0", dimensions=256,
                                  base_url=os.environ.get("COHERE_BASE_URL") or None)
        assert embedder.embed_query("hello").vectors.shape == (1, 256)

    def test_bad_key_is_upstream_auth(self):
        embedder = CohereEmbedder(api_key="not-a-real-key", max_retries=0,
                                  base_url=os.environ.get("COHERE_BASE_URL") or None)
        with pytest.raises(PluginError) as error:
            embedder.embed_query("hello")
        assert error.value.reason == "upstream_auth"
