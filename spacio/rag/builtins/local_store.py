"""``local``: the embedded default vector store, inside the app's own SQLite file.

Why this shape:

- **Same file, own connections.** The store keeps its ``vs_local_*`` tables in the app's
  SQLite database (one file to back up) but talks to it through the stdlib ``sqlite3``
  with its own small connection pool, so it works the same in a request, in the
  in-process worker thread and in another process. WAL mode and a busy timeout let
  readers and the single writer proceed without "database is locked" errors.
- **Exact vector search in numpy.** 100k × 384 float32 vectors score in ~15 ms with one
  matrix-vector product (memory-bound: 150 MB read per query): no ANN index to build,
  tune or get wrong. Each namespace's vectors are cached in memory; a per-namespace
  version stored in SQLite says when the cache is stale, so writes by another thread or
  process are always seen. Upserts are applied to the cache incrementally (rows carry the
  version that wrote them); deletes re-read the namespace's row ids and mark rows dead.
- **FTS5 keyword search** ranked with bm25 (porter stemming, diacritics folded), queried
  with an OR of the question's words (each quoted, so FTS5 syntax in user text is inert),
  because an AND of every word of a natural-language question usually matches nothing.
  The namespace is a token in the index, so filtering happens inside FTS5.
- **Hybrid** = reciprocal rank fusion of both lists.

CPU-bound parts (the matrix product) release the GIL inside numpy, but under gevent the
host must still call ``search`` from a real thread pool, as for every CPU-bound plugin.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import re
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import numpy as np
from marshmallow import Schema, ValidationError, fields, validate, validates

from spacio.rag.contracts import Hit, InvalidInput, PluginError, VectorRecord
from spacio.rag.fusion import reciprocal_rank_fusion

log = logging.getLogger(__name__)

PREFIX = "vs_local_"
# Porter stemming on top of unicode61 (diacritics folded): SciFact keyword-only nDCG@10
# 0.686 against 0.667 for plain unicode61 (bench/vector_stores.py --scifact).
TOKENIZER = "porter unicode61 remove_diacritics 2"
MAX_QUERY_TERMS = 64
COMMON_WORD = 0.1  # words in more than this share of rows score but do not select rows
HYBRID_CANDIDATES = 50  # each side of a hybrid search contributes at most max(this, limit) hits

# Words that carry no topic in English questions. Dropped from keyword queries because
# they match nearly every row (slow to rank, and bm25 gives them almost no weight anyway);
# a query made only of them is kept as it is.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off on
once only or other our ours ourselves out over own same she should so some such than that the their theirs them
themselves then there these they this those through to too under until up very was we were what when where which
while who whom why will with would you your yours yourself yourselves s t don
""".split())

_TERM = re.compile(r"\w+")


def sqlite_path(database_url: str) -> str:
    """The file path in an SQLAlchemy SQLite URL (``sqlite:///rel.db``, ``sqlite:////abs.db``)."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        raise ValueError(
            "the local vector store keeps its tables in the app's SQLite database and needs an "
            f"sqlite:/// URL; got {scheme or database_url!r}. With PostgreSQL use the pgvector store "
            "(SPACIO_VECTOR_STORE=pgvector).")
    if not rest.startswith("/"):
        raise ValueError(f"unsupported SQLite URL {database_url!r}: expected sqlite:///path/to/file.db")
    path = rest[1:].split("?", 1)[0]
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise ValueError("the local vector store needs an SQLite database file, not an in-memory database")
    return path


def query_words(text: str) -> list[str]:
    """The distinct words of ``text`` (NFC, lower case), without stop words unless only those are left."""
    words = _TERM.findall(unicodedata.normalize("NFC", text).lower())
    unique = list(dict.fromkeys(w for w in words if w.strip("_")))
    return ([w for w in unique if w not in STOPWORDS] or unique)[:MAX_QUERY_TERMS]


def _any_of(words: Sequence[str]) -> str:
    # each word a quoted FTS5 string: "*", "(", ":", "^", NEAR, AND/OR/NOT in it are inert
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of the words of ``text``; None when it has none."""
    words = query_words(text)
    return _any_of(words) if words else None


class LocalVectorStoreOptions(Schema):
    database_url = fields.String(required=True)  # host-provided: the app's database
    cache_mb = fields.Integer(load_default=1024, validate=validate.Range(min=0))
    busy_timeout_ms = fields.Integer(load_default=30000, validate=validate.Range(min=0))

    @validates("database_url")
    def _sqlite_only(self, value, **_):
        try:
            sqlite_path(value)
        except ValueError as error:
            raise ValidationError(str(error)) from error


@dataclass
class _Matrix:
    """One namespace's vectors in memory, with the versions they were read at.

    Rows are appended in place (capacity grows by half when full). Deleted rows are only
    marked dead, so a delete does not copy the matrix; it is compacted once a quarter of
    it is dead. Arrays a concurrent search may be reading are replaced, never changed in
    place, except rows past ``size`` and the vector of an upserted (same id) record.
    """

    epoch: int
    version: int
    dimensions: int
    vectors: np.ndarray  # (capacity, d) float32, L2-normalised; rows [:size] are in use
    pks: np.ndarray  # (capacity,) int64 row ids in vs_local_records
    doc_codes: np.ndarray  # (capacity,) int32 index into documents
    alive: np.ndarray  # (capacity,) bool; False for deleted rows
    size: int = 0
    dead: int = 0
    row_of_pk: dict[int, int] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + self.pks.nbytes + self.doc_codes.nbytes + self.alive.nbytes

    @classmethod
    def empty(cls, epoch: int, version: int, dimensions: int, capacity: int = 0) -> "_Matrix":
        return cls(epoch, version, dimensions, np.empty((capacity, dimensions), np.float32),
                   np.empty(capacity, np.int64), np.empty(capacity, np.int32), np.ones(capacity, bool))

    def add(self, rows: list[tuple[int, str, bytes]]) -> None:
        """Insert or replace rows ``(pk, document_id, vector bytes)``."""
        new = sum(1 for r in rows if r[0] not in self.row_of_pk)
        if self.size + new > len(self.pks):
            self._resize(max(self.size + new, int(len(self.pks) * 1.5), 1024))
        for pk, document_id, blob in rows:
            row = self.row_of_pk.get(pk)
            if row is None:
                row = self.size
                self.size += 1
                self.row_of_pk[pk] = row
                self.pks[row] = pk
                self.alive[row] = True
            self.vectors[row] = np.frombuffer(blob, dtype="<f4")
            self.doc_codes[row] = self.documents.setdefault(document_id, len(self.documents))

    def keep_only(self, live_pks: np.ndarray) -> None:
        """Mark dead the rows whose pk is not in ``live_pks`` (after deletes elsewhere)."""
        gone = self.alive[:self.size] & ~np.isin(self.pks[:self.size], live_pks)
        count = int(gone.sum())
        if not count:
            return
        for pk in self.pks[:self.size][gone]:
            del self.row_of_pk[int(pk)]
        alive = self.alive.copy()
        alive[:self.size][gone] = False
        self.alive, self.dead = alive, self.dead + count
        if self.dead * 4 > self.size:
            self._resize(int((self.size - self.dead) * 1.25) + 1024)

    def _resize(self, capacity: int) -> None:
        """New arrays of ``capacity`` rows holding the live rows (dropping dead ones)."""
        keep = np.flatnonzero(self.alive[:self.size])
        n = len(keep)
        vectors = np.empty((capacity, self.dimensions), np.float32)
        vectors[:n] = self.vectors[keep]
        pks = np.empty(capacity, np.int64)
        pks[:n] = self.pks[keep]
        codes = np.empty(capacity, np.int32)
        codes[:n] = self.doc_codes[keep]
        self.vectors, self.pks, self.doc_codes, self.alive = vectors, pks, codes, np.ones(capacity, bool)
        if self.dead:
            self.row_of_pk = {int(pk): i for i, pk in enumerate(pks[:n])}
        self.size, self.dead = n, 0


class LocalVectorStore:
    """Vectors and keyword search in the app's SQLite file. Thread-safe; share one instance."""

    options_schema = LocalVectorStoreOptions

    def __init__(self, database_url: str, cache_mb: int = 1024, busy_timeout_ms: int = 30000):
        self.path = sqlite_path(database_url)
        self.cache_bytes = cache_mb * 1024 * 1024
        self.busy_timeout_ms = busy_timeout_ms
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: set[sqlite3.Connection] = set()
        self._pool_lock = threading.Lock()
        self._schema_ready = False
        self._cache: OrderedDict[str, _Matrix] = OrderedDict()
        self._cache_lock = threading.RLock()
        self._rows_total, self._row_count_at = 0, -math.inf

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as error:  # another connection holds a lock: stay in its mode
                log.warning("local vector store: could not switch %s to WAL (%s)", self.path, error)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect()
            with self._pool_lock:
                self._all.add(conn)
        try:
            if not self._schema_ready:
                self._create_schema(conn)
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._pool_lock:
                pooled = conn in self._all
            if pooled:
                self._idle.put(conn)
            else:  # close() ran while this connection was in use
                conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken with BEGIN IMMEDIATE so it never deadlocks on upgrade."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent WAL snapshot for everything read inside."""
        with self._connection() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.rollback()

    def close(self) -> None:
        """Close every pooled connection (tests, shutdown). The store can be used again after."""
        with self._pool_lock:
            conns, self._all = self._all, set()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for conn in conns:
            if not conn.in_transaction:  # one still in use is closed when it is given back
                conn.close()
        with self._cache_lock:
            self._cache.clear()

    def ready(self, timeout: float) -> None:
        """Readiness: the database file opens and answers a read (its schema created if new)."""
        with self._read() as conn:
            conn.execute(f"SELECT count(*) FROM {PREFIX}namespaces").fetchone()

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        try:
            # executescript commits a pending transaction first, so the script holds its own
            conn.executescript(f"""
            BEGIN IMMEDIATE;
            CREATE TABLE IF NOT EXISTS {PREFIX}counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
            INSERT OR IGNORE INTO {PREFIX}counter (id, value) VALUES (1, 0);
            CREATE TABLE IF NOT EXISTS {PREFIX}namespaces (
                namespace TEXT PRIMARY KEY,
                dimensions INTEGER NOT NULL,
                version INTEGER NOT NULL,  -- bumped by every write to the namespace
                epoch INTEGER NOT NULL     -- bumped by deletes: cached row sets must be re-read
            );
            CREATE TABLE IF NOT EXISTS {PREFIX}records (
                pk INTEGER PRIMARY KEY,    -- stable rowid: the FTS index refers to it
                id TEXT NOT NULL UNIQUE,
                namespace TEXT NOT NULL,
                document_id TEXT NOT NULL,
                ordinal INTEGER NOT NULL,
                page INTEGER,
                text TEXT NOT NULL,
                metadata TEXT NOT NULL,    -- JSON
                vector BLOB NOT NULL,      -- little-endian float32, L2-normalised
                seq INTEGER NOT NULL,      -- the namespace version that wrote the row
                -- the namespace as one FTS token, so keyword search filters inside the index
                -- (ends in a digit: no stemming rule touches it)
                ns_token TEXT GENERATED ALWAYS AS ('n' || hex(namespace) || '0') VIRTUAL
            );
            CREATE INDEX IF NOT EXISTS {PREFIX}records_document ON {PREFIX}records (namespace, document_id);
            CREATE INDEX IF NOT EXISTS {PREFIX}records_seq ON {PREFIX}records (namespace, seq);
            CREATE VIRTUAL TABLE IF NOT EXISTS {PREFIX}fts USING fts5(
                text, ns_token, content='{PREFIX}records', content_rowid='pk', tokenize='{TOKENIZER}');
            CREATE TRIGGER IF NOT EXISTS {PREFIX}records_ai AFTER INSERT ON {PREFIX}records BEGIN
                INSERT INTO {PREFIX}fts (rowid, text, ns_token) VALUES (new.pk, new.text, new.ns_token);
            END;
            CREATE TRIGGER IF NOT EXISTS {PREFIX}records_ad AFTER DELETE ON {PREFIX}records BEGIN
                INSERT INTO {PREFIX}fts ({PREFIX}fts, rowid, text, ns_token)
                    VALUES ('delete', old.pk, old.text, old.ns_token);
            END;
            CREATE TRIGGER IF NOT EXISTS {PREFIX}records_au AFTER UPDATE OF text, namespace ON {PREFIX}records BEGIN
                INSERT INTO {PREFIX}fts ({PREFIX}fts, rowid, text, ns_token)
                    VALUES ('delete', old.pk, old.text, old.ns_token);
                INSERT INTO {PREFIX}fts (rowid, text, ns_token) VALUES (new.pk, new.text, new.ns_token);
            END;
            COMMIT;
            """)
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        self._schema_ready = True

    @staticmethod
    def _next(conn: sqlite3.Connection) -> int:
        """A new value of the file-wide counter: versions never repeat, even across drops."""
        return conn.execute(f"UPDATE {PREFIX}counter SET value = value + 1 WHERE id = 1 RETURNING value"
                            ).fetchone()[0]

    # ------------------------------------------------------------------ writes

    def ensure_namespace(self, namespace: str, dimensions: int) -> None:
        if dimensions <= 0:
            raise InvalidInput(f"dimensions must be positive, got {dimensions}", reason="invalid_dimensions")
        with self._write() as conn:
            row = conn.execute(f"SELECT dimensions FROM {PREFIX}namespaces WHERE namespace = ?",
                               (namespace,)).fetchone()
            if row is None:
                value = self._next(conn)
                conn.execute(f"INSERT INTO {PREFIX}namespaces VALUES (?, ?, ?, ?)",
                             (namespace, dimensions, value, value))
            elif row[0] != dimensions:
                raise InvalidInput(f"namespace {namespace!r} holds {row[0]}-dimensional vectors, not {dimensions}",
                                   reason="dimension_mismatch")

    def upsert(self, namespace: str, records: Sequence[VectorRecord]) -> None:
        if not records:
            return
        matrix = _normalised_rows([r.vector for r in records])
        dimensions = matrix.shape[1]
        rows = []
        for r, vector in zip(records, matrix):
            rows.append((str(r.id), namespace, str(r.document_id), int(r.ordinal),
                         None if r.page is None else int(r.page), r.text, _metadata_json(r.metadata),
                         vector.astype("<f4").tobytes()))
        with self._write() as conn:
            ns = conn.execute(f"SELECT dimensions FROM {PREFIX}namespaces WHERE namespace = ?",
                              (namespace,)).fetchone()
            if ns is None:
                value = self._next(conn)
                conn.execute(f"INSERT INTO {PREFIX}namespaces VALUES (?, ?, ?, ?)",
                             (namespace, dimensions, value, value))
            elif ns[0] != dimensions:
                raise InvalidInput(f"namespace {namespace!r} holds {ns[0]}-dimensional vectors, got {dimensions}",
                                   reason="dimension_mismatch")
            # an id that lives in another namespace moves here: that namespace changed too
            moved = conn.execute(
                f"SELECT DISTINCT namespace FROM {PREFIX}records WHERE id IN (SELECT value FROM json_each(?)) "
                "AND namespace != ?", (json.dumps([row[0] for row in rows]), namespace)).fetchall()
            for (other,) in moved:
                value = self._next(conn)
                conn.execute(f"UPDATE {PREFIX}namespaces SET version = ?, epoch = ? WHERE namespace = ?",
                             (value, value, other))
            version = self._next(conn)
            conn.executemany(
                f"""INSERT INTO {PREFIX}records (id, namespace, document_id, ordinal, page, text, metadata, vector, seq)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, {version})
                    ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace,
                        document_id = excluded.document_id, ordinal = excluded.ordinal, page = excluded.page,
                        text = excluded.text, metadata = excluded.metadata, vector = excluded.vector,
                        seq = excluded.seq""", rows)
            conn.execute(f"UPDATE {PREFIX}namespaces SET version = ? WHERE namespace = ?", (version, namespace))

    def delete_document(self, namespace: str, document_id: str) -> None:
        with self._write() as conn:
            deleted = conn.execute(f"DELETE FROM {PREFIX}records WHERE namespace = ? AND document_id = ?",
                                   (namespace, str(document_id))).rowcount
            if deleted:
                value = self._next(conn)
                conn.execute(f"UPDATE {PREFIX}namespaces SET version = ?, epoch = ? WHERE namespace = ?",
                             (value, value, namespace))

    def drop_namespace(self, namespace: str) -> None:
        with self._write() as conn:
            conn.execute(f"DELETE FROM {PREFIX}records WHERE namespace = ?", (namespace,))
            conn.execute(f"DELETE FROM {PREFIX}namespaces WHERE namespace = ?", (namespace,))
        with self._cache_lock:
            self._cache.pop(namespace, None)

    def count(self, namespace: str, document_id: str | None = None) -> int:
        with self._read() as conn:
            if document_id is None:
                sql, args = f"SELECT count(*) FROM {PREFIX}records WHERE namespace = ?", (namespace,)
            else:
                sql = f"SELECT count(*) FROM {PREFIX}records WHERE namespace = ? AND document_id = ?"
                args = (namespace, str(document_id))
            return conn.execute(sql, args).fetchone()[0]

    # ------------------------------------------------------------------ search

    def search(self, namespace: str, *, vector: Sequence[float] | None = None, text: str | None = None,
               limit: int = 10, document_ids: Sequence[str] | None = None) -> list[Hit]:
        if limit <= 0:
            return []
        if vector is None and text is None:
            raise InvalidInput("search needs a vector, a text or both", reason="empty_query")
        query = None if vector is None else _normalised_rows([vector])[0]
        documents = None if document_ids is None else [str(d) for d in document_ids]
        if documents is not None and not documents:
            return []
        hybrid = query is not None and text is not None
        depth = max(limit, HYBRID_CANDIDATES) if hybrid else limit
        with self._read() as conn:
            ns = conn.execute(f"SELECT dimensions, version, epoch FROM {PREFIX}namespaces WHERE namespace = ?",
                              (namespace,)).fetchone()
            if ns is None:
                with self._cache_lock:  # dropped, maybe by another process
                    self._cache.pop(namespace, None)
                return []
            by_vector = by_text = []
            if query is not None:
                if len(query) != ns[0]:
                    raise InvalidInput(f"query vector has {len(query)} dimensions, namespace {namespace!r} "
                                       f"holds {ns[0]}", reason="dimension_mismatch")
                by_vector = self._vector_search(conn, namespace, ns, query, depth, documents)
            if text is not None:
                by_text = self._keyword_search(conn, namespace, text, depth, documents, fill=limit)
        if not hybrid:
            return by_vector if query is not None else by_text
        return reciprocal_rank_fusion([by_vector, by_text], limit=limit)

    def _vector_search(self, conn, namespace, ns, query, limit, documents) -> list[Hit]:
        matrix = self._matrix(conn, namespace, *ns)
        with self._cache_lock:  # a consistent view; later appends do not touch rows [:size]
            size, dead, vectors, pks = matrix.size, matrix.dead, matrix.vectors, matrix.pks
            codes, alive = matrix.doc_codes, matrix.alive
            wanted = None if documents is None else [matrix.documents[d] for d in documents
                                                     if d in matrix.documents]
        if size == dead or wanted == []:
            return []
        if wanted is None:
            rows = None
            scores = _dot(vectors[:size], query)
            if dead:
                scores[~alive[:size]] = -np.inf
            live = size - dead
        else:
            rows = np.flatnonzero(np.isin(codes[:size], wanted) & alive[:size])
            if rows.size == 0:
                return []
            scores = _dot(vectors[rows], query)
            live = rows.size
        k = min(limit, live)
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
        chosen = pks[top if rows is None else rows[top]]
        order = np.lexsort((chosen, -scores[top]))  # by score, then row id: deterministic
        top, chosen = top[order], chosen[order]
        found = self._rows(conn, [int(pk) for pk in chosen])
        return [_hit(found[int(pk)], float(score)) for pk, score in zip(chosen, scores[top])
                if int(pk) in found]

    def _keyword_search(self, conn, namespace, text, limit, documents, fill: int) -> list[Hit]:
        """bm25 over an OR of the question's words, matched on the selective ones.

        bm25 costs about a microsecond per matching row, and a question's common words
        ("cell", "patients") match a large share of all rows. So rows are selected by the
        words in at most ``COMMON_WORD`` of all rows, ``(rare) AND (rare OR common)``, which
        still lets bm25 score the common words of the rows it selected. Only when that finds
        fewer than ``fill`` rows (the caller's limit; a hybrid search asks for more
        candidates than that) does every word select. SciFact nDCG@10: 0.685, against 0.686
        when every word selects (bench/vector_stores.py --scifact), for ~40 % less work.
        """
        words = query_words(text)
        if not words:
            return []
        share = self._word_shares(conn, words)
        words = [w for w in words if share[w] > 0]  # in no row at all: cannot match
        if not words:
            return []
        selective = [w for w in words if share[w] <= COMMON_WORD] or sorted(words, key=share.get)[:3]
        common = [w for w in words if w not in selective]
        match = f"({_any_of(selective)}) AND ({_any_of(selective)} OR {_any_of(common)})" if common \
            else _any_of(selective)
        hits = self._bm25(conn, namespace, match, limit, documents)
        if len(hits) < fill and common:
            hits = self._bm25(conn, namespace, _any_of(words), limit, documents)
        return hits

    def _word_shares(self, conn, words: list[str]) -> dict[str, float]:
        """Share of all rows containing each word, from the FTS index's own vocabulary.

        Words go through the index's tokenizer (a scratch FTS5 table in the connection's
        temp schema) so that they meet the vocabulary as stems, exactly as a MATCH would."""
        conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{PREFIX}tok USING fts5(t, tokenize='{TOKENIZER}')")
        conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{PREFIX}tok_terms "
                     f"USING fts5vocab(temp, {PREFIX}tok, instance)")
        conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{PREFIX}vocab USING fts5vocab(main, {PREFIX}fts, row)")
        conn.executemany(f"INSERT INTO temp.{PREFIX}tok (rowid, t) VALUES (?, ?)", enumerate(words))
        tokens = conn.execute(f"SELECT doc, term FROM temp.{PREFIX}tok_terms").fetchall()
        conn.execute(f"DELETE FROM temp.{PREFIX}tok")
        terms = sorted({term for _, term in tokens})
        rows = dict(conn.execute(f"SELECT term, doc FROM temp.{PREFIX}vocab WHERE term IN "
                                 f"({', '.join('?' * len(terms))})", terms).fetchall()) if terms else {}
        total = self._row_count(conn, at_least=max(rows.values(), default=0))
        per_word: dict[int, int] = {}
        for doc, term in tokens:  # a word of several tokens is as selective as its rarest one
            per_word[doc] = min(per_word.get(doc, total), rows.get(term, 0))
        return {w: per_word.get(i, 0) / total for i, w in enumerate(words)}

    def _row_count(self, conn, at_least: int) -> int:
        """Rows in the index, re-counted every minute or when a word is in more rows than that."""
        now = time.monotonic()
        if now - self._row_count_at > 60 or self._rows_total < at_least:
            self._rows_total = conn.execute(f"SELECT count(*) FROM {PREFIX}records").fetchone()[0]
            self._row_count_at = now
        return max(self._rows_total, at_least, 1)

    def _bm25(self, conn, namespace, match, limit, documents) -> list[Hit]:
        # the namespace token narrows the match inside the index; its column weighs 0 in bm25
        query = f'ns_token : "n{namespace.encode().hex()}0" AND text : ({match})'
        if documents is None:
            sql = f"""SELECT rowid, bm25({PREFIX}fts, 1.0, 0.0) AS rank FROM {PREFIX}fts
                      WHERE {PREFIX}fts MATCH ? ORDER BY rank, rowid LIMIT ?"""
            args: list[Any] = [query, limit]
        else:
            sql = f"""SELECT r.pk, bm25({PREFIX}fts, 1.0, 0.0) AS rank
                      FROM {PREFIX}fts JOIN {PREFIX}records r ON r.pk = {PREFIX}fts.rowid
                      WHERE {PREFIX}fts MATCH ? AND r.document_id IN (SELECT value FROM json_each(?))
                      ORDER BY rank, r.pk LIMIT ?"""
            args = [query, json.dumps(documents), limit]
        try:
            ranked = conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as error:  # every word is quoted: this is a bug, not bad input
            raise PluginError(f"keyword search failed for {query!r}: {error}",
                              reason="keyword_search_failed") from error
        found = self._rows(conn, [pk for pk, _ in ranked])
        return [_hit(found[pk], -rank) for pk, rank in ranked if pk in found]

    def _rows(self, conn, pks: list[int]) -> dict[int, tuple]:
        found = conn.execute(
            f"SELECT pk, id, document_id, ordinal, text, page, metadata FROM {PREFIX}records "
            "WHERE pk IN (SELECT value FROM json_each(?))", (json.dumps(pks),)).fetchall()
        return {row[0]: row[1:] for row in found}

    def _matrix(self, conn, namespace: str, dimensions: int, version: int, epoch: int) -> _Matrix:
        """The namespace's vectors as of the read snapshot ``conn`` is in, from cache when current."""
        with self._cache_lock:
            cached = self._cache.get(namespace)
            if cached is not None and cached.version >= version and cached.epoch >= epoch:
                # current, or already refreshed past this snapshot by another thread
                self._cache.move_to_end(namespace)
                return cached
            if cached is None or cached.dimensions != dimensions:
                cached = _Matrix.empty(epoch, 0, dimensions)
                since = 0
            else:
                since = cached.version
            if cached.epoch != epoch:  # rows were deleted: keep only live ones, then add changes
                live = conn.execute(f"SELECT pk FROM {PREFIX}records WHERE namespace = ?", (namespace,)).fetchall()
                cached.keep_only(np.fromiter((r[0] for r in live), np.int64, len(live)))
                cached.epoch = epoch
            changed = conn.execute(
                f"SELECT pk, document_id, vector FROM {PREFIX}records WHERE namespace = ? AND seq > ?",
                (namespace, since)).fetchall()
            if changed and cached.size == 0 and len(cached.pks) < len(changed):
                # a first load: leave room to grow without copying everything at the next upsert
                cached = _Matrix.empty(epoch, 0, dimensions, capacity=int(len(changed) * 1.25) + 1024)
            cached.add(changed)
            cached.version = version
            self._cache[namespace] = cached
            self._cache.move_to_end(namespace)
            self._evict()
            return cached

    def _evict(self) -> None:
        total = sum(m.nbytes for m in self._cache.values())
        while total > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            total -= evicted.nbytes


def _dot(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Row-wise dot products. ``einsum``'s own loop rather than BLAS ``@``: as fast or faster
    for this memory-bound product, and single-threaded. OpenBLAS threads keep spinning after
    a call and, on a 2-core machine, doubled the time of the keyword query that follows in a
    hybrid search (bench/vector_stores.py)."""
    return np.einsum("ij,j->i", matrix, query.astype(np.float32, copy=False))


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


def _metadata_json(metadata) -> str:
    try:
        return json.dumps(dict(metadata or {}), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"metadata must be JSON-able: {error}", reason="invalid_metadata") from error


def _hit(row: tuple, score: float) -> Hit:
    id_, document_id, ordinal, text, page, metadata = row
    return Hit(id=id_, document_id=document_id, ordinal=ordinal, text=text, score=score, page=page,
               metadata=json.loads(metadata))


__all__ = ["LocalVectorStore", "LocalVectorStoreOptions", "fts_query", "sqlite_path"]
