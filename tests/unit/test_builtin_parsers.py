"""The built-in text parsers (plain text, Markdown, HTML, JSON), and every evaluation
document through sniff + the installed parsers, as the ingestion worker sees them."""

from __future__ import annotations

import functools
import json
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from spacio.rag.builtins.parsers import HtmlParser, JsonParser, MarkdownParser, TextParser
from spacio.rag.contracts import Blob, InvalidInput, ParsedDocument, PluginError, UnsupportedMediaType
from spacio.rag.sniff import sniff
from spacio.testing.contracts.parser import ParserContract, assert_well_formed

DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "docs"


def blob(data: bytes | str, media_type: str, filename: str = "") -> Blob:
    return Blob(data.encode() if isinstance(data, str) else data, media_type, filename)


def markdown(text: str) -> ParsedDocument:
    return MarkdownParser().parse(blob(text, "text/markdown", "x.md"))


def html(text: str | bytes) -> ParsedDocument:
    return HtmlParser().parse(blob(text, "text/html", "x.html"))


# --------------------------------------------------------------------------- contracts

class TestTextParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return TextParser()

    @pytest.fixture
    def sample_blob(self):
        return blob("Quarterly report\n\nRevenue grew by 12 % in the third quarter.\n", "text/plain", "r.txt")

    @pytest.fixture
    def expected_text(self):
        return "Revenue grew by 12 % in the third quarter."


class TestMarkdownParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return MarkdownParser()

    @pytest.fixture
    def sample_blob(self):
        return blob("# Guide\n\nIntro **text**.\n\n## Install\n\nRun `pip install spacio`.\n", "text/markdown", "g.md")

    @pytest.fixture
    def expected_text(self):
        return "Run pip install spacio."


class TestHtmlParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return HtmlParser()

    @pytest.fixture
    def sample_blob(self):
        return blob("<!DOCTYPE html><html><head><title>T</title><script>var x = 1;</script></head>"
                    "<body><h1>Report</h1><p>Revenue <b>grew</b> by 12 %.</p></body></html>", "text/html")

    @pytest.fixture
    def expected_text(self):
        return "Revenue grew by 12 %."


class TestJsonParser(ParserContract):
    @pytest.fixture
    def parser(self):
        return JsonParser()

    @pytest.fixture
    def sample_blob(self):
        return blob(json.dumps({"company": {"name": "Acme", "revenue": [10, 12]}, "ok": True}),
                    "application/json", "d.json")

    @pytest.fixture
    def expected_text(self):
        return "company.name: Acme"


# --------------------------------------------------------------------------- plain text

def test_text_keeps_the_words_and_drops_control_characters():
    padding = " ".join(["words"] * 100)
    document = TextParser().parse(blob(f"line one\r\nline\x01 two\x07\rline three\x0cnext page {padding}",
                                       "text/plain"))
    assert document.text == f"line one\nline two\nline three\n\nnext page {padding}"
    assert document.pages is None and document.sections[0].page is None


@pytest.mark.parametrize("text, title", [
    ("Tidal locking of moons\n\nA moon is tidally locked when ...", "Tidal locking of moons"),
    ("  Tidal locking of moons  \r\n\r\nA moon is tidally locked.", "Tidal locking of moons"),
    ("A moon is tidally locked when its orbit and spin match.", None),  # one paragraph: no title
    ("Tidal locking\nof moons\n\nA moon is tidally locked.", None),  # the first paragraph is two lines
    ("Tidal locking of moons\n\n  \n", None),  # nothing after it
    ("x" * 201 + "\n\nA moon is tidally locked.", None),  # too long for a title
])
def test_a_short_first_line_on_its_own_is_the_title(text, title):
    document = TextParser().parse(blob(text, "text/plain"))
    assert document.title == title
    assert document.text.startswith(text.strip()[:10])  # the title stays in the text


def test_text_with_nul_bytes_is_binary():
    with pytest.raises(UnsupportedMediaType):
        TextParser().parse(blob("text\x00with a NUL", "text/plain"))


def test_whitespace_only_text_has_no_sections():
    assert TextParser().parse(blob(" \n\t\n ", "text/plain")).sections == ()


def test_text_reports_the_encoding_it_used():
    document = TextParser().parse(blob("Grüße aus Köln".encode("utf-16"), "text/plain"))
    assert document.text == "Grüße aus Köln"
    assert document.metadata["encoding"] == "utf-16-le"


def test_binary_labelled_as_text_is_refused():
    with pytest.raises(UnsupportedMediaType):
        TextParser().parse(blob(b"\x00\x01\x02\xff" * 100, "text/plain"))


# --------------------------------------------------------------------------- Markdown

def test_markdown_sections_carry_the_heading_path():
    document = markdown("Preamble.\n\n# Guide\n\nIntro.\n\n## Install\n\nSteps.\n\n### Linux\n\napt.\n\n"
                        "## Use\n\nRun it.\n\n# Appendix\n\nMore.\n")
    assert [(s.heading, s.text) for s in document.sections] == [
        (None, "Preamble."),
        ("Guide", "Guide\n\nIntro."),
        ("Guide > Install", "Install\n\nSteps."),
        ("Guide > Install > Linux", "Linux\n\napt."),
        ("Guide > Use", "Use\n\nRun it."),
        ("Appendix", "Appendix\n\nMore."),
    ]
    assert document.title == "Guide"


def test_markdown_setext_headings_and_closing_hashes():
    document = markdown("Title\n=====\n\ntext\n\nPart\n----\n\nmore\n\n## Closed ##\n\nend\n")
    assert [s.heading for s in document.sections] == ["Title", "Title > Part", "Title > Closed"]


def test_markdown_code_is_kept_verbatim_and_hashes_in_code_are_not_headings():
    document = markdown("# Code\n\n```python\n# not a heading\nprint('**x**')\n```\n\n~~~\n<b>raw</b>\n~~~\n")
    assert len(document.sections) == 1
    assert "# not a heading\nprint('**x**')" in document.text
    assert "<b>raw</b>" in document.text


def test_markdown_markup_is_stripped_lightly():
    document = markdown(
        "Some **bold**, *italic*, _under_, ~~gone~~ and `code_span` with snake_case_name.\n\n"
        "A [link](https://example.com \"t\") and ![an image](img.png) and <https://auto.link>.\n\n"
        "> quoted text\n\n"
        "<div align=\"center\">\n<img\n  src=\"logo.png\"\n>\n</div>\n\n"
        "<!-- a comment\nover lines -->\n\n"
        "[ref]: https://example.com\n\n"
        "Escaped \\*stars\\* and &amp; entity.\n")
    text = document.text
    assert "Some bold, italic, under, gone and code_span with snake_case_name." in text
    assert "A link and an image and https://auto.link." in text
    assert "quoted text" in text and ">" not in text.replace("->", "")
    assert "<" not in text and "src=" not in text and "comment" not in text
    assert "https://example.com" not in text
    assert "Escaped *stars* and & entity." in text


def test_markdown_tables_become_pipe_rows():
    document = markdown("| Item | Price |\n|---|---:|\n| Apples | 1.99 |\n| Pears | 2.10 |\n")
    assert document.text == "Item | Price\nApples | 1.99\nPears | 2.10"


def test_markdown_front_matter_gives_the_title():
    document = markdown("---\ntitle: \"Release notes\"\ntags: [a]\n---\n\n# 1.0\n\nFirst.\n")
    assert document.title == "Release notes"
    assert "tags" not in document.text


def test_markdown_in_latin1_decodes():
    data = (DOCS / "md" / "umlauts-non-utf8.md").read_bytes()
    document = MarkdownParser().parse(Blob(data, "text/markdown", "u.md"))
    assert document.sections[0].heading == "können"
    assert "äöüß" in document.text


def test_markdown_eval_readme_with_inline_html():
    data = (DOCS / "md" / "MixtureRetrievers-README.md").read_bytes()
    document = MarkdownParser().parse(Blob(data, "text/markdown", "README.md"))
    assert "MoR: Better Handling Diverse Queries" in document.text
    assert "<h1" not in document.text and "align=" not in document.text


def test_markdown_long_changelog_is_fast_and_sectioned():
    data = (DOCS / "md" / "unstructured-CHANGELOG.md").read_bytes()
    started = time.perf_counter()
    document = MarkdownParser().parse(Blob(data, "text/markdown", "CHANGELOG.md"))
    assert time.perf_counter() - started < 2
    assert len(document.sections) > 500
    assert any(s.heading and s.heading.endswith("> Fixes") for s in document.sections)


# --------------------------------------------------------------------------- HTML

def test_html_drops_everything_invisible():
    document = html("""<html><head><title>Page title</title><style>body{color:red}</style>
        <script>var secret = "js";</script><meta name="x" content="meta text"></head>
        <body><noscript>enable js</noscript><template><p>template text</p></template>
        <p>Visible <span hidden>hidden attr</span>text.</p>
        <div style="display: none">display none</div><div aria-hidden="true">aria hidden</div>
        <svg><text>svg label</text></svg><script type="module">import x from "y";</script>
        <p>End.</p></body></html>""")
    assert document.text == "Visible text.\n\nEnd."
    assert document.title == "Page title"


def test_html_blocks_break_paragraphs_and_inline_elements_do_not():
    document = html("<body><div>one <b>bo</b>ld <a href='#'>link</a></div><p>two<br>three</p>"
                    "<ul><li>first</li><li>second</li></ul>text\n   wrapped\n   in source</body>")
    assert document.text == "one bold link\n\ntwo\nthree\n\n- first\n\n- second\n\ntext wrapped in source"


def test_html_headings_give_sections():
    document = html("<h1>Report</h1><p>a</p><h2>Costs</h2><p>b</p><h3>Travel</h3><p>c</p><h2>Income</h2><p>d</p>")
    assert [(s.heading, s.text) for s in document.sections] == [
        ("Report", "Report\n\na"), ("Report > Costs", "Costs\n\nb"),
        ("Report > Costs > Travel", "Travel\n\nc"), ("Report > Income", "Income\n\nd")]


def test_html_tables_become_rows_of_cells_and_layout_tables_keep_paragraphs():
    document = html("<table><tr><th>Item</th><th></th><th>Price</th></tr><tr><td>Apples</td><td>"
                    "</td><td>1.99</td></tr></table>"
                    "<table><tr><td><p>Essay para one.</p><p>Para two.</p></td></tr></table>")
    assert document.text == "Item | Price\nApples | 1.99\n\nEssay para one.\n\nPara two."


def test_html_pre_keeps_its_whitespace():
    document = html("<p>a   b</p><pre>  x = 1\n    y = 2\n</pre>")
    assert document.text == "a b\n\n  x = 1\n    y = 2"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "cp1252"])
def test_html_charsets(encoding):
    declared = "windows-1252" if encoding == "cp1252" else encoding.replace("-sig", "")
    page = f'<html><head><meta charset="{declared}"></head><body><p>Grüße – “quotes” €</p></body></html>'
    assert html(page.encode(encoding)).text == "Grüße – “quotes” €"


def test_html_http_equiv_charset():
    page = ('<html><head><meta http-equiv="Content-Type" content="text/html; charset=iso-8859-8">'
            "</head><body><p>עדכון Tesla</p></body></html>")
    assert html(page.encode("iso-8859-8")).text == "עדכון Tesla"


def test_html_without_declared_charset_is_detected():
    page = "<html><body><p>L'été était très chaud, garçon. Grüße!</p></body></html>"
    assert html(page.encode("cp1252")).text == "L'été était très chaud, garçon. Grüße!"


def test_html_utf16_file_matches_its_utf8_twin():
    utf16 = HtmlParser().parse(Blob((DOCS / "html" / "example-steelJIS-datasheet-utf-16.html").read_bytes(),
                                    "text/html"))
    utf8 = HtmlParser().parse(Blob((DOCS / "html" / "example-steelJIS-datasheet.html").read_bytes(), "text/html"))
    assert utf16.metadata["encoding"].startswith("utf-16")
    assert utf16.sections == utf8.sections
    assert "成分" in utf16.text


def test_script_heavy_html_has_no_javascript_in_its_text():
    data = (DOCS / "html" / "example-with-scripts.html").read_bytes()
    document = HtmlParser().parse(Blob(data, "text/html"))
    assert "Belarusian forces remain unlikely" in document.text
    for code in ("function(", "var ", "jQuery", "document.", "window.", "});", "{", "}"):
        assert code not in document.text


def test_inline_xbrl_header_of_a_10k_is_not_text():
    data = (DOCS / "html" / "example-10k.html").read_bytes()
    started = time.perf_counter()
    document = HtmlParser().parse(Blob(data, "text/html"))
    assert time.perf_counter() - started < 5
    assert "SECURITIES AND EXCHANGE COMMISSION" in document.text
    assert "0000013156" not in document.text  # dei:EntityCentralIndexKey in the hidden ix:header
    assert "Item 1A. | Risk Factors | 9" in document.text


def test_html_cp1252_eval_file():
    document = HtmlParser().parse(Blob((DOCS / "html" / "fake-html-cp1252.html").read_bytes(), "text/html"))
    assert "Der Preis betrug 15,50 €." in document.text
    assert document.sections[0].heading == "My First Heading"


# --------------------------------------------------------------------------- hostile input

PATHOLOGICAL = ["*a ", "_a ", "[", "![", "[a](", "*_`[<!", "~~a ", "<a ", "</a ", "<? ", "<![CDATA[ >", "<x",
                "<a b=\"> ", "<a b='>x", "<!-- >", "<table><tr><td>word ", "<div>", "&amp;"]


@pytest.mark.parametrize("unit", PATHOLOGICAL)
def test_pathological_markup_is_read_in_linear_time(unit):
    """Each of these took from 6 s to minutes with regex stripping or html.parser."""
    data = (unit * 40_000).encode()
    for parser, media_type in ((MarkdownParser(), "text/markdown"), (HtmlParser(), "text/html")):
        started = time.perf_counter()
        assert_well_formed(parser.parse(Blob(data, media_type)))
        assert time.perf_counter() - started < 10, (media_type, unit)


# --------------------------------------------------------------------------- JSON

def test_json_renders_paths_and_values():
    document = JsonParser().parse(blob(json.dumps({
        "name": "Acme", "tags": ["a", "b"], "owner": {"email": None, "active": True, "stats": {"n": 3.5}},
        "empty": {}, "none": []}), "application/json"))
    assert [(s.heading, s.text) for s in document.sections] == [
        ("name", "name: Acme"), ("tags", "tags[0]: a\ntags[1]: b"),
        ("owner", "owner.email: null\nowner.active: true\nowner.stats.n: 3.5")]


def test_json_top_level_array_gives_one_section_per_item():
    document = JsonParser().parse(blob('[{"id": 1, "text": "first"}, {"id": 2, "text": "second"}]', "application/json"))
    assert [s.text for s in document.sections] == ["[0].id: 1\n[0].text: first", "[1].id: 2\n[1].text: second"]


def test_a_huge_json_array_is_grouped_into_sections():
    items = [{"id": i, "name": f"item {i}"} for i in range(5000)]
    document = JsonParser().parse(blob(json.dumps(items), "application/json"))
    assert 10 < len(document.sections) < 100
    assert all(len(s.text) <= 4100 for s in document.sections)
    assert "[4999].name: item 4999" in document.text and "[0].id: 0" in document.text


def test_json_lines_are_read():
    document = JsonParser().parse(blob('{"q": "one"}\n{"q": "two"}\n', "application/json"))
    assert document.text == "[0].q: one\n\n[1].q: two"


@pytest.mark.parametrize("data", ['{"a": 1', "{'single': 'quotes'}", "[1, 2,, 3]", '{"a": 1} trailing'])
def test_invalid_json_is_corrupt(data):
    with pytest.raises(InvalidInput) as raised:
        JsonParser().parse(blob(data, "application/json"))
    assert raised.value.reason == "corrupt_file"


def test_deeply_nested_json_is_refused_or_read_never_crashes():
    for depth in (500, 100_000):
        data = "[" * depth + "1" + "]" * depth
        try:
            document = JsonParser().parse(blob(data, "application/json"))
        except InvalidInput as error:
            assert error.reason == "corrupt_file"
        else:
            assert document.text.endswith(": 1")


def test_json_lone_surrogates_are_replaced():
    document = JsonParser().parse(blob('{"a": "x\\ud800y"}', "application/json"))
    document.text.encode("utf-8")
    assert document.text == "a: x\ufffdy"


# --------------------------------------------------------------------------- every evaluation file

@functools.cache
def installed_parsers() -> dict[str, object]:
    """Media type → parser, from the ``spacio.parsers`` entry points, as the host builds them."""
    parsers: dict[str, object] = {}
    for entry_point in entry_points(group="spacio.parsers"):
        parser = entry_point.load()()
        for media_type in parser.media_types:
            parsers.setdefault(media_type, parser)
    return parsers


ALL_DOCS = sorted(p for p in DOCS.rglob("*") if p.is_file())

# What each file must give that is not "a document with text" (see MANIFEST.md).
FAILURES = {
    "pdf/py-pdf-sample-files/005-libreoffice-writer-password__libreoffice-writer-password.pdf": "encrypted",
    "pdf/unstructured/password.pdf": "encrypted",
    "pdf/py-pdf-sample-files/007-imagemagick-images__imagemagick-ASCII85Decode.pdf": "no_text_layer",
    "pdf/py-pdf-sample-files/007-imagemagick-images__imagemagick-CCITTFaxDecode.pdf": "no_text_layer",
    "pdf/py-pdf-sample-files/007-imagemagick-images__imagemagick-lzw.pdf": "no_text_layer",
    "pdf/py-pdf-sample-files/019-grayscale-image__grayscale-image.pdf": "no_text_layer",
    "pdf/py-pdf-sample-files/023-cmyk-image__cmyk-image.pdf": "no_text_layer",
    "pdf/unstructured/loremipsum-flat.pdf": "no_text_layer",
    "pdf/unstructured/single_table.pdf": "no_text_layer",
    "pdf/unstructured/table-multi-row-column-cells.pdf": "no_text_layer",
    "pdf/py-pdf-sample-files/017-unreadable-meta-data__unreadablemetadata.pdf": "corrupt_file",
    "pdf/derived-corrupt/bad-header-minimal-document.pdf": "corrupt_file",
    "pdf/derived-corrupt/truncated-50pct-2203.06947.pdf": "corrupt_file",
    "pdf/derived-corrupt/xref-garbled-minimal-document.pdf": "corrupt_file",
    "pdf/derived-corrupt/zero-bytes.pdf": "corrupt_file",
    "txt/empty.txt": "empty",
    "txt/fake-text-all-whitespace.txt": "empty",
}

# Facts from MANIFEST.md checked on the parsed document: (pages, words in the text).
FACTS = {
    "pdf/unstructured/pdf2image-memory-error-test-400p.pdf": (400, ["Manual Transmittal"]),
    "pdf/py-pdf-sample-files/009-pdflatex-geotopo__GeoTopo-komprimiert.pdf": (117, ["Topologie"]),
    "pdf/unstructured/failure-after-repair.pdf": (76, []),
    "pdf/unstructured/copy-protected.pdf": (2, ["LayoutParser"]),  # encrypted, opens with the empty password
    "pdf/unstructured/mv82b.pdf": (2, ["BOAT REGISTRATION"]),  # the same
    "pdf/arxiv/multi-column-DPR-2004.04906.pdf": (13, ["Dense Passage Retrieval"]),
    "pdf/unstructured/korean-text-with-tables.pdf": (1, ["적립 제외 대상"]),
    "pdf/unstructured/simplified_chinese.pdf": (1, ["中华人民共和国国务院侨务办公室"]),
    "pdf/py-pdf-sample-files/015-arabic__habibi.pdf": (1, ["habibi"]),
    "pdf/derived-corrupt/html-renamed-as.pdf": (None, ["Die schöne Frau", "köstlich", "15,50 €"]),
    "html/fake-html-cp1252.html": (None, ["L'été était très chaud", "15,50 €"]),
    "html/example-steelJIS-datasheet-utf-16.html": (None, ["SNB22-3", "成分"]),
    "txt/fake-text-utf-16-be.txt": (None, ["This is a test document to use for unit tests.", "Doylestown"]),
    "txt/fake-text-utf-16-le.txt": (None, ["This is a test document to use for unit tests.", "Doylestown"]),
    "txt/fake-text-utf-16.txt": (None, ["This is a test document to use for unit tests.", "Doylestown"]),
    "txt/fake-text-utf-32.txt": (None, ["This is a test document to use for unit tests.", "Doylestown"]),
    "md/umlauts-non-utf8.md": (None, ["können", "äöüß"]),
    "txt/UDHR_first_article_all.txt": (None, ["Alle Menschen sind frei und gleich an Würde und Rechten geboren"]),
    "docx/handbook-872p.docx": (None, ["CHAPTER 1 – INTRODUCTION"]),
    "docx/docx-tables.docx": (None, ["Header Col 1 | Header Col 2"]),
}


@functools.cache
def outcome(relative: str) -> tuple[str, ParsedDocument | PluginError | None, float]:
    """(media type, document or the contract error raised, seconds). Any other exception
    propagates and fails the test."""
    path = DOCS / relative
    data = path.read_bytes()
    media_type = sniff(data, path.name)
    parser = installed_parsers().get(media_type)
    if parser is None:
        return str(media_type), None, 0.0
    started = time.perf_counter()
    try:
        result: ParsedDocument | PluginError = parser.parse(Blob(data, media_type, path.name, max_pages=500))
    except (InvalidInput, UnsupportedMediaType) as error:
        result = error
    return media_type, result, time.perf_counter() - started


def test_every_kind_of_evaluation_file_has_a_parser():
    assert {"application/pdf", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/html", "text/markdown", "text/plain", "application/json"} <= set(installed_parsers())


@pytest.mark.parametrize("path", ALL_DOCS, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_evaluation_file_parses_or_fails_with_a_specific_reason(path):
    relative = str(path.relative_to(DOCS))
    media_type, result, seconds = outcome(relative)
    assert result is not None, f"{relative}: sniffed as {media_type}, which no parser reads"
    expected = FAILURES.get(relative, "text")
    if isinstance(result, PluginError):
        assert result.reason == expected, f"{relative}: {result.reason}: {result.message}"
        return
    assert_well_formed(result)
    if expected == "empty":
        assert result.sections == ()
        return
    assert expected == "text", f"{relative}: expected {expected}, got a document"
    assert result.text.strip(), f"{relative}: no text"
    pages, words = FACTS.get(relative, (result.pages, []))
    assert result.pages == pages
    for word in words:
        assert word in result.text, f"{relative}: {word!r} missing"
    assert seconds < 60, f"{relative} took {seconds:.1f} s"
