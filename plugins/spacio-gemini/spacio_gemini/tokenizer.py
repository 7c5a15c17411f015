"""A local, conservative estimate of Gemini's token counts.

Gemini's tokenizer is not available offline: the API's ``countTokens`` is a network round
trip, and the SDK's local tokenizer downloads its vocabulary at first use, which Spacio may
not do. Chunking counts tokens thousands of times per document, so this tokenizer
estimates, and errs on the side of *more* tokens (a chunk measured at 2,048 here must not
be cut off by the embedding model):

- a run of ASCII letters, cut where the case changes, costs one token per started
  ``LETTERS_PER_TOKEN`` letters (Gemini's vocabulary holds most English words whole:
  "information" is 1 token, 3 here);
- every digit is a token (Gemini splits numbers into digits);
- every other ASCII symbol or punctuation mark is a token;
- a single space is free (it is glued to the following word); any other run of whitespace
  costs one token per started ``WHITESPACE_PER_TOKEN`` characters;
- a character outside ASCII costs one token, and one outside the Basic Multilingual Plane
  (emoji, rare CJK) one per UTF-8 byte, 4: the most a byte fallback needs. Such a
  character's tokens all report the character's span.

It is not measured against Gemini's own tokenizer here (that needs the network); the
``external`` tests compare it with the API's ``countTokens`` when a key is set.
"""

from __future__ import annotations

import re
from typing import Sequence

LETTERS_PER_TOKEN = 4
WHITESPACE_PER_TOKEN = 8
ASTRAL_TOKENS = 4  # a character beyond U+FFFF: its UTF-8 bytes

# letters are cut at case changes ("McDonald" -> "Mc", "Donald"; "HTTPServer" -> "HTTP",
# "Server"): vocabularies rarely hold mixed-case pieces, so identifiers cost more than prose
_PIECE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\s+|[^A-Za-z\s]")


class GeminiApproxTokenizer:
    """Implements :class:`spacio.rag.contracts.Tokenizer` without any model files."""

    def count(self, texts: Sequence[str]) -> list[int]:
        return [self._count(text) for text in texts]

    def spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for match in _PIECE.finditer(text):
            start, end = match.span()
            first = text[start]
            if first.isspace():
                if end - start > 1 or first != " ":
                    spans.extend((s, min(s + WHITESPACE_PER_TOKEN, end))
                                 for s in range(start, end, WHITESPACE_PER_TOKEN))
            elif end - start > 1 or ("A" <= first <= "Z" or "a" <= first <= "z"):
                spans.extend((s, min(s + LETTERS_PER_TOKEN, end)) for s in range(start, end, LETTERS_PER_TOKEN))
            elif ord(first) > 0xFFFF:
                spans.extend([(start, end)] * ASTRAL_TOKENS)
            else:
                spans.append((start, end))
        return spans

    def truncate(self, text: str, limit: int) -> str:
        """The longest prefix of ``text`` of at most ``limit`` tokens (cut after a whole token)."""
        if limit <= 0:
            return ""
        if self._count(text) <= limit:
            return text
        return text[:self.spans(text)[limit - 1][1]]

    @staticmethod
    def _count(text: str) -> int:
        total = 0
        for match in _PIECE.finditer(text):
            start, end = match.span()
            first = text[start]
            if first.isspace():
                if end - start > 1 or first != " ":
                    total += -(-(end - start) // WHITESPACE_PER_TOKEN)
            elif end - start > 1 or ("A" <= first <= "Z" or "a" <= first <= "z"):
                total += -(-(end - start) // LETTERS_PER_TOKEN)
            elif ord(first) > 0xFFFF:
                total += ASTRAL_TOKENS
            else:
                total += 1
        return total
