"""A fast, deterministic Tokenizer for tests: no model files, same answer on every machine.

It behaves like a subword tokenizer where it matters to a chunker: long words become
several tokens, punctuation marks are tokens of their own, whitespace is never a token,
and ``spans`` gives exact character offsets."""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["RegexTokenizer"]


class RegexTokenizer:
    """Tokens are runs of at most ``piece`` word characters (``\\w``; a longer word is cut
    into pieces of ``piece`` characters, the last one shorter) and single punctuation marks
    (any other character that is not whitespace). ``"Tokenization, works!"`` gives
    ``Toke niza tion , work s !``."""

    def __init__(self, piece: int = 4) -> None:
        if piece < 1:
            raise ValueError("piece must be at least 1")
        self.piece = piece
        self._pattern = re.compile(rf"\w{{1,{piece}}}|[^\w\s]")

    def count(self, texts: Sequence[str]) -> list[int]:
        findall = self._pattern.findall
        return [len(findall(text)) for text in texts]

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._pattern.finditer(text)]
