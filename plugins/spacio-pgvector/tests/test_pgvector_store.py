"""PgVectorStore against the real PostgreSQL + pgvector that tests/services.sh starts.

Every test module run uses its own table prefix and drops its tables afterwards, so
concurrent or later runs on the same server do not see each other's rows.
"""

import os
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import psycopg
import pytest

from spacio.rag.contracts import InvalidInput, PluginError, VectorRecord
from spacio.testing.contracts.vector_store import VectorStoreContract
from spacio_pgvector import PgVectorStore
from spacio_pgvector.store import (BM25_B, BM25_K1, KEYWORD_AVERAGE_LENGTH, MAX_ROW_TERMS, _idf, _rarest,
                                   _term_dimension, _tsquery_lexeme, conninfo, keyword_table)

RUN = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def database_url():
    url = os.environ.get("SPACIO_TEST_DATABASE_URL")
    if not url:
        pytest.fail("SPACIO_TEST_DATABASE_URL is not set: run under `bash tests/services.sh run -- ...`",
                    pytrace=False)
    return url


@pytest.fixture(scope="session")
def admin(database_url):
    with psycopg.connect(conninfo(database_url), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def prefixes(admin):
    """Hands out table prefixes unique to this run; drops their tables at the end."""
    used = []

    def make(name):
        prefix = f"vs_t{RUN}_{name}"
        used.append(prefix)
        return prefix

    yield make
    for prefix in used:
        tables = admin.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                               (prefix.replace("_", r"\_") + r"\_%",)).fetchall()
        for (table,) in tables:
            admin.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(psycopg.sql.Identifier(table)))


class TestPgVectorStoreContract(VectorStoreContract):
    crowd_size = 3000

    @pytest.fixture(scope="class")
    def vector_store(self, database_url, prefixes):
        store = PgVectorStore(database_url=database_url, table_prefix=prefixes("contract"), max_pool_size=4)
        yield store
        store.close()


def clustered(n, dimensions, centres, rng, spread=0.15):
    """Small perturbations of a few hundred centres: neighbourhoods like real embeddings have."""
    picks = rng.integers(0, len(centres), n)
    m = centres[picks] + rng.normal(scale=spread / np.sqrt(dimensions), size=(n, dimensions))
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32)


def unit(m):
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


def analyze_keywords(admin, table):
    """What autovacuum does soon after a load: planner statistics (idf) for the keyword table."""
    admin.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(keyword_table(table))))


def as_records(document_id, vectors, texts=None):
    return [VectorRecord(id=str(uuid.uuid4()), document_id=document_id, ordinal=i,
                         text=texts[i] if texts else f"chunk {i} of {document_id}", vector=v)
            for i, v in enumerate(vectors)]


# ---------------------------------------------------------------- a small namespace in a large table


DIMS = 64
CROWD = 20_000
SMALL = 30


@pytest.fixture(scope="module")
def crowded_table(database_url, prefixes, admin):
    """≥ 20,000 records in 40 other namespaces, and one namespace of 30 near the same centres.

    The B-tree on (namespace, document_id) is dropped and sequential scans are discouraged in
    the store's sessions, so the planner has to answer with the HNSW index: this is the
    situation of a large table where the planner picks HNSW for a small namespace.
    """
    prefix = prefixes("crowded")
    rng = np.random.default_rng(7)
    centres = unit(rng.normal(size=(300, DIMS)))
    loader = PgVectorStore(database_url=database_url, table_prefix=prefix)
    table = f"{prefix}_{DIMS}"
    loader.ensure_namespace("small", DIMS)
    # load first, build the HNSW index after: ~10x faster than inserting into the graph
    admin.execute(psycopg.sql.SQL("DROP INDEX {}").format(psycopg.sql.Identifier(f"{table}_embedding")))
    crowd = clustered(CROWD, DIMS, centres, rng)
    for n, start in enumerate(range(0, CROWD, 500)):
        namespace = f"crowd-{n}"
        loader.ensure_namespace(namespace, DIMS)
        loader.upsert(namespace, as_records(f"doc-{n}", crowd[start:start + 500]))
    small_vectors = clustered(SMALL, DIMS, centres[:10], rng)
    small_records = as_records("small-doc", small_vectors)
    loader.upsert("small", small_records)
    loader.close()
    admin.execute(psycopg.sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
        psycopg.sql.Identifier(f"{table}_embedding"), psycopg.sql.Identifier(table)))
    admin.execute(psycopg.sql.SQL("DROP INDEX {}").format(psycopg.sql.Identifier(f"{table}_document")))
    admin.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(table)))
    forced = database_url + ("&" if "?" in database_url else "?") + "options=-c%20enable_seqscan%3Doff"
    return {"prefix": prefix, "table": table, "centres": centres, "small": small_records,
            "small_vectors": small_vectors, "url": forced}


def exact_top(records, vectors, query, k):
    scores = vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [records[i].id for i in order]


def test_plain_filtered_hnsw_returns_fewer_than_the_limit(crowded_table):
    """Without iterative scans, filtering HNSW's ef_search candidates loses the small namespace."""
    query = crowded_table["centres"][0].astype(np.float32)
    from pgvector.psycopg import register_vector

    with psycopg.connect(conninfo(crowded_table["url"])) as conn:
        register_vector(conn)
        table = psycopg.sql.Identifier(crowded_table["table"])
        plain = psycopg.sql.SQL("SELECT id FROM {} WHERE namespace = %s ORDER BY embedding <=> %s LIMIT 10"
                                ).format(table)
        conn.execute("SET hnsw.ef_search = 40")
        plan = "\n".join(r[0] for r in conn.execute(psycopg.sql.SQL("EXPLAIN ") + plain, ("small", query)))
        assert f"{crowded_table['table']}_embedding" in plan  # the HNSW index answers
        plain_hits = conn.execute(plain, ("small", query)).fetchall()
        assert len(plain_hits) < 10, "plain filtered HNSW unexpectedly filled the limit: the test proves nothing"

        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.execute("SET hnsw.max_scan_tuples = 50000")
        iterative = conn.execute(plain, ("small", query)).fetchall()
        assert len(iterative) == 10


@pytest.mark.parametrize("exact_scan_below", [2000, 0], ids=["exact-for-small", "iterative-hnsw"])
def test_small_namespace_in_a_large_table_gets_exactly_the_right_hits(crowded_table, exact_scan_below):
    store = PgVectorStore(database_url=crowded_table["url"], table_prefix=crowded_table["prefix"],
                          exact_scan_below=exact_scan_below, max_scan_tuples=50000, ef_search=40)
    small, vectors = crowded_table["small"], crowded_table["small_vectors"]
    found = 0
    for centre in crowded_table["centres"][:5]:
        query = centre.astype(np.float32)
        hits = store.search("small", vector=query, limit=10)
        assert len(hits) == 10
        assert {h.document_id for h in hits} == {"small-doc"}
        want = exact_top(small, vectors, query, 10)
        assert hits[0].id == want[0]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        if exact_scan_below:  # exact search: exactly the right ones, with their cosine
            assert [h.id for h in hits] == want
            assert scores == pytest.approx(sorted((vectors @ query).tolist(), reverse=True)[:10], abs=1e-4)
        found += len(set(want) & {h.id for h in hits})
    # HNSW is approximate and its graph differs from build to build: recall@10 0.94-1.0 seen
    assert found / 50 >= (1.0 if exact_scan_below else 0.9)
    if exact_scan_below:
        assert store.stats == {"exact": 5, "hnsw": 0, "exact_fallback": 0}
    else:  # the iterative scan itself filled the limit: no exact fallback was needed
        assert store.stats == {"exact": 0, "hnsw": 5, "exact_fallback": 0}
        with store._transaction() as conn:
            where = psycopg.sql.SQL("namespace = %s")
            plan = "\n".join(r[0] for r in conn.execute(
                psycopg.sql.SQL("EXPLAIN ") + store._hnsw_sql(psycopg.sql.Identifier(crowded_table["table"]),
                                                              where),
                (crowded_table["centres"][0].astype(np.float32), "small", 20, 10)))
        assert f"{crowded_table['table']}_embedding" in plan
    store.close()


def test_large_namespace_uses_hnsw_with_good_recall(crowded_table):
    store = PgVectorStore(database_url=crowded_table["url"], table_prefix=crowded_table["prefix"],
                          exact_scan_below=100)
    with psycopg.connect(conninfo(crowded_table["url"])) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        rows = conn.execute(psycopg.sql.SQL("SELECT id::text, embedding FROM {} WHERE namespace = 'crowd-3'"
                                            ).format(psycopg.sql.Identifier(crowded_table["table"]))).fetchall()
    ids = [r[0] for r in rows]
    vectors = np.array([r[1].to_numpy() for r in rows], dtype=np.float32)
    recall = []
    for centre in crowded_table["centres"][:20]:
        query = centre.astype(np.float32)
        hits = store.search("crowd-3", vector=query, limit=10)
        assert len(hits) == 10
        want = {ids[i] for i in np.argsort(-(vectors @ query))[:10]}
        recall.append(len(want & {h.id for h in hits}) / 10)
    assert np.mean(recall) >= 0.95
    assert store.stats["hnsw"] == 20
    store.close()


# ---------------------------------------------------------------- specifics


def test_options_and_urls(database_url):
    assert conninfo("postgresql+psycopg://u@h:5/db") == "postgresql://u@h:5/db"
    assert conninfo("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError):
        PgVectorStore(database_url="sqlite:////tmp/x.db")
    with pytest.raises(ValueError):
        PgVectorStore(database_url=database_url, text_search_config="english'; DROP TABLE x; --")
    schema = PgVectorStore.options_schema()
    assert "database_url" in schema.validate({"database_url": "mysql://x/y"})
    assert "min_pool_size" in schema.validate({"database_url": database_url, "min_pool_size": 5,
                                               "max_pool_size": 2})
    loaded = schema.load({"database_url": database_url, "ef_search": "200"})
    assert loaded["ef_search"] == 200 and loaded["text_search_config"] == "english"


def test_constructor_does_no_io():
    store = PgVectorStore(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert store._pool is None


def test_unreachable_database_is_upstream_unavailable():
    from spacio.rag.contracts import UpstreamUnavailable

    store = PgVectorStore(database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(UpstreamUnavailable):
        store.count("ns")


def test_lexemes_are_quoted_as_plain_tsquery_operands(admin):
    for lexeme in ["plain", "it's", "back\\slash", "a:b", "x|y", "(", "'';--", "!", "a & b", "ünï"]:
        nodes, matches = admin.execute(
            "SELECT numnode(q), array_to_tsvector(ARRAY[%s]) @@ q FROM (SELECT %s::tsquery AS q) s",
            (lexeme, _tsquery_lexeme(lexeme))).fetchone()
        assert (nodes, matches) == (1, True), lexeme  # one operand, the lexeme itself


def test_keyword_search_prefers_rare_words_and_fills_the_limit(database_url, prefixes, admin):
    """IDF from the planner statistics: a rare query word outranks a common one."""
    prefix = prefixes("idf")
    store = PgVectorStore(database_url=database_url, table_prefix=prefix)
    texts = [f"protein level number {i} in the study" for i in range(200)]
    texts[17] = "a single mention of telomerase here"
    texts[42] = "telomerase and protein together"
    rng = np.random.default_rng(3)
    store.upsert("ns", as_records("d", unit(rng.normal(size=(200, 4))), texts=texts))
    analyze_keywords(admin, f"{prefix}_4")
    hits = store.search("ns", text="What is known about protein and telomerase?", limit=5)
    assert [h.ordinal for h in hits[:2]] == [42, 17]
    assert len(hits) == 5  # rows with only the common word still fill the limit
    assert len(store.search("ns", text="protein", limit=50)) == 50
    store.close()


def test_rarest_lexemes_within_the_candidate_budget():
    frequency = {"rare": 0.001, "mid": 0.02, "common": 0.3}  # of 10,000 rows: 10, 200, 3,000
    order = ["rare", "mid", "common"]
    assert _rarest(order, frequency, 10_000, budget=3000, least=0) == ["rare", "mid"]  # + common: 3,210
    assert _rarest(order, frequency, 10_000, budget=100, least=0) == ["rare"]  # always at least one
    assert _rarest(order, frequency, 10_000, budget=100, least=50) == ["rare", "mid"]  # 10 < 50 expected
    assert _rarest(order, frequency, 10_000, budget=10**9, least=0) == order
    assert _rarest(order, frequency, 0, budget=1, least=0) == order  # never analysed: every word counts


def test_keyword_budget_widens_until_the_limit_is_filled_and_ranks_like_no_budget(database_url, prefixes, admin):
    """A tiny budget matches on the rarest word first (3 rows), finds too few for the
    limit, and widens word by word: the hits are those of an unlimited search."""
    prefix = prefixes("budget")
    texts = [f"cell growth sample {i}" if i % 2 else f"cell membrane sample {i}" for i in range(300)]
    for i in (5, 77, 150):
        texts[i] = f"telomerase in cell growth {i}"
    rng = np.random.default_rng(5)
    tight = PgVectorStore(database_url=database_url, table_prefix=prefix, keyword_candidates=1)
    tight.upsert("ns", as_records("d", unit(rng.normal(size=(300, 4))), texts=texts))
    analyze_keywords(admin, f"{prefix}_4")
    unlimited = PgVectorStore(database_url=database_url, table_prefix=prefix, keyword_candidates=10**9)
    for question, limit in [("telomerase and cell growth", 40), ("telomerase membrane", 200), ("telomerase", 10)]:
        got = tight.search("ns", text=question, limit=limit)
        want = unlimited.search("ns", text=question, limit=limit)
        assert [(h.id, round(h.score, 6)) for h in got] == [(h.id, round(h.score, 6)) for h in want], question
    assert {h.ordinal for h in tight.search("ns", text="telomerase and cell growth", limit=40)[:3]} == {5, 77, 150}
    assert len(tight.search("ns", text="telomerase membrane", limit=200)) == 152  # 3 telomerase + 149 membrane rows
    tight.close()
    unlimited.close()


def test_bad_input_is_invalid_input(database_url, prefixes):
    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("bad"))
    store.ensure_namespace("ns", 4)
    cases = [
        (VectorRecord(id="not-a-uuid", document_id="d", ordinal=0, text="t", vector=[1, 0, 0, 0]), "invalid_id"),
        (VectorRecord(id=str(uuid.uuid4()), document_id="d", ordinal=0, text="t", vector=[1, 0, 0]),
         "dimension_mismatch"),
        (VectorRecord(id=str(uuid.uuid4()), document_id="d", ordinal=0, text="t", vector=[0, 0, 0, 0]),
         "invalid_vector"),
        (VectorRecord(id=str(uuid.uuid4()), document_id="d", ordinal=0, text="t", vector=[1, 0, 0, 0],
                      metadata={"x": object()}), "invalid_metadata"),
    ]
    for record, reason in cases:
        with pytest.raises(InvalidInput) as error:
            store.upsert("ns", [record])
        assert error.value.reason == reason
    with pytest.raises(InvalidInput) as error:
        store.search("ns", vector=[1.0, 0.0], limit=2)
    assert error.value.reason == "dimension_mismatch"
    with pytest.raises(InvalidInput) as error:
        store.ensure_namespace("ns", 8)
    assert error.value.reason == "dimension_mismatch"
    # NUL characters (PDF extraction leftovers) are dropped, not a crash
    store.upsert("ns", [VectorRecord(id=str(uuid.uuid4()), document_id="d", ordinal=0, text="nul\x00here",
                                     vector=[1, 0, 0, 0], metadata={"k": "a\x00b", "path": "C:\\u0000"})])
    (hit,) = store.search("ns", vector=[1, 0, 0, 0], limit=1)
    assert hit.text == "nulhere" and dict(hit.metadata) == {"k": "ab", "path": "C:\\u0000"}
    assert store.count("ns") == 1
    store.close()


def test_unknown_text_search_config_is_a_clear_error(database_url, prefixes):
    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("cfg"), text_search_config="klingon")
    with pytest.raises(PluginError) as error:
        store.ensure_namespace("ns", 4)
    assert error.value.reason == "invalid_option" and "klingon" in error.value.message
    store.close()


def test_simple_text_search_config_does_not_stem(database_url, prefixes):
    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("simple"), text_search_config="simple")
    store.upsert("ns", as_records("d", unit(np.eye(3, dtype=np.float32)),
                                  texts=["glaciers melting", "the glacier melts", "nothing here"]))
    assert [h.ordinal for h in store.search("ns", text="glacier", limit=5)] == [1]
    store.close()


def test_keyword_search_stems_with_english(database_url, prefixes):
    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("english"))
    store.upsert("ns", as_records("d", unit(np.eye(3, dtype=np.float32)),
                                  texts=["glaciers melting", "the glacier melts fast", "nothing here"]))
    hits = store.search("ns", text="Why are glaciers melting?", limit=5)
    assert sorted(h.ordinal for h in hits) == [0, 1]
    store.close()


def test_two_stores_on_one_table_see_each_other(database_url, prefixes):
    prefix = prefixes("shared")
    first, second = (PgVectorStore(database_url=database_url, table_prefix=prefix) for _ in range(2))
    first.ensure_namespace("ns", 8)
    first.upsert("ns", as_records("d", unit(np.random.default_rng(1).normal(size=(5, 8)))))
    assert second.count("ns") == 5
    second.drop_namespace("ns")
    assert first.count("ns") == 0 and first.search("ns", vector=[1.0] * 8, limit=5) == []
    first.close()
    second.close()


def test_a_namespace_another_process_dropped_is_registered_again_by_the_next_write(database_url, prefixes, admin):
    """A worker process remembers a space's namespace; the web drops it (the space is deleted
    or reindexed); the worker writes again. The write must register the namespace again, not
    trust its cache: rows without their registry row were invisible to the web's searches, and
    the web's drop of the deleted space left them behind for good."""
    prefix = prefixes("stale")
    worker, web = (PgVectorStore(database_url=database_url, table_prefix=prefix) for _ in range(2))
    vectors = unit(np.random.default_rng(2).normal(size=(4, 8)))
    worker.ensure_namespace("ns", 8)
    worker.upsert("ns", as_records("before", vectors[:2]))
    web.drop_namespace("ns")

    worker.ensure_namespace("ns", 8)
    worker.upsert("ns", as_records("after", vectors[2:], texts=["tides and moons", "tides again"]))
    assert web.count("ns") == 2
    assert len(web.search("ns", text="tides", limit=5)) == 2
    web.drop_namespace("ns")
    assert table_rows(admin, f"{prefix}_8", "SELECT count(*) FROM {} WHERE namespace = 'ns'") == [(0,)]
    assert worker.count("ns") == 0
    worker.close()
    web.close()


def test_concurrent_schema_creation_and_traffic(database_url, prefixes):
    """Several processes' stores creating the same tables at once, then writing and reading."""
    prefix = prefixes("concurrent")
    stores = [PgVectorStore(database_url=database_url, table_prefix=prefix, max_pool_size=3) for _ in range(4)]
    rng = np.random.default_rng(2)
    vectors = unit(rng.normal(size=(800, 32))).astype(np.float32)
    errors = []
    barrier = threading.Barrier(8)

    def writer(n):
        try:
            barrier.wait()
            store = stores[n % 4]
            store.ensure_namespace("shared", 32)
            for batch in range(4):
                start = n * 200 + batch * 50
                store.upsert("shared", as_records(f"doc-{n}-{batch}", vectors[start:start + 50]))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    def reader(n):
        try:
            barrier.wait()
            store = stores[n % 4]
            for i in range(25):
                store.search("shared", vector=vectors[i], text="chunk", limit=5)
                store.count("shared")
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=reader, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].count("shared") == 800
    hit = stores[1].search("shared", vector=vectors[555], limit=1)[0]
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    for store in stores:
        store.close()


def test_works_under_gevent(database_url, prefixes):
    """psycopg 3 and the pool cooperate with gevent: 20 greenlets share a pool of 3 connections."""
    prefix = prefixes("gevent")
    script = textwrap.dedent(f"""
        from gevent import monkey
        monkey.patch_all()
        import gevent, numpy as np, time, uuid
        from spacio.rag.contracts import VectorRecord
        from spacio_pgvector import PgVectorStore

        store = PgVectorStore(database_url={database_url!r}, table_prefix={prefix!r}, max_pool_size=3)
        rng = np.random.default_rng(0)

        def work(n):
            vectors = rng.normal(size=(20, 16))
            store.upsert("g", [VectorRecord(id=str(uuid.uuid4()), document_id=f"d{{n}}", ordinal=i,
                                            text=f"greenlet {{n}} chunk {{i}}", vector=v)
                               for i, v in enumerate(vectors)])
            return len(store.search("g", vector=vectors[0], text="greenlet", limit=5))

        store.ensure_namespace("g", 16)
        jobs = [gevent.spawn(work, n) for n in range(20)]
        gevent.joinall(jobs, raise_error=True)
        assert [j.value for j in jobs] == [5] * 20, [j.value for j in jobs]
        assert store.count("g") == 400
        with store._transaction() as conn:  # the pool did its job: no more than 3 connections
            pass
        print("ok", store._pool.get_stats()["pool_size"])
        store.close()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "ok" and int(result.stdout.split()[1]) <= 3


def test_missing_extension_that_the_user_cannot_create_is_a_clear_error(admin, database_url):
    from urllib.parse import urlsplit, urlunsplit

    role, database = f"vs_user_{RUN}", f"vs_noext_{RUN}"
    admin.execute(psycopg.sql.SQL("CREATE ROLE {} LOGIN").format(psycopg.sql.Identifier(role)))
    admin.execute(psycopg.sql.SQL("CREATE DATABASE {} OWNER {}").format(
        psycopg.sql.Identifier(database), psycopg.sql.Identifier(role)))
    try:
        parts = urlsplit(database_url)
        url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}", path=f"/{database}"))
        store = PgVectorStore(database_url=url)
        with pytest.raises(PluginError) as error:
            store.count("ns")
        assert error.value.reason == "pgvector_unavailable"
        assert "CREATE EXTENSION vector" in error.value.message
        store.close()
    finally:
        admin.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            psycopg.sql.Identifier(database)))
        admin.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role)))


def test_ready_answers_when_postgres_does_and_raises_when_it_does_not(database_url, prefixes):
    from spacio.rag.contracts import UpstreamUnavailable

    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("ready"))
    try:
        store.ready(2.0)  # opens the pool on first use
        store.ready(2.0)
    finally:
        store.close()
    down = PgVectorStore(database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    with pytest.raises(UpstreamUnavailable):
        down.ready(1.0)


# ---------------------------------------------------------------- the keyword table


def table_rows(admin, table, query="SELECT count(*) FROM {}"):
    return admin.execute(psycopg.sql.SQL(query).format(psycopg.sql.Identifier(table))).fetchall()


def orphans(admin, table):
    """Keyword rows without their main row, main rows without their keyword row, and pairs
    whose namespace or lexemes disagree."""
    return admin.execute(psycopg.sql.SQL("""
        SELECT count(*) FILTER (WHERE t.id IS NULL), count(*) FILTER (WHERE k.id IS NULL),
               count(*) FILTER (WHERE k.namespace <> t.namespace
                                   OR k.tsv <> to_tsvector('english', t.text))
        FROM {} k FULL JOIN {} t USING (id)""").format(
        psycopg.sql.Identifier(keyword_table(table)), psycopg.sql.Identifier(table))).fetchone()


def test_term_dimensions_are_sha256_and_never_change(admin):
    """Stored weights depend on these numbers: a different hash would silently break every
    table written before. Pinned values, and the same as hashlib's over UTF-8."""
    import hashlib

    lexemes = ["protein", "telomeras", "ünï", "x", "a'b"]
    got = [admin.execute(psycopg.sql.SQL("SELECT {}").format(_term_dimension(psycopg.sql.Literal(lexeme)))
                         ).fetchone()[0] for lexeme in lexemes]
    assert got == [int(hashlib.sha256(lexeme.encode()).hexdigest()[:7], 16) + 1 for lexeme in lexemes]
    assert got[:2] == [248017225, 19657010]
    assert all(1 <= d <= 2**28 for d in got)


VOCABULARY = ("telomerase protein membrane insulin glucose kinase receptor mutation tumour cell growth "
              "neuron cortex plasma antibody vaccine virus bacteria enzyme lipid cholesterol hormone "
              "oxygen mitochondria ribosome chromosome genome sequence expression pathway signal "
              "inflammation macrophage lymphocyte cytokine apoptosis autophagy stem embryo tissue "
              "organ liver kidney heart lung brain bone muscle skin blood vessel artery").split()


def test_keyword_ranking_is_bm25_over_postgres_lexemes(database_url, prefixes, admin):
    """The ranking equals BM25 computed here, in Python, over the lexemes PostgreSQL's
    to_tsvector finds (tf = their positions, len = distinct lexemes), idf from the planner
    statistics the store reads, the table's length pivot: stored weights, hashing and the
    sparse inner product change nothing but float precision. Also with a namespace next
    door and a document_ids filter."""
    prefix = prefixes("bm25")
    store = PgVectorStore(database_url=database_url, table_prefix=prefix)
    rng = np.random.default_rng(11)
    zipf = 1 / np.arange(1, len(VOCABULARY) + 1)
    texts = {}
    for namespace in ("ns", "other"):
        for d in range(6):
            chunks = [" ".join(rng.choice(VOCABULARY, size=int(rng.integers(3, 40)), p=zipf / zipf.sum()))
                      for _ in range(50)]
            records = as_records(f"doc-{d}", unit(rng.normal(size=(50, 4))), texts=chunks)
            store.upsert(namespace, records)
            texts.update({r.id: (namespace, r.document_id, r.text) for r in records})
    table = f"{prefix}_4"
    analyze_keywords(admin, table)
    with store._connection() as conn:
        stats = store._lexeme_stats(conn, 4)
    assert stats.frequency and stats.rows == 600

    def lexemes(text):
        return dict(admin.execute("SELECT lexeme, coalesce(array_length(positions, 1), 1) "
                                  "FROM unnest(to_tsvector('english', %s))", (text,)).fetchall())

    bags = {id_: lexemes(text) for id_, (_, _, text) in texts.items()}

    def bm25(question, namespace, documents=None):
        words = lexemes(question)
        scores = {}
        for id_, bag in bags.items():
            ns, document, _ = texts[id_]
            if ns != namespace or (documents is not None and document not in documents) or not words.keys() & bag:
                continue
            scores[id_] = sum(
                _idf(stats.frequency.get(w, stats.rare)) * bag[w] * (BM25_K1 + 1)
                / (bag[w] + BM25_K1 * (1 - BM25_B + BM25_B * len(bag) / KEYWORD_AVERAGE_LENGTH))
                for w in words if w in bag)
        return sorted(scores.items(), key=lambda item: (-item[1], item[0])), scores

    questions = ["telomerase in tumour cell growth", "insulin glucose kinase receptor", "artery vessel blood",
                 "cell", "does the macrophage cytokine pathway drive inflammation of the liver?"]
    compared = 0
    for question in questions:
        for namespace, documents in [("ns", None), ("other", None), ("ns", ["doc-1", "doc-4"])]:
            want, score_of = bm25(question, namespace, documents)
            got = store.search(namespace, text=question, limit=40, document_ids=documents)
            assert len(got) == min(40, len(want)), question
            for i, hit in enumerate(got):
                assert texts[hit.id][0] == namespace
                assert documents is None or hit.document_id in documents
                # the i-th best score, and this hit really scores that (ties may swap places)
                assert hit.score == pytest.approx(want[i][1], rel=2e-5), (question, i)
                assert score_of[hit.id] == pytest.approx(want[i][1], rel=2e-5), (question, i)
                compared += 1
    assert compared > 400
    store.close()


def test_writes_keep_the_keyword_table_in_step(database_url, prefixes, admin):
    prefix = prefixes("step")
    table = f"{prefix}_4"
    store = PgVectorStore(database_url=database_url, table_prefix=prefix)
    rng = np.random.default_rng(4)
    first = as_records("d1", unit(rng.normal(size=(5, 4))), texts=[f"alpha glacier {i}" for i in range(5)])
    second = as_records("d2", unit(rng.normal(size=(5, 4))), texts=[f"beta volcano {i}" for i in range(5)])
    store.upsert("a", first + second)
    store.upsert("b", as_records("d1", unit(rng.normal(size=(3, 4))), texts=["gamma", "the of and", ""]))
    assert table_rows(admin, keyword_table(table)) == [(13,)] and orphans(admin, table) == (0, 0, 0)
    # no lexemes (stop words only, empty): an empty weight vector, never matched
    assert table_rows(admin, keyword_table(table), "SELECT weights::text FROM {} WHERE length(tsv) = 0") == [
        ("{}/268435456",)] * 2

    # new text for an id: its keyword row follows
    store.upsert("a", [VectorRecord(id=first[0].id, document_id="d1", ordinal=0, text="zymurgy now",
                                    vector=first[0].vector)])
    assert [h.id for h in store.search("a", text="zymurgy", limit=5)] == [first[0].id]
    assert first[0].id not in {h.id for h in store.search("a", text="glacier", limit=5)}
    # an id moved to another namespace: so is its keyword row
    store.upsert("b", [second[0]])
    assert [h.id for h in store.search("b", text="volcano", limit=5)] == [second[0].id]
    assert second[0].id not in {h.id for h in store.search("a", text="volcano", limit=5)}
    assert orphans(admin, table) == (0, 0, 0)

    store.delete_document("a", "d1")  # namespace b has a d1 too: it stays
    assert store.search("a", text="glacier zymurgy", limit=5) == []
    assert store.count("a") == 4 and store.count("b") == 4
    assert table_rows(admin, keyword_table(table)) == [(8,)] and orphans(admin, table) == (0, 0, 0)
    store.drop_namespace("b")
    assert table_rows(admin, keyword_table(table), "SELECT namespace, count(*) FROM {} GROUP BY 1") == [("a", 4)]
    assert orphans(admin, table) == (0, 0, 0)
    # a failed batch writes neither table
    too_long_for_a_tsvector = " ".join(f"w{i:07d}" for i in range(150_000))  # > 1 MB of lexemes
    with pytest.raises(InvalidInput):
        store.upsert("a", as_records("d9", unit(rng.normal(size=(2, 4))), texts=["fine", too_long_for_a_tsvector]))
    assert table_rows(admin, keyword_table(table)) == [(4,)] and orphans(admin, table) == (0, 0, 0)
    store.close()


def test_a_row_with_more_words_than_a_sparsevec_holds(database_url, prefixes, admin):
    """pgvector keeps at most 16,000 entries in a sparsevec: such a row keeps its heaviest
    weights, and every one of its words still matches."""
    prefix = prefixes("wide")
    store = PgVectorStore(database_url=database_url, table_prefix=prefix, text_search_config="simple")
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["q" + "".join(letters[(n // 26**k) % 26] for k in range(4)) for n in range(MAX_ROW_TERMS + 1000)]
    text = " ".join(words) + " " + " ".join(words[:10])  # the first ten twice: heavier
    (record,) = as_records("big", [[1.0, 0, 0, 0]], texts=[text])
    store.upsert("ns", [record])
    (entries,) = admin.execute(psycopg.sql.SQL("SELECT length(weights::text) - length(replace(weights::text, ':', '')) "
                                               "FROM {}").format(psycopg.sql.Identifier(keyword_table(f"{prefix}_4")))
                               ).fetchone()
    assert entries == MAX_ROW_TERMS
    heavy, light = (store.search("ns", text=w, limit=1) for w in (words[0], words[-1]))
    assert [h.id for h in heavy] == [record.id] == [h.id for h in light]
    assert heavy[0].score > 0
    store.close()


def test_keyword_weights_use_the_tables_length_pivot(database_url, prefixes, admin):
    """keyword_average_length is fixed when the table is made: a store configured otherwise
    later writes weights comparable with the stored ones."""
    prefix = prefixes("pivot")
    first = PgVectorStore(database_url=database_url, table_prefix=prefix, keyword_average_length=64)
    later = PgVectorStore(database_url=database_url, table_prefix=prefix, keyword_average_length=5)
    one, two = as_records("d", [[1.0, 0, 0, 0], [0, 1.0, 0, 0]], texts=["melting glaciers melt fast"] * 2)
    first.upsert("ns", [one])
    later.upsert("ns", [two])
    weights = dict(admin.execute(psycopg.sql.SQL("SELECT id::text, weights::text FROM {}").format(
        psycopg.sql.Identifier(keyword_table(f"{prefix}_4")))).fetchall())
    assert weights[one.id] == weights[two.id]
    # 3 distinct lexemes (glacier, fast once; melt twice), at the pivot 64
    stored = sorted(float(entry.split(":")[1]) for entry in weights[one.id].split("}")[0][1:].split(","))
    assert stored == pytest.approx([tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * 3 / 64))
                                    for tf in (1, 1, 2)], rel=1e-6)
    fresh = PgVectorStore(database_url=database_url, table_prefix=prefix, keyword_average_length=5)
    with fresh._connection() as conn:
        assert fresh._table_info(conn, 4).average_length == 64
    for store in (first, later, fresh):
        store.close()


# the layout before the keyword table: a generated tsv column and a GIN index on the main table
OLD_LAYOUT = """
    CREATE TABLE {namespaces} (namespace text PRIMARY KEY, dimensions integer NOT NULL);
    CREATE TABLE {tables} (dimensions integer PRIMARY KEY, text_search_config text NOT NULL);
    CREATE TABLE {table} (
        id uuid PRIMARY KEY,
        namespace text NOT NULL,
        document_id text NOT NULL,
        ordinal integer NOT NULL,
        page integer,
        text text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{{}}',
        embedding vector(4) NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED
    );
    CREATE INDEX {document} ON {table} (namespace, document_id);
    CREATE INDEX {tsv} ON {table} USING gin (tsv);
    CREATE INDEX {embedding} ON {table} USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);
    INSERT INTO {tables} VALUES (4, 'english');
"""


def test_a_table_of_the_earlier_layout_is_migrated_on_first_use(database_url, prefixes, admin):
    """Made with the old DDL and filled: the first store to open moves its keywords to the
    keyword table (from the stored tsv) and drops the column; searches then rank exactly
    like a table made in the new layout from the same records. Stores opening at once
    migrate it once."""
    from pgvector.psycopg import register_vector

    old, new = prefixes("old"), prefixes("new")
    ident = psycopg.sql.Identifier
    table = f"{old}_4"
    with psycopg.connect(conninfo(database_url)) as conn:
        conn.execute(psycopg.sql.SQL(OLD_LAYOUT).format(
            namespaces=ident(f"{old}_namespaces"), tables=ident(f"{old}_tables"), table=ident(table),
            document=ident(f"{table}_document"), tsv=ident(f"{table}_tsv"), embedding=ident(f"{table}_embedding")))
        conn.commit()
        register_vector(conn)
        rng = np.random.default_rng(9)
        zipf = 1 / np.arange(1, len(VOCABULARY) + 1)
        records = []
        for namespace in ("ns", "other"):
            conn.execute(psycopg.sql.SQL("INSERT INTO {} VALUES (%s, 4)").format(ident(f"{old}_namespaces")),
                         (namespace,))
            for d in range(3):
                texts = [" ".join(rng.choice(VOCABULARY, size=int(rng.integers(3, 30)), p=zipf / zipf.sum()))
                         for _ in range(40)]
                batch = as_records(f"doc-{d}", unit(rng.normal(size=(40, 4))).astype(np.float32), texts=texts)
                records.append((namespace, batch))
                for r in batch:
                    conn.execute(psycopg.sql.SQL(
                        "INSERT INTO {} (id, namespace, document_id, ordinal, text, embedding) "
                        "VALUES (%s, %s, %s, %s, %s, %s)").format(ident(table)),
                        (r.id, namespace, r.document_id, r.ordinal, r.text, np.asarray(r.vector)))
        conn.commit()
    reference = PgVectorStore(database_url=database_url, table_prefix=new)
    for namespace, batch in records:
        reference.upsert(namespace, batch)
    analyze_keywords(admin, f"{new}_4")

    stores = [PgVectorStore(database_url=database_url, table_prefix=old) for _ in range(3)]
    errors = []

    def first_use(store):
        try:
            store.ready(60)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=first_use, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    columns = {r[0] for r in admin.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                           "AND attnum > 0 AND NOT attisdropped", (table,))}
    assert "tsv" not in columns and {"text", "embedding"} <= columns
    indexes = {r[0] for r in admin.execute("SELECT indexname FROM pg_indexes WHERE tablename IN (%s, %s)",
                                           (table, keyword_table(table)))}
    assert f"{table}_tsv" not in indexes and f"{keyword_table(table)}_tsv" in indexes
    assert table_rows(admin, keyword_table(table)) == [(240,)] and orphans(admin, table) == (0, 0, 0)
    assert admin.execute(psycopg.sql.SQL("SELECT keyword_average_length FROM {}").format(
        ident(f"{old}_tables"))).fetchall() == [(KEYWORD_AVERAGE_LENGTH,)]
    assert admin.execute("SELECT most_common_elems IS NOT NULL FROM pg_stats WHERE tablename = %s "
                         "AND attname = 'tsv'", (keyword_table(table),)).fetchone() == (True,)  # analysed: idf

    store = stores[0]
    for question in ["telomerase in tumour cell growth", "glucose", "heart lung brain bone"]:
        for namespace in ("ns", "other"):
            got = store.search(namespace, text=question, limit=30)
            want = reference.search(namespace, text=question, limit=30)
            assert len(got) == len(want) > 0
            assert [h.score for h in got] == pytest.approx([h.score for h in want], rel=1e-6)
    (namespace, batch) = records[0]
    assert store.search(namespace, vector=batch[5].vector, limit=1)[0].id == batch[5].id
    # and it keeps working as a new-layout table
    store.upsert("ns", as_records("late", [[1.0, 0, 0, 0]], texts=["zymurgy"]))
    assert [h.document_id for h in store.search("ns", text="zymurgy", limit=3)] == ["late"]
    store.delete_document("ns", "doc-0")
    assert orphans(admin, table) == (0, 0, 0)
    for s in (*stores, reference):
        s.close()


# ---------------------------------------------------------------- vector search round trips


def test_pooled_sessions_carry_the_hnsw_settings(database_url, prefixes):
    """Set once per connection, in autocommit: a search is its statements only. A search for
    more hits than ef_search raises it in its own transaction; the session keeps its value."""
    prefix = prefixes("session")
    store = PgVectorStore(database_url=database_url, table_prefix=prefix, max_pool_size=1, ef_search=40,
                          max_scan_tuples=5000, exact_scan_below=0)
    vectors = unit(np.random.default_rng(8).normal(size=(300, 8))).astype(np.float32)
    store.upsert("ns", as_records("d", vectors))

    def session():
        with store._connection() as conn:
            assert conn.autocommit and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            return [conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("hnsw.ef_search", "hnsw.iterative_scan", "hnsw.max_scan_tuples")]

    assert session() == ["40", "relaxed_order", "5000"]
    hits = store.search("ns", vector=vectors[0], limit=120)
    assert len(hits) == 120 and hits[0].id and store.stats["hnsw"] == 1
    want = set(np.argsort(-(vectors @ vectors[0]))[:120])
    assert len(want & {h.ordinal for h in hits}) / 120 >= 0.9
    assert session() == ["40", "relaxed_order", "5000"]
    store.close()


def test_a_stale_namespace_size_never_costs_hits(database_url, prefixes):
    """Whether a namespace is below exact_scan_below is remembered for a while. Another
    process shrinking a large namespace or growing a small one meanwhile changes the plan's
    speed, not the hits: the exact scan is exact, and a short HNSW answer falls back to it."""
    prefix = prefixes("stale")
    searcher = PgVectorStore(database_url=database_url, table_prefix=prefix, exact_scan_below=100)
    writer = PgVectorStore(database_url=database_url, table_prefix=prefix)
    rng = np.random.default_rng(6)
    big = as_records("many", unit(rng.normal(size=(150, 8))).astype(np.float32))
    keep = as_records("few", unit(rng.normal(size=(5, 8))).astype(np.float32))
    writer.upsert("shrinks", big + keep)
    query = unit(rng.normal(size=8)).astype(np.float32)
    assert len(searcher.search("shrinks", vector=query, limit=10)) == 10
    assert searcher.stats == {"exact": 0, "hnsw": 1, "exact_fallback": 0}
    assert searcher._small["shrinks"][0] is False
    writer.delete_document("shrinks", "many")  # the searcher still believes it large
    hits = searcher.search("shrinks", vector=query, limit=10)
    assert sorted(h.id for h in hits) == sorted(r.id for r in keep)
    assert searcher.stats == {"exact": 1, "hnsw": 2, "exact_fallback": 1}

    few = as_records("start", unit(rng.normal(size=(20, 8))).astype(np.float32))
    writer.upsert("grows", few)
    assert len(searcher.search("grows", vector=query, limit=10)) == 10
    assert searcher._small["grows"][0] is True
    more = as_records("more", unit(rng.normal(size=(300, 8))).astype(np.float32))
    writer.upsert("grows", more)  # the searcher still believes it small: exact, so exactly right
    everything = few + more
    vectors = np.array([r.vector for r in everything])
    want = [everything[i].id for i in np.argsort(-(vectors @ query), kind="stable")[:10]]
    assert [h.id for h in searcher.search("grows", vector=query, limit=10)] == want
    searcher._small["grows"] = (True, 0.0)  # expired: counted again
    searcher.search("grows", vector=query, limit=10)
    assert searcher._small["grows"][0] is False
    searcher.close()
    writer.close()


def test_concurrent_writes_of_one_namespace_never_deadlock(database_url, prefixes):
    """What a reindex does while ingestion threads still write: a namespace dropped while its
    documents are upserted, and one document deleted and upserted by two writers at once
    (PostgreSQL aborted one of two such transactions as a deadlock: they locked the main and
    the keyword table's rows in different orders). Every call succeeds."""
    store = PgVectorStore(database_url=database_url, table_prefix=prefixes("deadlock"), max_pool_size=8)
    rng = np.random.default_rng(5)
    words = [f"word{i}" for i in range(300)]

    def records(document, n=40):
        vectors = unit(rng.normal(size=(n, 16)))
        return [VectorRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{document}/{i}")), document_id=document,
                             ordinal=i, vector=vectors[i], text=" ".join(rng.choice(words, 60)))
                for i in range(n)]

    failures, rounds = [], 25
    barrier = threading.Barrier(4)

    def run(work):
        try:
            for round_ in range(rounds):
                barrier.wait(10)
                work(round_)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
            barrier.abort()

    def ingest(document):
        def work(_):
            store.delete_document("ns", document)
            store.upsert("ns", records(document))
        return work

    def drop(_):
        store.drop_namespace("ns")

    try:
        threads = [threading.Thread(target=run, args=(w,)) for w in (ingest("a"), ingest("a"), ingest("b"), drop)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures[:3]
        store.upsert("ns", records("a"))
        assert store.count("ns", "a") == 40
    finally:
        store.close()
