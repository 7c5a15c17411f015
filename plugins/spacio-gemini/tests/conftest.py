"""Fixtures for the Gemini plugin tests: one stand-in server for the session, cleaned
before every test (failures queued, stalls and recorded requests are forgotten)."""

import pytest
from gemini_standin import API_KEY, GeminiStandIn


@pytest.fixture(scope="session")
def gemini_server():
    with GeminiStandIn() as server:
        yield server


@pytest.fixture
def standin(gemini_server):
    """The session's stand-in, with nothing queued and no requests recorded."""
    gemini_server.reset()
    yield gemini_server
    gemini_server.reset()


@pytest.fixture
def standin_options(standin):
    """Options for a plugin talking to the stand-in, with fast retries."""
    return {"api_key": API_KEY, "base_url": standin.url, "backoff": 0.001, "max_retries": 3, "timeout": 5}


@pytest.fixture(autouse=True)
def _no_gemini_environment(monkeypatch):
    """The SDK reads these; a developer's own settings must not leak into the tests
    (the external tests read GEMINI_API_KEY before this runs)."""
    for name in ("GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE", "GOOGLE_GENAI_API_VERSION",
                 "GOOGLE_GEMINI_BASE_URL", "GOOGLE_GENAI_HTTP_CLIENT"):
        monkeypatch.delenv(name, raising=False)
