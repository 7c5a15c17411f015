"""The contract test suite every ``spacio.generators`` plugin should pass.

Subclass it in a test module and provide a ``generator`` fixture::

    import pytest
    from spacio.testing.contracts.generator import GeneratorContract

    class TestMyGenerator(GeneratorContract):
        @pytest.fixture
        def generator(self, generator_options):
            return MyGenerator(**generator_options)

        @pytest.fixture
        def generator_options(self):  # only if your class needs options
            return {"api_key": "...", "base_url": stand_in_url}

``generator_options`` (default ``{}``) are the keyword options the construction checks
build a second instance of ``type(generator)`` with. Everything here goes through the
public protocol (``spacio.rag.contracts``), so it applies to any generator: an LLM API
behind a stand-in server, an extractive or local model, a test double.

What is checked:

- ``stream(prompt)`` returns an iterator of non-empty ``str`` pieces followed by exactly one
  ``Usage`` (the last item) whose counts are ints >= 0;
- with passages the answer text is not empty; without passages, and with history, a
  system prompt, a temperature, a token limit and non-Latin text, the stream is still
  well-formed;
- closing the iterator before, during or after the stream does not raise, and the
  generator keeps working afterwards;
- two streams of one instance interleaved (as a gevent worker runs them) are both
  well-formed and, for a deterministic generator, each says what it says alone: no
  per-stream state lives on the instance;
- ``options_schema``, when there is one, is a marshmallow Schema class that accepts
  ``generator_options`` and refuses an unknown option;
- constructing does no network I/O (connections are refused during ``__init__``).

Knob a subclass may override:

- ``deterministic`` (default True): the same prompt always gives the same text, so
  interleaved streams can be compared with streams run alone. Set it to False for a
  sampling model (an LLM API; the Cohere stand-in is deterministic, the real API is not).
"""

from __future__ import annotations

import socket
from typing import ClassVar

import pytest

from spacio.rag.contracts import Generator, Passage, Prompt, Turn, Usage

__all__ = ["GeneratorContract", "PASSAGES", "QUESTION", "PROMPT", "check_stream"]

PASSAGES: tuple[Passage, ...] = (
    Passage(1, "Spacio keeps documents in spaces. Members of a space ask questions about its documents "
               "and get answers that cite the passages they come from.", "chunk-1", "doc-1", "guide.pdf", 1),
    Passage(2, "Citations are numbered markers such as [1] or [2] placed after the sentence they support. "
               "A marker that refers to no passage is dropped from the answer.", "chunk-2", "doc-1", "guide.pdf", 2),
    Passage(3, "The extractive generator needs no language model and no API key; it streams the best "
               "matching sentences of the retrieved passages.", "chunk-3", "doc-2", "faq.md", None),
)
QUESTION = "How do answers cite the passages they come from?"
PROMPT = Prompt(question=QUESTION, passages=PASSAGES)


def check_stream(items: list) -> tuple[str, Usage]:
    """``items`` (a whole stream) is text pieces then one Usage: the text and the Usage."""
    assert items, "the stream yielded nothing; expected text pieces and then one Usage"
    *pieces, usage = items
    assert isinstance(usage, Usage), f"the last item must be a Usage, got {type(usage).__name__}: {usage!r}"
    for i, piece in enumerate(pieces):
        assert not isinstance(piece, Usage), f"item {i} is a Usage before the end: exactly one, last"
        assert isinstance(piece, str), f"item {i} is a {type(piece).__name__}, not str: {piece!r}"
        assert piece, f"item {i} is an empty string: yield only pieces with text"
    for name in ("prompt_tokens", "completion_tokens"):
        value = getattr(usage, name)
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0, \
            f"Usage.{name} must be an int >= 0, got {value!r}"
    return "".join(pieces), usage


class GeneratorContract:
    """Behaviour the host relies on. Provide a ``generator`` fixture in the subclass."""

    deterministic: ClassVar[bool] = True

    @pytest.fixture
    def generator_options(self):
        """Keyword options that build ``type(generator)``; override if it needs any."""
        return {}

    # ------------------------------------------------------------------ the stream

    def test_implements_the_protocol(self, generator):
        assert isinstance(generator, Generator), "does not implement spacio.rag.contracts.Generator"
        stream = generator.stream(PROMPT)
        try:
            assert iter(stream) is stream, "stream() must return an iterator (a generator function is simplest)"
        finally:
            getattr(stream, "close", lambda: None)()

    def test_text_pieces_then_exactly_one_usage(self, generator):
        text, _ = check_stream(list(generator.stream(PROMPT)))
        assert text.strip(), "no answer text for a question with passages"

    def test_without_passages(self, generator):
        check_stream(list(generator.stream(Prompt(question="What is the capital of Atlantis?"))))

    def test_history_system_prompt_temperature_and_max_tokens(self, generator):
        prompt = Prompt(
            question="And how are they numbered?",
            passages=PASSAGES,
            history=(Turn("user", QUESTION), Turn("assistant", "They cite passages with markers [2]."),
                     Turn("user", "Which markers are dropped?"), Turn("assistant", "")),
            system_prompt="Answer briefly, in plain English.",
            temperature=0.2,
            max_tokens=200,
        )
        text, _ = check_stream(list(generator.stream(prompt)))
        assert text.strip(), "no answer text for a prompt with history and passages"

    def test_non_latin_text(self, generator):
        prompt = Prompt(question="東京はどこにありますか？ Où est Tokyo ?",
                        passages=(Passage(1, "東京は日本の首都です。Tokyo est la capitale du Japon. 🗼", "c", "d",
                                          "villes — ünïcode.txt"),))
        check_stream(list(generator.stream(prompt)))

    # ------------------------------------------------------------------ closing and concurrency

    def test_closing_early_does_not_raise(self, generator):
        untouched = generator.stream(PROMPT)
        assert callable(getattr(untouched, "close", None)), \
            "the stream needs close(): the host calls it when the client disconnects"
        untouched.close()  # never started

        started = generator.stream(PROMPT)
        first = next(started)
        assert isinstance(first, (str, Usage))
        started.close()  # the client went away after the first piece
        started.close()  # closing twice is harmless
        with pytest.raises(StopIteration):
            next(started)

        for _ in generator.stream(PROMPT):
            break  # a for loop left early; the iterator is closed when collected

        text, _ = check_stream(list(generator.stream(PROMPT)))  # and the generator still works
        assert text.strip()

    def test_closing_after_the_end_does_not_raise(self, generator):
        stream = generator.stream(PROMPT)
        check_stream(list(stream))
        stream.close()

    def test_interleaved_streams_of_one_instance(self, generator):
        """A gevent worker runs many streams of one instance at once, resuming them in turn."""
        prompts = [PROMPT, Prompt(question="What does the extractive generator need?", passages=PASSAGES)]
        items: list[list] = [[], []]
        pending = {i: generator.stream(prompt) for i, prompt in enumerate(prompts)}
        while pending:
            for i, stream in list(pending.items()):
                try:
                    items[i].append(next(stream))
                except StopIteration:
                    del pending[i]
        texts = [check_stream(result)[0] for result in items]
        assert all(text.strip() for text in texts)
        if self.deterministic:
            alone = [check_stream(list(generator.stream(prompt)))[0] for prompt in prompts]
            assert texts == alone, "interleaved streams answered differently than streams run alone: " \
                                   "per-stream state on the instance? (or set deterministic = False)"

    # ------------------------------------------------------------------ construction

    def test_options_schema(self, generator, generator_options):
        import marshmallow

        schema = getattr(type(generator), "options_schema", None)
        if schema is None:
            assert generator_options == {}, "options without an options_schema: the host refuses every option"
            return
        assert isinstance(schema, type) and issubclass(schema, marshmallow.Schema), \
            "options_schema must be a marshmallow Schema class (not an instance)"
        schema().load(generator_options)
        with pytest.raises(marshmallow.ValidationError):
            schema().load({**generator_options, "no_such_option_xyz": "1"})

    def test_constructor_does_no_network_io(self, generator, generator_options, monkeypatch):
        def refuse(*args, **kwargs):
            raise AssertionError("the constructor opened a connection: connect lazily, on first use")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        instance = type(generator)(**generator_options)
        assert isinstance(instance, Generator)
