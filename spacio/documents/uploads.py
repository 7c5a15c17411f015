"""Multipart uploads that never hold a whole oversized file.

Werkzeug writes each uploaded file into the stream ``UploadRequest._get_file_stream``
returns, chunk by chunk, while it reads the request. ``UploadBuffer`` hashes everything
it is given but keeps at most ``limit`` bytes (in memory up to 1 MiB, then in a temporary
file): a file over the limit is marked ``too_large`` and its bytes are dropped as they
arrive, while the other files of the request are kept.
"""

import hashlib
import io
import os
import re
import tempfile
import unicodedata

from flask import current_app

from spacio.requests import Request

MIB = 1024 * 1024
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


class UploadBuffer(io.RawIOBase):
    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.size = 0
        self.too_large = False
        self._hash = hashlib.sha256()
        self._file = tempfile.SpooledTemporaryFile(max_size=MIB)

    @property
    def sha256(self):
        return self._hash.hexdigest()

    def writable(self):
        return True

    def readable(self):
        return True

    def seekable(self):
        return True

    def write(self, data):
        self.size += len(data)
        self._hash.update(data)
        if self.size > self.limit:
            if not self.too_large:
                self.too_large = True
                self._file.close()
                self._file = io.BytesIO()
            return len(data)
        return self._file.write(data)

    def read(self, size=-1):
        return self._file.read(size)

    def readline(self, size=-1):
        return self._file.readline(size)

    def seek(self, offset, whence=os.SEEK_SET):
        return self._file.seek(offset, whence)

    def tell(self):
        return self._file.tell()

    def close(self):
        self._file.close()
        super().close()


class UploadRequest(Request):
    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return UploadBuffer(int(current_app.config["UPLOAD_MAX_FILE_BYTES"]))


def read_upload(storage, limit):
    """(data or None if too large, size, sha256) of an uploaded FileStorage."""
    stream = storage.stream
    if isinstance(stream, UploadBuffer):
        stream.seek(0)
        return (None if stream.too_large else stream.read()), stream.size, stream.sha256
    # any other stream (another request class): read it with the same bound
    digest, kept, size = hashlib.sha256(), [], 0
    for block in iter(lambda: stream.read(MIB), b""):
        size += len(block)
        digest.update(block)
        if size <= limit:
            kept.append(block)
    return (None if size > limit else b"".join(kept)), size, digest.hexdigest()


def safe_filename(name, default="document"):
    """A display name that is safe to store, log and send back in Content-Disposition:
    no directories, no control or bidi characters, at most 255 characters (keeping the
    extension). Stored bytes are never addressed by it."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[/\\]", name)[-1]
    name = _UNSAFE.sub("", re.sub(r"[\t\n\r\v\f]", " ", name))
    name = re.sub(r"\s+", " ", name).strip(" .")  # ". . ." and "..": no name left
    if not name:
        return default
    if len(name) > 255:
        stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 16 else ""
        name = (stem if ext else name)[: 255 - len(ext) - (1 if ext else 0)] + (f".{ext}" if ext else "")
    return name
