"""pytest plugin shipped with Spacio (``pytest11`` entry point): fixtures for plugin tests.

Kept light: nothing heavy is imported until a fixture is used.
"""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "external: talks to a real third-party service; runs only when its URL/key is set")


@pytest.fixture
def regex_tokenizer():
    """A fast deterministic tokenizer (word pieces of at most 4 characters)."""
    from spacio.testing.tokenizers import RegexTokenizer

    return RegexTokenizer()


@pytest.fixture
def hash_embedder():
    """A fast deterministic embedder: texts that share words are close."""
    from spacio.testing.embedders import HashEmbedder

    return HashEmbedder()


@pytest.fixture
def sample_document():
    """A small parsed document with pages and headings, for chunker tests."""
    from spacio.rag.contracts import ParsedDocument, Section

    return ParsedDocument(
        sections=(
            Section("Spacio keeps documents in spaces. Members ask questions about them.", page=1,
                    heading="Introduction"),
            Section("Answers cite the passages they come from. " * 20, page=2, heading="Introduction > Citations"),
            Section("Plugins parse, chunk, embed and index documents.", page=3, heading="Plugins"),
        ),
        pages=3,
        title="Sample",
    )
