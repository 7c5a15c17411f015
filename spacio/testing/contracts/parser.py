"""The behaviour every ``spacio.parsers`` plugin must have, as a pytest test class.

Subclass it in your plugin's tests and provide three fixtures::

    import pytest
    from spacio.rag.contracts import Blob
    from spacio.testing.contracts.parser import ParserContract

    class TestMyParser(ParserContract):
        @pytest.fixture
        def parser(self):
            return MyParser()

        @pytest.fixture
        def sample_blob(self):  # a valid file of one of the parser's media types
            return Blob(data=SAMPLE_BYTES, media_type="application/x-my", filename="sample.my")

        @pytest.fixture
        def expected_text(self):  # words the sample's text contains
            return "Quarterly revenue grew"

What is checked:

- the parser satisfies the ``Parser`` protocol; ``media_types`` is a non-empty frozenset of
  lower-case ``type/subtype`` strings without parameters; an ``options_schema``, if any, is
  a marshmallow Schema class that accepts no options;
- ``parse(sample_blob)`` returns a ``ParsedDocument`` of ``Section`` objects with non-blank
  ``str`` text (no NUL, encodable as UTF-8), ``heading`` ``None`` or a non-empty ``str``,
  ``page`` ``None`` (formats without pages, where ``pages`` is ``None`` too) or
  ``1..pages``; ``title`` ``None`` or ``str``; ``metadata`` a mapping with ``str`` keys;
- the expected text comes out (compared with whitespace normalised);
- parsing is deterministic and thread-safe (one instance serves many threads);
- ``max_pages`` below the page count raises ``InvalidInput`` with reason ``too_many_pages``;
- garbage bytes, and the sample's first bytes followed by garbage, raise ``InvalidInput``
  (with a specific snake_case reason) or ``UnsupportedMediaType``; empty bytes raise one
  of those or give a document without sections; a truncated or damaged sample gives a
  well-formed document or one of those errors — never another exception.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Mapping

import pytest

from spacio.rag.contracts import Blob, InvalidInput, ParsedDocument, Parser, Section, UnsupportedMediaType

_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_REASON = re.compile(r"[a-z][a-z0-9_]*")
_EXPECTED_ERRORS = (InvalidInput, UnsupportedMediaType)


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _garbage(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_well_formed(document: object) -> None:
    """The shape every parser's output must have (usable on its own in plugin tests)."""
    assert isinstance(document, ParsedDocument), f"parse returned {type(document).__name__}, not ParsedDocument"
    assert isinstance(document.sections, tuple), "sections must be a tuple"
    pages = document.pages
    assert pages is None or (isinstance(pages, int) and not isinstance(pages, bool) and pages >= 0), \
        f"pages must be None or a non-negative int, not {pages!r}"
    for index, section in enumerate(document.sections):
        assert isinstance(section, Section), f"section {index} is a {type(section).__name__}"
        assert isinstance(section.text, str), f"section {index}: text is not str"
        assert section.text.strip(), f"section {index} has no text (leave empty sections out)"
        assert "\x00" not in section.text, f"section {index} contains NUL (databases reject it)"
        section.text.encode("utf-8")  # lone surrogates cannot be stored or embedded
        assert section.heading is None or (isinstance(section.heading, str) and section.heading.strip()), \
            f"section {index}: heading must be None or a non-empty str"
        if pages is None:
            assert section.page is None, f"section {index} has page {section.page} but the document has no pages"
        else:
            assert isinstance(section.page, int) and 1 <= section.page <= pages, \
                f"section {index}: page {section.page!r} is not within 1..{pages}"
    assert document.title is None or isinstance(document.title, str), "title must be None or str"
    assert isinstance(document.metadata, Mapping), "metadata must be a mapping"
    assert all(isinstance(key, str) for key in document.metadata), "metadata keys must be str"


def assert_expected_error(error: BaseException) -> None:
    assert isinstance(error, _EXPECTED_ERRORS), \
        f"raised {type(error).__name__}: {error} (only InvalidInput or UnsupportedMediaType are allowed)"
    assert isinstance(error.message, str) and error.message.strip(), "errors need a human message"
    assert isinstance(error.reason, str) and _REASON.fullmatch(error.reason), \
        f"reason {error.reason!r} is not snake_case"
    if isinstance(error, InvalidInput):
        assert error.reason != InvalidInput.reason, "InvalidInput needs a specific reason (corrupt_file, ...)"


def parse_or_error(parser: Parser, blob: Blob) -> ParsedDocument | None:
    """The document, or None after checking that the parser refused the blob properly."""
    try:
        document = parser.parse(blob)
    except Exception as error:  # noqa: BLE001 - the point is to check which one it is
        assert_expected_error(error)
        return None
    assert_well_formed(document)
    return document


class ParserContract:
    """Tests every parser must pass. Fixtures to provide: ``parser``, ``sample_blob``,
    ``expected_text``."""

    # -- shape of the plugin

    def test_satisfies_the_parser_protocol(self, parser):
        assert isinstance(parser, Parser)
        assert callable(parser.parse)

    def test_media_types_is_a_non_empty_frozenset_of_lower_case_types(self, parser):
        assert isinstance(parser.media_types, frozenset), "media_types must be a frozenset"
        assert parser.media_types, "media_types must not be empty"
        for media_type in parser.media_types:
            assert isinstance(media_type, str)
            assert media_type == media_type.lower(), f"{media_type!r} is not lower-case"
            assert _MEDIA_TYPE.fullmatch(media_type), f"{media_type!r} is not a bare type/subtype"

    def test_options_schema_accepts_no_options(self, parser):
        schema = getattr(type(parser), "options_schema", None)
        if schema is None:
            return
        from marshmallow import Schema

        assert isinstance(schema, type) and issubclass(schema, Schema), "options_schema must be a Schema class"
        schema().load({})

    def test_sample_blob_is_one_of_its_media_types(self, parser, sample_blob):
        assert isinstance(sample_blob, Blob)
        assert sample_blob.media_type in parser.media_types

    # -- the sample

    def test_parse_returns_a_well_formed_document(self, parser, sample_blob):
        document = parser.parse(sample_blob)
        assert_well_formed(document)
        assert document.sections, "the sample gave no text"

    def test_the_expected_text_comes_out(self, parser, sample_blob, expected_text):
        document = parser.parse(sample_blob)
        assert _squeeze(expected_text) in _squeeze(document.text)

    def test_parsing_is_deterministic(self, parser, sample_blob):
        assert parser.parse(sample_blob) == parser.parse(sample_blob)

    def test_one_instance_serves_several_threads(self, parser, sample_blob):
        expected = parser.parse(sample_blob)
        results: list[object] = []

        def work() -> None:
            try:
                results.append(parser.parse(sample_blob))
            except Exception as error:  # noqa: BLE001 - reported by the assertion below
                results.append(error)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert results == [expected] * 4

    def test_max_pages_below_the_page_count_is_refused(self, parser, sample_blob):
        document = parser.parse(sample_blob)
        if document.pages is None:  # no pages: the limit does not apply
            limited = Blob(sample_blob.data, sample_blob.media_type, sample_blob.filename, max_pages=1)
            assert parser.parse(limited) == document
            return
        enough = Blob(sample_blob.data, sample_blob.media_type, sample_blob.filename, max_pages=document.pages)
        assert parser.parse(enough) == document
        too_few = Blob(sample_blob.data, sample_blob.media_type, sample_blob.filename,
                       max_pages=document.pages - 1)
        with pytest.raises(InvalidInput) as raised:
            parser.parse(too_few)
        assert raised.value.reason == "too_many_pages"

    # -- bad input

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_garbage_is_refused(self, parser, seed):
        for media_type in sorted(parser.media_types):
            with pytest.raises(_EXPECTED_ERRORS) as raised:
                parser.parse(Blob(_garbage(4096, seed), media_type, "garbage"))
            assert_expected_error(raised.value)

    def test_garbage_after_the_samples_header_is_refused(self, parser, sample_blob):
        data = sample_blob.data[:16] + _garbage(8192, 7)
        with pytest.raises(_EXPECTED_ERRORS) as raised:
            parser.parse(Blob(data, sample_blob.media_type, sample_blob.filename))
        assert_expected_error(raised.value)

    def test_empty_bytes_give_no_sections_or_a_clear_error(self, parser):
        for media_type in sorted(parser.media_types):
            document = parse_or_error(parser, Blob(b"", media_type, "empty"))
            assert document is None or not document.sections

    @pytest.mark.parametrize("fraction", [0.0005, 0.25, 0.5, 0.9, 0.999])
    def test_a_truncated_sample_never_raises_anything_else(self, parser, sample_blob, fraction):
        cut = max(1, int(len(sample_blob.data) * fraction))
        parse_or_error(parser, Blob(sample_blob.data[:cut], sample_blob.media_type, sample_blob.filename))

    @pytest.mark.parametrize("seed", [11, 12, 13])
    def test_a_damaged_sample_never_raises_anything_else(self, parser, sample_blob, seed):
        data = bytearray(sample_blob.data)
        rng = random.Random(seed)
        for _ in range(max(1, len(data) // 200)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        parse_or_error(parser, Blob(bytes(data), sample_blob.media_type, sample_blob.filename))
