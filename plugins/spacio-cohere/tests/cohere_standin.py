"""A local stand-in for Cohere's HTTP API v2, so the real ``cohere`` SDK can be tested
without a network: ``/v2/embed``, ``/v2/chat`` (JSON and SSE streaming) and ``/v2/rerank``.

It speaks the wire format the SDK's own models parse (``EmbedByTypeResponse``,
``V2ChatResponse``, ``V2ChatStreamResponse`` events, ``V2RerankResponse``), validates
requests the way the API does (bearer token, model ids, at most 96 texts, ``input_type``
required for embed v3+, ``output_dimension`` only for embed v4), records every request
and can fail on demand (429 with ``Retry-After``, 5xx, a stalled response, a stream cut
off half-way), so retry and error handling are exercised against real HTTP.

Answers are deterministic and meaningful enough to assert on:

- embeddings are a signed hashed bag of words (similar texts get similar vectors);
- chat answers ``chat_reply`` when set, otherwise echoes the last user message; streamed,
  it sends the real API's frames (message-start, content-start, one content-delta per
  word, content-end, message-end with ``finish_reason`` and ``usage``) and records how
  many it wrote and how the stream ended (``Recorded.sent_events``, ``stream_end``);
- rerank scores are the share of the query's words found in each document.

Errors use Cohere's error body, ``{"id": ..., "message": ...}``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API_KEY = "standin-key"

#: embedding model -> (default dimensions, allowed ``output_dimension`` values or None)
EMBED_MODELS: dict[str, tuple[int, frozenset[int] | None]] = {
    "embed-v4.0": (1536, frozenset({256, 512, 1024, 1536})),
    "embed-english-v3.0": (1024, None),
    "embed-multilingual-v3.0": (1024, None),
    "embed-english-light-v3.0": (384, None),
    "embed-multilingual-light-v3.0": (384, None),
}
EMBED_MAX_TEXTS = 96
EMBED_MAX_TOKENS = 512  # v3 models read 512 tokens; with truncate=NONE longer inputs are refused
EMBED_MAX_TOKENS_V4 = 128_000
INPUT_TYPES = {"search_document", "search_query", "classification", "clustering", "image"}
EMBEDDING_TYPES = {"float", "int8", "uint8", "binary", "ubinary", "base64"}
TRUNCATE = {"NONE", "START", "END"}
CHAT_MODEL_PREFIXES = ("command-",)
RERANK_MODEL_PREFIXES = ("rerank-",)
RERANK_MAX_DOCUMENTS = 1000
ROLES = {"system", "user", "assistant", "tool"}

_BPE_PIECE = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_")


def count_tokens(text: str) -> int:
    """The stand-in's billed tokens, roughly what a 100k-vocabulary BPE bills: a word costs
    a token per started 6 UTF-8 bytes, numbers a token per 3 digits, a symbol one."""
    return sum(-(-len(p.encode()) // 6) if p[0].isalpha() else 1 for p in _BPE_PIECE.findall(text))


def hashed_bag_of_words(text: str, dimensions: int) -> list[float]:
    """A unit vector from lower-cased words hashed into ``dimensions`` signed buckets."""
    vector = [0.0] * dimensions
    words = re.findall(r"\w+", text.lower()) or [""]
    for word in words:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: tests read :attr:`CohereStandIn.requests` instead."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class Recorded:
    """One request as the stand-in saw it, and the status it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    response: Any = None
    #: streamed chats only: events written to the socket, and how the stream ended:
    #: "complete", "cut" (the stand-in dropped it), "client_closed" (the client went away)
    sent_events: int = 0
    stream_end: str | None = None


@dataclass
class Failure:
    status: int
    retry_after: str | None = None
    message: str | None = None
    path: str | None = None  # None: any path
    raw_body: str | None = None  # answer this text as is (text/html), instead of an error JSON
    after: int = 0  # let this many matching requests through first


class CohereError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class CohereStandIn:
    """Start with :meth:`start` (or use as a context manager); point the SDK at :attr:`url`."""

    api_key: str = API_KEY
    requests: list[Recorded] = field(default_factory=list)
    chat_reply: str | None = None
    #: seconds each of the next requests sleeps before answering (to trigger client timeouts)
    stalls: deque = field(default_factory=deque)
    #: a streamed chat is cut off (connection closed) after this many events; the first
    #: two are message-start and content-start, so ``2 + k`` drops it after k deltas
    cut_stream_after: int | None = None
    stream_delay: float = 0.0  # seconds between streamed events
    #: ``(k, seconds)``: sleep before the k-th streamed event (0-based), to time a client out mid-stream
    stream_pause: tuple[int, float] | None = None
    #: after this many deltas, end the stream the way the API reports an in-band failure:
    #: message-end with ``finish_reason`` ``chat_error_reason`` and an ``error`` message
    chat_error_after: int | None = None
    chat_error_reason: str = "ERROR"
    #: replaces the chat ``usage`` object (e.g. ``{}``: a proxy that drops the counts)
    chat_usage: dict | None = None
    #: embed models served: id -> (dimensions, allowed output_dimension values or None)
    embed_models: dict = field(default_factory=lambda: dict(EMBED_MODELS))

    def __post_init__(self) -> None:
        self._failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reset(): a request stalled across it is dropped
        self._server = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "CohereStandIn":
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True,
                                   request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="cohere-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "CohereStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ test controls

    def fail(self, status: int, times: int = 1, *, retry_after: float | str | None = None,
             message: str | None = None, path: str | None = None, raw_body: str | None = None,
             after: int = 0) -> None:
        """Answer ``times`` requests (to ``path``, if given) with ``status``, once ``after``
        of them went through: a Cohere error body with ``message``, or ``raw_body`` as
        text/html (a broken proxy)."""
        with self._lock:
            for n in range(times):
                self._failures.append(Failure(status, None if retry_after is None else str(retry_after),
                                              message, path, raw_body, after if n == 0 else 0))

    def stall(self, seconds: float, times: int = 1) -> None:
        """Make the next ``times`` requests wait ``seconds`` before answering."""
        with self._lock:
            self.stalls.extend([seconds] * times)

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            self._failures.clear()
            self.stalls.clear()
            self.requests.clear()
        self.chat_reply = None
        self.embed_models = dict(EMBED_MODELS)
        self.cut_stream_after = None
        self.stream_delay = 0.0
        self.stream_pause = None
        self.chat_error_after = None
        self.chat_error_reason = "ERROR"
        self.chat_usage = None

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------------ WSGI

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        raw = request.get_data()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = Recorded(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body)
        with self._lock:
            self.requests.append(record)
            stall = self.stalls.popleft() if self.stalls else 0.0
            generation = self._generation
        if stall:
            time.sleep(stall)
            if generation != self._generation:
                # its test is over (the client gave up long ago): do not touch the next test's queue
                return Response("", status=503)(environ, start_response)
        try:
            response = self._dispatch(request, body, record)
        except CohereError as error:
            record.status = error.status
            record.response = {"id": str(uuid.uuid4()), "message": error.message}
            response = Response(json.dumps(record.response), status=error.status,
                                headers=error.headers, content_type="application/json")
        return response(environ, start_response)

    def _dispatch(self, request: Request, body: Any, record: Recorded) -> Response:
        routes = {"/v2/embed": self._embed, "/v2/chat": self._chat, "/v2/rerank": self._rerank}
        handler = routes.get(request.path)
        if handler is None:
            raise CohereError(404, f"no route for {request.path}")
        if request.method != "POST":
            raise CohereError(405, "method not allowed")
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise CohereError(401, "no api key supplied")
        if auth[len("Bearer "):] != self.api_key:
            raise CohereError(401, "invalid api token")
        failure = self._next_failure(request.path)
        if failure is not None and failure.raw_body is not None:
            record.status = failure.status
            record.response = failure.raw_body
            return Response(failure.raw_body, status=failure.status, content_type="text/html")
        if failure is not None:
            headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            raise CohereError(failure.status, failure.message or _default_message(failure.status), headers)
        if not isinstance(body, dict):
            raise CohereError(400, "invalid request: the request body must be a JSON object")
        return handler(body, record)

    def _next_failure(self, path: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.path in (None, path):
                    if failure.after:
                        failure.after -= 1
                        return None
                    self._failures.remove(failure)
                    return failure
        return None

    # ------------------------------------------------------------------ /v2/embed

    def _embed(self, body: dict, record: Recorded) -> Response:
        model = _required(body, "model", str)
        if model not in self.embed_models:
            raise CohereError(404, f"model '{model}' not found, make sure the correct model ID was used "
                                   "and that you have access to the model.")
        dimensions, allowed = self.embed_models[model]
        max_tokens = EMBED_MAX_TOKENS_V4 if model.startswith("embed-v4") else EMBED_MAX_TOKENS
        texts = body.get("texts")
        if body.get("images") or body.get("inputs"):
            raise CohereError(400, "invalid request: the stand-in only embeds texts")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise CohereError(400, "invalid request: texts must be a list of strings")
        if not texts:
            raise CohereError(400, "invalid request: texts cannot be empty")
        if len(texts) > EMBED_MAX_TEXTS:
            raise CohereError(400, f"invalid request: texts must contain at most {EMBED_MAX_TEXTS} items, "
                                   f"got {len(texts)}")
        input_type = body.get("input_type")
        if input_type not in INPUT_TYPES:
            raise CohereError(400, "invalid request: valid input_type must be provided with the provided model")
        embedding_types = body.get("embedding_types") or ["float"]
        if not set(embedding_types) <= EMBEDDING_TYPES:
            raise CohereError(400, f"invalid request: embedding_types must be among {sorted(EMBEDDING_TYPES)}")
        if "float" not in embedding_types:
            raise CohereError(400, "invalid request: the stand-in only returns float embeddings")
        truncate = body.get("truncate", "END")
        if truncate not in TRUNCATE:
            raise CohereError(400, "invalid request: truncate must be one of NONE, START, END")
        output_dimension = body.get("output_dimension")
        if output_dimension is not None:
            if allowed is None:
                raise CohereError(400, f"invalid request: output_dimension is not supported for {model}")
            if output_dimension not in allowed:
                raise CohereError(400, f"invalid request: output_dimension must be one of {sorted(allowed)}")
            dimensions = output_dimension
        counts = [count_tokens(t) for t in texts]
        if truncate == "NONE" and any(c > max_tokens for c in counts):
            raise CohereError(400, "invalid request: an input exceeds the maximum token length; "
                                   "set truncate to START or END")
        payload = {
            "id": str(uuid.uuid4()),
            "embeddings": {"float": [hashed_bag_of_words(t, dimensions) for t in texts]},
            "texts": texts,
            "meta": {"api_version": {"version": "2"},
                     "billed_units": {"input_tokens": sum(min(c, max_tokens) for c in counts)}},
            "response_type": "embeddings_by_type",
        }
        return self._json(record, payload)

    # ------------------------------------------------------------------ /v2/chat

    def _chat(self, body: dict, record: Recorded) -> Response:
        model = _required(body, "model", str)
        if not model.startswith(CHAT_MODEL_PREFIXES):
            raise CohereError(404, f"model '{model}' not found, make sure the correct model ID was used "
                                   "and that you have access to the model.")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise CohereError(400, "invalid request: messages cannot be empty")
        prompt_tokens = 0
        last_user = ""
        for message in messages:
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise CohereError(400, "invalid request: each message needs a role among "
                                       "system, user, assistant, tool")
            text = _message_text(message.get("content"))
            prompt_tokens += count_tokens(text)
            if message["role"] == "user":
                last_user = text
        if messages[-1].get("role") not in ("user", "tool"):
            raise CohereError(400, "invalid request: the last message must be from the user or a tool")
        temperature = body.get("temperature")
        # the v2 reference only says "a non-negative float" (default 0.3)
        if temperature is not None and not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise CohereError(400, "invalid request: temperature must be a non-negative number")
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens > 0):
            raise CohereError(400, "invalid request: max_tokens must be a positive integer")

        reply = self.chat_reply if self.chat_reply is not None else f"You said: {last_user}"
        pieces = re.findall(r"\S+\s*|\s+", reply)
        finish_reason, error = "COMPLETE", None
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, finish_reason = pieces[:max_tokens], "MAX_TOKENS"
        if body.get("stream") and self.chat_error_after is not None and len(pieces) > self.chat_error_after:
            pieces, finish_reason = pieces[:self.chat_error_after], self.chat_error_reason
            error = "internal error: the model stopped unexpectedly"
        text = "".join(pieces)
        usage = {"billed_units": {"input_tokens": prompt_tokens, "output_tokens": len(pieces)},
                 "tokens": {"input_tokens": prompt_tokens + 7, "output_tokens": len(pieces) + 1}}
        if self.chat_usage is not None:
            usage = self.chat_usage
        message_id = str(uuid.uuid4())
        if not body.get("stream"):
            return self._json(record, {
                "id": message_id,
                "finish_reason": finish_reason,
                "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
                "usage": usage,
            })
        events = [
            {"id": message_id, "type": "message-start",
             "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                   "tool_calls": [], "citations": []}}},
            {"type": "content-start", "index": 0,
             "delta": {"message": {"content": {"type": "text", "text": ""}}}},
            *({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}}
              for piece in pieces),
            {"type": "content-end", "index": 0},
            {"type": "message-end",
             "delta": {"finish_reason": finish_reason, "usage": usage, **({"error": error} if error else {})}},
        ]
        record.status = 200
        record.response = events
        return Response(self._sse(events, record), status=200, content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache"}, direct_passthrough=True)

    def _sse(self, events: list[dict], record: Recorded) -> Iterator[bytes]:
        cut, pause, delay = self.cut_stream_after, self.stream_pause, self.stream_delay
        try:
            for n, event in enumerate(events):
                if cut is not None and n >= cut:
                    # a dropped connection: end the chunked body without its terminating chunk
                    record.stream_end = "cut"
                    raise ConnectionAbortedError("stand-in cut the stream")
                if delay:
                    time.sleep(delay)
                if pause is not None and n == pause[0]:
                    time.sleep(pause[1])
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                record.sent_events += 1
            record.stream_end = "complete"
        except GeneratorExit:
            # the server closes the body when a write fails: the client hung up
            record.stream_end = "client_closed"
            raise

    # ------------------------------------------------------------------ /v2/rerank

    def _rerank(self, body: dict, record: Recorded) -> Response:
        model = _required(body, "model", str)
        if not model.startswith(RERANK_MODEL_PREFIXES):
            raise CohereError(404, f"model '{model}' not found, make sure the correct model ID was used "
                                   "and that you have access to the model.")
        query = _required(body, "query", str)
        documents = body.get("documents")
        if not isinstance(documents, list) or not documents:
            raise CohereError(400, "invalid request: documents cannot be empty")
        if len(documents) > RERANK_MAX_DOCUMENTS:
            raise CohereError(400, f"invalid request: documents must contain at most {RERANK_MAX_DOCUMENTS} items")
        if not all(isinstance(d, str) for d in documents):
            raise CohereError(400, "invalid request: documents must be strings")
        top_n = body.get("top_n")
        if top_n is not None and not (isinstance(top_n, int) and top_n > 0):
            raise CohereError(400, "invalid request: top_n must be a positive integer")
        query_words = set(re.findall(r"\w+", query.lower()))
        scored = []
        for index, document in enumerate(documents):
            words = set(re.findall(r"\w+", document.lower()))
            score = len(query_words & words) / len(query_words) if query_words else 0.0
            scored.append({"index": index, "relevance_score": round(score, 6)})
        scored.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        return self._json(record, {
            "id": str(uuid.uuid4()),
            "results": scored[:top_n] if top_n else scored,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
        })

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _json(record: Recorded, payload: dict) -> Response:
        record.status = 200
        record.response = payload
        return Response(json.dumps(payload), status=200, content_type="application/json")


def _required(body: dict, name: str, kind: type) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise CohereError(400, f"invalid request: {name} is required")
    return value


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(item.get("text", "") for item in content if isinstance(item, dict))
    raise CohereError(400, "invalid request: message content must be a string or a list of content items")


def _default_message(status: int) -> str:
    return {
        400: "invalid request",
        401: "invalid api token",
        403: "forbidden",
        422: "unprocessable entity",
        429: "You are using a Trial key, which is limited to 40 API calls / minute.",
        500: "internal server error",
        502: "bad gateway",
        503: "service unavailable",
        504: "gateway timeout",
    }.get(status, f"error {status}")
