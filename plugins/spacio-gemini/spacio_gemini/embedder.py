"""``GeminiEmbedder``: Gemini's embedding models through ``google.genai``'s
``models.embed_content`` (``:batchEmbedContents`` on the Gemini Developer API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from google.genai import types
from marshmallow import ValidationError, fields, validates_schema

from spacio.rag.contracts import Embeddings, PluginError, UpstreamUnavailable

from ._calls import GeminiCaller, GeminiOptions
from .tokenizer import GeminiApproxTokenizer

#: texts per ``batchEmbedContents`` request: the API's maximum
BATCH_SIZE = 100


@dataclass(frozen=True)
class EmbedModel:
    dimensions: int  # what the model returns without output_dimensionality
    max_tokens: int  # input length the model reads
    min_dimensions: int  # the smallest output_dimensionality it takes
    default_dimensions: int  # what this plugin asks for unless told otherwise


MODELS: dict[str, EmbedModel] = {
    # Matryoshka-trained: any size from 128 to 3072; Google recommends 768, 1536 or 3072.
    # 768 by default: within pgvector's 2,000-dimension limit for an HNSW index, a quarter
    # of the storage, and (Google's MTEB figures) nearly the quality of 3072.
    "gemini-embedding-001": EmbedModel(3072, 2048, 128, 768),
    "text-embedding-004": EmbedModel(768, 2048, 1, 768),
}
DEFAULT_MODEL = "gemini-embedding-001"
DEFAULT_MAX_TOKENS = 2048  # for models not in MODELS


class GeminiEmbedderOptions(GeminiOptions):
    """``model`` is any Gemini embedding model id; one not in :data:`MODELS` needs
    ``dimensions`` (Spacio records it on every space before the first call). ``dimensions``
    is sent as ``output_dimensionality`` when it differs from the model's own size."""

    model = fields.String(load_default=DEFAULT_MODEL)
    dimensions = fields.Integer(load_default=None, allow_none=True)

    @validates_schema
    def _dimensions_fit_model(self, data: dict, **kwargs: Any) -> None:
        model, dimensions = data.get("model", DEFAULT_MODEL), data.get("dimensions")
        known = MODELS.get(model)
        if known is None:
            if dimensions is None or dimensions <= 0:
                raise ValidationError(f"{model!r} is not a model this plugin knows "
                                      f"({', '.join(sorted(MODELS))}): set dimensions too", "dimensions")
        elif dimensions is not None and not known.min_dimensions <= dimensions <= known.dimensions:
            raise ValidationError(f"{model} returns {known.min_dimensions} to {known.dimensions} dimensions, "
                                  f"not {dimensions}", "dimensions")


class GeminiEmbedder:
    """Embeds documents with ``task_type=RETRIEVAL_DOCUMENT`` and queries with
    ``RETRIEVAL_QUERY``, 100 texts per request, each text cut to ``max_tokens`` (by the
    local estimate, which errs high). Vectors are float32 and L2-normalised here: Gemini
    normalises only full-size vectors, not ones cut by ``output_dimensionality``.

    ``tokens``: the Gemini Developer API reports no usage for embeddings, so it is the
    local tokenizer's estimate of the texts sent (the service's count when a response
    carries one). No I/O before the first embed call."""

    options_schema = GeminiEmbedderOptions

    max_batch_size = BATCH_SIZE

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        known = MODELS.get(self.model)
        self.dimensions: int = opts["dimensions"] or known.default_dimensions
        self.max_tokens: int = known.max_tokens if known else DEFAULT_MAX_TOKENS
        # asked for only where it differs from the model's own size
        self._output_dimensionality = None if known and self.dimensions == known.dimensions else self.dimensions
        self.tokenizer = GeminiApproxTokenizer()
        self._caller = GeminiCaller(label=f"gemini embedder (model {self.model})", api_key=opts["api_key"],
                                    base_url=opts["base_url"], timeout=opts["timeout"],
                                    max_retries=opts["max_retries"], backoff=opts["backoff"])

    def __repr__(self) -> str:  # never show the key
        return f"GeminiEmbedder(model={self.model!r}, dimensions={self.dimensions})"

    def close(self) -> None:
        self._caller.close()

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        return self._embed(list(texts), "RETRIEVAL_DOCUMENT")

    def embed_query(self, text: str) -> Embeddings:
        return self._embed([text], "RETRIEVAL_QUERY")

    def _embed(self, texts: list[str], task_type: str) -> Embeddings:
        if not texts:
            return Embeddings(vectors=np.zeros((0, self.dimensions), dtype=np.float32), tokens=0)
        # The API refuses an empty part; a text of only whitespace says as much as a space.
        # A text the model would cut is cut here, at a whole token, so the count is right.
        texts = [self.tokenizer.truncate(text, self.max_tokens) if text.strip() else " " for text in texts]
        parts, tokens = [], 0
        for start in range(0, len(texts), BATCH_SIZE):
            vectors, counted = self._embed_batch(texts[start:start + BATCH_SIZE], task_type)
            parts.append(vectors)
            tokens += counted
        vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return Embeddings(vectors=vectors, tokens=tokens)

    def _embed_batch(self, batch: list[str], task_type: str) -> tuple[np.ndarray, int]:
        # One Content per text: the SDK folds a list of strings into a single multi-part
        # content for some models (gemini-embedding-2), which would give one vector in all.
        contents = [types.Content(parts=[types.Part(text=text)]) for text in batch]
        config = types.EmbedContentConfig(task_type=task_type, output_dimensionality=self._output_dimensionality)
        response = self._caller.call("embed", lambda client: client.models.embed_content(
            model=self.model, contents=contents, config=config))
        embeddings = response.embeddings
        if not isinstance(embeddings, list) or len(embeddings) != len(batch):
            raise UpstreamUnavailable(f"Gemini embed returned {len(embeddings) if isinstance(embeddings, list) else 0} "
                                      f"embeddings for {len(batch)} texts", reason="upstream_bad_response")
        rows = [getattr(embedding, "values", None) for embedding in embeddings]
        if not all(isinstance(row, list) and row for row in rows):
            raise UpstreamUnavailable("Gemini embed returned an embedding without values",
                                      reason="upstream_bad_response")
        try:
            vectors = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged rows
            raise UpstreamUnavailable(f"Gemini embed returned malformed vectors: {exc}",
                                      reason="upstream_bad_response") from exc
        if not np.isfinite(vectors).all():
            raise UpstreamUnavailable("Gemini embed returned vectors with NaN or infinity",
                                      reason="upstream_bad_response")
        if vectors.ndim != 2 or vectors.shape[1] != self.dimensions:
            # the space recorded self.dimensions; vectors of another size must never reach it
            raise PluginError(f"Gemini model {self.model} returned vectors of shape {vectors.shape}, "
                              f"expected {self.dimensions} dimensions (the model or its output size changed); "
                              "fix the dimensions option or reindex the space", reason="pipeline_changed")
        reported = getattr(response.usage_metadata, "prompt_token_count", None)
        if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 0:
            return vectors, reported
        return vectors, sum(self.tokenizer.count(batch))
