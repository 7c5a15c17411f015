"""``DocxParser``: the text of a Word document, in reading order, with its heading path.

Why direct XML and not python-docx: python-docx needs lxml (a large C extension) and
builds the whole document tree; it also skips text inside content controls (``w:sdt``)
and text boxes, and it offers no way to refuse a zip bomb before inflating. Reading the
WordprocessingML ourselves costs about 300 lines and gives us: limits checked on the zip
directory first (``archive.py``), XML parsed by defusedxml with DTDs forbidden (so no
entity expansion, no external entities), the main document parsed as a stream (its
paragraphs and tables are handled and dropped one by one, so memory stays flat), and
every piece of visible text: runs, hyperlinks, fields' results, content controls, text
boxes, tracked insertions (deletions are left out), tables and lists.

Output: one section per heading, ``heading`` the path ("Scope > Definitions"); headings
come from the paragraph style ("Heading 1" ... and styles based on them) or an outline
level. Table rows become ``cell | cell`` lines; list items get their bullet or number.
Headers, footers, footnotes and endnotes follow as one last section (each distinct text
once). Pages are unknown in DOCX (layout decides them), so ``page`` is ``None``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from functools import lru_cache

import defusedxml
import defusedxml.ElementTree as SafeET
from marshmallow import Schema, fields, validate

from spacio.rag.contracts import Blob, InvalidInput, ParsedDocument, Section
from spacio_docx.archive import ArchiveLimits, BlockBudget, Package, rels_name, resolve

MEDIA_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

_W = ("http://schemas.openxmlformats.org/wordprocessingml/2006/main",
      "http://purl.oclc.org/ooxml/wordprocessingml/main")  # transitional, strict
_MC = "http://schemas.openxmlformats.org/markup-compatibility/2006"
_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
_MAIN_DOCUMENT = "word/document.xml"
_MAX_TABLE_DEPTH = 32

# Inside a paragraph: elements whose subtree is not visible text.
_NOT_TEXT = frozenset({
    "pPr", "rPr", "del", "moveFrom", "delText", "instrText", "delInstrText", "fldData", "footnoteReference",
    "endnoteReference", "commentReference", "annotationRef", "sym", "object", "mc:Fallback", "proofErr",
    "bookmarkStart", "bookmarkEnd", "lastRenderedPageBreak",
})
# Wrappers around blocks, rows or cells whose content counts as if it were not wrapped.
_TRANSPARENT = frozenset({"sdt", "sdtContent", "customXml", "ins", "moveTo", "smartTag"})
_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.I)

_ONLY_NUMBERS = re.compile(r"^[\W\d_]*$")
_UNWANTED = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")


class DocxOptionsSchema(Schema):
    """``SPACIO_PLUGINS__PARSER__DOCX__<OPTION>``."""

    max_entries = fields.Integer(validate=validate.Range(min=1))
    max_uncompressed_bytes = fields.Integer(validate=validate.Range(min=1))
    max_compression_ratio = fields.Float(validate=validate.Range(min=1))
    max_block_bytes = fields.Integer(validate=validate.Range(min=1024))
    max_text_chars = fields.Integer(validate=validate.Range(min=1))
    include_headers_footers = fields.Boolean()


@lru_cache(maxsize=4096)
def _key(tag: str) -> str:
    """``{w-namespace}p`` → ``p``; markup compatibility → ``mc:Choice``; any other
    namespace → ``x:local``, so it never matches a WordprocessingML name."""
    if not isinstance(tag, str) or not tag.startswith("{"):
        return str(tag)
    namespace, _, local = tag[1:].partition("}")
    if namespace in _W:
        return local
    if namespace == _MC:
        return "mc:" + local
    return "x:" + local


def _attr(element: ET.Element, name: str) -> str | None:
    for namespace in _W:
        value = element.get(f"{{{namespace}}}{name}")
        if value is not None:
            return value
    return None


def _val(element: ET.Element | None) -> str | None:
    """``w:val`` of an element that may be missing."""
    return _attr(element, "val") if element is not None else None


def _child(element: ET.Element | None, name: str) -> ET.Element | None:
    if element is None:
        return None
    for child in element:
        if _key(child.tag) == name:
            return child
    return None


def _squeeze(text: str) -> str:
    """Runs of blanks as one space. ``re.sub`` would build an object per match, so a
    paragraph of 15 MB of words took 185 MB; ``str.replace`` builds one string per pass."""
    text = text.replace("\t", " ").replace("\xa0", " ")
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def _clean(text: str) -> str:
    text = _UNWANTED.sub("", text.replace("\r", ""))
    lines = (_squeeze(line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


# --------------------------------------------------------------------------- styles, lists

class _Styles:
    """Paragraph styles: heading level and list numbering, following ``basedOn``."""

    def __init__(self, root: ET.Element | None):
        self._styles: dict[str, tuple[str, str | None, int | None, tuple[str, int] | None]] = {}
        if root is None:
            return
        for style in root:
            if _key(style.tag) != "style" or _attr(style, "type") not in (None, "paragraph"):
                continue
            style_id = _attr(style, "styleId")
            if not style_id:
                continue
            ppr = _child(style, "pPr")
            self._styles[style_id] = (_val(_child(style, "name")) or "", _val(_child(style, "basedOn")),
                                      _outline_level(ppr), _numbering(ppr))

    def _chain(self, style_id: str | None) -> Iterator[tuple[str, str | None, int | None, tuple[str, int] | None]]:
        seen: set[str] = set()
        while style_id and style_id in self._styles and style_id not in seen and len(seen) < 20:
            seen.add(style_id)
            style = self._styles[style_id]
            yield style
            style_id = style[1]

    def heading_level(self, style_id: str | None) -> int | None:
        for name, _, outline, _ in self._chain(style_id):
            match = _HEADING_STYLE.match(name)
            if match:
                return int(match.group(1))
            if outline is not None:
                return outline
        return None

    def is_title(self, style_id: str | None) -> bool:
        return any(name.lower() == "title" for name, *_ in self._chain(style_id))

    def numbering(self, style_id: str | None) -> tuple[str, int] | None:
        for *_, numbering in self._chain(style_id):
            if numbering is not None:
                return numbering
        return None


def _outline_level(ppr: ET.Element | None) -> int | None:
    value = _int(_val(_child(ppr, "outlineLvl")), -1)
    return value + 1 if 0 <= value < 9 else None


def _numbering(ppr: ET.Element | None) -> tuple[str, int] | None:
    num_pr = _child(ppr, "numPr")
    if num_pr is None:
        return None
    num_id = _val(_child(num_pr, "numId"))
    level = _int(_val(_child(num_pr, "ilvl")), 0)
    return (num_id, min(max(level, 0), 8)) if num_id else None


_ROMAN = ((1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"), (40, "xl"),
          (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i"))


def _format_number(value: int, fmt: str) -> str:
    if fmt in ("lowerLetter", "upperLetter") and 0 < value <= 780:  # Word stops at "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"
        letter = chr(ord("a") + (value - 1) % 26) * ((value - 1) // 26 + 1)
        return letter.upper() if fmt == "upperLetter" else letter
    if fmt in ("lowerRoman", "upperRoman") and 0 < value < 4000:
        out, rest = "", value
        for number, numeral in _ROMAN:
            while rest >= number:
                out, rest = out + numeral, rest - number
        return out.upper() if fmt == "upperRoman" else out
    if fmt == "decimalZero":
        return f"{value:02d}"
    return str(value)


class _Lists:
    """List markers: bullets as ``-``, numbers counted per list as Word does."""

    def __init__(self, root: ET.Element | None):
        self._abstract: dict[str, dict[int, tuple[str, str, int]]] = {}
        self._nums: dict[str, tuple[str, dict[int, int]]] = {}
        self._counters: dict[str, list[int | None]] = {}
        if root is None:
            return
        for element in root:
            kind = _key(element.tag)
            if kind == "abstractNum":
                levels: dict[int, tuple[str, str, int]] = {}
                for lvl in element:
                    if _key(lvl.tag) != "lvl":
                        continue
                    levels[_int(_attr(lvl, "ilvl"), 0)] = (
                        _val(_child(lvl, "numFmt")) or "decimal",
                        _val(_child(lvl, "lvlText")) or "",
                        _int(_val(_child(lvl, "start")), 1),
                    )
                self._abstract[_attr(element, "abstractNumId") or ""] = levels
            elif kind == "num":
                overrides = {}
                for override in element:
                    start = _val(_child(override, "startOverride")) if _key(override.tag) == "lvlOverride" else None
                    if start is not None:
                        overrides[_int(_attr(override, "ilvl"), 0)] = _int(start, 1)
                self._nums[_attr(element, "numId") or ""] = (_val(_child(element, "abstractNumId")) or "", overrides)

    def marker(self, num_id: str, level: int) -> str | None:
        """The marker of the next item, or None when ``num_id`` means "no list"."""
        if num_id == "0" or num_id not in self._nums:
            return None if num_id == "0" else "-"
        abstract_id, overrides = self._nums[num_id]
        levels = self._abstract.get(abstract_id, {})
        fmt, text, start = levels.get(level, ("bullet", "", 1))
        if fmt == "none":
            return ""
        if fmt == "bullet":
            return "-"
        counters = self._counters.setdefault(num_id, [None] * 9)
        counters[level] = (counters[level] + 1) if counters[level] is not None else overrides.get(level, start)
        for deeper in range(level + 1, 9):
            counters[deeper] = None

        def value(match: re.Match[str]) -> str:
            index = int(match.group(1)) - 1
            if not 0 <= index < 9:
                return ""
            level_fmt, _, level_start = levels.get(index, ("decimal", "", 1))
            current = counters[index] if counters[index] is not None else level_start
            return _format_number(current, fmt if index == level else level_fmt)

        return re.sub(r"%([1-9])", value, text) if text else f"{counters[level]}."


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


# --------------------------------------------------------------------------- text

def _paragraph_text(paragraph: ET.Element, text_boxes: list[ET.Element]) -> str:
    """Visible text of a paragraph, without recursion (nesting is attacker-controlled).
    Text boxes met on the way are collected for the caller to read as blocks."""
    out: list[str] = []
    stack: list[Iterator[ET.Element]] = [iter(paragraph)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        kind = _key(child.tag)
        if kind == "t":
            out.append(child.text or "")
        elif kind in ("tab", "ptab"):
            out.append("\t")
        elif kind in ("br", "cr"):
            out.append("\n")
        elif kind == "noBreakHyphen":
            out.append("-")
        elif kind in _NOT_TEXT:
            continue
        elif kind == "txbxContent":
            text_boxes.append(child)
        elif kind == "mc:AlternateContent":  # the same content twice: read the first choice only
            choice = next((c for c in child if _key(c.tag) == "mc:Choice"), None)
            stack.append(iter([choice] if choice is not None else list(child)))
        else:
            stack.append(iter(child))
    return "".join(out)


def _items(container: ET.Element, wanted: frozenset[str]) -> Iterator[ET.Element]:
    """Children of ``container`` whose kind is in ``wanted``, looking through content
    controls and other transparent wrappers."""
    stack: list[Iterator[ET.Element]] = [iter(container)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        kind = _key(child.tag)
        if kind in wanted:
            yield child
        elif kind in _TRANSPARENT:
            stack.append(iter(child))


_BLOCK_KINDS = frozenset({"p", "tbl"})


def _table_rows(table: ET.Element, depth: int = 0) -> list[str]:
    rows: list[str] = []
    if depth > _MAX_TABLE_DEPTH:
        return rows
    for row in _items(table, frozenset({"tr"})):
        cells: list[str] = []
        for cell in _items(row, frozenset({"tc"})):
            parts: list[str] = []
            for block in _items(cell, _BLOCK_KINDS):
                if _key(block.tag) == "tbl":
                    parts.append(" ; ".join(_table_rows(block, depth + 1)))
                else:
                    boxes: list[ET.Element] = []
                    parts.append(_paragraph_text(block, boxes))
            text = _squeeze(" ".join(_clean(part).replace("\n", " ") for part in parts)).strip()
            if text:
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return rows


class _Document:
    """Turns body blocks into sections."""

    def __init__(self, styles: _Styles, lists: _Lists):
        self.styles = styles
        self.lists = lists
        self.sections: list[Section] = []
        self.headings: list[tuple[int, str]] = []
        self.blocks: list[tuple[str, bool]] = []  # (text, is a list item)
        self.title: str | None = None
        self.chars = 0  # text added so far (max_text_chars)

    def add(self, text: str, is_item: bool = False) -> None:
        self.chars += len(text)
        self.blocks.append((text, is_item))

    def block(self, element: ET.Element, depth: int = 0) -> None:
        kind = _key(element.tag)
        if kind == "p":
            self.paragraph(element, depth)
        elif kind == "tbl":
            rows = _table_rows(element)
            if rows:
                self.add("\n".join(rows))
        elif kind in _TRANSPARENT:
            for child in _items(element, _BLOCK_KINDS):
                self.block(child, depth)

    def paragraph(self, paragraph: ET.Element, depth: int) -> None:
        boxes: list[ET.Element] = []
        text = _clean(_paragraph_text(paragraph, boxes))
        if text:
            ppr = _child(paragraph, "pPr")
            style = _val(_child(ppr, "pStyle"))
            level = _outline_level(ppr) or self.styles.heading_level(style)
            if self.styles.is_title(style):
                self.title = self.title or text.replace("\n", " ")
                self.add(text)
            elif level is not None and depth == 0 and len(text) <= 300:
                self.heading(level, text.replace("\n", " "))
            else:
                numbering = _numbering(ppr) or self.styles.numbering(style)
                marker = self.lists.marker(*numbering) if numbering else None
                if marker is None:
                    self.add(text)
                else:
                    indent = "  " * numbering[1]
                    self.add(f"{indent}{marker} {text}" if marker else f"{indent}{text}", True)
        if depth < 4:  # text boxes may hold text boxes; a few levels is plenty
            for box in boxes:
                for child in _items(box, _BLOCK_KINDS):
                    self.block(child, depth + 1)

    def heading(self, level: int, text: str) -> None:
        self.flush()
        while self.headings and self.headings[-1][0] >= level:
            self.headings.pop()
        self.headings.append((level, text))
        self.add(text)

    def flush(self) -> None:
        if not self.blocks:
            return
        out: list[str] = []
        for index, (text, is_item) in enumerate(self.blocks):
            if index:
                out.append("\n" if is_item and self.blocks[index - 1][1] else "\n\n")
            out.append(text)
        path = " > ".join(text for _, text in self.headings) or None
        self.sections.append(Section("".join(out), heading=path))
        self.blocks = []


# --------------------------------------------------------------------------- the parser

class DocxParser:
    """``application/vnd.openxmlformats-officedocument.wordprocessingml.document``."""

    media_types = frozenset({MEDIA_TYPE})
    options_schema = DocxOptionsSchema

    def __init__(self, max_entries: int = 10_000, max_uncompressed_bytes: int = 256 << 20,
                 max_compression_ratio: float = 100.0, include_headers_footers: bool = True,
                 max_block_bytes: int = 16 << 20, max_text_chars: int = 10_000_000):
        self.limits = ArchiveLimits(max_entries=max_entries, max_uncompressed_bytes=max_uncompressed_bytes,
                                    max_compression_ratio=max_compression_ratio, max_block_bytes=max_block_bytes,
                                    max_text_chars=max_text_chars)
        self.include_headers_footers = include_headers_footers

    def parse(self, blob: Blob) -> ParsedDocument:
        package = Package(blob.data, self.limits)
        try:
            return self._parse(package)
        except defusedxml.DefusedXmlException as error:
            raise InvalidInput(f"The DOCX contains XML with a DTD or entities, which Word never writes: {error}",
                               reason="corrupt_file") from None
        except ET.ParseError as error:
            raise InvalidInput(f"The DOCX contains malformed XML: {error}", reason="corrupt_file") from None

    def _parse(self, package: Package) -> ParsedDocument:
        main = self._main_part(package)
        relations = self._relations(package, rels_name(main))
        styles = _Styles(self._xml(package, self._related(relations, "styles", "word/styles.xml")))
        lists = _Lists(self._xml(package, self._related(relations, "numbering", "word/numbering.xml")))
        document = _Document(styles, lists)
        self._read_body(package, main, document, self.limits)
        document.flush()
        sections = document.sections
        if self.include_headers_footers:
            extra = self._furniture(package, relations, styles)
            if extra:
                sections.append(Section(extra))
        title = self._core_title(package) or document.title
        return ParsedDocument(sections=tuple(s for s in sections if s.text.strip()), title=title)

    @staticmethod
    def _read_body(package: Package, main: str, document: _Document, limits: ArchiveLimits) -> None:
        """Parse the main part as it inflates; each block is handled and dropped as soon
        as it is complete, so a large document never sits in memory as a tree (and no
        block may be larger than ``max_block_bytes`` of XML)."""
        with package.open(main) as raw:
            stream = BlockBudget(raw, limits.max_block_bytes)
            depth = 0
            body: ET.Element | None = None
            for event, element in SafeET.iterparse(stream, events=("start", "end"), forbid_dtd=True):
                if event == "start":
                    depth += 1
                    if depth == 2 and _key(element.tag) == "body":
                        body = element
                        stream.mark()
                    continue
                if depth == 3 and body is not None:
                    document.block(element)
                    element.clear()
                    body.remove(element)
                    stream.mark()
                    if document.chars > limits.max_text_chars:
                        raise InvalidInput(f"The DOCX has more than {limits.max_text_chars} characters of text.",
                                           reason="document_too_large")
                depth -= 1

    @staticmethod
    def _main_part(package: Package) -> str:
        for target, kind in DocxParser._relations(package, "_rels/.rels"):
            if kind.endswith("/officeDocument") and package.has(target):
                return target
        if package.has(_MAIN_DOCUMENT):
            return _MAIN_DOCUMENT
        raise InvalidInput("The file is a zip archive but not a Word document.", reason="corrupt_file")

    @staticmethod
    def _relations(package: Package, rels: str) -> list[tuple[str, str]]:
        """``(target part, relationship type)`` pairs of one ``.rels`` part."""
        root = DocxParser._xml(package, rels)
        if root is None:
            return []
        source = rels.replace("_rels/", "").removesuffix(".rels")
        return [(resolve(source, rel.get("Target", "")), rel.get("Type", ""))
                for rel in root if rel.tag == _REL and rel.get("TargetMode") != "External" and rel.get("Target")]

    @staticmethod
    def _related(relations: list[tuple[str, str]], kind: str, fallback: str) -> str:
        for target, rel_type in relations:
            if rel_type.endswith("/" + kind):
                return target
        return fallback

    @staticmethod
    def _xml(package: Package, name: str) -> ET.Element | None:
        data = package.read(name)
        return SafeET.fromstring(data, forbid_dtd=True) if data else None

    def _furniture(self, package: Package, relations: list[tuple[str, str]], styles: _Styles) -> str:
        """Headers, footers, footnotes and endnotes: each distinct text once, page numbers
        and other number-only lines left out."""
        seen: dict[str, None] = {}
        for target, rel_type in relations:
            if rel_type.rsplit("/", 1)[-1] not in ("header", "footer", "footnotes", "endnotes"):
                continue
            root = self._xml(package, target)
            if root is None:
                continue
            part = _Document(styles, _Lists(None))
            for element in root.iter():
                if _key(element.tag) in ("hdr", "ftr", "footnote", "endnote"):
                    for block in _items(element, _BLOCK_KINDS):
                        part.block(block, depth=1)
            part.flush()
            for section in part.sections:
                for line in section.text.split("\n"):
                    line = line.strip()
                    if line and not _ONLY_NUMBERS.match(line):
                        seen.setdefault(line, None)
        return "\n".join(seen)

    @staticmethod
    def _core_title(package: Package) -> str | None:
        root = DocxParser._xml(package, "docProps/core.xml")
        if root is None:
            return None
        title = root.find(_DC_TITLE)
        text = _clean(title.text or "") if title is not None else ""
        return text.replace("\n", " ") or None

