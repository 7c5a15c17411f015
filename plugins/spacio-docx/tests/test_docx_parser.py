"""DocxParser: the parser contract, WordprocessingML features, and hostile archives."""

from __future__ import annotations

import io
import struct
import time
import zipfile
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


def reason_of(data: bytes, **options) -> str:
    with pytest.raises(InvalidInput) as raised:
        parse(data, **options)
    return raised.value.reason


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
