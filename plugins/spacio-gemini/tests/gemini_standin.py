"""A local stand-in for the Gemini Developer API (``v1beta``), so the real ``google-genai``
SDK can be tested without a network: ``models/{model}:streamGenerateContent?alt=sse``,
``:generateContent``, ``:batchEmbedContents`` and ``:embedContent``.

It speaks the wire format the SDK parses (``GenerateContentResponse`` chunks as SSE
``data:`` events separated by CRLF CRLF, ``BatchEmbedContentsResponse``) and Google's error
body (``{"error": {"code", "message", "status", "details"}}`` with ``google.rpc`` details:
``ErrorInfo`` ``API_KEY_INVALID`` for a bad key, ``RetryInfo`` ``retryDelay`` on a 429).
It validates requests the way the API does (the ``x-goog-api-key`` header or ``?key=``,
known model ids, at most 100 embed requests a batch, each naming the URL's model, no empty
part, ``outputDimensionality`` within the model's range, roles ``user``/``model``,
temperature 0-2), records every request and can fail on demand:

- an error status before the response (429 with a retry delay, 500, 503, 400, 404, a
  raw non-JSON body), a stall before the response headers;
- inside a 200 stream: a pause before the k-th chunk (k=0: after the headers, before any
  chunk), a connection dropped after k chunks, malformed SSE, a stream that stops in the
  middle of a ``data:`` line, a chunk without candidates, an ``{"error": ...}`` event, an
  in-band finish reason (``SAFETY``, ``RECITATION``, ...), a blocked prompt
  (``promptFeedback.blockReason``), a stream without any finish reason.

Answers are deterministic and meaningful enough to assert on:

- the answer is ``reply`` when set, otherwise "You said: " and the last user text, one word
  per chunk; each chunk carries ``usageMetadata`` with the running counts, and the last one
  an empty text part, ``finishReason`` and the final counts (as Gemini streams do); on
  demand a first chunk whose content has only a role, or a thought-summary part;
- embeddings are a signed hashed bag of words, unit length at the model's full size; cut
  by ``outputDimensionality`` they are shorter than unit length (Gemini normalises only
  full-size vectors). A small component for the task type makes documents and queries
  differ a little.
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
API_VERSION = "v1beta"

#: embedding model -> (full dimensions, smallest outputDimensionality)
EMBED_MODELS: dict[str, tuple[int, int]] = {
    "gemini-embedding-001": (3072, 128),
    "text-embedding-004": (768, 1),
}
CHAT_MODELS = {"gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-lite", "gemini-2.0-flash"}
EMBED_MAX_REQUESTS = 100
TASK_TYPES = {"RETRIEVAL_DOCUMENT", "RETRIEVAL_QUERY", "SEMANTIC_SIMILARITY", "CLASSIFICATION", "CLUSTERING",
              "QUESTION_ANSWERING", "FACT_VERIFICATION", "CODE_RETRIEVAL_QUERY", "TASK_TYPE_UNSPECIFIED"}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "NOT_IMPLEMENTED",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
SAFETY_CATEGORIES = ("HARM_CATEGORY_HATE_SPEECH", "HARM_CATEGORY_DANGEROUS_CONTENT", "HARM_CATEGORY_HARASSMENT",
                     "HARM_CATEGORY_SEXUALLY_EXPLICIT")

_PATH = re.compile(r"^/(?P<version>[^/]+)/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)$")
_BPE_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_")


def count_tokens(text: str) -> int:
    """The stand-in's token count, roughly Gemini's: a word costs a token per started 8
    UTF-8 bytes, every digit and symbol one."""
    return sum(-(-len(p.encode()) // 8) if p[0].isalpha() else 1 for p in _BPE_PIECE.findall(text))


def hashed_bag_of_words(text: str, dimensions: int, extra: str = "") -> list[float]:
    """A unit vector from lower-cased words hashed into ``dimensions`` signed buckets, plus
    ``extra`` (the task type) as a fifth of a word."""
    vector = [0.0] * dimensions
    words = [(w, 1.0) for w in re.findall(r"\w+", text.lower())] or [("", 1.0)]
    if extra:
        words.append((f"\x00{extra}", 0.2))
    for word, weight in words:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % dimensions
        vector[index] += weight if digest[4] & 1 else -weight
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: tests read :attr:`GeminiStandIn.requests` instead."""

    def log_request(self, *args: object, **kwargs: object) -> None:
        pass


@dataclass
class Recorded:
    """One request as the stand-in saw it, and how it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    model: str | None = None
    method_name: str | None = None  # streamGenerateContent, batchEmbedContents, ...
    status: int = 0
    response: Any = None  # the JSON answered; for a stream, the list of chunks it meant to send
    #: streams only: chunks written to the socket, and how the stream ended: "complete",
    #: "cut" (the stand-in dropped it), "client_closed" (the client went away)
    sent_chunks: int = 0
    stream_end: str | None = None


@dataclass
class Failure:
    status: int
    message: str | None = None
    kind: str | None = None  # "stream", "generate", "embed", or None: any request
    retry_delay: str | None = None  # RetryInfo.retryDelay on a 429 ("2s")
    retry_after: str | None = None  # a Retry-After header
    raw_body: str | None = None  # answer this text as is (text/html), instead of Google's error JSON
    after: int = 0  # let this many matching requests through first


class GeminiError(Exception):
    def __init__(self, status: int, message: str, details: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict:
        error: dict[str, Any] = {"code": self.status, "message": self.message,
                                 "status": STATUS_NAMES.get(self.status, "UNKNOWN")}
        if self.details:
            error["details"] = self.details
        return {"error": error}


_KINDS = {"streamGenerateContent": "stream", "generateContent": "generate", "batchEmbedContents": "embed",
          "embedContent": "embed"}


@dataclass
class GeminiStandIn:
    """Start with :meth:`start` (or use as a context manager); point the SDK at :attr:`url`
    (``HttpOptions(base_url=url)``)."""

    api_key: str = API_KEY
    requests: list[Recorded] = field(default_factory=list)
    reply: str | None = None
    #: seconds each of the next requests sleeps before answering (to trigger client timeouts)
    stalls: deque = field(default_factory=deque)
    stream_delay: float = 0.0  # seconds before each chunk
    #: ``(k, seconds)``: sleep before the k-th chunk (0-based; 0: after the headers, before any chunk)
    stream_pause: tuple[int, float] | None = None
    #: drop the connection (no end of the chunked body) after this many chunks
    cut_after: int | None = None
    #: after this many chunks, send a ``data:`` line that is not JSON, then end
    malformed_after: int | None = None
    #: after this many chunks, send the start of a ``data:`` line and end the body there
    stop_mid_line_after: int | None = None
    #: after this many chunks, send a chunk with neither candidates, feedback nor usage
    empty_chunk_after: int | None = None
    #: ``(k, status)``: after k chunks, send ``{"error": ...}`` with that status, then end
    error_after: tuple[int, int] | None = None
    #: ``(k, reason)``: after k text chunks, end with a chunk whose finishReason is ``reason``
    finish_after: tuple[int, str] | None = None
    #: answer every stream with just ``promptFeedback.blockReason`` = this
    block_prompt: str | None = None
    #: end the stream after the text chunks, without the finish chunk
    no_finish: bool = False
    #: first chunk: a thought-summary part (as with ``includeThoughts``)
    thought_part: bool = False
    #: first chunk: a candidate whose content has a role and no parts
    role_only_first: bool = False
    #: thinking tokens reported in ``thoughtsTokenCount`` (0: left out)
    thoughts_tokens: int = 0
    #: replaces every chunk's ``usageMetadata`` (``{}``: none at all)
    usage: dict | None = None
    #: served models; tests may add their own
    chat_models: set = field(default_factory=lambda: set(CHAT_MODELS))
    embed_models: dict = field(default_factory=lambda: dict(EMBED_MODELS))

    def __post_init__(self) -> None:
        self._failures: deque[Failure] = deque()
        self._lock = threading.Lock()
        self._generation = 0  # bumped by reset(): a request stalled across it is dropped
        self._server = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "GeminiStandIn":
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="gemini-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "GeminiStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "call start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ test controls

    def fail(self, status: int, times: int = 1, *, message: str | None = None, kind: str | None = None,
             retry_delay: str | None = None, retry_after: str | None = None, raw_body: str | None = None,
             after: int = 0) -> None:
        """Answer ``times`` requests (of ``kind``: "stream", "generate", "embed"; None: any)
        with ``status`` once ``after`` of them went through: Google's error body with
        ``message`` (a 429 carries ``RetryInfo`` when ``retry_delay`` is set, e.g. "2s"), or
        ``raw_body`` as text/html (a broken proxy)."""
        with self._lock:
            for n in range(times):
                self._failures.append(Failure(status, message, kind, retry_delay, retry_after, raw_body,
                                              after if n == 0 else 0))

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
        self.reply = None
        self.stream_delay = 0.0
        self.stream_pause = None
        self.cut_after = self.malformed_after = self.stop_mid_line_after = self.empty_chunk_after = None
        self.error_after = self.finish_after = None
        self.block_prompt = None
        self.no_finish = self.thought_part = self.role_only_first = False
        self.thoughts_tokens = 0
        self.usage = None
        self.chat_models = set(CHAT_MODELS)
        self.embed_models = dict(EMBED_MODELS)

    def calls(self, kind: str) -> list[Recorded]:
        """Recorded requests of one kind: "stream", "generate", "embed"."""
        return [r for r in self.requests if _KINDS.get(r.method_name or "") == kind]

    # ------------------------------------------------------------------ WSGI

    def _wsgi(self, environ, start_response):
        request = Request(environ)
        raw = request.get_data()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = Recorded(request.method, request.path, dict(request.args),
                          {k.lower(): v for k, v in request.headers.items()}, body)
        match = _PATH.match(request.path)
        if match:
            record.model, record.method_name = match.group("model"), match.group("method")
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
            response = self._dispatch(request, match, body, record)
        except GeminiError as error:
            record.status = error.status
            record.response = error.body()
            response = Response(json.dumps(record.response, indent=2), status=error.status, headers=error.headers,
                                content_type="application/json; charset=UTF-8")
        return response(environ, start_response)

    def _dispatch(self, request: Request, match, body: Any, record: Recorded) -> Response:
        if match is None or match.group("method") not in _KINDS:
            raise GeminiError(404, f"The requested URL {request.path} was not found on this server.")
        if match.group("version") != API_VERSION:
            raise GeminiError(404, f"The stand-in serves {API_VERSION} only, not {match.group('version')}.")
        if request.method != "POST":
            raise GeminiError(405, "Method not allowed")
        key = request.headers.get("x-goog-api-key") or request.args.get("key")
        if not key:
            raise GeminiError(403, "Method doesn't allow unregistered callers (callers without established "
                                   "identity). Please use API Key or other form of API consumer identity to call "
                                   "this API.")
        if key != self.api_key:
            raise GeminiError(400, "API key not valid. Please pass a valid API key.", details=[
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
                {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
                 "message": "API key not valid. Please pass a valid API key."}])
        method = match.group("method")
        failure = self._next_failure(_KINDS[method])
        if failure is not None:
            if failure.raw_body is not None:
                record.status = failure.status
                record.response = failure.raw_body
                return Response(failure.raw_body, status=failure.status, content_type="text/html")
            raise self._failure_error(failure, match.group("model"))
        if not isinstance(body, dict):
            raise GeminiError(400, "Invalid JSON payload received. The request body must be a JSON object.")
        model = match.group("model")
        if method in ("streamGenerateContent", "generateContent"):
            return self._generate(model, body, record, stream=method == "streamGenerateContent",
                                  sse=request.args.get("alt") == "sse")
        if method == "batchEmbedContents":
            return self._batch_embed(model, body, record)
        return self._embed_one(model, body, record)

    def _next_failure(self, kind: str) -> Failure | None:
        with self._lock:
            for failure in self._failures:
                if failure.kind in (None, kind):
                    if failure.after:
                        failure.after -= 1
                        return None
                    self._failures.remove(failure)
                    return failure
        return None

    @staticmethod
    def _failure_error(failure: Failure, model: str) -> GeminiError:
        details: list = []
        if failure.status == 429:
            details.append({"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": model}, "quotaValue": "10"}]})
            if failure.retry_delay is not None:
                details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": failure.retry_delay})
        headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
        return GeminiError(failure.status, failure.message or _default_message(failure.status, model), details,
                           headers)

    # ------------------------------------------------------------------ generateContent

    def _generate(self, model: str, body: dict, record: Recorded, *, stream: bool, sse: bool) -> Response:
        if model not in self.chat_models:
            method = "streamGenerateContent" if stream else "generateContent"
            raise GeminiError(404, f"models/{model} is not found for API version {API_VERSION}, or is not "
                                   f"supported for {method}. Call ListModels to see the list of available models "
                                   "and their supported methods.")
        if stream and not sse:
            raise GeminiError(400, "the stand-in streams only as server-sent events (alt=sse)")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise GeminiError(400, "* GenerateContentRequest.contents: contents is not specified")
        prompt_text = _text_of(body.get("systemInstruction"), "systemInstruction")
        last_user = ""
        for i, content in enumerate(contents):
            if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
                raise GeminiError(400, "Please use a valid role: user, model.")
            text = _text_of(content, f"contents[{i}]")
            prompt_text += text
            if content.get("role", "user") == "user":
                last_user = text
        config = body.get("generationConfig") or {}
        temperature = config.get("temperature")
        if temperature is not None and not (isinstance(temperature, (int, float)) and 0 <= temperature <= 2):
            raise GeminiError(400, "* GenerateContentRequest.generation_config.temperature: temperature must be "
                                   "between 0 and 2")
        max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens"))
        if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens > 0):
            raise GeminiError(400, "* GenerateContentRequest.generation_config.max_output_tokens: must be positive")
        thinking = config.get("thinkingConfig") or config.get("thinking_config") or {}
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
        if budget is not None and not (isinstance(budget, int) and budget >= -1):
            raise GeminiError(400, "* GenerateContentRequest.generation_config.thinking_config.thinking_budget: "
                                   "must be -1 or more")

        reply = self.reply if self.reply is not None else f"You said: {last_user}"
        words = re.findall(r"\S+\s*|\s+", reply)
        finish_reason = "STOP"
        if max_tokens is not None and len(words) > max_tokens:
            words, finish_reason = words[:max_tokens], "MAX_TOKENS"
        prompt_tokens = count_tokens(prompt_text)
        response_id = uuid.uuid4().hex[:22]
        thoughts = self.thoughts_tokens if budget != 0 else 0

        def usage(done: int) -> dict | None:
            if self.usage is not None:
                return self.usage or None
            counts = {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens + done + thoughts,
                      "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}]}
            if done:
                counts["candidatesTokenCount"] = done
            if thoughts:
                counts["thoughtsTokenCount"] = thoughts
            return counts

        def chunk(candidate: dict | None, done: int, **extra: Any) -> dict:
            out: dict[str, Any] = {}
            if candidate is not None:
                out["candidates"] = [{**candidate, "index": 0}]
            out.update(extra)
            counts = usage(done)
            if counts:
                out["usageMetadata"] = counts
            out["modelVersion"] = model
            out["responseId"] = response_id
            return out

        if self.block_prompt:
            ratings = [{"category": c, "probability": "HIGH" if c.endswith("DANGEROUS_CONTENT") else "NEGLIGIBLE"}
                       for c in SAFETY_CATEGORIES]
            chunks = [chunk(None, 0, promptFeedback={"blockReason": self.block_prompt, "safetyRatings": ratings})]
        else:
            chunks = []
            if self.role_only_first:
                chunks.append(chunk({"content": {"role": "model"}}, 0))
            if self.thought_part:
                chunks.append(chunk({"content": {"parts": [{"text": "**Thinking** about the passages.",
                                                            "thought": True}], "role": "model"}}, 0))
            stop_at = len(words)
            stopped = None
            if stream and self.finish_after is not None and self.finish_after[0] < len(words):
                stop_at, stopped = self.finish_after
            for n, word in enumerate(words[:stop_at]):
                chunks.append(chunk({"content": {"parts": [{"text": word}], "role": "model"}}, n + 1))
            if stopped is not None:
                ratings = [{"category": c, "probability": "HIGH" if c.endswith("DANGEROUS_CONTENT") else "NEGLIGIBLE",
                            **({"blocked": True} if c.endswith("DANGEROUS_CONTENT") else {})}
                           for c in SAFETY_CATEGORIES]
                chunks.append(chunk({"finishReason": stopped, "safetyRatings": ratings}, stop_at))
            elif not (stream and self.no_finish):
                chunks.append(chunk({"content": {"parts": [{"text": ""}], "role": "model"},
                                     "finishReason": finish_reason}, len(words)))
        record.response = chunks
        if not stream:
            merged = _merge(chunks)
            record.status = 200
            return Response(json.dumps(merged), status=200, content_type="application/json; charset=UTF-8")
        record.status = 200
        return Response(self._sse(chunks, record), status=200, content_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
                        direct_passthrough=True)

    def _sse(self, chunks: list[dict], record: Recorded) -> Iterator[bytes]:
        cut, pause, delay = self.cut_after, self.stream_pause, self.stream_delay
        malformed, mid_line, empty = self.malformed_after, self.stop_mid_line_after, self.empty_chunk_after
        error = self.error_after
        try:
            yield b""  # the status line and headers now (werkzeug sends them on the first write)
            for n, chunk in enumerate(chunks):
                if cut is not None and n >= cut:
                    # a dropped connection: end the chunked body without its terminating chunk
                    record.stream_end = "cut"
                    raise ConnectionAbortedError("stand-in cut the stream")
                if malformed is not None and n == malformed:
                    yield b'data: {"candidates": [{"content": oops, not json}\r\n\r\n'
                    record.stream_end = "malformed"
                    return
                if mid_line is not None and n == mid_line:
                    yield b'data: {"candidates": [{"content": {"parts": [{"te'
                    record.stream_end = "mid_line"
                    return
                if error is not None and n == error[0]:
                    body = GeminiError(error[1], _default_message(error[1], "")).body()
                    yield f"data: {json.dumps(body)}\r\n\r\n".encode()
                    record.stream_end = "error"
                    return
                if empty is not None and n == empty:
                    yield f"data: {json.dumps({'modelVersion': chunk['modelVersion']})}\r\n\r\n".encode()
                if delay:
                    time.sleep(delay)
                if pause is not None and n == pause[0]:
                    time.sleep(pause[1])
                yield f"data: {json.dumps(chunk)}\r\n\r\n".encode()
                record.sent_chunks += 1
            record.stream_end = "complete"
        except GeneratorExit:
            # the server closes the body when a write fails: the client hung up
            record.stream_end = "client_closed"
            raise

    # ------------------------------------------------------------------ embeddings

    def _embed_request(self, model: str, request: Any, where: str) -> list[float]:
        if not isinstance(request, dict):
            raise GeminiError(400, f"* {where}: must be an object")
        dimensions, smallest = self.embed_models[model]
        text = _text_of(request.get("content"), f"{where}.content", embed=True)
        task = request.get("taskType", request.get("task_type"))
        if task is not None and task not in TASK_TYPES:
            raise GeminiError(400, f'Invalid value at \'{where}.task_type\' (type.googleapis.com/'
                                   f'google.ai.generativelanguage.v1beta.TaskType), "{task}"')
        size = request.get("outputDimensionality", request.get("output_dimensionality"))
        if size is not None and not (isinstance(size, int) and smallest <= size <= dimensions):
            raise GeminiError(400, f"* {where}.output_dimensionality: must be between {smallest} and {dimensions} "
                                   f"for models/{model}")
        size = size or dimensions
        # a Matryoshka prefix: meaningful on its own, but shorter than unit length (Gemini
        # normalises only full-size vectors)
        scale = math.sqrt(size / dimensions)
        return [round(v * scale, 8) for v in hashed_bag_of_words(text, size, task or "")]

    def _check_embed_model(self, model: str) -> None:
        if model not in self.embed_models:
            raise GeminiError(404, f"models/{model} is not found for API version {API_VERSION}, or is not "
                                   "supported for embedContent. Call ListModels to see the list of available "
                                   "models and their supported methods.")

    def _batch_embed(self, model: str, body: dict, record: Recorded) -> Response:
        self._check_embed_model(model)
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            raise GeminiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(requests) > EMBED_MAX_REQUESTS:
            raise GeminiError(400, f"* BatchEmbedContentsRequest.requests: at most {EMBED_MAX_REQUESTS} requests "
                                   "can be in one batch")
        for i, request in enumerate(requests):
            named = request.get("model") if isinstance(request, dict) else None
            if named != f"models/{model}":
                raise GeminiError(400, f"Model mismatch: requests[{i}].model is {named!r}, the URL names "
                                       f"models/{model}")
        payload = {"embeddings": [{"values": self._embed_request(model, r, f"requests[{i}]")}
                                  for i, r in enumerate(requests)]}
        return self._json(record, payload)

    def _embed_one(self, model: str, body: dict, record: Recorded) -> Response:
        self._check_embed_model(model)
        return self._json(record, {"embedding": {"values": self._embed_request(model, body, "request")}})

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _json(record: Recorded, payload: dict) -> Response:
        record.status = 200
        record.response = payload
        return Response(json.dumps(payload), status=200, content_type="application/json; charset=UTF-8")


def _text_of(content: Any, where: str, embed: bool = False) -> str:
    """The text of a ``Content``; Gemini refuses a content without parts or an empty part."""
    if content is None:
        return ""
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise GeminiError(400, f"* {where}.parts: contents.parts must not be empty.")
    texts = []
    for part in parts:
        text = part.get("text") if isinstance(part, dict) else None
        if not isinstance(text, str) or not text:
            if embed:
                raise GeminiError(400, "EmbedContentRequest.content contains an empty Part.")
            raise GeminiError(400, "Unable to submit request because it has an empty text parameter. Add a value "
                                   "to the parameter and try again.")
        texts.append(text)
    return "\n".join(texts)


def _merge(chunks: list[dict]) -> dict:
    """The non-streamed answer: the chunks' texts in one candidate, the last usage."""
    last = dict(chunks[-1])
    if "candidates" in last:
        text = "".join(p.get("text", "") for c in chunks for cand in c.get("candidates", [])
                       for p in (cand.get("content") or {}).get("parts", []) if not p.get("thought"))
        candidate = dict(last["candidates"][0])
        candidate["content"] = {"parts": [{"text": text}], "role": "model"}
        last["candidates"] = [candidate]
    return last


def _default_message(status: int, model: str) -> str:
    return {
        400: "Request contains an invalid argument.",
        401: "Request had invalid authentication credentials.",
        403: "The caller does not have permission",
        404: "Requested entity was not found.",
        429: "You exceeded your current quota, please check your plan and billing details.",
        500: "An internal error has occurred. Please retry or report in the troubleshooting guide.",
        503: "The model is overloaded. Please try again later.",
        504: "The request timed out. Please try again.",
    }.get(status, f"error {status}")
