"""The behaviour every ``spacio.chunkers`` plugin must have, as a pytest test class.

Subclass it in your plugin's tests and provide a ``chunker`` fixture::

    import pytest
    from spacio.testing.contracts.chunker import ChunkerContract

    class TestMyChunker(ChunkerContract):
        @pytest.fixture
        def chunker(self):
            return MyChunker()

Optional fixture you may override:

- ``tokenizer``: the tokenizer chunks are measured with (default
  ``spacio.testing.tokenizers.RegexTokenizer``: word pieces of at most 4 characters and
  one token per punctuation mark, so a long word is several tokens).

What is checked, for several ``(size, overlap)`` settings and documents (prose with
paragraphs and hard-wrapped lines, sections with headings and pages, Chinese without
spaces, Korean, Arabic, mixed scripts with emoji, messy whitespace, a huge URL/base64
"word"):

- ``chunk`` returns ``Chunk`` objects, ordinals ``0..n-1``, ``tokens`` equal to
  ``tokenizer.count([text])``, never more than ``size``;
- no empty chunk, no leading or trailing whitespace;
- no word is split (words are whitespace-separated; in scripts without spaces every
  character is a word), except a single word longer than ``size`` tokens;
- every non-space character of the document is in a chunk, in document order, and each
  chunk adds something new;
- a chunk stays under one heading; ``page``/``page_end`` are the pages its first and last
  words are on;
- neighbours share at most about ``overlap`` tokens, and do share some when ``overlap > 0``;
- the result is deterministic; an empty document gives no chunks; a huge word is cut
  quickly.

Text may be re-spaced (runs of whitespace normalised) but not otherwise changed.
"""

from __future__ import annotations

import functools
import random
import re
import time
from typing import NamedTuple

import pytest

from spacio.rag.contracts import Chunk, Chunker, ParsedDocument, Section

# Characters of scripts written without spaces (Han, kana, Thai, Lao, Myanmar, Khmer,
# CJK and full-width punctuation): each one counts as a word of its own.
_NO_SPACE = (
    "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3001-\u303f\u3040-\u30ff\u3100-\u312f"
    "\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003ffff"
)
_WORD = re.compile(f"[{_NO_SPACE}]|[^{_NO_SPACE}\\s]+")

SETTINGS = [(16, 0), (16, 4), (48, 8), (128, 16)]


def words(text: str) -> list[str]:
    """The units a chunker must not split."""
    return _WORD.findall(text)


def squeeze(text: str) -> str:
    """``text`` without any whitespace: what must survive chunking unchanged."""
    return "".join(text.split())


# --------------------------------------------------------------------------- documents

_SYLLABLES = ["ka", "lo", "mer", "tis", "an", "dru", "ve", "sol", "qui", "bex", "no", "ram",
              "ul", "pha", "zen", "to", "rim", "es", "gal", "ot"]


def _word(i: int) -> str:
    """A distinct pronounceable word for every ``i`` (so each word occurs once)."""
    parts = []
    while True:
        i, r = divmod(i, len(_SYLLABLES))
        parts.append(_SYLLABLES[r])
        if i == 0:
            return "".join(parts)
        i -= 1


class _Words:
    def __init__(self, start: int = 0, seed: int = 1):
        self.i = start
        self.rng = random.Random(seed)

    def sentence(self) -> str:
        n = self.rng.randint(4, 22)
        out = []
        for k in range(n):
            w = _word(self.i)
            self.i += 1
            if self.rng.random() < 0.05:
                w = w * 4  # a long word: several tokens
            if k == 0:
                w = w.capitalize()
            if k < n - 1 and self.rng.random() < 0.1:
                w += ","
            out.append(w)
        return " ".join(out) + self.rng.choice([".", ".", ".", "?", "!", '."'])

    def paragraph(self, sentences: int | None = None, wrap: bool = False) -> str:
        text = " ".join(self.sentence() for _ in range(sentences or self.rng.randint(1, 6)))
        if wrap:  # hard-wrapped lines, like a plain-text book
            lines, line = [], ""
            for w in text.split(" "):
                if line and len(line) + len(w) > 70:
                    lines.append(line)
                    line = w
                else:
                    line = f"{line} {w}" if line else w
            text = "\n".join(lines + [line])
        return text


@functools.cache
def documents() -> dict[str, ParsedDocument]:
    """Test documents whose words are all distinct, so positions can be found back."""
    w = _Words()
    prose = "\n\n".join(w.paragraph(wrap=k % 2 == 0) for k in range(40))

    structured = (
        Section(w.paragraph(3), page=1, heading="Introduction"),
        Section(w.paragraph(8), page=2, heading="Introduction"),  # same heading, next page
        Section(w.paragraph(1), page=2, heading="Introduction > Scope"),
        Section(w.paragraph(2), page=3, heading="Introduction > Scope"),
        Section("   \n  ", page=3, heading="Empty"),
        Section(w.paragraph(12), page=3, heading="Methods"),
        Section(w.paragraph(1), page=5, heading="Results"),
        Section(w.paragraph(1), page=6, heading=None),
    )

    rng = random.Random(2)
    han = [chr(0x4E00 + k) for k in range(3000)]
    cjk_sentences, k = [], 0
    while k < len(han):
        n = rng.randint(6, 40)
        body = han[k:k + n]
        if n > 12:
            body.insert(n // 2, "，")
        cjk_sentences.append("".join(body) + rng.choice(["。", "。", "！", "？"]))
        k += n
    cjk = "\n\n".join("".join(cjk_sentences[j:j + 8]) for j in range(0, len(cjk_sentences), 8))

    def script_words(first: int, span: int, count: int, seed: int) -> list[str]:
        r = random.Random(seed)
        out = []
        for i in range(count):
            length = r.randint(2, 5)
            out.append("".join(chr(first + (i * 7 + j * 131 + r.randrange(span)) % span) for j in range(length)))
        return out

    def script_text(ws: list[str], stop: str, comma: str) -> str:
        r = random.Random(len(ws))
        out, sentence = [], []
        for word in ws:
            sentence.append(word)
            if r.random() < 0.1:
                out.append(" ".join(sentence) + stop)
                sentence = []
            elif r.random() < 0.05:
                sentence[-1] += comma
        out.append(" ".join(sentence) + stop)
        return " ".join(out)

    korean = script_text(script_words(0xAC00, 11172, 900, 3), ".", ",")
    arabic = script_text(script_words(0x0628, 0x064A - 0x0628, 900, 4), ".", "\u060c")

    mixed = " ".join([
        w.sentence(), "Spacio 支持中文检索和日本語のテキスト。", w.sentence(), "café naïve façade Ångström",
        "😀👍🏽 emoji", w.sentence(), "Ελληνικά κείμενα", "русский текст", w.sentence(), "ภาษาไทยไม่มีช่องว่าง",
        w.sentence(),
    ])

    messy = "\r\n".join([
        "   " + w.sentence() + "\t\t" + w.sentence(), "", "", "", "\u00a0" + w.sentence(), "   ",
        w.sentence() + "   \f " + w.sentence(), "\t", w.paragraph(4),
    ]) + "\n\n\n   "

    rng = random.Random(5)
    blob = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(6000))
    url = "https://example.com/" + "/".join(f"segment{k}" for k in range(300)) + "?q=1"
    huge = " ".join([w.paragraph(2), blob + "==", w.sentence(), url, w.paragraph(2)])

    return {
        "prose": ParsedDocument(sections=(Section(prose),)),
        "structured": ParsedDocument(sections=structured, pages=6),
        "cjk": ParsedDocument(sections=(Section(cjk, page=1),), pages=1),
        "korean": ParsedDocument(sections=(Section(korean),)),
        "arabic": ParsedDocument(sections=(Section(arabic),)),
        "mixed": ParsedDocument(sections=(Section(mixed),)),
        "messy": ParsedDocument(sections=(Section(messy),)),
        "huge_word": ParsedDocument(sections=(Section(huge),)),
    }


class Placement(NamedTuple):
    """Where a chunk is in the document's text without whitespace (``squeeze``)."""

    start: int
    end: int
    first_section: int  # index of the section of its first character
    last_section: int  # ... and of its last one


def locate(document: ParsedDocument, chunks: list[Chunk]) -> list[Placement]:
    """Check that the chunks cover the document in order, each adding something new, and
    say where each one is."""
    source, section_ends = "", []
    for section in document.sections:
        source += squeeze(section.text)
        section_ends.append(len(source))
    where, covered, previous = [], 0, 0
    for chunk in chunks:
        piece = squeeze(chunk.text)
        at = source.find(piece, previous)
        assert at != -1, f"chunk {chunk.ordinal} is not a piece of the document in order: {chunk.text[:80]!r}"
        assert at <= covered, f"text before chunk {chunk.ordinal} is missing: {source[covered:at][:80]!r}"
        assert at + len(piece) > covered, f"chunk {chunk.ordinal} adds nothing new"
        covered, previous = at + len(piece), at
        first = next(i for i, end in enumerate(section_ends) if end > at)
        last = next(i for i, end in enumerate(section_ends) if end >= at + len(piece))
        where.append(Placement(at, at + len(piece), first, last))
    assert covered == len(source), f"the end of the document is missing: {source[covered:][:80]!r}"
    return where


# --------------------------------------------------------------------------- the contract

class ChunkerContract:
    """Subclass and provide a ``chunker`` fixture; see the module docstring."""

    @pytest.fixture
    def tokenizer(self):
        from spacio.testing.tokenizers import RegexTokenizer

        return RegexTokenizer()

    @pytest.fixture(params=SETTINGS, ids=[f"size{s}-overlap{o}" for s, o in SETTINGS])
    def settings(self, request):
        return request.param

    @pytest.fixture(params=sorted(documents()))
    def document(self, request):
        return documents()[request.param]

    @staticmethod
    def run(chunker, document, tokenizer, size, overlap) -> list[Chunk]:
        return list(chunker.chunk(document, tokenizer=tokenizer, size=size, overlap=overlap))

    # ------------------------------------------------------------------ shape

    def test_implements_the_protocol(self, chunker, tokenizer):
        assert isinstance(chunker, Chunker)
        chunks = self.run(chunker, documents()["prose"], tokenizer, 48, 8)
        assert chunks and all(isinstance(c, Chunk) for c in chunks)

    def test_chunks_fit_the_size_and_count_exactly(self, chunker, tokenizer, document, settings):
        size, overlap = settings
        chunks = self.run(chunker, document, tokenizer, size, overlap)
        counts = tokenizer.count([c.text for c in chunks])
        assert [c.tokens for c in chunks] == counts
        assert max(counts) <= size

    def test_ordinals_run_from_zero(self, chunker, tokenizer, document, settings):
        chunks = self.run(chunker, document, tokenizer, *settings)
        assert [c.ordinal for c in chunks] == list(range(len(chunks)))

    def test_no_empty_or_padded_chunk(self, chunker, tokenizer, document, settings):
        for chunk in self.run(chunker, document, tokenizer, *settings):
            assert chunk.text.strip(), f"chunk {chunk.ordinal} is empty"
            assert chunk.text == chunk.text.strip(), f"chunk {chunk.ordinal} has surrounding whitespace"

    # ------------------------------------------------------------------ text

    def test_no_word_is_split(self, chunker, tokenizer, document, settings):
        size, overlap = settings
        source = [w for s in document.sections for w in words(s.text)]
        known = set(source)
        huge = [w for w, n in zip(source, tokenizer.count(source)) if n > size]
        for chunk in self.run(chunker, document, tokenizer, size, overlap):
            for word in words(chunk.text):
                assert word in known or any(word in h for h in huge), \
                    f"chunk {chunk.ordinal} splits a word: {word!r}"

    def test_all_text_is_covered_in_order(self, chunker, tokenizer, document, settings):
        locate(document, self.run(chunker, document, tokenizer, *settings))

    def test_headings_and_pages_are_carried_over(self, chunker, tokenizer, settings):
        document = documents()["structured"]
        sections = document.sections
        chunks = self.run(chunker, document, tokenizer, *settings)
        for chunk, (_, _, first, last) in zip(chunks, locate(document, chunks)):
            spanned = {s.heading for s in sections[first:last + 1] if s.text.strip()}
            assert spanned == {chunk.heading}, f"chunk {chunk.ordinal} mixes headings {spanned}"
            assert (chunk.page, chunk.page_end) == (sections[first].page, sections[last].page)

    def test_cjk_chunks_fit_without_spaces(self, chunker, tokenizer):
        document = documents()["cjk"]
        chunks = self.run(chunker, document, tokenizer, 16, 4)
        assert len(chunks) > 10
        assert max(tokenizer.count([c.text for c in chunks])) <= 16
        assert all(c.page == c.page_end == 1 for c in chunks)

    # ------------------------------------------------------------------ overlap

    def test_overlap_is_at_most_about_the_setting(self, chunker, tokenizer, document, settings):
        size, overlap = settings
        chunks = self.run(chunker, document, tokenizer, size, overlap)
        places = locate(document, chunks)
        shared_pairs = 0
        for before, after, chunk in zip(places, places[1:], chunks[1:]):
            shared = before.end - after.start
            if shared <= 0:
                continue
            shared_pairs += 1
            prefix, seen = "", 0
            for ch in chunk.text:  # the repeated beginning of the next chunk, with its spaces
                prefix += ch
                seen += not ch.isspace()
                if seen == shared:
                    break
            repeated = tokenizer.count([prefix])[0]
            assert repeated <= overlap + max(2, overlap // 4), \
                f"chunk {chunk.ordinal} repeats {repeated} tokens: {prefix[:80]!r}"
        if overlap and len(chunks) > 4 and document is documents()["prose"]:
            assert shared_pairs >= (len(chunks) - 1) / 2, "neighbours should share about `overlap` tokens"

    # ------------------------------------------------------------------ edge cases

    def test_deterministic(self, chunker, tokenizer, document):
        assert self.run(chunker, document, tokenizer, 48, 8) == self.run(chunker, document, tokenizer, 48, 8)

    @pytest.mark.parametrize("document", [
        ParsedDocument(sections=()),
        ParsedDocument(sections=(Section(""), Section(" \n\t \r\n ", page=1, heading="Blank"))),
    ], ids=["no-sections", "blank-sections"])
    def test_empty_document_gives_no_chunks(self, chunker, tokenizer, document):
        assert self.run(chunker, document, tokenizer, 48, 8) == []

    def test_a_huge_word_is_cut_quickly_within_size(self, chunker, tokenizer):
        rng = random.Random(6)
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(200_000))
        document = ParsedDocument(sections=(Section(f"Before it. {word} After it."),))
        started = time.perf_counter()
        chunks = self.run(chunker, document, tokenizer, 32, 8)
        elapsed = time.perf_counter() - started
        assert elapsed < 20, f"chunking one 200,000-character word took {elapsed:.1f} s"
        assert max(tokenizer.count([c.text for c in chunks])) <= 32
        locate(document, chunks)
