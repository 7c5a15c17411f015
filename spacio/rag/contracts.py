"""The plugin contract: one Protocol per kind, frozen dataclasses in and out, and the
errors a plugin may raise. This module, ``spacio.rag.prompts`` (how a chat model is
given the rules and the fenced passages) and ``spacio.testing`` are the whole API a plugin
author needs; nothing else in ``spacio`` is meant for plugins.

Kinds and their entry-point groups (the entry-point name is the config value):

=============  ======================  ==============================================
kind           group                   selected by
=============  ======================  ==============================================
parser         ``spacio.parsers``      ``SPACIO_PARSERS`` (list; default: all installed)
chunker        ``spacio.chunkers``     ``SPACIO_CHUNKER``
embedder       ``spacio.embedders``    ``SPACIO_EMBEDDER``
vector store   ``spacio.vector_stores``  ``SPACIO_VECTOR_STORE``
generator      ``spacio.generators``   ``SPACIO_GENERATOR``
reranker       ``spacio.rerankers``    ``SPACIO_RERANKER`` (optional)
=============  ======================  ==============================================

Where a plugin's calls run under gevent: a plugin is assumed to compute (``cpu_bound``
true, the default), and the host calls it on a real thread, off the gevent hub. A plugin
whose calls only wait on the network through gevent-friendly I/O sets the class attribute
``cpu_bound = False`` and is called on the request's greenlet (pgvector: psycopg_pool cannot
grow from a real thread under gevent). Generators default the other way: see ``Generator``.

An entry point names a class (or any callable) that the host calls with the plugin's
options as keyword arguments. Options come from ``SPACIO_PLUGINS__<KIND>__<NAME>__<OPTION>``
and are validated by the class attribute ``options_schema`` (a marshmallow Schema class)
when it has one. The constructor must not do I/O: connect, load models and create tables
lazily, on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

KINDS = {
    "parser": "spacio.parsers",
    "chunker": "spacio.chunkers",
    "embedder": "spacio.embedders",
    "vector_store": "spacio.vector_stores",
    "generator": "spacio.generators",
    "reranker": "spacio.rerankers",
}


# --------------------------------------------------------------------------- errors

class PluginError(Exception):
    """Base of the errors a plugin raises on purpose. ``reason`` is a stable snake_case
    code that ends up in a document's ``error.reason`` or in an HTTP error body."""

    reason: ClassVar[str] = "plugin_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidInput(PluginError):
    """The input cannot be processed, and trying again will not help: an encrypted or
    broken file, a PDF without a text layer, too many pages. Set a specific ``reason``:

    ``encrypted``, ``corrupt_file``, ``no_text_layer``, ``too_many_pages``, ``empty_document``,
    ``archive_too_large`` (or your own snake_case code)."""

    reason = "invalid_input"


class UnsupportedMediaType(PluginError):
    """The parser does not handle this content."""

    reason = "unsupported_media_type"


class UpstreamUnavailable(PluginError):
    """A service the plugin needs is down, overloaded or rate limiting (429, 5xx,
    timeouts). The host retries with backoff; ``retry_after`` (seconds) is a hint."""

    reason = "upstream_unavailable"
    retryable = True

    def __init__(self, message: str, reason: str | None = None, retry_after: float | None = None):
        super().__init__(message, reason)
        self.retry_after = retry_after


# --------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Blob:
    """An uploaded file. ``media_type`` was sniffed from the content by the host."""

    data: bytes
    media_type: str
    filename: str = ""
    max_pages: int | None = None  # raise InvalidInput(reason="too_many_pages") above this


@dataclass(frozen=True)
class Section:
    """A run of text with where it came from. ``page`` is 1-based, ``None`` for formats
    without pages; ``heading`` is the heading path it sits under ("Intro > Scope")."""

    text: str
    page: int | None = None
    heading: str | None = None


@dataclass(frozen=True)
class PageReport:
    """Where one page's text came from, for a document's per-page diagnostics: ``text`` (the
    file's text layer), ``ocr`` (recognised from the page's image) or ``skipped`` (no text kept
    from it; ``reason`` says why, e.g. ``no_text_layer``, ``too_many_pixels``, ``ocr_timeout``)."""

    page: int
    source: str  # "text" | "ocr" | "skipped"
    reason: str | None = None


@dataclass(frozen=True)
class ParsedDocument:
    sections: tuple[Section, ...]
    pages: int | None = None  # page count, None for formats without pages
    title: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    page_reports: tuple[PageReport, ...] = ()  # optional: one per page, for formats with pages

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


@runtime_checkable
class Parser(Protocol):
    """``spacio.parsers``: turns a file of one of ``media_types`` into sections of text.

    Raise ``InvalidInput`` (with a specific reason) for a file that cannot be read; never
    let a library exception escape for bad input. A file with no text at all returns a
    ParsedDocument with no sections (the host fails it as ``empty_document``).

    Optional ``priority`` (int, default 0): when two installed parsers read one media type,
    the higher one reads it (an OCR-capable PDF parser over the text-layer one); equal ones go
    by name. A parser with pages may say per page where its text came from (``page_reports``):
    the document then shows it (GET document ``diagnostics``)."""

    media_types: frozenset[str]

    def parse(self, blob: Blob) -> ParsedDocument: ...


# --------------------------------------------------------------------------- chunking

@runtime_checkable
class Tokenizer(Protocol):
    """The embedder's tokenizer, so chunks are measured in the tokens the model sees."""

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, without special tokens."""

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each token of ``text``, in order, without special tokens."""


@dataclass(frozen=True)
class Chunk:
    ordinal: int  # 0-based position in the document
    text: str
    tokens: int  # in the embedder's tokenizer
    page: int | None = None  # the page the chunk starts on
    page_end: int | None = None  # the page it ends on
    heading: str | None = None


@runtime_checkable
class Chunker(Protocol):
    """``spacio.chunkers``: cuts a parsed document into chunks of at most ``size`` tokens,
    neighbours sharing about ``overlap`` tokens, never splitting inside a word."""

    def chunk(self, document: ParsedDocument, *, tokenizer: Tokenizer, size: int,
              overlap: int) -> Iterable[Chunk]: ...


# --------------------------------------------------------------------------- embedding

@dataclass(frozen=True)
class Embeddings:
    vectors: Any  # numpy float32 array, shape (len(texts), dimensions), rows L2-normalised
    tokens: int  # tokens billed or computed for these texts


@runtime_checkable
class Embedder(Protocol):
    """``spacio.embedders``. ``model`` and ``dimensions`` are recorded on every space, so a
    different model is never mixed into a space's vectors.

    Optional: ``grounded_min_similarity`` (float), the cosine similarity of a question to a
    passage below which this model's passages do not answer it (``grounded: false``);
    ``bench/quality.py --calibrate`` measures it for a model. Without it the host's
    ``SPACIO_GROUNDED_MIN_SIMILARITY`` applies."""

    model: str
    dimensions: int
    max_batch_size: int  # texts per call the host sends at most
    max_tokens: int  # input length the model reads; longer texts are truncated
    tokenizer: Tokenizer

    def embed_documents(self, texts: Sequence[str]) -> Embeddings: ...

    def embed_query(self, text: str) -> Embeddings: ...


# --------------------------------------------------------------------------- vector stores

@dataclass(frozen=True)
class VectorRecord:
    id: str  # the chunk id: a UUID string, stable for (document_id, ordinal)
    document_id: str
    ordinal: int
    text: str
    vector: Any  # sequence of floats (a numpy row is fine), L2-normalised
    page: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)  # JSON-able


@dataclass(frozen=True)
class Hit:
    id: str
    document_id: str
    ordinal: int
    text: str
    score: float  # higher is better; cosine similarity for vector search
    page: int | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class VectorStore(Protocol):
    """``spacio.vector_stores``: vectors and keyword search, one namespace per space.

    ``search`` with ``vector`` ranks by cosine similarity, with ``text`` by keyword
    relevance, with both by the store's hybrid ranking. It returns ``limit`` hits whenever
    the namespace holds that many matching records, however large the other namespaces
    are. ``upsert`` replaces records with the same id, so writing twice leaves one copy.

    A store without keyword search sets the class attribute ``keyword_search = False``: it is
    then never given ``text``, and the host answers hybrid and keyword searches from its
    vectors alone, saying so in each hit's ``mode``."""

    def ensure_namespace(self, namespace: str, dimensions: int) -> None: ...

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None: ...

    def search(self, namespace: str, *, vector: Sequence[float] | None = None, text: str | None = None,
               limit: int = 10, document_ids: Sequence[str] | None = None) -> list[Hit]: ...

    def delete_document(self, namespace: str, document_id: str) -> None: ...

    def drop_namespace(self, namespace: str) -> None: ...

    def count(self, namespace: str, document_id: str | None = None) -> int: ...


# --------------------------------------------------------------------------- generation

@dataclass(frozen=True)
class Passage:
    n: int  # the citation number the answer uses: [n]
    text: str
    chunk_id: str
    document_id: str
    filename: str = ""
    page: int | None = None


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Prompt:
    question: str
    passages: tuple[Passage, ...] = ()
    history: tuple[Turn, ...] = ()
    system_prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False  # counted by the plugin (e.g. its tokenizer), not reported by the service


@runtime_checkable
class Generator(Protocol):
    """``spacio.generators``: yields the answer as text pieces, then one ``Usage``.

    A generator that computes locally may set the class attribute ``cpu_bound = True``: the
    host then advances its stream on a real thread, off the gevent hub (so it must not use
    Flask's context). Remote ones (an HTTP API) run on the request's greenlet. Closing the
    iterator must stop the generation (and close any HTTP stream)."""

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]: ...


@runtime_checkable
class Reranker(Protocol):
    """``spacio.rerankers``: reorders hits for a question, best first, at most ``limit``."""

    def rerank(self, question: str, hits: Sequence[Hit], limit: int) -> list[Hit]: ...
