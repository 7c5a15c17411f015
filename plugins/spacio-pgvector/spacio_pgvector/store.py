"""``pgvector``: vectors (HNSW) and keyword search (tsvector) in PostgreSQL.

Why this shape:

- **One table per dimension count** (``vs_pgvector_384``): an HNSW index needs a fixed
  dimension, and spaces with the same embedder share one index. A small
  ``vs_pgvector_namespaces`` table says which table holds a namespace.
- **A small namespace inside a large table still gets ``limit`` hits.** A filtered HNSW
  scan looks at ``hnsw.ef_search`` nearest candidates of the whole table and filters them
  afterwards, so a space with 30 chunks next to 1M others gets few or none. Two guards:
  namespaces (or ``document_ids`` filters) with fewer than ``exact_scan_below`` matching
  rows are searched exactly (a B-tree range plus a top-N sort: cheap, perfect recall);
  larger ones use pgvector 0.8's iterative index scan (``hnsw.iterative_scan =
  relaxed_order`` up to ``hnsw.max_scan_tuples``) and re-order the hits by exact
  distance. If that still returns too few, the search falls back to the exact scan.
- **Keyword search is an OR of the question's lexemes, ranked BM25-style.** The built-in
  ``plainto``/``websearch_to_tsquery`` AND every word, which matches almost nothing for a
  natural-language question, and ``ts_rank_cd`` ignores how rare a word is (SciFact
  nDCG@10 0.33 against 0.66 here). The user's text only ever goes through ``to_tsvector``
  (which cannot fail on any input); its lexemes are then quoted as tsquery operands.
- **Hybrid** = reciprocal rank fusion of both lists.
- **Connections** come from a psycopg_pool opened on first use (the constructor does no
  I/O); psycopg 3 cooperates with gevent once it is monkey-patched.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import uuid
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import psycopg
from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from spacio.rag.contracts import Hit, InvalidInput, PluginError, UpstreamUnavailable, VectorRecord
from spacio.rag.fusion import reciprocal_rank_fusion

log = logging.getLogger(__name__)

HNSW_MAX_DIMENSIONS = 2000  # pgvector's limit for an HNSW index on the vector type
HYBRID_CANDIDATES = 50  # each side of a hybrid search contributes at most max(this, limit) hits
MAX_QUERY_TERMS = 64  # lexemes of a keyword query, the rarest kept
MAX_QUERY_CHARS = 10_000
BM25_K1, BM25_B = 1.2, 0.5  # b=0.5 scored better than 0.75 on SciFact (chunks vary little in length)
STATS_TTL = 300.0
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")
_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def conninfo(database_url: str) -> str:
    """A libpq URL from an SQLAlchemy one: ``postgresql+psycopg://`` -> ``postgresql://``."""
    scheme, sep, rest = database_url.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if not sep or base not in ("postgresql", "postgres"):
        raise ValueError(f"the pgvector store needs a postgresql:// URL, got {scheme or database_url!r}")
    return f"postgresql://{rest}"


class PgVectorStoreOptions(Schema):
    database_url = fields.String(required=True)  # host-provided: the app's database
    min_pool_size = fields.Integer(load_default=1, validate=validate.Range(min=0))
    max_pool_size = fields.Integer(load_default=10, validate=validate.Range(min=1))
    pool_timeout = fields.Float(load_default=30.0, validate=validate.Range(min=0))
    ef_search = fields.Integer(load_default=200, validate=validate.Range(min=1, max=1000))
    hnsw_m = fields.Integer(load_default=16, validate=validate.Range(min=2, max=100))
    hnsw_ef_construction = fields.Integer(load_default=64, validate=validate.Range(min=4, max=1000))
    text_search_config = fields.String(load_default="english")
    max_scan_tuples = fields.Integer(load_default=20000, validate=validate.Range(min=1))
    keyword_candidates = fields.Integer(load_default=4000, validate=validate.Range(min=1))
    exact_scan_below = fields.Integer(load_default=1000, validate=validate.Range(min=0))
    table_prefix = fields.String(load_default="vs_pgvector")

    @validates("database_url")
    def _postgres_only(self, value, **_):
        try:
            conninfo(value)
        except ValueError as error:
            raise ValidationError(str(error)) from error

    @validates("text_search_config")
    def _config_name(self, value, **_):
        if not _IDENTIFIER.match(value):
            raise ValidationError("a text search configuration name such as 'english' or 'simple'")

    @validates("table_prefix")
    def _prefix(self, value, **_):
        if not re.match(r"^[a-z_][a-z0-9_]{0,40}$", value):
            raise ValidationError("lower-case letters, digits and underscores, at most 41 characters")

    @validates_schema
    def _pool(self, data, **_):
        if data.get("min_pool_size", 1) > data.get("max_pool_size", 10):
            raise ValidationError("min_pool_size must not exceed max_pool_size", "min_pool_size")


class PgVectorStore:
    """Vectors and keyword search in PostgreSQL with pgvector. Thread- and greenlet-safe."""

    options_schema = PgVectorStoreOptions
    # Its calls wait on PostgreSQL, which cooperates with gevent once patched; the pool's
    # locks and queues are then greenlets', so the host must call it on the hub, never from
    # a real thread (spacio.rag.retrieval: psycopg_pool fails to grow from one).
    cpu_bound = False

    def __init__(self, database_url: str, min_pool_size: int = 1, max_pool_size: int = 10,
                 pool_timeout: float = 30.0, ef_search: int = 200, hnsw_m: int = 16,
                 hnsw_ef_construction: int = 64, text_search_config: str = "english",
                 max_scan_tuples: int = 20000, exact_scan_below: int = 1000, table_prefix: str = "vs_pgvector",
                 keyword_candidates: int = 4000):
        self.conninfo = conninfo(database_url)
        errors = PgVectorStoreOptions().validate({
            "database_url": database_url, "min_pool_size": min_pool_size, "max_pool_size": max_pool_size,
            "text_search_config": text_search_config, "table_prefix": table_prefix})
        if errors:
            raise ValueError(f"invalid pgvector store options: {errors}")
        self.min_pool_size, self.max_pool_size, self.pool_timeout = min_pool_size, max_pool_size, pool_timeout
        self.ef_search, self.hnsw_m, self.hnsw_ef_construction = ef_search, hnsw_m, hnsw_ef_construction
        self.text_search_config = text_search_config
        self.max_scan_tuples, self.exact_scan_below = max_scan_tuples, exact_scan_below
        self.keyword_candidates = keyword_candidates
        self.prefix = table_prefix
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._iterative = True  # pgvector >= 0.8; checked when the pool opens
        self._tables: dict[int, str] = {}  # dimensions -> text search config of a table known to exist
        self._namespaces: dict[str, int] = {}  # namespace -> dimensions
        self._stats: dict[int, _LexemeStats] = {}  # dimensions -> keyword statistics of the table
        self.stats = {"exact": 0, "hnsw": 0, "exact_fallback": 0}  # vector searches by plan, for tests/metrics

    # ------------------------------------------------------------------ plumbing

    def _table(self, dimensions: int) -> sql.Identifier:
        return sql.Identifier(f"{self.prefix}_{int(dimensions)}")

    def _open(self) -> ConnectionPool:
        with self._lock:
            if self._pool is not None:
                return self._pool
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    with conn.transaction():
                        self._ddl_lock(conn)
                        if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone():
                            self._create_extension(conn)
                        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (namespace text PRIMARY KEY, "
                                             "dimensions integer NOT NULL)").format(
                            sql.Identifier(f"{self.prefix}_namespaces")))
                        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (dimensions integer PRIMARY KEY, "
                                             "text_search_config text NOT NULL)").format(
                            sql.Identifier(f"{self.prefix}_tables")))
                    version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                                           ).fetchone()[0]
            except psycopg.OperationalError as error:
                raise UpstreamUnavailable(f"cannot reach PostgreSQL: {error}") from error
            self._iterative = tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)
            if not self._iterative:
                log.warning("pgvector %s has no iterative index scans: large filtered searches fall back "
                            "to exact scans (upgrade to 0.8+)", version)

            pool = ConnectionPool(self.conninfo, min_size=self.min_pool_size, max_size=self.max_pool_size,
                                  timeout=self.pool_timeout, open=False, configure=_configure,
                                  kwargs={"prepare_threshold": None}, name=f"spacio-{self.prefix}")
            pool.open(wait=False)
            self._pool = pool
            return pool

    @staticmethod
    def _create_extension(conn: psycopg.Connection) -> None:
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.FeatureNotSupported,
                psycopg.errors.UndefinedFile) as error:
            raise PluginError("the pgvector extension is not installed in this database and cannot be created "
                              f"by this user ({error.sqlstate}: {error}); a database owner or admin must run "
                              "CREATE EXTENSION vector", reason="pgvector_unavailable") from error

    def _ddl_lock(self, conn: psycopg.Connection) -> None:
        """Serialise schema changes across processes (CREATE ... IF NOT EXISTS still races)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(self.prefix.encode()) - 2**31,))

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        pool = self._pool or self._open()
        try:
            with pool.connection() as conn:
                with conn.transaction():
                    yield conn
        except BaseException as error:
            # the transaction rolled back: tables or namespaces it created may not exist
            self._tables.clear()
            self._namespaces.clear()
            if isinstance(error, PoolTimeout):
                raise UpstreamUnavailable(f"no PostgreSQL connection free within {self.pool_timeout}s",
                                          reason="pool_timeout") from error
            if isinstance(error, psycopg.OperationalError):
                raise UpstreamUnavailable(f"PostgreSQL is unavailable: {error}") from error
            raise

    def ready(self, timeout: float) -> None:
        """Readiness: one pooled connection within ``timeout`` answers ``SELECT 1`` (the
        first call also opens the pool and checks the extension). Raises
        ``UpstreamUnavailable`` when PostgreSQL does not answer."""
        pool = self._pool or self._open()
        try:
            with pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1").fetchone()
        except PoolTimeout as error:
            raise UpstreamUnavailable(f"no PostgreSQL connection within {timeout}s", reason="pool_timeout") from error
        except psycopg.OperationalError as error:
            raise UpstreamUnavailable(f"PostgreSQL is unavailable: {error}") from error

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _config(self, conn: psycopg.Connection, dimensions: int) -> str | None:
        """The text search config of the table for ``dimensions``, None if there is no table.

        Only committed facts are cached: a table or namespace this transaction creates is
        cached by the caller after the commit, so other threads never see it too early."""
        config = self._tables.get(dimensions)
        if config is None:
            row = conn.execute(sql.SQL("SELECT text_search_config FROM {} WHERE dimensions = %s").format(
                sql.Identifier(f"{self.prefix}_tables")), (dimensions,)).fetchone()
            if row is not None:
                config = self._tables[dimensions] = row[0]
        return config

    def _ensure_table(self, conn: psycopg.Connection, dimensions: int) -> str:
        config = self._config(conn, dimensions)
        if config is None:
            self._ddl_lock(conn)
            config = self._config(conn, dimensions)  # created while we waited for the lock?
        if config is None:
            self._create_table(conn, dimensions)
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(f"{self.prefix}_tables")),
                         (dimensions, self.text_search_config))
            config = self.text_search_config
        elif config != self.text_search_config:
            log.warning("%s_%d was created with text search config %r; keeping it (now configured: %r)",
                        self.prefix, dimensions, config, self.text_search_config)
        return config

    def _create_table(self, conn: psycopg.Connection, dimensions: int) -> None:
        name = f"{self.prefix}_{dimensions}"
        table = sql.Identifier(name)
        try:
            with conn.transaction():  # a savepoint: a bad config name must not poison the caller's transaction
                conn.execute(sql.SQL("SELECT {}::regconfig").format(sql.Literal(self.text_search_config)))
        except psycopg.errors.UndefinedObject as error:
            raise PluginError(f"text search configuration {self.text_search_config!r} does not exist "
                              "in PostgreSQL", reason="invalid_option") from error
        conn.execute(sql.SQL("""
            CREATE TABLE IF NOT EXISTS {table} (
                id uuid PRIMARY KEY,
                namespace text NOT NULL,
                document_id text NOT NULL,
                ordinal integer NOT NULL,
                page integer,
                text text NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}',
                embedding vector({dims}) NOT NULL,
                tsv tsvector GENERATED ALWAYS AS (to_tsvector({config}::regconfig, text)) STORED
            )""").format(table=table, dims=sql.Literal(dimensions), config=sql.Literal(self.text_search_config)))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace, document_id)").format(
            sql.Identifier(f"{name}_document"), table))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (tsv)").format(
            sql.Identifier(f"{name}_tsv"), table))
        if dimensions <= HNSW_MAX_DIMENSIONS:
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops) "
                                 "WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(f"{name}_embedding"), table, sql.Literal(self.hnsw_m),
                sql.Literal(self.hnsw_ef_construction)))
        else:
            log.warning("%s: %d dimensions is above pgvector's HNSW limit (%d); searches scan exactly",
                        name, dimensions, HNSW_MAX_DIMENSIONS)

    def _dimensions(self, conn: psycopg.Connection, namespace: str) -> int | None:
        dimensions = self._namespaces.get(namespace)
        if dimensions is None:
            row = conn.execute(sql.SQL("SELECT dimensions FROM {} WHERE namespace = %s").format(
                sql.Identifier(f"{self.prefix}_namespaces")), (namespace,)).fetchone()
            if row is None:
                return None
            dimensions = self._namespaces[namespace] = row[0]
        return dimensions

    # ------------------------------------------------------------------ writes

    def ensure_namespace(self, namespace: str, dimensions: int) -> None:
        if dimensions <= 0:
            raise InvalidInput(f"dimensions must be positive, got {dimensions}", reason="invalid_dimensions")
        with self._transaction() as conn:
            remember = self._ensure_namespace(conn, namespace, dimensions)
        remember()

    def _ensure_namespace(self, conn: psycopg.Connection, namespace: str, dimensions: int):
        """Create the table and the namespace if needed; returns what to cache once committed."""
        config = self._ensure_table(conn, dimensions)
        known = self._dimensions(conn, namespace)
        if known is None:
            known = conn.execute(sql.SQL(
                "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (namespace) DO UPDATE SET namespace = EXCLUDED.namespace "
                "RETURNING dimensions").format(sql.Identifier(f"{self.prefix}_namespaces")),
                (namespace, dimensions)).fetchone()[0]
        if known != dimensions:
            raise InvalidInput(f"namespace {namespace!r} holds {known}-dimensional vectors, not {dimensions}",
                               reason="dimension_mismatch")

        def remember() -> None:
            self._tables[dimensions] = config
            self._namespaces[namespace] = dimensions

        return remember

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        matrix = _normalised_rows([r.vector for r in records])
        rows = [(_uuid(r.id), namespace, _clean(str(r.document_id)), int(r.ordinal),
                 None if r.page is None else int(r.page), _clean(r.text), _metadata_json(r.metadata), vector)
                for r, vector in zip(records, matrix)]
        with self._transaction() as conn:
            remember = self._ensure_namespace(conn, namespace, matrix.shape[1])
            with conn.cursor() as cursor, _too_large_is_invalid():
                cursor.executemany(sql.SQL("""
                    INSERT INTO {} (id, namespace, document_id, ordinal, page, text, metadata, embedding)
                    VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %b)
                    ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace,
                        document_id = EXCLUDED.document_id, ordinal = EXCLUDED.ordinal, page = EXCLUDED.page,
                        text = EXCLUDED.text, metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding
                    """).format(self._table(matrix.shape[1])), rows)
        remember()

    def delete_document(self, namespace: str, document_id: str) -> None:
        with self._transaction() as conn:
            dimensions = self._dimensions(conn, namespace)
            if dimensions is not None:
                conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s AND document_id = %s").format(
                    self._table(dimensions)), (namespace, str(document_id)))

    def drop_namespace(self, namespace: str) -> None:
        with self._transaction() as conn:
            dimensions = self._dimensions(conn, namespace)
            if dimensions is not None:
                conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(self._table(dimensions)),
                             (namespace,))
                conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(
                    sql.Identifier(f"{self.prefix}_namespaces")), (namespace,))
        self._namespaces.pop(namespace, None)

    def count(self, namespace: str, document_id: str | None = None) -> int:
        with self._transaction() as conn:
            dimensions = self._dimensions(conn, namespace)
            if dimensions is None:
                return 0
            query = sql.SQL("SELECT count(*) FROM {} WHERE namespace = %s").format(self._table(dimensions))
            args: tuple = (namespace,)
            if document_id is not None:
                query += sql.SQL(" AND document_id = %s")
                args += (str(document_id),)
            return conn.execute(query, args).fetchone()[0]

    # ------------------------------------------------------------------ search

    def search(self, namespace: str, *, vector: Sequence[float] | None = None, text: str | None = None,
               limit: int = 10, document_ids: Sequence[str] | None = None) -> list[Hit]:
        if limit <= 0:
            return []
        if vector is None and text is None:
            raise InvalidInput("search needs a vector, a text or both", reason="empty_query")
        query = None if vector is None else _normalised_rows([vector])[0]
        documents = None if document_ids is None else [_clean(str(d)) for d in document_ids]
        if documents is not None and not documents:
            return []
        hybrid = query is not None and text is not None
        depth = max(limit, HYBRID_CANDIDATES) if hybrid else limit
        with self._transaction() as conn:
            dimensions = self._dimensions(conn, namespace)
            if dimensions is None:
                return []
            by_vector: list[Hit] = []
            by_text: list[Hit] = []
            if query is not None:
                if len(query) != dimensions:
                    raise InvalidInput(f"query vector has {len(query)} dimensions, namespace {namespace!r} "
                                       f"holds {dimensions}", reason="dimension_mismatch")
                by_vector = self._vector_search(conn, dimensions, namespace, query, depth, documents)
            if text is not None and text.strip():
                by_text = self._keyword_search(conn, dimensions, namespace, text, depth, documents)
        if not hybrid:
            return by_vector if query is not None else by_text
        return reciprocal_rank_fusion([by_vector, by_text], limit=limit)

    def _filter(self, namespace: str, documents: list[str] | None) -> tuple[sql.Composable, list[Any]]:
        if documents is None:
            return sql.SQL("namespace = %s"), [namespace]
        return sql.SQL("namespace = %s AND document_id = ANY(%s)"), [namespace, documents]

    def _vector_search(self, conn, dimensions, namespace, query, limit, documents) -> list[Hit]:
        table = self._table(dimensions)
        where, args = self._filter(namespace, documents)
        exact = dimensions > HNSW_MAX_DIMENSIONS or not self._iterative
        if not exact and self.exact_scan_below > 0:
            # how many rows match, counted up to the threshold on the (namespace, document_id) index
            matching = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT %s) m").format(
                table, where), [*args, self.exact_scan_below]).fetchone()[0]
            if matching == 0:
                return []
            exact = matching < self.exact_scan_below
        if not exact:
            hits = self._hnsw_search(conn, table, where, args, query, limit)
            self.stats["hnsw"] += 1
            if len(hits) >= limit:
                return hits
            self.stats["exact_fallback"] += 1
        self.stats["exact"] += 1
        return self._exact_search(conn, table, where, args, query, limit)

    def _hnsw_search(self, conn, table, where, args, query, limit) -> list[Hit]:
        """Iterative HNSW scan; the MATERIALIZED CTE lets the outer query re-order by exact distance."""
        conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', "
                     "'relaxed_order', true), set_config('hnsw.max_scan_tuples', %s, true)",
                     (str(max(self.ef_search, limit)), str(self.max_scan_tuples)))
        # relaxed_order returns hits roughly by distance: take twice as many, keep the exact best
        rows = conn.execute(self._hnsw_sql(table, where), [query, *args, 2 * limit, limit]).fetchall()
        return self._hits(rows)

    @staticmethod
    def _hnsw_sql(table: sql.Composable, where: sql.Composable) -> sql.Composed:
        return sql.SQL("""
            WITH nearest AS MATERIALIZED (
                SELECT id, embedding <=> %s AS distance FROM {table} WHERE {where} ORDER BY distance LIMIT %s)
            SELECT t.id, t.document_id, t.ordinal, t.text, t.page, t.metadata, 1 - n.distance
            FROM nearest n JOIN {table} t USING (id) ORDER BY n.distance, t.id LIMIT %s""").format(
            table=table, where=where)

    def _exact_search(self, conn, table, where, args, query, limit) -> list[Hit]:
        """Distance to every matching row; no ORDER BY inside the CTE, so no index can cut it short."""
        return self._hits(conn.execute(sql.SQL("""
            WITH scored AS MATERIALIZED (SELECT id, embedding <=> %s AS distance FROM {table} WHERE {where})
            SELECT t.id, t.document_id, t.ordinal, t.text, t.page, t.metadata, 1 - s.distance
            FROM (SELECT id, distance FROM scored ORDER BY distance, id LIMIT %s) s JOIN {table} t USING (id)
            ORDER BY s.distance, t.id""").format(table=table, where=where), [query, *args, limit]).fetchall())

    def _keyword_search(self, conn, dimensions, namespace, text, limit, documents) -> list[Hit]:
        """BM25-style ranking over tsvector: an OR of the query's lexemes, weighted by rarity.

        ``ts_rank``/``ts_rank_cd`` know nothing of how common a word is (SciFact nDCG@10:
        ts_rank_cd 0.33; this 0.66; SQLite FTS5 bm25 0.69). Word frequencies come from the
        planner statistics ANALYZE keeps for the tsv column (``pg_stats.most_common_elems``),
        so no extra scan is needed.

        What costs is reading and ranking each matching row (~6-10 us: the heap fetch, the
        tsv copied once, a ts_rank per word). So rows are matched on the rarest lexemes only,
        as many as keep the expected matches within ``keyword_candidates``, and scored on all
        of them: a common word adds little to a score but would make most rows candidates.
        When that finds fewer than ``limit`` rows, more lexemes match (twice the expected
        rows, at least one more lexeme), until all do.
        """
        table = self._table(dimensions)
        config = self._config(conn, dimensions) or self.text_search_config
        lexemes = [r[0] for r in conn.execute(
            "SELECT DISTINCT lexeme FROM unnest(to_tsvector(%s::regconfig, %s))",
            (config, _clean(text[:MAX_QUERY_CHARS]))).fetchall()]
        if not lexemes:
            return []
        stats = self._lexeme_stats(conn, dimensions)
        frequency = {lexeme: stats.frequency.get(lexeme, stats.rare) for lexeme in lexemes}
        lexemes = sorted(lexemes, key=lambda lexeme: (frequency[lexeme], lexeme))[:MAX_QUERY_TERMS]
        least = 2.0 * limit  # expected rows; the statistics are for the whole table, not this namespace
        while True:
            selective = _rarest(lexemes, frequency, stats.rows, self.keyword_candidates, least)
            hits = self._bm25(conn, table, namespace, documents, lexemes, frequency, selective, stats, limit)
            if len(hits) >= limit or len(selective) == len(lexemes):
                return hits
            # too few: at least one more lexeme, and twice the rows expected so far
            least = 2 * max(1.0, sum(frequency[lexeme] for lexeme in selective) * stats.rows)

    def _bm25(self, conn, table, namespace, documents, lexemes, frequency, match, stats, limit) -> list[Hit]:
        where, args = self._filter(namespace, documents)
        # ts_rank of a one-lexeme query is 0.0608 for one occurrence and grows slowly with more:
        # divided by that it stands in for the term frequency
        ranks = sql.SQL(", ").join(sql.SQL("ts_rank(tsv, %s::tsquery) / 0.0608 AS {}").format(
            sql.Identifier(f"tf{i}")) for i in range(len(lexemes)))
        # idf * tf * (k1 + 1) / (tf + k1 * (1 - b) + k1 * b * len / average), in float8 only
        # (a numeric literal would make every row's score numeric arithmetic)
        score = sql.SQL(" + ").join(
            sql.SQL("%s * {tf} / ({tf} + %s + %s * len)").format(tf=sql.Identifier(f"tf{i}"))
            for i in range(len(lexemes)))
        # Both CTEs are materialised: `|| ''` detoasts each matching row's tsv once instead
        # of in every ts_rank, and an inlined `ranked` would compute every rank twice
        # (bench/latency.py, 100k rows: keyword p50 215 -> 99 ms, identical rankings).
        query = sql.SQL("""
            WITH candidates AS MATERIALIZED (
                SELECT id, tsv || ''::tsvector AS tsv FROM {table} WHERE {where} AND tsv @@ %s::tsquery),
            ranked AS MATERIALIZED (SELECT id, length(tsv) AS len, {ranks} FROM candidates),
            best AS (SELECT id, {score} AS score FROM ranked ORDER BY score DESC, id LIMIT %s)
            SELECT t.id, t.document_id, t.ordinal, t.text, t.page, t.metadata, b.score
            FROM best b JOIN {table} t USING (id) ORDER BY b.score DESC, t.id""").format(
            table=table, where=where, ranks=ranks, score=score)
        params = [*args, " | ".join(_tsquery_lexeme(m) for m in match), *map(_tsquery_lexeme, lexemes)]
        for lexeme in lexemes:
            params += [_idf(frequency[lexeme]) * (BM25_K1 + 1), BM25_K1 * (1 - BM25_B),
                       BM25_K1 * BM25_B / stats.average_length]
        params.append(limit)
        return self._hits(conn.execute(query, params).fetchall())

    def _lexeme_stats(self, conn, dimensions: int) -> "_LexemeStats":
        """Lexeme frequencies and mean row length of a table, cached for STATS_TTL seconds."""
        cached = self._stats.get(dimensions)
        now = time.monotonic()
        if cached is not None and now - cached.loaded < STATS_TTL:
            return cached
        name = f"{self.prefix}_{dimensions}"
        row = conn.execute(
            "SELECT most_common_elems::text::text[], most_common_elem_freqs FROM pg_stats "
            "WHERE schemaname = current_schema() AND tablename = %s AND attname = 'tsv'", (name,)).fetchone()
        frequency: dict[str, float] = {}
        rare = 0.0  # no statistics yet (never analysed): every lexeme counts as rare
        rows = conn.execute("SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (name,)).fetchone()[0]
        if row is not None and row[0] is not None:
            elements, freqs = row
            frequency = dict(zip(elements, freqs))
            rare = freqs[len(elements)] / 2  # below the least frequent element the sample kept
        average = conn.execute(sql.SQL("SELECT avg(length(tsv)) FROM (SELECT tsv FROM {} LIMIT 1000) s").format(
            sql.Identifier(name))).fetchone()[0]
        stats = _LexemeStats(frequency, rare, float(average or 1.0), max(float(rows), 0.0), now)
        self._stats[dimensions] = stats
        return stats

    @staticmethod
    def _hits(rows) -> list[Hit]:
        return [Hit(id=str(r[0]), document_id=r[1], ordinal=r[2], text=r[3], page=r[4], metadata=r[5],
                    score=float(r[6])) for r in rows]


@contextmanager
def _too_large_is_invalid() -> Iterator[None]:
    try:
        yield
    except psycopg.errors.ProgramLimitExceeded as error:  # e.g. a text over tsvector's 1 MB
        raise InvalidInput(f"a record is too large for PostgreSQL: {error}", reason="record_too_large") from error


@dataclass(frozen=True)
class _LexemeStats:
    frequency: dict[str, float]  # share of rows containing the lexeme (planner statistics)
    rare: float  # assumed share for a lexeme the statistics do not list
    average_length: float  # lexemes per row
    rows: float  # rows in the table (pg_class.reltuples; 0 when never analysed)
    loaded: float  # time.monotonic()


def _rarest(lexemes: list[str], frequency: dict[str, float], rows: float, budget: float,
            least: float) -> list[str]:
    """The rarest of ``lexemes`` (sorted rarest first): while their expected matching rows
    are under ``least``, and then as long as they stay within ``budget``; at least one."""
    chosen, expected = [], 0.0
    for lexeme in lexemes:
        more = expected + frequency[lexeme] * rows
        if chosen and expected >= least and more > budget:
            break
        chosen.append(lexeme)
        expected = more
    return chosen


def _idf(frequency: float) -> float:
    """BM25's inverse document frequency, from the share of rows holding the lexeme."""
    return math.log(1 + (1 - frequency + 1e-6) / (frequency + 1e-6))


def _tsquery_lexeme(lexeme: str) -> str:
    """A lexeme as a quoted tsquery operand: taken verbatim, never parsed as syntax."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _configure(conn: psycopg.Connection) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)
    conn.commit()


def _normalised_rows(vectors: Sequence[Any]) -> np.ndarray:
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"vectors must be sequences of floats of one length: {error}",
                           reason="invalid_vector") from error
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise InvalidInput(f"vectors must be non-empty sequences of floats, got shape {matrix.shape}",
                           reason="invalid_vector")
    norms = np.linalg.norm(matrix, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise InvalidInput("vectors must be finite and non-zero", reason="invalid_vector")
    return matrix / norms[:, None]


def _uuid(value: Any) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError as error:
        raise InvalidInput(f"record ids must be UUIDs, got {value!r}", reason="invalid_id") from error


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL characters; PDFs sometimes contain them."""
    return text.replace("\x00", "") if "\x00" in text else text


def _metadata_json(metadata) -> str:
    try:
        dumped = json.dumps(dict(metadata or {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"metadata must be JSON-able: {error}", reason="invalid_metadata") from error
    return _NUL_ESCAPE.sub(r"\1", dumped) if "\\u0000" in dumped else dumped
