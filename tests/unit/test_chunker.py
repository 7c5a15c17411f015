"""RecursiveChunker: the chunker contract, plus what makes it Spacio's default."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from spacio.rag.builtins.chunker import RecursiveChunker
from spacio.rag.contracts import ParsedDocument, Section
from spacio.testing.contracts.chunker import ChunkerContract, documents, locate
from spacio.testing.tokenizers import RegexTokenizer

EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"
WAR_AND_PEACE = EVAL / "docs" / "txt" / "book-war-and-peace-1225p.txt"
UDHR = EVAL / "docs" / "txt" / "UDHR_first_article_all.txt"
SCIFACT = EVAL / "retrieval" / "scifact" / "corpus.jsonl"


class TestRecursiveChunker(ChunkerContract):
    @pytest.fixture
    def chunker(self):
        return RecursiveChunker()


class PrefixTokenizer(RegexTokenizer):
    """Starts every text with a zero-width token, like a SentencePiece model's leading "▁":
    a chunk cut from the middle of a text has one token more on its own than its offsets
    show, so chunks packed by offsets come out one token too long and every group goes
    through the recount path."""

    def count(self, texts):
        return [n + 1 if n else 0 for n in super().count(texts)]

    def spans(self, text):
        spans = super().spans(text)
        return [(0, 0)] + spans if spans else []


class TestRecursiveChunkerWithContextDependentTokenizer(ChunkerContract):
    @pytest.fixture
    def chunker(self):
        return RecursiveChunker()

    @pytest.fixture
    def tokenizer(self):
        return PrefixTokenizer()


def chunk(text_or_sections, size, overlap=0, tokenizer=None):
    sections = (Section(text_or_sections),) if isinstance(text_or_sections, str) else tuple(text_or_sections)
    return RecursiveChunker().chunk(ParsedDocument(sections=sections), tokenizer=tokenizer or RegexTokenizer(),
                                    size=size, overlap=overlap)


def sentences(n, start=0):
    """Sentences of exactly 6 RegexTokenizer tokens ("Word", "12", "is", "no", "12", ".")."""
    return [f"Word{i} is no {i}." for i in range(start, start + n)]


# ------------------------------------------------------------------ structure

def test_a_new_heading_starts_a_new_chunk():
    chunks = chunk([Section("Tiny intro.", page=1, heading="Intro"),
                    Section("Tiny scope.", page=1, heading="Intro > Scope"),
                    Section("Tiny methods.", page=2, heading="Methods")], size=100)
    assert [(c.text, c.heading, c.page) for c in chunks] == [
        ("Tiny intro.", "Intro", 1), ("Tiny scope.", "Intro > Scope", 1), ("Tiny methods.", "Methods", 2)]


def test_small_sections_under_one_heading_are_merged_across_pages():
    chunks = chunk([Section("Page one text.", page=1, heading="H"), Section("Page two text.", page=2, heading="H"),
                    Section("Page three text.", page=3, heading="H")], size=100)
    assert len(chunks) == 1
    assert chunks[0].text == "Page one text.\n\nPage two text.\n\nPage three text."
    assert (chunks[0].page, chunks[0].page_end, chunks[0].heading) == (1, 3, "H")


def test_page_is_where_the_chunk_starts_and_page_end_where_it_ends():
    pages = [Section(" ".join(sentences(10, start=10 * p)), page=p + 1) for p in range(4)]  # 60 tokens a page
    chunks = chunk(pages, size=50)
    for c in chunks:
        numbers = re.findall(r"\d+", c.text)
        first, last = int(numbers[0]), int(numbers[-1])
        assert (c.page, c.page_end) == (first // 10 + 1, last // 10 + 1)
    assert any(c.page != c.page_end for c in chunks)


def test_cuts_prefer_paragraphs_then_sentences_over_words():
    para = " ".join(sentences(6))  # 36 tokens
    chunks = chunk(f"{para}\n\n{' '.join(sentences(6, start=6))}", size=50)
    assert [c.text for c in chunks] == [para, " ".join(sentences(6, start=6))]
    # One long paragraph: every chunk ends at the end of a sentence.
    chunks = chunk(" ".join(sentences(40)), size=50)
    assert len(chunks) >= 5 and all(c.text.endswith(".") for c in chunks)
    assert all(c.tokens >= 30 for c in chunks)


def test_short_document_is_one_chunk():
    text = " ".join(sentences(30))  # 180 tokens
    chunks = chunk(text, size=180, overlap=20)
    assert [c.text for c in chunks] == [text] and chunks[0].tokens == 180


def test_tail_is_balanced_instead_of_leaving_a_crumb():
    chunks = chunk(" ".join(sentences(12)), size=60)  # 72 tokens: 36 + 36, not 60 + 12
    assert [c.tokens for c in chunks] == [36, 36]


def test_chunks_are_filled_close_to_size():
    document = documents()["prose"]
    text = document.sections[0].text
    total = RegexTokenizer().count([text])[0]
    chunks = RecursiveChunker().chunk(document, tokenizer=RegexTokenizer(), size=128, overlap=0)
    assert sum(c.tokens for c in chunks) == total
    assert len(chunks) <= 1.3 * total / 128


# ------------------------------------------------------------------ overlap

def test_overlap_starts_at_a_sentence():
    chunks = chunk(" ".join(sentences(40)), size=60, overlap=14)
    for previous, current in zip(chunks, chunks[1:]):
        first_sentence = current.text.split(". ")[0] + "."
        assert first_sentence in previous.text, "the chunk should start by repeating a sentence"
        assert current.text.startswith("Word"), current.text[:30]
        assert RegexTokenizer().count([first_sentence])[0] <= 14


def test_overlap_falls_back_to_words_when_no_sentence_fits():
    text = " ".join(f"w{i}" for i in range(300))  # no sentence ends at all
    chunks = chunk(text, size=40, overlap=5)
    for previous, current in zip(chunks, chunks[1:]):
        shared = [w for w in current.text.split() if w in set(previous.text.split())]
        assert 3 <= len(shared) <= 5
        assert current.text.split()[:len(shared)] == shared


def test_no_overlap_across_headings():
    chunks = chunk([Section(" ".join(sentences(20)), heading="A"), Section(" ".join(sentences(20, 20)), heading="B")],
                   size=50, overlap=10)
    a = {w for c in chunks if c.heading == "A" for w in re.findall(r"Word\d+", c.text)}
    b = {w for c in chunks if c.heading == "B" for w in re.findall(r"Word\d+", c.text)}
    assert a and b and not a & b


def test_invalid_settings_are_refused():
    for size, overlap in ((0, 0), (10, 10), (10, -1)):
        with pytest.raises(ValueError):
            chunk("Some text.", size=size, overlap=overlap)


# ------------------------------------------------------------------ words and whitespace

def test_a_word_that_fits_is_never_cut_even_with_overlap():
    long_word = "x" * 50  # 13 tokens
    text = " ".join(f"w{i}" for i in range(30)) + f" {long_word} " + " ".join(f"v{i}" for i in range(30))
    for overlap in (0, 3, 6):
        chunks = chunk(text, size=16, overlap=overlap)
        assert sum(long_word in c.text.split() for c in chunks) >= 1
        assert all(w in text.split() for c in chunks for w in c.text.split())


def test_a_huge_word_is_cut_at_token_boundaries_only():
    word = "abcd" * 100  # 100 tokens of 4 characters
    chunks = chunk(f"start {word} end", size=30)
    pieces = [c.text for c in chunks]
    assert pieces[0] == "start"
    assert "".join(pieces[1:-1]) + pieces[-1].removesuffix(" end") == word
    assert all(len(p) % 4 == 0 for p in pieces[1:-1])


def test_whitespace_is_normalised():
    chunks = chunk("  One\t\ttwo \u00a0three.\r\n\r\n\r\n\r\nFour  \n  five.\x00\x07  \n\n\n", size=100)
    assert [c.text for c in chunks] == ["One two three.\n\nFour\nfive."]


def test_cjk_without_spaces_chunks_within_size_at_sentence_ends():
    text = "".join(documents()["cjk"].sections[0].text.split())
    chunks = chunk(text, size=40, overlap=0)
    assert max(c.tokens for c in chunks) <= 40
    assert "".join(c.text for c in chunks) == text
    ends = sum(c.text[-1] in "。！？" for c in chunks)
    assert ends >= 0.8 * len(chunks)


def test_udhr_in_every_language():
    text = UDHR.read_text(encoding="utf-8")
    document = ParsedDocument(sections=(Section(text),))
    tokenizer = RegexTokenizer()
    chunks = RecursiveChunker().chunk(document, tokenizer=tokenizer, size=64, overlap=8)
    assert max(tokenizer.count([c.text for c in chunks])) <= 64
    locate(document, chunks)


# ------------------------------------------------------------------ real corpora

def test_scifact_abstracts_that_fit_are_one_chunk():
    tokenizer = RegexTokenizer()
    with SCIFACT.open(encoding="utf-8") as f:
        texts = [f"{d['title']}\n\n{d['text']}" for d in map(json.loads, f)][:300]
    counts = tokenizer.count(texts)
    assert min(counts) < 256 < max(counts)
    for text, n in zip(texts, counts):
        chunks = chunk(text, size=256, overlap=32, tokenizer=tokenizer)
        assert max(c.tokens for c in chunks) <= 256
        assert (len(chunks) == 1) == (n <= 256)
        assert len(chunks) <= -(-n // 160)  # chunks hold 160+ new tokens on average


def test_war_and_peace_in_seconds():
    text = WAR_AND_PEACE.read_text(encoding="utf-8")
    tokenizer = RegexTokenizer()
    started = time.perf_counter()
    chunks = RecursiveChunker().chunk(ParsedDocument(sections=(Section(text),)), tokenizer=tokenizer,
                                      size=256, overlap=32)
    elapsed = time.perf_counter() - started
    assert elapsed < 60, f"War and Peace took {elapsed:.1f} s"  # about 2-3 s here; loose for slow CI
    assert max(c.tokens for c in chunks) <= 256
    assert sum(c.tokens for c in chunks) / len(chunks) > 0.75 * 256
