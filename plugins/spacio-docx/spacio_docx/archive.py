"""Opening a DOCX (a zip) without trusting it.

Every limit is checked on the central directory, before a single byte is inflated:

* ``max_entries``: a Word file has tens of parts, a few thousand with many images. The
  entries are counted on the raw directory first: ``zipfile`` builds an object per entry,
  and a 25 MB zip of 300,000 empty entries took it seconds and 160 MB.
* ``max_uncompressed_bytes``: the declared size of all entries together.
* ``max_compression_ratio``: for entries over 1 MiB. XML compresses 5-40x in the
  evaluation files (the highest is 40.5x); zip bombs reach 1000x and more.

Two limits hold while the main document inflates, for what the directory cannot show:

* ``max_block_bytes``: XML of one paragraph or table (``BlockBudget``). Each block is
  parsed as a tree, and a tree costs ~30 times its XML: one 100 MB paragraph (2 MB
  compressed, ratio 51) took 10 s and 2.9 GB before this limit. The largest block in the
  evaluation files is 6 KB.
* ``max_text_chars``: the extracted text (checked by the parser, block by block).

Embedded objects (``word/embeddings``: spreadsheets, other DOCX, any zip) are never opened,
so archives nested in archives cost nothing beyond their entry in the directory.

The declared sizes can be trusted as upper bounds: ``zipfile`` never returns more bytes
than an entry declares, and a CRC or length mismatch fails the read (→ ``corrupt_file``).
"""

from __future__ import annotations

import io
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from spacio.rag.contracts import InvalidInput

_RATIO_GRACE_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int = 10_000
    max_uncompressed_bytes: int = 256 << 20
    max_compression_ratio: float = 100.0
    max_part_bytes: int = 16 << 20  # XML parts read whole (styles, numbering, headers...)
    max_block_bytes: int = 16 << 20  # XML of one paragraph or table of the main document
    max_text_chars: int = 10_000_000  # extracted text (a 500-page book is about 1.5 million)


class Package:
    """The parts of an OPC package (a DOCX), by name, read lazily and within limits."""

    def __init__(self, data: bytes, limits: ArchiveLimits):
        self.limits = limits
        entries = _count_entries(data, limits.max_entries)
        if entries is not None and entries > limits.max_entries:
            raise InvalidInput(f"The archive has more than {limits.max_entries} entries.", reason="archive_too_large")
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, KeyError) as error:
            raise InvalidInput(f"The file is not a readable DOCX (zip): {error}", reason="corrupt_file") from None
        self._check(infos)
        self._by_name = {info.filename: info for info in infos}
        self._by_lower = {info.filename.lower(): info for info in infos}

    def _check(self, infos: list[zipfile.ZipInfo]) -> None:
        limits = self.limits
        if len(infos) > limits.max_entries:
            raise InvalidInput(f"The archive has {len(infos)} entries; at most {limits.max_entries} are allowed.",
                               reason="archive_too_large")
        total = sum(info.file_size for info in infos)
        if total > limits.max_uncompressed_bytes:
            raise InvalidInput(f"The archive would expand to {total} bytes; at most "
                               f"{limits.max_uncompressed_bytes} are allowed.", reason="archive_too_large")
        for info in infos:
            if info.file_size > _RATIO_GRACE_BYTES:
                ratio = info.file_size / max(info.compress_size, 1)
                if ratio > limits.max_compression_ratio:
                    raise InvalidInput(f"The archive entry {info.filename!r} is compressed {ratio:.0f}:1, "
                                       f"more than {limits.max_compression_ratio:g}:1 (a zip bomb?).",
                                       reason="archive_too_large")

    def has(self, name: str) -> bool:
        return self._info(name) is not None

    def _info(self, name: str) -> zipfile.ZipInfo | None:
        name = name.lstrip("/")
        return self._by_name.get(name) or self._by_lower.get(name.lower())

    def read(self, name: str) -> bytes | None:
        """A whole part (for the small ones), or None when the package does not have it."""
        info = self._info(name)
        if info is None:
            return None
        if info.file_size > self.limits.max_part_bytes:
            raise InvalidInput(f"The part {info.filename!r} is {info.file_size} bytes; at most "
                               f"{self.limits.max_part_bytes} are allowed.", reason="archive_too_large")
        with self.open(name) as stream:
            return stream.read()

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """A part as a stream (the main document is parsed as it inflates)."""
        info = self._info(name)
        if info is None:
            raise InvalidInput(f"The DOCX has no part {name!r}.", reason="corrupt_file")
        if info.flag_bits & 0x1:
            raise InvalidInput(f"The archive entry {info.filename!r} is encrypted.", reason="encrypted")
        try:
            stream = self._zip.open(info)
        except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as error:
            raise InvalidInput(f"The DOCX is damaged: {error}", reason="corrupt_file") from None
        try:
            with stream:
                yield stream
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # bad CRC, truncated data while reading
            raise InvalidInput(f"The DOCX is damaged: {error}", reason="corrupt_file") from None


class BlockBudget(io.RawIOBase):
    """A part's stream that fails once more than ``limit`` bytes were read since the last
    ``mark()``: the parser marks after each block, so no single block (or anything outside
    the body) can make the tree grow past the limit."""

    def __init__(self, stream: IO[bytes], limit: int):
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._since_mark = 0

    def readable(self) -> bool:
        return True

    def mark(self) -> None:
        self._since_mark = 0

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._limit + 1  # never read a whole part at once
        data = self._stream.read(min(size, self._limit + 1))
        self._since_mark += len(data)
        if self._since_mark > self._limit:
            raise InvalidInput(f"A paragraph or table of the DOCX is over {self._limit} bytes of XML.",
                               reason="document_too_large")
        return data


def _count_entries(data: bytes, limit: int) -> int | None:
    """Entries of the central directory, read from the raw records and stopping past
    ``limit``; None when the directory cannot be found this way (zipfile then decides)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
    if end < 0 or end + 22 > len(data):
        return None
    (size,) = struct.unpack_from("<I", data, end + 12)
    position, count = end - size, 0  # counted back from the end record, as zipfile does
    if position < 0:
        return None
    while count <= limit and position + 46 <= end and data.startswith(b"PK\x01\x02", position):
        name, extra, comment = struct.unpack_from("<HHH", data, position + 28)
        position += 46 + name + extra + comment
        count += 1
    return count


def resolve(source_part: str, target: str) -> str:
    """A relationship target, relative to the part that holds the relationship."""
    if target.startswith("/"):
        return target.lstrip("/")
    return posixpath.normpath(posixpath.join(posixpath.dirname(source_part), target))


def rels_name(part: str) -> str:
    folder, name = posixpath.split(part)
    return posixpath.join(folder, "_rels", name + ".rels")
