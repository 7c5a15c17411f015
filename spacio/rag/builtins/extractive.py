"""Spacio's embedded generator (entry point ``extractive`` in ``spacio.generators``): no model,
no key. It answers with the passages' own best-matching sentences, each followed by [n].

How an answer is made:

1. Every passage is cut into sentences. Wrapped lines are joined, headings and list items
   stay apart, and a period ends a sentence only before a capital letter, a digit or an
   opening quote, and not after an abbreviation ("e.g.", "et al.", "Dr.", "Fig. 3",
   initials). A passage cut out of a longer text may start or end mid-sentence: such
   fragments count less and are shown with "…". Sentences that address a language model
   ("Ignore previous instructions", "SYSTEM:", "</passage>") are never quoted.
2. Sentences are scored against the question with BM25 (k1 1.2, b 0.75; IDF over all the
   sentences offered, so words every passage shares count little) over light stems:
   one suffix off, then the first 6 letters, so "mammograms" meets "mammography". Stop
   words and question words do not count. Abbreviations a passage defines ("atypical
   antipsychotics (AAPs)") match their long form. A follow-up question borrows the previous
   question's words at a lower weight. Scores are then adjusted: a sentence that reports a
   finding ("found", "showed", "significantly", "compared", ...) x1.5, a question or a
   purpose clause ("To assess the ...") x0.5, a fragment x0.6, plus a small prior for
   passages retrieval ranked higher.
3. The best sentences are picked greedily with maximal marginal relevance: overlapping
   chunks repeat text, so a sentence that repeats one already chosen (or is contained in
   it) is skipped, and one that mostly repeats it is pushed down. Picking stops at
   ``max_sentences``, ``max_chars``, or when the next sentence scores below
   ``min_relative_score`` of the best.
4. The answer keeps the sentences of one passage in their original order, passages in the
   order of their best sentence, and puts the passage's marker at the end of each sentence
   ("claim [2]."). The document's own numeric references ("[12]") are removed from the
   quoted sentences, so every marker in the answer is one of ours.
5. If no sentence shares a word with the question, or the best covers less than
   ``min_coverage`` of the question's weight, the answer says so ("The passages do not state
   this directly; the closest is: ...") and quotes the closest sentences instead of
   pretending. A request for a summary gets the leading sentences of the top passages.

Apart from that lead-in, every word of an answer is quoted from a passage: there are no
rules in this generator that a document could change.

It streams one sentence per piece. Usage counts ``spacio.rag.prompts.estimate_tokens``: the
question and passages it read, and the answer it wrote.

It is CPU work (about 5-10 ms for ten 256-token passages; bench/extractive.py), marked
``cpu_bound = True`` so that ``spacio.rag.answering`` advances it on a real thread, off the
gevent hub. On PubMedQA (bench/extractive.py) it matches the question-blind lead-3
baseline on ROUGE-1 against the abstracts' conclusions with shorter answers, and quotes the
study's results far more often; the constants were chosen on questions the benchmark does
not report.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Prompt, Usage
from spacio.rag.prompts import estimate_tokens, truncate_to_tokens

__all__ = ["ExtractiveGenerator", "ExtractiveGeneratorOptions", "split_sentences"]


class ExtractiveGeneratorOptions(Schema):
    """``SPACIO_PLUGINS__GENERATOR__EXTRACTIVE__<OPTION>``."""

    max_sentences = fields.Integer(load_default=3, validate=validate.Range(1, 20))
    max_chars = fields.Integer(load_default=1000, validate=validate.Range(80, 20_000))
    min_relative_score = fields.Float(load_default=0.35, validate=validate.Range(0.0, 1.0))
    min_coverage = fields.Float(load_default=0.2, validate=validate.Range(0.0, 1.0))


# ----------------------------------------------------------------------------- sentences

# A period after these never ends a sentence ("e.g. Smith", "et al. Nature", "Dr. Who").
_ABBREVIATIONS = frozenset("""
    e.g eg i.e ie al cf vs viz approx ca resp incl esp dr mr mrs ms mssrs prof st jr sr rev
    gen col lt sgt capt gov sen rep inc ltd co corp bros dept univ assn est u.s u.k u.n e.u
    ph.d m.d b.sc m.sc b.a m.a a.m p.m jan feb mar apr jun jul aug sep sept oct nov dec
    mt ft mfg no.s et
""".split())
# ... and these only before a number ("Fig. 3", "p. 12", "No. 5"): "the answer is no. Then".
_NUMBER_ABBREVIATIONS = frozenset("no nos fig figs eq eqs p pp vol vols ch sec art para ref refs tab n".split())

_BOUNDARY = re.compile(r"[.!?…。！？]+[\"'”’)\]]*(?=\s|$)|[。！？]+")
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_BULLET = re.compile(r"^\s*(?:[-*•‣◦▪–]|\d{1,3}[.)]|[a-z][.)]|\(\w{1,3}\))\s+")
_HEADING_MARK = re.compile(r"^\s*#{1,6}\s+")
_TERMINAL = re.compile(r"[.!?…。！？:;][\"'”’)\]]*$")
_SPACES = re.compile(r"\s+")
# the document's own reference markers, removed from quoted sentences: [12], [3, 4], [5-7]
# not an answer: a question, or a purpose clause without a main verb ("To assess the ...")
_NOT_A_STATEMENT = re.compile(r"\?[\"'”’)\]]*$|^(?:To|In order to)\s+[a-z]+\b(?![^.]*\b(?:we|was|were|is|are)\b)")
# text that addresses a language model rather than a reader: never worth quoting as an answer
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+)*(?:previous|prior|above|earlier|"
    r"system|these|those)?\s*(?:instructions|rules|prompts?|directions)\b|"
    r"^\W*(?:system|assistant|developer|user)\s*:|(?-i:\b(?:SYSTEM|ASSISTANT|DEVELOPER)\s*:)|"
    r"<\s*/?\s*(?:passage|system|instructions?)\b|<\|[a-z_]+\|>|"
    r"\byou\s+are\s+now\b|\bnew\s+instructions\b", re.IGNORECASE)
# words left hanging where a chunk boundary cut a sentence: "…and the valve", "steel and…"
_CONNECTIVES = r"(?:and|or|but|nor|so|the|a|an|of|to|in|on|at|by|for|with|from|as|that|which|who|than|is|are|was|were)"
_DANGLING_START = re.compile(r"^(?:(?:and|or|but|nor|so|then|which|that)\s+)+(?=\w)", re.IGNORECASE)
_DANGLING_END = re.compile(rf"(?:[\s,;]+{_CONNECTIVES})+$", re.IGNORECASE)
_DOC_REFERENCE = re.compile(r"\s*\[\s*\d+(?:\s*[-–,;]\s*\d+)*\s*\]")


def _starts_sentence(text: str, at: int) -> bool:
    """Whether what follows position ``at`` (after the whitespace) can start a sentence."""
    rest = text[at:].lstrip()
    for ch in rest[:3]:
        if ch in "\"'“‘([«":
            continue
        return ch.isupper() or ch.isdigit() or not ch.isalpha() and not ch.isspace() and ch not in ",;:)"
    return False


def _abbreviation_before(text: str, end: int, next_text: str) -> bool:
    match = _WORD_BEFORE.search(text, max(0, end - 40), end)
    if not match:
        return False
    word = match.group(1).rstrip(".").lower()
    if not word:
        return False
    if word in _ABBREVIATIONS:
        return True
    if word in _NUMBER_ABBREVIATIONS and next_text.lstrip()[:1].isdigit():
        return True
    token = match.group(1).rstrip(".")
    # initials ("J. Smith", "U.S.A."): one capital letter, or letter.letter sequences
    return (len(token) == 1 and token.isupper()) or bool(re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", token))


def _split_block(block: str) -> list[str]:
    sentences, start = [], 0
    for match in _BOUNDARY.finditer(block):
        end = match.end()
        mark = match.group(0)
        if mark[0] in "。！？":
            pass  # CJK full stops end a sentence with or without a space
        elif end >= len(block):
            break
        elif not _starts_sentence(block, end):
            continue
        elif mark.startswith(".") and not mark.startswith("..") and \
                _abbreviation_before(block, match.start(), block[end:]):
            continue
        piece = block[start:end].strip()
        if piece:
            sentences.append(piece)
        start = end
    tail = block[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def _blocks(text: str) -> list[tuple[str, bool]]:
    """(block, is_heading): paragraphs with wrapped lines joined; list items, headings and
    table-like short lines stay blocks of their own."""
    blocks: list[tuple[str, bool]] = []
    current: list[str] = []

    def flush():
        if current:
            blocks.append((" ".join(current), False))
            current.clear()

    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if not line:
            flush()
            continue
        if _HEADING_MARK.match(line):
            flush()
            blocks.append((_HEADING_MARK.sub("", line), True))
            continue
        if _BULLET.match(line):
            flush()
        current.append(line)
        following = lines[i + 1].strip() if i + 1 < len(lines) else ""
        short = len(line.split()) <= 8
        label_like = not following or following[:1].isupper() or _BULLET.match(following)
        if not _TERMINAL.search(line) and short and label_like:
            # a short line without an end mark, before a capitalised line: a heading or a label
            if len(current) == 1:
                blocks.append((line, not _BULLET.match(line)))
                current.clear()
            else:
                flush()
        elif _TERMINAL.search(line) and (not following or _BULLET.match(following)):
            flush()
    flush()
    return blocks


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` (headings included), whitespace collapsed."""
    return [_SPACES.sub(" ", s) for block, _ in _blocks(text) for s in _split_block(block)]


# ----------------------------------------------------------------------------- terms

_STOPWORDS = frozenset("""
    a about above after again against all am an and any are aren't as at be because been before being
    below between both but by can cannot could couldn't did didn't do does doesn't doing don't down
    during each few for from further had hadn't has hasn't have haven't having he her here hers herself
    him himself his how i if in into is isn't it its itself just let me more most my myself no nor not
    of off on once only or other ought our ours ourselves out over own same she should shouldn't so some
    such than that the their theirs them themselves then there these they this those through to too
    under until up very was wasn't we were weren't what when where which while who whom whose why will
    with won't would wouldn't you your yours yourself yourselves also may might must shall us via per
    within without upon whether among amongst yet still however thus therefore although though
    tell know explain describe give list show say says said according document documents passage passages
    please much many way ways thing things anything something use used using one two get got
    s t d ll m re ve
""".split())
_SUMMARY_WORDS = frozenset("summarize summarise summary summaries overview gist tldr outline recap main points".split())
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
_SUFFIXES = (
    ("ational", "ate"), ("ization", "ize"), ("isation", "ize"), ("fulness", "ful"), ("iveness", "ive"),
    ("ousness", "ous"), ("ations", "ate"), ("ation", "ate"), ("ements", ""), ("ement", ""), ("ments", ""),
    ("ment", ""), ("ities", ""), ("ity", ""), ("ingly", ""), ("edly", ""), ("ings", ""), ("ing", ""),
    ("ies", "y"), ("ied", "y"), ("sses", "ss"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("ness", ""),
    ("ly", ""), ("ed", ""), ("s", ""),
)
STEM_LENGTH = 6
# words that mark a finding, a conclusion or a cause, in any kind of document
_FINDING_WORDS = """found find finds shows showed shown demonstrated demonstrates indicate indicates indicated
    suggest suggests suggested concluded conclude conclusion results resulted revealed reveals significant
    significantly associated caused causes leads led increased decreased reduced improved higher lower less
    compared""".split()


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """A light English stem: one inflectional or derivational suffix off, a doubled final
    consonant undoubled, then the first ``STEM_LENGTH`` characters. Not Porter, but it
    makes "screening"/"screened", "mammograms"/"mammography", "treatment"/"treated" meet."""
    if len(word) <= 3 or not word.isalpha():
        return word
    for suffix, replacement in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                break
            word = word[: -len(suffix)] + replacement
            if suffix in ("ing", "ed", "ings", "edly", "ingly") and len(word) > 3 and word[-1] == word[-2] \
                    and word[-1] not in "lsz":
                word = word[:-1]
            break
    return word[:STEM_LENGTH]


def terms(text: str) -> list[str]:
    words = (w.lower().replace("’", "'").removesuffix("'s") for w in _WORD.findall(text))
    return [stem(w) for w in words if w not in _STOPWORDS and not (len(w) == 1 and w.isalpha())]


_FINDING_STEMS = frozenset(stem(w) for w in _FINDING_WORDS)
_DEFINITION = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]{1,9})\s*\)")
_WORDS_BEFORE = re.compile(r"[^\W\d_][\w'’]*")


def abbreviations(text: str) -> dict[str, list[str]]:
    """Abbreviations the text defines, "atypical antipsychotics (AAPs)" -> {"AAP": [stems of
    "atypical antipsychotics"]}: the long form is the shortest run of words before the
    parenthesis whose initials spell the abbreviation's letters in order (Schwartz & Hearst,
    simplified), so a question that spells a term out meets sentences that abbreviate it.
    Keys keep their case: only "AGE"/"AGEs" written so is the abbreviation, never "age"."""
    found: dict[str, list[str]] = {}
    for match in _DEFINITION.finditer(text):
        short = match.group(1)
        if len(short) > 2 and short.endswith("s") and short[:-1].isupper():
            short = short[:-1]  # a plural: AAPs
        letters = [c.lower() for c in short if c.isalpha()]
        if len(letters) < 2 or sum(c.isupper() for c in short) < 2:
            continue
        words = _WORDS_BEFORE.findall(text, max(0, match.start() - 120), match.start())[-(len(letters) + 2):]
        if not words:
            continue
        for size in range(max(1, len(letters) - 1), min(len(words), len(letters) + 2) + 1):
            span = words[-size:]
            if span[0][:1].lower() == letters[0] and _subsequence(letters, "".join(w.lower() for w in span)):
                long_terms = terms(" ".join(span))
                if long_terms:
                    found.setdefault(short, long_terms)
                break
    return found


def _subsequence(letters: list[str], text: str) -> bool:
    at = 0
    for c in letters:
        at = text.find(c, at)
        if at < 0:
            return False
        at += 1
    return True


# ----------------------------------------------------------------------------- the generator

@dataclass
class _Sentence:
    text: str
    passage: int  # index in prompt.passages
    position: int  # index in its passage
    terms: list[str]
    heading: bool = False
    cut_start: bool = False  # the passage starts inside this sentence
    cut_end: bool = False  # the passage ends inside it
    score: float = 0.0
    coverage: float = 0.0
    vocab: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Selection:
    """What the generator chose, before it is written out (for tests and benchmarks)."""

    sentences: tuple  # of _Sentence, in answer order
    direct: bool  # a sentence shares enough of the question's words


class ExtractiveGenerator:
    """Answers with the passages' best-matching sentences, each followed by its [n]."""

    options_schema = ExtractiveGeneratorOptions
    cpu_bound = True  # spacio.rag.answering advances it on a real thread

    K1, B = 1.2, 0.75
    RANK_PRIOR = 0.1  # bonus of the top passage's sentences, relative to the best score
    FRAGMENT_FACTOR = 0.6  # a sentence cut by the chunk boundary counts this much
    REDUNDANCY = 0.5  # MMR: how much similarity to a chosen sentence costs
    DUPLICATE = 0.75  # word-set similarity (or containment) at which a sentence is a repeat
    HISTORY_WEIGHT = 0.35  # the previous question's words, in a follow-up
    FINDING_FACTOR = 1.5  # a sentence that reports a finding or a conclusion counts this much more
    NON_STATEMENT_FACTOR = 0.5  # a question, or a "To assess ..." purpose clause, counts this much

    LEAD_IN_INDIRECT = "The passages do not state this directly; the closest is:"
    NO_PASSAGES = "There are no passages to answer from."

    def __init__(self, *, max_sentences: int = 3, max_chars: int = 1000, min_relative_score: float = 0.35,
                 min_coverage: float = 0.2) -> None:
        if max_sentences < 1 or max_chars < 1:
            raise ValueError("max_sentences and max_chars must be positive")
        self.max_sentences = max_sentences
        self.max_chars = max_chars
        self.min_relative_score = min_relative_score
        self.min_coverage = min_coverage

    def __repr__(self) -> str:
        return (f"ExtractiveGenerator(max_sentences={self.max_sentences}, max_chars={self.max_chars}, "
                f"min_relative_score={self.min_relative_score}, min_coverage={self.min_coverage})")

    # -------------------------------------------------------------- contract

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]:
        read = estimate_tokens(prompt.question) + sum(estimate_tokens(p.text) for p in prompt.passages)
        written = 0
        for piece in self.pieces(prompt):
            written += estimate_tokens(piece)
            yield piece
        yield Usage(prompt_tokens=read, completion_tokens=written)

    # -------------------------------------------------------------- the answer

    def pieces(self, prompt: Prompt) -> list[str]:
        """The answer as streamed: an optional lead-in, then one sentence per piece."""
        if not prompt.passages:
            return [self.NO_PASSAGES]
        chosen = self.select(prompt)
        if not chosen.sentences:
            return [self.NO_PASSAGES]
        out = [] if chosen.direct else [self.LEAD_IN_INDIRECT]
        budget = prompt.max_tokens
        for sentence in chosen.sentences:
            text = self._render(sentence, prompt.passages[sentence.passage].n, self.max_chars)
            if budget is not None:
                cost = estimate_tokens(text)
                if cost > budget:
                    if len(out) == (0 if chosen.direct else 1):  # nothing said yet: say a part of it
                        out.append(truncate_to_tokens(text, max(1, budget - 1)) + "…")
                    break
                budget -= cost
            out.append(text)
        return [piece if i == 0 else " " + piece for i, piece in enumerate(out)]

    @staticmethod
    def _render(sentence: _Sentence, n: int, max_chars: int) -> str:
        text = _DOC_REFERENCE.sub("", sentence.text).strip()
        cut_end = sentence.cut_end
        if len(text) > max_chars:  # a table row or a run-on line: its start
            text = text[:max_chars]
            text, cut_end = (text[: text.rfind(" ")] if " " in text[max_chars // 2:] else text), True
        if sentence.cut_start:
            text = "…" + _DANGLING_START.sub("", text.lstrip(",;:)-– "))
        if cut_end:
            text = _DANGLING_END.sub("", text.rstrip(",;:(-– ")).rstrip(",;:(-– ") + "…"
        match = re.search(r"([.!?。！？])([\"'”’)\]]*)$", text)
        if match and match.group(1) == ".":  # "claim [1]." rather than "claim. [1]"
            return f"{text[:match.start()].rstrip()} [{n}]{match.group(1)}{match.group(2)}"
        return f"{text} [{n}]"

    def select(self, prompt: Prompt) -> Selection:
        sentences, defined = self._sentences(prompt)
        sentences = [s for s in sentences if not _INJECTION.search(s.text)]
        candidates = [s for s in sentences if not s.heading and len(s.terms) >= 2] or \
            [s for s in sentences if s.terms]
        if not candidates:
            return Selection((), False)
        weights = self._question_weights(prompt, defined)
        if self._wants_summary(prompt.question, weights):
            return Selection(tuple(self._summary(candidates, len(prompt.passages))), True)
        self._score(candidates, weights)
        best = max(candidates, key=lambda s: s.score)
        if best.score <= 0:
            return Selection(tuple(self._closest(candidates)), False)
        direct = best.coverage >= self.min_coverage
        picked = self._pick(candidates, best.score)
        return Selection(tuple(self._order(picked)), direct)

    # -------------------------------------------------------------- steps

    def _sentences(self, prompt: Prompt) -> tuple[list[_Sentence], dict[str, list[str]]]:
        out = []
        for index, passage in enumerate(prompt.passages):
            blocks = _blocks(passage.text)
            position = 0
            for b, (block, heading) in enumerate(blocks):
                parts = _split_block(block)
                for i, part in enumerate(parts):
                    text = _SPACES.sub(" ", part)
                    first_letter = next((ch for ch in text if ch.isalpha()), "")
                    out.append(_Sentence(
                        text=text, passage=index, position=position, terms=terms(text), heading=heading,
                        cut_start=b == 0 and i == 0 and (first_letter.islower() or text[:1] in ",;:)"),
                        cut_end=b == len(blocks) - 1 and i == len(parts) - 1 and not heading
                        and not _TERMINAL.search(text)))
                    position += 1
        defined: dict[str, list[str]] = {}
        for passage in prompt.passages:
            for short, long_terms in abbreviations(passage.text).items():
                defined.setdefault(short, long_terms)
        pattern = _abbreviation_pattern(defined) if defined else None
        for s in out:
            s.terms = _expand(s.text, s.terms, defined, pattern)
            s.vocab = frozenset(s.terms)
        return out, defined

    def _question_weights(self, prompt: Prompt, defined: dict[str, list[str]]) -> dict[str, float]:
        weights = {t: 1.0 for t in _expand(prompt.question, terms(prompt.question), defined)}
        previous = next((t.content for t in reversed(prompt.history) if t.role == "user"), None)
        if previous:
            for t in terms(previous):
                weights.setdefault(t, self.HISTORY_WEIGHT)
        return weights

    @staticmethod
    def _wants_summary(question: str, weights: dict[str, float]) -> bool:
        words = {w.lower() for w in _WORD.findall(question)}
        return bool(words & _SUMMARY_WORDS) and len([t for t, w in weights.items() if w == 1.0]) <= 3

    def _score(self, sentences: list[_Sentence], weights: dict[str, float]) -> None:
        n = len(sentences)
        df = Counter(t for s in sentences for t in s.vocab)
        idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in weights}
        total = sum(idf[t] * w for t, w in weights.items()) or 1.0
        average = sum(len(s.terms) for s in sentences) / n or 1.0
        for s in sentences:
            tf = Counter(t for t in s.terms if t in weights)
            if not tf:
                continue
            norm = self.K1 * (1 - self.B + self.B * len(s.terms) / average)
            s.score = sum(idf[t] * w * tf[t] * (self.K1 + 1) / (tf[t] + norm) for t, w in weights.items() if t in tf)
            s.coverage = sum(idf[t] * w for t, w in weights.items() if t in tf) / total
        top = max(s.score for s in sentences)
        if top <= 0:
            return
        for s in sentences:
            if s.score > 0:
                s.score /= top
                if s.cut_start or s.cut_end:
                    s.score *= self.FRAGMENT_FACTOR
                if _NOT_A_STATEMENT.search(s.text):
                    s.score *= self.NON_STATEMENT_FACTOR
                elif s.vocab & _FINDING_STEMS:
                    s.score *= self.FINDING_FACTOR
                s.score += self.RANK_PRIOR / (1 + s.passage)

    def _pick(self, candidates: list[_Sentence], best: float) -> list[_Sentence]:
        pool = sorted((s for s in candidates if s.score >= self.min_relative_score * best),
                      key=lambda s: (-s.score, s.passage, s.position))
        picked: list[_Sentence] = []
        chars = 0
        while pool and len(picked) < self.max_sentences:
            def value(s):
                return s.score - self.REDUNDANCY * best * max((_similarity(s, p) for p in picked), default=0.0)

            choice = max(pool, key=value)
            pool.remove(choice)
            if any(_repeats(choice, p) for p in picked) or value(choice) < self.min_relative_score * best:
                continue
            if picked and chars + len(choice.text) > self.max_chars:
                continue
            picked.append(choice)
            chars += len(choice.text)
        return picked

    @staticmethod
    def _order(picked: list[_Sentence]) -> list[_Sentence]:
        """Passages in the order of their best sentence; a passage's sentences in text order."""
        rank = {}
        for s in picked:
            rank.setdefault(s.passage, len(rank))
        return sorted(picked, key=lambda s: (rank[s.passage], s.position))

    def _closest(self, candidates: list[_Sentence]) -> list[_Sentence]:
        """No sentence shares a word with the question: the top passage's first complete
        sentences, as the closest thing retrieval found."""
        top = min(s.passage for s in candidates)
        own = [s for s in candidates if s.passage == top]
        whole = [s for s in own if not (s.cut_start or s.cut_end)] or own
        picked, chars = [], 0
        for s in whole[:2]:
            if picked and chars + len(s.text) > self.max_chars:
                break
            picked.append(s)
            chars += len(s.text)
        return picked

    def _summary(self, candidates: list[_Sentence], passages: int) -> list[_Sentence]:
        """The first complete sentence of each of the top passages, skipping repeats."""
        picked, chars = [], 0
        for index in range(passages):
            own = [s for s in candidates if s.passage == index and not (s.cut_start or s.cut_end)]
            if not own or any(_repeats(own[0], p) for p in picked):
                continue
            if picked and chars + len(own[0].text) > self.max_chars:
                break
            picked.append(own[0])
            chars += len(own[0].text)
            if len(picked) >= self.max_sentences:
                break
        return picked or candidates[:1]


def _expand(text: str, words: list[str], defined: dict[str, list[str]],
            pattern: re.Pattern | None = None) -> list[str]:
    """The long forms of the abbreviations ``text`` uses added to its terms."""
    if not defined:
        return words
    pattern = pattern or _abbreviation_pattern(defined)
    extra = [t for short in dict.fromkeys(pattern.findall(text)) for t in defined[short] if t not in words]
    return words + extra if extra else words


def _abbreviation_pattern(defined: dict[str, list[str]]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(map(re.escape, sorted(defined, key=len, reverse=True))) + r")s?\b")


def _similarity(a: _Sentence, b: _Sentence) -> float:
    if not a.vocab or not b.vocab:
        return 0.0
    return len(a.vocab & b.vocab) / len(a.vocab | b.vocab)


def _repeats(a: _Sentence, b: _Sentence) -> bool:
    """A near copy: the same words, or one sentence's words nearly all inside the other's
    (a fragment of a sentence cut by a chunk boundary)."""
    if not a.vocab or not b.vocab:
        return a.text == b.text
    common = len(a.vocab & b.vocab)
    return common / len(a.vocab | b.vocab) >= ExtractiveGenerator.DUPLICATE or \
        common / min(len(a.vocab), len(b.vocab)) >= 0.9
