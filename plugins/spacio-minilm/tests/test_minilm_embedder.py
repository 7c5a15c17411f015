"""MiniLMEmbedder: the embedder contract, plus what is specific to this model: its vectors
match the fp32 sentence-transformers model, it reads 256 tokens (not the 128 its
tokenizer file presets), and length bucketing changes speed, not results."""

import ctypes
import threading
from importlib.metadata import entry_points

import numpy as np
import pytest
from marshmallow import ValidationError

from spacio.testing.contracts.embedder import EmbedderContract
from spacio_minilm import MiniLMEmbedder, MiniLMTokenizer


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder()


class TestMiniLMEmbedderContract(EmbedderContract):
    @pytest.fixture
    def embedder(self, minilm):
        return minilm


class TestMiniLMOneThreadBatchOne(EmbedderContract):
    """Other options, same contract (batch_size=1 means no padding at all)."""

    @pytest.fixture(scope="class")
    def embedder(self):
        return MiniLMEmbedder(batch_size=1, threads=1, max_tokens=64)


SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
]


def test_similarities_match_the_fp32_model(minilm):
    """Reference cosines computed with the fp32 weights of sentence-transformers/all-MiniLM-L6-v2
    (the int8 model agrees to about 0.01)."""
    v = minilm.embed_documents(SENTENCES).vectors
    sim = v @ v.T
    assert sim[0, 1] == pytest.approx(0.7553, abs=0.02)  # eating food / eating bread
    assert sim[3, 6] == pytest.approx(0.7369, abs=0.02)  # riding a horse / riding a white horse
    assert sim[7, 8] == pytest.approx(0.6433, abs=0.02)  # monkey drums / gorilla costume drums
    assert sim[0, 2] == pytest.approx(-0.1050, abs=0.02)
    nearest = (sim - 2 * np.eye(len(SENTENCES))).argmax(axis=1)
    assert list(nearest[[0, 1, 3, 6, 7, 8]]) == [1, 0, 6, 3, 8, 7]


def test_query_ranks_the_relevant_passage_first(minilm):
    passages = [
        "The mitochondria is the powerhouse of the cell, producing ATP through respiration.",
        "Paris is the capital and most populous city of France.",
        "Insulin regulates blood glucose by promoting its uptake into cells.",
        "The Great Wall of China stretches over thousands of kilometres.",
    ]
    docs = minilm.embed_documents(passages).vectors
    for query, expected in [("Which hormone controls blood sugar?", 2), ("What is France's capital?", 1),
                            ("Where is energy produced in a cell?", 0)]:
        assert int(np.argmax(docs @ minilm.embed_query(query).vectors[0])) == expected


def _first_tokens(tokenizer, text, n):
    return text[:tokenizer.spans(text)[n - 1][1]]


LONG = " ".join(f"Sentence {i} talks about topic number {i * 7 % 13} in the corpus." for i in range(60))


def test_reads_256_tokens_and_ignores_the_rest(minilm):
    tokenizer = minilm.tokenizer
    assert tokenizer.count([LONG])[0] > 400
    first_256 = _first_tokens(tokenizer, LONG, 256)
    first_200 = _first_tokens(tokenizer, LONG, 200)
    full, cut, with_other_tail, short = (
        minilm.embed_documents([t]).vectors[0]
        for t in [LONG, first_256, first_256 + " Bananas and submarines, entirely unrelated words here.",
                  first_200])
    assert float(full @ cut) > 0.99999  # everything after token 256 is ignored
    assert float(full @ with_other_tail) > 0.99999
    assert float(full @ short) < 0.9999  # tokens 129..256 are read (the file's preset was 128)
    result = minilm.embed_documents([LONG, first_200])
    assert result.tokens == (256 + 2) + (200 + 2)  # [CLS] and [SEP] included, padding not


def test_max_tokens_option_truncates_earlier():
    embedder = MiniLMEmbedder(max_tokens=32)
    first_32 = _first_tokens(embedder.tokenizer, LONG, 32)
    a, b = embedder.embed_documents([LONG, first_32]).vectors
    assert float(a @ b) > 0.9999
    assert embedder.embed_documents([LONG]).tokens == 34


def test_bucketing_gives_the_same_vectors_as_input_order(minilm):
    texts = [LONG[: 60 * k + 5] for k in range(1, 12)] + SENTENCES
    rng = np.random.default_rng(7)
    texts = [texts[i] for i in rng.permutation(len(texts))]
    # input order, 8 texts a run whatever their lengths: lots of padding
    plain = MiniLMEmbedder(bucketed=False, batch_size=8, batch_tokens=10 ** 6).embed_documents(texts)
    bucketed = minilm.embed_documents(texts)
    cosines = np.sum(plain.vectors * bucketed.vectors, axis=1)
    assert cosines.min() > 0.999
    assert plain.tokens == bucketed.tokens


def test_batch_size_does_not_change_vectors(minilm):
    texts = SENTENCES + [LONG[:300], LONG[:900]]
    one = MiniLMEmbedder(batch_size=1).embed_documents(texts).vectors
    assert np.sum(one * minilm.embed_documents(texts).vectors, axis=1).min() > 0.999


@pytest.mark.parametrize("batch_size,batch_tokens,bucketed", [(32, 256, True), (4, 100, True), (8, 10 ** 6, False),
                                                               (1, 256, True), (64, 1, True)])
def test_runs_respect_batch_size_and_token_budget(batch_size, batch_tokens, bucketed):
    embedder = MiniLMEmbedder(batch_size=batch_size, batch_tokens=batch_tokens, bucketed=bucketed)
    lengths = np.array([258, 20, 20, 258, 100, 130, 20, 5, 5, 5, 64, 3, 258, 12])
    runs = embedder._batches(lengths)
    assert sorted(np.concatenate(runs).tolist()) == list(range(len(lengths)))  # every text exactly once
    for run in runs:
        assert 1 <= len(run) <= batch_size
        assert len(run) == 1 or len(run) * lengths[run].max() <= batch_tokens
    if bucketed:  # longest first, so each run pads little
        widths = [int(lengths[run].max()) for run in runs]
        assert widths == sorted(widths, reverse=True)


def test_short_texts_share_a_run_long_ones_do_not():
    runs = MiniLMEmbedder()._batches(np.array([258] * 3 + [16] * 20))
    assert [len(r) for r in runs] == [1, 1, 1, 16, 4]


def test_tokenizer_counts_without_special_tokens_or_truncation():
    tokenizer = MiniLMTokenizer()
    assert tokenizer.count(["Hello, world!"]) == [4]
    assert tokenizer.count([LONG])[0] > 400  # the file presets truncation at 128: must be off here
    text = "Tokenization of naïve café 東京"
    assert [text[s:e] for s, e in tokenizer.spans(text)] == \
        ["Token", "ization", "of", "naïve", "café", "東", "京"]


def test_lone_surrogate_is_embedded_and_spans_keep_offsets(minilm):
    text = "broken \ud800 text"
    assert minilm.embed_documents([text]).vectors.shape == (1, 384)
    assert [text[s:e] for s, e in minilm.tokenizer.spans(text)] == ["broken", "\ud800", "text"]


def test_constructor_loads_nothing():
    embedder = MiniLMEmbedder()
    assert embedder._session is None and embedder.tokenizer._tokenizer is None
    embedder.tokenizer.count(["loads only the tokenizer"])
    assert embedder._session is None


def test_first_use_from_many_threads_loads_one_session():
    embedder = MiniLMEmbedder()
    sessions, errors = [], []

    def work():
        try:
            embedder.embed_query("concurrent first use")
            sessions.append(id(embedder._session))
        except BaseException as error:  # reported by the assert below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(sessions) == 4 and len(set(sessions)) == 1


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _malloc_in_use():
    """Bytes malloc has handed out and not got back (glibc: in arenas plus mmapped)."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc 2.33 or newer (mallinfo2)")
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def test_embedding_documents_leaves_nothing_in_onnxruntimes_arena():
    """The arena grows to a call's largest run; embed_documents gives that back after its
    last run, so an idle worker does not hold it (31 MiB here after one call of 64
    passages of 256 tokens before it did, 0.4 after)."""
    embedder = MiniLMEmbedder()  # a session of its own: an arena nothing else grew
    embedder.embed_documents(["loads the session"])
    before = _malloc_in_use()
    passages = [" ".join(f"word{i}x{j}" for j in range(300)) for i in range(64)]  # each cut at 256 tokens
    vectors = embedder.embed_documents(passages).vectors
    grown = _malloc_in_use() - before - vectors.nbytes
    assert grown < 2 * 2 ** 20, f"{grown / 2 ** 20:.1f} MiB still allocated"


def test_threads_option_reaches_onnxruntime():
    embedder = MiniLMEmbedder(threads=1)
    embedder.embed_query("load")
    options = embedder._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1


def test_options_schema():
    schema = MiniLMEmbedder.options_schema()
    assert schema.load({}) == {"batch_size": 32, "batch_tokens": 256, "threads": None, "max_tokens": 256}
    options = schema.load({"batch_size": "16", "batch_tokens": "1024", "threads": "2", "max_tokens": "128"})
    embedder = MiniLMEmbedder(**options)
    assert (embedder.batch_size, embedder.batch_tokens, embedder.threads, embedder.max_tokens) == (16, 1024, 2, 128)
    for bad in ({"max_tokens": 257}, {"batch_size": 0}, {"batch_size": 65}, {"batch_tokens": 0}, {"threads": 0},
                {"model": "other"}):
        with pytest.raises(ValidationError):
            schema.load(bad)
    with pytest.raises(ValueError):
        MiniLMEmbedder(max_tokens=512)


def test_entry_point():
    (entry_point,) = entry_points(group="spacio.embedders", name="local")
    cls = entry_point.load()
    assert cls is MiniLMEmbedder
    assert (cls.model, cls.dimensions) == ("sentence-transformers/all-MiniLM-L6-v2 (onnx int8)", 384)
