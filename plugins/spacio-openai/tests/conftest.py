"""Fixtures for the OpenAI plugin tests: one stand-in server for the session, cleaned
before every test (failures queued, stalls, fault switches and recorded requests are
forgotten)."""

import pytest
from openai_standin import API_KEY, OpenAIStandIn


@pytest.fixture(scope="session")
def openai_server():
    with OpenAIStandIn() as server:
        yield server


@pytest.fixture
def standin(openai_server):
    """The session's stand-in, with nothing queued and no requests recorded."""
    openai_server.reset()
    yield openai_server
    openai_server.reset()


@pytest.fixture
def standin_options(standin):
    """Options for a plugin talking to the stand-in, with fast retries."""
    return {"api_key": API_KEY, "base_url": standin.base_url, "backoff": 0.001, "max_retries": 3, "timeout": 5}


@pytest.fixture(autouse=True)
def _no_openai_environment(monkeypatch):
    """The developer's own OPENAI_* variables must not change what these tests see
    (the external tests read them at import, in openai_external.EXTERNAL)."""
    for name in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
