"""GeminiGenerator through the real ``google-genai`` SDK against the local stand-in."""

import pytest
from gemini_standin import API_KEY

from spacio.testing.contracts.generator import GeneratorContract
from spacio_gemini import GeminiGenerator


class TestGeminiGeneratorContract(GeneratorContract):
    @pytest.fixture
    def generator_options(self, gemini_server):
        return {"api_key": API_KEY, "base_url": gemini_server.url, "backoff": 0.001, "timeout": 5}

    @pytest.fixture
    def generator(self, generator_options):
        return GeminiGenerator(**generator_options)
