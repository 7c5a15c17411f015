"""From retrieved chunks to a streamed, cited answer.

``prepare(space, question, retrieval, history)`` numbers the retrieved passages (rank order,
within the ``ANSWER_CONTEXT_TOKENS`` budget, exact repeats left out) and builds the
``Prompt`` with the space's settings; ``stream(prepared)`` runs the selected generator and
yields the answer's pieces with citation markers that refer to no offered passage removed,
then one ``Usage``; ``cited(answer, citations)`` lists the citations the final answer uses.

When retrieval found nothing relevant enough (``retrieval.grounded`` is false, a score
threshold, not a prompt instruction), no generator runs: the answer is
``NOT_GROUNDED_ANSWER`` with no citations.

How the prompt is written for a model (rules, fencing of passages against prompt
injection, messages) lives in ``spacio.rag.prompts``, which generator plugins reuse.
Token counts here are ``prompts.estimate_tokens`` (a conservative word-piece estimate).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from flask import current_app, has_app_context

from spacio.concurrency import plugin_runner
from spacio.errors import PluginFailed, Unavailable
from spacio.rag import contracts
from spacio.rag.pipeline import plugin_call
from spacio.rag.prompts import estimate_tokens, truncate_to_tokens

log = logging.getLogger(__name__)

__all__ = [
    "Citation",
    "CitationFilter",
    "NOT_GROUNDED_ANSWER",
    "Prepared",
    "cited",
    "collect",
    "prepare",
    "stream",
]

NOT_GROUNDED_ANSWER = (
    "I could not find anything relevant to this question in this space's documents, so I cannot answer it "
    "from them."
)
DEFAULT_CONTEXT_TOKENS = 3000
DEFAULT_MAX_TOKENS = 1024
SNIPPET_CHARS = 240


@dataclass(frozen=True)
class Citation:
    """API.md: ``{n, document_id, filename, chunk_id, page, snippet, score}``."""

    n: int
    document_id: str
    filename: str
    chunk_id: str
    page: int | None
    snippet: str  # plain text: the start of the passage, whitespace collapsed
    score: float

    def to_dict(self) -> dict:
        return {"n": self.n, "document_id": self.document_id, "filename": self.filename,
                "chunk_id": self.chunk_id, "page": self.page, "snippet": self.snippet, "score": self.score}


@dataclass(frozen=True)
class Prepared:
    prompt: contracts.Prompt | None  # None when not grounded: the generator is not called
    citations: list[Citation]  # the numbered passages offered, n = 1..k, in prompt order
    grounded: bool
    generator: Mapping | None = None  # the space's choice {name, model?}; None: the server's


# ----------------------------------------------------------------------------- prepare

def prepare(space, question: str, retrieval, history: Sequence[contracts.Turn], *,
            config: Mapping | None = None) -> Prepared:
    """The prompt for one question: the space's ``system_prompt`` and ``temperature``, the
    given turns (oldest first; the caller keeps the last N), and the retrieved passages in
    rank order while they fit ``ANSWER_CONTEXT_TOKENS`` (a passage that does not fit is left
    out and smaller ones after it still get in; the first is cut to fit if it alone is too
    long). A passage whose text repeats an earlier one's exactly is left out."""
    config = config if config is not None else (current_app.config if has_app_context() else {})
    if not retrieval.grounded or not retrieval.hits:
        return Prepared(prompt=None, citations=[], grounded=False)
    budget = int(config.get("ANSWER_CONTEXT_TOKENS") or DEFAULT_CONTEXT_TOKENS)
    passages, citations, seen, used = [], [], set(), 0
    for hit in retrieval.hits:
        text = hit.text.strip()
        key = " ".join(text.split()).lower()
        if not text or key in seen:
            continue
        tokens = estimate_tokens(text)
        if used + tokens > budget:
            if passages:
                continue
            text = truncate_to_tokens(text, max(1, budget))
            tokens = estimate_tokens(text)
        seen.add(key)
        used += tokens
        n = len(passages) + 1
        passages.append(contracts.Passage(n=n, text=text, chunk_id=str(hit.chunk_id),
                                          document_id=str(hit.document_id), filename=hit.filename or "",
                                          page=hit.page))
        citations.append(Citation(n=n, document_id=str(hit.document_id), filename=hit.filename or "",
                                  chunk_id=str(hit.chunk_id), page=hit.page, snippet=snippet(hit.text),
                                  score=float(hit.score)))
    if not passages:
        return Prepared(prompt=None, citations=[], grounded=False)
    settings = getattr(space, "settings", None) or {}
    system_prompt = settings.get("system_prompt")
    temperature = settings.get("temperature")
    prompt = contracts.Prompt(
        question=question.strip(),
        passages=tuple(passages),
        history=tuple(turn for turn in history if turn.role in ("user", "assistant")),
        system_prompt=system_prompt.strip() if isinstance(system_prompt, str) and system_prompt.strip() else None,
        temperature=float(temperature) if temperature is not None else None,
        max_tokens=int(config.get("ANSWER_MAX_TOKENS") or DEFAULT_MAX_TOKENS),
    )
    choice = settings.get("generator")
    return Prepared(prompt=prompt, citations=citations, grounded=True, generator=dict(choice) if choice else None)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    """The passage's start as plain text: whitespace collapsed, cut between words."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 0.6 else cut).rstrip(" ,;:") + "…"


# ----------------------------------------------------------------------------- stream

def stream(prepared: Prepared, *, generator: contracts.Generator | None = None) -> Iterator[str | contracts.Usage]:
    """The answer's text pieces as the generator produces them, with markers that cite no
    offered passage removed, then exactly one ``Usage``.

    ``generator``: defaults to the selected one (``registry().generator``). A generator with
    ``cpu_bound = True`` is advanced on a real thread (``in_real_thread``), so its work does
    not stall the gevent hub; others (remote APIs: I/O) are advanced on the calling
    greenlet. Closing this iterator closes the generator's stream. Plugin failures:
    ``UpstreamUnavailable`` -> ``Unavailable`` (503), anything else the generator raises
    -> ``PluginFailed`` (502 ``plugin_error``)."""
    if not prepared.grounded or prepared.prompt is None:
        yield NOT_GROUNDED_ANSWER
        yield contracts.Usage()
        return
    what = "The generator"
    if generator is None:
        generator, name = _generator(prepared.generator)
        what = f"The generator {name!r}"
    step = plugin_runner(generator, cpu_bound=False)
    markers = CitationFilter({c.n for c in prepared.citations})
    pieces = plugin_call(step, generator.stream, prepared.prompt, what=what)
    usage: contracts.Usage | None = None
    try:
        while True:
            item = plugin_call(step, next, pieces, _END, what=what)
            if item is _END:
                break
            if isinstance(item, contracts.Usage):
                usage = item  # the last one counts, wherever it came
            elif isinstance(item, str):
                text = markers.feed(item)
                if text:
                    yield text
            else:
                raise PluginFailed(f"The generator yielded a {type(item).__name__}, not text or Usage.",
                                   reason="plugin_error")
        rest = markers.flush()
        if rest:
            yield rest
        if usage is None:
            log.warning("the generator %r reported no usage", generator)
        yield usage or contracts.Usage()
    finally:
        _close(pieces)


def collect(prepared: Prepared, **kwargs) -> tuple[str, contracts.Usage]:
    """The whole answer and its usage (for ``/query`` and non-streaming ``/chat``)."""
    parts, usage = [], contracts.Usage()
    for item in stream(prepared, **kwargs):
        if isinstance(item, contracts.Usage):
            usage = item
        else:
            parts.append(item)
    return "".join(parts), usage


_END = object()


def _close(pieces) -> None:
    """Close the generator's stream (a remote one then closes its HTTP response). If this
    greenlet was killed while a real thread was running a step, the stream is still
    executing there and cannot be closed now; it ends when that step returns and the
    stream is collected."""
    close = getattr(pieces, "close", None)
    if close is None:
        return
    try:
        close()
    except ValueError:  # "generator already executing"
        log.info("the generator's stream was still running a step on a real thread; it is left to finish")
    except Exception:  # a plugin's cleanup failing must not replace the answer's outcome
        log.warning("closing the generator's stream failed", exc_info=True)


def _generator(choice) -> tuple[contracts.Generator, str]:
    """The space's generator (``choice``), else the server's selected one, and its name."""
    from spacio.rag import registry
    from spacio.rag.registry import PluginConfigError

    reg = registry()
    try:
        generator = reg.generator_for(choice)
    except PluginConfigError as exc:
        raise Unavailable(f"This space's generator cannot answer on this server: {exc}",
                          reason="generator_not_configured") from exc
    if generator is None:
        raise Unavailable("No generator is configured on this server (SPACIO_GENERATOR).",
                          reason="generator_not_configured")
    return generator, (choice or {}).get("name") or reg.selection["generator"][0]


def generator_problem(choice) -> str | None:
    """Why a space could not answer with ``choice`` (``{name, model?}``) here, or None."""
    from spacio.rag import registry
    from spacio.rag.registry import PluginConfigError

    reg = registry()
    problem = reg.generator_problem(choice["name"])
    if problem is None and choice.get("model") and not reg.takes_option("generator", choice["name"], "model"):
        problem = f"The generator {choice['name']!r} has no model to choose."
    if problem is None:
        try:
            reg.generator_for(choice)
        except PluginConfigError as exc:  # the plugin refused the model
            problem = str(exc)
    return problem


# ----------------------------------------------------------------------------- citations

# [3], [1, 2], [1,2;4]: what an answer uses to cite passages
MARKER = re.compile(r"\[\s*(\d{1,4}(?:\s*[,;]\s*\d{1,4})*)\s*\]")
_MARKER_WITH_SPACE = re.compile(r"[ \t]*" + MARKER.pattern)
# the end of a piece that may be the start of a marker (held back until the next piece)
_PARTIAL = re.compile(r"\s*\[[\d\s,;]{0,40}$|\s+$")


def _numbers(body: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", body)]


class CitationFilter:
    """Removes markers that cite no offered passage from a stream of text pieces.

    A marker may arrive split across pieces ("[1" + "2]"), so a piece's end that could be
    the start of one (an opening bracket with digits, and the whitespace before it) is held
    back until the next piece or ``flush()``. A marker with some valid numbers keeps those
    ("[1, 99]" -> "[1]"); one with none is removed with the spaces before it
    ("claim [99]." -> "claim.")."""

    def __init__(self, valid: set[int]):
        self.valid = set(valid)
        self.pending = ""

    def _clean(self, text: str) -> str:
        def fix(match: re.Match) -> str:
            keep = list(dict.fromkeys(n for n in _numbers(match.group(1)) if n in self.valid))
            if not keep:
                return ""
            lead = match.group(0)[: match.group(0).index("[")]
            return f"{lead}[{', '.join(map(str, keep))}]"

        return _MARKER_WITH_SPACE.sub(fix, text)

    def feed(self, piece: str) -> str:
        text = self._clean(self.pending + piece)
        held = _PARTIAL.search(text)
        if held and held.start() < len(text):
            self.pending, text = text[held.start():], text[: held.start()]
        else:
            self.pending = ""
        return text

    def flush(self) -> str:
        rest, self.pending = self._clean(self.pending), ""
        return rest


def cited(answer: str, citations: Sequence[Citation]) -> list[Citation]:
    """The citations the final answer refers to with [n], ordered by n."""
    used = {n for match in MARKER.finditer(answer) for n in _numbers(match.group(1))}
    return sorted((c for c in citations if c.n in used), key=lambda c: c.n)
