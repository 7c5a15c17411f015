"""``OpenAIEmbedder``: ``client.embeddings.create`` of the official ``openai`` SDK, against
OpenAI or any server with an OpenAI-compatible ``/v1/embeddings`` (Ollama, vLLM, ...)."""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import openai
from marshmallow import ValidationError, fields, validate, validates_schema

from spacio.rag.contracts import Embeddings, PluginError, UpstreamUnavailable

from ._calls import Caller, OpenAIOptions, get, mentions
from .tokenizer import OpenAIApproxTokenizer

log = logging.getLogger(__name__)

#: inputs per request: the API's maximum
MAX_INPUTS = 2048
#: the API's limit on the tokens of all inputs of one request is 300,000; counted with the
#: local estimate, which can be under the real count (see tokenizer.py), half of it
REQUEST_TOKENS = 150_000


@dataclass(frozen=True)
class EmbedModel:
    dimensions: int  # what the model returns by default
    shortens: bool  # takes the ``dimensions`` parameter (text-embedding-3 and later)


MODELS: dict[str, EmbedModel] = {
    "text-embedding-3-small": EmbedModel(1536, True),
    "text-embedding-3-large": EmbedModel(3072, True),
    "text-embedding-ada-002": EmbedModel(1536, False),
}
DEFAULT_MODEL = "text-embedding-3-small"
#: OpenAI's models read 8191 tokens; the local estimate can count rare scripts at 0.59x
#: their real tokens, so half of that is let through (see tokenizer.py)
KNOWN_MAX_TOKENS = 4096
#: for a model the plugin does not know (many local models read 512)
DEFAULT_MAX_TOKENS = 512


class OpenAIEmbedderOptions(OpenAIOptions):
    """``model`` is any embedding model the server serves. For one not in :data:`MODELS`
    (``nomic-embed-text`` on Ollama...), ``dimensions`` is required: Spacio records it on
    every space before the first call. On text-embedding-3 models ``dimensions`` shortens
    the vectors (sent to the API)."""

    model = fields.String(load_default=DEFAULT_MODEL, validate=validate.Length(min=1))
    dimensions = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    max_tokens = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=16))
    batch_size = fields.Integer(load_default=MAX_INPUTS, validate=validate.Range(min=1, max=MAX_INPUTS))
    encoding_format = fields.String(load_default="base64", validate=validate.OneOf(["base64", "float"]))
    document_prefix = fields.String(load_default="")
    query_prefix = fields.String(load_default="")

    @validates_schema
    def _dimensions_fit_model(self, data: dict, **kwargs: Any) -> None:
        model, dimensions = data.get("model", DEFAULT_MODEL), data.get("dimensions")
        known = MODELS.get(model)
        if known is None:
            if dimensions is None:
                raise ValidationError(
                    f"the openai embedder does not know the dimensions of {model!r} (it knows "
                    f"{', '.join(sorted(MODELS))}): set the dimensions option "
                    "(SPACIO_PLUGINS__EMBEDDER__OPENAI__DIMENSIONS) to the length of its vectors, "
                    "e.g. 768 for nomic-embed-text", "dimensions")
        elif dimensions is not None and dimensions != known.dimensions \
                and not (known.shortens and dimensions <= known.dimensions):
            allowed = f"1 to {known.dimensions}" if known.shortens else str(known.dimensions)
            raise ValidationError(f"{model} returns {allowed} dimensions, not {dimensions}", "dimensions")


class OpenAIEmbedder:
    """Embeds up to 2048 texts per request (fewer if their tokens would pass the API's
    per-request limit), truncated to ``max_tokens`` with the local tokenizer (the API
    refuses longer inputs rather than cutting them). Vectors are float32 and L2-normalised;
    ``tokens`` is the API's ``usage.prompt_tokens``, summed. No I/O before the first call."""

    options_schema = OpenAIEmbedderOptions

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        known = MODELS.get(self.model)
        self.dimensions: int = opts["dimensions"] or known.dimensions
        self.max_tokens: int = opts["max_tokens"] or (KNOWN_MAX_TOKENS if known else DEFAULT_MAX_TOKENS)
        self.max_batch_size: int = opts["batch_size"]
        self.tokenizer = OpenAIApproxTokenizer()
        # ask for shorter vectors only from a model that takes the parameter: others refuse it
        self._send_dimensions = bool(known and known.shortens and self.dimensions != known.dimensions)
        self._encoding_format: str = opts["encoding_format"]
        self._prefixes = {"document": opts["document_prefix"], "query": opts["query_prefix"]}
        self._caller = Caller(label=f"openai embedder (model {self.model})", api_key=opts["api_key"],
                              base_url=opts["base_url"], timeout=opts["timeout"],
                              connect_timeout=opts["connect_timeout"], max_retries=opts["max_retries"],
                              backoff=opts["backoff"])

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIEmbedder(model={self.model!r}, dimensions={self.dimensions})"

    def close(self) -> None:
        self._caller.close()

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        return self._embed(list(texts), "document")

    def embed_query(self, text: str) -> Embeddings:
        return self._embed([text], "query")

    def _embed(self, texts: list[str], kind: str) -> Embeddings:
        if not texts:
            return Embeddings(vectors=np.zeros((0, self.dimensions), dtype=np.float32), tokens=0)
        prefix = self._prefixes[kind]
        budget = self.max_tokens - (self.tokenizer.count([prefix])[0] if prefix else 0)
        # the API refuses an empty string; a space embeds as "no content" too
        inputs = [prefix + (self.tokenizer.truncate(text, budget) or " ") for text in texts]
        parts, tokens = [], 0
        for batch in self._batches(inputs):
            vectors, used = self._embed_batch(batch)
            parts.append(vectors)
            tokens += used
        vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return Embeddings(vectors=vectors, tokens=tokens)

    def _batches(self, inputs: list[str]) -> list[list[str]]:
        """Consecutive batches of at most ``max_batch_size`` inputs and REQUEST_TOKENS tokens."""
        batches: list[list[str]] = [[]]
        used = 0
        for text, count in zip(inputs, self.tokenizer.count(inputs)):
            if batches[-1] and (len(batches[-1]) >= self.max_batch_size or used + count > REQUEST_TOKENS):
                batches.append([])
                used = 0
            batches[-1].append(text)
            used += count
        return batches

    def _embed_batch(self, batch: list[str]) -> tuple[np.ndarray, int]:
        extra = {"dimensions": self.dimensions} if self._send_dimensions else {}

        def create(client: openai.OpenAI) -> Any:
            try:
                return client.embeddings.create(model=self.model, input=batch,
                                                encoding_format=self._encoding_format, **extra)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if self._encoding_format != "base64" or not mentions(exc, "encoding_format"):
                    raise
            # a server that knows only lists of floats; remembered (a lost update costs a retry)
            log.warning("%s: the server does not take encoding_format=base64; asking for floats", self._caller.label)
            self._encoding_format = "float"
            return client.embeddings.create(model=self.model, input=batch, encoding_format="float", **extra)

        response = self._caller.call("embeddings", create)
        vectors = self._vectors(response, len(batch))
        used = get(response, "usage", "prompt_tokens")
        if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
            return vectors, used
        # a server that reports no usage: the local (over)estimate
        return vectors, sum(self.tokenizer.count(batch))

    def _vectors(self, response: Any, n: int) -> np.ndarray:
        """The response's vectors in input order, as a float32 array of ``(n, dimensions)``."""
        data = get(response, "data")
        if not isinstance(data, list) or len(data) != n:
            raise UpstreamUnavailable(f"openai embedder (model {self.model}): the server returned "
                                      f"{len(data) if isinstance(data, list) else 'no'} embeddings for {n} texts",
                                      reason="upstream_bad_response")
        rows: list[np.ndarray | None] = [None] * n
        for position, item in enumerate(data):
            index = get(item, "index")
            index = position if index is None else index
            if not isinstance(index, int) or not 0 <= index < n or rows[index] is not None:
                raise UpstreamUnavailable(f"openai embedder (model {self.model}): the server returned an "
                                          f"embedding with index {index!r} for {n} texts",
                                          reason="upstream_bad_response")
            rows[index] = self._row(get(item, "embedding"))
        lengths = {len(row) for row in rows}
        if lengths != {self.dimensions}:
            # another model behind the same name, or wrong options: never mix its vectors in
            raise PluginError(
                f"openai embedder: model {self.model} returned vectors of {', '.join(map(str, sorted(lengths)))} "
                f"dimensions, but it is configured for {self.dimensions} (the spaces' vectors have that many); "
                "fix the model or dimensions option, or reindex the spaces with the new model",
                reason="pipeline_changed")
        vectors = np.stack(rows)
        if not np.isfinite(vectors).all():
            raise UpstreamUnavailable(f"openai embedder (model {self.model}): the server returned vectors "
                                      "with NaN or infinity", reason="upstream_bad_response")
        return vectors

    def _row(self, embedding: Any) -> np.ndarray:
        """One vector: base64 of little-endian float32 (what we ask for by default) or a
        list of numbers (what servers that ignore ``encoding_format`` send)."""
        try:
            if isinstance(embedding, str):
                raw = base64.b64decode(embedding, validate=True)
                if len(raw) % 4:
                    raise ValueError(f"{len(raw)} bytes is not a whole number of float32")
                return np.frombuffer(raw, dtype="<f4").astype(np.float32)
            if isinstance(embedding, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in embedding):
                return np.asarray(embedding, dtype=np.float32)
        except (ValueError, binascii.Error) as exc:
            raise UpstreamUnavailable(f"openai embedder (model {self.model}): the server returned an "
                                      f"unreadable vector ({exc})", reason="upstream_bad_response") from exc
        raise UpstreamUnavailable(f"openai embedder (model {self.model}): the server returned a vector "
                                  f"that is not a list of numbers nor base64 ({type(embedding).__name__})",
                                  reason="upstream_bad_response")
