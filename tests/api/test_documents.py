"""Documents (API.md "Documents"): upload with per-file outcomes, the ingestion lifecycle,
listing, the original file, chunks, delete, reindex, and how ingestion behaves when a
plugin fails or the server's plugins change under a space.

Ingestion runs on the in-process worker (StubBroker) with the fast ``hashing`` embedder;
``client.ingested()`` waits for it. The vector store is ``local`` on SQLite and
``pgvector`` on PostgreSQL, and the tests count vectors through the real store.
"""

import hashlib
import io
import re
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject
from sqlalchemy import func, select, text, update

from spacio.documents.models import STATUSES, Chunk, Document, DocumentFile
from spacio.spaces.models import Space
from spacio.extensions import db
from spacio.jobs import jobs
from spacio.rag import contracts, pipeline, registry
from spacio.rag.builtins.local_store import LocalVectorStore
from tests.api.helpers import (assert_pagination, count_rows, hold_row, lock_waits, pagination_of, parse_timestamp,
                               space_url)
from tests.conftest import ApiClient, assert_error
from tests.integration.workers import wait_for

EVAL_DOCS = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "docs"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(48)
# an accepted file's entry: the in-process worker may already be at it when the response is written
ACCEPTED = {"queued", "parsing", "embedding", "ready"}
LISTED_FIELDS = {"id", "filename", "media_type", "size_bytes", "sha256", "status", "error", "pages", "chunks",
                 "created_at", "updated_at"}


# --------------------------------------------------------------------------- helpers

def pdf(*pages: str) -> bytes:
    """A small valid PDF with one page per text (lines split on newlines), built with pypdf."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))
    for text in pages:
        page = writer.add_blank_page(612, 792)
        content = DecodedStreamObject()
        lines = b"".join(b"(" + line.encode("latin-1") + b") Tj 0 -14 Td " for line in text.split("\n"))
        content.set_data(b"BT /F1 10 Tf 72 760 Td " + lines + b"ET")
        page[NameObject("/Contents")] = writer._add_object(content)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def prose(topic: str, sentences: int = 40) -> str:
    """Text about one topic, long enough for several chunks of the default size."""
    return "\n".join(f"Sentence {i} is about {topic} and the number {i * 37 % 101}." for i in range(sentences))


def docs_url(space_id, *rest):
    return space_url(space_id, "documents", *rest)


def get_document(client, user, space_id, document_id):
    response = client.get(docs_url(space_id, document_id), headers=user.headers)
    assert response.status_code == 200, response.json
    return response.json


def vectors(app, space_id, document_id=None):
    """Vectors the space's index holds (of one document), counted by the real store."""
    with app.app_context():
        space = db.session.get(Space, uuid.UUID(str(space_id)))
        namespace = pipeline.namespace_of(space_id, space.pipeline if space is not None else None)
        return registry(app).vector_store.count(namespace, None if document_id is None else str(document_id))


def chunk_rows(app, document_id):
    """(id, ordinal) of a document's chunk rows, by ordinal."""
    with app.app_context():
        return [(str(i), o) for i, o in db.session.execute(
            select(Chunk.id, Chunk.ordinal).where(Chunk.document_id == uuid.UUID(str(document_id)))
            .order_by(Chunk.ordinal))]


def attempts_of(app, document_id):
    with app.app_context():
        return db.session.get(Document, uuid.UUID(str(document_id))).attempts


def set_status(app, document_id, status, **values):
    """Put a document row in the state a crashed process would leave it in."""
    with app.app_context():
        db.session.execute(update(Document).where(Document.id == uuid.UUID(str(document_id)))
                           .values(status=status, **values))
        db.session.commit()


def assert_one_copy_of_each_chunk(app, space_id, document):
    """The document's chunk rows run 0..n-1, and the store holds exactly one vector per chunk."""
    rows = chunk_rows(app, document["id"])
    assert [o for _, o in rows] == list(range(document["chunks"])), rows
    assert document["chunks"] > 0
    assert vectors(app, space_id, document["id"]) == document["chunks"]
    return rows


@pytest.fixture
def configured(make_app):
    """An ApiClient on an app with extra config, plus Alice and her space on it."""

    def build(**config):
        client = ApiClient(make_app(**config).test_client())
        owner = client.user("alice@example.com", "Alice")
        return client, owner, client.space(owner, "Research")["id"]

    return build


# --------------------------------------------------------------------------- upload and lifecycle

def test_an_upload_of_several_files_gives_one_entry_per_file_in_order(client, alice, space):
    files = [(prose("rivers").encode(), "rivers.txt"), (b"# Title\n\nSome *markdown* about lakes.\n", "lakes.md"),
             (b"<!DOCTYPE html><html><body><p>Mountains and valleys.</p></body></html>", "hills.html")]
    response = client.upload(alice, space["id"], *files)

    assert response.status_code == 202, response.json
    body = response.json
    assert body["ingestion"] == {"count": 3}
    entries = body["documents"]
    assert [d["filename"] for d in entries] == ["rivers.txt", "lakes.md", "hills.html"]
    assert [d["media_type"] for d in entries] == ["text/plain", "text/markdown", "text/html"]
    for entry, (data, _) in zip(entries, files):
        assert LISTED_FIELDS <= set(entry), entry
        assert entry["status"] in ACCEPTED and entry["error"] is None
        assert entry["size_bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["uploaded_by"] == alice.id
    assert len({d["id"] for d in entries}) == 3

    client.ingested()
    for entry in entries:
        document = get_document(client, alice, space["id"], entry["id"])
        assert document["status"] == "ready", document
        assert document["error"] is None and document["progress"] == 1.0
        assert document["pages"] is None  # formats without pages
        assert parse_timestamp(document["updated_at"]) >= parse_timestamp(document["created_at"])
        assert_one_copy_of_each_chunk(client.app, space["id"], document)
    assert get_document(client, alice, space["id"], entries[0]["id"])["chunks"] > 1


def test_the_status_moves_through_the_lifecycle_with_progress(configured):
    """queued -> parsing -> embedding (progress rising) -> ready, seen by polling GET while
    a slowed-down embedder works through one chunk per call."""
    client, alice, _ = configured(EMBED_BATCH_SIZE=1, PLUGINS={"EMBEDDER": {"HASHING": {"DELAY_MS": 80}}})
    space_id = client.space(alice, "Small chunks", settings={"chunk_size": 64, "chunk_overlap": 0})["id"]
    # ~28 chunks at 80 ms each: progress is written about once a second, twice in all
    response = client.upload(alice, space_id, (prose("glaciers", 130).encode(), "ice.txt"))
    document_id = response.json["documents"][0]["id"]
    assert response.json["documents"][0]["status"] in ACCEPTED

    seen, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        document = get_document(client, alice, space_id, document_id)
        assert document["status"] in STATUSES
        if not seen or seen[-1][0] != document["status"] or seen[-1][1] != document["progress"]:
            seen.append((document["status"], document["progress"]))
        if document["status"] in ("ready", "failed"):
            break
        time.sleep(0.02)
    statuses = list(dict.fromkeys(s for s, _ in seen))
    assert statuses[-1] == "ready", seen
    assert set(statuses) <= {"queued", "parsing", "embedding", "ready"}
    order = ["queued", "parsing", "embedding", "ready"]
    assert statuses == sorted(statuses, key=order.index), seen  # never backwards
    progress = [p for s, p in seen if s == "embedding"]
    assert any(0 < p < 1 for p in progress), seen  # reported while embedding
    assert progress == sorted(progress), seen
    assert seen[-1] == ("ready", 1.0)


def test_the_list_filters_by_status_and_paginates(client, alice, space):
    response = client.upload(alice, space["id"], *[(f"Note number {i} about owls.".encode(), f"n{i}.txt")
                                                    for i in range(4)], (PNG, "picture.png"))
    assert response.status_code == 202, response.json
    uploaded = [d["id"] for d in response.json["documents"]]
    client.ingested()

    everything = client.get(docs_url(space["id"]), headers=alice.headers)
    assert everything.status_code == 200
    assert sorted(d["id"] for d in everything.json) == sorted(uploaded)
    assert_pagination(everything, total=5, total_pages=1, page=1, page_size=50)
    for document in everything.json:
        assert LISTED_FIELDS <= set(document)

    ready = client.get(docs_url(space["id"]), query_string={"status": "ready"}, headers=alice.headers)
    assert sorted(d["id"] for d in ready.json) == sorted(uploaded[:4])
    assert pagination_of(ready)["total"] == 4
    failed = client.get(docs_url(space["id"]), query_string={"status": "failed"}, headers=alice.headers)
    assert [d["id"] for d in failed.json] == [uploaded[4]]
    assert failed.json[0]["error"]["reason"] == "unsupported_media_type"
    assert client.get(docs_url(space["id"]), query_string={"status": "queued"}, headers=alice.headers).json == []
    assert_error(client.get(docs_url(space["id"]), query_string={"status": "done"}, headers=alice.headers), 422)

    pages = [client.get(docs_url(space["id"]), query_string={"page": n, "page_size": 2}, headers=alice.headers)
             for n in (1, 2, 3)]
    assert [len(p.json) for p in pages] == [2, 2, 1]
    assert_pagination(pages[0], total=5, total_pages=3, page=1, page_size=2)
    assert_pagination(pages[2], total=5, total_pages=3, page=3, page_size=2)
    assert [d["id"] for p in pages for d in p.json] == [d["id"] for d in everything.json]  # stable order
    created = [parse_timestamp(d["created_at"]) for d in everything.json]
    assert created == sorted(created, reverse=True)  # newest first


def test_get_one_document_and_the_404s(client, alice, bob, space):
    document = client.document(alice, space["id"], b"A short note about foxes.", "fox.txt")
    listed = client.get(docs_url(space["id"]), headers=alice.headers).json
    assert listed == [document]

    assert_error(client.get(docs_url(space["id"], uuid.uuid4()), headers=alice.headers), 404, "document_not_found")
    # a document of another space, asked for through a space the caller is in
    other = client.space(bob, "Bob's")["id"]
    assert_error(client.get(docs_url(other, document["id"]), headers=bob.headers), 404, "document_not_found")
    assert_error(client.get(docs_url(other, document["id"], "file"), headers=bob.headers), 404,
                 "document_not_found")
    assert_error(client.get(docs_url(space["id"], document["id"]), headers=bob.headers), 404, "space_not_found")


def test_viewers_cannot_upload(client, alice, bob, space):
    client.member(alice, space["id"], bob, "viewer")
    assert_error(client.upload(bob, space["id"], (b"Not allowed.", "no.txt")), 403)
    assert count_rows(client.app, Document) == 0


# --------------------------------------------------------------------------- the original file

def content_disposition(response):
    """(type, ASCII fallback filename, filename* decoded) of a Content-Disposition header."""
    header = response.headers["Content-Disposition"]
    assert "\r" not in header and "\n" not in header
    kind = header.split(";", 1)[0].strip()
    plain = re.search(r'filename="([^"]*)"', header)
    extended = re.search(r"filename\*=UTF-8''([^;\s]+)", header)
    return kind, plain and plain.group(1), extended and unquote(extended.group(1), errors="strict")


def test_download_returns_the_exact_bytes_with_the_media_type_from_the_content(client, alice, space):
    data = "Grüße aus Köln.\r\nZweite Zeile\twith a tab.\r\n".encode()
    document = client.document(alice, space["id"], data, "greeting.txt")

    response = client.get(docs_url(space["id"], document["id"], "file"), headers=alice.headers)

    assert response.status_code == 200
    assert response.get_data() == data
    assert response.mimetype == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert content_disposition(response) == ("attachment", "greeting.txt", "greeting.txt")


def test_every_download_has_a_media_type_the_spec_documents(client, alice, space):
    """The spec said application/octet-stream; the file is sent with its own type."""
    files = [(b"Plain words.", "a.txt"), (b"# Title\n\nSome *words*.", "b.md"),
             (b"<!DOCTYPE html><html><body><p>Words.</p></body></html>", "c.html"), (b'{"words": [1, 2]}', "d.json"),
             (pdf("Words on a page."), "e.pdf"),
             (hostile_docx(b"<w:document " + W_NS + b"><w:body><w:p><w:r><w:t>Words.</w:t></w:r></w:p></w:body>"
                           b"</w:document>"), "f.docx")]
    response = client.upload(alice, space["id"], *files)
    assert response.status_code == 202, response.json
    spec = client.get("/api/v1/openapi.json").json
    documented = spec["paths"]["/api/v1/spaces/{space_id}/documents/{document_id}/file"]["get"]["responses"]["200"]

    sent = set()
    for (data, name), document in zip(files, response.json["documents"]):
        download = client.get(docs_url(space["id"], document["id"], "file"), headers=alice.headers)
        assert download.status_code == 200 and download.get_data() == data, name
        assert download.headers["Content-Type"] == document["media_type"], name
        assert download.headers["Content-Type"] in documented["content"], (name, list(documented["content"]))
        assert download.headers["Content-Disposition"] and "Content-Disposition" in documented["headers"]
        sent.add(document["media_type"])
    assert sent == set(documented["content"])  # and every documented type is one a document can have


@pytest.mark.parametrize("sent, stored", [
    ("Résumé 2024 – 数据.txt", "Résumé 2024 – 数据.txt"),
    ("../../etc/passwd", "passwd"),
    ("/var/tmp/../secret notes.md", "secret notes.md"),
    ("/etc/passwd", "passwd"),
    ("nul\x00byte.txt", "nulbyte.txt"),
    ("bell\x07 and \x1b[31mescape\x7f.txt", "bell and [31mescape.txt"),
    ("tab\tand\vform\x0cfeed.txt", "tab and form feed.txt"),
    ("\u202etxt.exe \u200bzero-width.md", "txt.exe zero-width.md"),  # bidi override, zero width
    ("a" * 1000 + ".txt", "a" * 251 + ".txt"),  # 255 characters, the extension kept
    ("数" * 1000, "数" * 255),
    ("..", "document"),
    (". . .", "document"),
])
def test_filenames_are_stored_without_directories_and_sent_back_safely(client, alice, space, sent, stored):
    data = f"Contents of {stored}.".encode()
    response = client.upload(alice, space["id"], (data, sent))
    assert response.status_code == 202, response.json
    document = response.json["documents"][0]
    assert document["filename"] == stored

    download = client.get(docs_url(space["id"], document["id"], "file"), headers=alice.headers)
    assert download.status_code == 200 and download.get_data() == data
    kind, plain, extended = content_disposition(download)
    assert kind == "attachment"
    assert extended == stored  # RFC 5987 form: the exact name, UTF-8
    assert plain is not None and plain.isascii() and not re.search(r'[/\\"]', plain)
    assert len(plain) == len(stored)  # one replacement character per non-ASCII character
    assert ".." not in plain.split("/")


def raw_upload(client, user, space_id, disposition: bytes, data: bytes = b"Raw words."):
    """A multipart upload whose part header is exactly ``disposition`` (what a hostile
    client can send, not what a well-behaved encoder produces)."""
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; " + disposition
            + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--XyZ--\r\n")
    return client.post(docs_url(space_id), data=body, headers=user.headers,
                       content_type="multipart/form-data; boundary=XyZ")


@pytest.mark.parametrize("disposition, stored", [
    (b'filename="..\\..\\windows\\win.ini"', "windowswin.ini"),  # quoted-pair: backslashes are escapes
    (b'filename="C:\\Users\\me\\notes.txt"', "C:Usersmenotes.txt"),
    (b"filename*=UTF-8''..%2F..%2Fetc%2Fpasswd", "passwd"),  # RFC 2231 form, percent-encoded slashes
    (b"filename*=UTF-8''..%5C..%5Cboot.ini", "boot.ini"),  # ... and backslashes
    (b"filename*=UTF-8''nul%00byte%0D%0AX-Injected%3A%201.txt", "nulbyte X-Injected: 1.txt"),
    (b"filename*=UTF-8''%ED%A0%80%FF.txt", "\ufffd\ufffd\ufffd\ufffd.txt"),  # no lone surrogates get through
    (b'filename="q\\"uote;semi.txt"', 'q"uote;semi.txt'),
])
def test_hostile_filenames_in_a_raw_multipart_header(client, alice, space, disposition, stored):
    response = raw_upload(client, alice, space["id"], disposition)
    assert response.status_code == 202, response.json
    document = response.json["documents"][0]
    assert document["filename"] == stored

    download = client.get(docs_url(space["id"], document["id"], "file"), headers=alice.headers)
    assert download.status_code == 200 and download.get_data() == b"Raw words."
    kind, plain, extended = content_disposition(download)
    assert extended == stored and plain.isascii() and not re.search(r'[/\\"]', plain)


def test_a_part_whose_filename_cannot_be_decoded_is_a_4xx(client, alice, space):
    response = raw_upload(client, alice, space["id"], b'filename="\xff\xfe.txt"')
    assert 400 <= response.status_code < 500, response.status_code


# --------------------------------------------------------------------------- per-file outcomes

def test_unsupported_content_fails_its_entry_while_the_other_files_are_accepted(client, alice, space):
    response = client.upload(alice, space["id"], (PNG, "photo.pdf"), (b"Plain words about bees.", "bees.txt"))

    assert response.status_code == 202, response.json
    rejected, accepted = response.json["documents"]
    assert response.json["ingestion"] == {"count": 1}
    assert rejected["status"] == "failed" and rejected["media_type"] is None
    assert rejected["error"]["reason"] == "unsupported_media_type" and rejected["error"]["message"]
    assert rejected["size_bytes"] == len(PNG) and rejected["chunks"] == 0
    assert accepted["status"] in ACCEPTED and accepted["media_type"] == "text/plain"

    client.ingested()
    assert get_document(client, alice, space["id"], accepted["id"])["status"] == "ready"
    assert get_document(client, alice, space["id"], rejected["id"])["status"] == "failed"
    # the record stays, its bytes do not
    assert count_rows(client.app, DocumentFile, document_id=uuid.UUID(rejected["id"])) == 0
    assert_error(client.get(docs_url(space["id"], rejected["id"], "file"), headers=alice.headers), 404,
                 "file_not_kept")
    assert_error(client.post(docs_url(space["id"], rejected["id"], "reindex"), headers=alice.headers), 409,
                 "file_not_kept")


def test_a_single_unsupported_file_answers_415_and_the_record_stays(client, alice, space):
    response = client.upload(alice, space["id"], (PNG, "scan.png"))

    body = assert_error(response, 415, "unsupported_media_type")
    (entry,) = body["errors"]["files"]
    assert entry["filename"] == "scan.png" and entry["reason"] == "unsupported_media_type"
    listed = client.get(docs_url(space["id"]), headers=alice.headers).json
    assert [(d["id"], d["status"]) for d in listed] == [(entry["document_id"], "failed")]

    # the same bytes twice in one request: one record, two entries
    twice = assert_error(client.upload(alice, space["id"], (PNG, "a.png"), (PNG, "b.png")), 415)
    first, second = twice["errors"]["files"]
    assert first["document_id"] == second["document_id"]
    assert count_rows(client.app, Document) == 1


def test_a_rejected_file_is_judged_again_when_it_is_uploaded_again(make_app):
    """Its bytes were not kept, so reindex cannot help (409 says: upload it again); after
    the limit is raised, uploading it again works."""
    strict = ApiClient(make_app(UPLOAD_MAX_FILE_BYTES=1024).test_client())
    alice = strict.user("alice@example.com", "Alice")
    space_id = strict.space(alice)["id"]
    data = prose("pelicans").encode()
    rejected = assert_error(strict.upload(alice, space_id, (data, "pelicans.txt")), 413)["errors"]["files"][0]
    assert_error(strict.post(docs_url(space_id, rejected["document_id"], "reindex"), headers=alice.headers), 409,
                 "file_not_kept")
    assert_error(strict.upload(alice, space_id, (data, "pelicans.txt")), 413)  # same limit, same answer
    assert count_rows(strict.app, Document) == 1

    relaxed = ApiClient(make_app().test_client())
    response = relaxed.upload(alice, space_id, (data, "pelicans.txt"))

    assert response.status_code == 202, response.json
    assert response.json["ingestion"] == {"count": 1}
    assert response.json["documents"][0]["id"] == rejected["document_id"]  # still the same document
    relaxed.ingested()
    listed = relaxed.get(docs_url(space_id), headers=alice.headers).json
    assert [(d["id"], d["status"], d["error"]) for d in listed] == [(rejected["document_id"], "ready", None)]
    download = relaxed.get(docs_url(space_id, rejected["document_id"], "file"), headers=alice.headers)
    assert download.status_code == 200 and download.get_data() == data


def test_a_file_over_the_size_limit_is_rejected_without_keeping_its_bytes(configured):
    client, alice, space_id = configured(UPLOAD_MAX_FILE_BYTES=2048)
    big = ("Too long. " * 400).encode()  # 4,000 bytes
    small = b"Small enough."

    response = client.upload(alice, space_id, (big, "big.txt"), (small, "small.txt"))

    assert response.status_code == 202, response.json
    too_large, accepted = response.json["documents"]
    assert too_large["status"] == "failed" and too_large["error"]["reason"] == "file_too_large"
    assert too_large["size_bytes"] == len(big)  # counted while it streamed in
    assert too_large["sha256"] == hashlib.sha256(big).hexdigest()
    assert accepted["status"] in ACCEPTED and response.json["ingestion"] == {"count": 1}
    assert_error(client.get(docs_url(space_id, too_large["id"], "file"), headers=alice.headers), 404,
                 "file_not_kept")
    client.ingested()
    assert get_document(client, alice, space_id, accepted["id"])["status"] == "ready"

    alone = client.upload(alice, space_id, (big + b"!", "bigger.txt"))
    body = assert_error(alone, 413, "file_too_large")
    assert [f["reason"] for f in body["errors"]["files"]] == ["file_too_large"]
    # a file of exactly the limit is fine
    exact = client.upload(alice, space_id, (b"x" * 2047 + b".", "exact.txt"))
    assert exact.status_code == 202 and exact.json["documents"][0]["status"] in ACCEPTED


def test_the_type_comes_from_the_content_not_the_name(client, alice, space):
    html = b"<!DOCTYPE html><html><body><h1>Otters</h1><p>Otters hold hands while they sleep.</p></body></html>"
    as_pdf = client.document(alice, space["id"], html, "otters.pdf")
    assert as_pdf["media_type"] == "text/html" and as_pdf["pages"] is None
    ids = client.chunks(alice, space["id"], as_pdf["id"])
    text = " ".join(client.get(space_url(space["id"], "chunks", i), headers=alice.headers).json["text"] for i in ids)
    assert "Otters hold hands" in text and "<p>" not in text  # parsed as HTML, not as text

    real_pdf = pdf("Badgers dig long tunnels.", "They sleep in the day.")
    as_txt = client.document(alice, space["id"], real_pdf, "badgers.txt")
    assert as_txt["media_type"] == "application/pdf" and as_txt["pages"] == 2
    download = client.get(docs_url(space["id"], as_txt["id"], "file"), headers=alice.headers)
    assert download.mimetype == "application/pdf" and download.get_data() == real_pdf


def test_the_same_bytes_again_give_the_existing_document_and_no_new_work(client, alice, space):
    data = b"Hedgehogs eat beetles and worms."
    first = client.document(alice, space["id"], data, "hedgehogs.txt")

    again = client.upload(alice, space["id"], (data, "renamed.txt"))
    assert again.status_code == 202
    assert again.json["ingestion"] == {"count": 0}
    (entry,) = again.json["documents"]
    assert entry["id"] == first["id"] and entry["filename"] == "hedgehogs.txt" and entry["status"] == "ready"

    # twice within one request: one new document, queued once, two entries
    other = b"Moles have tiny eyes."
    both = client.upload(alice, space["id"], (other, "a.txt"), (other, "b.txt"), (data, "c.txt"))
    assert both.status_code == 202, both.json
    a, b, c = both.json["documents"]
    assert a["id"] == b["id"] and c["id"] == first["id"]
    assert both.json["ingestion"] == {"count": 1}
    client.ingested()
    assert count_rows(client.app, Document) == 2
    assert attempts_of(client.app, first["id"]) == 1  # never ingested again
    assert get_document(client, alice, space["id"], a["id"])["status"] == "ready"

    # other spaces are independent
    elsewhere = client.space(alice, "Elsewhere")["id"]
    copy = client.upload(alice, elsewhere, (data, "hedgehogs.txt"))
    assert copy.json["ingestion"] == {"count": 1} and copy.json["documents"][0]["id"] != first["id"]


def test_more_files_than_allowed_is_422_and_nothing_is_stored(client, alice, space):
    limit = client.app.config["UPLOAD_MAX_FILES"]
    files = [(f"File {i}.".encode(), f"f{i}.txt") for i in range(limit + 1)]

    body = assert_error(client.upload(alice, space["id"], *files), 422, "too_many_files")
    assert "files" in body["errors"]
    assert count_rows(client.app, Document) == 0
    assert client.upload(alice, space["id"], *files[:limit]).json["ingestion"] == {"count": limit}


def test_an_upload_without_files_is_422_as_the_spec_says(client, alice, space):
    """The spec allowed a multipart body without `files`, which the server refuses."""
    spec = client.get("/api/v1/openapi.json").json
    body = spec["paths"]["/api/v1/spaces/{space_id}/documents"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
    assert body["required"] and schema["required"] == ["files"] and schema["properties"]["files"]["minItems"] == 1

    for data in ({}, {"note": "no files"}):
        response = client.post(docs_url(space["id"]), data=data, content_type="multipart/form-data",
                               headers=alice.headers)
        assert "files" in assert_error(response, 422, "validation_error")["errors"]
    assert count_rows(client.app, Document) == 0


def test_the_body_must_be_multipart_with_files(client, alice, space):
    assert_error(client.post(docs_url(space["id"]), json={"files": ["a.txt"]}, headers=alice.headers), 415,
                 "unsupported_media_type")
    assert_error(client.post(docs_url(space["id"]), data={"note": "no files"}, content_type="multipart/form-data",
                             headers=alice.headers), 422)
    assert count_rows(client.app, Document) == 0


def test_an_empty_file_fails_as_empty_document(client, alice, space):
    response = client.upload(alice, space["id"], (b"", "empty.txt"), (b"  \n\t ", "blank.md"))

    assert response.status_code == 202, response.json
    assert response.json["ingestion"] == {"count": 0}
    for entry in response.json["documents"]:
        assert entry["status"] == "failed" and entry["error"]["reason"] == "empty_document", entry


def test_an_encrypted_pdf_fails_without_being_retried(client, alice, space):
    data = (EVAL_DOCS / "pdf" / "unstructured" / "password.pdf").read_bytes()

    document = client.document(alice, space["id"], data, "password.pdf", ready=False)

    assert document["status"] == "failed", document
    assert document["error"]["reason"] == "encrypted" and document["error"]["message"]
    assert document["media_type"] == "application/pdf" and document["chunks"] == 0
    assert attempts_of(client.app, document["id"]) == 1  # permanent: not retried
    assert vectors(client.app, space["id"], document["id"]) == 0


def hostile_docx(document_xml: bytes, **parts: bytes) -> bytes:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", document_xml)
        for name, data in parts.items():
            archive.writestr(name.replace("__", "/"), data)
    return buffer.getvalue()


W_NS = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "lol"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
          b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>')


@pytest.mark.parametrize("data, reason", [
    (hostile_docx(b"<w:document " + W_NS + b"><w:body>" + b" " * 60_000_000), "archive_too_large"),  # 1000:1
    (hostile_docx(b"<w:document " + W_NS + b"/>", **{f"customXml__{i}.xml": b"" for i in range(12_000)}),
     "archive_too_large"),
    (hostile_docx(LAUGHS + b"<w:document " + W_NS + b"><w:body><w:p><w:r><w:t>&d;</w:t></w:r></w:p></w:body>"
                  b"</w:document>"), "corrupt_file"),
    (hostile_docx(b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><w:document '
                  + W_NS + b"><w:body><w:p><w:r><w:t>&x;</w:t></w:r></w:p></w:body></w:document>"), "corrupt_file"),
], ids=["zip-bomb", "entries", "billion-laughs", "external-entity"])
def test_a_hostile_docx_fails_its_document_with_a_clear_reason(client, alice, space, data, reason):
    started = time.perf_counter()
    document = client.document(alice, space["id"], data, "hostile.docx", ready=False)

    assert time.perf_counter() - started < 10
    assert document["status"] == "failed", document
    assert document["media_type"] == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert document["error"]["reason"] == reason and document["error"]["message"]
    assert "root:" not in document["error"]["message"]
    assert attempts_of(client.app, document["id"]) == 1  # permanent: not retried
    assert document["chunks"] == 0 and vectors(client.app, space["id"], document["id"]) == 0


def test_a_pdf_with_more_pages_than_allowed_fails_with_too_many_pages(configured):
    client, alice, space_id = configured(MAX_PAGES=2)

    too_long = client.document(alice, space_id, pdf("One.", "Two.", "Three."), "three.pdf", ready=False)
    assert too_long["status"] == "failed" and too_long["error"]["reason"] == "too_many_pages", too_long
    assert "2" in too_long["error"]["message"]
    assert client.document(alice, space_id, pdf("Page one.", "Page two."), "two.pdf")["pages"] == 2


# --------------------------------------------------------------------------- chunks

def test_a_chunk_is_the_passage_with_its_page(client, alice, bob, space):
    space_id = client.space(alice, "Small chunks", settings={"chunk_size": 64, "chunk_overlap": 0})["id"]
    red = " ".join(f"Red fact {i}." for i in range(40))
    blue = " ".join(f"Blue fact {i}." for i in range(40))
    document = client.document(alice, space_id, pdf(red, blue), "colours.pdf")
    assert document["pages"] == 2 and document["chunks"] >= 4

    ids = client.chunks(alice, space_id, document["id"])
    chunks = []
    for ordinal, chunk_id in enumerate(ids):
        response = client.get(space_url(space_id, "chunks", chunk_id), headers=alice.headers)
        assert response.status_code == 200, response.json
        chunk = response.json
        assert {"id", "document_id", "ordinal", "page", "text"} <= set(chunk)
        assert (chunk["id"], chunk["document_id"], chunk["ordinal"]) == (chunk_id, document["id"], ordinal)
        chunks.append(chunk)
    for chunk in chunks:
        assert chunk["text"].strip()
        assert chunk["page"] == (1 if "Red" in chunk["text"] else 2), chunk
    assert {c["page"] for c in chunks} == {1, 2}

    # through another space, or an unknown id: not found
    other = client.space(bob, "Bob's")["id"]
    assert_error(client.get(space_url(other, "chunks", ids[0]), headers=bob.headers), 404, "chunk_not_found")
    own = client.space(alice, "Alice's other")["id"]
    assert_error(client.get(space_url(own, "chunks", ids[0]), headers=alice.headers), 404, "chunk_not_found")
    assert_error(client.get(space_url(space_id, "chunks", uuid.uuid4()), headers=alice.headers), 404,
                 "chunk_not_found")


# --------------------------------------------------------------------------- delete and reindex

def test_delete_removes_the_document_its_file_chunks_and_vectors(client, alice, space):
    app, space_id = client.app, space["id"]
    doomed = client.document(alice, space_id, prose("storms").encode(), "storms.txt")
    kept = client.document(alice, space_id, prose("sunshine").encode(), "sun.txt")
    chunk_ids = client.chunks(alice, space_id, doomed["id"])
    assert vectors(app, space_id, doomed["id"]) == doomed["chunks"] > 0

    response = client.delete(docs_url(space_id, doomed["id"]), headers=alice.headers)

    assert response.status_code == 204
    assert_error(client.get(docs_url(space_id, doomed["id"]), headers=alice.headers), 404, "document_not_found")
    assert_error(client.get(docs_url(space_id, doomed["id"], "file"), headers=alice.headers), 404)
    assert_error(client.get(space_url(space_id, "chunks", chunk_ids[0]), headers=alice.headers), 404)
    assert_error(client.delete(docs_url(space_id, doomed["id"]), headers=alice.headers), 404, "document_not_found")
    uid = uuid.UUID(doomed["id"])
    assert count_rows(app, DocumentFile, document_id=uid) == 0
    assert count_rows(app, Chunk, document_id=uid) == 0
    assert vectors(app, space_id, doomed["id"]) == 0
    # the other document is untouched
    assert vectors(app, space_id) == vectors(app, space_id, kept["id"]) == kept["chunks"]
    assert count_rows(app, Chunk, document_id=uuid.UUID(kept["id"])) == kept["chunks"]
    # its bytes may be uploaded again as a new document
    again = client.upload(alice, space_id, (prose("storms").encode(), "storms.txt"))
    assert again.json["ingestion"] == {"count": 1} and again.json["documents"][0]["id"] != doomed["id"]


def test_reindex_ingests_again_and_leaves_one_copy_of_each_chunk(client, alice, space):
    app, space_id = client.app, space["id"]
    document = client.document(alice, space_id, prose("tides").encode(), "tides.txt")
    other = client.document(alice, space_id, prose("currents").encode(), "currents.txt")
    before = assert_one_copy_of_each_chunk(app, space_id, document)

    response = client.post(docs_url(space_id, document["id"], "reindex"), headers=alice.headers)

    assert response.status_code == 202, response.json
    assert response.json["id"] == document["id"] and response.json["status"] in ACCEPTED
    client.ingested()
    after = get_document(client, alice, space_id, document["id"])
    assert after["status"] == "ready" and after["chunks"] == document["chunks"]
    assert assert_one_copy_of_each_chunk(app, space_id, after) == before  # same ids: stable per ordinal
    assert vectors(app, space_id) == document["chunks"] + other["chunks"]
    assert attempts_of(app, document["id"]) == 2 and attempts_of(app, other["id"]) == 1

    assert_error(client.post(docs_url(space_id, uuid.uuid4(), "reindex"), headers=alice.headers), 404,
                 "document_not_found")


def test_reindexing_a_space_ingests_every_kept_file_again(client, alice, space):
    app, space_id = client.app, space["id"]
    response = client.upload(alice, space_id, (prose("maple").encode(), "maple.txt"),
                             (pdf("Oak leaves.", "Acorns."), "oak.pdf"), (PNG, "tree.png"))
    client.ingested()
    maple, oak, png = response.json["documents"]

    reindex = client.post(space_url(space_id, "reindex"), headers=alice.headers)

    assert reindex.status_code == 202, reindex.json
    assert (reindex.json["documents"], reindex.json["total"]) == (2, 2)
    client.ingested()
    assert client.get(space_url(space_id, "reindex"), headers=alice.headers).json["status"] == "switched"
    documents = {d["id"]: d for d in client.get(docs_url(space_id), headers=alice.headers).json}
    for entry in (maple, oak):
        assert documents[entry["id"]]["status"] == "ready"
        assert attempts_of(app, entry["id"]) == 2
        assert_one_copy_of_each_chunk(app, space_id, documents[entry["id"]])
    assert documents[png["id"]]["status"] == "failed"  # nothing kept to reindex
    assert vectors(app, space_id) == documents[maple["id"]]["chunks"] + documents[oak["id"]]["chunks"]

    empty = client.space(alice, "Empty")["id"]
    moved = client.post(space_url(empty, "reindex"), headers=alice.headers).json
    assert (moved["documents"], moved["status"]) == (0, "switched")  # nothing to wait for


def test_deleting_a_space_drops_its_vectors(client, alice, space):
    app = client.app
    doomed = client.space(alice, "Doomed")["id"]
    client.document(alice, doomed, prose("comets").encode(), "comets.txt")
    kept = client.document(alice, space["id"], prose("comets").encode(), "comets.txt")
    assert vectors(app, doomed) > 0

    assert client.delete(space_url(doomed), headers=alice.headers).status_code == 204

    assert vectors(app, doomed) == 0
    assert vectors(app, space["id"]) == kept["chunks"]
    assert count_rows(app, Document, space_id=uuid.UUID(doomed)) == 0
    assert count_rows(app, Chunk, space_id=uuid.UUID(doomed)) == 0


def search_hits(client, user, space_id, query="volcanoes", mode="hybrid"):
    response = client.post(space_url(space_id, "search"), json={"query": query, "mode": mode}, headers=user.headers)
    assert response.status_code == 200, response.json
    return [(h["document_id"], h["chunk_id"]) for h in response.json["hits"]]


def test_a_space_keeps_its_plugins_and_moves_to_new_ones_without_a_gap(make_app):
    """A space records its embedder (model, dimensions). A server with another embedder keeps
    serving the space with the recorded one (uploads, searches, a document's reindex) and never
    mixes vectors. A reindex builds the new index beside the old one, which keeps answering,
    with the same hits, until every document is in; then the space switches in one step and
    the old namespace goes."""
    before = ApiClient(make_app().test_client())
    alice = before.user("alice@example.com", "Alice")
    space_id = before.space(alice, "Old")["id"]
    old = before.document(alice, space_id, prose("volcanoes").encode(), "volcanoes.txt")
    assert before.get(space_url(space_id), headers=alice.headers).json["pipeline"]["embedder"]["dimensions"] == 64

    app = make_app(PLUGINS={"EMBEDDER": {"HASHING": {"DIMENSIONS": 32}}})
    after = ApiClient(app.test_client())
    new = after.document(alice, space_id, prose("geysers").encode(), "geysers.txt")  # with the space's embedder
    assert after.post(docs_url(space_id, old["id"], "reindex"), headers=alice.headers).status_code == 202
    after.ingested()
    answered = search_hits(after, alice, space_id)
    assert answered and {d for d, _ in answered} <= {old["id"], new["id"]}
    with app.app_context():
        assert registry(app).resolve(db.session.get(Space, uuid.UUID(space_id)).pipeline).embedder.dimensions == 64

    store = registry(app).vector_store = GatedStore(registry(app).vector_store)
    store.write.clear()  # the build stops at its first write
    reindex = after.post(space_url(space_id, "reindex"), headers=alice.headers)
    assert reindex.status_code == 202, reindex.json
    assert (reindex.json["status"], reindex.json["total"], reindex.json["queued"]) == ("building", 2, 2)
    assert reindex.json["pipeline"]["embedder"]["dimensions"] == 32
    assert store.writing.wait(30), "the build never came to write"
    assert_error(after.post(space_url(space_id, "reindex"), headers=alice.headers), 409, "reindex_in_progress")
    assert search_hits(after, alice, space_id) == answered  # the old index answers meanwhile
    assert get_document(after, alice, space_id, old["id"])["status"] == "ready"
    store.write.set()
    after.ingested()

    status = after.get(space_url(space_id, "reindex"), headers=alice.headers).json
    assert (status["status"], status["done"], status["queued"], status["failed"]) == ("switched", 2, 0, 0)
    assert after.get(space_url(space_id), headers=alice.headers).json["pipeline"]["embedder"]["dimensions"] == 32
    for document_id in (old["id"], new["id"]):
        document = get_document(after, alice, space_id, document_id)
        assert document["status"] == "ready", document
        assert_one_copy_of_each_chunk(app, space_id, document)
    moved = search_hits(after, alice, space_id)
    assert {d for d, _ in moved} == {d for d, _ in answered} and not {c for _, c in moved} & {c for _, c in answered}
    assert stored(app, space_id) == (False, 0)  # the old namespace is gone
    with app.app_context():  # only the new index's chunks are left
        assert db.session.scalar(select(func.count()).select_from(Chunk).where(
            Chunk.space_id == uuid.UUID(space_id))) == sum(
            get_document(after, alice, space_id, d)["chunks"] for d in (old["id"], new["id"]))


def test_a_space_whose_recorded_embedder_is_gone_must_be_reindexed(client, alice, space):
    """The plugins a space recorded cannot be built any more (uninstalled): searches and a
    document's reindex answer 409 pipeline_changed, uploads fail with it, until the space is
    reindexed onto the server's plugins."""
    app, space_id = client.app, space["id"]
    old = client.document(alice, space_id, prose("volcanoes").encode(), "volcanoes.txt")
    with app.app_context():
        row = db.session.get(Space, uuid.UUID(space_id))
        row.pipeline = {**row.pipeline, "embedder": {"name": "uninstalled", "model": "m-1", "dimensions": 64}}
        db.session.commit()

    body = assert_error(client.post(space_url(space_id, "search"), json={"query": "volcanoes"},
                                    headers=alice.headers), 409, "pipeline_changed")
    assert "'uninstalled'" in body["message"] and "reindex" in body["message"]
    assert_error(client.post(docs_url(space_id, old["id"], "reindex"), headers=alice.headers), 409,
                 "pipeline_changed")
    new = client.document(alice, space_id, prose("geysers").encode(), "geysers.txt", ready=False)
    assert new["status"] == "failed" and new["error"]["reason"] == "pipeline_changed", new

    assert client.post(space_url(space_id, "reindex"), headers=alice.headers).status_code == 202
    client.ingested()
    for document_id in (old["id"], new["id"]):
        assert get_document(client, alice, space_id, document_id)["status"] == "ready"
    assert search_hits(client, alice, space_id)


def test_a_document_deleted_while_it_is_ingested_leaves_nothing_behind(configured):
    """The worker finishes embedding a document that was deleted meanwhile: its vectors are
    taken back out and no chunk rows appear."""
    client, alice, _ = configured(EMBED_BATCH_SIZE=1, PLUGINS={"EMBEDDER": {"HASHING": {"DELAY_MS": 40}}})
    app = client.app
    space_id = client.space(alice, "Small chunks", settings={"chunk_size": 64, "chunk_overlap": 0})["id"]
    response = client.upload(alice, space_id, (prose("dunes", 60).encode(), "dunes.txt"))
    document_id = response.json["documents"][0]["id"]
    deadline = time.monotonic() + 30
    while get_document(client, alice, space_id, document_id)["status"] != "embedding":
        assert time.monotonic() < deadline, "the document never reached embedding"
        time.sleep(0.01)

    assert client.delete(docs_url(space_id, document_id), headers=alice.headers).status_code == 204
    client.ingested()

    assert vectors(app, space_id) == 0
    assert count_rows(app, Chunk) == 0 and count_rows(app, Document) == 0


# --------------------------------------------------------------------------- the worker

def test_the_in_process_worker_picks_up_unfinished_documents_at_start(client, alice, space, make_app):
    """A process that died mid-document leaves its row in `parsing` and its message lost
    with the in-memory queue; the next process's worker re-enqueues it."""
    space_id = space["id"]
    stuck = client.document(alice, space_id, prose("lichen").encode(), "lichen.txt")
    done = client.document(alice, space_id, prose("moss").encode(), "moss.txt")
    chunks_before = chunk_rows(client.app, stuck["id"])
    jobs(client.app).stop()
    set_status(client.app, stuck["id"], "parsing", progress=0.0)

    restarted = make_app()
    picked = jobs(restarted).start_inprocess_worker()

    assert picked == {uuid.UUID(stuck["id"])}
    jobs(restarted).join()
    document = get_document(ApiClient(restarted.test_client()), alice, space_id, stuck["id"])
    assert document["status"] == "ready", document
    assert assert_one_copy_of_each_chunk(restarted, space_id, document) == chunks_before
    assert attempts_of(restarted, stuck["id"]) == 2 and attempts_of(restarted, done["id"]) == 1
    assert jobs(restarted).start_inprocess_worker() == set()  # started once


def test_ingesting_a_document_twice_leaves_one_copy_of_each_chunk(client, alice, space):
    """A message delivered again after a worker died between writing vectors and marking
    the document ready: the second run replaces, never duplicates."""
    app, space_id = client.app, space["id"]
    document = client.document(alice, space_id, prose("fjords").encode(), "fjords.txt")
    rows = assert_one_copy_of_each_chunk(app, space_id, document)

    for _ in range(2):
        set_status(app, document["id"], "embedding")
        with app.app_context():
            pipeline.ingest(document["id"])
        again = get_document(client, alice, space_id, document["id"])
        assert again["status"] == "ready"
        assert assert_one_copy_of_each_chunk(app, space_id, again) == rows
    assert attempts_of(app, document["id"]) == 3

    with app.app_context():  # a ready document is left alone
        pipeline.ingest(document["id"])
    assert attempts_of(app, document["id"]) == 3


class FailingStore:
    """A vector store plugin that wraps the real one and fails on ``upsert`` the first
    ``times`` calls with ``error``."""

    def __init__(self, real, error, times=10**6):
        self.real, self.error, self.times, self.calls = real, error, times, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def upsert(self, namespace, records):
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return self.real.upsert(namespace, records)


FAST_RETRIES = {"INGEST_MAX_RETRIES": 2, "INGEST_MIN_BACKOFF_MS": 10, "INGEST_MAX_BACKOFF_MS": 50}


def test_a_permanent_plugin_error_fails_the_document_at_once(configured):
    client, alice, space_id = configured(**FAST_RETRIES)
    store = FailingStore(registry(client.app).vector_store, contracts.PluginError("quota exhausted",
                                                                                 reason="quota_exhausted"))
    registry(client.app).vector_store = store

    document = client.document(alice, space_id, b"Words that will not be stored.", "a.txt", ready=False)

    assert document["status"] == "failed" and document["error"] == {"reason": "quota_exhausted",
                                                                    "message": "quota exhausted"}
    assert store.calls == 1 and attempts_of(client.app, document["id"]) == 1
    assert chunk_rows(client.app, document["id"]) == []


def test_an_unexpected_error_is_retried_and_can_succeed(configured):
    client, alice, space_id = configured(**FAST_RETRIES)
    store = FailingStore(registry(client.app).vector_store, RuntimeError("connection reset"), times=1)
    registry(client.app).vector_store = store

    document = client.document(alice, space_id, prose("retries").encode(), "retry.txt")

    assert store.calls == 2 and attempts_of(client.app, document["id"]) == 2
    assert_one_copy_of_each_chunk(client.app, space_id, document)


def test_an_unreachable_vector_store_is_retried_then_fails_upstream_unavailable(configured, unused_port):
    """The real pgvector plugin pointed at a port nothing listens on: UpstreamUnavailable,
    retried with backoff, then `failed` with its reason."""
    url = f"postgresql+psycopg://nobody@127.0.0.1:{unused_port}/nothing"
    client, alice, space_id = configured(VECTOR_STORE="pgvector", **FAST_RETRIES,
                                         PLUGINS={"VECTOR_STORE": {"PGVECTOR": {"DATABASE_URL": url}}})

    document = client.document(alice, space_id, b"Nowhere to store this.", "a.txt", ready=False)

    assert document["status"] == "failed", document
    assert document["error"]["reason"] == "upstream_unavailable"
    assert attempts_of(client.app, document["id"]) == FAST_RETRIES["INGEST_MAX_RETRIES"] + 1
    assert chunk_rows(client.app, document["id"]) == []

    # requests that must remove vectors first answer 503 and change nothing
    for response in (client.delete(docs_url(space_id, document["id"]), headers=alice.headers),
                     client.delete(space_url(space_id), headers=alice.headers)):
        assert_error(response, 503, "upstream_unavailable")
    # a reindex builds beside the index: it fails, and the space keeps what it had
    assert client.post(space_url(space_id, "reindex"), headers=alice.headers).status_code == 202
    client.ingested()
    status = client.get(space_url(space_id, "reindex"), headers=alice.headers).json
    assert status["status"] == "failed" and status["error"]["reason"] == "upstream_unavailable", status
    assert get_document(client, alice, space_id, document["id"])["status"] == "failed"
    assert count_rows(client.app, DocumentFile, document_id=uuid.UUID(document["id"])) == 1
    assert client.get(space_url(space_id), headers=alice.headers).status_code == 200


@pytest.mark.parametrize("database", ["postgres"], indirect=True)  # row locks: SQLite locks the whole file
@pytest.mark.parametrize("operation", ["reindex the space", "delete the space", "the uploader leaves Spacio"])
def test_a_request_and_the_worker_lock_rows_in_one_order(client, alice, bob, space, operation):
    """The worker finishing a document (its row, its chunks, the uploader's usage) while the
    space is reindexed or deleted, or the uploader deletes their account. Each request had
    locked rows in another order (chunks before documents; the space or the user before
    the document): each side could hold what the other waited for, and PostgreSQL aborted
    one (CI saw a reindex answer 503). A third transaction holds the document's row until
    both are queued behind it, so the interleaving that deadlocked happens every time."""
    app, space_id = client.app, space["id"]
    client.member(alice, space_id, bob, "editor")
    document = client.document(bob, space_id, prose("tides").encode(), "tides.txt")
    doc_id = uuid.UUID(document["id"])
    with app.app_context():
        chunks = [SimpleNamespace(ordinal=c.ordinal, page=c.page, page_end=c.page_end, heading=c.heading,
                                  text=c.text, tokens=c.tokens)
                  for c in db.session.scalars(select(Chunk).where(Chunk.document_id == doc_id))]
        run = pipeline.Run(doc_id, db.session.get(Document, doc_id).attempts)  # the run that finished it
        into = pipeline.target(uuid.UUID(space_id), db.session.get(Space, uuid.UUID(space_id)).pipeline)
        db.session.remove()
    blocker = hold_row(app, "documents", doc_id)
    outcome = {}

    def worker():
        with app.app_context():
            try:
                pipeline._finish(run, into, pipeline.Indexed(None, chunks, 7))
                outcome["worker"] = "done"
            except Exception as exc:
                outcome["worker"] = exc
            finally:
                db.session.remove()

    def request():
        if operation == "reindex the space":
            call = client.post(space_url(space_id, "reindex"), headers=alice.headers)
        elif operation == "delete the space":
            call = client.delete(space_url(space_id), headers=alice.headers)
        else:
            call = client.delete("/api/v1/auth/me", headers=bob.headers)
        outcome["request"] = call.status_code, call.json if call.data else None

    threads = [threading.Thread(target=worker), threading.Thread(target=request)]
    try:
        for n, thread in enumerate(threads, 1):
            thread.start()
            # the worker queues first, then the request
            wait_for(lambda n=n: lock_waits(app) == n, 10, interval=0.02, what=f"{n} lock waits")
    finally:
        blocker.close()
    for thread in threads:
        thread.join(30)

    assert outcome["worker"] == "done"
    if operation == "reindex the space":
        assert outcome["request"][0] == 202 and outcome["request"][1]["documents"] == 1
        client.ingested()
        after = get_document(client, alice, space_id, document["id"])
        assert after["status"] == "ready" and after["chunks"] == document["chunks"]
        assert_one_copy_of_each_chunk(app, space_id, after)
    elif operation == "delete the space":
        assert outcome["request"] == (204, None)
        assert count_rows(app, Document, space_id=uuid.UUID(space_id)) == 0
        assert count_rows(app, Chunk, space_id=uuid.UUID(space_id)) == 0
        assert vectors(app, space_id) == 0
    else:  # the document stays in the space, its uploader unknown
        assert outcome["request"] == (204, None)
        after = get_document(client, alice, space_id, document["id"])
        assert after["status"] == "ready" and after["chunks"] == document["chunks"]
        assert_one_copy_of_each_chunk(app, space_id, after)


class GatedStore:
    """The real vector store, with two places where a test holds its caller: the worker's
    write of a document (before ``ensure_namespace``) and the removal of vectors in the thread
    ``removal_in`` (after ``drop_namespace`` or ``delete_document``)."""

    def __init__(self, real):
        self.real = real
        self.write, self.removal = threading.Event(), threading.Event()  # set: let go
        self.write.set()
        self.removal.set()
        self.writing, self.removed = threading.Event(), threading.Event()  # set: a caller is held
        self.removal_in = None

    def __getattr__(self, name):
        return getattr(self.real, name)

    def ensure_namespace(self, namespace, dimensions):
        if not self.write.is_set():
            self.writing.set()
            assert self.write.wait(30)
        return self.real.ensure_namespace(namespace, dimensions)

    def _removal(self, remove, *args):
        remove(*args)
        if threading.current_thread() is self.removal_in:
            self.removed.set()
            assert self.removal.wait(30)

    def drop_namespace(self, namespace):
        self._removal(self.real.drop_namespace, namespace)

    def delete_document(self, namespace, document_id):
        self._removal(self.real.delete_document, namespace, document_id)


def stored(app, namespace, document_id=None):
    """(whether the store has the namespace at all, even empty, and its rows or the document's),
    read from the store's own tables: its count() says 0 for a namespace that is not there."""
    store = registry(app).vector_store
    store = getattr(store, "real", store)
    if isinstance(store, LocalVectorStore):
        registered, rows = "vs_local_namespaces", "vs_local_records"
    else:  # pgvector, in the app's database; the hashing embedder's 64 dimensions
        registered, rows = f"{store.prefix}_namespaces", f"{store.prefix}_64"
    where = " AND document_id = :d" if document_id else ""
    with app.app_context(), db.engine.connect() as connection:
        exists = connection.scalar(text(f"SELECT count(*) FROM {registered} WHERE namespace = :n"), {"n": namespace})
        count = connection.scalar(text(f"SELECT count(*) FROM {rows} WHERE namespace = :n{where}"),
                                  {"n": namespace, "d": str(document_id)})
    return bool(exists), count


@pytest.mark.parametrize("moment", ["before the worker writes", "between the removal and the commit"])
@pytest.mark.parametrize("operation", ["delete the space", "delete the document"])
def test_a_delete_while_the_worker_writes_leaves_nothing_in_the_store(client, alice, space, operation, moment):
    """The worker has embedded a document and is about to write its vectors when the space (or
    the document) is deleted; or the delete has removed the vectors, and the worker writes and
    finishes before the delete commits. Either way nothing of it is left in the vector store:
    the worker had recreated the dropped namespace (empty: it took its own rows back out), or
    kept its vectors, found the space still there and marked the document ready."""
    app, space_id = client.app, space["id"]
    store = registry(app).vector_store = GatedStore(registry(app).vector_store)
    client.document(alice, space_id, prose("reefs").encode(), "reefs.txt")  # the namespace exists
    store.write.clear()
    document_id = client.upload(alice, space_id, (prose("tides").encode(), "tides.txt")).json["documents"][0]["id"]
    assert store.writing.wait(30), "the worker never came to write"
    url = space_url(space_id) if operation == "delete the space" else docs_url(space_id, document_id)

    if moment == "before the worker writes":
        assert client.delete(url, headers=alice.headers).status_code == 204
        store.write.set()
    else:
        store.removal.clear()
        outcome = {}
        request = store.removal_in = threading.Thread(
            target=lambda: outcome.update(status=client.delete(url, headers=alice.headers).status_code))
        request.start()
        assert store.removed.wait(30), "the delete never removed the vectors"
        store.write.set()
        wait_for(lambda: count_rows(app, Document, id=uuid.UUID(document_id), status="ready"), 30,
                 what="the worker to finish the document")
        store.removal.set()
        request.join(30)
        assert outcome == {"status": 204}
    client.ingested()

    assert count_rows(app, Document, id=uuid.UUID(document_id)) == 0
    assert count_rows(app, Chunk, document_id=uuid.UUID(document_id)) == 0
    if operation == "delete the space":
        assert stored(app, space_id) == (False, 0)
    else:
        assert stored(app, space_id, document_id) == (True, 0)
        assert stored(app, space_id)[1] == vectors(app, space_id) > 0  # the other document's
