"""Fixtures for the Cohere plugin tests: one stand-in server for the session, cleaned
before every test (failures queued, stalls and recorded requests are forgotten)."""

import pytest
from cohere_standin import API_KEY, CohereStandIn


@pytest.fixture(scope="session")
def cohere_server():
    with CohereStandIn() as server:
        yield server


@pytest.fixture
def standin(cohere_server):
    """The session's stand-in, with nothing queued and no requests recorded."""
    cohere_server.reset()
    yield cohere_server
    cohere_server.reset()


@pytest.fixture
def standin_options(standin):
    """Options for a plugin talking to the stand-in, with fast retries."""
    return {"api_key": API_KEY, "base_url": standin.url, "backoff": 0.001, "max_retries": 3, "timeout": 5}
