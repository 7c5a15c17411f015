"""Retrieval quality through the real pipeline: nDCG@10 and recall@100 of ``POST /search``
for the modes vector, keyword and hybrid, on SciFact and PubMedQA.

How: ``gunicorn`` on the embedded default (SQLite, the ``local`` vector store, the ``local``
MiniLM embedder, the in-process ingestion worker) in an instance directory; each corpus
document is uploaded THROUGH THE API as a ``.txt`` file named after its BEIR id (SciFact:
``title\\n\\ntext``; PubMedQA: the paragraph), so a hit's ``filename`` maps back to the
judged document. Each query is ranked by ``/search`` with ``top_k`` 100. Scores are at
DOCUMENT level: a document's rank is the rank of its first chunk in the hits (later chunks
of the same document are skipped), as BEIR scores whole documents.

Data (read in place): ``../shared/eval/retrieval/scifact`` (5,183 abstracts; 809 train and
300 test claims) and ``../shared/eval/qa/pubmedqa`` (3,358 paragraphs, 500 questions).
Tuning uses SciFact TRAIN queries only; the reported figures are the TEST split.

Ingestion takes ~10 min on 2 cores, so it is done once: the instance directory is kept
(its path is printed) and ``--instance DIR`` reuses it (the server restarts on it with the
current code and config, which is how tuned settings are checked).

    .venv/bin/python bench/quality.py                          # ingest into a new /tmp dir, evaluate
    .venv/bin/python bench/quality.py --instance /tmp/spacio-quality-XXXX   # reuse it
    .venv/bin/python bench/quality.py --instance DIR --tune      # fusion grid on SciFact train
    .venv/bin/python bench/quality.py --instance DIR --calibrate # the grounded threshold
    .venv/bin/python bench/quality.py --instance DIR --env SPACIO_SEARCH_FUSION=rrf --no-write
    bash tests/services.sh run -- .venv/bin/python bench/quality.py --backend postgres --datasets scifact

With ``--backend postgres`` the server runs on the PostgreSQL that ``tests/services.sh``
started (pgvector store, in-process ingestion: no Redis needed); that database ends with
the command, so such a run always ingests (~15 min for SciFact).

Documents whose text another document already has are not stored twice by the upload
(PubMedQA has 8 such groups); a hit on the stored one counts for all of its twins.

``--tune`` fetches each train query's vector and keyword rankings once through ``/search``
(top_k 100) and replays the fusion functions of ``spacio.rag.fusion`` over them offline
for every setting of the grid; the chosen setting is then checked end to end by ``/search``
in hybrid mode. ``--calibrate`` compares the best cosine (``/search`` vector, top 1) of
SciFact train claims, which all have a relevant abstract in the corpus, with clearly
off-topic questions (cooking, sports, programming, travel, ...) to place the grounded
threshold of the embedder the server runs (``--env SPACIO_EMBEDDER=openai`` for another):
it prints the value to declare as the embedder's ``grounded_min_similarity``.

Writes bench/results/quality.json (evaluation), quality-tuning.json (``--tune``),
quality-calibration.json (``--calibrate``); with ``--backend postgres`` the evaluation goes
to quality-postgresql.json. Not a test: numbers, not asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
EVAL = ROOT.parent / "shared" / "eval"
SCIFACT = EVAL / "retrieval" / "scifact"
PUBMEDQA = EVAL / "qa" / "pubmedqa"
RESULTS = ROOT / "bench" / "results"
MODES = ("vector", "keyword", "hybrid")

import ingest  # noqa: E402
from ingest import BIN, SECRET, free_port  # noqa: E402
STATE = "quality-state.json"  # in the instance dir: which space holds which corpus

# Questions no SciFact or PubMedQA abstract answers: the "nothing relevant" side of the
# grounded threshold. Everyday topics far from biomedicine, phrased like real questions.
OFF_TOPIC = [
    "How long should I boil an egg for a runny yolk?",
    "What is the best way to season a cast iron skillet?",
    "How do I make sourdough starter from scratch?",
    "Which wine goes well with grilled salmon?",
    "How many minutes does pasta need to cook al dente?",
    "What is the difference between baking soda and baking powder?",
    "Can I freeze homemade lasagna before baking it?",
    "How do you make a classic French omelette?",
    "What temperature should I roast a chicken at?",
    "How do I keep guacamole from turning brown?",
    "Who won the FIFA World Cup in 2014?",
    "How many players are on a rugby union team?",
    "What is the offside rule in football?",
    "How long is a marathon in kilometres?",
    "Which tennis player has won the most Wimbledon titles?",
    "How does the scoring work in ten-pin bowling?",
    "What is a hat-trick in cricket?",
    "When were the first modern Olympic Games held?",
    "How do I improve my golf swing?",
    "What are the rules of basketball's shot clock?",
    "How do I reverse a linked list in Python?",
    "What is the difference between a process and a thread?",
    "How do I resolve a merge conflict in git?",
    "What does the JavaScript event loop do?",
    "How do I center a div with CSS flexbox?",
    "What is a closure in programming languages?",
    "How do I write a SQL query with a left join?",
    "Why does my Rust code fail with a borrow checker error?",
    "How do I configure nginx as a reverse proxy?",
    "What is the time complexity of quicksort?",
    "What is the capital city of Australia?",
    "How do I get from Paris to Rome by train?",
    "Which is the tallest mountain in Europe?",
    "What documents do I need to renew my passport?",
    "How do I change a flat tyre on a bicycle?",
    "What is the best season to visit Japan?",
    "How do I replace the battery in a car key fob?",
    "Who painted the ceiling of the Sistine Chapel?",
    "How do I tune a guitar to drop D?",
    "What are the chords of a twelve-bar blues?",
    "How do I fix a leaking kitchen tap?",
    "How often should I water a cactus?",
    "What is the plot of Pride and Prejudice?",
    "How do I file my income tax return online?",
    "What is compound interest and how is it calculated?",
    "How do I train my puppy to sit?",
    "What is the rule of thirds in photography?",
    "How can I get better at chess openings?",
    "Which planets in the solar system have rings?",
    "How do I knit a scarf for beginners?",
]


# ---------------------------------------------------------------- data


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read_qrels(path):
    qrels: dict[str, set[str]] = {}
    for line in Path(path).read_text().splitlines()[1:]:
        qid, doc, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(doc)
    return qrels


def corpus_documents(name):
    """(BEIR id, text) of every document of a corpus."""
    folder = SCIFACT if name == "scifact" else PUBMEDQA
    docs = []
    for d in read_jsonl(folder / "corpus.jsonl"):
        text = (d.get("title", "").strip() + "\n\n" + d["text"].strip()).strip()
        docs.append((d["_id"], text))
    return docs


def queries_of(name, split):
    """{query id: text} and {query id: relevant doc ids} of a corpus split."""
    folder = SCIFACT if name == "scifact" else PUBMEDQA
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    texts = {q["_id"]: q["text"] for q in read_jsonl(folder / "queries.jsonl")}
    return {q: texts[q] for q in qrels}, qrels


# ---------------------------------------------------------------- metrics


def twins(name):
    """{doc id: ids of all documents with exactly its text}. An upload with the text of a
    document already in the space is not stored again (PubMedQA has 8 such groups), so a
    hit on the stored one stands for all of them, at the same rank."""
    groups: dict[str, list[str]] = {}
    for doc_id, text in corpus_documents(name):
        groups.setdefault(text, []).append(doc_id)
    return {doc_id: ids for ids in groups.values() if len(ids) > 1 for doc_id in ids}


def documents_of(hits, same=None):
    """Hits (best first) -> BEIR doc ids, each at the rank of its first chunk."""
    seen, order = set(), []
    for hit in hits:
        doc = hit["filename"].rsplit(".", 1)[0]
        for one in (same or {}).get(doc, [doc]):
            if one not in seen:
                seen.add(one)
                order.append(one)
    return order


def ndcg_at(ranked, relevant, k=10):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked, relevant, k=100):
    return len(set(ranked[:k]) & relevant) / len(relevant) if relevant else 0.0


def score(rankings, qrels):
    """Mean nDCG@10 and recall@100 of {qid: ranked doc ids}."""
    n = [ndcg_at(rankings[q], qrels[q]) for q in qrels]
    r = [recall_at(rankings[q], qrels[q]) for q in qrels]
    return {"ndcg@10": round(statistics.fmean(n), 4), "recall@100": round(statistics.fmean(r), 4),
            "queries": len(n)}


# ---------------------------------------------------------------- the server


class Api(ingest.Api):
    """bench/ingest.py's client, plus what ranking a corpus needs."""

    def documents(self, space_id):
        found, page = [], 1
        while True:
            status, docs = self.call("GET", f"/api/v1/spaces/{space_id}/documents?page_size=200&page={page}")
            assert status == 200, docs
            found += docs
            if len(docs) < 200:
                return found
            page += 1

    def filenames(self, space_id):
        return [d["filename"] for d in self.documents(space_id)]

    def search(self, space_id, query, mode, top_k=100):
        status, body = self.call("POST", f"/api/v1/spaces/{space_id}/search",
                                 {"query": query, "mode": mode, "top_k": top_k})
        if status != 200:
            raise RuntimeError(f"/search answered {status}: {body}")
        return body


class Server:
    """gunicorn (one gevent worker, in-process ingestion) on an instance directory."""

    def __init__(self, instance, backend, env_extra=None):
        self.instance, self.backend = instance, backend
        self.env = {**os.environ, "SPACIO_INSTANCE_PATH": instance, "GUNICORN_ACCESSLOG": "",
                    "SPACIO_JWT_SECRET_KEY": SECRET, "SPACIO_REGISTER_RATE_LIMIT": "1000 per minute",
                    "SPACIO_RATELIMIT_ENABLED": "false", "SPACIO_JWT_ACCESS_TOKEN_EXPIRES": "86400",
                    "GUNICORN_TIMEOUT": "600", **(env_extra or {})}
        database = os.environ.get("SPACIO_TEST_DATABASE_URL")
        if backend == "postgres":
            if not database:
                raise SystemExit("--backend postgres: run inside `bash tests/services.sh run --`")
            self.env["SPACIO_SQLALCHEMY_DATABASE_URI"] = database
        self.env = {k: v for k, v in self.env.items() if not k.startswith("SPACIO_TEST_")}
        self.process = None
        self.worker = None

    def start(self, fresh=False):
        if self.backend == "postgres" and fresh:  # a fresh schema: drop what a previous run left
            subprocess.run([BIN / "flask", "--app", "wsgi", "db", "downgrade", "base"], cwd=ROOT, env=self.env,
                           capture_output=True)
        subprocess.run([BIN / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=self.env, check=True,
                       capture_output=True)
        port = free_port()
        log = open(Path(self.instance) / "gunicorn.log", "ab")
        self.process = subprocess.Popen(
            [BIN / "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "wsgi:app"], cwd=ROOT, env=self.env, stdout=log, stderr=log)
        if self.backend == "postgres":  # Redis is not needed: without it ingestion is in-process
            pass
        self.api = Api(port)
        self.api.wait_up(self.process)
        self.api.login()
        return self.api

    def stop(self):
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


# ---------------------------------------------------------------- ingestion


def ingest(api, name, settings=None):
    """Upload the corpus into the space called ``name`` (made if missing) and wait until
    every document is ready or failed. Resumes an interrupted run: files already there are
    not uploaded again, and the server re-queues what it had not finished."""
    docs = corpus_documents(name)
    _, existing = api.call("GET", "/api/v1/spaces?page_size=100")
    space = next((s for s in existing if s["name"] == name), None)
    if space is None:
        status, space = api.call("POST", "/api/v1/spaces", {"name": name, "settings": settings or {}})
        assert status == 201, space
    present = set(api.filenames(space["id"]))
    missing = [(doc_id, text) for doc_id, text in docs if f"{doc_id}.txt" not in present]
    start = time.perf_counter()
    for i in range(0, len(missing), 20):
        api.upload(space["id"], [(f"{doc_id}.txt", text.encode()) for doc_id, text in missing[i:i + 20]])
    last = 0.0
    while True:
        counts = api.statuses(space["id"])
        done = counts.get("ready", 0) + counts.get("failed", 0)
        if done >= sum(counts.values()):  # a file whose text another holds is not stored twice
            break
        if time.perf_counter() - last > 30:
            print(f"  {name}: {done}/{len(docs)} documents done ({time.perf_counter() - start:.0f} s)", flush=True)
            last = time.perf_counter()
        time.sleep(1)
    seconds = time.perf_counter() - start
    print(f"  {name}: ingested {len(docs)} documents in {seconds:.0f} s: {counts}", flush=True)
    return {"space_id": space["id"], "documents": len(docs), "outcomes": counts,
            "same_text_as_another": len(docs) - sum(counts.values()), "seconds": round(seconds, 1),
            "settings": settings or {}}


def spaces(server, api, names, fresh):
    """{corpus: space id}, ingesting what the instance does not hold yet."""
    path = Path(server.instance) / STATE
    state = json.loads(path.read_text()) if path.exists() and not fresh else {}
    for name in names:
        if name not in state:
            print(f"ingesting {name} through the API ...", flush=True)
            state[name] = ingest(api, name)
            path.write_text(json.dumps(state, indent=2))
    return {name: state[name]["space_id"] for name in names}, state


# ---------------------------------------------------------------- ranking


def rank_all(api, space_id, queries, mode, top_k=100, threads=2):
    """{qid: hits} for every query, ``threads`` requests at a time."""
    ids = list(queries)

    def one(qid):
        return api.search(space_id, queries[qid], mode, top_k)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(one, ids))
    elapsed = time.perf_counter() - started
    return dict(zip(ids, answers)), elapsed


def evaluate(api, space_id, name, split, modes):
    queries, qrels = queries_of(name, split)
    out = {}
    for mode in modes:
        answers, elapsed = rank_all(api, space_id, queries, mode)
        same = twins(name)
        rankings = {q: documents_of(a["hits"], same) for q, a in answers.items()}
        out[mode] = {**score(rankings, qrels), "ms_per_query": round(1000 * elapsed / len(queries), 1),
                     "grounded_share": round(statistics.fmean(a["grounded"] for a in answers.values()), 3)}
        print(f"  {name:8} {split:5} {mode:7}  nDCG@10 {out[mode]['ndcg@10']:.4f}  "
              f"recall@100 {out[mode]['recall@100']:.4f}  ({len(queries)} queries, "
              f"{out[mode]['ms_per_query']} ms/query)", flush=True)
    return out


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instance", help="an instance directory to reuse (ingested by an earlier run)")
    parser.add_argument("--backend", choices=("embedded", "postgres"), default="embedded")
    parser.add_argument("--datasets", default="scifact,pubmedqa")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--split", default="test,train", help="SciFact splits to evaluate: test, train or both")
    parser.add_argument("--ingest-only", action="store_true")
    parser.add_argument("--tune", action="store_true", help="fusion grid on SciFact train (writes quality-tuning.json)")
    parser.add_argument("--calibrate", action="store_true", help="the grounded threshold (quality-calibration.json)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server (e.g. SPACIO_X=1)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    fresh = args.instance is None
    instance = args.instance or tempfile.mkdtemp(prefix=f"spacio-quality-{args.backend}-")
    print(f"instance directory: {instance}", flush=True)
    env_extra = dict(item.split("=", 1) for item in args.env)
    server = Server(instance, args.backend, env_extra)
    api = server.start(fresh=fresh)
    try:
        names = args.datasets.split(",")
        ids, state = spaces(server, api, names, fresh)
        if args.ingest_only:
            return
        if args.tune:
            tune(api, ids["scifact"], args)
        if args.calibrate:
            calibrate(api, ids, args)
        if args.tune or args.calibrate:
            return
        results = {"benchmark": "quality", "backend": args.backend,
                   "pipeline": "gunicorn (gevent) -> /search; embedder local MiniLM int8; "
                               + ("SQLite + local vector store" if args.backend == "embedded"
                                  else "PostgreSQL + pgvector"),
                   "settings": search_settings(env_extra),
                   "reference": {"bm25_beir_paper": 0.665, "langchain_dense_same_embedder": 0.673,
                                 "langchain_ensemble": "0.53-0.58", "plain_doc_level_rrf": 0.694,
                                 "target_hybrid": 0.72},
                   "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                   "ingestion": {n: {k: v for k, v in state[n].items() if k not in ("space_id", "seconds")}
                                 for n in names},
                   "results": {}}
        for name in names:
            for split in (args.split.split(",") if name == "scifact" else ["test"]):
                results["results"][f"{name}/{split}"] = evaluate(api, ids[name], name, split, args.modes.split(","))
        print_table(results["results"])
        if not args.no_write:
            out = RESULTS / ("quality.json" if args.backend == "embedded" else "quality-postgresql.json")
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {out.relative_to(ROOT)}")
    finally:
        server.stop()
        if args.backend == "embedded":
            print(f"instance kept: {instance} (reuse with --instance)")


def search_settings(env_extra):
    """The retrieval settings the server ran with: config defaults, then --env overrides."""
    from spacio.config import Defaults

    keys = ("SEARCH_CANDIDATES", "SEARCH_FUSION", "SEARCH_VECTOR_WEIGHT", "SEARCH_DOCUMENT_WEIGHT", "SEARCH_RRF_K",
            "GROUNDED_MIN_SIMILARITY", "GROUNDED_MIN_KEYWORD_COVERAGE", "CHUNK_SIZE", "CHUNK_OVERLAP")
    settings = {key: getattr(Defaults, key) for key in keys}
    for key, value in env_extra.items():
        if key.startswith("SPACIO_") and key[7:] in settings:
            settings[key[7:]] = value
    return settings


def print_table(results):
    print(f"\n{'dataset/split':18} {'mode':8} {'nDCG@10':>8} {'R@100':>8}")
    for key, modes in results.items():
        for mode, row in modes.items():
            print(f"{key:18} {mode:8} {row['ndcg@10']:8.4f} {row['recall@100']:8.4f}")


# ---------------------------------------------------------------- tuning (SciFact train)


def as_hits(answer):
    from spacio.rag.contracts import Hit

    return [Hit(id=h["chunk_id"], document_id=h["document_id"], ordinal=0, text=h["filename"], score=h["score"])
            for h in answer["hits"]]


def tune(api, space_id, args):
    """Grid over the fusion settings on SciFact TRAIN, replaying ``spacio.rag.fusion.fuse``
    over each query's vector and keyword rankings as ``/search`` returns them (top 100)."""
    from spacio.rag.fusion import fuse

    queries, qrels = queries_of("scifact", "train")
    lists = {}
    for mode in ("vector", "keyword"):
        answers, _ = rank_all(api, space_id, queries, mode)
        lists[mode] = {q: as_hits(a) for q, a in answers.items()}

    def evaluate_setting(depth, **options):
        rankings = {}
        for q in queries:
            fused = fuse([lists["vector"][q][:depth], lists["keyword"][q][:depth]], limit=100, **options)
            rankings[q] = documents_of([{"filename": h.text} for h in fused])
        return score(rankings, qrels)

    rows = []
    for mode in ("vector", "keyword"):
        rankings = {q: documents_of([{"filename": h.text} for h in lists[mode][q]]) for q in queries}
        rows.append({"setting": {"mode": mode}, **score(rankings, qrels)})
    grid = []
    for depth in (20, 50, 100):
        for document_weight in (0.0, 0.25, 0.5, 0.75, 1.0):
            for weight in [round(0.2 + 0.05 * i, 2) for i in range(13)]:
                grid.append({"depth": depth, "method": "convex", "weights": [weight, round(1 - weight, 2)],
                             "document_weight": document_weight})
                for k in (10, 30, 60):
                    grid.append({"depth": depth, "method": "rrf", "k": k, "weights": [weight, round(1 - weight, 2)],
                                 "document_weight": document_weight})
    started = time.perf_counter()
    for setting in grid:
        rows.append({"setting": setting, **evaluate_setting(**setting)})
    print(f"  {len(grid)} fusion settings replayed in {time.perf_counter() - started:.0f} s")
    fused = sorted((r for r in rows if "method" in r["setting"]), key=lambda r: -r["ndcg@10"])
    plain_rrf = next(r for r in rows if r["setting"] == {"depth": 100, "method": "rrf", "k": 60,
                                                           "weights": [0.5, 0.5], "document_weight": 0.0})
    best_by_method = {m: next(r for r in fused if r["setting"]["method"] == m) for m in ("convex", "rrf")}
    print(f"\nSciFact TRAIN ({len(queries)} queries), document level, top 15 of {len(grid)} settings:")
    for row in rows[:2] + [plain_rrf] + fused[:15]:
        print(f"  nDCG@10 {row['ndcg@10']:.4f}  R@100 {row['recall@100']:.4f}  {row['setting']}")
    out = {"benchmark": "quality-tuning", "split": "scifact/train", "queries": len(queries),
           "how": "vector and keyword rankings from /search (top_k 100), fused offline by spacio.rag.fusion.fuse",
           "parts": rows[:2], "plain_rrf_chunk_level": plain_rrf, "best": best_by_method,
           "top": fused[:40], "all": rows[2:]}
    if not args.no_write:
        (RESULTS / "quality-tuning.json").write_text(json.dumps(out, indent=1) + "\n")
        print("wrote bench/results/quality-tuning.json")


# ---------------------------------------------------------------- the grounded threshold


def calibrate(api, ids, args):
    """Best cosine (vector top 1) and keyword coverage of in-domain questions, which all
    have a relevant document in the corpus, against off-topic ones. SciFact train claims
    place the threshold; PubMedQA questions and the second half of the off-topic list
    check it (held out)."""
    from spacio.rag.retrieval import coverage

    def signals(space_id, texts):
        answers_v, _ = rank_all(api, space_id, dict(enumerate(texts)), "vector", top_k=1)
        answers_k, _ = rank_all(api, space_id, dict(enumerate(texts)), "keyword", top_k=10)
        best = [answers_v[i]["hits"][0]["score"] if answers_v[i]["hits"] else 0.0 for i in range(len(texts))]
        covered = [max((coverage(texts[i], h["text"]) for h in answers_k[i]["hits"]), default=0.0)
                   for i in range(len(texts))]
        return best, covered

    scifact_train = list(queries_of("scifact", "train")[0].values())
    tuning_off, held_off = OFF_TOPIC[0::2], OFF_TOPIC[1::2]
    on_cos, on_cov = signals(ids["scifact"], scifact_train)
    off_cos, off_cov = signals(ids["scifact"], tuning_off)
    held = {"off_topic_scifact": signals(ids["scifact"], held_off)}
    if "pubmedqa" in ids:
        pubmed = list(queries_of("pubmedqa", "test")[0].values())
        held["pubmedqa_questions"] = signals(ids["pubmedqa"], pubmed)
        held["off_topic_pubmedqa"] = signals(ids["pubmedqa"], OFF_TOPIC)

    def pick(on, off, candidates):
        """The threshold with the best balanced accuracy, the lowest of equals."""
        best = None
        for t in candidates:
            accuracy = (sum(v >= t for v in on) / len(on) + sum(v < t for v in off) / len(off)) / 2
            if best is None or accuracy > best[1] + 1e-12:
                best = (t, accuracy)
        return best

    cos_t, cos_acc = pick(on_cos, off_cos, [round(0.01 * i, 2) for i in range(10, 80)])
    cov_t, cov_acc = pick(on_cov, off_cov, [round(0.05 * i, 2) for i in range(1, 20)])

    def describe(values):
        ordered = sorted(values)
        pct = lambda p: round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)  # noqa: E731
        return {"n": len(values), "min": round(ordered[0], 3), "p01": pct(0.01), "p05": pct(0.05),
                "median": pct(0.5), "p95": pct(0.95), "max": round(ordered[-1], 3)}

    def rates(values, threshold, relevant):
        share = sum(v >= threshold for v in values) / len(values)
        return round(share if relevant else 1 - share, 3)

    status, space = api.call("GET", f"/api/v1/spaces/{ids['scifact']}")
    assert status == 200, space
    embedder = space["pipeline"]["embedder"]
    out = {"benchmark": "quality-calibration", "embedder": embedder,
           "cosine": {"threshold": cos_t, "balanced_accuracy_train": round(cos_acc, 3),
                      "scifact_train_claims": describe(on_cos), "off_topic_tuning": describe(off_cos),
                      "grounded_share_scifact_train": rates(on_cos, cos_t, True),
                      "rejected_share_off_topic_tuning": rates(off_cos, cos_t, False)},
           "keyword_coverage": {"threshold": cov_t, "balanced_accuracy_train": round(cov_acc, 3),
                                "scifact_train_claims": describe(on_cov), "off_topic_tuning": describe(off_cov),
                                "grounded_share_scifact_train": rates(on_cov, cov_t, True),
                                "rejected_share_off_topic_tuning": rates(off_cov, cov_t, False)},
           "held_out": {}}
    for name, (cos, cov) in held.items():
        relevant = not name.startswith("off_topic")
        out["held_out"][name] = {"cosine": describe(cos), "keyword_coverage": describe(cov),
                                 ("grounded_share" if relevant else "rejected_share"): {
                                     "cosine": rates(cos, cos_t, relevant), "keyword": rates(cov, cov_t, relevant)}}
    print(json.dumps(out, indent=1))
    print(f"grounded_min_similarity for the embedder {embedder['name']!r} (model {embedder['model']}): {cos_t} "
          f"(declare it on the embedder class, or set SPACIO_GROUNDED_MIN_SIMILARITY={cos_t})")
    if not args.no_write:
        name = "quality-calibration.json" if embedder["name"] == "local" else \
            f"quality-calibration-{embedder['name']}.json"
        (RESULTS / name).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote bench/results/{name}")


if __name__ == "__main__":
    sys.exit(main())
