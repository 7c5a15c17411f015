"""What is installed and what is used: GET /api/v1/plugins and `flask spacio plugins`;
and `flask spacio ingest`, which uploads a folder through the same path as the API."""

import importlib.metadata
import re
import uuid

from spacio.documents.models import Document
from spacio.rag import contracts
from tests.api.helpers import count_rows, space_url
from tests.conftest import ApiClient, assert_error

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(48)


def installed(kind):
    """name -> (distribution, version) of one kind, as importlib.metadata sees them."""
    return {ep.name: (ep.dist.name, ep.dist.version)
            for ep in importlib.metadata.entry_points(group=contracts.KINDS[kind])}


def expected_selection(app):
    return {"parser": set(installed("parser")), "chunker": {"recursive"}, "embedder": {"hashing"},
            "vector_store": {app.config["VECTOR_STORE"]}, "generator": {"extractive"}, "reranker": set()}


def test_plugins_lists_every_kind_with_versions_and_the_selected_ones(client, alice):
    assert_error(client.get("/api/v1/plugins"), 401)

    response = client.get("/api/v1/plugins", headers=alice.headers)

    assert response.status_code == 200, response.json
    assert set(response.json) == set(contracts.KINDS)
    selected = {}
    for kind, items in response.json.items():
        assert {item["name"]: (item["distribution"], item["version"]) for item in items} == installed(kind)
        assert [item["name"] for item in items] == sorted(item["name"] for item in items)
        for item in items:
            extra = {"usable", "problem"} if kind == "generator" else set()
            assert set(item) == {"name", "distribution", "version", "selected"} | extra
        selected[kind] = {item["name"] for item in items if item["selected"]}
    usable = {item["name"]: item for item in response.json["generator"]}
    assert usable["extractive"]["usable"] and usable["extractive"]["problem"] is None
    # the Cohere generator needs a key this server was not given: not usable, and it says why
    assert not usable["cohere"]["usable"] and "API key" in usable["cohere"]["problem"]
    assert selected == expected_selection(client.app)
    # the database decides the default store: the embedded default's, or pgvector's
    assert selected["vector_store"] == ({"local"} if client.app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")
                                        else {"pgvector"})


def test_the_plugins_command_prints_the_same_catalogue(app):
    result = app.test_cli_runner().invoke(args=["spacio", "plugins"])

    assert result.exit_code == 0, result.output
    printed, kind = {}, None
    for line in result.output.splitlines():
        if re.fullmatch(r"[a-z_]+:", line):
            kind = line[:-1]
            printed[kind] = []
            continue
        match = re.fullmatch(r"  ([* ]) (\S+)\s*(.*)", line)
        assert match and kind, line
        printed[kind].append(match.groups())
    assert set(printed) == set(contracts.KINDS)
    selection = expected_selection(app)
    for kind, rows in printed.items():
        if not installed(kind):
            assert rows == [(" ", "(none", "installed)")]
            continue
        assert {name: tuple(rest.split()) for _, name, rest in rows} == installed(kind)
        assert {name for mark, name, _ in rows if mark == "*"} == selection[kind]


def write(folder, files):
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_the_ingest_command_uploads_a_folder_and_waits_for_it(client, alice, space, tmp_path):
    folder = tmp_path / "docs"
    write(folder, {
        "a-notes.txt": b"Notes about beavers building dams.",
        "b-copy.txt": b"Notes about beavers building dams.",  # the same bytes: one document
        "c-picture.txt": PNG,  # not text, whatever its name says
        "sub/d-guide.md": b"# Guide\n\nHow beavers fell trees.\n",
        ".hidden.txt": b"Never uploaded.",
    })
    single = tmp_path / "single.html"
    single.write_bytes(b"<!DOCTYPE html><html><body><p>Lodges have underwater entrances.</p></body></html>")

    result = client.app.test_cli_runner().invoke(args=["spacio", "ingest", space["id"], str(folder), str(single)])

    assert result.exit_code == 0, result.output
    assert "Uploading" in result.output and "Ingesting" in result.output
    assert "5 files, 3 queued for ingestion, 2 already there or rejected." in result.output
    summary = {line.strip() for line in result.output.splitlines() if line.startswith("  ")}
    assert {"ready: 3", "failed (unsupported_media_type): 1"} <= summary, result.output

    documents = client.get(space_url(space["id"], "documents"), headers=alice.headers).json
    by_name = {d["filename"]: d for d in documents}
    assert set(by_name) == {"a-notes.txt", "c-picture.txt", "d-guide.md", "single.html"}
    assert {name: d["status"] for name, d in by_name.items()} == {
        "a-notes.txt": "ready", "c-picture.txt": "failed", "d-guide.md": "ready", "single.html": "ready"}
    assert all(d["uploaded_by"] == alice.id for d in documents)  # the owner, by default


def test_the_ingest_command_checks_the_space_and_the_uploader(client, alice, bob, space, tmp_path):
    runner = client.app.test_cli_runner()
    note = tmp_path / "note.txt"
    note.write_bytes(b"A note.")

    unknown = runner.invoke(args=["spacio", "ingest", str(uuid.uuid4()), str(note)])
    assert unknown.exit_code != 0 and "No space" in unknown.output
    nobody = runner.invoke(args=["spacio", "ingest", space["id"], str(note), "--as", "nobody@example.com"])
    assert nobody.exit_code != 0 and "No user" in nobody.output

    client.member(alice, space["id"], bob, "viewer")
    viewer = runner.invoke(args=["spacio", "ingest", space["id"], str(note), "--as", "Bob@Example.com"])
    assert viewer.exit_code != 0 and "editor role" in viewer.output
    assert count_rows(client.app, Document) == 0

    client.http.patch(space_url(space["id"], "members", bob.id), json={"role": "editor"}, headers=alice.headers)
    editor = runner.invoke(args=["spacio", "ingest", space["id"], str(note), "--as", bob.email, "--no-wait"])
    assert editor.exit_code == 0, editor.output
    assert "1 files, 1 queued" in editor.output and "Ingesting" not in editor.output
    client.ingested()
    (document,) = client.get(space_url(space["id"], "documents"), headers=alice.headers).json
    assert document["uploaded_by"] == bob.id and document["status"] == "ready"


def test_the_ingest_command_sends_big_folders_in_several_requests(make_app, tmp_path):
    """More files than one request may carry go in groups; the per-file size limit holds
    for files read from disk too."""
    client = ApiClient(make_app(UPLOAD_MAX_FILES=2, UPLOAD_MAX_FILE_BYTES=1000).test_client())
    alice = client.user("alice@example.com", "Alice")
    space_id = client.space(alice)["id"]
    folder = tmp_path / "many"
    write(folder, {f"{i}.txt": f"Document number {i} about herons.".encode() for i in range(5)})
    write(folder, {"big.txt": b"Too big. " * 200})

    result = client.app.test_cli_runner().invoke(args=["spacio", "ingest", space_id, str(folder)])

    assert result.exit_code == 0, result.output
    assert "6 files, 5 queued" in result.output
    summary = {line.strip() for line in result.output.splitlines() if line.startswith("  ")}
    assert {"ready: 5", "failed (file_too_large): 1"} <= summary, result.output
    assert count_rows(client.app, Document) == 6
