"""A test kit for plugin authors (and for Spacio's own tests).

- ``spacio.testing.contracts``: one contract test class per plugin kind. Subclass it in
  your plugin's tests and provide the fixture it names (``parser``, ``chunker``,
  ``embedder``, ``vector_store``, ``generator``, ``reranker``); every first-party plugin
  passes them.
- ``spacio.testing.embedders.HashEmbedder`` / ``tokenizers.RegexTokenizer``: fast,
  deterministic stand-ins for tests (entry point ``hashing``).
- ``spacio.testing.generators.PacedGenerator``: a known answer at a fixed token rate, for
  tests and streaming benchmarks (entry point ``paced``).
- the pytest plugin ``spacio.testing.plugin`` (loaded automatically through the
  ``pytest11`` entry point) provides fixtures such as ``hash_embedder``.
"""
