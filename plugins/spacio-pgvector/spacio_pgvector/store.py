"""``pgvector``: vectors (HNSW) and keyword search (tsvector + BM25 weights) in PostgreSQL.

Why this shape:

- **One table per dimension count** (``vs_pgvector_384``): an HNSW index needs a fixed
  dimension, and spaces with the same embedder share one index. A small
  ``vs_pgvector_namespaces`` table says which table holds a namespace, and
  ``vs_pgvector_tables`` records each table's text search config and BM25 length pivot.
- **A small namespace inside a large table still gets ``limit`` hits.** A filtered HNSW
  scan looks at ``hnsw.ef_search`` nearest candidates of the whole table and filters them
  afterwards, so a space with 30 chunks next to 1M others gets few or none. Two guards:
  namespaces (or ``document_ids`` filters) with fewer than ``exact_scan_below`` matching
  rows are searched exactly (a B-tree range plus a top-N sort: cheap, perfect recall);
  larger ones use pgvector 0.8's iterative index scan (``hnsw.iterative_scan =
  relaxed_order`` up to ``hnsw.max_scan_tuples``) and re-order the hits by exact
  distance. If that still returns too few, the search falls back to the exact scan.
- **Few round trips per search.** Pooled connections are in autocommit mode with the HNSW
  settings made once per session, so a read is one statement, without BEGIN/COMMIT or
  ``SET`` (only a search asking for more than ``ef_search`` hits sets it, locally, in a
  transaction). Whether a namespace is below ``exact_scan_below`` is remembered for
  ``SIZE_TTL`` seconds: a stale answer costs speed, never hits (exact is always right; an
  HNSW search that comes back short falls back to exact).
- **Keyword search is an OR of the question's lexemes, ranked BM25.** The built-in
  ``plainto``/``websearch_to_tsquery`` AND every word, which matches almost nothing for a
  natural-language question, and ``ts_rank_cd`` ignores how rare a word is (SciFact
  nDCG@10 0.33 against 0.64-0.66 here). The user's text only ever goes through
  ``to_tsvector`` (which cannot fail on any input); its lexemes are then quoted as
  tsquery operands.
- **Keywords live in a narrow side table** ``vs_pgvector_384_keywords`` (id, namespace,
  tsv, BM25 term weights as a ``sparsevec``), written in the same transaction as the main
  row. What a keyword search costs is visiting and scoring its candidate rows (up to a few
  thousand at 100k chunks): on the wide main table the visit alone took 5.4 ms and a
  per-row SQL score (a ``ts_rank`` per query word plus the BM25 arithmetic) most of the
  rest (p50 15-19 ms, p99 37-45 ms). So each row's BM25 term-frequency part is computed
  once, at write time, into a sparse vector (dimension = 28 bits of SHA-256 of the lexeme;
  value = ``tf*(k1+1) / (tf + k1*(1 - b + b*len/avgdl))``), the query is a sparse vector of
  idf weights, and a row's score is ONE C call, pgvector's inner product. The side table
  keeps rows narrow (~1 KB): the same column on the main table is detoasted per row
  (rows > 2 KB are TOASTed) and was twice as slow. The hash is SHA-256 (not ``hashtext``,
  whose values may change across PostgreSQL major versions and would silently break
  stored weights after ``pg_upgrade``, nor ``md5``, unavailable on FIPS builds). ``avgdl``
  is a fixed pivot (``keyword_average_length``, recorded per table at creation); ``idf``
  comes per query from the planner statistics of the ``tsv`` column, so no extra scan.
- **Hybrid** = reciprocal rank fusion of both lists.
- **Connections** come from a psycopg_pool opened on first use (the constructor does no
  I/O); psycopg 3 cooperates with gevent once it is monkey-patched. Opening the pool also
  migrates tables of the earlier layout (a generated ``tsv`` column on the main table) to
  this one, under an advisory lock.
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
# The BM25 length pivot (avgdl, distinct lexemes per chunk) baked into stored weights:
# measured 62.3 on the 100k-chunk SciFact table of bench/latency.py and 62.6 on the 9,607
# chunks (256 tokens) of the 5,183 SciFact abstracts (bench/quality.py --backend postgres).
KEYWORD_AVERAGE_LENGTH = 64.0
TERM_BITS = 28  # a term's sparsevec dimension: 28 bits of SHA-256 of the lexeme, plus 1
TERM_DIMENSIONS = 2**TERM_BITS
MAX_ROW_TERMS = 16_000  # pgvector's limit of non-zero entries in one sparsevec
STATS_TTL = 300.0
SIZE_TTL = 30.0  # seconds a namespace's "fewer than exact_scan_below rows" answer is reused
SIZE_CACHE = 10_000  # namespaces remembered; the cache starts over when full
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
    keyword_average_length = fields.Float(load_default=KEYWORD_AVERAGE_LENGTH,
                                          validate=validate.Range(min=1, max=100_000))
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


@dataclass(frozen=True)
class _Table:
    """What the registry (``{prefix}_tables``) says about the table of one dimension count."""
    text_search_config: str
    average_length: float  # the BM25 length pivot its keyword weights were computed with


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
                 keyword_candidates: int = 4000, keyword_average_length: float = KEYWORD_AVERAGE_LENGTH):
        self.conninfo = conninfo(database_url)
        errors = PgVectorStoreOptions().validate({
            "database_url": database_url, "min_pool_size": min_pool_size, "max_pool_size": max_pool_size,
            "text_search_config": text_search_config, "table_prefix": table_prefix,
            "keyword_average_length": keyword_average_length})
        if errors:
            raise ValueError(f"invalid pgvector store options: {errors}")
        self.min_pool_size, self.max_pool_size, self.pool_timeout = min_pool_size, max_pool_size, pool_timeout
        self.ef_search, self.hnsw_m, self.hnsw_ef_construction = ef_search, hnsw_m, hnsw_ef_construction
        self.text_search_config = text_search_config
        self.max_scan_tuples, self.exact_scan_below = max_scan_tuples, exact_scan_below
        self.keyword_candidates = keyword_candidates
        self.keyword_average_length = float(keyword_average_length)
        self.prefix = table_prefix
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._iterative = True  # pgvector >= 0.8; checked when the pool opens
        self._tables: dict[int, _Table] = {}  # dimensions -> registry facts of a table known to exist
        self._namespaces: dict[str, int] = {}  # namespace -> dimensions
        self._stats: dict[int, _LexemeStats] = {}  # dimensions -> keyword statistics of the table
        self._small: dict[str, tuple[bool, float]] = {}  # namespace -> (< exact_scan_below rows, until)
        self.stats = {"exact": 0, "hnsw": 0, "exact_fallback": 0}  # vector searches by plan, for tests/metrics

    # ------------------------------------------------------------------ plumbing

    def _name(self, dimensions: int) -> str:
        return f"{self.prefix}_{int(dimensions)}"

    def _table(self, dimensions: int) -> sql.Identifier:
        return sql.Identifier(self._name(dimensions))

    def _keywords(self, dimensions: int) -> sql.Identifier:
        return sql.Identifier(keyword_table(self._name(dimensions)))

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
                        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                                               ).fetchone()[0]
                        if _version(version) < (0, 7):
                            raise PluginError(f"pgvector {version} is too old: keyword search needs its sparsevec "
                                              "type (0.7+; 0.8+ recommended): ALTER EXTENSION vector UPDATE",
                                              reason="pgvector_unavailable")
                        self._create_registry(conn)
                        self._migrate(conn)
            except psycopg.OperationalError as error:
                raise UpstreamUnavailable(f"cannot reach PostgreSQL: {error}") from error
            self._iterative = _version(version) >= (0, 8)
            if not self._iterative:
                log.warning("pgvector %s has no iterative index scans: large filtered searches fall back "
                            "to exact scans (upgrade to 0.8+)", version)

            # autocommit: a search is its statements only, no BEGIN/COMMIT round trips; writes
            # open their own transactions
            pool = ConnectionPool(self.conninfo, min_size=self.min_pool_size, max_size=self.max_pool_size,
                                  timeout=self.pool_timeout, open=False, configure=self._configure,
                                  kwargs={"prepare_threshold": None, "autocommit": True},
                                  name=f"spacio-{self.prefix}")
            pool.open(wait=False)
            self._pool = pool
            return pool

    def _configure(self, conn: psycopg.Connection) -> None:
        """A new pooled connection: the vector types, and this store's HNSW settings for the session."""
        from pgvector.psycopg import register_vector

        register_vector(conn)
        settings = {"hnsw.ef_search": str(self.ef_search)}
        if self._iterative:
            settings.update({"hnsw.iterative_scan": "relaxed_order", "hnsw.max_scan_tuples": str(self.max_scan_tuples)})
        # loading the extension's library first: the settings are then checked, not placeholders
        conn.execute(sql.SQL("SELECT '[1]'::vector, {}").format(sql.SQL(", ").join(
            sql.SQL("set_config({}, {}, false)").format(sql.Literal(k), sql.Literal(v))
            for k, v in settings.items())))
        if not conn.autocommit:
            conn.commit()

    def _create_registry(self, conn: psycopg.Connection) -> None:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (namespace text PRIMARY KEY, "
                             "dimensions integer NOT NULL)").format(sql.Identifier(f"{self.prefix}_namespaces")))
        tables = sql.Identifier(f"{self.prefix}_tables")
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (dimensions integer PRIMARY KEY, "
                             "text_search_config text NOT NULL, keyword_average_length double precision)"
                             ).format(tables))
        # registries of the earlier layout lack the column (checked first: ALTER TABLE locks the table)
        if not conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass "
                            "AND attname = 'keyword_average_length' AND NOT attisdropped",
                            (f"{self.prefix}_tables",)).fetchone():
            conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS keyword_average_length double precision"
                                 ).format(tables))

    def _migrate(self, conn: psycopg.Connection) -> None:
        """Tables of the earlier layout (a generated ``tsv`` column and its GIN index on the
        main table, no keyword table) get their keyword table, filled from the stored
        ``tsv``; then the column goes (its index with it). Runs under the DDL lock, in the
        caller's transaction. The dropped column's bytes stay in the old rows until they are
        rewritten (``VACUUM FULL`` reclaims them; not done here: it locks the table)."""
        rows = conn.execute(sql.SQL("""
            SELECT t.dimensions, t.text_search_config, t.keyword_average_length,
                   to_regclass(format('%%I', %(prefix)s || '_' || t.dimensions)) IS NOT NULL,
                   to_regclass(format('%%I', %(prefix)s || '_' || t.dimensions || '_keywords')) IS NOT NULL,
                   EXISTS (SELECT 1 FROM pg_attribute a
                           WHERE a.attrelid = to_regclass(format('%%I', %(prefix)s || '_' || t.dimensions))
                             AND a.attname = 'tsv' AND NOT a.attisdropped)
            FROM {} t ORDER BY t.dimensions""").format(sql.Identifier(f"{self.prefix}_tables")),
            {"prefix": self.prefix}).fetchall()
        for dimensions, config, average, has_main, has_keywords, has_tsv in rows:
            if average is None:
                average = self.keyword_average_length
                conn.execute(sql.SQL("UPDATE {} SET keyword_average_length = %s WHERE dimensions = %s").format(
                    sql.Identifier(f"{self.prefix}_tables")), (average, dimensions))
            if not has_main:
                continue
            if not has_keywords:
                started = time.monotonic()
                self._create_keyword_table(conn, dimensions, indexes=False)
                source = sql.SQL("tsv") if has_tsv else None
                conn.execute(keyword_rows_sql(self._name(dimensions), config, average, sql.SQL("true"), tsv=source))
                self._create_keyword_indexes(conn, dimensions)
                conn.execute(sql.SQL("ANALYZE {}").format(self._keywords(dimensions)))
                log.warning("%s: keyword search moved to %s (%.1f s)", self._name(dimensions),
                            keyword_table(self._name(dimensions)), time.monotonic() - started)
            if has_tsv:
                conn.execute(sql.SQL("ALTER TABLE {} DROP COLUMN tsv").format(self._table(dimensions)))

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

    def _write_locks(self, conn: psycopg.Connection, namespace: str, documents: Sequence[str] = (),
                     drop: bool = False) -> None:
        """Advisory locks of a write transaction, taken before it touches a row: the
        namespace's (shared by writes, exclusive for ``drop_namespace``), then each document's
        (exclusive, in key order). Two writers of one document, or a drop and a write of one
        namespace, then wait for each other instead of locking the same rows in different
        orders, which PostgreSQL aborts as a deadlock (a reindex drops a namespace while
        ingestion still writes to it). Keys are CRC32s: a collision only makes two writers
        take turns."""
        space = _lock_key(f"{self.prefix}:namespace")
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)" if drop else "SELECT pg_advisory_xact_lock_shared(%s, %s)",
                     (space, _lock_key(namespace)))
        keys = sorted({_lock_key(f"{namespace}\0{document}") for document in documents})
        if keys:
            conn.execute("SELECT count(pg_advisory_xact_lock(%s, k)) FROM (SELECT unnest(%s::int[]) AS k "
                         "ORDER BY 1) s", (_lock_key(f"{self.prefix}:document"), keys))

    @contextmanager
    def _connection(self, transaction: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled (autocommit) connection; with ``transaction`` its statements are one transaction."""
        pool = self._pool or self._open()
        try:
            with pool.connection() as conn:
                if transaction:
                    with conn.transaction():
                        yield conn
                else:
                    yield conn
        except BaseException as error:
            # a transaction rolled back: tables or namespaces it created may not exist
            self._tables.clear()
            self._namespaces.clear()
            if isinstance(error, PoolTimeout):
                raise UpstreamUnavailable(f"no PostgreSQL connection free within {self.pool_timeout}s",
                                          reason="pool_timeout") from error
            if isinstance(error, psycopg.OperationalError):
                raise UpstreamUnavailable(f"PostgreSQL is unavailable: {error}") from error
            raise

    def _transaction(self) -> Iterator[psycopg.Connection]:
        return self._connection(transaction=True)

    def ready(self, timeout: float) -> None:
        """Readiness: one pooled connection within ``timeout`` answers ``SELECT 1`` (the
        first call also opens the pool, checks the extension and migrates old tables).
        Raises ``UpstreamUnavailable`` when PostgreSQL does not answer."""
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

    def _table_info(self, conn: psycopg.Connection, dimensions: int) -> _Table | None:
        """The registry's facts about the table for ``dimensions``, None if there is no table.

        Only committed facts are cached: a table or namespace this transaction creates is
        cached by the caller after the commit, so other threads never see it too early."""
        info = self._tables.get(dimensions)
        if info is None:
            row = conn.execute(sql.SQL("SELECT text_search_config, coalesce(keyword_average_length, %s) FROM {} "
                                       "WHERE dimensions = %s").format(sql.Identifier(f"{self.prefix}_tables")),
                               (self.keyword_average_length, dimensions)).fetchone()
            if row is not None:
                info = self._tables[dimensions] = _Table(row[0], float(row[1]))
        return info

    def _ensure_table(self, conn: psycopg.Connection, dimensions: int) -> _Table:
        info = self._table_info(conn, dimensions)
        if info is None:
            self._ddl_lock(conn)
            info = self._table_info(conn, dimensions)  # created while we waited for the lock?
        if info is None:
            self._create_table(conn, dimensions)
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(
                sql.Identifier(f"{self.prefix}_tables")),
                (dimensions, self.text_search_config, self.keyword_average_length))
            info = _Table(self.text_search_config, self.keyword_average_length)
        else:
            if info.text_search_config != self.text_search_config:
                log.warning("%s was created with text search config %r; keeping it (now configured: %r)",
                            self._name(dimensions), info.text_search_config, self.text_search_config)
            if info.average_length != self.keyword_average_length:
                log.warning("%s was created with keyword_average_length %g; keeping it (now configured: %g)",
                            self._name(dimensions), info.average_length, self.keyword_average_length)
        return info

    def _create_table(self, conn: psycopg.Connection, dimensions: int) -> None:
        name = self._name(dimensions)
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
                embedding vector({dims}) NOT NULL
            )""").format(table=table, dims=sql.Literal(dimensions)))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace, document_id)").format(
            sql.Identifier(f"{name}_document"), table))
        if dimensions <= HNSW_MAX_DIMENSIONS:
            conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops) "
                                 "WITH (m = {}, ef_construction = {})").format(
                sql.Identifier(f"{name}_embedding"), table, sql.Literal(self.hnsw_m),
                sql.Literal(self.hnsw_ef_construction)))
        else:
            log.warning("%s: %d dimensions is above pgvector's HNSW limit (%d); searches scan exactly",
                        name, dimensions, HNSW_MAX_DIMENSIONS)
        self._create_keyword_table(conn, dimensions)

    def _create_keyword_table(self, conn: psycopg.Connection, dimensions: int, indexes: bool = True) -> None:
        """The narrow keyword table: a row per main-table row, same id (no foreign key: every
        write path writes both in one transaction)."""
        conn.execute(sql.SQL("""
            CREATE TABLE IF NOT EXISTS {} (
                id uuid PRIMARY KEY,
                namespace text NOT NULL,
                weights sparsevec({terms}) NOT NULL,
                tsv tsvector NOT NULL
            )""").format(self._keywords(dimensions), terms=sql.Literal(TERM_DIMENSIONS)))
        if indexes:
            self._create_keyword_indexes(conn, dimensions)

    def _create_keyword_indexes(self, conn: psycopg.Connection, dimensions: int) -> None:
        name, keywords = keyword_table(self._name(dimensions)), self._keywords(dimensions)
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gin (tsv)").format(
            sql.Identifier(f"{name}_tsv"), keywords))
        # small namespaces: the planner may read a namespace's rows rather than a common word's
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (namespace)").format(
            sql.Identifier(f"{name}_ns"), keywords))

    def _dimensions(self, conn: psycopg.Connection, namespace: str) -> int | None:
        """The namespace's dimensions, from this process's cache when it has them (a namespace
        another process dropped meanwhile then reads as an empty one)."""
        dimensions = self._namespaces.get(namespace)
        if dimensions is None:
            dimensions = self._registered(conn, namespace)
        return dimensions

    def _registered(self, conn: psycopg.Connection, namespace: str) -> int | None:
        """The namespace's dimensions as the registry has them now (cached for ``_dimensions``)."""
        row = conn.execute(sql.SQL("SELECT dimensions FROM {} WHERE namespace = %s").format(
            sql.Identifier(f"{self.prefix}_namespaces")), (namespace,)).fetchone()
        if row is None:
            self._namespaces.pop(namespace, None)
            return None
        self._namespaces[namespace] = row[0]
        return row[0]

    # ------------------------------------------------------------------ writes

    def ensure_namespace(self, namespace: str, dimensions: int) -> None:
        if dimensions <= 0:
            raise InvalidInput(f"dimensions must be positive, got {dimensions}", reason="invalid_dimensions")
        with self._transaction() as conn:
            remember, _ = self._ensure_namespace(conn, namespace, dimensions)
        remember()

    def _ensure_namespace(self, conn: psycopg.Connection, namespace: str, dimensions: int):
        """Create the table and the namespace if needed; returns what to cache once committed
        and the table's registry facts."""
        info = self._ensure_table(conn, dimensions)
        # the registry, not this process's cache: another process may have dropped the namespace
        # since (a space deleted or reindexed by the web), and rows written without their
        # registry row would be invisible to every other process, and never dropped by it
        known = self._registered(conn, namespace)
        if known is None:
            known = conn.execute(sql.SQL(
                "INSERT INTO {} VALUES (%s, %s) ON CONFLICT (namespace) DO UPDATE SET namespace = EXCLUDED.namespace "
                "RETURNING dimensions").format(sql.Identifier(f"{self.prefix}_namespaces")),
                (namespace, dimensions)).fetchone()[0]
        if known != dimensions:
            raise InvalidInput(f"namespace {namespace!r} holds {known}-dimensional vectors, not {dimensions}",
                               reason="dimension_mismatch")

        def remember() -> None:
            self._tables[dimensions] = info
            self._namespaces[namespace] = dimensions

        return remember, info

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        matrix = _normalised_rows([r.vector for r in records])
        rows = [(_uuid(r.id), namespace, _clean(str(r.document_id)), int(r.ordinal),
                 None if r.page is None else int(r.page), _clean(r.text), _metadata_json(r.metadata), vector)
                for r, vector in zip(records, matrix)]
        dimensions = matrix.shape[1]
        with self._transaction() as conn:
            self._write_locks(conn, namespace, {row[2] for row in rows})
            remember, info = self._ensure_namespace(conn, namespace, dimensions)
            with conn.cursor() as cursor, _too_large_is_invalid():
                cursor.executemany(sql.SQL("""
                    INSERT INTO {} (id, namespace, document_id, ordinal, page, text, metadata, embedding)
                    VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %b)
                    ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace,
                        document_id = EXCLUDED.document_id, ordinal = EXCLUDED.ordinal, page = EXCLUDED.page,
                        text = EXCLUDED.text, metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding
                    """).format(self._table(dimensions)), rows)
                # the keyword rows, from the rows just written (PostgreSQL's own to_tsvector)
                cursor.execute(keyword_rows_sql(self._name(dimensions), info.text_search_config,
                                                info.average_length, sql.SQL("id = ANY(%s)")),
                               ([row[0] for row in rows],))
        remember()
        self._small.pop(namespace, None)

    def delete_document(self, namespace: str, document_id: str) -> None:
        with self._transaction() as conn:
            self._write_locks(conn, namespace, [_clean(str(document_id))])
            dimensions = self._dimensions(conn, namespace)
            if dimensions is not None:
                conn.execute(sql.SQL("""
                    WITH gone AS (DELETE FROM {} WHERE namespace = %s AND document_id = %s RETURNING id)
                    DELETE FROM {} WHERE id IN (SELECT id FROM gone)""").format(
                    self._table(dimensions), self._keywords(dimensions)), (namespace, str(document_id)))
        self._small.pop(namespace, None)

    def drop_namespace(self, namespace: str) -> None:
        with self._transaction() as conn:
            self._write_locks(conn, namespace, drop=True)
            dimensions = self._dimensions(conn, namespace)
            if dimensions is not None:
                for table in (self._table(dimensions), self._keywords(dimensions)):  # as every write: main first
                    conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(table), (namespace,))
                conn.execute(sql.SQL("DELETE FROM {} WHERE namespace = %s").format(
                    sql.Identifier(f"{self.prefix}_namespaces")), (namespace,))
        self._namespaces.pop(namespace, None)
        self._small.pop(namespace, None)

    def count(self, namespace: str, document_id: str | None = None) -> int:
        with self._connection() as conn:
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
        with self._connection() as conn:  # read only: each statement on its own, no transaction
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
            small = self._is_small(conn, table, namespace, where, args, documents)
            if small is None:
                return []
            exact = small
        if not exact:
            hits = self._hnsw_search(conn, table, where, args, query, limit)
            self.stats["hnsw"] += 1
            if len(hits) >= limit:
                return hits
            self.stats["exact_fallback"] += 1
        self.stats["exact"] += 1
        return self._exact_search(conn, table, where, args, query, limit)

    def _is_small(self, conn, table, namespace, where, args, documents) -> bool | None:
        """Whether fewer than ``exact_scan_below`` rows match (None: none at all), counted up
        to the threshold on the (namespace, document_id) index. A namespace's answer is
        reused for SIZE_TTL seconds: if it is stale, an exact search is still exact and an
        HNSW search that comes back short falls back to an exact one."""
        now = time.monotonic()
        if documents is None:
            cached = self._small.get(namespace)
            if cached is not None and now < cached[1]:
                return cached[0]
        matching = conn.execute(sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} WHERE {} LIMIT %s) m").format(
            table, where), [*args, self.exact_scan_below]).fetchone()[0]
        if documents is None and matching:
            if len(self._small) >= SIZE_CACHE:
                self._small.clear()
            self._small[namespace] = (matching < self.exact_scan_below, now + SIZE_TTL)
        return matching < self.exact_scan_below if matching else None

    def _hnsw_search(self, conn, table, where, args, query, limit) -> list[Hit]:
        """Iterative HNSW scan with the session's settings (``_configure``); a search for more
        than ``ef_search`` hits raises it for its own transaction only."""
        # relaxed_order returns hits roughly by distance: take twice as many, keep the exact best
        statement, params = self._hnsw_sql(table, where), [query, *args, 2 * limit, limit]
        if limit <= self.ef_search:
            return self._hits(conn.execute(statement, params).fetchall())
        with conn.transaction():
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(limit),))
            return self._hits(conn.execute(statement, params).fetchall())

    @staticmethod
    def _hnsw_sql(table: sql.Composable, where: sql.Composable) -> sql.Composed:
        """The MATERIALIZED CTE lets the outer query re-order by exact distance."""
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
        """BM25 over the keyword table: an OR of the query's lexemes, weighted by rarity.

        ``ts_rank``/``ts_rank_cd`` know nothing of how common a word is (SciFact nDCG@10:
        ts_rank_cd 0.33; BM25 here 0.64-0.66; SQLite FTS5 bm25 0.69). Word frequencies come
        from the planner statistics ANALYZE keeps for the keyword table's tsv column
        (``pg_stats.most_common_elems``), so no extra scan is needed.

        What costs is visiting each matching row (the GIN match, a heap fetch and one
        sparse inner product). So rows are matched on the rarest lexemes only, as many as
        keep the expected matches within ``keyword_candidates``, and scored on all of them:
        a common word adds little to a score but would make most rows candidates. When that
        finds fewer than ``limit`` rows, more lexemes match (twice the expected rows, at
        least one more lexeme), until all do.
        """
        info = self._table_info(conn, dimensions)
        config = info.text_search_config if info is not None else self.text_search_config
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
            hits = self._bm25(conn, dimensions, namespace, documents, lexemes, frequency, selective, limit)
            if len(hits) >= limit or len(selective) == len(lexemes):
                return hits
            # too few: at least one more lexeme, and twice the rows expected so far
            least = 2 * max(1.0, sum(frequency[lexeme] for lexeme in selective) * stats.rows)

    def _bm25(self, conn, dimensions, namespace, documents, lexemes, frequency, match, limit) -> list[Hit]:
        """Rows holding a lexeme of ``match``, scored on all ``lexemes``: the inner product of
        the row's stored term weights and the query's idf weights (pgvector's ``<#>`` is its
        negative)."""
        table, keywords = self._table(dimensions), self._keywords(dimensions)
        where = sql.SQL("k.namespace = %s AND k.tsv @@ %s::tsquery")
        args: list[Any] = [namespace, " | ".join(_tsquery_lexeme(m) for m in match)]
        if documents is not None:
            where += sql.SQL(" AND k.id IN (SELECT d.id FROM {} d WHERE d.namespace = %s "
                             "AND d.document_id = ANY(%s))").format(table)
            args += [namespace, documents]
        query = sql.SQL("""
            WITH q AS (
                SELECT ('{{' || string_agg(x.d::text || ':' || x.w::text, ',' ORDER BY x.d) || '}}/{terms}'
                        )::sparsevec AS v
                FROM (SELECT {dimension} AS d, max(u.w) AS w
                      FROM unnest(%s::text[], %s::float8[]) u(lexeme, w) GROUP BY 1) x),
            best AS (
                SELECT k.id, -(k.weights <#> q.v) AS score FROM {keywords} k, q WHERE {where}
                ORDER BY score DESC, k.id LIMIT %s)
            SELECT t.id, t.document_id, t.ordinal, t.text, t.page, t.metadata, b.score
            FROM best b JOIN {table} t USING (id) ORDER BY b.score DESC, t.id""").format(
            terms=sql.SQL(str(TERM_DIMENSIONS)), dimension=_term_dimension(sql.SQL("u.lexeme")),
            keywords=keywords, where=where, table=table)
        params = [lexemes, [_idf(frequency[lexeme]) for lexeme in lexemes], *args, limit]
        return self._hits(conn.execute(query, params).fetchall())

    def _lexeme_stats(self, conn, dimensions: int) -> "_LexemeStats":
        """Lexeme frequencies of a keyword table, cached for STATS_TTL seconds."""
        cached = self._stats.get(dimensions)
        now = time.monotonic()
        if cached is not None and now - cached.loaded < STATS_TTL:
            return cached
        name = keyword_table(self._name(dimensions))
        row = conn.execute(
            "SELECT most_common_elems::text::text[], most_common_elem_freqs, "
            "(SELECT reltuples FROM pg_class WHERE oid = %s::regclass) FROM (SELECT 1) one "
            "LEFT JOIN pg_stats ON schemaname = current_schema() AND tablename = %s AND attname = 'tsv'",
            (name, name)).fetchone()
        elements, freqs, rows = row
        frequency: dict[str, float] = {}
        rare = 0.0  # no statistics yet (never analysed): every lexeme counts as rare
        if elements is not None:
            frequency = dict(zip(elements, freqs))
            rare = freqs[len(elements)] / 2  # below the least frequent element the sample kept
        stats = _LexemeStats(frequency, rare, max(float(rows or 0.0), 0.0), now)
        self._stats[dimensions] = stats
        return stats

    @staticmethod
    def _hits(rows) -> list[Hit]:
        return [Hit(id=str(r[0]), document_id=r[1], ordinal=r[2], text=r[3], page=r[4], metadata=r[5],
                    score=float(r[6])) for r in rows]


# ---------------------------------------------------------------- keyword rows (also used by bench/latency.py)


def keyword_table(table: str) -> str:
    """The keyword table of a main table: ``vs_pgvector_384`` -> ``vs_pgvector_384_keywords``."""
    return f"{table}_keywords"


def _term_dimension(lexeme: sql.Composable) -> sql.Composed:
    """SQL: a lexeme's sparsevec dimension, 1 .. 2**28, from SHA-256 of its UTF-8 bytes:
    stable across PostgreSQL versions and database encodings (stored weights depend on it)."""
    return sql.SQL("(('x' || left(encode(sha256(convert_to({}, 'UTF8')), 'hex'), {digits}))::bit({bits})::int + 1)"
                   ).format(lexeme, digits=sql.SQL(str(TERM_BITS // 4)), bits=sql.SQL(str(TERM_BITS)))


def _float8(value: float) -> sql.Composed:
    return sql.SQL("{}::float8").format(sql.SQL(repr(float(value))))


def keyword_weights_sql(tsv: sql.Composable, average_length: float) -> sql.Composed:
    """SQL: the sparsevec of BM25 term weights of the tsvector ``tsv`` (an expression
    evaluated several times: pass a column). Per lexeme, ``tf = number of positions`` (at
    least 1), ``len = length(tsv)`` (distinct lexemes), weight ``tf*(k1+1) / (tf + k1*(1 -
    b + b*len/average_length))``; lexemes that share a dimension add up; the MAX_ROW_TERMS
    heaviest are kept (pgvector's limit; a longer row still matches on every word through
    ``tsv``)."""
    return sql.SQL("""(
        SELECT ('{{' || coalesce(string_agg(t.d::text || ':' || t.w::text, ',' ORDER BY t.d), '')
                || '}}/{terms}')::sparsevec
        FROM (SELECT {dimension} AS d, sum(u.tf * {c1} / (u.tf + {c2} + {c3} * length({tsv}))) AS w
              FROM (SELECT lexeme, coalesce(array_length(positions, 1), 1)::float8 AS tf FROM unnest({tsv})) u
              GROUP BY 1 ORDER BY w DESC, d LIMIT {most}) t)""").format(
        terms=sql.SQL(str(TERM_DIMENSIONS)), dimension=_term_dimension(sql.SQL("u.lexeme")), tsv=tsv,
        c1=_float8(BM25_K1 + 1), c2=_float8(BM25_K1 * (1 - BM25_B)), c3=_float8(BM25_K1 * BM25_B / average_length),
        most=sql.SQL(str(MAX_ROW_TERMS)))


def keyword_rows_sql(table: str, text_search_config: str, average_length: float, where: sql.Composable,
                     tsv: sql.Composable | None = None) -> sql.Composed:
    """SQL: write (insert or replace) the keyword rows of the rows of main table ``table``
    that match ``where`` (its ``%s`` parameters are the statement's), their lexemes from
    ``to_tsvector(text_search_config, text)`` (or the expression ``tsv`` over the main
    table's columns), their weights from :func:`keyword_weights_sql`."""
    if tsv is None:
        tsv = sql.SQL("to_tsvector({}::regconfig, text)").format(sql.Literal(text_search_config))
    return sql.SQL("""
        WITH source AS MATERIALIZED (SELECT id, namespace, {tsv} AS tsv FROM {table} WHERE {where})
        INSERT INTO {keywords} (id, namespace, weights, tsv)
        SELECT id, namespace, {weights}, tsv FROM source
        ON CONFLICT (id) DO UPDATE SET namespace = EXCLUDED.namespace, weights = EXCLUDED.weights,
            tsv = EXCLUDED.tsv""").format(
        tsv=tsv, table=sql.Identifier(table), where=where, keywords=sql.Identifier(keyword_table(table)),
        weights=keyword_weights_sql(sql.SQL("source.tsv"), average_length))


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
    rows: float  # rows in the keyword table (pg_class.reltuples; 0 when never analysed)
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


def _lock_key(text: str) -> int:
    """An advisory lock key (a signed int4) for ``text``."""
    return zlib.crc32(text.encode()) - 2**31


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _idf(frequency: float) -> float:
    """BM25's inverse document frequency, from the share of rows holding the lexeme."""
    return math.log(1 + (1 - frequency + 1e-6) / (frequency + 1e-6))


def _tsquery_lexeme(lexeme: str) -> str:
    """A lexeme as a quoted tsquery operand: taken verbatim, never parsed as syntax."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


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
