"""A fast, deterministic Embedder for tests and CI: no model, no network, microseconds a text.

``HashEmbedder`` hashes the lower-cased words of a text and its word bigrams into
``dimensions`` signed buckets (the "hashing trick") and L2-normalises the result. Texts
that share words get a high cosine similarity and unrelated texts one near zero, which is
enough for retrieval tests to find the right chunk by its words. It knows nothing about
meaning: a paraphrase with other words is as far away as an unrelated text.

Registered by spacio as the entry point ``hashing`` in ``spacio.embedders``.
"""

from __future__ import annotations

import re
import time
import zlib
from typing import Sequence

import numpy as np
from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Embeddings
from spacio.testing.tokenizers import RegexTokenizer

__all__ = ["HashEmbedder", "HashEmbedderOptions"]

_WORD = re.compile(r"\w+")
_BIGRAM_WEIGHT = 0.5
# the bucket of a text without any word, so that it still gets a unit vector
_EMPTY_FEATURE = "\x00empty"


class HashEmbedderOptions(Schema):
    """``SPACIO_PLUGINS__EMBEDDER__HASHING__<OPTION>``."""

    dimensions = fields.Integer(load_default=64, validate=validate.Range(2, 4096))
    max_tokens = fields.Integer(load_default=512, validate=validate.Range(1, 1_000_000))
    max_batch_size = fields.Integer(load_default=32, validate=validate.Range(1, 10_000))
    delay_ms = fields.Integer(load_default=0, validate=validate.Range(0, 600_000))
    crash_on = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))


def _bucket(feature: str) -> int:
    """A hash that is the same in every process (``hash()`` of a str is salted per process)."""
    return zlib.crc32(feature.encode("utf-8", "surrogatepass"))


class HashEmbedder:
    """Feature hashing of words and word bigrams, float32, L2-normalised.

    Tokens are those of ``RegexTokenizer``; a text longer than ``max_tokens`` of them is
    cut after its ``max_tokens``-th token. ``delay_ms`` makes every ``embed_documents``
    call (one host batch of at most ``max_batch_size`` texts) sleep that long, so a test
    can keep a worker busy in the middle of a document and kill it there; ``embed_query``
    is not delayed, so searches stay fast. ``crash_on`` makes ``embed_documents`` raise
    ``RuntimeError`` for a batch with a text that contains it, as a plugin's bug would."""

    options_schema = HashEmbedderOptions
    model = "hashing-v1"
    # its cosines live on their own scale: a question sharing a few content words with a text
    # scores 0.4-0.6, an unrelated one -0.2..0.2
    grounded_min_similarity = 0.3

    def __init__(self, *, dimensions: int = 64, max_tokens: int = 512, max_batch_size: int = 32,
                 delay_ms: int = 0, crash_on: str | None = None) -> None:
        if dimensions < 2 or max_tokens < 1 or max_batch_size < 1 or delay_ms < 0:
            raise ValueError("dimensions >= 2, max_tokens >= 1, max_batch_size >= 1 and delay_ms >= 0 are required")
        self.dimensions = dimensions
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.delay_ms = delay_ms
        self.crash_on = crash_on
        self.tokenizer = RegexTokenizer()

    def __repr__(self) -> str:
        return f"HashEmbedder(dimensions={self.dimensions}, delay_ms={self.delay_ms})"

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        if self.delay_ms:
            time.sleep(self.delay_ms / 1000)
        if self.crash_on and any(self.crash_on in text for text in texts):
            raise RuntimeError(f"the hashing embedder crashed on purpose on {self.crash_on!r}")
        return self._embed(texts)

    def embed_query(self, text: str) -> Embeddings:
        return self._embed([text])

    def _embed(self, texts: Sequence[str]) -> Embeddings:
        vectors = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        tokens = 0
        for row, text in enumerate(texts):
            text, n = self._truncate(text)
            tokens += n
            vectors[row] = self._vector(text)
        return Embeddings(vectors=vectors, tokens=tokens)

    def _truncate(self, text: str) -> tuple[str, int]:
        (n,) = self.tokenizer.count([text])
        if n <= self.max_tokens:
            return text, n
        end = self.tokenizer.spans(text)[self.max_tokens - 1][1]
        return text[:end], self.max_tokens

    def _vector(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        weights = [1.0] * len(words) + [_BIGRAM_WEIGHT] * (len(features) - len(words))
        if not features:
            features, weights = [_EMPTY_FEATURE], [1.0]
        hashes = np.fromiter((_bucket(f) for f in features), dtype=np.uint64, count=len(features))
        signs = np.where(hashes >> np.uint64(31) & np.uint64(1), 1.0, -1.0)
        buckets = (hashes % np.uint64(self.dimensions)).astype(np.intp)
        vector = np.bincount(buckets, weights=signs * np.asarray(weights), minlength=self.dimensions)
        norm = np.linalg.norm(vector)
        if norm == 0:  # every feature cancelled out by sign collisions
            vector = np.zeros(self.dimensions)
            vector[_bucket(_EMPTY_FEATURE) % self.dimensions] = 1.0
            norm = 1.0
        return (vector / norm).astype(np.float32)
