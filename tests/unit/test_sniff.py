"""sniff: the media type comes from the bytes; decode_text: any text encoding to str."""

from __future__ import annotations

import base64
import io
import random
import time
import zipfile
from pathlib import Path

import pytest

from spacio.rag.sniff import DOCX, HTML, JSON, MARKDOWN, PDF, SUPPORTED, TEXT, decode_text, sniff

DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "docs"
ALL_DOCS = sorted(p for p in DOCS.rglob("*") if p.is_file())


def _expected_type(path: Path) -> str:
    """What every evaluation file is, by content (checked by hand, see MANIFEST.md)."""
    name = path.name
    if name == "html-renamed-as.pdf":
        return HTML  # an HTML page with a .pdf name
    suffix = path.suffix.lower()
    return {".pdf": PDF, ".docx": DOCX, ".html": HTML, ".htm": HTML, ".md": MARKDOWN, ".txt": TEXT,
            ".json": JSON}[suffix]


def test_the_evaluation_set_is_there():
    assert len(ALL_DOCS) > 100, f"expected the evaluation documents in {DOCS}"


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_evaluation_file_sniffs_as_what_it_is(path):
    assert sniff(path.read_bytes(), path.name) == _expected_type(path)


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_name_does_not_decide_the_type(path):
    """The same bytes under a misleading name sniff the same, except Markdown/plain text,
    which only the name tells apart, and empty files, which have no content to judge."""
    data = path.read_bytes()
    expected = _expected_type(path)
    if not data.strip() or expected in (MARKDOWN, TEXT):
        return
    for lie in ("report.pdf", "notes.txt", "page.html", "doc.docx", "data.json", "noextension"):
        assert sniff(data, lie) == expected, lie


# --------------------------------------------------------------------------- by content

def test_pdf_named_txt_is_pdf_and_html_named_pdf_is_html():
    pdf = (DOCS / "pdf" / "py-pdf-sample-files" / "001-trivial__minimal-document.pdf").read_bytes()
    html = (DOCS / "pdf" / "derived-corrupt" / "html-renamed-as.pdf").read_bytes()
    assert sniff(pdf, "notes.txt") == PDF
    assert sniff(html, "report.pdf") == HTML


def test_pdf_header_may_follow_junk_within_the_first_kilobyte():
    assert sniff(b"\x00" * 500 + b"%PDF-1.7\n...", "") == PDF


def test_a_pdf_with_a_damaged_header_still_sniffs_as_pdf():
    """So the PDF parser can report it as corrupt instead of "unsupported"."""
    data = (DOCS / "pdf" / "derived-corrupt" / "bad-header-minimal-document.pdf").read_bytes()
    assert not data.startswith(b"%PDF")
    assert sniff(data, "x.bin") == PDF


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_docx_is_a_zip_with_a_word_document_whatever_its_name():
    docx = _zip({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>"})
    assert sniff(docx, "archive.zip") == DOCX


@pytest.mark.parametrize("entries", [
    {"xl/workbook.xml": b"<workbook/>", "[Content_Types].xml": b"<Types/>"},  # xlsx
    {"ppt/presentation.xml": b"<p/>"},  # pptx
    {"mimetype": b"application/vnd.oasis.opendocument.text", "content.xml": b"<x/>"},  # odt
    {"readme.txt": b"hello"},  # any zip
])
def test_other_zips_are_unsupported(entries):
    assert sniff(_zip(entries), "file.docx") is None


def test_a_zip_that_only_mentions_the_word_document_is_not_docx():
    assert sniff(_zip({"notes.txt": b"see word/document.xml"}), "x.docx") is None
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("readme.txt", b"PK\x03\x04 word/document.xml")
    assert sniff(stored.getvalue(), "x.docx") is None


def test_a_truncated_docx_still_sniffs_as_docx_so_it_fails_as_corrupt():
    data = (DOCS / "docx" / "simple.docx").read_bytes()
    assert sniff(data[: len(data) // 2], "simple.docx") == DOCX


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + bytes(64),
    b"\xff\xd8\xff\xe0" + bytes(64),
    b"GIF89a" + bytes(64),
    b"\x7fELF\x02\x01\x01" + bytes(64),
    b"MZ\x90\x00" + bytes(64),
    b"\x1f\x8b\x08\x00" + bytes(64),
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64),  # legacy .doc / encrypted Office
    b"{\\rtf1\\ansi hello}",
    b"%!PS-Adobe-3.0\n",
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"><text>hi</text></svg>',
    b"<svg width='10'></svg>",
], ids=["png", "jpeg", "gif", "elf", "exe", "gzip", "ole", "rtf", "postscript", "svg-xml", "svg"])
def test_images_executables_and_other_formats_are_unsupported(data):
    assert sniff(data, "document.txt") is None


@pytest.mark.parametrize("seed", range(5))
def test_random_binary_is_unsupported(seed):
    assert sniff(random.Random(seed).randbytes(10_000), "x.txt") is None


def test_binary_without_nul_bytes_is_unsupported():
    data = bytes(b for b in random.Random(9).randbytes(20_000) if b)
    assert sniff(data, "x.txt") is None


# --------------------------------------------------------------------------- text flavours

@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be", "cp1252", "latin-1"])
def test_text_in_any_encoding_is_text(encoding):
    data = "Grüße aus Köln, voilà : l'été est très chaud.\nZweite Zeile.\n".encode(encoding)
    assert sniff(data, "letter") == TEXT


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-32-be", "cp1252"])
def test_html_in_any_encoding_is_html(encoding):
    data = "<!DOCTYPE html><html><body><p>Grüße</p></body></html>".encode(encoding)
    assert sniff(data, "page.txt") == HTML


@pytest.mark.parametrize("start", [
    "<!doctype html>", "<HTML lang=en>", '<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml">',
    "<!-- generated -->\n<html>", "\n\n  <head><title>x</title></head>", "<div class='a'>", "<p>Hello", "<table>",
    "<h1>Title</h1>", "<body>",
])
def test_html_is_recognised_by_its_first_tag(start):
    assert sniff(f"{start}\n<p>text</p>".encode(), "") == HTML


def test_markdown_is_chosen_by_extension():
    data = b"Just a line of text.\n"
    assert sniff(data, "README.md") == MARKDOWN
    assert sniff(data, "notes.markdown") == MARKDOWN
    assert sniff(data, "notes.txt") == TEXT
    assert sniff(data, "notes") == TEXT


def test_markdown_without_extension_needs_clear_structure():
    structured = b"# Title\n\nSome text.\n\n## Usage\n\nMore text.\n"
    assert sniff(structured, "README") == MARKDOWN
    assert sniff(b"# Title\n\n```python\nprint(1)\n```\n", "") == MARKDOWN
    assert sniff(b"# only one heading\n\nand text\n", "") == TEXT
    assert sniff(structured, "notes.txt") == TEXT  # the user said plain text


def test_a_markdown_file_that_starts_with_html_stays_markdown():
    data = b'<h1 align="center">Project</h1>\n\n## Install\n\npip install it\n'
    assert sniff(data, "README.md") == MARKDOWN
    assert sniff(data, "README.html") == HTML
    assert sniff(b"<!DOCTYPE html><html><body>x</body></html>", "page.md") == HTML


@pytest.mark.parametrize("data", [
    b'{"a": 1}', b'[1, 2, 3]', b'  \n{\n  "name": "x",\n  "items": []\n}\n', b"[]", b"{}",
    b'[{"id": 1}, {"id": 2}]', '{"città": "Zürich"}'.encode("utf-16"),
    b'{"a": 1}\n{"a": 2}\n',  # JSON Lines
])
def test_json_is_recognised_by_content(data):
    assert sniff(data, "data.txt") == JSON


@pytest.mark.parametrize("data", [b"[link](http://x) and text", b"{ this is not json", b"[1] A reference\n"])
def test_text_that_merely_starts_with_a_bracket_is_not_json(data):
    assert sniff(data, "x") == TEXT


def test_empty_files_take_the_type_their_name_gives():
    assert sniff(b"", "zero.pdf") == PDF
    assert sniff(b"", "empty.txt") == TEXT
    assert sniff(b"", "empty.md") == MARKDOWN
    assert sniff(b"", "image.png") == TEXT
    assert sniff(b"", "") == TEXT


def test_sniff_answers_only_supported_types_or_none():
    assert {PDF, DOCX, HTML, MARKDOWN, JSON, TEXT} == SUPPORTED


# --------------------------------------------------------------------------- speed

def test_sniffing_25_mb_takes_milliseconds():
    text = (DOCS / "txt" / "book-war-and-peace-1225p.txt").read_bytes() * 8
    cases = [text[:25_000_000], random.Random(3).randbytes(25_000_000),
             text[:25_000_000].decode().encode("utf-16"), _zip({"word/document.xml": text[:25_000_000]})]
    for data in cases:
        started = time.perf_counter()
        sniff(data, "big")
        assert time.perf_counter() - started < 0.25


def test_decoding_25_mb_of_legacy_text_is_fast():
    data = (DOCS / "txt" / "book-war-and-peace-1225p.txt").read_bytes() * 8
    legacy = data[:25_000_000].decode(errors="ignore").encode("cp1252", errors="replace") + "Grüße".encode("cp1252")
    started = time.perf_counter()
    text = decode_text(legacy)
    assert time.perf_counter() - started < 3
    assert text.endswith("Grüße")


# --------------------------------------------------------------------------- decode_text

SENTENCE = "This is a test document to use for unit tests."


@pytest.mark.parametrize("name", ["fake-text.txt", "fake-text-utf-16.txt", "fake-text-utf-16-le.txt",
                                  "fake-text-utf-16-be.txt", "fake-text-utf-32.txt"])
def test_utf16_and_utf32_with_and_without_bom_decode(name):
    text = decode_text((DOCS / "txt" / name).read_bytes())
    assert text.startswith(SENTENCE)
    assert "Doylestown, PA 18901" in text
    assert "\x00" not in text and "\ufeff" not in text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_wide_encodings_without_bom_decode(encoding):
    text = "Grüße, 東京 and 😀 — plain Latin text dominates this sentence.\n" * 3
    assert decode_text(text.encode(encoding)) == text


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_a_byte_order_mark_wins_and_is_removed(encoding):
    assert decode_text("日本語のテキスト".encode(encoding)) == "日本語のテキスト"


def test_cp1252_html_decodes_right():
    text = decode_text((DOCS / "html" / "fake-html-cp1252.html").read_bytes())
    assert "Die schöne Frau" in text and "köstlich" in text and "15,50 €" in text
    assert "L'été était très chaud" in text
    assert "El niño comió paella con ñoquis" in text


def test_latin1_markdown_decodes_right():
    text = decode_text((DOCS / "md" / "umlauts-non-utf8.md").read_bytes())
    assert text == decode_text((DOCS / "md" / "umlauts-utf8.md").read_bytes())
    assert "können" in text and "äöüß" in text


def test_iso_8859_8_hebrew_decodes_right():
    """The evaluation file holds base64 of iso-8859-8-i bytes (as in unstructured's tests)."""
    raw = base64.b64decode((DOCS / "txt" / "hebrew-text-base64-iso88598i.txt").read_bytes())
    assert decode_text(raw).strip() == raw.decode("iso-8859-8").strip()
    assert "עדכון Tesla" in decode_text(raw)


@pytest.mark.parametrize(("text", "encoding"), [
    ("Все люди рождаются свободными и равными в своем достоинстве и правах.", "cp1251"),
    ("Все люди рождаются свободными и равными в своем достоинстве и правах.", "koi8-r"),
    ("Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια.", "iso-8859-7"),
    ("Wszyscy ludzie rodzą się wolni i równi pod względem swej godności.", "cp1250"),
    ("Preis 15,50 € – „Zitat“ und Grüße", "cp1252"),
    ("日本語のテキストです。これはテストの文章です。", "shift_jis"),
    ("中文文本测试，这是一个测试句子。", "gbk"),
    ("한국어 텍스트 테스트입니다. 모든 인간은 태어날 때부터 자유롭다.", "euc-kr"),
])
def test_legacy_charsets_decode_right(text, encoding):
    assert decode_text(text.encode(encoding)) == text


def test_utf8_with_one_bad_byte_stays_utf8():
    data = "naïve café — résumé".encode() + b"\xff" + " déjà vu".encode()
    assert decode_text(data) == "naïve café — résumé\ufffd déjà vu"


def test_empty_bytes_decode_to_an_empty_string():
    assert decode_text(b"") == ""


@pytest.mark.parametrize("start", [b"BMP receptor IA is required", b"MZ1 cells were", b"ID3 gene", b"BZh1 strain",
                                   b"RIFF domains", b"OggS is a protein"])
def test_text_that_starts_like_a_binary_signature_is_text(start):
    """A SciFact abstract begins "BMP receptor IA ...": a text, not a BMP image."""
    assert sniff(start + b" in mammalian neural crest cells for development.\n", "abstract.txt") == "text/plain"


@pytest.mark.parametrize("magic", [b"BM", b"MZ", b"ID3", b"RIFF", b"GIF89a"])
def test_letter_signatures_followed_by_binary_are_not_text(magic):
    assert sniff(magic + b"\x00\x01\x02\x03\x90\x00\x00\x00" * 8, "file.txt") is None
