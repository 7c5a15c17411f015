"""``GeminiGenerator``: Gemini through ``google.genai``'s ``models.generate_content_stream``
(``:streamGenerateContent?alt=sse``), streamed chunk by chunk. The prompt is Spacio's own
(``spacio.rag.prompts``): the rules and the space's system prompt as the system
instruction, the earlier turns as ``user``/``model`` contents, the passages fenced off as
data in the last user content."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterator

import httpx
from google.genai import types
from marshmallow import fields, validate

from spacio.rag import prompts
from spacio.rag.contracts import InvalidInput, PluginError, Prompt, UpstreamUnavailable, Usage

from ._calls import Call, GeminiCaller, GeminiOptions, current

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-flash"
#: the longest retry delay slept through before the first piece; a person is waiting
INTERACTIVE_MAX_SLEEP = 10.0
#: finish reasons with which Gemini withholds (the rest of) an answer on policy grounds,
#: inside a 200 stream. The same prompt would be refused again: not retried, not "unavailable".
BLOCKED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "LANGUAGE", "IMAGE_SAFETY",
           "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"}
#: finish reasons of an answer that ended normally (MAX_TOKENS: cut at the token limit)
FINISHED = {"STOP", "MAX_TOKENS"}

_END = object()


class GeminiGeneratorOptions(GeminiOptions):
    """``model`` is any Gemini model id that streams text. ``temperature`` and
    ``max_tokens`` apply when the prompt (the space's settings) sets none. Retries happen
    only before the first piece, so fewer by default than for ingestion: a person waits."""

    model = fields.String(load_default=DEFAULT_MODEL, validate=validate.Length(min=1))
    temperature = fields.Float(load_default=None, allow_none=True, validate=validate.Range(min=0, max=2))
    max_tokens = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=1))
    #: Gemini 2.5's thinking tokens: 0 off (Flash), -1 dynamic, None the model's default
    thinking_budget = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=-1))
    first_token_timeout = fields.Float(load_default=30.0, validate=validate.Range(min=0, min_inclusive=False))
    total_timeout = fields.Float(load_default=300.0, validate=validate.Range(min=0, min_inclusive=False))
    max_retries = fields.Integer(load_default=2, validate=validate.Range(min=0, max=20))
    backoff = fields.Float(load_default=0.5, validate=validate.Range(min=0))


class GeminiGenerator:
    """Streams the text of each chunk as it arrives, then one ``Usage`` with Gemini's
    counts (``usage_metadata``: ``prompt_token_count``; ``candidates_token_count`` plus
    ``thoughts_token_count``, the output tokens Google bills), or Spacio's estimate with
    ``estimated=True`` when a count is missing.

    Time limits: ``first_token_timeout`` from the call to the first piece (retries
    included), ``total_timeout`` for the whole answer, both enforced on every socket wait;
    ``timeout`` for connecting and for each wait on the network.

    Errors: 429, 5xx, timeouts, dropped connections and broken streams before the first
    piece are retried with backoff, then raise ``UpstreamUnavailable``; a bad key or an
    unknown model raises ``PluginError`` (``upstream_error``), a refused request
    ``InvalidInput``. A prompt or answer Gemini blocks (``SAFETY``, ``RECITATION``, ...)
    raises ``PluginError`` (``upstream_blocked``), never retried. Once a piece was yielded
    nothing is retried: a failure raises after the pieces already yielded. Closing the
    iterator closes the HTTP stream. No I/O before the first ``next()``."""

    options_schema = GeminiGeneratorOptions

    def __init__(self, **options: Any):
        opts = self.options_schema().load(options)
        self.model: str = opts["model"]
        self.temperature: float | None = opts["temperature"]
        self.max_tokens: int | None = opts["max_tokens"]
        self.thinking_budget: int | None = opts["thinking_budget"]
        self.first_token_timeout: float = opts["first_token_timeout"]
        self.total_timeout: float = opts["total_timeout"]
        self.label = f"gemini generator (model {self.model})"
        self._caller = GeminiCaller(label=self.label, api_key=opts["api_key"], base_url=opts["base_url"],
                                    timeout=opts["timeout"], max_retries=opts["max_retries"], backoff=opts["backoff"],
                                    max_sleep=INTERACTIVE_MAX_SLEEP, server_timeout=self.total_timeout)

    def __repr__(self) -> str:  # never show the key
        return f"GeminiGenerator(model={self.model!r})"

    def close(self) -> None:
        self._caller.close()

    def request(self, prompt: Prompt) -> tuple[list[types.Content], types.GenerateContentConfig]:
        """The ``contents`` and ``config`` of ``generate_content_stream`` for ``prompt``."""
        if not prompt.question.strip():
            raise InvalidInput("the question is empty", reason="empty_question")
        system, *turns = prompts.messages(prompt)
        contents: list[types.Content] = []
        for turn in turns:
            role = "model" if turn["role"] == "assistant" else "user"
            if contents and contents[-1].role == role:
                # two turns of one role in a row (an interrupted answer left out): one content
                # with two parts, as Gemini expects turns to alternate
                contents[-1].parts.append(types.Part(text=turn["content"]))
            else:
                contents.append(types.Content(role=role, parts=[types.Part(text=turn["content"])]))
        temperature = prompt.temperature if prompt.temperature is not None else self.temperature
        config = types.GenerateContentConfig(
            system_instruction=types.Content(parts=[types.Part(text=system["content"])]),
            temperature=temperature,
            max_output_tokens=prompt.max_tokens or self.max_tokens,
            thinking_config=(types.ThinkingConfig(thinking_budget=self.thinking_budget)
                             if self.thinking_budget is not None else None),
            candidate_count=1,
            # The SDK would otherwise resume a broken stream from a checkpoint and send part
            # of the answer again: text already shown cannot be taken back.
            automatic_continuation=False,
        )
        return contents, config

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]:
        contents, config = self.request(prompt)
        started = time.monotonic()
        total_deadline = started + self.total_timeout
        call = Call(deadline=min(started + self.first_token_timeout, total_deadline))
        answer = _Answer(self.label)
        chunks = None
        try:
            # Everything up to the first piece of text may be retried: nothing was shown yet.
            attempt = 0
            while True:
                chunks = self._caller.client.models.generate_content_stream(
                    model=self.model, contents=contents, config=config)
                try:
                    texts = self._first_texts(chunks, call, answer)
                    break
                except Exception as exc:
                    _close(chunks, call)
                    error = self._error(exc, call, answer)
                    delay = self._caller.retry_delay(error, attempt, deadline=call.deadline)
                    if delay is None:
                        _raise(error, exc)
                    attempt += 1
                    log.info("gemini chat failed before any text (%s), retry %d/%d in %.2fs", error.message,
                             attempt, self._caller.max_retries, delay)
                    self._caller._sleep(delay)
                    answer = _Answer(self.label)
            call.deadline = total_deadline
            while texts is not None:
                for text in texts:
                    yield text
                answer.check_finish()
                try:
                    texts = self._pull(chunks, call, answer)
                except Exception as exc:  # no retry now: pieces were shown
                    _raise(self._error(exc, call, answer), exc)
        finally:
            _close(chunks, call)  # on GeneratorExit too: closes the HTTP response
        answer.check_end()
        yield answer.usage(prompt)

    # ------------------------------------------------------------------ reading

    def _first_texts(self, chunks: Iterator[types.GenerateContentResponse], call: Call,
                     answer: "_Answer") -> list[str] | None:
        """Read chunks up to the first one with text: its texts, or None if the stream
        ended without any (a stream that ended without a finish reason raises here, inside
        the retry loop)."""
        while True:
            texts = self._pull(chunks, call, answer)
            if texts is None:
                answer.check_end()
                return None
            if texts:
                return texts
            answer.check_finish()

    def _pull(self, chunks: Iterator[types.GenerateContentResponse], call: Call,
              answer: "_Answer") -> list[str] | None:
        """The texts of the next chunk ([] for a chunk without text), None at the end."""
        with current(call):
            chunk = next(chunks, _END)
        if chunk is _END:
            return None
        if time.monotonic() > call.deadline:
            # chunks keep coming, but too slowly: the socket waits alone would not stop it
            raise _DeadlinePassed()
        return answer.read(chunk)

    def _error(self, exc: Exception, call: Call, answer: "_Answer") -> PluginError:
        pieces = len(answer.pieces)
        deadline_passed = isinstance(exc, _DeadlinePassed) or (
            isinstance(exc, httpx.TimeoutException) and time.monotonic() >= call.deadline - 0.01)
        if deadline_passed:
            limit = (f"total_timeout={self.total_timeout:g}s" if pieces
                     else f"first_token_timeout={self.first_token_timeout:g}s")
            error: PluginError = UpstreamUnavailable(
                f"{self.label}: no {'end of the answer' if pieces else 'text'} within {limit}"
                + (f" (after {pieces} pieces)" if pieces else ""), reason="upstream_timeout")
            error.__cause__ = exc
            return error
        error = self._caller.error("chat", exc)
        if pieces and isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException):
            error = UpstreamUnavailable(f"{self.label}: the stream broke off after {pieces} pieces "
                                        f"({type(exc).__name__}: {exc})", reason="upstream_interrupted")
        elif pieces:
            error.message = f"{error.message} (after {pieces} pieces)"
            error.args = (error.message,)
        return error


class _DeadlinePassed(Exception):
    pass


class _Answer:
    """Per-stream state: the pieces yielded, the finish reason, the latest usage."""

    def __init__(self, label: str):
        self.label = label
        self.pieces: list[str] = []
        self.finish_reason: str | None = None
        self.finish_message: str | None = None
        self.usage_metadata: Any = None
        self.checked = False

    def read(self, chunk: types.GenerateContentResponse) -> list[str]:
        """The texts of one chunk, recording its finish reason and usage (a running total:
        the latest counts)."""
        if chunk.usage_metadata is not None:
            self.usage_metadata = chunk.usage_metadata
        feedback = chunk.prompt_feedback
        if feedback is not None and feedback.block_reason:
            reason = _name(feedback.block_reason)
            raise PluginError(f"{self.label}: Gemini blocked the prompt ({reason}"
                              f"{': ' + feedback.block_reason_message if feedback.block_reason_message else ''})",
                              reason="upstream_blocked")
        if not chunk.candidates:
            if chunk.usage_metadata is None:
                # nothing in it at all: not Gemini's stream (an empty candidate list may only
                # come with the prompt's feedback or with usage)
                raise UpstreamUnavailable(f"{self.label}: a stream chunk without candidates, prompt feedback "
                                          "or usage", reason="upstream_bad_response")
            return []
        candidate = chunk.candidates[0]
        parts = (candidate.content.parts if candidate.content is not None else None) or []
        # thought summaries (include_thoughts) are the model's reasoning, not the answer
        texts = [part.text for part in parts if part.text and not part.thought]
        self.pieces.extend(texts)
        if candidate.finish_reason:
            self.finish_reason = _name(candidate.finish_reason)
            self.finish_message = candidate.finish_message
        return texts

    def check_finish(self) -> None:
        """Raise if the answer stopped for a reason other than its end or its token limit."""
        reason = self.finish_reason
        if reason is None or reason in FINISHED or self.checked:
            return
        self.checked = True
        after = f" after {len(self.pieces)} pieces" if self.pieces else " before any text"
        message = self.finish_message
        if reason in BLOCKED:
            raise PluginError(f"{self.label}: Gemini withheld the answer{after}: finish reason {reason}"
                              f"{': ' + message if message else ''}", reason="upstream_blocked")
        raise PluginError(f"{self.label}: Gemini stopped the answer{after}: finish reason {reason}"
                          f"{': ' + message if message else ''}", reason="upstream_error")

    def check_end(self) -> None:
        """At the end of the stream: it must have said how it finished."""
        self.check_finish()
        if self.finish_reason is None:
            raise UpstreamUnavailable(f"{self.label}: the stream ended without a finish reason"
                                      f"{f' after {len(self.pieces)} pieces' if self.pieces else ' before any text'}",
                                      reason="upstream_interrupted")
        if self.finish_reason == "MAX_TOKENS" and not self.pieces:
            raise PluginError(f"{self.label}: the model reached its token limit before writing any text "
                              "(Gemini 2.5's thinking tokens count against it): raise max_tokens or lower "
                              "thinking_budget", reason="upstream_error")

    def usage(self, prompt: Prompt) -> Usage:
        """Gemini's counts; a count it did not report is estimated (``estimated=True``)."""
        usage = self.usage_metadata
        prompt_tokens = _count(usage, "prompt_token_count")
        completion_tokens = _count(usage, "candidates_token_count")
        if completion_tokens is None and prompt_tokens is not None and not self.pieces:
            completion_tokens = 0  # Gemini leaves the count out when there is no output
        thoughts = _count(usage, "thoughts_token_count") or 0
        if prompt_tokens is not None and completion_tokens is not None:
            return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens + thoughts)
        log.warning("Gemini reported no token usage for %s; using Spacio's estimate", self.label)
        return Usage(prompt_tokens=prompt_tokens if prompt_tokens is not None else prompts.prompt_tokens(prompt),
                     completion_tokens=(completion_tokens if completion_tokens is not None
                                        else prompts.estimate_tokens("".join(self.pieces))) + thoughts,
                     estimated=True)


def _raise(error: PluginError, exc: BaseException) -> None:
    if error is exc:
        raise error
    raise error from exc


def _close(chunks: Any, call: Call) -> None:
    if chunks is not None:
        chunks.close()
    call.close()


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))


def _count(usage: Any, name: str) -> int | None:
    value = getattr(usage, name, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return int(value)
    return None
