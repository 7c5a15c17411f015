"""Where the ``external`` tests go: OpenAI, or another server (OPENAI_BASE_URL) with
OPENAI_API_KEY as its key. Read at import, before any test clears the variables."""

import os

import pytest

#: The real service for the ``external`` tests, read before any test clears the variables:
#: OpenAI, or another server (OPENAI_BASE_URL) with OPENAI_API_KEY as its key.
EXTERNAL = {"api_key": os.environ.get("OPENAI_API_KEY"), "base_url": os.environ.get("OPENAI_BASE_URL") or None}
external = pytest.mark.skipif(not EXTERNAL["api_key"], reason="OPENAI_API_KEY is not set")
#: tests that need OpenAI's own API (its models, its key checks)
openai_only = pytest.mark.skipif(EXTERNAL["base_url"] is not None and "api.openai.com" not in EXTERNAL["base_url"],
                                 reason="OPENAI_BASE_URL is not OpenAI's API")
