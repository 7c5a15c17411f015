"""The behaviour every ``spacio.vector_stores`` plugin must have, as a pytest test class.

Subclass it in your plugin's tests and provide a ``vector_store`` fixture (a store ready
to use; it may be shared between tests, because every test works in fresh namespaces)::

    import pytest
    from spacio.testing.contracts.vector_store import VectorStoreContract

    class TestMyStore(VectorStoreContract):
        @pytest.fixture
        def vector_store(self):
            store = MyVectorStore(url=...)
            yield store
            store.close()

Optional fixtures you may override:

- ``dimensions`` (default 8): the vector size used by the tests.
- ``namespace``: a namespace name nobody used before (default: a random UUID string, the
  same shape as a space id). Namespaces the suite creates are dropped after each test.

Class attribute ``crowd_size`` (default 400) is how many records the "small namespace
next to a large one" test puts in the large one; raise it in a store-specific test.

Only the public contract (``spacio.rag.contracts``) is used here, and vectors are plain
lists of floats, so the suite runs against any store, embedded or remote.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping

import pytest

from spacio.rag.contracts import Hit, VectorRecord, VectorStore

# Distinct, ordinary English sentences: keyword search must rank by the rare words.
SENTENCES = [
    "The committee reviewed the annual budget and approved the new library building.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "The river flooded the valley after three days of heavy autumn rain.",
    "Our quarterly report shows revenue growth in the northern sales region.",
    "Volcanic eruptions can cool the global climate for several years.",
    "The orchestra rehearsed the symphony twice before the opening concert.",
    "Engineers inspected the suspension bridge for corrosion and fatigue cracks.",
    "A balanced diet includes vegetables, grains, protein and healthy fats.",
    "The museum opened an exhibition of medieval maps and navigation tools.",
    "Glaciers retreat when summer melting exceeds winter snowfall.",
    "The software release fixed a memory leak in the image decoder.",
    "Migratory birds follow the coastline on their journey south.",
]
RARE_WORD = "zymurgy"  # appears in exactly one record of the keyword tests


def unit(values):
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def basis(dimensions, axis, noise=0.0, seed=0):
    """A unit vector close to the ``axis``-th basis vector (cosine ≈ 1 - noise²/2)."""
    rng = random.Random(seed * 7919 + axis)
    values = [rng.gauss(0.0, noise) if noise else 0.0 for _ in range(dimensions)]
    values[axis % dimensions] += 1.0
    return unit(values)


def random_vector(dimensions, rng):
    return unit([rng.gauss(0.0, 1.0) for _ in range(dimensions)])


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b))


def record(document_id, ordinal, vector, text=None, page=None, metadata=None):
    """A record with the id the host gives it: a UUID stable for (document_id, ordinal)."""
    return VectorRecord(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}:{ordinal}")),
        document_id=document_id,
        ordinal=ordinal,
        text=text if text is not None else SENTENCES[ordinal % len(SENTENCES)],
        vector=vector,
        page=page,
        metadata=metadata or {},
    )


def random_records(document_id, count, dimensions, seed=0, start=0):
    rng = random.Random(f"{document_id}:{seed}")
    return [record(document_id, start + i, random_vector(dimensions, rng)) for i in range(count)]


def new_document_id():
    return str(uuid.uuid4())


class VectorStoreContract:
    """Subclass with a ``vector_store`` fixture; every ``test_*`` here then runs against it."""

    crowd_size = 400

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def dimensions(self):
        return 8

    @pytest.fixture
    def new_namespace(self, vector_store):
        """Factory of fresh namespace names; every one it hands out is dropped afterwards."""
        created = []

        def make():
            name = str(uuid.uuid4())
            created.append(name)
            return name

        yield make
        for name in created:
            vector_store.drop_namespace(name)

    @pytest.fixture
    def namespace(self, new_namespace):
        return new_namespace()

    @pytest.fixture
    def keywords(self, vector_store):
        """Whether the store has keyword search (``keyword_search``; default True). A store
        without it is never given text: keyword-only tests skip, mixed ones check vectors only."""
        return getattr(vector_store, "keyword_search", True)

    @pytest.fixture
    def needs_keywords(self, keywords):
        if not keywords:
            pytest.skip("the store has no keyword search (keyword_search = False): the host answers keyword and "
                        "hybrid searches from its vectors")

    @staticmethod
    def modes(keywords, vector, text):
        """The search arguments a test runs in every mode the store has."""
        found = [{"vector": vector}]
        return found + [{"text": text}, {"vector": vector, "text": text}] if keywords else found

    @pytest.fixture
    def store(self, vector_store, namespace, dimensions):
        """``vector_store`` with ``namespace`` ensured: the state most tests start from."""
        vector_store.ensure_namespace(namespace, dimensions)
        return vector_store

    # ------------------------------------------------------------------ shape

    def test_implements_the_protocol(self, vector_store):
        assert isinstance(vector_store, VectorStore)

    def test_ensure_namespace_is_idempotent(self, vector_store, namespace, dimensions):
        vector_store.ensure_namespace(namespace, dimensions)
        vector_store.ensure_namespace(namespace, dimensions)
        assert vector_store.count(namespace) == 0

    def test_empty_namespace_returns_nothing(self, store, namespace, dimensions, keywords):
        for kwargs in self.modes(keywords, basis(dimensions, 0), "budget library"):
            assert store.search(namespace, limit=5, **kwargs) == [], kwargs
        assert store.count(namespace) == 0
        assert store.count(namespace, document_id=new_document_id()) == 0

    def test_unknown_namespace_reads_as_empty_and_drops_quietly(self, vector_store, new_namespace, dimensions,
                                                                keywords):
        never_created = new_namespace()
        assert vector_store.count(never_created) == 0
        for kwargs in self.modes(keywords, basis(dimensions, 0), "budget"):
            assert vector_store.search(never_created, limit=3, **kwargs) == [], kwargs
        vector_store.delete_document(never_created, new_document_id())
        vector_store.drop_namespace(never_created)

    # ------------------------------------------------------------------ writes

    def test_upsert_then_count(self, store, namespace, dimensions):
        first, second = new_document_id(), new_document_id()
        store.upsert(namespace, random_records(first, 5, dimensions))
        store.upsert(namespace, random_records(second, 3, dimensions))
        assert store.count(namespace) == 8
        assert store.count(namespace, document_id=first) == 5
        assert store.count(namespace, document_id=second) == 3
        assert store.count(namespace, document_id=new_document_id()) == 0

    def test_upsert_of_nothing_is_a_no_op(self, store, namespace):
        store.upsert(namespace, [])
        assert store.count(namespace) == 0

    def test_upsert_twice_keeps_one_copy_and_the_new_content(self, store, namespace, dimensions, keywords):
        document = new_document_id()
        records = random_records(document, 6, dimensions)
        store.upsert(namespace, records)
        replaced = [record(r.document_id, r.ordinal, basis(dimensions, 1), text=f"rewritten {RARE_WORD} text")
                    if r.ordinal == 2 else r for r in records]
        store.upsert(namespace, replaced)
        assert store.count(namespace) == 6
        hits = store.search(namespace, vector=basis(dimensions, 1), limit=1)
        assert [h.id for h in hits] == [records[2].id]
        assert hits[0].text == f"rewritten {RARE_WORD} text"
        if keywords:
            keyword = store.search(namespace, text=RARE_WORD, limit=10)
            assert [h.id for h in keyword] == [records[2].id]

    def test_large_batch(self, store, namespace, dimensions):
        document = new_document_id()
        store.upsert(namespace, random_records(document, 300, dimensions))
        assert store.count(namespace) == 300
        assert store.count(namespace, document_id=document) == 300

    # ------------------------------------------------------------------ vector search

    def test_vector_search_ranks_nearest_first_by_cosine(self, store, namespace, dimensions):
        document = new_document_id()
        records = random_records(document, 20, dimensions, seed=1)
        store.upsert(namespace, records)
        target = records[7]
        hits = store.search(namespace, vector=target.vector, limit=5)
        assert len(hits) == 5
        assert all(isinstance(h, Hit) for h in hits)
        assert hits[0].id == target.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        expected = sorted(records, key=lambda r: cosine(r.vector, target.vector), reverse=True)[:5]
        assert [h.id for h in hits] == [r.id for r in expected]
        for hit, want in zip(hits, expected):
            assert hit.score == pytest.approx(cosine(want.vector, target.vector), abs=1e-3)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    def test_vector_score_is_cosine_similarity(self, store, namespace, dimensions):
        document = new_document_id()
        halfway = unit([1.0, 1.0] + [0.0] * (dimensions - 2))
        opposite = unit([-1.0] + [0.0] * (dimensions - 1))
        store.upsert(namespace, [record(document, 0, halfway), record(document, 1, opposite)])
        hits = store.search(namespace, vector=basis(dimensions, 0), limit=2)
        assert [h.ordinal for h in hits] == [0, 1]
        assert hits[0].score == pytest.approx(math.sqrt(0.5), abs=1e-3)
        assert hits[1].score == pytest.approx(-1.0, abs=1e-3)

    def test_vector_search_accepts_any_float_sequence(self, store, namespace, dimensions):
        document = new_document_id()
        store.upsert(namespace, [record(document, 0, tuple(basis(dimensions, 3)))])
        hits = store.search(namespace, vector=tuple(basis(dimensions, 3)), limit=1)
        assert [h.ordinal for h in hits] == [0]

    def test_limit_is_respected_and_filled(self, store, namespace, dimensions):
        document = new_document_id()
        store.upsert(namespace, random_records(document, 25, dimensions))
        query = basis(dimensions, 2)
        assert len(store.search(namespace, vector=query, limit=1)) == 1
        assert len(store.search(namespace, vector=query, limit=10)) == 10
        assert len(store.search(namespace, vector=query, limit=25)) == 25
        everything = store.search(namespace, vector=query, limit=100)
        assert len(everything) == 25
        assert len({h.id for h in everything}) == 25

    def test_small_namespace_next_to_a_large_one_fills_the_limit(self, vector_store, new_namespace, dimensions):
        crowded, small = new_namespace(), new_namespace()
        vector_store.ensure_namespace(crowded, dimensions)
        vector_store.ensure_namespace(small, dimensions)
        rng = random.Random(5)
        # the crowd sits right next to the query; the small namespace is far away from it
        crowd_documents = [new_document_id() for _ in range(self.crowd_size // 50 + 1)]
        crowd = [record(crowd_documents[i // 50], i, unit([v + 3.0 * (j == 0) for j, v in enumerate(
            random_vector(dimensions, rng))])) for i in range(self.crowd_size)]
        for start in range(0, len(crowd), 500):
            vector_store.upsert(crowded, crowd[start:start + 500])
        own = random_records(new_document_id(), 12, dimensions, seed=9)
        vector_store.upsert(small, own)
        hits = vector_store.search(small, vector=basis(dimensions, 0), limit=10)
        assert len(hits) == 10
        expected = sorted(own, key=lambda r: cosine(r.vector, basis(dimensions, 0)), reverse=True)[:10]
        assert [h.id for h in hits] == [r.id for r in expected]

    # ------------------------------------------------------------------ keyword search

    def _keyword_corpus(self, store, namespace, dimensions):
        document = new_document_id()
        records = [record(document, i, basis(dimensions, i, noise=0.3, seed=2)) for i in range(len(SENTENCES))]
        rare = record(document, len(SENTENCES), basis(dimensions, 5, noise=0.3, seed=3),
                      text=f"Home brewing and {RARE_WORD}: the chemistry of fermentation in beer.")
        store.upsert(namespace, records + [rare])
        return records, rare

    def test_keyword_search_finds_the_only_record_with_a_word(self, store, namespace, dimensions, needs_keywords):
        _, rare = self._keyword_corpus(store, namespace, dimensions)
        hits = store.search(namespace, text=RARE_WORD, limit=5)
        assert hits and hits[0].id == rare.id
        assert [h.id for h in hits] == [rare.id]  # nothing else contains the word
        assert hits[0].text == rare.text

    def test_keyword_search_answers_a_natural_language_question(self, store, namespace, dimensions, needs_keywords):
        """Questions contain words no record has: the query is an OR of terms, not an AND."""
        records, rare = self._keyword_corpus(store, namespace, dimensions)
        hits = store.search(namespace, text=f"What does the handbook say about {RARE_WORD.capitalize()}?", limit=5)
        assert hits and hits[0].id == rare.id
        hits = store.search(namespace, text="Why did the valley flood after the rain?", limit=3)
        assert hits and hits[0].id == records[2].id

    def test_keyword_search_ranks_the_best_match_first(self, store, namespace, dimensions, needs_keywords):
        records, _ = self._keyword_corpus(store, namespace, dimensions)
        hits = store.search(namespace, text="glaciers melting snowfall", limit=3)
        assert hits[0].id == records[9].id
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    @pytest.mark.parametrize("query", [
        '"foo* OR (', "budget AND (library", "NOT", "a:b c*d", "-", "''", '"', "'; DROP TABLE x; --",
        "!&|<->():*", "NEAR(budget library)", "^col:budget", "\\", "\x00nul", "", "   ", "?!.,", "the of and",
        "budget & | ! library", "{budget} [library]", "100% \"quoted\" 'single'",
    ])
    def test_keyword_query_syntax_characters_never_error(self, store, namespace, dimensions, query, needs_keywords):
        self._keyword_corpus(store, namespace, dimensions)
        hits = store.search(namespace, text=query, limit=5)
        assert isinstance(hits, list)
        assert len(hits) <= 5
        hybrid = store.search(namespace, text=query, vector=basis(dimensions, 0), limit=5)
        assert len(hybrid) == 5  # the vector side still answers

    def test_keyword_search_with_operators_in_text_still_matches_words(self, store, namespace, dimensions, needs_keywords):
        _, rare = self._keyword_corpus(store, namespace, dimensions)
        hits = store.search(namespace, text=f'"{RARE_WORD}* OR (', limit=5)
        assert hits and hits[0].id == rare.id

    # ------------------------------------------------------------------ hybrid

    def test_hybrid_search_returns_the_union_ranked_sensibly(self, store, namespace, dimensions, needs_keywords):
        document = new_document_id()
        query_vector = basis(dimensions, 0)
        both = record(document, 0, basis(dimensions, 0, noise=0.05, seed=4), text=f"A note on {RARE_WORD} and yeast.")
        vector_only = record(document, 1, basis(dimensions, 0, noise=0.1, seed=5), text="Stars form in nebulae.")
        keyword_only = record(document, 2, basis(dimensions, 4), text=f"The history of {RARE_WORD} in monasteries.")
        filler = [record(document, 3 + i, basis(dimensions, 1 + i % 3, noise=0.2, seed=6 + i),
                         text=SENTENCES[i]) for i in range(8)]
        store.upsert(namespace, [both, vector_only, keyword_only, *filler])
        hits = store.search(namespace, vector=query_vector, text=RARE_WORD, limit=5)
        ids = [h.id for h in hits]
        assert len(hits) == 5
        assert ids[0] == both.id  # first in both lists
        assert vector_only.id in ids[:3] and keyword_only.id in ids[:3]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert len(set(ids)) == len(ids)

    def test_hybrid_search_fills_the_limit_from_the_vector_side(self, store, namespace, dimensions, needs_keywords):
        document = new_document_id()
        store.upsert(namespace, random_records(document, 15, dimensions))
        hits = store.search(namespace, vector=basis(dimensions, 0), text=RARE_WORD, limit=10)
        assert len(hits) == 10

    # ------------------------------------------------------------------ filters

    def test_document_ids_filter_in_every_mode(self, store, namespace, dimensions, keywords):
        first, second, third = new_document_id(), new_document_id(), new_document_id()
        texts = [f"{RARE_WORD} notes part {i}" for i in range(6)]
        for document, seed in ((first, 1), (second, 2), (third, 3)):
            rng = random.Random(seed)
            store.upsert(namespace, [record(document, i, random_vector(dimensions, rng), text=texts[i])
                                     for i in range(6)])
        wanted = {first, third}
        query = basis(dimensions, 0)
        for kwargs in self.modes(keywords, query, RARE_WORD):
            hits = store.search(namespace, limit=8, document_ids=[first, third], **kwargs)
            assert len(hits) == 8, kwargs
            assert {h.document_id for h in hits} <= wanted, kwargs
            only = store.search(namespace, limit=20, document_ids=[second], **kwargs)
            assert len(only) == 6 and {h.document_id for h in only} == {second}, kwargs
            none = store.search(namespace, limit=5, document_ids=[new_document_id()], **kwargs)
            assert none == [], kwargs

    # ------------------------------------------------------------------ deletes

    def test_delete_document_removes_only_that_document(self, store, namespace, dimensions, keywords):
        gone, kept = new_document_id(), new_document_id()
        store.upsert(namespace, random_records(gone, 4, dimensions, seed=1))
        store.upsert(namespace, [record(kept, i, r.vector, text=f"{RARE_WORD} {i}")
                                 for i, r in enumerate(random_records(kept, 3, dimensions, seed=2))])
        store.upsert(namespace, [record(gone, 9, basis(dimensions, 0), text=f"{RARE_WORD} gone")])
        store.delete_document(namespace, gone)
        assert store.count(namespace, document_id=gone) == 0
        assert store.count(namespace, document_id=kept) == 3
        assert store.count(namespace) == 3
        for kwargs in self.modes(keywords, basis(dimensions, 0), RARE_WORD):
            hits = store.search(namespace, limit=10, **kwargs)
            assert {h.document_id for h in hits} == {kept}, kwargs
        store.delete_document(namespace, gone)  # twice is fine
        assert store.count(namespace) == 3

    def test_drop_namespace_removes_it_and_nothing_else(self, vector_store, new_namespace, dimensions):
        dropped, kept = new_namespace(), new_namespace()
        for name in (dropped, kept):
            vector_store.ensure_namespace(name, dimensions)
            vector_store.upsert(name, random_records(new_document_id(), 5, dimensions, seed=len(name)))
        vector_store.drop_namespace(dropped)
        assert vector_store.count(dropped) == 0
        assert vector_store.search(dropped, vector=basis(dimensions, 0), limit=5) == []
        assert vector_store.count(kept) == 5
        assert len(vector_store.search(kept, vector=basis(dimensions, 0), limit=5)) == 5
        # the name can be used again
        vector_store.ensure_namespace(dropped, dimensions)
        vector_store.upsert(dropped, random_records(new_document_id(), 2, dimensions))
        assert vector_store.count(dropped) == 2

    def test_namespaces_are_isolated(self, vector_store, new_namespace, dimensions, keywords):
        a, b = new_namespace(), new_namespace()
        vector_store.ensure_namespace(a, dimensions)
        vector_store.ensure_namespace(b, dimensions)
        in_a = random_records(new_document_id(), 5, dimensions, seed=1)
        b_document = new_document_id()
        in_b = [record(b_document, 0, basis(dimensions, 0), text=f"only b knows {RARE_WORD}")]
        vector_store.upsert(a, in_a)
        vector_store.upsert(b, in_b)
        a_ids = {r.id for r in in_a}
        for kwargs in self.modes(keywords, basis(dimensions, 0), RARE_WORD):
            hits = vector_store.search(a, limit=10, **kwargs)
            assert {h.id for h in hits} <= a_ids, kwargs
        if keywords:
            assert vector_store.search(a, text=RARE_WORD, limit=10) == []
        assert vector_store.search(a, vector=basis(dimensions, 0), limit=10, document_ids=[b_document]) == []
        assert vector_store.count(a, document_id=b_document) == 0
        vector_store.delete_document(a, b_document)
        assert vector_store.count(b) == 1

    # ------------------------------------------------------------------ round trips

    def test_unicode_text_round_trips_and_is_searchable(self, store, namespace, dimensions, keywords):
        document = new_document_id()
        text = "Grüße aus Zürich — 東京の天気は晴れ 🚀 naïve café Ωmega «quotes» e\u0301 \u200b end"
        store.upsert(namespace, [record(document, 0, basis(dimensions, 0), text=text),
                                 record(document, 1, basis(dimensions, 1), text=SENTENCES[0])])
        hits = store.search(namespace, vector=basis(dimensions, 0), limit=1)
        assert hits[0].text == text
        if keywords:
            keyword = store.search(namespace, text="Zürich", limit=5)
            assert [h.ordinal for h in keyword] == [0]
            assert keyword[0].text == text

    def test_page_metadata_and_ordinal_round_trip(self, store, namespace, dimensions, keywords):
        document = new_document_id()
        metadata = {"heading": "Intro > Scope", "page_end": 8, "tags": ["a", "ü"], "ratio": 0.25,
                    "flag": True, "nothing": None, "nested": {"k": [1, 2, {"x": "y"}]}}
        with_page = record(document, 41, basis(dimensions, 0), page=7, metadata=metadata)
        without_page = record(document, 42, basis(dimensions, 1))
        store.upsert(namespace, [with_page, without_page])
        first = store.search(namespace, vector=basis(dimensions, 0), limit=1)[0]
        assert (first.id, first.document_id, first.ordinal, first.page) == (with_page.id, document, 41, 7)
        assert isinstance(first.metadata, Mapping)
        assert dict(first.metadata) == metadata
        second = store.search(namespace, vector=basis(dimensions, 1), limit=1)[0]
        assert (second.id, second.ordinal, second.page, dict(second.metadata)) == (without_page.id, 42, None, {})
        if keywords:
            keyword = store.search(namespace, text="orchestra", limit=5)  # only in the text of ordinal 41
            assert [(h.id, h.page, dict(h.metadata)) for h in keyword] == [(with_page.id, 7, metadata)]
        by_id = {h.id: h for h in store.search(namespace, vector=basis(dimensions, 0), limit=2)}
        assert by_id[without_page.id].page is None and dict(by_id[with_page.id].metadata) == metadata
