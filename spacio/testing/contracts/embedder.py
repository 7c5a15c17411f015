"""The contract test suite every ``spacio.embedders`` plugin should pass.

Subclass it in a test module and provide an ``embedder`` fixture::

    import pytest
    from spacio.testing.contracts.embedder import EmbedderContract

    class TestMyEmbedder(EmbedderContract):
        @pytest.fixture(scope="class")
        def embedder(self):
            return MyEmbedder(api_key="...", base_url=stand_in_url)

A class-scoped (or wider) fixture is best for local models, which load once on first use.
Everything here goes through the public protocol only (``spacio.rag.contracts``), so it
applies to any embedder: local models, HTTP APIs behind a stand-in server, test doubles.

Knobs a subclass may override:

- ``similarity_cases``: ``(query, related, unrelated)`` triples; the query must be closer to
  the related text than to the unrelated one. The default cases are paraphrases with few
  shared words, which needs a real semantic model; an embedder without semantics (feature
  hashing) sets ``similarity_cases = LEXICAL_CASES``.
- ``batch_cosine``: how close a text embedded alone must be to the same text inside a batch.
- ``token_tolerance`` and ``token_overhead``: how far ``Embeddings.tokens`` may be from the
  sum of ``tokenizer.count`` (relative slack, and extra tokens per text for special tokens).
"""

from __future__ import annotations

import math
import threading
from typing import ClassVar

import numpy as np

from spacio.rag.contracts import Embedder, Embeddings, Tokenizer

__all__ = ["EmbedderContract", "SEMANTIC_CASES", "LEXICAL_CASES", "VARIED_TEXTS", "UNICODE_TEXTS"]

#: Paraphrases sharing (almost) no content word with their query.
SEMANTIC_CASES: list[tuple[str, str, str]] = [
    ("How do I reset my password?",
     "Steps to recover access when you have forgotten your login credentials.",
     "The recipe needs two cups of flour and a pinch of salt."),
    ("A man is eating food.",
     "Someone is having a meal.",
     "The stock market fell sharply on Tuesday."),
    ("What causes rain?",
     "Precipitation forms when water vapour in clouds condenses into droplets heavy enough to fall.",
     "The quarterly report lists revenue by region."),
]

#: Related texts share words with their query; enough for bag-of-words embedders.
LEXICAL_CASES: list[tuple[str, str, str]] = [
    ("reset password email",
     "To reset your password, follow the link in the email we sent.",
     "The recipe needs two cups of flour and a pinch of salt."),
    ("solar panel efficiency",
     "Efficiency of a solar panel drops as the panel gets hotter.",
     "The stock market fell sharply on Tuesday."),
]

#: Different lengths, so a batch of them needs padding (for models that pad).
VARIED_TEXTS: list[str] = [
    "Hi.",
    "Vector search finds passages by meaning rather than by exact words.",
    "Cats sleep a lot.",
    " ".join(["Chunks of a long document are embedded in batches, and the order of the vectors "
              "must match the order of the texts whatever their lengths."] * 3),
    "Retrieval-augmented generation cites its sources.",
    "x",
]

UNICODE_TEXTS: list[str] = [
    "",
    "   \n\t ",
    "Ünïcödé façade: naïve café, Straße, İstanbul.",
    "東京は日本の首都です。",
    "Emoji 😀🚀 and symbols ∑ ≤ ∞ ©",
    "النص العربي يكتب من اليمين إلى اليسار",
    "e\u0301 combining accent, zero\u200bwidth space",
]

_SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank. "


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class EmbedderContract:
    """Behaviour the host relies on. Provide an ``embedder`` fixture in the subclass."""

    similarity_cases: ClassVar[list[tuple[str, str, str]]] = SEMANTIC_CASES
    batch_cosine: ClassVar[float] = 0.999
    token_tolerance: ClassVar[float] = 0.2
    token_overhead: ClassVar[int] = 8

    # ------------------------------------------------------------------ helpers

    def check_embeddings(self, embedder, result, n: int) -> np.ndarray:
        """``result`` is an Embeddings of ``n`` unit rows of ``embedder.dimensions`` float32."""
        assert isinstance(result, Embeddings), f"expected Embeddings, got {type(result).__name__}"
        vectors = result.vectors
        assert isinstance(vectors, np.ndarray), f"vectors must be a numpy array, got {type(vectors).__name__}"
        assert vectors.dtype == np.float32, f"vectors must be float32, got {vectors.dtype}"
        assert vectors.shape == (n, embedder.dimensions), \
            f"expected shape {(n, embedder.dimensions)}, got {vectors.shape}"
        assert np.isfinite(vectors).all(), "vectors hold NaN or infinity"
        if n:
            norms = np.linalg.norm(vectors, axis=1)
            assert np.allclose(norms, 1.0, atol=1e-3), f"rows are not L2-normalised: norms {norms}"
        assert isinstance(result.tokens, int) and result.tokens >= 0, f"tokens must be an int >= 0: {result.tokens!r}"
        return vectors

    def long_text(self, embedder, factor: float = 1.5) -> str:
        """A text of more than ``factor * max_tokens`` tokens."""
        (per_sentence,) = embedder.tokenizer.count([_SENTENCE])
        return _SENTENCE * (math.ceil(factor * embedder.max_tokens / max(per_sentence, 1)) + 1)

    # ------------------------------------------------------------------ attributes

    def test_protocol_attributes(self, embedder):
        assert isinstance(embedder, Embedder), "does not implement spacio.rag.contracts.Embedder"
        assert isinstance(embedder.model, str) and embedder.model.strip(), "model must be a non-empty str"
        for name in ("dimensions", "max_batch_size", "max_tokens"):
            value = getattr(embedder, name)
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 1, \
                f"{name} must be a positive int, got {value!r}"
        assert isinstance(embedder.tokenizer, Tokenizer), "tokenizer does not implement the Tokenizer protocol"

    def test_attributes_are_stable_across_calls(self, embedder):
        before = (embedder.model, embedder.dimensions, embedder.max_batch_size, embedder.max_tokens)
        embedder.embed_documents(["first use loads the model"])
        after = (embedder.model, embedder.dimensions, embedder.max_batch_size, embedder.max_tokens)
        assert before == after, "model, dimensions or limits changed after first use"

    # ------------------------------------------------------------------ vectors

    def test_shapes_dtype_and_unit_norm(self, embedder):
        self.check_embeddings(embedder, embedder.embed_documents(VARIED_TEXTS), len(VARIED_TEXTS))

    def test_empty_list(self, embedder):
        result = embedder.embed_documents([])
        self.check_embeddings(embedder, result, 0)
        assert result.tokens == 0

    def test_embed_query_returns_one_row(self, embedder):
        self.check_embeddings(embedder, embedder.embed_query("what is vector search?"), 1)

    def test_order_preserved_and_batch_invariant(self, embedder):
        batch = self.check_embeddings(embedder, embedder.embed_documents(VARIED_TEXTS), len(VARIED_TEXTS))
        for i, text in enumerate(VARIED_TEXTS):
            alone = self.check_embeddings(embedder, embedder.embed_documents([text]), 1)[0]
            cosine = _cosine(alone, batch[i])
            assert cosine > self.batch_cosine, \
                f"text {i} ({text[:30]!r}) alone vs in a batch: cosine {cosine:.5f}"
        reversed_batch = embedder.embed_documents(VARIED_TEXTS[::-1]).vectors[::-1]
        for i in range(len(VARIED_TEXTS)):
            assert _cosine(reversed_batch[i], batch[i]) > self.batch_cosine, f"row {i} depends on batch order"

    def test_deterministic(self, embedder):
        first = embedder.embed_documents(VARIED_TEXTS)
        second = embedder.embed_documents(VARIED_TEXTS)
        assert np.allclose(first.vectors, second.vectors, atol=1e-5), "same texts, different vectors"
        assert first.tokens == second.tokens

    def test_max_batch_size_in_one_call(self, embedder):
        n = min(embedder.max_batch_size, 256)
        texts = [f"passage number {i} about topic {i % 7}" for i in range(n)]
        self.check_embeddings(embedder, embedder.embed_documents(texts), n)

    def test_concurrent_calls_agree(self, embedder):
        """The host may embed from several threads (a gunicorn worker serving queries)."""
        expected = embedder.embed_documents(VARIED_TEXTS).vectors
        results: list = [None] * 4
        errors: list = []

        def work(i: int) -> None:
            try:
                results[i] = embedder.embed_documents(VARIED_TEXTS).vectors
            except BaseException as error:  # reported below: a thread's exception is otherwise lost
                errors.append(error)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, f"concurrent calls failed: {errors!r}"
        for vectors in results:
            assert vectors is not None and np.allclose(vectors, expected, atol=1e-5)

    # ------------------------------------------------------------------ semantics

    def test_related_text_is_closer_than_unrelated(self, embedder):
        for query, related, unrelated in self.similarity_cases:
            q = embedder.embed_query(query).vectors[0]
            docs = embedder.embed_documents([related, unrelated]).vectors
            near, far = float(docs[0] @ q), float(docs[1] @ q)
            assert near > far, f"{query!r}: related {near:.3f} <= unrelated {far:.3f}"

    def test_identical_texts_get_identical_vectors(self, embedder):
        vectors = embedder.embed_documents(["same words here", "other", "same words here"]).vectors
        assert _cosine(vectors[0], vectors[2]) > 0.9999

    # ------------------------------------------------------------------ inputs

    def test_text_longer_than_max_tokens(self, embedder):
        text = self.long_text(embedder)
        (count,) = embedder.tokenizer.count([text])
        assert count > embedder.max_tokens
        self.check_embeddings(embedder, embedder.embed_documents([text, "short"]), 2)
        alone = embedder.embed_documents([text])
        self.check_embeddings(embedder, alone, 1)
        assert 0 < alone.tokens <= embedder.max_tokens + self.token_overhead, \
            f"{alone.tokens} tokens for a text cut at max_tokens={embedder.max_tokens}: not truncated?"
        self.check_embeddings(embedder, embedder.embed_query(text), 1)

    def test_unicode_and_empty_strings(self, embedder):
        self.check_embeddings(embedder, embedder.embed_documents(UNICODE_TEXTS), len(UNICODE_TEXTS))
        for text in ("", "東京"):
            self.check_embeddings(embedder, embedder.embed_query(text), 1)

    # ------------------------------------------------------------------ tokens

    def test_tokens_match_tokenizer(self, embedder):
        # only texts the embedder reads whole, so truncation does not lower the count
        texts = [t for t, c in zip(VARIED_TEXTS, embedder.tokenizer.count(VARIED_TEXTS)) if c <= embedder.max_tokens]
        assert len(texts) >= 3, f"max_tokens={embedder.max_tokens} is too small for this check"
        total = sum(embedder.tokenizer.count(texts))
        result = embedder.embed_documents(texts)
        low = (1 - self.token_tolerance) * total
        high = (1 + self.token_tolerance) * total + self.token_overhead * len(texts)
        assert result.tokens > 0
        assert low <= result.tokens <= high, \
            f"Embeddings.tokens={result.tokens}, tokenizer counts {total} (allowed {low:.0f}..{high:.0f})"

    def test_tokenizer_count(self, embedder):
        tokenizer = embedder.tokenizer
        assert tokenizer.count([]) == []
        assert tokenizer.count([""]) == [0], "the empty string has tokens (special tokens must not be counted)"
        texts = VARIED_TEXTS + UNICODE_TEXTS
        counts = tokenizer.count(texts)
        assert isinstance(counts, list) and len(counts) == len(texts)
        assert counts == [tokenizer.count([t])[0] for t in texts], "count of a batch differs from one by one"
        assert all(isinstance(c, int) and c >= 0 for c in counts)
        (short, longer) = tokenizer.count(["one two", "one two three four five six"])
        assert 0 < short < longer

    def test_tokenizer_spans(self, embedder):
        tokenizer = embedder.tokenizer
        assert tokenizer.spans("") == []
        for text in VARIED_TEXTS + UNICODE_TEXTS + [self.long_text(embedder, 1.1)]:
            spans = tokenizer.spans(text)
            (count,) = tokenizer.count([text])
            assert len(spans) == count, f"{len(spans)} spans but count {count} for {text[:40]!r}"
            previous_start = previous_end = 0
            for start, end in spans:
                assert 0 <= start <= end <= len(text), f"span {(start, end)} outside a text of {len(text)} chars"
                assert start >= previous_start and end >= previous_end, f"span {(start, end)} out of order"
                previous_start, previous_end = start, end

    def test_tokenizer_spans_cover_the_words(self, embedder):
        """On plain ASCII text the spans, joined, are the text without its spaces."""
        for text in ["Hello, world! Vector search finds passages.", VARIED_TEXTS[3]]:
            covered = "".join(text[s:e] for s, e in embedder.tokenizer.spans(text))
            assert covered.replace(" ", "") == text.replace(" ", "")
