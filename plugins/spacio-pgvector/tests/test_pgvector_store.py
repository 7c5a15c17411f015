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
from spacio_pgvector.store import _rarest, _tsquery_lexeme, conninfo

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
    admin.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(f"{prefix}_4")))
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
    admin.execute(psycopg.sql.SQL("ANALYZE {}").format(psycopg.sql.Identifier(f"{prefix}_4")))
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
