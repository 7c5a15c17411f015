"""What an upload really is, decided from its bytes, and how to turn text bytes into str.

``sniff`` never trusts the file name or the client's Content-Type for the kind of file: an
HTML page named ``report.pdf`` is HTML, a PDF named ``notes.txt`` is a PDF. The name is used
only where the bytes cannot tell:

* **Markdown or plain text.** Both are just text. A text file is ``text/markdown`` when its
  name ends in a Markdown extension (``.md``, ``.markdown``, ...), ``text/plain`` when it ends
  in ``.txt``/``.text``, and otherwise Markdown only when it clearly looks like it (two or
  more ATX headings such as ``## Usage``, or a heading plus a fenced code block).
* **A Markdown file that starts with HTML** (README files often open with
  ``<h1 align="center">``) stays Markdown when it is named ``.md``; a document that starts
  with ``<!DOCTYPE html>`` or ``<html>`` is HTML whatever its name.
* **An empty file** has no content to judge, so it gets the type its extension names (a
  zero-byte ``.pdf`` then fails as a corrupt PDF), or ``text/plain``.

Content rules: ``%PDF-`` in the first KiB is a PDF (so is a file with a damaged header but
a PDF trailer: the PDF parser then reports it as corrupt); a zip holding
``word/document.xml`` is a DOCX, any other zip is unsupported; known binary signatures
(images, executables, archives, OLE, RTF, PostScript) and SVG are unsupported; anything
else is text if its first 64 KiB decode (BOM, UTF-16/32 told by NUL positions, UTF-8, or a
legacy charset) with under 1 % control characters, and then HTML, JSON, Markdown or plain
text by its first characters. UTF-16 without a BOM is recognised only when it holds some
Latin text (its NUL bytes); CJK-only UTF-16 needs a BOM.

It decodes at most the first 64 KiB (a zip is searched for its entry name): 1-10 ms on
a 25 MB upload.
"""

from __future__ import annotations

import codecs
import json
import re

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
HTML = "text/html"
MARKDOWN = "text/markdown"
JSON = "application/json"
TEXT = "text/plain"

SUPPORTED = frozenset({PDF, DOCX, HTML, MARKDOWN, JSON, TEXT})

_SAMPLE = 64 * 1024
_WINDOW = 1 << 20

_MARKDOWN_EXTENSIONS = (".md", ".markdown", ".mdown", ".mkd", ".mkdn", ".mdwn", ".mdtxt", ".mdtext")
_PLAIN_EXTENSIONS = (".txt", ".text")
_BY_EXTENSION = {
    ".pdf": PDF, ".docx": DOCX, ".html": HTML, ".htm": HTML, ".xhtml": HTML, ".json": JSON,
    ".txt": TEXT, ".text": TEXT, **{ext: MARKDOWN for ext in _MARKDOWN_EXTENSIONS},
}

# Signatures of common binary formats we do not parse. Most would also fail the text test
# below; naming them makes the answer certain and cheap.
_BINARY_MAGIC = (
    b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"\x7fELF", b"\xca\xfe\xba\xbe",
    b"\xcf\xfa\xed\xfe", b"\x1f\x8b", b"\xfd7zXZ", b"7z\xbc\xaf\x27\x1c", b"\xd0\xcf\x11\xe0", b"\x00asm",
    b"\x1a\x45\xdf\xa3", b"SQLite format 3", b"%!PS", b"{\\rtf",
)
# Signatures made of letters, which a text may also start with ("BMP receptor IA is ...",
# "ID3 gene"): they mark a binary format only when binary bytes follow.
_LETTER_MAGIC = (b"GIF87a", b"GIF89a", b"RIFF", b"BM", b"MZ", b"BZh", b"Rar!", b"OggS", b"fLaC", b"ID3",
                 b"wOFF", b"wOF2")

_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's.
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)

# Control characters that do not occur in text (everything below U+0020 except TAB, LF,
# VT, FF, CR and ESC, plus DEL).
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_CONTROL_BYTES = re.compile(b"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_MAX_CONTROL_RATIO = 0.01

_LEADING_NOISE = re.compile(r"(?:\s+|<\?xml[^>]*\?>|<!--.*?-->)*", re.S)
_HTML_STRONG = re.compile(r"<(?:!doctype\s+html|html)[\s>]", re.I)
_HTML_WEAK = re.compile(
    r"<(?:head|body|script|style|iframe|h[1-6]|div|font|table|a|title|b|br|p|meta|link|span|"
    r"section|article|header|nav|main|ul|ol|center|form|img|!--)[\s/>]", re.I)
_SVG = re.compile(r"<(?:svg|!doctype\s+svg)[\s>]", re.I)
_JSON_START = re.compile(r'[\{\[]\s*(?:["\{\[\]\}\-\d]|true\b|false\b|null\b)')
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+\S", re.M)
_MD_FENCE = re.compile(r"^ {0,3}(?:```|~~~)", re.M)

# encoding_rs (WHATWG) names that Python spells differently, or whose WHATWG meaning is a
# superset of Python's codec of the same name.
_WHATWG_TO_PYTHON = {
    "shift_jis": "cp932", "euc-kr": "cp949", "gbk": "gb18030", "gb2312": "gb18030",
    "big5": "big5hkscs", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874",
    "x-mac-cyrillic": "mac_cyrillic", "koi8-u": "koi8_u", "ibm866": "cp866",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "ascii": "cp1252", "us-ascii": "cp1252",
    "iso-8859-9": "cp1254", "iso-8859-11": "cp874",
}


def sniff(data: bytes, filename: str = "") -> str | None:
    """The media type of ``data`` judged from its content (see the module docstring), one
    of ``SUPPORTED``, or ``None`` when it is nothing Spacio can parse."""
    extension = _extension(filename)
    if not data:
        return _BY_EXTENSION.get(extension, TEXT)
    head = data[:1024]
    if b"%PDF-" in head:
        return PDF
    if data.startswith(b"PK\x03\x04"):
        return DOCX if _is_docx(data) else None
    if data.startswith(_BINARY_MAGIC) or (data.startswith(_LETTER_MAGIC) and _CONTROL_BYTES.search(head)):
        return None
    if _looks_like_headerless_pdf(data):
        # A PDF whose "%PDF-" header was damaged; the PDF parser reports it as corrupt.
        return PDF
    text = _decode_sample(data[:_SAMPLE])
    if text is None:
        return None
    return _text_flavour(text, extension, data[-256:])


def decode_text(data: bytes) -> str:
    """Bytes of a text file as str: a byte-order mark wins, then UTF-16/UTF-32 without a
    BOM (recognised by where their NUL bytes sit), then strict UTF-8, then UTF-8 with a few
    broken bytes, then a legacy-charset guess by Firefox's detector, chardetng (right for
    cp1252, latin-1, iso-8859-8, cp1251, Shift_JIS... even on short texts, where
    charset-normalizer took German for cp1250 and Hebrew for cp1251). Undecodable bytes
    become U+FFFD. About 35 ms for 25 MB of UTF-8, 0.2 s for 25 MB of cp1252."""
    return decode_text_with_encoding(data)[0]


def decode_text_with_encoding(data: bytes) -> tuple[str, str]:
    """``decode_text`` plus the Python codec name it used."""
    if not data:
        return "", "utf-8"
    bom = detect_bom(data)
    if bom is not None:
        encoding, size = bom
        return data[size:].decode(encoding, errors="replace"), encoding
    wide = detect_wide_encoding(data[:_SAMPLE])  # before UTF-8: NUL bytes are valid UTF-8
    if wide is not None:
        try:
            return data.decode(wide), wide
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as error:
        first_error = error.start
    # Decide on a window around the first non-UTF-8 byte: cheap on 25 MB, and it holds
    # the bytes that matter.
    window = data[max(0, first_error - _WINDOW // 2):first_error + _WINDOW // 2]
    encoding = "utf-8" if mostly_utf8(window) else guess_legacy_encoding(window)
    return data.decode(encoding, errors="replace"), encoding


def mostly_utf8(data: bytes) -> bool:
    """UTF-8 with a few bad bytes (a truncated character, one stray Latin-1 byte): at
    least as many valid multi-byte characters as broken sequences. Legacy 8-bit text
    almost never forms a valid multi-byte UTF-8 sequence by chance."""
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=False)
    broken = text.count("\ufffd")
    valid = len(text) - len(text.encode("ascii", errors="ignore")) - broken
    return valid > 0 and broken <= valid


def guess_legacy_encoding(data: bytes) -> str:
    """A Python codec name for bytes that are not UTF-8 (or UTF-8 with a few bad bytes)."""
    import chardetng_py  # imported here: only files that are not UTF-8 need it

    return python_codec(chardetng_py.detect(data, allow_utf8=True))


def python_codec(label: str) -> str:
    """A Python codec for a WHATWG/IANA charset label (``<meta charset>``, chardetng);
    ``cp1252`` for labels Python does not know, as browsers do for unknown labels."""
    name = label.strip().lower()
    name = _WHATWG_TO_PYTHON.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "cp1252"


def text_sample(data: bytes) -> str | None:
    """The decoded start of ``data`` if it is text, else None (for parsers that want the
    same text test as ``sniff``)."""
    return _decode_sample(data[:_SAMPLE])


# --------------------------------------------------------------------------- helpers

def _extension(filename: str) -> str:
    name = filename.rsplit("/", 1)[-1].rsplit("\\", 1)[-1].lower()
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def detect_bom(data: bytes) -> tuple[str, int] | None:
    for mark, encoding in _BOMS:
        if data.startswith(mark):
            return encoding, len(mark)
    return None


def detect_wide_encoding(sample: bytes) -> str | None:
    """UTF-32 or UTF-16 without a BOM, told apart by where the NUL bytes sit: in mostly
    Latin text every other (UTF-16) or three of four (UTF-32) bytes are NUL."""
    if b"\x00" not in sample:
        return None
    n = len(sample) // 4 * 4
    if n < 4:
        return None
    quarter = n // 4
    zeros = [sample[k:n:4].count(0) / quarter for k in range(4)]
    if zeros[2] > 0.95 and zeros[3] > 0.95 and zeros[0] < 0.5:
        return "utf-32-le"
    if zeros[0] > 0.95 and zeros[1] > 0.95 and zeros[3] < 0.5:
        return "utf-32-be"
    even = (zeros[0] + zeros[2]) / 2
    odd = (zeros[1] + zeros[3]) / 2
    if odd > 0.4 and even < 0.05:
        return "utf-16-le"
    if even > 0.4 and odd < 0.05:
        return "utf-16-be"
    return None


def _decode_sample(sample: bytes) -> str | None:
    """The sample as text, or None when it is binary. The sample may end inside a
    multi-byte character, so decode incrementally without flushing."""
    bom = detect_bom(sample)
    if bom is not None:
        encoding, size = bom
        text = _decode_partial(sample[size:], encoding)
    else:
        encoding = detect_wide_encoding(sample)
        if encoding is None and b"\x00" in sample:
            return None
        text = _decode_partial(sample, encoding or "utf-8")
        if text is None and encoding is None:
            # Legacy single/multi-byte charset: judge by control bytes, decode later.
            if len(_CONTROL_BYTES.findall(sample)) > _MAX_CONTROL_RATIO * len(sample):
                return None
            return sample.decode(guess_legacy_encoding(sample), errors="replace")
    if text is None:
        return None
    if len(_CONTROL.findall(text)) > _MAX_CONTROL_RATIO * max(len(text), 1):
        return None
    return text


def _decode_partial(data: bytes, encoding: str) -> str | None:
    try:
        return codecs.getincrementaldecoder(encoding)("strict").decode(data, final=False)
    except UnicodeDecodeError:
        return None


def _looks_like_headerless_pdf(data: bytes) -> bool:
    tail = data[-2048:]
    return data.startswith(b"%") and b"startxref" in tail and b"%%EOF" in tail and b" obj" in data[:_SAMPLE]


def _is_docx(data: bytes) -> bool:
    """A zip with an entry named ``word/document.xml`` (DOCX, DOCM and DOTX keep the body
    there), found as a local file header or a central directory record. Raw bytes rather
    than ``zipfile``: opening a zip of 300,000 entries takes zipfile seconds, and a zip
    whose directory is damaged is still a (broken) DOCX for the DOCX parser to report."""
    name = b"word/document.xml"
    at = data.find(name)
    while at >= 0:
        local = data[at - 30:at - 26] == b"PK\x03\x04" and data[at - 4:at - 2] == b"\x11\x00"
        central = data[at - 46:at - 42] == b"PK\x01\x02" and data[at - 18:at - 16] == b"\x11\x00"
        if local or central:
            return True
        at = data.find(name, at + 1)
    return False


def _text_flavour(text: str, extension: str, tail: bytes) -> str | None:
    head = text[:8192].lstrip("\ufeff")
    start = _LEADING_NOISE.match(head)
    body = head[start.end():] if start else head
    if _HTML_STRONG.match(body):
        return HTML
    if extension in _MARKDOWN_EXTENSIONS:
        return MARKDOWN
    if _HTML_WEAK.match(body):
        return HTML
    if _SVG.match(body):
        return None  # an SVG image, possibly after an XML prolog or comments
    # The tail is raw bytes, so stripping NULs lets a UTF-16/32 "}" pass too.
    ends_like_json = tail.rstrip(b" \t\r\n\x00")[-1:] in (b"}", b"]")
    if (_JSON_START.match(body) and ends_like_json) or _is_json_scalar(body, text):
        return JSON
    if extension in _PLAIN_EXTENSIONS:
        return TEXT
    if len(_MD_HEADING.findall(text)) >= 2 or (_MD_HEADING.search(text) and _MD_FENCE.search(text)):
        return MARKDOWN
    return TEXT


def _is_json_scalar(body: str, text: str) -> bool:
    """``{}``/``[]`` and other tiny complete JSON documents the start pattern misses."""
    if len(text) > 64 or body[:1] not in ("{", "["):
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
