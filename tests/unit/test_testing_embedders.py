"""spacio.testing's HashEmbedder and RegexTokenizer: they pass the embedder contract, and
they are deterministic across processes (tests in different workers must agree)."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from marshmallow import ValidationError

from spacio.testing.contracts.embedder import LEXICAL_CASES, EmbedderContract
from spacio.testing.embedders import HashEmbedder
from spacio.testing.tokenizers import RegexTokenizer


class TestHashEmbedderContract(EmbedderContract):
    similarity_cases = LEXICAL_CASES
    token_overhead = 0  # no special tokens: Embeddings.tokens is exactly the tokenizer's count
    token_tolerance = 0.0

    @pytest.fixture
    def embedder(self):
        return HashEmbedder()


class TestHashEmbedderSmallLimits(EmbedderContract):
    """The contract also holds with few dimensions and a short max_tokens."""

    similarity_cases = LEXICAL_CASES

    @pytest.fixture
    def embedder(self):
        return HashEmbedder(dimensions=16, max_tokens=20, max_batch_size=4)


# --------------------------------------------------------------------------- RegexTokenizer

def test_regex_tokenizer_word_pieces_and_punctuation():
    tokenizer = RegexTokenizer()
    text = "Tokenization, works!  ok"
    spans = tokenizer.spans(text)
    assert [text[s:e] for s, e in spans] == ["Toke", "niza", "tion", ",", "work", "s", "!", "ok"]
    assert spans[0] == (0, 4) and spans[-1] == (22, 24)
    assert tokenizer.count([text, "", "   ", "a-b"]) == [8, 0, 0, 3]


def test_regex_tokenizer_unicode_spans_are_exact():
    tokenizer = RegexTokenizer()
    text = "naïve 東京タワー 😀!"
    pieces = [text[s:e] for s, e in tokenizer.spans(text)]
    assert pieces == ["naïv", "e", "東京タワ", "ー", "😀", "!"]


def test_regex_tokenizer_piece_length():
    assert RegexTokenizer(piece=2).count(["abcde"]) == [3]
    with pytest.raises(ValueError):
        RegexTokenizer(piece=0)


# --------------------------------------------------------------------------- HashEmbedder

def test_shared_words_score_higher_than_unrelated():
    embedder = HashEmbedder(dimensions=1024)
    query = embedder.embed_query("pgvector index build time").vectors[0]
    docs = embedder.embed_documents([
        "How long an index build takes in pgvector depends on the table size.",
        "Bake the bread for forty minutes.",
        "pgvector index build time",
    ]).vectors
    scores = docs @ query
    assert scores[2] == pytest.approx(1.0, abs=1e-6)
    # 3 of 4 query words shared: cosine about 3.25 / (2.2 * 3.8); collisions add noise
    assert scores[0] > 0.3 > 0.05 > abs(scores[1])


def test_case_is_ignored_and_word_order_matters_through_bigrams():
    embedder = HashEmbedder(dimensions=1024)
    a, b, c = embedder.embed_documents(["Dog bites man", "dog BITES man", "man bites dog"]).vectors
    assert float(a @ b) == pytest.approx(1.0, abs=1e-6)
    assert 0.5 < float(a @ c) < 0.99


def test_dimensions_option():
    result = HashEmbedder(dimensions=8).embed_documents(["a b c"])
    assert result.vectors.shape == (1, 8)


def test_truncation_ignores_words_after_max_tokens():
    embedder = HashEmbedder(max_tokens=3)
    kept, longer = embedder.embed_documents(["alpha beta gamma", "alpha beta gamma delta epsilon"]).vectors
    assert np.allclose(kept, longer)
    assert embedder.embed_documents(["alpha beta gamma delta epsilon"]).tokens == 3


def test_same_vectors_in_another_process():
    """str hashes are salted per process; the embedder must not depend on them."""
    code = ("from spacio.testing.embedders import HashEmbedder; "
            "print(HashEmbedder().embed_documents(['Reproducible vectors, everywhere']).vectors[0].tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    other = np.array(eval(out.stdout), dtype=np.float32)  # a list literal we printed ourselves
    here = HashEmbedder().embed_documents(["Reproducible vectors, everywhere"]).vectors[0]
    assert np.array_equal(other, here)


def test_delay_applies_to_document_batches_not_queries():
    embedder = HashEmbedder(delay_ms=150)
    start = time.perf_counter()
    embedder.embed_documents(["one", "two"])
    assert time.perf_counter() - start >= 0.15
    start = time.perf_counter()
    embedder.embed_query("fast")
    assert time.perf_counter() - start < 0.1


def test_crash_on_raises_for_a_batch_with_the_word_only():
    embedder = HashEmbedder(crash_on="kaboom")
    assert embedder.embed_documents(["harmless"]).vectors.shape == (1, 64)
    with pytest.raises(RuntimeError, match="on purpose"):
        embedder.embed_documents(["harmless", "this says kaboom"])
    assert embedder.embed_query("kaboom").vectors.shape == (1, 64)  # queries never crash


def test_options_schema_defaults_and_limits():
    schema = HashEmbedder.options_schema()
    assert schema.load({}) == {"dimensions": 64, "max_tokens": 512, "max_batch_size": 32, "delay_ms": 0,
                               "crash_on": None}
    assert HashEmbedder(**schema.load({"dimensions": "32", "delay_ms": "5"})).dimensions == 32
    with pytest.raises(ValidationError):
        schema.load({"dimensions": 1})
    with pytest.raises(ValidationError):
        schema.load({"delay_ms": -1})
    with pytest.raises(ValidationError):
        schema.load({"colour": "blue"})


def test_lone_surrogates_do_not_fail():
    embedder = HashEmbedder()
    result = embedder.embed_documents(["broken \ud800 text"])
    assert np.linalg.norm(result.vectors[0]) == pytest.approx(1.0, abs=1e-5)
