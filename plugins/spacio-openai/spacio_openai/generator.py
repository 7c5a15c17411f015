"""``OpenAIGenerator``: streamed chat completions (``client.chat.completions.create(
stream=True)``) of the official ``openai`` SDK, against OpenAI or any OpenAI-compatible
server. The messages are Spacio's own (``spacio.rag.prompts``): the citation rules in the
system message, the passages fenced off as data in the user message."""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator

import httpx2
import openai
from marshmallow import fields, validate

from spacio.rag import prompts
from spacio.rag.contracts import InvalidInput, Prompt, UpstreamUnavailable, Usage

from ._calls import Caller, OpenAIOptions, get, is_openai, mentions

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4.1-mini"
#: the longest Retry-After slept through before the first token; a person is waiting
INTERACTIVE_MAX_SLEEP = 10.0
TOKEN_LIMIT_PARAMETERS = ("max_tokens", "max_completion_tokens")


class OpenAIGeneratorOptions(OpenAIOptions):
    """``model`` is any chat model the server serves. ``temperature`` applies when the
    space sets none. ``max_tokens`` caps answers whose prompt sets no limit. Time limits:
    ``connect_timeout`` to connect, ``first_token_timeout`` from the request to the first
    piece of the answer (retries included), ``total_timeout`` for the whole answer, and
    ``timeout`` for any wait on the server (no byte for that long is a failure)."""

    model = fields.String(load_default=DEFAULT_MODEL, validate=validate.Length(min=1))
    temperature = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0, max=2))
    max_tokens = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    max_tokens_parameter = fields.String(load_default=None, allow_none=True,
                                         validate=validate.OneOf(TOKEN_LIMIT_PARAMETERS))
    stream_usage = fields.Boolean(load_default=True)
    reasoning_effort = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1))
    first_token_timeout = fields.Float(load_default=60.0, validate=validate.Range(min=0, min_inclusive=False))
    total_timeout = fields.Float(load_default=300.0, validate=validate.Range(min=0, min_inclusive=False))
    max_retries = fields.Integer(load_default=2, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=0.5, validate=validate.Range(min=0))


class _DeadlinePassed(Exception):
    """Raised from inside the response body: a time limit passed while bytes kept coming."""


@dataclass
class _Clock:
    """One stream's time limits (``time.monotonic()`` values). Before the first piece the
    first-token deadline applies, after it the whole answer's."""

    first_token: float
    total: float
    answering: bool = False

    def deadline(self) -> float:
        return self.total if self.answering else min(self.first_token, self.total)

    def left(self) -> float:
        return self.deadline() - time.monotonic()


class _WatchedBody(httpx2.SyncByteStream):
    """A response body that checks the stream's deadline whenever bytes arrive, so a
    server that trickles keep-alive comments or empty chunks cannot hold a stream past its
    time limits (a silent one is caught by the read timeout)."""

    def __init__(self, inner: httpx2.SyncByteStream, clock: _Clock):
        self._inner = inner
        self._clock = clock

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if self._clock.left() <= 0:
                raise _DeadlinePassed()
            yield chunk

    def close(self) -> None:
        self._inner.close()


class OpenAIGenerator:
    """Streams each ``delta.content`` as it arrives, then one ``Usage``: the server's
    counts from the stream's usage chunk (asked for with ``stream_options``), else
    ``spacio.rag.prompts``' estimate with ``estimated=True`` (servers that send none).

    Errors: 429, 5xx, timeouts, dropped connections and broken streams before the first
    piece are retried with backoff within ``first_token_timeout``, then raise
    ``UpstreamUnavailable``; a bad key or an unknown model raises ``PluginError``
    (``upstream_error``). Once a piece was yielded nothing is retried (text cannot be taken
    back): a stream that breaks off, stalls, or turns malformed raises
    ``UpstreamUnavailable`` after the pieces already yielded. Closing the iterator closes
    the HTTP stream. No I/O before the first ``next()``."""

    options_schema = OpenAIGeneratorOptions

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        self.temperature: float | None = opts["temperature"]
        self.max_tokens: int | None = opts["max_tokens"]
        self.first_token_timeout: float = opts["first_token_timeout"]
        self.total_timeout: float = opts["total_timeout"]
        self.reasoning_effort: str | None = opts["reasoning_effort"]
        # OpenAI deprecated max_tokens (its reasoning models refuse it); most other servers
        # know only max_tokens
        parameter = opts["max_tokens_parameter"] or (
            "max_completion_tokens" if is_openai(opts["base_url"]) else "max_tokens")
        # What this server turned out to refuse (see _adapt): learned once per instance, so
        # not per-stream state; a lost update between two streams only costs a retry.
        self._quirks = {"stream_options": not opts["stream_usage"], "temperature": False,
                        "max_tokens_parameter": parameter}
        self._quirks_lock = threading.Lock()
        self._caller = Caller(label=f"openai generator (model {self.model})", api_key=opts["api_key"],
                              base_url=opts["base_url"], timeout=opts["timeout"],
                              connect_timeout=opts["connect_timeout"], max_retries=opts["max_retries"],
                              backoff=opts["backoff"], max_sleep=INTERACTIVE_MAX_SLEEP)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIGenerator(model={self.model!r})"

    def close(self) -> None:
        self._caller.close()

    def request(self, prompt: Prompt) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for ``prompt``."""
        if not prompt.question.strip():
            raise InvalidInput("the question is empty", reason="empty_question")
        request: dict[str, Any] = {"model": self.model, "messages": prompts.messages(prompt), "stream": True}
        if not self._quirks["stream_options"]:
            request["stream_options"] = {"include_usage": True}
        temperature = prompt.temperature if prompt.temperature is not None else self.temperature
        if temperature is not None and not self._quirks["temperature"]:
            request["temperature"] = temperature
        max_tokens = prompt.max_tokens or self.max_tokens
        if max_tokens is not None:
            request[self._quirks["max_tokens_parameter"]] = max_tokens
        if self.reasoning_effort is not None:
            request["reasoning_effort"] = self.reasoning_effort
        return request

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]:
        request = self.request(prompt)
        now = time.monotonic()
        clock = _Clock(first_token=now + self.first_token_timeout, total=now + self.total_timeout)
        # Everything up to the first piece of text may be retried: nothing was shown yet.
        chunks, head = self._caller.call("chat", lambda client: self._open(client, request, clock),
                                         deadline=clock.first_token)
        clock.answering = True
        pieces: list[str] = []
        reply = _Reply()
        try:
            for chunk in itertools.chain(head, chunks):
                text = reply.read(chunk)
                if text:
                    pieces.append(text)
                    yield text
        except (openai.APIError, _DeadlinePassed, ValueError) as exc:
            if reply.finish_reason is None:
                raise self._broken(exc, len(pieces)) from exc
            # the answer was complete; only the usage chunk or [DONE] got lost
            log.info("%s: the stream broke after the answer was complete (%s)", self._caller.label,
                     type(exc).__name__)
        finally:
            chunks.close()  # on GeneratorExit too: closes the HTTP response
        if reply.finish_reason is None:
            raise UpstreamUnavailable(f"{self._caller.label}: the chat stream ended after {len(pieces)} pieces "
                                      "without a finish_reason", reason="upstream_interrupted")
        if reply.finish_reason == "content_filter":
            log.info("%s: the answer was cut by the server's content filter", self._caller.label)
        elif reply.finish_reason == "length" and not pieces:
            log.warning("%s: the answer is empty: the token limit was spent before any text (a reasoning "
                        "model counts its reasoning in it; raise SPACIO_ANSWER_MAX_TOKENS or lower "
                        "reasoning_effort)", self._caller.label)
        yield reply.usage or self._estimate(prompt, pieces)

    def _open(self, client: openai.OpenAI, request: dict[str, Any], clock: _Clock) -> tuple[Any, list[Any]]:
        """Send the request and read chunks up to the first piece of text (or the end): the
        open stream and the chunks read. Failing here is still worth a retry."""
        adapted: set[str] = set()
        while True:
            left = clock.left()
            if left <= 0:
                raise UpstreamUnavailable(f"{self._caller.label}: no answer within first_token_timeout",
                                          reason="upstream_timeout")
            try:
                # no wait on the server may outlast what is left of the first-token limit
                chunks = client.chat.completions.create(**request, timeout=self._caller.timeouts(
                    read=min(self._caller.timeout, left)))
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if not self._adapt(request, exc, adapted):
                    raise
                continue
            break
        chunks.response.stream = _WatchedBody(chunks.response.stream, clock)
        head: list[Any] = []
        reply = _Reply()
        try:
            for chunk in chunks:
                head.append(chunk)
                if reply.read(chunk) or reply.finish_reason is not None:
                    return chunks, head
            raise UpstreamUnavailable(f"{self._caller.label}: the chat stream ended before any text and without "
                                      "a finish_reason (content-type "
                                      f"{chunks.response.headers.get('content-type') or 'none'})",
                                      reason="upstream_interrupted")
        except _DeadlinePassed as exc:
            chunks.close()
            raise UpstreamUnavailable(f"{self._caller.label}: no answer within first_token_timeout",
                                      reason="upstream_timeout") from exc
        except ValueError as exc:  # a malformed SSE line or chunk
            chunks.close()
            raise UpstreamUnavailable(f"{self._caller.label}: the chat stream was malformed before any text "
                                      f"({type(exc).__name__})", reason="upstream_bad_response") from exc
        except BaseException:
            chunks.close()
            raise

    def _adapt(self, request: dict[str, Any], exc: openai.APIStatusError, adapted: set[str]) -> bool:
        """Change ``request`` for a parameter the server refused, once per parameter and
        stream, and remember it for the next streams: a server without ``stream_options``
        (Mistral), a model that takes only ``max_completion_tokens`` (OpenAI's reasoning
        models) or only ``max_tokens``, or only its default temperature. False when the
        error names nothing to change."""
        name = next((name for name in ("stream_options", "temperature", *TOKEN_LIMIT_PARAMETERS)
                     if name in request and name not in adapted and mentions(exc, name)), None)
        if name is None:
            return False
        adapted.add(name)
        with self._quirks_lock:
            if name in TOKEN_LIMIT_PARAMETERS:
                other = next(p for p in TOKEN_LIMIT_PARAMETERS if p != name)
                request[other] = request.pop(name)
                adapted.add(other)  # never back
                self._quirks["max_tokens_parameter"] = other
                change = f"does not take {name}; sending {other} instead"
            else:
                del request[name]
                self._quirks[name] = True
                change = (f"does not take {name}; " + ("token usage is estimated unless it sends it anyway"
                                                      if name == "stream_options" else "the model's default is used"))
        log.warning("%s: the server %s (HTTP %d)", self._caller.label, change, exc.status_code)
        return True

    def _broken(self, exc: BaseException, pieces: int) -> UpstreamUnavailable:
        """The error for a stream that failed after ``pieces`` pieces were yielded."""
        label = self._caller.label
        if isinstance(exc, _DeadlinePassed):
            return UpstreamUnavailable(f"{label}: the answer took longer than total_timeout "
                                       f"({self.total_timeout:g} s) after {pieces} pieces", reason="upstream_timeout")
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamUnavailable(f"{label}: the chat stream stalled after {pieces} pieces "
                                       f"(nothing for {self._caller.timeout:g} s)", reason="upstream_timeout")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            return UpstreamUnavailable(f"{label}: the chat stream broke off after {pieces} pieces "
                                       f"({type(cause).__name__ if cause else 'connection error'})",
                                       reason="upstream_interrupted")
        if isinstance(exc, openai.APIError):
            error = self._caller.map_error("chat", exc)
            return UpstreamUnavailable(f"{error.message} (after {pieces} pieces)", reason="upstream_error")
        return UpstreamUnavailable(f"{label}: the chat stream turned malformed after {pieces} pieces "
                                   f"({type(exc).__name__})", reason="upstream_bad_response")

    def _estimate(self, prompt: Prompt, pieces: list[str]) -> Usage:
        log.info("%s: the server reported no token usage; using Spacio's estimate", self._caller.label)
        return Usage(prompt_tokens=prompts.prompt_tokens(prompt),
                     completion_tokens=prompts.estimate_tokens("".join(pieces)), estimated=True)


class _Reply:
    """What one stream's chunks said so far: the finish reason and the usage."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def read(self, chunk: Any) -> str:
        """The answer text in ``chunk`` ("" for none); notes its finish reason and usage."""
        usage = get(chunk, "usage")
        if usage is None:
            usage = get(chunk, "x_groq", "usage")  # Groq's place for it
        counts = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
        if None not in counts:
            self.usage = Usage(prompt_tokens=counts[0], completion_tokens=counts[1])
        text = ""
        choices = get(chunk, "choices")
        for choice in choices if isinstance(choices, list) else ():
            if get(choice, "index") not in (0, None):
                continue  # we ask for one choice
            content = get(choice, "delta", "content")
            if isinstance(content, str):
                text += content
            finish_reason = get(choice, "finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                self.finish_reason = finish_reason
        return text


def _count(usage: Any, name: str) -> int | None:
    value = get(usage, name)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return int(value)
    return None

