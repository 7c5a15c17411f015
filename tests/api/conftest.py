"""Fixtures of the API tests: three users and a space (the app fixtures are in tests/conftest.py)."""

import pytest


@pytest.fixture
def alice(client):
    return client.user("alice@example.com", "Alice")


@pytest.fixture
def bob(client):
    return client.user("bob@example.com", "Bob")


@pytest.fixture
def carol(client):
    return client.user("carol@example.com", "Carol")


@pytest.fixture
def space(client, alice):
    """A space owned by Alice."""
    return client.space(alice, "Research")
