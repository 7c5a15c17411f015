"""Cohere plugins for Spacio, on the official ``cohere`` SDK (API v2)."""

from .embedder import CohereEmbedder
from .generator import CohereGenerator
from .reranker import CohereReranker
from .tokenizer import CohereApproxTokenizer

__all__ = ["CohereEmbedder", "CohereGenerator", "CohereReranker", "CohereApproxTokenizer"]
