"""Fixtures: one Pinecone stand-in (control and data plane on a free loopback port) for the
session, and stores against it with fast retries."""

from __future__ import annotations

import pytest

from pinecone_standin import API_KEY, PineconeStandin


@pytest.fixture(scope="session")
def pinecone_server():
    with PineconeStandin() as server:
        yield server


@pytest.fixture
def standin(pinecone_server):
    """The session's stand-in with no faults queued and no requests recorded (before and after)."""
    pinecone_server.reset()
    yield pinecone_server
    pinecone_server.reset()


@pytest.fixture
def fresh_standin():
    """A stand-in of its own (for tests that stop it or look at every index it has)."""
    with PineconeStandin() as server:
        yield server


@pytest.fixture
def options(standin):
    """Options for a store on the shared stand-in, retrying fast."""
    return {"api_key": API_KEY, "controller_host": standin.url, "backoff": 0.001, "timeout": 5}
