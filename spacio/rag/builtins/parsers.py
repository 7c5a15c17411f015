"""Built-in parsers for text formats: plain text, Markdown, HTML and JSON.

They need the standard library, markdown-it-py (pure Python, for Markdown) and the
charset detector behind ``spacio.rag.sniff.decode_text``, and register through the
``spacio.parsers`` entry points like any third-party parser. None of these formats has
pages, so ``Section.page`` and ``ParsedDocument.pages`` stay ``None``.

Every parser here runs in time linear in its input, whatever the input: uploads are
untrusted, and a quadratic corner (html.parser on unclosed tags, regex markup stripping on
long lines) turns a 1 MB file into minutes of a worker's time.
"""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Iterator
from typing import Any

from spacio.rag.contracts import Blob, InvalidInput, ParsedDocument, Section, UnsupportedMediaType
from spacio.rag.sniff import (
    HTML, JSON, MARKDOWN, TEXT, decode_text_with_encoding, detect_bom, detect_wide_encoding,
    python_codec, text_sample,
)

__all__ = ["TextParser", "MarkdownParser", "HtmlParser", "JsonParser", "clean_text"]

# Characters that must not reach the database or the embedder: C0 controls other than TAB
# and LF (PostgreSQL text cannot hold NUL), DEL, and lone surrogates (JSON "\ud800" escapes
# produce them; they cannot be encoded as UTF-8).
_UNWANTED = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ud800-\udfff]")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
_MANY_BLANK_LINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Normalised line breaks, no control characters, no runs of blank lines, no
    trailing spaces; a form feed counts as a paragraph break."""
    text = _LINE_BREAKS.sub("\n", text).replace("\f", "\n\n")
    text = _UNWANTED.sub(lambda m: "\ufffd" if m.group() >= "\ud800" else "", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def _require_text(blob: Blob, kind: str) -> None:
    """Text parsers refuse binary content instead of indexing mojibake."""
    if blob.data and text_sample(blob.data) is None:
        raise UnsupportedMediaType(f"The file is binary data, not {kind}.")


def _document(sections: list[Section], title: str | None = None, **metadata: Any) -> ParsedDocument:
    kept = tuple(s for s in sections if s.text.strip())
    return ParsedDocument(sections=kept, title=title or None, metadata=metadata)


# --------------------------------------------------------------------------- plain text

TITLE_LINE_CHARS = 200


class TextParser:
    """``text/plain`` in any encoding (see ``decode_text``): one section with all the text.
    A first paragraph that is one short line with more text after it ("Title\n\nBody")
    is also the document's title."""

    media_types = frozenset({TEXT})

    def parse(self, blob: Blob) -> ParsedDocument:
        _require_text(blob, "text")
        text, encoding = decode_text_with_encoding(blob.data)
        text = clean_text(text)
        first, _, rest = (part.strip() for part in text.strip().partition("\n\n"))
        one_short_line = "\n" not in first and len(first) <= TITLE_LINE_CHARS
        return _document([Section(text)], title=first if rest and one_short_line else None, encoding=encoding)


# --------------------------------------------------------------------------- Markdown

_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.M)


class _Outline:
    """Collects blocks into sections, one per heading, with the heading path. Blocks are
    separated by a blank line, consecutive list items by a line break."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.headings: list[tuple[int, str]] = []
        self.blocks: list[tuple[str, bool]] = []
        self.title: str | None = None

    @property
    def path(self) -> str | None:
        return " > ".join(text for _, text in self.headings) or None

    def add(self, block: str, item: bool = False) -> None:
        if block.strip():
            self.blocks.append((block, item))

    def heading(self, level: int, text: str) -> None:
        text = _SPACES.sub(" ", text).strip()
        if not text:
            return
        self.flush()
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))
        if level == 1 and self.title is None:
            self.title = text
        self.blocks.append((text, False))

    def flush(self) -> None:
        if not self.blocks:
            return
        out: list[str] = []
        for index, (text, item) in enumerate(self.blocks):
            if index:
                out.append("\n" if item and self.blocks[index - 1][1] else "\n\n")
            out.append(text)
        self.sections.append(Section(clean_text("".join(out)), heading=self.path))
        self.blocks = []

    def finish(self) -> list[Section]:
        self.flush()
        return self.sections


@functools.cache
def _markdown_it() -> Any:
    """CommonMark plus GFM tables and strikethrough. markdown-it is linear in its input
    (regex-based stripping was quadratic on lines like ``*a *a *a ...``: 27 s for 60 KB)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"])


def _inline_text(token: Any) -> str:
    """The words of an inline token: text, code and image alt text; markup and inline
    HTML tags dropped."""
    out: list[str] = []
    for child in token.children or ():
        kind = child.type
        if kind in ("text", "code_inline"):
            out.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind == "image":
            out.append("".join(c.content for c in child.children or ()) or child.content)
    return "".join(out)


class MarkdownParser:
    """``text/markdown`` (CommonMark with GFM tables): one section per heading, its
    ``heading`` the path of headings above it ("Install > From source"). Markup is
    stripped lightly: links and images keep their text, emphasis and HTML tags go (the
    text inside HTML blocks stays), list items keep a ``-`` or their number, table rows
    become ``a | b``; code blocks are kept verbatim. YAML front matter is dropped, its
    ``title`` kept as the document title."""

    media_types = frozenset({MARKDOWN})

    def parse(self, blob: Blob) -> ParsedDocument:
        _require_text(blob, "Markdown")
        text, encoding = decode_text_with_encoding(blob.data)
        body, front_title = self._front_matter(_LINE_BREAKS.sub("\n", text))
        outline = _Outline()
        tokens = _markdown_it().parse(body)
        lists: list[str] = []  # "-" for bullet lists, the delimiter ("." or ")") for ordered ones
        item_prefix: str | None = None  # marker of the list item whose first block comes next
        row: list[str] | None = None
        rows: list[str] = []
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            if kind == "heading_open":
                outline.heading(int(token.tag[1]), _inline_text(tokens[index + 1]).replace("\n", " "))
                index += 3
                continue
            if kind in ("bullet_list_open", "ordered_list_open"):
                lists.append("-" if kind == "bullet_list_open" else token.markup or ".")
            elif kind in ("bullet_list_close", "ordered_list_close"):
                lists.pop()
            elif kind == "list_item_open":
                marker = "-" if lists and lists[-1] == "-" else f"{token.info or 1}{lists[-1] if lists else '.'}"
                item_prefix = "  " * (len(lists) - 1) + marker + " "
            elif kind == "tr_open":
                row = []
            elif kind == "tr_close" and row is not None:
                cells = [cell for cell in row if cell]
                if cells:
                    rows.append(" | ".join(cells))
                row = None
            elif kind == "table_close":
                outline.add("\n".join(rows))
                rows = []
            elif kind == "inline":
                content = _inline_text(token)
                if row is not None:
                    row.append(_SPACES.sub(" ", content).strip())
                elif item_prefix is not None or lists:
                    indent = "  " * len(lists)
                    lines = [line.strip() for line in content.split("\n")]
                    first = item_prefix if item_prefix is not None else indent
                    outline.add(first + f"\n{indent}".join(line for line in lines if line), item=True)
                    item_prefix = None
                else:
                    outline.add(content)
            elif kind in ("fence", "code_block"):
                outline.add(token.content.strip("\n"), item=bool(lists))
                item_prefix = None
            elif kind == "html_block":
                outline.add(_html_fragment_text(token.content), item=bool(lists))
            index += 1
        return _document(outline.finish(), title=front_title or outline.title, encoding=encoding)

    @staticmethod
    def _front_matter(text: str) -> tuple[str, str | None]:
        """YAML front matter is metadata, not text; keep its title."""
        if not text.startswith("---\n"):
            return text, None
        head = text.split("\n", 200)  # the last piece holds the rest of the document
        for end in range(1, len(head) - 1):
            if head[end].strip() in ("---", "..."):
                match = _FRONT_MATTER_TITLE.search("\n".join(head[1:end]))
                return "\n".join(head[end + 1:]), match.group(1) if match else None
        return text, None


# --------------------------------------------------------------------------- HTML

_META_CHARSET = re.compile(rb"""<meta[^>]+?charset\s*=\s*["']?\s*([A-Za-z0-9_:.\-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_:.\-]+)""", re.I)

_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "math", "iframe", "object",
                      "canvas", "ix:header"})
_HEAD_CONTENT = frozenset({"title", "meta", "link", "style", "script", "base", "noscript", "template"})
_BLOCKS = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog",
    "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup",
    "hr", "html", "legend", "li", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "ul",
})
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_CELLS = frozenset({"td", "th"})
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                   "track", "wbr"})
# Elements whose end tag may be left out: a hidden one could swallow the rest of the page,
# so ``hidden`` is honoured only on elements that must be closed.
_OPTIONAL_END = frozenset({"p", "li", "dt", "dd", "tr", "td", "th", "thead", "tbody", "tfoot", "option",
                           "optgroup", "rt", "rp", "colgroup", "caption", "html", "body", "head"})
_SELF_CLOSING = _VOID | _BLOCKS  # <br/>, <p/>: treated as the tag itself
_MAX_TABLE_DEPTH = 16
_DISPLAY_NONE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def html_encoding(data: bytes) -> str:
    """The encoding of an HTML file: BOM, then UTF-16/32 without BOM, then valid UTF-8,
    then ``<meta charset>`` / ``http-equiv`` / the XML declaration, then the detector.
    Valid UTF-8 beats a declared legacy charset because such declarations are often
    stale, and non-ASCII text that happens to be valid UTF-8 is almost never legacy."""
    bom = detect_bom(data)
    if bom is not None:
        return bom[0]
    wide = detect_wide_encoding(data[:65536])  # before UTF-8: NUL bytes are valid UTF-8
    if wide is not None:
        return wide
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    head = data[:4096]
    match = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    if match:
        label = match.group(1).decode("ascii").lower()
        if not label.startswith(("utf-16", "utf-32", "utf-8", "utf8")):  # those were tried above
            return python_codec(label)
    return decode_text_with_encoding(data)[1]


# Markers inside collected text: a line break (<br>), a paragraph break (a block element
# inside a table cell) and the rows of a nested table. Private-use characters, so they
# cannot collide with text, and they are not whitespace, so collapsing keeps them.
_BR = "\ue000"
_PARAGRAPH = "\ue001"
_NESTED_ROW = "\ue002"
_PRE = "\ue003"


def _collapse(text: str, *, line: str, paragraph: str, nested_row: str) -> str:
    """Whitespace collapsed as a browser does, then the markers turned into text."""
    text = _SPACES.sub(" ", text)
    text = text.replace(_BR, line).replace(_PARAGRAPH, paragraph).replace(_NESTED_ROW, nested_row)
    return "\n".join(part.strip() for part in text.split("\n")).strip()


class _TableContext:
    """Rows of one table. A row with one non-empty cell (layout tables put whole pages in
    one cell) keeps its paragraphs; a row with several becomes ``cell | cell``."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.cells: list[str] = []
        self.cell: list[str] | None = None

    def append(self, text: str) -> None:
        if self.cell is None:
            self.cell = []
        self.cell.append(text)

    def close_cell(self) -> None:
        if self.cell is not None:
            self.cells.append("".join(self.cell))
            self.cell = None

    def close_row(self) -> None:
        self.close_cell()
        cells = [c for c in self.cells if c.strip(" \t\n\r\f\xa0" + _BR + _PARAGRAPH + _NESTED_ROW)]
        if len(cells) == 1:
            self.rows.append(_collapse(cells[0], line="\n", paragraph="\n\n", nested_row="\n"))
        elif cells:
            flat = (_collapse(c, line=" ", paragraph=" ", nested_row=" ; ") for c in cells)
            self.rows.append(" | ".join(c for c in flat if c))
        self.cells = []


# The tokenizer. The standard library's html.parser is quadratic on unclosed constructs
# (30 KB of "<a " took 16 s; "</a ", "<? ", "<![CDATA[" too), so HTML is split here with
# str.find and anchored regexes only: every character is looked at a bounded number of times.
_TAG_START = re.compile(r"<(/?)([A-Za-z][^\s/>]*)")
_TAG_REST = re.compile(r"""(?:[^>"']|"[^"]{0,4096}"|'[^']{0,4096}')*>""")
_ATTRIBUTE = re.compile(r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+)))?""")
# Elements whose content is text up to their end tag (no tags inside).
_RAW_TEXT = frozenset({"script", "style", "title", "textarea", "xmp", "iframe", "noembed", "noframes"})


@functools.cache
def _raw_text_end(name: str) -> re.Pattern[str]:
    return re.compile(rf"</{re.escape(name)}[\s/>]", re.I)


def _tokenize_html(text: str, sink: _HtmlText) -> None:
    """Feed ``sink`` start tags, end tags and text, as a browser's tokenizer would for
    well-formed input; malformed input degrades to text, never to a long scan."""
    position, end = 0, len(text)
    while position < end:
        start = text.find("<", position)
        if start < 0:
            sink.handle_data(html.unescape(text[position:]))
            return
        if start > position:
            sink.handle_data(html.unescape(text[position:start]))
        if text.startswith("<!--", start):
            close = text.find("-->", start + 4)
            if close < 0:
                return  # an unclosed comment runs to the end
            position = close + 3
            continue
        tag = _TAG_START.match(text, start)
        if tag is None:
            if text.startswith(("<!", "</", "<?"), start):  # doctype, CDATA, bogus comment: skip to ">"
                close = text.find(">", start + 2)
                if close < 0:
                    return
                position = close + 1
            else:
                sink.handle_data("<")
                position = start + 1
            continue
        rest = _TAG_REST.match(text, tag.end())
        close = rest.end() - 1 if rest else text.find(">", tag.end())
        if close < 0:
            sink.handle_data(html.unescape(text[start:]))  # "<b" with no ">" anywhere after
            return
        name = tag.group(2).lower()
        position = close + 1
        if tag.group(1):
            sink.handle_endtag(name)
            continue
        inside = text[tag.end():close]
        attributes = [(m.group(1).lower(), html.unescape(next((g for g in m.group(2, 3, 4) if g is not None), "")))
                      for m in _ATTRIBUTE.finditer(inside)]
        if inside.endswith("/"):
            sink.handle_startendtag(name, attributes)
            continue
        sink.handle_starttag(name, attributes)
        if name in _RAW_TEXT:
            found = _raw_text_end(name).search(text, position)
            stop = found.start() if found else end
            content = text[position:stop]
            sink.handle_data(content if name in ("script", "style", "xmp") else html.unescape(content))
            sink.handle_endtag(name)
            if found is None:
                return
            after = text.find(">", found.end() - 1)
            position = after + 1 if after >= 0 else end


def _html_fragment_text(fragment: str) -> str:
    """The text of an HTML fragment (an HTML block inside Markdown)."""
    extractor = _HtmlText()
    extractor.feed(fragment)
    extractor.close()
    return "\n\n".join(section.text for section in extractor.outline.finish())


class _HtmlText:
    """Visible text of an HTML document, in reading order, as paragraphs per heading."""

    def __init__(self) -> None:
        self.outline = _Outline()
        self.parts: list[str] = []
        self.skip: tuple[str, int] | None = None  # (tag, nesting depth) being skipped
        self.in_head = False
        self.heading: tuple[int, list[str]] | None = None
        self.tables: list[_TableContext] = []
        self.flattened_tables = 0  # tables nested deeper than _MAX_TABLE_DEPTH, read as part of their parent
        self.title: list[str] | None = None
        self.title_text: str | None = None

    # -- structure

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip is not None:
            if tag == self.skip[0]:
                self.skip = (tag, self.skip[1] + 1)
            return
        if self.in_head and tag not in _HEAD_CONTENT:
            self.in_head = False  # content outside the head element implies <body>
        if tag == "head":
            self.in_head = True
            return
        if tag == "title" and self.title is None and self.title_text is None:
            self.title = []
            return
        if self.in_head:
            return
        if tag in _SKIPPED or (tag not in _VOID and tag not in _OPTIONAL_END and self._hidden(attrs)):
            self.skip = (tag, 1)
            return
        self._open(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skip is None and not self.in_head and tag in _SELF_CLOSING:
            self._open(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.skip is not None:
            if tag == self.skip[0]:
                depth = self.skip[1] - 1
                self.skip = (tag, depth) if depth else None
            return
        if tag == "head":
            self.in_head = False
            return
        if tag == "title" and self.title is not None:
            self.title_text = _SPACES.sub(" ", "".join(self.title)).strip() or None
            self.title = None
            return
        table = self.tables[-1] if self.tables else None
        if table is not None:
            if tag in _CELLS:
                table.close_cell()
            elif tag == "tr":
                table.close_row()
            elif tag == "table" and self.flattened_tables:
                self.flattened_tables -= 1
                table.append(_PARAGRAPH)
            elif tag == "table":
                self._close_table()
            elif tag in _BLOCKS or tag in _HEADINGS:
                table.append(_PARAGRAPH)
        elif tag in _HEADINGS and self.heading is not None:
            level, parts = self.heading
            self.heading = None
            self.outline.heading(level, "".join(parts).replace(_BR, " "))
        elif tag in _BLOCKS or tag in _HEADINGS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.skip is not None:
            return
        if self.title is not None:
            self.title.append(data)
        elif self.in_head:
            return
        elif self.tables:
            self.tables[-1].append(data)
        elif self.heading is not None:
            self.heading[1].append(data)
        else:
            self.parts.append(data)

    def feed(self, text: str) -> None:
        _tokenize_html(text, self)

    def close(self) -> None:
        while self.tables:
            self._close_table()
        if self.heading is not None:  # an unclosed heading is text
            self.parts[:0] = self.heading[1]
            self.heading = None
        self._break()

    # -- helpers

    @staticmethod
    def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
        for name, value in attrs:
            if name == "hidden" or (name == "aria-hidden" and value == "true"):
                return True
            if name == "style" and value and _DISPLAY_NONE.search(value):
                return True
        return False

    def _open(self, tag: str) -> None:
        table = self.tables[-1] if self.tables else None
        if tag == "table" and len(self.tables) >= _MAX_TABLE_DEPTH:
            self.flattened_tables += 1  # each level re-renders the text inside it: keep depth bounded
            table.append(_PARAGRAPH)
        elif tag == "table":
            if table is None:
                self._break()
            self.tables.append(_TableContext())
        elif table is not None:
            if tag in _CELLS:
                table.close_cell()
                table.cell = []
            elif tag == "tr":
                table.close_row()
            elif tag == "br":
                table.append(_BR)
            elif tag in _BLOCKS or tag in _HEADINGS:
                table.append(_PARAGRAPH)
        elif tag in _HEADINGS:
            self._break()
            self.heading = (_HEADINGS[tag], [])
        elif tag == "br":
            (self.heading[1] if self.heading is not None else self.parts).append(_BR)
        elif tag == "pre":
            self._break()
            self.parts.append(_PRE)
        elif tag in _BLOCKS:
            self._break()
            if tag == "li":
                self.parts.append("- ")

    def _close_table(self) -> None:
        table = self.tables.pop()
        table.close_row()
        if not table.rows:
            return
        if self.tables:  # a nested table becomes part of the enclosing cell
            nested = "\n".join(table.rows).replace("\n\n", _PARAGRAPH).replace("\n", _NESTED_ROW)
            self.tables[-1].append(_PARAGRAPH + nested + _PARAGRAPH)
        else:
            self.outline.add("\n".join(table.rows))

    def _break(self) -> None:
        """End the current paragraph. Whitespace is collapsed except inside <pre>."""
        if not self.parts:
            return
        text = "".join(self.parts)
        self.parts = []
        if text.startswith(_PRE):
            block = text[len(_PRE):].replace(_BR, "\n").strip("\n")
        else:
            block = _collapse(text, line="\n", paragraph="\n\n", nested_row="\n")
        self.outline.add(block)


class HtmlParser:
    """``text/html``: the visible text. Scripts, styles, ``noscript``, ``template``, the
    ``head`` (its ``<title>`` becomes the document title), SVG, hidden elements and inline
    XBRL headers are dropped; block elements end paragraphs, table rows become
    ``cell | cell`` lines, headings start sections with their heading path. Any charset:
    BOM, ``<meta charset>``, ``http-equiv``, UTF-16/32 with or without BOM, legacy."""

    media_types = frozenset({HTML})

    def parse(self, blob: Blob) -> ParsedDocument:
        _require_text(blob, "HTML")
        encoding = html_encoding(blob.data)
        text = blob.data.decode(encoding, errors="replace").lstrip("\ufeff")
        extractor = _HtmlText()
        extractor.feed(text)
        extractor.close()
        return _document(extractor.outline.finish(), title=extractor.title_text or extractor.outline.title,
                         encoding=encoding)


# --------------------------------------------------------------------------- JSON

class JsonParser:
    """``application/json`` (and JSON Lines): one ``path.to.key: value`` line per scalar,
    a section per top-level key (its heading) or array item; past 1,000 of them, entries
    are grouped into sections of about 4,000 characters. Invalid JSON is ``corrupt_file``."""

    media_types = frozenset({JSON})

    def parse(self, blob: Blob) -> ParsedDocument:
        _require_text(blob, "JSON")
        text, encoding = decode_text_with_encoding(blob.data)
        if not text.strip():
            return _document([], encoding=encoding)
        value = self._load(text)
        if isinstance(value, (dict, list)) and value:
            items = value.items() if isinstance(value, dict) else ((f"[{i}]", v) for i, v in enumerate(value))
            entries = [(str(key) if isinstance(value, dict) else None, "\n".join(_render(item, str(key))))
                       for key, item in items]
        else:
            entries = [(None, "\n".join(_render(value, "")))]
        if len(entries) > _MAX_JSON_SECTIONS:  # a huge array or map: group entries instead
            entries = _group(entries)
        return _document([Section(clean_text(text), heading=key) for key, text in entries], encoding=encoding)

    @staticmethod
    def _load(text: str) -> Any:
        try:
            return json.loads(text)
        except RecursionError:
            raise InvalidInput("The JSON is nested too deeply.", reason="corrupt_file") from None
        except ValueError as error:
            lines = [line for line in text.splitlines() if line.strip()]
            if len(lines) > 1:  # JSON Lines: one document per line
                try:
                    return [json.loads(line) for line in lines]
                except (ValueError, RecursionError):
                    pass
            raise InvalidInput(f"The file is not valid JSON: {error}", reason="corrupt_file") from None


_MAX_JSON_SECTIONS = 1000
_GROUP_CHARS = 4000


def _group(entries: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """Consecutive entries joined into sections of about ``_GROUP_CHARS`` characters."""
    groups: list[tuple[str | None, str]] = []
    current: list[str] = []
    size = 0
    for _, text in entries:
        if current and size + len(text) > _GROUP_CHARS:
            groups.append((None, "\n".join(current)))
            current, size = [], 0
        current.append(text)
        size += len(text) + 1
    if current:
        groups.append((None, "\n".join(current)))
    return groups


def _render(value: Any, path: str) -> Iterator[str]:
    """``path: value`` lines, depth first, without recursion (JSON can nest as deep as the
    decoder allows)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            if not item:
                continue
            for key, child in reversed(list(item.items())):
                stack.append((f"{where}.{key}" if where else str(key), child))
        elif isinstance(item, list):
            for index in range(len(item) - 1, -1, -1):
                stack.append((f"{where}[{index}]", item[index]))
        else:
            if isinstance(item, bool):
                scalar = "true" if item else "false"
            elif item is None:
                scalar = "null"
            else:
                scalar = str(item)
            yield f"{where}: {scalar}" if where else scalar
