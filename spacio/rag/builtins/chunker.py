"""Spacio's default chunker (entry point ``recursive`` in ``spacio.chunkers``).

Chunks are measured in the tokens of the embedder's tokenizer, so a chunk never gets
silently truncated by the model, and they are cut at the most natural place available:
a new heading always starts a new chunk; inside a section the cut prefers a paragraph
break, then a sentence end, then a line break, then any space between words (or between
two characters of a script written without spaces, such as Chinese or Japanese).

Speed: each run of sections under one heading is tokenized once (``tokenizer.spans``);
every size decision is then a binary search over the token offsets. The finished chunks
are counted in one batch (``tokenizer.count``) to make ``Chunk.tokens`` exact and to catch
the rare chunk that the tokenizer counts differently out of context.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Callable, Iterator

from spacio.rag.contracts import Chunk, ParsedDocument, Tokenizer

__all__ = ["RecursiveChunker"]

# ---------------------------------------------------------------- whitespace normalisation

_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# NUL cannot be stored in PostgreSQL text; the other C0 controls and the BOM are noise.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def _normalise(text: str) -> str:
    """One space between words, single line breaks kept (lists, verse, tables), any run of
    blank lines turned into one paragraph break, no leading or trailing whitespace."""
    text = _LINE_BREAKS.sub("\n", text)
    text = _CONTROLS.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_AROUND_NEWLINE.sub("\n", text)
    text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


# ---------------------------------------------------------------- boundaries

# Scripts written without spaces between words (Han, kana, Thai, Lao, Myanmar, Khmer,
# full-width forms): a cut between two of their characters does not split a word.
_NO_SPACE_SCRIPT = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3001-\u303f\u3040-\u30ff\u3100-\u312f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff"
)
# Marks that join the character before them (vowel signs, tone marks, dakuten, variation
# selectors, ZWJ): never cut in front of one.
_JOINING = (
    "\u0300-\u036f\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd\u102b-\u103e"
    "\u1056-\u1059\u105e-\u1060\u1062-\u1064\u1067-\u106d\u1071-\u1074\u1082-\u108d\u108f"
    "\u109a-\u109d\u17b4-\u17d3\u17dd\u200d\u3099\u309a\ufe00-\ufe0f"
)
_HAS_NO_SPACE_SCRIPT = re.compile(f"[{_NO_SPACE_SCRIPT}]")
_CHAR_BREAK = re.compile(
    f"(?:(?<=[{_NO_SPACE_SCRIPT}])(?=\\S)|(?<=\\S)(?=[{_NO_SPACE_SCRIPT}]))(?![{_JOINING}])")
_PARAGRAPH_BREAK = re.compile(r"\n\n")
# A sentence ends with . ! ? or … (and closing quotes/brackets) before whitespace, or with
# a full-width 。！？ anywhere. Abbreviations ("Dr. No") give false ends; harmless here.
_SENTENCE_END = re.compile(
    r"(?:[.!?\u2026]+[\"'\u201d\u2019\u00bb)\]]*(?=\s)"
    r"|[\u3002\uff01\uff1f\uff61]+[\u201d\u2019\u300d\u300f\uff09)\]]*)"
    r"(\s*)")
_LINE_BREAK = re.compile(r"\n+")
_WORD_BREAK = re.compile(r"[ \n]+")

# Boundary strengths, strongest first. Each rule: cut at the boundary of at least this
# strength that fills the chunk most, if it fills at least this fraction of the target.
# Measured on War and Peace with all-MiniLM-L6-v2 at 256/32: preferring paragraph ends from
# 50% full gives 3,863 chunks of 218 tokens on average; from 80%, 3,571 chunks of 234 with
# 96% of them ending a sentence; words only, 3,226 chunks of 256 of which 8% end a sentence.
_PARAGRAPH, _SENTENCE, _LINE, _WORD = range(4)
_RULES = ((_PARAGRAPH, 0.8), (_SENTENCE, 0.6), (_LINE, 0.8), (_WORD, 0.0))
# Overlap starts at a sentence start if that still shares at least this part of ``overlap``.
_MIN_SENTENCE_OVERLAP = 0.5


class _Boundaries:
    """Places where a chunk may end (``ends``: the first whitespace character) and the
    next one begin (``starts``: the first character after it), one sorted list pair per
    kind of boundary. Zero-width between characters of space-less scripts."""

    def __init__(self, text: str):
        self.kinds: list[tuple[int, list[int], list[int]]] = []
        self._add(_PARAGRAPH, ((m.start(), m.end()) for m in _PARAGRAPH_BREAK.finditer(text)))
        self._add(_SENTENCE, (m.span(1) for m in _SENTENCE_END.finditer(text) if m.start(1) < len(text)))
        self._add(_LINE, ((m.start(), m.end()) for m in _LINE_BREAK.finditer(text)))
        self._add(_WORD, ((m.start(), m.end()) for m in _WORD_BREAK.finditer(text)))
        if _HAS_NO_SPACE_SCRIPT.search(text):
            self._add(_WORD, ((m.start(), m.start()) for m in _CHAR_BREAK.finditer(text)))

    def _add(self, strength: int, spans: Iterator[tuple[int, int]]) -> None:
        ends: list[int] = []
        starts: list[int] = []
        for end, start in spans:
            ends.append(end)
            starts.append(start)
        if ends:
            self.kinds.append((strength, ends, starts))

    def of_strength(self, strength: int) -> Iterator[tuple[list[int], list[int]]]:
        for kind, ends, starts in self.kinds:
            if kind <= strength:
                yield ends, starts


# ---------------------------------------------------------------- packing

@dataclass
class _Group:
    """Consecutive sections under one heading, joined by paragraph breaks."""

    heading: str | None
    parts: list[str] = field(default_factory=list)
    pages: list[int | None] = field(default_factory=list)

    def text_and_offsets(self) -> tuple[str, list[int]]:
        offsets, at = [], 0
        for part in self.parts:
            offsets.append(at)
            at += len(part) + 2
        return "\n\n".join(self.parts), offsets


@dataclass(frozen=True)
class _State:
    """Where a chunk starts (``pos``), where the previous one ended (``prev_end``) and
    where this one would start without overlap (``fresh``)."""

    pos: int
    prev_end: int
    fresh: int


_Cut = tuple[_State, int, int, "int | None"]


class _Packer:
    """Greedy packing of one group's text over its token offsets."""

    def __init__(self, text: str, spans: list[tuple[int, int]], size: int, overlap: int):
        self.text = text
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]
        self.bounds = _Boundaries(text)
        self.size = size
        self.overlap = overlap

    def piece(self, x: int, y: int) -> str:
        return self.text[x:y].strip()

    def tokens(self, x: int, y: int) -> int:
        """Tokens of ``text[x:y]`` by the offsets (tokens that overlap the range)."""
        return bisect_left(self.starts, y) - bisect_right(self.ends, x)

    def run(self, state: _State, check: Callable[[str], int] | None = None) -> Iterator[_Cut]:
        """Yield ``(state, start, end, tokens)`` for each chunk from ``state`` to the end of
        the text; ``tokens`` is ``None`` unless ``check`` is given.

        With ``check`` (the slow path), each chunk is counted as the tokenizer sees it on
        its own and cut shorter until it fits."""
        n = len(self.text)
        while state.pos < n:
            budget, counted = self.size, None
            while True:
                end, fresh = self._cut(state, budget)
                if end is None:  # the next word only fits without the overlap
                    state = _State(state.fresh, state.prev_end, state.fresh)
                    continue
                if check is None:
                    break
                counted = check(self.piece(state.pos, end))
                if counted <= self.size or budget <= 1:
                    break
                budget -= max(1, counted - self.size)
            yield state, state.pos, end, counted
            if end >= n:
                return
            state = _State(self._overlap_start(state.pos, end, fresh), end, fresh)

    def _cut(self, state: _State, budget: int) -> tuple[int | None, int]:
        """The end of the chunk starting at ``state.pos`` and where the next would start
        without overlap; ``(None, 0)`` if the overlap must be dropped."""
        pos, n, starts = state.pos, len(self.text), self.starts
        first = bisect_right(self.ends, pos)
        remaining = len(starts) - first
        if remaining <= budget:
            return n, n
        limit = starts[first + budget]  # the chunk ends at or before this character
        low = max(pos, state.prev_end)  # ... and after this one, to make progress
        targets = [budget]
        if remaining + self.overlap <= 2 * budget:
            # The rest fits in two chunks: aim for two halves, not one full chunk and a crumb.
            targets.insert(0, math.ceil((remaining + self.overlap) / 2))
        for target in targets:
            floor = max(1, remaining + self.overlap - budget) if target < budget else 1
            aim = starts[first + target]
            for strength, fill in _RULES:
                least = max(floor, math.ceil(fill * target))
                if least > budget:
                    continue
                cut = self._closest(strength, max(low, starts[first + least - 1]), limit, aim, pos)
                if cut is not None:
                    return cut
        if pos < state.fresh:
            return None, 0
        # A single word longer than the budget (a URL, base64): cut it at a token boundary.
        if limit <= low:  # only if a single character is more than ``budget`` tokens
            after = bisect_right(self.ends, low)
            limit = self.ends[after] if after < len(self.ends) else n
        return limit, limit

    def _closest(self, strength: int, low: int, high: int, aim: int, pos: int) -> tuple[int, int] | None:
        """The boundary of at least ``strength`` ending in ``(low, high]`` closest in tokens
        to the character ``aim``, as ``(chunk end, next start)``."""
        best: tuple[int, int, int] | None = None  # (distance, -end, start)
        for ends, starts in self.bounds.of_strength(strength):
            i = bisect_right(ends, aim)
            for j in (i - 1, i):
                if 0 <= j < len(ends) and low < ends[j] <= high:
                    distance = abs(self.tokens(pos, ends[j]) - self.tokens(pos, aim))
                    candidate = (distance, -ends[j], starts[j])
                    if best is None or candidate < best:
                        best = candidate
        return None if best is None else (-best[1], best[2])

    def _overlap_start(self, pos: int, end: int, fresh: int) -> int:
        """Where the next chunk starts: at a sentence start (or else a word start) so that
        it repeats at most ``overlap`` tokens of the end of this chunk."""
        if self.overlap <= 0:
            return fresh
        ends = self.ends
        last = bisect_left(self.starts, end)  # tokens before ``end`` are [first, last)
        earliest = ends[last - self.overlap - 1] if last - self.overlap - 1 >= 0 else 0
        earliest = max(earliest, pos + 1)
        half = last - math.ceil(self.overlap * _MIN_SENTENCE_OVERLAP)
        for strength, latest in ((_SENTENCE, ends[half] - 1 if half >= 0 else -1), (_WORD, end - 1)):
            found = None
            for _, starts in self.bounds.of_strength(strength):
                i = bisect_left(starts, earliest)
                if i < len(starts) and starts[i] <= min(latest, end - 1) and (found is None or starts[i] < found):
                    found = starts[i]
            if found is not None:
                return found
        return fresh


# ---------------------------------------------------------------- the chunker

class RecursiveChunker:
    """Structure-aware recursive chunker: headings, then paragraphs, sentences, lines and
    words, measured in the embedder's tokens.

    - A new heading starts a new chunk; consecutive sections under the same heading (for
      instance one per page) are packed together, so a chunk may run from ``page`` to
      ``page_end``.
    - Inside a run, the chunk ends at the last paragraph break if that fills at least 80%
      of ``size``, else at the last sentence end (if 60% full), line break (80%) or space
      between words. When what is left fits in two chunks, it is split near
      the middle instead of leaving a crumb at the end.
    - Neighbours share up to ``overlap`` tokens, starting at a sentence start when that
      repeats at least half of ``overlap``, else at a word start.
    - Words are never split, with one exception: a single "word" longer than ``size``
      tokens (a long URL, base64, a run of digits) is cut at token boundaries, since it
      could not fit otherwise. In scripts without spaces (Chinese, Japanese, Thai) any
      place between two characters counts as a word boundary.
    - Whitespace is normalised (one space between words, at most one blank line, no
      control characters) and chunks never start or end with whitespace.

    Every chunk has at most ``size`` tokens as counted by ``tokenizer.count`` on its own;
    ``Chunk.tokens`` is that count (a chunk that is a whole run of sections takes it from
    ``spans``, which the contract says agrees with ``count``). A chunk with no tokens at all
    (only characters the model ignores, such as zero-width spaces) is dropped. A pathological tokenizer that needs more than ``size``
    tokens for a single character is the only case where a chunk can exceed ``size``.
    """

    def chunk(self, document: ParsedDocument, *, tokenizer: Tokenizer, size: int, overlap: int) -> list[Chunk]:
        if size < 1:
            raise ValueError(f"chunk size must be at least 1 token, not {size}")
        if not 0 <= overlap < size:
            raise ValueError(f"chunk overlap must be at least 0 and below the size ({size}), not {overlap}")

        planned: list[tuple[_Group, list[int], _Packer, list[_Cut]]] = []
        for group in _groups(document):
            text, offsets = group.text_and_offsets()
            packer = _Packer(text, list(tokenizer.spans(text)), size, overlap)
            planned.append((group, offsets, packer, list(packer.run(_State(0, 0, 0)))))

        # A group that is one chunk was counted by ``spans`` already; count the others.
        counts = iter(tokenizer.count([p.piece(x, y) for _, _, p, cuts in planned if len(cuts) > 1
                                       for _, x, y, _ in cuts]))
        chunks: list[Chunk] = []
        for group, offsets, packer, cuts in planned:
            if len(cuts) == 1:
                pieces = [(cuts[0][1], cuts[0][2], len(packer.starts))]
            else:
                pieces = [(x, y, next(counts)) for _, x, y, _ in cuts]
            bad = next((i for i, (_, _, n) in enumerate(pieces) if n > size), None)
            if bad is not None:
                # On its own the chunk has more tokens than its offsets said (a tokenizer
                # that depends on context, a word cut mid-way): redo the rest of this
                # group, counting each chunk.
                def count_one(text: str) -> int:
                    return tokenizer.count([text])[0]

                pieces = pieces[:bad] + [(x, y, n) for _, x, y, n in packer.run(cuts[bad][0], count_one)]
            for x, y, n in pieces:
                if n == 0:  # only characters the model ignores (e.g. zero-width): nothing to embed
                    continue
                chunks.append(Chunk(
                    ordinal=len(chunks),
                    text=packer.piece(x, y),
                    tokens=n,
                    page=group.pages[bisect_right(offsets, x) - 1],
                    page_end=group.pages[bisect_right(offsets, y - 1) - 1],
                    heading=group.heading,
                ))
        return chunks


def _groups(document: ParsedDocument) -> list[_Group]:
    groups: list[_Group] = []
    for section in document.sections:
        text = _normalise(section.text)
        if not text:
            continue
        if not groups or groups[-1].heading != section.heading:
            groups.append(_Group(section.heading))
        groups[-1].parts.append(text)
        groups[-1].pages.append(section.page)
    return groups
