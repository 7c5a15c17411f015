"""The embedded ``local`` vector store: the contract suite plus what is specific to it."""

import sqlite3
import threading
import uuid

import numpy as np
import pytest

from spacio.rag.builtins.local_store import LocalVectorStore, fts_query, sqlite_path
from spacio.rag.contracts import InvalidInput, VectorRecord
from spacio.testing.contracts.vector_store import VectorStoreContract


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'spacio.db'}"


class TestLocalVectorStoreContract(VectorStoreContract):
    crowd_size = 2000

    @pytest.fixture
    def vector_store(self, database_url):
        store = LocalVectorStore(database_url=database_url)
        yield store
        store.close()


def records(document_id, vectors, texts=None):
    return [VectorRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document_id}:{i}")), document_id=document_id,
                         ordinal=i, text=(texts[i] if texts else f"chunk {i}"), vector=v)
            for i, v in enumerate(vectors)]


def unit_rows(n, d, seed):
    m = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# ---------------------------------------------------------------- options and URL


def test_database_url_must_be_sqlite():
    with pytest.raises(ValueError, match="pgvector"):
        LocalVectorStore(database_url="postgresql+psycopg://user@localhost/spacio")
    with pytest.raises(ValueError, match="file"):
        LocalVectorStore(database_url="sqlite://")
    with pytest.raises(ValueError, match="file"):
        LocalVectorStore(database_url="sqlite:///:memory:")
    errors = LocalVectorStore.options_schema().validate({"database_url": "mysql://x/y"})
    assert "database_url" in errors
    assert LocalVectorStore.options_schema().load({"database_url": "sqlite:////tmp/x.db"})["cache_mb"] == 1024


def test_sqlite_paths():
    assert sqlite_path("sqlite:////abs/spacio.db") == "/abs/spacio.db"
    assert sqlite_path("sqlite:///relative.db") == "relative.db"
    assert sqlite_path("sqlite+pysqlite:////abs/spacio.db?timeout=5") == "/abs/spacio.db"


def test_constructor_does_no_io(tmp_path):
    path = tmp_path / "sub" / "spacio.db"
    LocalVectorStore(database_url=f"sqlite:///{path}")
    assert not path.exists() and not path.parent.exists()


def test_shares_the_app_file_with_prefixed_tables_in_wal_mode(tmp_path, database_url):
    app = sqlite3.connect(tmp_path / "spacio.db")
    app.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    app.commit()
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 4)
    names = {r[0] for r in app.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")}
    assert "users" in names
    assert all(n == "users" or n.startswith("vs_local_") or n.startswith("sqlite_") for n in names), names
    assert app.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    app.close()
    store.close()


# ---------------------------------------------------------------- keyword query building


@pytest.mark.parametrize("text, expected", [
    ("zymurgy", '"zymurgy"'),
    ("What does the handbook say about Zymurgy?", '"handbook" OR "say" OR "zymurgy"'),
    ('"foo* OR (', '"foo"'),
    ('NEAR(a b) AND c:d', '"near" OR "b" OR "c" OR "d"'),
    ("the of and", '"the" OR "of" OR "and"'),  # only stopwords: keep them
    ("", None),
    ("?!.,\"'()*^", None),
    ("Grüße aus Zürich", '"grüße" OR "aus" OR "zürich"'),
    ("cafe\u0301", '"café"'),
])
def test_fts_query(text, expected):
    assert fts_query(text) == expected


def test_fts_query_caps_the_number_of_terms():
    assert fts_query(" ".join(f"w{i}" for i in range(500))).count(" OR ") == 63


# ---------------------------------------------------------------- specifics


def test_writes_through_one_instance_are_seen_by_another_on_the_same_file(database_url):
    writer, reader = LocalVectorStore(database_url=database_url), LocalVectorStore(database_url=database_url)
    vectors = unit_rows(50, 16, seed=1)
    writer.ensure_namespace("ns", 16)
    writer.upsert("ns", records("doc-a", vectors[:30]))
    assert len(reader.search("ns", vector=vectors[0], limit=100)) == 30  # reader caches 30 rows

    writer.upsert("ns", records("doc-b", vectors[30:]))  # incremental: appended rows
    hits = reader.search("ns", vector=vectors[40], limit=100)
    assert len(hits) == 50 and hits[0].document_id == "doc-b" and hits[0].score == pytest.approx(1.0, abs=1e-5)

    moved = records("doc-a", [vectors[45]])  # replace doc-a:0 with doc-b's vector 45
    writer.upsert("ns", moved)
    top_two = reader.search("ns", vector=vectors[45], limit=2)
    assert {h.id for h in top_two} == {moved[0].id, records("doc-b", vectors[30:])[15].id}

    writer.delete_document("ns", "doc-a")  # deletes: the reader drops the rows
    hits = reader.search("ns", vector=vectors[0], limit=100)
    assert len(hits) == 20 and {h.document_id for h in hits} == {"doc-b"}

    writer.drop_namespace("ns")
    assert reader.search("ns", vector=vectors[0], limit=100) == []
    writer.ensure_namespace("ns", 16)  # same name again: versions never repeat
    writer.upsert("ns", records("doc-c", vectors[:3]))
    assert {h.document_id for h in reader.search("ns", vector=vectors[0], limit=100)} == {"doc-c"}
    writer.close()
    reader.close()


def test_cache_matches_a_fresh_instance_after_mixed_writes(database_url):
    store = LocalVectorStore(database_url=database_url)
    rng = np.random.default_rng(3)
    vectors = unit_rows(400, 8, seed=4)
    store.ensure_namespace("ns", 8)
    query = vectors[0]
    for step in range(30):
        document = f"doc-{rng.integers(0, 8)}"
        if rng.random() < 0.3:
            store.delete_document("ns", document)
        else:
            start = int(rng.integers(0, 380))
            store.upsert("ns", records(document, vectors[start:start + int(rng.integers(1, 20))]))
        store.search("ns", vector=query, limit=5)  # keep the cache warm between writes
    fresh = LocalVectorStore(database_url=store_url(store))
    want = [(h.id, round(h.score, 5)) for h in fresh.search("ns", vector=query, limit=400)]
    got = [(h.id, round(h.score, 5)) for h in store.search("ns", vector=query, limit=400)]
    assert got == want and len(got) == store.count("ns")
    store.close()
    fresh.close()


def store_url(store):
    return f"sqlite:///{store.path}"


def test_threads_read_and_write_at_once(database_url):
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 32)
    vectors = unit_rows(1200, 32, seed=5)
    errors = []

    def writer(n):
        try:
            for batch in range(10):
                chunk = vectors[n * 300 + batch * 30:n * 300 + (batch + 1) * 30]
                store.upsert("ns", records(f"doc-{n}-{batch}", chunk))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    def reader():
        try:
            for i in range(60):
                hits = store.search("ns", vector=vectors[i], text="chunk", limit=5)
                assert len(hits) <= 5
                store.count("ns")
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count("ns") == 1200
    assert store.search("ns", vector=vectors[777], limit=1)[0].score == pytest.approx(1.0, abs=1e-5)
    store.close()


def test_bad_vectors_are_invalid_input(database_url):
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 4)
    with pytest.raises(InvalidInput) as error:
        store.upsert("ns", records("d", [[1.0, 0.0, 0.0]]))
    assert error.value.reason == "dimension_mismatch"
    with pytest.raises(InvalidInput) as error:
        store.upsert("ns", records("d", [[0.0, 0.0, 0.0, 0.0]]))
    assert error.value.reason == "invalid_vector"
    with pytest.raises(InvalidInput) as error:
        store.upsert("ns", records("d", [[float("nan"), 0.0, 0.0, 1.0]]))
    assert error.value.reason == "invalid_vector"
    store.upsert("ns", records("d", [[1.0, 0.0, 0.0, 0.0]]))
    with pytest.raises(InvalidInput) as error:
        store.search("ns", vector=[1.0, 0.0], limit=3)
    assert error.value.reason == "dimension_mismatch"
    with pytest.raises(InvalidInput) as error:
        store.ensure_namespace("ns", 8)
    assert error.value.reason == "dimension_mismatch"
    with pytest.raises(InvalidInput) as error:
        store.upsert("ns", [VectorRecord(id="x", document_id="d", ordinal=0, text="t", vector=[1, 0, 0, 0],
                                         metadata={"bad": object()})])
    assert error.value.reason == "invalid_metadata"
    assert store.count("ns") == 1
    store.close()


def test_vectors_are_normalised(database_url):
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 2)
    store.upsert("ns", records("d", [[3.0, 4.0]]))
    (hit,) = store.search("ns", vector=[30.0, 40.0], limit=1)
    assert hit.score == pytest.approx(1.0, abs=1e-6)
    store.close()


def test_keyword_search_stems_and_folds_diacritics(database_url):
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 2)
    store.upsert("ns", records("d", [[1.0, 0.0], [0.0, 1.0]],
                               texts=["The glaciers were melting quickly.", "Crème brûlée at the café."]))
    assert [h.ordinal for h in store.search("ns", text="glacier melts", limit=5)] == [0]
    assert [h.ordinal for h in store.search("ns", text="creme brulee cafe", limit=5)] == [1]
    store.close()


def test_fts_index_stays_consistent_through_upserts_moves_and_deletes(database_url):
    store = LocalVectorStore(database_url=database_url)
    vectors = unit_rows(20, 4, seed=6)
    store.ensure_namespace("a", 4)
    store.ensure_namespace("b", 4)
    first = records("doc", vectors[:10], texts=[f"alpha {i}" for i in range(10)])
    store.upsert("a", first)
    store.upsert("a", [VectorRecord(id=r.id, document_id=r.document_id, ordinal=r.ordinal, text=f"beta {r.ordinal}",
                                    vector=r.vector) for r in first[:5]])  # new text
    assert len(store.search("a", vector=vectors[0], limit=20)) == 10  # cache "a" warm
    store.upsert("b", first[5:])  # same ids move to namespace b
    assert sorted(h.ordinal for h in store.search("a", vector=vectors[0], limit=20)) == [0, 1, 2, 3, 4]
    assert sorted(h.ordinal for h in store.search("a", text="beta alpha", limit=20)) == [0, 1, 2, 3, 4]
    store.delete_document("a", "doc")
    with store._write() as conn:
        conn.execute("INSERT INTO vs_local_fts (vs_local_fts, rank) VALUES ('integrity-check', 1)")
    assert store.count("a") == 0 and store.count("b") == 5
    assert store.search("a", text="alpha beta", limit=10) == []
    assert sorted(h.ordinal for h in store.search("b", text="alpha", limit=10)) == [5, 6, 7, 8, 9]
    assert sorted(h.ordinal for h in store.search("b", vector=vectors[0], limit=10)) == [5, 6, 7, 8, 9]
    store.close()


def test_common_words_do_not_select_rows_but_the_limit_is_still_filled(database_url):
    store = LocalVectorStore(database_url=database_url)
    store.ensure_namespace("ns", 4)
    texts = [f"protein level number {i} in the study" for i in range(200)]
    texts[17] = "a single mention of telomerase here"
    texts[42] = "telomerase and protein together"
    store.upsert("ns", records("d", unit_rows(200, 4, seed=7), texts=texts))
    hits = store.search("ns", text="What is known about protein and telomerase?", limit=5)
    assert [h.ordinal for h in hits[:2]] == [42, 17]
    assert len(hits) == 5
    assert len(store.search("ns", text="protein", limit=50)) == 50
    store.close()


def test_keyword_search_keeps_short_and_odd_namespace_names_apart(database_url):
    store = LocalVectorStore(database_url=database_url)
    names = ["a", "a.", "ae", "a~", "aed", "ünï", "space one", "x" * 100]
    for n, name in enumerate(names):
        store.ensure_namespace(name, 2)
        store.upsert(name, records(f"doc-{n}", [[1.0, float(n)]], texts=["a shared word"]))
    for n, name in enumerate(names):
        assert [h.document_id for h in store.search(name, text="shared", limit=10)] == [f"doc-{n}"], name
    store.close()


def test_ready_reads_the_database_file_and_fails_when_it_cannot_open(tmp_path):
    store = LocalVectorStore(database_url=f"sqlite:///{tmp_path / 'ready.db'}")
    store.ready(1.0)  # creates the schema of a new file
    store.close()
    (tmp_path / "blocked").write_text("a file where a folder should be")
    broken = LocalVectorStore(database_url=f"sqlite:///{tmp_path / 'blocked' / 'x.db'}")
    with pytest.raises(Exception):
        broken.ready(1.0)
