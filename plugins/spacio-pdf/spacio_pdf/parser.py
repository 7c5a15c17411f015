"""``PdfParser``: the text layer of a PDF, one section per page, with pypdf.

Failure reasons, in the order they are checked:

* ``corrupt_file``: no ``%PDF-`` header in the first KiB (where every reader looks for
  it), or pypdf cannot read the cross-reference table, the page tree or any page.
* ``encrypted``: a user password is needed (the empty password is tried first, so
  "copy-protected" files that only restrict permissions open fine).
* ``too_many_pages``: more pages than ``Blob.max_pages``, checked before any text is
  extracted.
* ``no_text_layer``: pages, but no text on any of them (scans without OCR).
* ``parse_timeout``: extraction ran past ``time_limit`` seconds.

A page whose extraction fails is skipped and listed in ``metadata["failed_pages"]``; the
rest of the document is kept.

No file can keep a worker busy for long. pypdf caps every decoded stream at 75 MB, but
parsing a content stream costs about a second per MB, and a tiny file can make pypdf
parse far more: one 16 KB page decoding to 5 MB of text operators took 23 s, and a page
drawing a 300-operator form 3,000 times took 93 s. So a page is skipped when its content
plus the forms it uses decode to more than ``max_page_content_bytes`` (the largest page
in the evaluation set has 1.1 MB), and a callback pypdf runs before every operator stops
a page after ``page_time_limit`` seconds and the document after ``time_limit``.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from typing import Any

from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Blob, InvalidInput, ParsedDocument, Section

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/pdf"

_UNWANTED = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_MAX_OUTLINE_ENTRIES = 10_000


class PdfOptionsSchema(Schema):
    """``SPACIO_PLUGINS__PARSER__PDF__<OPTION>``."""

    time_limit = fields.Float(validate=validate.Range(min=0.1))  # seconds per document
    page_time_limit = fields.Float(validate=validate.Range(min=0.1))  # seconds per page
    max_page_content_bytes = fields.Integer(validate=validate.Range(min=1024))


class _PageTooComplex(Exception):
    """The page's content would take too long to parse."""


class _OutOfTime(BaseException):
    """Raised from pypdf's operator callback when time is up. A BaseException, so that
    pypdf's ``except Exception`` around form XObjects cannot swallow it."""

    def __init__(self, document: bool):
        super().__init__()
        self.document = document


class PdfParser:
    """``application/pdf`` via pypdf: ``Section(text, page=n)`` for every page with text,
    ``heading`` from the outline (bookmarks) when the file has one; ``pages`` is the page
    count, ``title`` the document information title."""

    media_types = frozenset({MEDIA_TYPE})
    options_schema = PdfOptionsSchema

    def __init__(self, time_limit: float = 300.0, page_time_limit: float = 30.0,
                 max_page_content_bytes: int = 5_000_000):
        self.time_limit = time_limit
        self.page_time_limit = page_time_limit
        self.max_page_content_bytes = max_page_content_bytes
        _route_pypdf_logs_to_debug()

    def parse(self, blob: Blob) -> ParsedDocument:
        from pypdf import PdfReader  # imported on first use: the host imports parsers at start

        data = blob.data
        if b"%PDF-" not in data[:1024]:
            raise InvalidInput("The file is not a PDF: it has no %PDF header.", reason="corrupt_file")
        started = time.monotonic()
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
        except Exception as error:  # pypdf raises many types for broken files
            raise _corrupt(error) from None
        self._decrypt(reader)
        try:
            page_count = len(reader.pages)
        except Exception as error:
            raise _corrupt(error) from None
        if blob.max_pages is not None and page_count > blob.max_pages:
            raise InvalidInput(f"The PDF has {page_count} pages; at most {blob.max_pages} are allowed.",
                               reason="too_many_pages")
        headings = _outline_headings(reader, page_count)
        deadline = started + self.time_limit
        sections: list[Section] = []
        failed: list[int] = []
        first_failure = ""
        for index in range(page_count):
            try:
                text = self._page_text(reader.pages[index], deadline)
            except _OutOfTime as stop:
                if stop.document:
                    raise InvalidInput(f"Reading the PDF took longer than {self.time_limit:g} s "
                                       f"(stopped at page {index + 1} of {page_count}).",
                                       reason="parse_timeout") from None
                log.debug("pdf %r: page %d took longer than %g s", blob.filename, index + 1, self.page_time_limit)
                failed.append(index + 1)
                first_failure = first_failure or f"page {index + 1} took longer than {self.page_time_limit:g} s"
                continue
            except Exception as error:  # one bad page must not lose the document
                log.debug("pdf %r: page %d failed: %r", blob.filename, index + 1, error)
                failed.append(index + 1)
                first_failure = first_failure or f"page {index + 1}: {error}"
                continue
            if text:
                sections.append(Section(text, page=index + 1, heading=headings.get(index + 1)))
        if not sections:
            if page_count and len(failed) == page_count:
                raise InvalidInput(f"No page of the PDF could be read ({first_failure}).", reason="corrupt_file")
            if page_count:
                raise InvalidInput("The PDF has no text layer (a scan without OCR?).", reason="no_text_layer")
        metadata: dict[str, Any] = {"failed_pages": failed} if failed else {}
        return ParsedDocument(sections=tuple(sections), pages=page_count, title=_title(reader), metadata=metadata)

    def _page_text(self, page: Any, deadline: float) -> str:
        size = _content_bytes(page, self.max_page_content_bytes)
        if size > self.max_page_content_bytes:
            raise _PageTooComplex(f"its content decodes to more than {self.max_page_content_bytes} bytes")
        page_deadline = min(time.monotonic() + self.page_time_limit, deadline)

        def check_time(*_: Any) -> None:
            if time.monotonic() > page_deadline:
                raise _OutOfTime(document=page_deadline >= deadline)

        check_time()
        return _clean(page.extract_text(visitor_operand_before=check_time) or "")

    @staticmethod
    def _decrypt(reader: Any) -> None:
        from pypdf import PasswordType

        try:
            if not reader.is_encrypted:
                return
            opened = reader.decrypt("")
        except Exception as error:  # unsupported handler, missing crypto backend, broken dictionary
            raise InvalidInput(f"The PDF is encrypted in a way that cannot be opened: {error}",
                               reason="encrypted") from None
        if opened == PasswordType.NOT_DECRYPTED:
            raise InvalidInput("The PDF is protected by a password.", reason="encrypted")


def _corrupt(error: Exception) -> InvalidInput:
    log.debug("pdf unreadable: %r", error)
    return InvalidInput(f"The PDF is damaged and cannot be read ({type(error).__name__}: {error}).",
                        reason="corrupt_file")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _UNWANTED.sub(lambda m: "\ufffd" if m.group() >= "\ud800" else "", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def _content_bytes(page: Any, limit: int) -> int:
    """Decoded size of the page's content stream plus every form XObject it can reach
    (each counted once), stopping as soon as ``limit`` is passed."""
    from pypdf.generic import DictionaryObject, IndirectObject, StreamObject

    contents = page.get_contents()
    total = len(contents.get_data()) if contents is not None else 0
    seen: set[Any] = set()
    pending = [page.get("/Resources")]
    while pending and total <= limit:
        resources = pending.pop()
        resources = resources.get_object() if resources is not None else None
        xobjects = resources.get("/XObject") if isinstance(resources, DictionaryObject) else None
        xobjects = xobjects.get_object() if xobjects is not None else None
        if not isinstance(xobjects, DictionaryObject):
            continue
        for reference in xobjects.values():
            key = (reference.idnum, reference.generation) if isinstance(reference, IndirectObject) else id(reference)
            if key in seen:
                continue
            seen.add(key)
            xobject = reference.get_object()
            if isinstance(xobject, StreamObject) and xobject.get("/Subtype") == "/Form":
                total += len(xobject.get_data())
                pending.append(xobject.get("/Resources"))
    return total


def _title(reader: Any) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception as error:  # an unreadable Info dictionary is not worth failing for
        log.debug("pdf metadata unreadable: %r", error)
        return None
    return _clean(str(title)) or None if title else None


def _outline_headings(reader: Any, page_count: int) -> dict[int, str]:
    """Heading path per 1-based page: the first bookmark that starts on the page, else the
    one in force from an earlier page. Best effort: a broken outline gives no headings."""
    starts: dict[int, str] = {}
    try:
        entries = _flatten_outline(reader, reader.outline)
    except Exception as error:
        log.debug("pdf outline unreadable: %r", error)
        return {}
    for page, path in entries:
        if 1 <= page <= page_count:
            starts.setdefault(page, path)
    if not starts:
        return {}
    headings: dict[int, str] = {}
    current: str | None = None
    for page in range(1, page_count + 1):
        current = starts.get(page, current)
        if current is not None:
            headings[page] = current
    return headings


def _flatten_outline(reader: Any, outline: list[Any]) -> list[tuple[int, str]]:
    """``(page, "Parent > Child")`` in document order, without recursion (outlines from
    broken files can be deep) and with a cap on their size."""
    entries: list[tuple[int, str]] = []
    stack: list[tuple[list[Any], int, tuple[str, ...]]] = [(outline, 0, ())]
    last_title: tuple[str, ...] = ()
    while stack and len(entries) < _MAX_OUTLINE_ENTRIES:
        items, index, parents = stack.pop()
        if index >= len(items):
            continue
        stack.append((items, index + 1, parents))
        item = items[index]
        if isinstance(item, list):  # children of the entry just before
            stack.append((item, 0, last_title))
            continue
        title = " ".join(str(getattr(item, "title", "") or "").split())
        last_title = parents + (title,) if title else parents
        page = reader.get_destination_page_number(item)
        if title and page is not None and page >= 0:
            entries.append((page + 1, " > ".join(last_title)))
    return entries


_install_lock = threading.Lock()


class _DebugForwarder(logging.Handler):
    """pypdf logs a WARNING for every robustness fix it applies to a broken file; those
    are not our operators' concern, so they are re-logged at DEBUG under this module."""

    def emit(self, record: logging.LogRecord) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pypdf %s: %s", record.levelname.lower(), record.getMessage())


def _route_pypdf_logs_to_debug() -> None:
    """Unless the application configured the ``pypdf`` logger itself."""
    pypdf_log = logging.getLogger("pypdf")
    with _install_lock:
        if pypdf_log.handlers or not pypdf_log.propagate:
            return
        pypdf_log.addHandler(_DebugForwarder())
        pypdf_log.propagate = False
