"""Fixtures: a Weaviate stand-in (REST + gRPC on free loopback ports) and stores against it."""

from __future__ import annotations

import pytest

from weaviate_standin import WeaviateStandin


@pytest.fixture(scope="session")
def weaviate_standin():
    """One stand-in for the session; tests that change its failure mode recover it."""
    with WeaviateStandin() as standin:
        yield standin


@pytest.fixture
def standin(weaviate_standin):
    """The shared stand-in, healthy again after the test."""
    weaviate_standin.recover()
    yield weaviate_standin
    weaviate_standin.recover()


@pytest.fixture
def fresh_standin():
    """A stand-in of its own (for tests that stop it or count its calls)."""
    with WeaviateStandin() as standin:
        yield standin
