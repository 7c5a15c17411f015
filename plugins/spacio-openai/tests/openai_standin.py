"""A local stand-in for OpenAI's HTTP API (and the OpenAI-compatible servers that copy it),
so the real ``openai`` SDK can be tested without a network: ``POST /v1/chat/completions``
(JSON, and SSE streaming), ``POST /v1/embeddings`` (``float`` and ``base64`` vectors: the
SDK asks for base64 unless told otherwise) and ``GET /v1/models``.

It replays the shapes of OpenAI's responses (``ChatCompletionChunk`` with a role-only first
chunk, content deltas, a finish chunk with an empty delta, then, with
``stream_options.include_usage``, a usage chunk whose ``choices`` is empty and
``usage: null`` on every other chunk, then ``data: [DONE]``; ``CreateEmbeddingResponse``;
error bodies ``{"error": {"message", "type", "param", "code"}}``), validates requests the
way the API does (bearer key, model ids, at most 2048 inputs, no empty input, at most 8192
tokens an input and 300,000 a request, ``dimensions`` only for text-embedding-3), records
every request and fails on demand:

- an error status with OpenAI's body (429 with ``retry-after``, 500, 401 for a bad key,
  404 for an unknown model; the 401 quotes the key masked, as OpenAI does);
- a stall before the response (``stall``), a pause before the k-th event, a delay between
  events, keep-alive comments trickled before the first chunk;
- a stream cut off (connection dropped), a malformed SSE line, a body that stops in the
  middle of a line, chunks with an empty ``choices`` list and no content, no usage chunk,
  an in-band ``{"error": ...}`` event;
- servers that differ from OpenAI: no ``stream_options`` (Mistral answers 422), a reasoning
  model that refuses ``max_tokens`` and a non-default ``temperature``, no key at all (local
  servers), vectors of the wrong length, no ``usage`` in embeddings, ``float`` vectors
  whatever was asked, a 422 for ``encoding_format=base64``.

Answers are deterministic: chat replies ``chat_reply`` or echoes the last user message, one
delta per word; embeddings are a signed hashed bag of words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API_KEY = "sk-standin-0123456789abcdef"

#: embedding model -> (default dimensions, takes ``dimensions``)
EMBED_MODELS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
CHAT_MODELS = {"gpt-4.1-mini", "gpt-4.1", "gpt-4o-mini", "o4-mini", "gpt-5-mini", "llama3.1"}
#: models that take only max_completion_tokens and only the default temperature
REASONING_MODELS = {"o4-mini", "gpt-5-mini"}
EMBED_MAX_INPUTS = 2048
EMBED_MAX_TOKENS = 8192
EMBED_MAX_REQUEST_TOKENS = 300_000
ROLES = {"system", "developer", "user", "assistant", "tool"}

_BPE_PIECE = re.compile(r"[^\W\d_]+|\d{1,3}|[^\w\s]|_")


def count_tokens(text: str) -> int:
    """The stand-in's token count, roughly what a 100k-vocabulary BPE counts: a word costs
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


def masked(key: str) -> str:
    """A key as OpenAI's 401 message quotes it: the start and the last 4 characters."""
    return key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 8 else "*" * len(key)


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: tests read :attr:`OpenAIStandIn.requests` instead."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class Recorded:
    """One request as the stand-in saw it, and what it answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int = 0
    response: Any = None
    #: streamed chats only: SSE events written, and how the stream ended: "complete",
    #: "cut" (connection dropped), "broken" (ended by a fault), "client_closed"
    sent_events: int = 0
    stream_end: str | None = None


@dataclass
class Failure:
    status: int
    retry_after: str | None = None
    message: str | None = None
    code: str | None = None
    type: str | None = None
    path: str | None = None  # None: any path
    raw_body: str | None = None  # answer this text as is, instead of an error JSON
    content_type: str = "text/html"
    after: int = 0  # let this many matching requests through first


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None,
                 body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body if body is not None else {
            "error": {"message": message, "type": type, "param": param, "code": code}}
        self.headers = headers or {}


@dataclass
class OpenAIStandIn:
    """Start with :meth:`start` (or use as a context manager); point the SDK at
    :attr:`base_url` (the URL with ``/v1``)."""

    api_key: str | None = API_KEY  # None: a server that needs no key (Ollama, vLLM...)
    requests: list[Recorded] = field(default_factory=list)
    chat_reply: str | None = None
    #: seconds each of the next requests sleeps before answering (to time a client out)
    stalls: deque = field(default_factory=deque)
    stream_delay: float = 0.0  # seconds between streamed events
    #: ``(k, seconds)``: sleep before the k-th event (0 is the role chunk, 1 the first delta)
    stream_pause: tuple[int, float] | None = None
    #: ``(interval, seconds)``: keep-alive comments every ``interval`` for ``seconds`` before the first chunk
    keepalive: tuple[float, float] | None = None
    #: the connection is dropped (no terminating chunk) once this many events went out
    cut_stream_after: int | None = None
    #: this event is replaced by a ``data:`` line that is not JSON (the stream goes on)
    malformed_event: int | None = None
    #: the body ends cleanly in the middle of this event's line
    stop_mid_line_at: int | None = None
    #: after this many deltas, an in-band error event ``data: {"error": ...}`` ends the stream
    error_after: int | None = None
    #: every chunk has ``choices: []`` and no finish reason (then [DONE])
    empty_choices: bool = False
    #: None: a usage chunk when the request asks for it; False: never (older Ollama,
    #: llama.cpp); "finish": in the finish chunk whatever was asked (some servers)
    send_usage: bool | str | None = None
    #: 422 for a request with ``stream_options``, as Mistral answers
    reject_stream_options: bool = False
    #: the finish reason of streamed and JSON answers
    finish_reason: str = "stop"
    #: embeddings: vectors of this many dimensions whatever the request says
    wrong_dimensions: int | None = None
    embed_usage: bool = True
    #: ignore ``encoding_format`` and always send lists of floats (some compatible servers)
    floats_only: bool = False
    #: refuse ``encoding_format`` other than float with 422 (a server with a strict schema)
    reject_base64: bool = False
    embed_models: dict = field(default_factory=lambda: dict(EMBED_MODELS))

    def __post_init__(self) -> None:
        self._failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reset(): a request stalled across it is dropped
        self._server = None
        self._defaults = {name: getattr(self, name) for name in (
            "chat_reply", "stream_delay", "stream_pause", "keepalive", "cut_stream_after", "malformed_event",
            "stop_mid_line_at", "error_after", "empty_choices", "send_usage", "reject_stream_options",
            "finish_reason", "wrong_dimensions", "embed_usage", "floats_only", "reject_base64", "api_key")}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "OpenAIStandIn":
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        threading.Thread(target=self._server.serve_forever, name="openai-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "OpenAIStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    # ------------------------------------------------------------------ test controls

    def fail(self, status: int, times: int = 1, *, retry_after: float | str | None = None,
             message: str | None = None, code: str | None = None, type: str | None = None,
             path: str | None = None, raw_body: str | None = None, content_type: str = "text/html",
             after: int = 0) -> None:
        """Answer ``times`` requests (to ``path``, e.g. "/v1/embeddings") with ``status``
        once ``after`` of them went through: OpenAI's error body, or ``raw_body`` as is."""
        with self._lock:
            for n in range(times):
                self._failures.append(Failure(status, None if retry_after is None else str(retry_after), message,
                                              code, type, path, raw_body, content_type, after if n == 0 else 0))

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
        for name, value in self._defaults.items():
            setattr(self, name, value)
        self.embed_models = dict(EMBED_MODELS)

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
                # its test is over (the client gave up long ago): do not touch the next test's state
                return Response("", status=503)(environ, start_response)
        try:
            response = self._dispatch(request, body, record)
        except OpenAIError as error:
            record.status, record.response = error.status, error.body
            response = Response(json.dumps(error.body), status=error.status, headers=error.headers,
                                content_type="application/json")
        return response(environ, start_response)

    def _dispatch(self, request: Request, body: Any, record: Recorded) -> Response:
        routes = {("POST", "/v1/chat/completions"): self._chat, ("POST", "/v1/embeddings"): self._embeddings,
                  ("GET", "/v1/models"): self._models}
        handler = routes.get((request.method, request.path))
        if handler is None:
            raise OpenAIError(404, f"Invalid URL ({request.method} {request.path})")
        if self.api_key is not None:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                raise OpenAIError(401, "You didn't provide an API key. You need to provide your API key in an "
                                       "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
            key = auth[len("Bearer "):]
            if key != self.api_key:
                raise OpenAIError(401, f"Incorrect API key provided: {masked(key)}. You can find your API key at "
                                       "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
        failure = self._next_failure(request.path)
        if failure is not None and failure.raw_body is not None:
            record.status, record.response = failure.status, failure.raw_body
            return Response(failure.raw_body, status=failure.status, content_type=failure.content_type)
        if failure is not None:
            headers = {"retry-after": failure.retry_after} if failure.retry_after is not None else {}
            default_message, default_type, default_code = _DEFAULT_ERRORS.get(failure.status, (
                f"error {failure.status}", "server_error", None))
            raise OpenAIError(failure.status, failure.message or default_message, type=failure.type or default_type,
                              code=failure.code or default_code, headers=headers)
        if handler != self._models and not isinstance(body, dict):
            raise OpenAIError(400, "We could not parse the JSON body of your request.")
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

    # ------------------------------------------------------------------ /v1/models

    def _models(self, body: Any, record: Recorded) -> Response:
        models = sorted(CHAT_MODELS | set(self.embed_models))
        return self._json(record, {"object": "list", "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "system"} for m in models]})

    # ------------------------------------------------------------------ /v1/embeddings

    def _embeddings(self, body: dict, record: Recorded) -> Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "you must provide a model parameter", param="model")
        if model not in self.embed_models:
            raise OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                              code="model_not_found")
        dimensions, shortens = self.embed_models[model]
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise OpenAIError(400, "'$.input' is invalid. Please check the API reference: "
                                   "https://platform.openai.com/docs/api-reference.")
        if len(texts) > EMBED_MAX_INPUTS:
            raise OpenAIError(400, f"'$.input' is invalid: array too long, expected at most {EMBED_MAX_INPUTS} "
                                   f"items, got {len(texts)}", param="input")
        if any(t == "" for t in texts):
            raise OpenAIError(400, "'$.input' is invalid. Please check the API reference: "
                                   "https://platform.openai.com/docs/api-reference.")
        counts = [count_tokens(t) for t in texts]
        if max(counts) > EMBED_MAX_TOKENS:
            raise OpenAIError(400, f"This model's maximum context length is {EMBED_MAX_TOKENS} tokens, however you "
                                   f"requested {max(counts)} tokens ({max(counts)} in your prompt; 0 for the "
                                   "completion). Please reduce your prompt; or completion length.")
        if sum(counts) > EMBED_MAX_REQUEST_TOKENS:
            raise OpenAIError(400, f"Requested {sum(counts)} tokens, max {EMBED_MAX_REQUEST_TOKENS} tokens per "
                                   "request", param="input", code="max_tokens_per_request")
        requested = body.get("dimensions")
        if requested is not None:
            if not shortens:
                raise OpenAIError(400, "This model does not support specifying dimensions.")
            if not (isinstance(requested, int) and 1 <= requested <= dimensions):
                raise OpenAIError(400, f"Invalid value for 'dimensions' = {requested}. Must be between 1 and "
                                       f"{dimensions}.", param="dimensions")
            dimensions = requested
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise OpenAIError(400, f"Invalid value for 'encoding_format': {encoding!r}", param="encoding_format")
        if self.reject_base64 and encoding != "float":
            raise OpenAIError(422, "", body={"object": "error", "message": {"detail": [
                {"type": "literal_error", "loc": ["body", "encoding_format"], "msg": "Input should be 'float'",
                 "input": encoding}]}, "type": "invalid_request_error", "param": None, "code": None})
        if self.floats_only:
            encoding = "float"
        if self.wrong_dimensions:
            dimensions = self.wrong_dimensions
        data = []
        for index, text in enumerate(texts):
            vector = hashed_bag_of_words(text, dimensions)
            if encoding == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if self.embed_usage:
            payload["usage"] = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return self._json(record, payload)

    # ------------------------------------------------------------------ /v1/chat/completions

    def _chat(self, body: dict, record: Recorded) -> Response:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "you must provide a model parameter", param="model")
        if model not in CHAT_MODELS:
            raise OpenAIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                              code="model_not_found")
        if self.reject_stream_options and "stream_options" in body:
            raise OpenAIError(422, "", body={"object": "error", "message": {"detail": [
                {"type": "extra_forbidden", "loc": ["body", "stream_options", "include_usage"],
                 "msg": "Extra inputs are not permitted", "input": True}]},
                "type": "invalid_request_error", "param": None, "code": None})
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OpenAIError(400, "Invalid 'messages': empty array. Expected an array with minimum length 1.",
                              param="messages", code="empty_array")
        prompt_tokens, last_user = 0, ""
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise OpenAIError(400, f"Invalid value for 'messages[{i}].role'.", param=f"messages[{i}].role")
            content = message.get("content")
            if not isinstance(content, str):
                raise OpenAIError(400, f"Invalid type for 'messages[{i}].content'.", param=f"messages[{i}].content")
            prompt_tokens += count_tokens(content) + 4
            if message["role"] == "user":
                last_user = content
        stream = body.get("stream", False)
        if "stream_options" in body and not stream:
            raise OpenAIError(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                              param="stream_options")
        temperature = body.get("temperature")
        if temperature is not None:
            if not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
                raise OpenAIError(400, f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                                       f"but got {temperature} instead.", param="temperature",
                                  code="decimal_above_max_value")
            if model in REASONING_MODELS and temperature != 1:
                raise OpenAIError(400, f"Unsupported value: 'temperature' does not support {temperature} with this "
                                       "model. Only the default (1) value is supported.", param="temperature",
                                  code="unsupported_value")
        if "max_tokens" in body and model in REASONING_MODELS:
            raise OpenAIError(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                                   "'max_completion_tokens' instead.", param="max_tokens",
                              code="unsupported_parameter")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and not (isinstance(limit, int) and limit > 0):
            raise OpenAIError(400, f"Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, "
                                   f"but got {limit} instead.", param="max_tokens")

        reply = self.chat_reply if self.chat_reply is not None else f"You said: {last_user}"
        pieces = re.findall(r"\S+\s*|\s+", reply)
        finish_reason = self.finish_reason
        if limit is not None and len(pieces) > limit:
            pieces, finish_reason = pieces[:limit], "length"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": prompt_tokens + len(pieces),
                 "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                 "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                               "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        base = {"id": completion_id, "created": int(time.time()), "model": model,
                "service_tier": "default", "system_fingerprint": "fp_standin"}
        if not stream:
            return self._json(record, {
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces),
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": finish_reason}],
                "usage": usage})

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        send_usage = include_usage if self.send_usage is None else self.send_usage

        def chunk(delta: dict | None, finish: str | None = None, **extra: Any) -> dict:
            out = {**base, "object": "chat.completion.chunk",
                   "choices": [] if delta is None or self.empty_choices else
                   [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                out["usage"] = None
            out.update(extra)
            return out

        events: list[Any] = [chunk({"role": "assistant", "content": "", "refusal": None})]
        for n, piece in enumerate(pieces):
            if self.error_after is not None and n == self.error_after:
                events.append({"error": {"message": "The server had an error while processing your request. "
                                                    "Sorry about that!", "type": "server_error", "param": None,
                                         "code": None}})
                break
            events.append(chunk({"content": piece}))
        else:
            if send_usage == "finish":
                events.append(chunk({}, finish_reason, usage=usage))
            else:
                events.append(chunk({}, finish_reason))
                if send_usage:
                    events.append({**chunk(None), "usage": usage})
            events.append("[DONE]")
        record.status, record.response = 200, events
        return Response(self._sse(events, record), status=200, content_type="text/event-stream; charset=utf-8",
                        headers={"Cache-Control": "no-cache"}, direct_passthrough=True)

    def _sse(self, events: list[Any], record: Recorded) -> Iterator[bytes]:
        cut, pause, delay = self.cut_stream_after, self.stream_pause, self.stream_delay
        malformed, mid_line, keepalive = self.malformed_event, self.stop_mid_line_at, self.keepalive
        try:
            if keepalive is not None:
                interval, seconds = keepalive
                until = time.monotonic() + seconds
                while time.monotonic() < until:
                    yield b": keep-alive\n\n"
                    time.sleep(interval)
            for n, event in enumerate(events):
                if cut is not None and n >= cut:
                    # a dropped connection: end the chunked body without its terminating chunk
                    record.stream_end = "cut"
                    raise ConnectionAbortedError("stand-in cut the stream")
                if delay:
                    time.sleep(delay)
                if pause is not None and n == pause[0]:
                    time.sleep(pause[1])
                line = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
                if malformed is not None and n == malformed:
                    line = 'data: {"id": "chatcmpl-broken", "choices": [{"delta": {"content": "tru\n\n'
                if mid_line is not None and n == mid_line:
                    yield line[:len(line) // 2].encode()
                    record.stream_end = "broken"
                    return
                yield line.encode()
                record.sent_events += 1
            record.stream_end = "complete"
        except GeneratorExit:
            # the server closes the body when a write fails: the client hung up
            record.stream_end = "client_closed"
            raise

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _json(record: Recorded, payload: dict) -> Response:
        record.status, record.response = 200, payload
        return Response(json.dumps(payload), status=200, content_type="application/json")


_DEFAULT_ERRORS = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.", "invalid_request_error", "model_not_found"),
    422: ("Unprocessable request.", "invalid_request_error", None),
    429: ("Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.",
          "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later", "server_error", None),
}
