"""PdfParser: the parser contract, then what PDFs in the wild need (encryption, scans,
broken files, outlines) and the guards against files built to keep a worker busy."""

from __future__ import annotations

import io
import logging
import time
import zlib
from pathlib import Path

import pytest
from marshmallow import ValidationError
from pypdf import PdfReader, PdfWriter

from spacio.rag.contracts import Blob, InvalidInput
from spacio.testing.contracts.parser import ParserContract, assert_well_formed
from spacio_pdf import PdfOptionsSchema, PdfParser

PDF = "application/pdf"
DOCS = Path(__file__).resolve().parents[3].parent / "shared" / "eval" / "docs" / "pdf"
FOUR_PAGES = DOCS / "py-pdf-sample-files" / "004-pdflatex-4-pages__pdflatex-4-pages.pdf"


def eval_blob(relative: str, **kwargs) -> Blob:
    path = DOCS / relative
    return Blob(path.read_bytes(), PDF, path.name, **kwargs)


def parse(data: bytes, **options) -> object:
    return PdfParser(**options).parse(Blob(data, PDF, "test.pdf"))


def reason_of(data: bytes, **options) -> str:
    with pytest.raises(InvalidInput) as raised:
        parse(data, **options)
    return raised.value.reason


# --------------------------------------------------------------------------- PDFs built here

FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def text_ops(text: str) -> bytes:
    return b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"


def stream(data: bytes, *, compress: bool = False, extra: bytes = b"") -> bytes:
    if compress:
        data, extra = zlib.compress(data, 9), extra + b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def build_pdf(contents: list[bytes], *, compress: bool = False, resources: bytes = b"",
              objects: dict[int, bytes] | None = None, content_extra: bytes = b"") -> bytes:
    """A valid PDF (correct xref offsets) with one page per content stream. Objects 1-3 are
    the catalog, page tree and font; pages start at 10; ``objects`` adds more."""
    body = {1: b"<< /Type /Catalog /Pages 2 0 R >>", 3: FONT}
    kids = []
    for index, content in enumerate(contents):
        number = 10 + 2 * index
        body[number] = stream(content, compress=compress, extra=content_extra if index == 0 else b"")
        body[number + 1] = (b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R"
                            b" >> %s >> /Contents %d 0 R >>" % (resources, number))
        kids.append(b"%d 0 R" % (number + 1))
    body[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    body.update(objects or {})
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(body):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + body[number] + b"\nendobj\n"
    xref, size = len(out), max(body) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number] if number in offsets else b"0000000000 65535 f \n"
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, xref)
    return bytes(out)


def amplified(pages: int = 1) -> bytes:
    """Each page draws one 300-operator form 3,000 times: 30 KB that pypdf needs ~90 s
    per page to read (measured)."""
    form = stream(text_ops("yy") * 300, extra=b" /Type /XObject /Subtype /Form /BBox [0 0 10 10]"
                                               b" /Resources << /Font << /F1 3 0 R >> >>")
    return build_pdf([b"/X1 Do\n" * 3000] * pages + [text_ops("the last page")],
                     resources=b"/XObject << /X1 5 0 R >>", objects={5: form})


# --------------------------------------------------------------------------- contract

class TestPdfParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return PdfParser()

    @pytest.fixture
    def sample_blob(self):
        return Blob(FOUR_PAGES.read_bytes(), PDF, FOUR_PAGES.name)

    @pytest.fixture
    def expected_text(self):
        return "Hello, here is some text without a meaning."


class TestPdfParserOnABuiltFile(ParserContract):
    """The contract again on a tiny file, where truncation and damage hit the structure."""

    @pytest.fixture
    def parser(self):
        return PdfParser()

    @pytest.fixture
    def sample_blob(self):
        return Blob(build_pdf([text_ops("Alpha page one"), text_ops("Beta page two")]), PDF, "built.pdf")

    @pytest.fixture
    def expected_text(self):
        return "Beta page two"


# --------------------------------------------------------------------------- pages

def test_one_section_per_page_with_1_based_page_numbers():
    document = PdfParser().parse(Blob(FOUR_PAGES.read_bytes(), PDF))
    assert document.pages == 4
    assert [s.page for s in document.sections] == [1, 2, 3, 4]


def test_pages_without_text_are_left_out_but_counted():
    document = PdfParser().parse(eval_blob("arxiv/layout-parser-paper-with-empty-pages.pdf"))
    assert document.pages == 4
    assert len(document.sections) == 2
    assert all(s.text.strip() for s in document.sections)


def test_page_numbers_follow_the_page_order():
    document = parse(build_pdf([text_ops("first"), b"", text_ops("third")]))
    assert [(s.page, s.text) for s in document.sections] == [(1, "first"), (3, "third")]
    assert document.pages == 3


def test_the_400_page_pdf_has_400_pages():
    document = PdfParser().parse(eval_blob("unstructured/pdf2image-memory-error-test-400p.pdf"))
    assert document.pages == 400
    assert max(s.page for s in document.sections) <= 400


def test_too_many_pages_is_refused_before_any_text_is_extracted():
    # two pages that would take minutes to read: refusing must not read them
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as raised:
        PdfParser().parse(Blob(amplified(pages=2), PDF, max_pages=2))
    assert raised.value.reason == "too_many_pages"
    assert time.perf_counter() - started < 2


def test_max_pages_equal_to_the_page_count_is_fine():
    assert PdfParser().parse(Blob(FOUR_PAGES.read_bytes(), PDF, max_pages=4)).pages == 4


def test_title_comes_from_the_document_information():
    assert PdfParser().parse(eval_blob("unstructured/fake-memo.pdf")).title == "fake-memo"


def test_a_title_with_control_characters_is_cleaned():
    document = PdfParser().parse(eval_blob("py-pdf-sample-files/007-imagemagick-images__imagemagick-images.pdf"))
    assert document.title == "imagemagick-images"


# --------------------------------------------------------------------------- encryption

@pytest.mark.parametrize("name", [
    "py-pdf-sample-files/005-libreoffice-writer-password__libreoffice-writer-password.pdf",
    "unstructured/password.pdf",
])
def test_a_pdf_that_needs_a_password_is_encrypted(name):
    with pytest.raises(InvalidInput) as raised:
        PdfParser().parse(eval_blob(name))
    assert raised.value.reason == "encrypted"


@pytest.mark.parametrize(("name", "words"), [("unstructured/copy-protected.pdf", "LayoutParser"),
                                             ("unstructured/mv82b.pdf", "BOAT REGISTRATION")])
def test_copy_protected_pdfs_open_with_the_empty_password(name, words):
    assert PdfReader(DOCS / name).is_encrypted
    document = PdfParser().parse(eval_blob(name))
    assert words in document.text


def _encrypted(user_password: str, algorithm: str) -> bytes:
    writer = PdfWriter(clone_from=io.BytesIO(build_pdf([text_ops("secret plans")])))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-128", "AES-256"])
def test_encryption_with_an_empty_user_password_opens(algorithm):
    assert parse(_encrypted("", algorithm)).text == "secret plans"


@pytest.mark.parametrize("algorithm", ["RC4-128", "AES-256"])
def test_encryption_with_a_user_password_is_refused(algorithm):
    assert reason_of(_encrypted("open sesame", algorithm)) == "encrypted"


# --------------------------------------------------------------------------- no text, broken

@pytest.mark.parametrize("name", ["py-pdf-sample-files/007-imagemagick-images__imagemagick-CCITTFaxDecode.pdf",
                                  "py-pdf-sample-files/019-grayscale-image__grayscale-image.pdf",
                                  "unstructured/loremipsum-flat.pdf", "unstructured/single_table.pdf"])
def test_scans_without_ocr_have_no_text_layer(name):
    with pytest.raises(InvalidInput) as raised:
        PdfParser().parse(eval_blob(name))
    assert raised.value.reason == "no_text_layer"


def test_a_page_without_any_text_is_no_text_layer():
    assert reason_of(build_pdf([b"0 0 m 100 100 l S"])) == "no_text_layer"


@pytest.mark.parametrize("name", ["derived-corrupt/bad-header-minimal-document.pdf",
                                  "derived-corrupt/truncated-50pct-2203.06947.pdf",
                                  "derived-corrupt/xref-garbled-minimal-document.pdf",
                                  "derived-corrupt/zero-bytes.pdf",
                                  "py-pdf-sample-files/017-unreadable-meta-data__unreadablemetadata.pdf"])
def test_broken_files_are_corrupt(name):
    with pytest.raises(InvalidInput) as raised:
        PdfParser().parse(eval_blob(name))
    assert raised.value.reason == "corrupt_file"


@pytest.mark.parametrize("data", [b"", b"%PDF-", b"%PDF-1.7\n", b"not a pdf at all", b"%PDF-1.4\n" + bytes(5000),
                                  (DOCS / "derived-corrupt" / "html-renamed-as.pdf").read_bytes()])
def test_things_that_are_not_pdfs_are_corrupt(data):
    assert reason_of(data) == "corrupt_file"


def test_a_cyclic_page_tree_is_corrupt():
    data = build_pdf([text_ops("x")]).replace(b"/Kids [11 0 R]", b"/Kids [11 0 R 2 0 R]")
    assert reason_of(data) == "corrupt_file"


def test_a_page_that_fails_does_not_lose_the_others():
    data = build_pdf([text_ops("broken"), text_ops("second page"), text_ops("third page")],
                     content_extra=b" /Filter /JBIG2Decode")
    document = parse(data)
    assert_well_formed(document)
    assert [s.page for s in document.sections] == [2, 3]
    assert document.metadata["failed_pages"] == [1]


def test_recoverable_structure_errors_still_give_text():
    document = PdfParser().parse(eval_blob("unstructured/invalid-pdf-structure-pdfminer-one-page.pdf"))
    assert document.pages == 2 and "Cybersecurity" in document.text


# --------------------------------------------------------------------------- outline

def test_outline_entries_give_headings_per_page():
    writer = PdfWriter(clone_from=io.BytesIO(build_pdf([text_ops(f"page {n}") for n in range(1, 6)])))
    chapter = writer.add_outline_item(title="Chapter 1", page_number=0)
    writer.add_outline_item(title="Section 1.1", page_number=1, parent=chapter)
    writer.add_outline_item(title="Chapter 2", page_number=3)
    writer.add_outline_item(title="Chapter 2 again", page_number=3)
    out = io.BytesIO()
    writer.write(out)
    document = parse(out.getvalue())
    assert [(s.page, s.heading) for s in document.sections] == [
        (1, "Chapter 1"), (2, "Chapter 1 > Section 1.1"), (3, "Chapter 1 > Section 1.1"),
        (4, "Chapter 2"), (5, "Chapter 2")]


def test_outline_of_an_eval_paper():
    document = PdfParser().parse(eval_blob("arxiv/2203.06947.pdf"))
    assert any(s.heading and "Introduction" in s.heading for s in document.sections)


# --------------------------------------------------------------------------- guards

def test_a_page_whose_content_decodes_to_too_much_is_skipped_quickly():
    bomb = text_ops("xx") * (60_000_000 // 34)  # 60 MB of text operators in a ~180 KB file
    data = build_pdf([bomb, text_ops("the real page")], compress=True)
    assert len(data) < 400_000
    started = time.perf_counter()
    document = parse(data)
    assert time.perf_counter() - started < 5
    assert document.text == "the real page"
    assert document.metadata["failed_pages"] == [1]


def test_a_page_that_takes_too_long_is_skipped():
    started = time.perf_counter()
    document = parse(amplified(), page_time_limit=1)
    assert time.perf_counter() - started < 5
    assert document.text == "the last page"
    assert document.metadata["failed_pages"] == [1]


def test_a_document_that_takes_too_long_fails_with_parse_timeout():
    started = time.perf_counter()
    assert reason_of(amplified(pages=3), time_limit=1) == "parse_timeout"
    assert time.perf_counter() - started < 5


def test_the_slowest_evaluation_pdf_is_well_within_the_limits():
    started = time.perf_counter()
    document = PdfParser().parse(eval_blob("py-pdf-sample-files/009-pdflatex-geotopo__GeoTopo-komprimiert.pdf"))
    assert document.pages == 117 and "failed_pages" not in document.metadata
    assert time.perf_counter() - started < 60


# --------------------------------------------------------------------------- logs, options

def test_pypdf_warnings_are_logged_at_debug_only(caplog):
    parser = PdfParser()
    caplog.set_level(logging.DEBUG, logger="spacio_pdf.parser")
    parser.parse(eval_blob("arxiv/tablib-627mTABLES-2310.07875-p7.pdf"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    forwarded = [r for r in caplog.records if r.name == "spacio_pdf.parser" and "pypdf" in r.getMessage()]
    assert forwarded and all(r.levelno == logging.DEBUG for r in forwarded)


def test_options_are_validated():
    options = PdfOptionsSchema().load({"time_limit": "60", "page_time_limit": 5, "max_page_content_bytes": 2_000_000})
    parser = PdfParser(**options)
    assert (parser.time_limit, parser.page_time_limit, parser.max_page_content_bytes) == (60.0, 5.0, 2_000_000)
    assert PdfOptionsSchema().load({}) == {}
    with pytest.raises(ValidationError):
        PdfOptionsSchema().load({"time_limit": -1})
    with pytest.raises(ValidationError):
        PdfOptionsSchema().load({"password": "x"})


def test_the_entry_point_names_the_parser():
    from importlib.metadata import entry_points

    (entry_point,) = [e for e in entry_points(group="spacio.parsers") if e.name == "pdf"]
    assert entry_point.load() is PdfParser
