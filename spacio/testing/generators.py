"""A Generator for tests and benchmarks: a known answer at a fixed token rate, no model.

``PacedGenerator`` streams ``Answer from [1]: <question words>`` (cycling through the
question's words, then citing every passage) one word at a time, ``tokens_per_second``
pieces a second, up to ``tokens`` pieces; then one ``Usage``. ``fail_after=N`` raises
``UpstreamUnavailable`` after N pieces, like a provider failing mid-stream.
``reports_usage=False`` plays a server that sends no token counts: the ``Usage`` is the
plugin's own count (``estimated``). ``model`` is only a name, as a space may choose one. It sleeps with
``time.sleep``, which gevent's monkey patching turns into a cooperative wait, so a
gevent worker can hold many paced streams at once, as it would with a remote LLM.

Registered by spacio as the entry point ``paced`` in ``spacio.generators``.
"""

from __future__ import annotations

import re
import time
from typing import Iterator

from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Prompt, UpstreamUnavailable, Usage

__all__ = ["PacedGenerator", "PacedGeneratorOptions"]

_WORD = re.compile(r"\w+")


class PacedGeneratorOptions(Schema):
    """``SPACIO_PLUGINS__GENERATOR__PACED__<OPTION>``."""

    tokens_per_second = fields.Float(load_default=50.0, validate=validate.Range(min=0.001))
    tokens = fields.Integer(load_default=20, validate=validate.Range(1, 100_000))
    fail_after = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(0, 100_000))
    reports_usage = fields.Boolean(load_default=True)
    model = fields.String(load_default="paced-1", validate=validate.Length(1, 200))


class PacedGenerator:
    options_schema = PacedGeneratorOptions

    def __init__(self, *, tokens_per_second: float = 50.0, tokens: int = 20, fail_after: int | None = None,
                 reports_usage: bool = True, model: str = "paced-1") -> None:
        self.interval = 1.0 / tokens_per_second
        self.tokens = tokens
        self.fail_after = fail_after
        self.reports_usage = reports_usage
        self.model = model

    def __repr__(self) -> str:
        return f"PacedGenerator(interval={self.interval}, tokens={self.tokens}, fail_after={self.fail_after})"

    def pieces(self, prompt: Prompt) -> list[str]:
        words = _WORD.findall(prompt.question) or ["answer"]
        cites = "".join(f" [{p.n}]" for p in prompt.passages)
        head = ["Answer", " from", " [1]:"] if prompt.passages else ["Answer:"]
        body = [" " + words[i % len(words)] for i in range(max(0, self.tokens - len(head) - 1))]
        return (head + body + [cites + "."])[: self.tokens]

    def stream(self, prompt: Prompt) -> Iterator[str | Usage]:
        pieces = self.pieces(prompt)
        for i, piece in enumerate(pieces):
            if self.fail_after is not None and i >= self.fail_after:
                raise UpstreamUnavailable("The paced generator failed on purpose.", reason="upstream_error")
            time.sleep(self.interval)
            yield piece
        prompt_tokens = len(_WORD.findall(prompt.question)) + sum(len(_WORD.findall(p.text)) for p in prompt.passages)
        yield Usage(prompt_tokens=prompt_tokens, completion_tokens=len(pieces), estimated=not self.reports_usage)
