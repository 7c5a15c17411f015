"""spacio.testing's PacedGenerator passes the generator contract, and the contract itself
catches generators that break the rules the host relies on."""

import socket
import time

import pytest

from spacio.rag.contracts import UpstreamUnavailable, Usage
from spacio.testing.contracts.generator import PROMPT, GeneratorContract, check_stream
from spacio.testing.generators import PacedGenerator

FAST = {"tokens_per_second": 5000.0, "tokens": 12}


class TestPacedGeneratorContract(GeneratorContract):
    @pytest.fixture
    def generator_options(self):
        return dict(FAST)

    @pytest.fixture
    def generator(self, generator_options):
        return PacedGenerator(**generator_options)


# --------------------------------------------------------------------------- PacedGenerator itself

def test_paced_answer_cites_every_passage_and_counts_its_pieces():
    items = list(PacedGenerator(**FAST).stream(PROMPT))
    text, usage = check_stream(items)
    assert text.startswith("Answer from [1]:")
    assert text.endswith(" [1] [2] [3].")
    assert usage.completion_tokens == len(items) - 1 == 12
    assert usage.prompt_tokens > len(PROMPT.question.split())


def test_paced_rate_is_the_configured_one():
    generator = PacedGenerator(tokens_per_second=100.0, tokens=10)
    started = time.perf_counter()
    items = list(generator.stream(PROMPT))
    elapsed = time.perf_counter() - started
    assert len(items) == 11
    assert 0.1 <= elapsed < 0.5, elapsed


def test_paced_fail_after_raises_after_the_pieces():
    received = []
    with pytest.raises(UpstreamUnavailable) as error:
        for item in PacedGenerator(**FAST, fail_after=3).stream(PROMPT):
            received.append(item)
    assert len(received) == 3 and all(isinstance(item, str) for item in received)
    assert error.value.retryable


# --------------------------------------------------------------------------- the contract catches mistakes

class Broken:
    """A generator whose stream is whatever ``items`` makes of the prompt."""

    def __init__(self, items):
        self.items = items

    def stream(self, prompt):
        yield from self.items(prompt)


CONTRACT = GeneratorContract()


@pytest.mark.parametrize("items, message", [
    (lambda p: ["an answer"], "the last item must be a Usage"),
    (lambda p: ["an ", Usage(1, 1), "answer", Usage(1, 2)], "a Usage before the end"),
    (lambda p: ["an ", "", "answer", Usage(1, 2)], "empty string"),
    (lambda p: ["an ", b"answer", Usage(1, 2)], "not str"),
    (lambda p: ["an answer", Usage(-1, 2)], "prompt_tokens must be an int >= 0"),
    (lambda p: ["an answer", Usage(3, 2.0)], "completion_tokens must be an int >= 0"),
    (lambda p: [Usage(3, 0)], "no answer text"),
])
def test_contract_rejects_a_malformed_stream(items, message):
    with pytest.raises(AssertionError, match=message):
        CONTRACT.test_text_pieces_then_exactly_one_usage(Broken(items))


def test_contract_rejects_a_stream_that_is_not_closeable():
    class ListGenerator:
        def stream(self, prompt):
            return iter(["an answer", Usage(1, 1)])

    with pytest.raises(AssertionError, match="close"):
        CONTRACT.test_closing_early_does_not_raise(ListGenerator())


def test_contract_rejects_a_stream_that_fails_when_closed():
    class CleanupFails:
        def stream(self, prompt):
            try:
                yield "an "
                yield "answer"
                yield Usage(1, 2)
            finally:
                if not getattr(self, "done", False):
                    self.done = True
                    raise RuntimeError("cleanup failed")

    with pytest.raises(RuntimeError, match="cleanup failed"):
        CONTRACT.test_closing_early_does_not_raise(CleanupFails())


def test_contract_rejects_per_stream_state_on_the_instance():
    class SharedState:
        def stream(self, prompt):
            self.words = prompt.question.split()
            while self.words:
                yield self.words.pop(0) + " "
            yield Usage(1, 1)

    with pytest.raises(AssertionError, match="per-stream state"):
        CONTRACT.test_interleaved_streams_of_one_instance(SharedState())


def test_contract_rejects_a_constructor_that_connects(monkeypatch):
    class Eager:
        def __init__(self):
            socket.create_connection(("127.0.0.1", 9), timeout=0.1)

        def stream(self, prompt):
            yield "x"
            yield Usage()

    generator = object.__new__(Eager)
    with pytest.raises(AssertionError, match="connect lazily"):
        CONTRACT.test_constructor_does_no_network_io(generator, {}, monkeypatch)


def test_contract_rejects_an_options_schema_instance():
    class WithInstance(PacedGenerator):
        options_schema = PacedGenerator.options_schema()

    with pytest.raises(AssertionError, match="Schema class"):
        CONTRACT.test_options_schema(WithInstance(**FAST), {})

