"""GeminiEmbedder through the real ``google-genai`` SDK against the local stand-in."""

import pytest
from gemini_standin import API_KEY

from spacio.testing.contracts.embedder import LEXICAL_CASES, EmbedderContract
from spacio_gemini import GeminiEmbedder


class TestGeminiEmbedderContract(EmbedderContract):
    similarity_cases = LEXICAL_CASES

    @pytest.fixture(scope="class")
    def embedder(self, gemini_server):
        return GeminiEmbedder(api_key=API_KEY, base_url=gemini_server.url, backoff=0.001)
