"""Gemini plugins for Spacio, on the official ``google-genai`` SDK (Gemini Developer API)."""

from .embedder import GeminiEmbedder
from .generator import GeminiGenerator
from .tokenizer import GeminiApproxTokenizer

__all__ = ["GeminiEmbedder", "GeminiGenerator", "GeminiApproxTokenizer"]
