"""Cohere plugins for Spacio, on the official ``cohere`` SDK (API v2)."""

from .embedder import CohereEmbedder
from .tokenizer import CohereApproxTokenizer

__all__ = ["CohereEmbedder", "CohereApproxTokenizer"]
