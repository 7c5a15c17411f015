"""``CohereEmbedder``: Cohere's embed models through ``cohere.ClientV2`` (API v2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from marshmallow import ValidationError, fields, validates_schema

from spacio.rag.contracts import Embeddings, PluginError, UpstreamUnavailable

from ._calls import CohereCaller, CohereOptions
from .tokenizer import CohereApproxTokenizer

#: texts per /v2/embed request: the API's maximum
BATCH_SIZE = 96


@dataclass(frozen=True)
class EmbedModel:
    dimensions: int  # what the model returns by default
    max_tokens: int  # context length; longer inputs are truncated (truncate="END")
    output_dimensions: frozenset[int] = frozenset()  # allowed ``output_dimension`` values (v4+)


MODELS: dict[str, EmbedModel] = {
    "embed-v4.0": EmbedModel(1536, 128_000, frozenset({256, 512, 1024, 1536})),
    "embed-english-v3.0": EmbedModel(1024, 512),
    "embed-multilingual-v3.0": EmbedModel(1024, 512),
    "embed-english-light-v3.0": EmbedModel(384, 512),
    "embed-multilingual-light-v3.0": EmbedModel(384, 512),
}
DEFAULT_MODEL = "embed-english-v3.0"
DEFAULT_MAX_TOKENS = 512  # for models not in MODELS


class CohereEmbedderOptions(CohereOptions):
    """``model`` is any Cohere embed model id; for one not in :data:`MODELS`, ``dimensions``
    is required (Spacio records it on every space before the first call). ``dimensions``
    on embed-v4.0 selects its ``output_dimension`` (256, 512, 1024 or 1536)."""

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
        elif dimensions is not None and dimensions != known.dimensions \
                and dimensions not in known.output_dimensions:
            allowed = sorted(known.output_dimensions | {known.dimensions})
            raise ValidationError(f"{model} returns {' or '.join(map(str, allowed))} dimensions, "
                                  f"not {dimensions}", "dimensions")


class CohereEmbedder:
    """Embeds with ``input_type="search_document"`` for documents and ``"search_query"``
    for queries (Cohere's v3+ models are trained asymmetric), 96 texts per request,
    ``truncate="END"``. Vectors are float32 and L2-normalised; ``tokens`` is what Cohere
    billed (``meta.billed_units.input_tokens``). No I/O before the first embed call."""

    options_schema = CohereEmbedderOptions

    max_batch_size = BATCH_SIZE

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        known = MODELS.get(self.model)
        self.dimensions: int = opts["dimensions"] or known.dimensions
        self.max_tokens: int = known.max_tokens if known else DEFAULT_MAX_TOKENS
        # ask for output_dimension only where the model takes it and it differs from the default
        self._output_dimension = (self.dimensions if known and self.dimensions in known.output_dimensions
                                  and self.dimensions != known.dimensions else None)
        self.tokenizer = CohereApproxTokenizer()
        self._caller = CohereCaller(api_key=opts["api_key"], base_url=opts["base_url"], timeout=opts["timeout"],
                                    max_retries=opts["max_retries"], backoff=opts["backoff"])

    def __repr__(self) -> str:  # never show the key
        return f"CohereEmbedder(model={self.model!r}, dimensions={self.dimensions})"

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        return self._embed(list(texts), "search_document")

    def embed_query(self, text: str) -> Embeddings:
        return self._embed([text], "search_query")

    def _embed(self, texts: list[str], input_type: str) -> Embeddings:
        if not texts:
            return Embeddings(vectors=np.zeros((0, self.dimensions), dtype=np.float32), tokens=0)
        parts, tokens = [], 0
        for start in range(0, len(texts), BATCH_SIZE):
            vectors, billed = self._embed_batch(texts[start:start + BATCH_SIZE], input_type)
            parts.append(vectors)
            tokens += billed
        vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return Embeddings(vectors=vectors, tokens=tokens)

    def _embed_batch(self, batch: list[str], input_type: str) -> tuple[np.ndarray, int]:
        extra = {"output_dimension": self._output_dimension} if self._output_dimension else {}
        response = self._caller.call("embed", lambda client: client.embed(
            model=self.model, texts=batch, input_type=input_type, embedding_types=["float"],
            truncate="END", **extra))
        floats = getattr(getattr(response, "embeddings", None), "float_", None)
        if not isinstance(floats, list) or len(floats) != len(batch):
            raise UpstreamUnavailable(f"Cohere embed returned {len(floats) if isinstance(floats, list) else 0} float "
                                      f"embeddings for {len(batch)} texts", reason="upstream_bad_response")
        try:
            vectors = np.asarray(floats, dtype=np.float32)
        except (TypeError, ValueError) as exc:  # ragged rows or non-numbers
            raise UpstreamUnavailable(f"Cohere embed returned malformed vectors: {exc}",
                                      reason="upstream_bad_response") from exc
        if vectors.ndim != 2 or vectors.shape[1] != self.dimensions:
            raise PluginError(f"Cohere model {self.model} returned vectors of shape {vectors.shape}, "
                              f"expected {self.dimensions} dimensions; fix the dimensions option",
                              reason="dimension_mismatch")
        billed = getattr(getattr(getattr(response, "meta", None), "billed_units", None), "input_tokens", None)
        if isinstance(billed, (int, float)) and billed >= 0:
            return vectors, int(billed)
        # a proxy that drops ``meta``: fall back to the local (over)estimate
        return vectors, sum(self.tokenizer.count(batch))
