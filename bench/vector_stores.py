"""Insert and search speed of the vector stores (``local`` on SQLite, ``pgvector``), and
whether a small namespace inside a large table still gets ``limit`` hits.

Data (100k records by default, 384 dimensions, all in one namespace):

- vectors: perturbations (cosine ≈ 0.85 to their centre) of real all-MiniLM-L6-v2
  embeddings of SciFact sentences, made with the local embedder (spacio-minilm) when it is
  installed; otherwise clustered synthetic vectors (perturbations of random centres). The
  report says which.
- texts: chunks of 2–3 consecutive SciFact sentences (../shared/eval/retrieval/scifact/).
- queries: SciFact claims, embedded with ``embed_query`` (or perturbed centres).

Per store: upsert throughput (batches of 500), warm search latency p50/p99 for vector,
keyword and hybrid search (limit 10), and a namespace of 30 records next to the 100k: how
many of 10 requested hits come back and how many are the exact top 10. For pgvector also
plain filtered HNSW on the same query (what the store avoids), exact-scan vs HNSW latency
by namespace size (to pick ``exact_scan_below``). ``--scifact`` adds keyword-only nDCG@10
on SciFact test (5,183 abstracts, 300 claims) for FTS5 tokenizers and PostgreSQL ranking.

pgvector needs a server: run inside ``bash tests/services.sh run -- ...`` (it reads
SPACIO_TEST_DATABASE_URL); without it only ``local`` runs. Prints a table and writes
bench/results/vector_stores.json. Not a test: numbers, not asserts.

    bash tests/services.sh run -- .venv/bin/python bench/vector_stores.py [--records 100000] [--scifact]
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SCIFACT = ROOT.parent / "shared" / "eval" / "retrieval" / "scifact"

from spacio.rag.contracts import VectorRecord  # noqa: E402

DIMS = 384


# ---------------------------------------------------------------- data


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_texts(n):
    """n chunk-sized texts: 2–3 consecutive sentences of SciFact abstracts, cycling."""
    docs = read_jsonl(SCIFACT / "corpus_sentences.jsonl")
    chunks = []
    for doc in docs:
        s = doc["sentences"]
        for i in range(0, len(s), 3):
            chunks.append(" ".join(s[i:i + 3]))
    return [chunks[i % len(chunks)] for i in range(n)], chunks


def make_vectors(n, centres_wanted, queries_wanted, rng, chunks):
    """(vectors, queries, centres, source). Real MiniLM centres when the embedder is installed."""
    claims = [q["text"] for q in read_jsonl(SCIFACT / "queries.jsonl")][:queries_wanted]
    try:
        from spacio_minilm import MiniLMEmbedder
    except ImportError:
        MiniLMEmbedder = None
    if MiniLMEmbedder is not None:
        embedder = MiniLMEmbedder()
        sample = [chunks[i] for i in rng.choice(len(chunks), centres_wanted, replace=False)]
        start = time.perf_counter()
        centres = np.vstack([embedder.embed_documents(sample[i:i + 32]).vectors
                             for i in range(0, len(sample), 32)])
        queries = np.vstack([embedder.embed_query(c).vectors for c in claims])
        source = (f"perturbations of {centres_wanted} real all-MiniLM-L6-v2 embeddings of SciFact chunks "
                  f"(embedded in {time.perf_counter() - start:.0f} s); queries = SciFact claims embedded")
    else:
        centres = rng.normal(size=(centres_wanted, DIMS))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        queries = perturb(centres[rng.integers(0, len(centres), len(claims))], rng, 0.5)
        source = f"clustered synthetic: perturbations of {centres_wanted} random centres (no embedder installed)"
    vectors = perturb(centres[rng.integers(0, len(centres), n)], rng, 0.6)
    return vectors.astype(np.float32), queries.astype(np.float32), centres.astype(np.float32), claims, source


def perturb(m, rng, noise):
    out = m + rng.normal(scale=noise / math.sqrt(m.shape[1]), size=m.shape)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def records(prefix, vectors, texts, start=0):
    return [VectorRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}:{start + i}")),
                         document_id=f"{prefix}-doc-{(start + i) // 20}", ordinal=(start + i) % 20,
                         text=texts[i], vector=vectors[i], page=1 + (start + i) % 7, metadata={"n": start + i})
            for i in range(len(vectors))]


# ---------------------------------------------------------------- timing


def percentiles(samples_ms):
    s = sorted(samples_ms)
    return {"n": len(s), "p50_ms": round(statistics.median(s), 2),
            "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 2), "mean_ms": round(statistics.fmean(s), 2)}


def timed(fn, arguments):
    samples = []
    for a in arguments:
        t = time.perf_counter()
        fn(a)
        samples.append((time.perf_counter() - t) * 1000)
    return percentiles(samples)


def load(store, namespace, vectors, texts, batch=500, prefix="big", start=0):
    t = time.perf_counter()
    for s in range(0, len(vectors), batch):
        store.upsert(namespace, records(prefix, vectors[s:s + batch], texts[s:s + batch], start=start + s))
    elapsed = time.perf_counter() - t
    return {"records": len(vectors), "seconds": round(elapsed, 1), "records_per_s": round(len(vectors) / elapsed)}


def search_latencies(store, namespace, queries, claims, n):
    store.search(namespace, vector=queries[0], limit=10)  # warm
    store.search(namespace, text=claims[0], limit=10)
    q = list(range(n))
    return {
        "vector": timed(lambda i: store.search(namespace, vector=queries[i % len(queries)], limit=10), q),
        "keyword": timed(lambda i: store.search(namespace, text=claims[i % len(claims)], limit=10), q),
        "hybrid": timed(lambda i: store.search(namespace, vector=queries[i % len(queries)],
                                               text=claims[i % len(claims)], limit=10), q),
    }


def small_namespace(store, centres, rng, queries_n=30):
    """30 records near the same centres as the crowd; queries are those centres."""
    own = perturb(centres[rng.integers(0, len(centres), 30)], rng, 0.6).astype(np.float32)
    store.ensure_namespace("small", DIMS)
    store.upsert("small", records("small", own, [f"small chunk {i}" for i in range(30)]))
    counts, right = [], []
    for c in centres[:queries_n]:
        hits = store.search("small", vector=c, limit=10)
        want = set(np.argsort(-(own @ c))[:10].tolist())
        got = {int(h.metadata["n"]) for h in hits}
        counts.append(len(hits))
        right.append(len(want & got))
    return {"queries": queries_n, "min_hits_of_10": min(counts), "mean_hits": statistics.fmean(counts),
            "recall_at_10": round(sum(right) / (10 * queries_n), 3)}, own


# ---------------------------------------------------------------- stores


def bench_local(args, data, rng):
    from spacio.rag.builtins.local_store import LocalVectorStore

    vectors, texts, queries, claims, centres = data
    folder = tempfile.mkdtemp(prefix="spacio-vs-bench-")
    url = f"sqlite:///{folder}/spacio.db"
    store = LocalVectorStore(database_url=url)
    store.ensure_namespace("big", DIMS)
    out = {"upsert": load(store, "big", vectors, texts)}
    out["file_mb"] = round(sum(p.stat().st_size for p in Path(folder).iterdir()) / 2**20)

    fresh = LocalVectorStore(database_url=url)  # cold: the namespace's vectors are read once
    t = time.perf_counter()
    fresh.search("big", vector=queries[0], limit=10)
    out["first_search_cold_ms"] = round((time.perf_counter() - t) * 1000)
    out["search"] = search_latencies(fresh, "big", queries, claims, args.queries)

    # another instance writes: the cache catches up incrementally (upsert) or by row ids (delete)
    extra = perturb(centres[rng.integers(0, len(centres), 50)], rng, 0.6).astype(np.float32)
    store.upsert("big", records("big-extra", extra, texts[:50]))
    t = time.perf_counter()
    fresh.search("big", vector=queries[1], limit=10)
    out["search_after_50_upserts_elsewhere_ms"] = round((time.perf_counter() - t) * 1000, 1)
    store.delete_document("big", "big-doc-7")
    t = time.perf_counter()
    fresh.search("big", vector=queries[2], limit=10)
    out["search_after_a_delete_elsewhere_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["small_namespace"], _ = small_namespace(store, centres, rng)
    store.close()
    fresh.close()
    for p in Path(folder).iterdir():
        p.unlink()
    Path(folder).rmdir()
    return out


def bench_pgvector(args, data, rng, url):
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql

    from spacio_pgvector import PgVectorStore
    from spacio_pgvector.store import conninfo

    vectors, texts, queries, claims, centres = data
    prefix = f"vs_bench_{uuid.uuid4().hex[:6]}"
    table = f"{prefix}_{DIMS}"
    store = PgVectorStore(database_url=url, table_prefix=prefix)
    admin = psycopg.connect(conninfo(url), autocommit=True)
    register_vector(admin)
    out = {}
    try:
        store.ensure_namespace("big", DIMS)
        tail = min(5000, len(vectors) // 10)
        bulk = len(vectors) - tail
        # bulk load without the HNSW index, build it, then time upserts with the index in place
        admin.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(f"{table}_embedding")))
        out["upsert_without_hnsw"] = load(store, "big", vectors[:bulk], texts[:bulk])
        admin.execute("SET maintenance_work_mem = '1GB'")
        t = time.perf_counter()
        admin.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops) "
                              "WITH (m = 16, ef_construction = 64)").format(
            sql.Identifier(f"{table}_embedding"), sql.Identifier(table)))
        out["hnsw_build_s"] = round(time.perf_counter() - t, 1)
        out["upsert"] = load(store, "big", vectors[bulk:], texts[bulk:], start=bulk)
        admin.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
        out["table_mb"] = round(admin.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0] / 2**20)
        out["search"] = search_latencies(store, "big", queries, claims, args.queries)
        out["plans"] = dict(store.stats)

        # recall@10 of the HNSW path on the big namespace, against numpy's exact top 10, for the
        # claims (far from every record: ~200 near-equidistant candidates, the hard case) and
        # for queries near records (perturbed records: the usual case for real embeddings)
        near = perturb(vectors[rng.integers(0, len(vectors), 50)], rng, 0.6).astype(np.float32)
        for name, probe_queries in (("claims", queries[:50]), ("near_records", near)):
            for ef in (40, 100, 200):
                probe = PgVectorStore(database_url=url, table_prefix=prefix, ef_search=ef)
                probe.search("big", vector=probe_queries[0], limit=10)  # open the pool
                samples, results = [], []
                for q in probe_queries:  # timed alone: numpy's exact search below would evict caches
                    t = time.perf_counter()
                    results.append(probe.search("big", vector=q, limit=10))
                    samples.append((time.perf_counter() - t) * 1000)
                probe.close()
                recall = [len({int(h.metadata["n"]) for h in hits} & set(np.argsort(-(vectors @ q))[:10].tolist())) / 10
                          for q, hits in zip(probe_queries, results)]
                out.setdefault("big_namespace_recall_at_10", {})[f"{name}, ef_search={ef}"] = {
                    "recall": round(statistics.fmean(recall), 3), "p50_ms": round(statistics.median(samples), 2)}

        out["small_namespace"], own = small_namespace(store, centres, rng)
        plain = []
        admin.execute("SET hnsw.ef_search = 40")
        for c in centres[:30]:  # what a plain filtered HNSW query returns
            rows = admin.execute(sql.SQL("SELECT id FROM {} WHERE namespace || '' = 'small' "
                                         "ORDER BY embedding <=> %s LIMIT 10").format(sql.Identifier(table)),
                                 (c,)).fetchall()
            plain.append(len(rows))
        out["small_namespace_plain_filtered_hnsw"] = {"min_hits_of_10": min(plain),
                                                      "mean_hits": statistics.fmean(plain)}

        # exact scan vs HNSW by namespace size, inside the big table
        sizes = {}
        offset = len(vectors)
        for size in (500, 1000, 2000, 5000):
            namespace = f"sized-{size}"
            extra = perturb(centres[rng.integers(0, len(centres), size)], rng, 0.6).astype(np.float32)
            store.ensure_namespace(namespace, DIMS)
            load(store, namespace, extra, texts[:size], prefix=namespace, start=offset)
            offset += size
            row = {}
            for mode, below in (("exact", 10**9), ("hnsw", 0)):
                probe = PgVectorStore(database_url=url, table_prefix=prefix, exact_scan_below=below)
                row[mode] = timed(lambda i: probe.search(namespace, vector=queries[i % len(queries)], limit=10),
                                  range(args.queries // 2))["p50_ms"]
                probe.close()
            sizes[size] = row
        out["vector_p50_ms_by_namespace_size"] = sizes
    finally:
        store.close()
        for (name,) in admin.execute("SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                                     (prefix + "%",)).fetchall():
            admin.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
        admin.close()
    return out


# ---------------------------------------------------------------- SciFact keyword quality


def ndcg_at_10(ranked, relevant):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal


def scifact_keyword(url):
    from spacio.rag.builtins import local_store

    corpus = read_jsonl(SCIFACT / "corpus.jsonl")
    queries = {q["_id"]: q["text"] for q in read_jsonl(SCIFACT / "queries.jsonl")}
    qrels = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        qrels.setdefault(qid, set()).add(did)
    rng = np.random.default_rng(0)
    recs = [VectorRecord(id=str(uuid.uuid5(uuid.NAMESPACE_URL, d["_id"])), document_id=d["_id"], ordinal=0,
                         text=(d.get("title", "") + " " + d["text"]).strip(), vector=rng.normal(size=8))
            for d in corpus]

    def evaluate(store, after_load=None):
        store.ensure_namespace("scifact", 8)
        for s in range(0, len(recs), 1000):
            store.upsert("scifact", recs[s:s + 1000])
        if after_load:
            after_load(store)
        scores = [ndcg_at_10([h.document_id for h in store.search("scifact", text=queries[q], limit=10)], rel)
                  for q, rel in qrels.items()]
        return round(statistics.fmean(scores), 3)

    out = {}
    defaults = local_store.TOKENIZER, local_store.COMMON_WORD
    for tokenizer in ("unicode61 remove_diacritics 2", "porter unicode61 remove_diacritics 2"):
        for common in (1.0, 0.1, 0.05):
            local_store.TOKENIZER, local_store.COMMON_WORD = tokenizer, common
            folder = tempfile.mkdtemp(prefix="spacio-vs-scifact-")
            store = local_store.LocalVectorStore(database_url=f"sqlite:///{folder}/s.db")
            selection = "every word selects" if common == 1.0 else f"words in <= {common:.0%} of rows select"
            out[f"local fts5 bm25, {tokenizer}, {selection}"] = evaluate(store)
            store.close()
    local_store.TOKENIZER, local_store.COMMON_WORD = defaults
    if url:
        from spacio_pgvector import PgVectorStore

        store = PgVectorStore(database_url=url, table_prefix=f"vs_scifact_{uuid.uuid4().hex[:6]}")
        def analyze(store):  # what autovacuum does within a minute of a bulk load
            with store._transaction() as conn:
                conn.execute(f"ANALYZE {store.prefix}_8")
                conn.execute(f"ANALYZE {store.prefix}_8_keywords")  # where the keyword statistics come from
            store._stats.clear()

        out["pgvector tsvector english, BM25-style (idf from pg_stats)"] = evaluate(store, analyze)
        with store._transaction() as conn:
            conn.execute(f"DROP TABLE {store.prefix}_8, {store.prefix}_8_keywords")
        store.close()
    return out


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--stores", default="local,pgvector")
    parser.add_argument("--scifact", action="store_true", help="keyword nDCG@10 on SciFact test")
    args = parser.parse_args()
    url = os.environ.get("SPACIO_TEST_DATABASE_URL")
    rng = np.random.default_rng(42)

    texts, chunks = load_texts(args.records)
    vectors, queries, centres, claims, source = make_vectors(args.records, args.centres, args.queries, rng, chunks)
    data = (vectors, texts, queries, claims, centres)
    print(f"data: {args.records} × {DIMS}; {source}")

    results = {}
    if "local" in args.stores:
        results["local"] = bench_local(args, data, rng)
    if "pgvector" in args.stores:
        if url:
            results["pgvector"] = bench_pgvector(args, data, rng, url)
        else:
            print("pgvector skipped: SPACIO_TEST_DATABASE_URL is not set (run inside tests/services.sh)")
    if args.scifact:
        results["scifact_keyword_ndcg_at_10"] = scifact_keyword(url)

    print(f"\n{'store':<10}{'upsert rec/s':>13}{'vector p50/p99':>17}{'keyword p50/p99':>18}"
          f"{'hybrid p50/p99':>17}{'small ns: hits of 10, recall':>31}")
    for name in ("local", "pgvector"):
        r = results.get(name)
        if not r:
            continue
        s = r["search"]
        cell = lambda m: f"{s[m]['p50_ms']}/{s[m]['p99_ms']} ms"  # noqa: E731
        small = "min {min_hits_of_10}, {recall_at_10}".format(**r["small_namespace"])
        print(f"{name:<10}{r['upsert']['records_per_s']:>13}{cell('vector'):>17}{cell('keyword'):>18}"
              f"{cell('hybrid'):>17}{small:>31}")
    for name, r in results.items():
        extras = {k: v for k, v in r.items() if k not in ("search", "upsert", "small_namespace")}
        if extras:
            print(f"{name}: {json.dumps(extras)}")

    report = {
        "benchmark": "vector_stores",
        "data": {"records": args.records, "dimensions": DIMS, "vectors": source,
                 "texts": "SciFact sentences, 3 per record", "search_limit": 10, "queries": args.queries},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    out = ROOT / "bench" / "results" / "vector_stores.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
