"""DocxParser: the parser contract, WordprocessingML features, and hostile archives."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from marshmallow import ValidationError

from spacio.rag.contracts import Blob, InvalidInput
from spacio.testing.contracts.parser import ParserContract, assert_well_formed
from spacio_docx import DocxOptionsSchema, DocxParser

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
DOCS = Path(__file__).resolve().parents[3].parent / "shared" / "eval" / "docs" / "docx"
W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
NAMESPACES = (W + ' xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'
              ' xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
              ' xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape"'
              ' xmlns:v="urn:schemas-microsoft-com:vml"')
REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships/"


# --------------------------------------------------------------------------- building documents

def p(text: str = "", style: str | None = None, num: tuple[int, int] | None = None, runs: str | None = None) -> str:
    ppr = ""
    if style or num:
        ppr = "<w:pPr>"
        ppr += f'<w:pStyle w:val="{style}"/>' if style else ""
        ppr += f'<w:numPr><w:ilvl w:val="{num[1]}"/><w:numId w:val="{num[0]}"/></w:numPr>' if num else ""
        ppr += "</w:pPr>"
    if runs is None:
        runs = f'<w:r><w:t xml:space="preserve">{text}</w:t></w:r>'
    return f"<w:p>{ppr}{runs}</w:p>"


def table(*rows: list[str]) -> str:
    body = "".join("<w:tr>" + "".join(f"<w:tc>{cell if cell.startswith('<') else p(cell)}</w:tc>" for cell in row)
                   + "</w:tr>" for row in rows)
    return f"<w:tbl><w:tblPr/>{body}</w:tbl>"


STYLES = f"""<w:styles {W}>
  <w:style w:type="paragraph" w:styleId="Normal"><w:name w:val="Normal"/></w:style>
  <w:style w:type="paragraph" w:styleId="Title"><w:name w:val="Title"/></w:style>
  <w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/><w:basedOn w:val="Normal"/></w:style>
  <w:style w:type="paragraph" w:styleId="Heading2"><w:name w:val="heading 2"/><w:basedOn w:val="Normal"/></w:style>
  <w:style w:type="paragraph" w:styleId="Chapter"><w:name w:val="My Chapter"/><w:basedOn w:val="Heading1"/></w:style>
  <w:style w:type="paragraph" w:styleId="Outline3"><w:name w:val="Custom"/>
    <w:pPr><w:outlineLvl w:val="2"/></w:pPr></w:style>
  <w:style w:type="paragraph" w:styleId="ListBullet"><w:name w:val="List Bullet"/>
    <w:pPr><w:numPr><w:numId w:val="2"/></w:numPr></w:pPr></w:style>
</w:styles>"""

NUMBERING = f"""<w:numbering {W}>
  <w:abstractNum w:abstractNumId="0">
    <w:lvl w:ilvl="0"><w:start w:val="1"/><w:numFmt w:val="decimal"/><w:lvlText w:val="%1."/></w:lvl>
    <w:lvl w:ilvl="1"><w:start w:val="1"/><w:numFmt w:val="lowerLetter"/><w:lvlText w:val="%2)"/></w:lvl>
    <w:lvl w:ilvl="2"><w:start w:val="1"/><w:numFmt w:val="lowerRoman"/><w:lvlText w:val="%1.%2.%3"/></w:lvl>
  </w:abstractNum>
  <w:abstractNum w:abstractNumId="1">
    <w:lvl w:ilvl="0"><w:numFmt w:val="bullet"/><w:lvlText w:val="\u2022"/></w:lvl>
  </w:abstractNum>
  <w:num w:numId="1"><w:abstractNumId w:val="0"/></w:num>
  <w:num w:numId="2"><w:abstractNumId w:val="1"/></w:num>
</w:numbering>"""


def make_docx(body: str, *, styles: str | None = STYLES, numbering: str | None = NUMBERING,
              parts: dict[str, str] | None = None, relations: dict[str, str] | None = None,
              title: str | None = None, prolog: str = "") -> bytes:
    """A minimal but complete DOCX. ``relations``: part name → relationship type suffix."""
    relations = dict(relations or {})
    files = {"word/document.xml": f'<?xml version="1.0" encoding="UTF-8"?>{prolog}<w:document {NAMESPACES}>'
                                  f"<w:body>{body}<w:sectPr/></w:body></w:document>"}
    if styles:
        files["word/styles.xml"], relations["styles.xml"] = styles, "styles"
    if numbering:
        files["word/numbering.xml"], relations["numbering.xml"] = numbering, "numbering"
    if title is not None:
        files["docProps/core.xml"] = ('<cp:coreProperties xmlns:cp="http://schemas.openxmlformats.org/package/2006/'
                                      'metadata/core-properties" xmlns:dc="http://purl.org/dc/elements/1.1/">'
                                      f"<dc:title>{title}</dc:title></cp:coreProperties>")
    files.update(parts or {})
    rels = "".join(f'<Relationship Id="rId{i}" Type="{REL}{kind}" Target="{target}"/>'
                   for i, (target, kind) in enumerate(relations.items(), 1))
    files["word/_rels/document.xml.rels"] = (
        f'<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{rels}</Relationships>')
    files["_rels/.rels"] = ('<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
                            f'<Relationship Id="rId1" Type="{REL}officeDocument" Target="word/document.xml"/>'
                            "</Relationships>")
    files["[Content_Types].xml"] = '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text.encode() if isinstance(text, str) else text)
    return buffer.getvalue()


def parse(data: bytes, **options):
    return DocxParser(**options).parse(Blob(data, DOCX, "test.docx"))


def refusal(data: bytes, **options) -> InvalidInput:
    with pytest.raises(InvalidInput) as raised:
        parse(data, **options)
    return raised.value


def reason_of(data: bytes, **options) -> str:
    return refusal(data, **options).reason


def eval_doc(name: str):
    return DocxParser().parse(Blob((DOCS / name).read_bytes(), DOCX, name))


# --------------------------------------------------------------------------- contract

class TestDocxParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return DocxParser()

    @pytest.fixture
    def sample_blob(self):
        body = (p("Quarterly report", "Heading1") + p("Revenue grew by 12 % in the third quarter.")
                + table(["Region", "Sales"], ["North", "10"]) + p("Costs", "Heading2") + p("Flat.", num=(1, 0)))
        return Blob(make_docx(body), DOCX, "report.docx")

    @pytest.fixture
    def expected_text(self):
        return "Revenue grew by 12 % in the third quarter."


class TestDocxParserOnAWordFile(ParserContract):
    @pytest.fixture
    def parser(self):
        return DocxParser()

    @pytest.fixture
    def sample_blob(self):
        return Blob((DOCS / "example-list-items-multiple.docx").read_bytes(), DOCX, "lists.docx")

    @pytest.fixture
    def expected_text(self):
        return "1) This is simply dummy text of the printing and typesetting industry."


# --------------------------------------------------------------------------- structure

def test_headings_give_sections_with_their_path():
    document = parse(make_docx(
        p("Intro text.") + p("Guide", "Heading1") + p("a") + p("Install", "Heading2") + p("b")
        + p("Deep", "Outline3") + p("c") + p("Appendix", "Chapter") + p("d")))
    assert [(s.heading, s.text) for s in document.sections] == [
        (None, "Intro text."), ("Guide", "Guide\n\na"), ("Guide > Install", "Install\n\nb"),
        ("Guide > Install > Deep", "Deep\n\nc"), ("Appendix", "Appendix\n\nd")]
    assert document.pages is None and all(s.page is None for s in document.sections)


def test_an_outline_level_on_the_paragraph_makes_a_heading():
    runs = '<w:pPr><w:outlineLvl w:val="0"/></w:pPr><w:r><w:t>Direct</w:t></w:r>'
    document = parse(make_docx(p(runs=runs) + p("body")))
    assert document.sections[0].heading == "Direct"


def test_title_comes_from_the_properties_or_the_title_style():
    assert parse(make_docx(p("Styled title", "Title") + p("x"))).title == "Styled title"
    assert parse(make_docx(p("Styled title", "Title") + p("x"), title="From properties")).title == "From properties"


def test_lists_get_their_bullets_and_numbers():
    document = parse(make_docx(
        p("one", num=(1, 0)) + p("sub a", num=(1, 1)) + p("sub b", num=(1, 1)) + p("deep", num=(1, 2))
        + p("two", num=(1, 0)) + p("sub again", num=(1, 1)) + p("dot", num=(2, 0)) + p("styled", "ListBullet")
        + p("no list", num=(0, 0))))
    assert document.text == ("1. one\n  a) sub a\n  b) sub b\n    1.b.i deep\n2. two\n  a) sub again\n- dot\n"
                             "- styled\n\nno list")


def test_absurd_list_starts_do_not_blow_up():
    numbering = NUMBERING.replace('<w:start w:val="1"/><w:numFmt w:val="lowerLetter"/>',
                                  '<w:start w:val="999999999999"/><w:numFmt w:val="lowerLetter"/>')
    document = parse(make_docx(p("one", num=(1, 0)) + p("sub", num=(1, 1)), numbering=numbering))
    assert document.text == "1. one\n  999999999999) sub"


def test_tables_are_rendered_row_by_row():
    nested = table(["n1", "n2"], ["n3", "n4"])
    document = parse(make_docx(p("Before") + table(["Name", "", "Price"], ["Apples", "", "1.99"],
                                                    ["", "", ""], ["Box", nested, "x"]) + p("After")))
    assert document.text == "Before\n\nName | Price\nApples | 1.99\nBox | n1 | n2 ; n3 | n4 | x\n\nAfter"


def test_rows_and_cells_inside_content_controls_are_read():
    sdt_row = "<w:sdt><w:sdtContent><w:tr><w:tc>" + p("in sdt row") + "</w:tc></w:tr></w:sdtContent></w:sdt>"
    control = "<w:sdt><w:sdtPr/><w:sdtContent>" + p("control") + "</w:sdtContent></w:sdt>"
    body = "<w:tbl>" + sdt_row + "</w:tbl>" + control
    assert parse(make_docx(body)).text == "in sdt row\n\ncontrol"


def test_visible_text_only():
    runs = ('<w:r><w:t>Keep </w:t></w:r>'
            '<w:hyperlink r:id="rId9"><w:r><w:t>link</w:t></w:r></w:hyperlink>'
            '<w:del><w:r><w:delText>deleted </w:delText></w:r></w:del>'
            '<w:ins><w:r><w:t> inserted</w:t></w:r></w:ins>'
            '<w:r><w:fldChar w:fldCharType="begin"/></w:r><w:r><w:instrText> PAGE \\* MERGEFORMAT </w:instrText></w:r>'
            '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t> 7</w:t></w:r>'
            '<w:r><w:fldChar w:fldCharType="end"/></w:r>'
            '<w:r><w:tab/><w:t>after tab</w:t><w:br/><w:t>next line</w:t><w:noBreakHyphen/><w:t>x</w:t></w:r>'
            '<w:r><w:rPr><w:vanish/></w:rPr><w:t xml:space="preserve"> </w:t></w:r>')
    assert parse(make_docx(p(runs=runs))).text == "Keep link inserted 7 after tab\nnext line-x"


def test_a_text_box_is_read_once_despite_its_fallback_copy():
    box = (f'<w:r><mc:AlternateContent><mc:Choice Requires="wps"><w:drawing><wps:txbx><w:txbxContent>{p("in the box")}'
           f'</w:txbxContent></wps:txbx></w:drawing></mc:Choice><mc:Fallback><w:pict><v:textbox><w:txbxContent>'
           f'{p("in the box")}</w:txbxContent></v:textbox></w:pict></mc:Fallback></mc:AlternateContent></w:r>'
           '<w:r><w:t>Anchor</w:t></w:r>')
    assert parse(make_docx(p(runs=box))).text == "Anchor\n\nin the box"


def test_headers_footers_and_notes_come_last_once_each():
    header = f"<w:hdr {W}>{p('ACME confidential')}</w:hdr>"
    footer = f"<w:ftr {W}>{p('ACME confidential')}{p('12')}{p('Page 3 of 9')}</w:ftr>"
    notes = f'<w:footnotes {W}><w:footnote w:id="1">{p("A footnote.")}</w:footnote></w:footnotes>'
    data = make_docx(p("Body."), parts={"word/header1.xml": header, "word/footer1.xml": footer,
                                        "word/footnotes.xml": notes},
                     relations={"header1.xml": "header", "footer1.xml": "footer", "footnotes.xml": "footnotes"})
    document = parse(data)
    assert [s.text for s in document.sections] == ["Body.", "ACME confidential\nPage 3 of 9\nA footnote."]
    assert [s.text for s in parse(data, include_headers_footers=False).sections] == ["Body."]


def test_a_document_without_styles_or_numbering_parts():
    document = parse(make_docx(p("plain", num=(5, 0)), styles=None, numbering=None))
    assert document.text == "- plain"


def test_an_empty_document_has_no_sections():
    assert parse(make_docx(p("") + p("   "))).sections == ()


# --------------------------------------------------------------------------- evaluation files

def test_handbook_headings_and_speed():
    started = time.perf_counter()
    document = eval_doc("handbook-872p.docx")
    assert time.perf_counter() - started < 10
    headings = {s.heading for s in document.sections}
    assert "CHAPTER 1 – INTRODUCTION > A. PURPOSE" in headings
    assert len(document.text) > 500_000


def test_eval_lists_tables_and_headers():
    lists = eval_doc("example-list-items-multiple.docx").text
    assert "  a) The quick brown fox jumps over the lazy dog." in lists
    assert "    i) Trying various lists." in lists
    assert "a | >b< | c" in eval_doc("docx-tables.docx").text
    assert "Nested Header Col 1 | Nested Header Col 2" in eval_doc("fake_table_nested.docx").text
    assert "First header para" in eval_doc("docx-hdrftr.docx").text


@pytest.mark.parametrize("path", sorted(DOCS.glob("*.docx")), ids=lambda path: path.name)
def test_every_eval_docx_gives_text(path):
    document = DocxParser().parse(Blob(path.read_bytes(), DOCX, path.name))
    assert_well_formed(document)
    assert document.text.strip()


# --------------------------------------------------------------------------- hostile archives

def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_zip_bomb_is_refused_before_inflating():
    bomb = _zip({"word/document.xml": b"<w:document " + W.encode() + b"><w:body>" + b" " * 50_000_000})
    assert len(bomb) < 200_000
    started = time.perf_counter()
    assert reason_of(bomb) == "archive_too_large"
    assert time.perf_counter() - started < 0.5


def test_an_archive_declaring_too_much_in_total_is_refused():
    import random

    noise = {f"word/media/image{i}.bin": random.Random(i).randbytes(1_000_000) for i in range(4)}
    data = make_docx(p("x"), parts=noise)  # incompressible: the ratio is fine, the total is not
    assert reason_of(data, max_uncompressed_bytes=3_000_000) == "archive_too_large"
    assert parse(data).text == "x"


def test_too_many_entries_are_refused():
    data = make_docx(p("x"), parts={f"customXml/item{i}.xml": "<a/>" for i in range(20)})
    assert reason_of(data, max_entries=20) == "archive_too_large"
    assert parse(data).text == "x"


def test_tens_of_thousands_of_entries_are_refused_quickly():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("word/document.xml", f"<w:document {W}><w:body/></w:document>")
        for i in range(50_000):
            archive.writestr(f"{i}", b"")
    started = time.perf_counter()
    assert reason_of(buffer.getvalue()) == "archive_too_large"
    assert time.perf_counter() - started < 0.5


def test_a_directory_that_understates_a_size_cannot_inflate_more():
    data = bytearray(make_docx(p("the real text is much longer than ten bytes")))
    # find document.xml's central directory record and declare 10 bytes uncompressed
    name = b"word/document.xml"
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    struct.pack_into("<I", data, at + 24, 10)
    assert reason_of(bytes(data)) == "corrupt_file"


def test_entity_expansion_is_refused():
    laughs = ('<!DOCTYPE d [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
              '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>')
    started = time.perf_counter()
    assert reason_of(make_docx(p("&d;"), prolog=laughs)) == "corrupt_file"
    assert time.perf_counter() - started < 0.5


def test_external_entities_are_refused():
    xxe = '<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    with pytest.raises(InvalidInput) as raised:
        parse(make_docx(p("&x;"), prolog=xxe))
    assert raised.value.reason == "corrupt_file"
    assert "root:" not in raised.value.message


def test_a_dtd_in_another_part_is_refused():
    styles = '<?xml version="1.0"?><!DOCTYPE s [<!ENTITY e "x">]>' + STYLES
    assert reason_of(make_docx(p("x"), styles=styles)) == "corrupt_file"


def test_deep_nesting_does_not_crash():
    runs = "<w:smartTag>" * 20_000 + "<w:r><w:t>deep</w:t></w:r>" + "</w:smartTag>" * 20_000
    assert parse(make_docx(p(runs=runs))).text == "deep"


@pytest.mark.parametrize("data", [
    b"", b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b"not a zip",
    _zip({"readme.txt": b"hello"}),  # a zip, not a Word document
    _zip({"word/document.xml": b"<w:document><w:body><w:p>unclosed"}),  # malformed XML
    (DOCS / "simple.docx").read_bytes()[:20_000],  # truncated
])
def test_broken_or_foreign_files_are_corrupt(data):
    assert reason_of(data) == "corrupt_file"


def test_an_encrypted_zip_entry_is_encrypted():
    data = bytearray(make_docx(p("x")))
    name = b"word/document.xml"
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(name))
    struct.pack_into("<H", data, at + 8, struct.unpack_from("<H", data, at + 8)[0] | 1)
    assert reason_of(bytes(data)) == "encrypted"


# --------------------------------------------------------------------------- options

def test_options_are_validated():
    options = DocxOptionsSchema().load({"max_entries": "50", "max_compression_ratio": 20,
                                        "include_headers_footers": "false"})
    parser = DocxParser(**options)
    assert parser.limits.max_entries == 50 and parser.limits.max_compression_ratio == 20
    assert parser.include_headers_footers is False
    with pytest.raises(ValidationError):
        DocxOptionsSchema().load({"max_entries": 0})


def test_the_entry_point_names_the_parser():
    from importlib.metadata import entry_points

    (entry_point,) = [e for e in entry_points(group="spacio.parsers") if e.name == "docx"]
    assert entry_point.load() is DocxParser


# --------------------------------------------------------------------------- hostile archives: time and memory

def bounded(action, seconds: float, megabytes: float):
    """Run ``action`` twice: timed, then under tracemalloc for its peak of Python-allocated
    memory (zlib's and expat's buffers included; tracemalloc slows it, so the time is taken
    without it). Both are printed (``pytest -s``) and asserted; returns the first result."""
    started = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        action()
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    print(f"\n  {elapsed:.3f} s, peak {peak:.1f} MiB (limits {seconds} s, {megabytes} MiB)")
    assert elapsed < seconds and peak < megabytes, (elapsed, peak)
    return result


def deflate_bomb(size: int, name: str = "word/document.xml", prefix: bytes = b"", extra: dict | None = None) -> bytes:
    """An honest zip (true sizes, true CRC) whose ``name`` inflates to ``size`` bytes: ``prefix``
    then blanks. One compressed MiB ends in a full flush, so it can be repeated as is."""
    unit = b" " * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(unit) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = size // len(unit)
    stream = head + repeat * count + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(unit, crc)
    total = len(prefix) + count * len(unit)
    assert total < 1 << 32  # no zip64 needed
    out, central = io.BytesIO(), io.BytesIO()
    files = [(name.encode(), stream, crc, total, 8)]
    for other, data in (extra or {}).items():
        files.append((other.encode(), data, zlib.crc32(data), len(data), 0))
    for encoded, data, crc32, plain, method in files:
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc32, len(data), plain,
                              len(encoded), 0) + encoded + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc32, len(data),
                                  plain, len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
    directory = central.getvalue()
    return out.getvalue() + directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(files), len(files),
                                                   len(directory), out.tell(), 0)


def test_a_bomb_of_two_gigabytes_is_refused_from_its_directory():
    bomb = deflate_bomb(2 << 30, prefix=f"<w:document {W}><w:body><w:p><w:r><w:t>".encode())
    assert len(bomb) < 3_000_000
    info = zipfile.ZipFile(io.BytesIO(bomb)).getinfo("word/document.xml")
    assert info.file_size > 2 << 30
    error = bounded(lambda: refusal(bomb), seconds=0.5, megabytes=16)
    assert error.reason == "archive_too_large" and "at most 268435456" in error.message


def test_the_bomb_is_honest(tmp_path):
    """The bomb really inflates to what it declares (checked on a small one)."""
    bomb = deflate_bomb(5 << 20, prefix=b"<x>")
    with zipfile.ZipFile(io.BytesIO(bomb)) as archive:
        assert archive.read("word/document.xml") == b"<x>" + b" " * (5 << 20)  # CRC checked too


def _paragraph_docx(xml_piece: bytes, size: int, per_paragraph: bool = False) -> bytes:
    """A main document of about ``size`` bytes: ``xml_piece`` repeated inside one paragraph,
    or as many paragraphs; compressed below the ratio limit (random words)."""
    import random

    words = random.Random(7)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("word/document.xml", "w") as stream:
            stream.write(f"<w:document {W}><w:body>".encode())
            stream.write(b"" if per_paragraph else b"<w:p>")
            written = 0
            while written < size:
                salt = "".join(words.choice("bcdfghjklmnpqrstvwxz") for _ in range(6)).encode()
                piece = xml_piece.replace(b"SALT", salt) * 64
                piece = b"<w:p>" + piece + b"</w:p>" if per_paragraph else piece
                stream.write(piece)
                written += len(piece)
            stream.write(b"" if per_paragraph else b"</w:p>")
            stream.write(b"</w:body></w:document>")
    return buffer.getvalue()


def test_one_huge_paragraph_under_the_ratio_limit_stops_at_the_block_limit():
    """100 MB of XML in one paragraph, compressed 50:1 (under the ratio limit): refused once
    16 MiB are read. Before the block limit such a paragraph took 10 s and 2.9 GB."""
    data = _paragraph_docx(b"<w:r><w:t>SALT la la la la la la la la la la la la la la la</w:t></w:r>", 100 << 20)
    assert len(data) < 8_000_000
    assert bounded(lambda: refusal(data), seconds=10, megabytes=96).reason == "document_too_large"


@pytest.mark.parametrize("piece", [
    b"<w:r><w:t>SALT  a  b  c  d  e  f  g  h</w:t></w:r>",  # a blank run every other character
    b"<w:r><w:t>SALT</w:t><w:br/><w:t>a</w:t><w:br/><w:t>b</w:t><w:br/></w:r>",  # a line per word
    b"<w:r><w:t>a</w:t></w:r><w:r><w:t>SALT</w:t></w:r>",  # an element per character
], ids=["blanks", "breaks", "runs"])
def test_the_worst_paragraph_under_the_block_limit_stays_bounded(piece):
    """The dearest shapes of text just under the block limit (4 MiB here; at the default
    16 MiB the peaks are 100-170 MiB and 3-10 s): memory stays within ~12 times the block.
    defusedxml's parser is pure Python: about 6 µs per element."""
    data = _paragraph_docx(piece, 4 << 20)
    document = bounded(lambda: parse(data, max_block_bytes=5 << 20), seconds=15, megabytes=12 * 5)
    assert len(document.sections) == 1 and len(document.text) > 300_000
    assert reason_of(data, max_block_bytes=3 << 20) == "document_too_large"


def test_a_document_over_the_text_limit_fails_as_too_large():
    data = _paragraph_docx(b"<w:r><w:t>SALT words of a long document</w:t></w:r>", 2 << 20, per_paragraph=True)
    assert parse(data).text  # within the default limits
    error = bounded(lambda: refusal(data, max_text_chars=100_000), seconds=2, megabytes=64)
    assert error.reason == "document_too_large"


def test_overlapping_entries_cannot_multiply_one_inflation():
    """A non-recursive zip bomb: many directory entries pointing at the same compressed data.
    Their declared sizes add up, so the total limit refuses it before anything inflates."""
    import random

    noise = random.Random(3).randbytes(1 << 20)  # incompressible: each entry's ratio is 1
    data = bytearray(_zip({"word/document.xml": f"<w:document {W}><w:body/></w:document>".encode(),
                           "word/media/a.bin": noise}, compression=zipfile.ZIP_STORED))
    end = data.rfind(b"PK\x05\x06")
    directory_size, directory_offset = struct.unpack_from("<II", data, end + 12)
    directory = bytes(data[directory_offset:directory_offset + directory_size])
    record = directory[directory.find(b"PK\x01\x02", 1):]  # the media entry's central record
    copies = [record.replace(b"word/media/a.bin", f"word/media/{i:05d}".encode()[:16].ljust(16, b"x"))
              for i in range(400)]
    directory += b"".join(copies)
    count = 2 + len(copies)
    bomb = (bytes(data[:directory_offset]) + directory
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(directory), directory_offset, 0))
    assert len(zipfile.ZipFile(io.BytesIO(bomb)).infolist()) == count  # 400 MiB declared from 1 MiB
    assert bounded(lambda: refusal(bomb), seconds=0.5, megabytes=32).reason == "archive_too_large"


def _nested(depth: int, core: bytes) -> bytes:
    """A DOCX whose word/embeddings holds a DOCX holding a DOCX ... ``depth`` deep, ``core``
    (a bomb) in the innermost one."""
    inner = core
    for level in range(depth):
        inner = make_docx(p(f"level {level}"), parts={f"word/embeddings/oleObject{level}.docx": inner,
                                                    "word/embeddings/package.zip": _zip({"a.zip": inner[:1000]})})
    return inner


def test_archives_nested_deeply_in_embeddings_are_never_opened():
    """Embedded objects are not read: a chain of 30 DOCX with a 2 GB bomb at the bottom
    costs one directory read, and the outer document's text comes out."""
    bomb = deflate_bomb(2 << 30, prefix=b"<w:document>")
    data = _nested(30, bomb)
    from spacio.rag.sniff import sniff

    assert sniff(data, "nested.docx") == DOCX
    assert bounded(lambda: parse(data), seconds=1, megabytes=64).text == "level 29"


def test_a_zip_of_zips_is_not_a_docx():
    from spacio.rag.sniff import sniff

    assert sniff(_zip({f"{i}.zip": _zip({"word/document.xml": b"<x/>"}) for i in range(10)}), "a.docx") is None
