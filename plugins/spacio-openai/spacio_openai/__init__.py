"""OpenAI plugins for Spacio, on the official ``openai`` SDK: a streamed chat generator and
an embedder, for OpenAI's API or any OpenAI-compatible server (``base_url``)."""

from .embedder import OpenAIEmbedder
from .generator import OpenAIGenerator
from .tokenizer import OpenAIApproxTokenizer

__all__ = ["OpenAIEmbedder", "OpenAIGenerator", "OpenAIApproxTokenizer"]
