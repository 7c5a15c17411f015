"""The plugin host (spacio.rag.registry): discovery through entry points, selection,
options, host-provided options, and the errors that stop an app at start.

Third-party plugins are played by real distributions written to a temporary folder
(``<name>.dist-info/METADATA`` + ``entry_points.txt`` + a module) and put on sys.path, so
``importlib.metadata`` finds them exactly as it finds an installed package.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from spacio import create_app
from spacio.rag import contracts, registry
from spacio.rag.registry import PluginConfigError, Registry, Unusable, build

SECRET = "s" * 40
ROOT = Path(__file__).resolve().parents[2]
KIND_OF_GROUP = {group: kind for kind, group in contracts.KINDS.items()}


def entry_points(kind):
    """name -> entry point of one kind, as importlib.metadata sees them."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=contracts.KINDS[kind])}


@pytest.fixture
def host(tmp_path):
    return {"database_url": f"sqlite:///{tmp_path / 'spacio.db'}", "instance_path": str(tmp_path)}


def selection(**config):
    """A config with the fast built-ins selected; keyword arguments override."""
    return {"PARSERS": None, "CHUNKER": "recursive", "EMBEDDER": "hashing", "VECTOR_STORE": "local",
            "GENERATOR": None, "RERANKER": None, **config}


def error_of(config, host):
    with pytest.raises(PluginConfigError) as raised:
        Registry(config, host)
    return str(raised.value)


# --------------------------------------------------------------------------- fake distributions

FAKE_PLUGINS = '''
import numpy as np
from marshmallow import Schema, fields

from spacio.rag.contracts import Embeddings
from spacio.testing.tokenizers import RegexTokenizer


class Options(Schema):
    instance_path = fields.String(required=True)
    database_url = fields.String(load_default=None)
    dimensions = fields.Integer(load_default=8)


class FakeEmbedder:
    """A complete embedder that declares both host-provided options."""

    options_schema = Options
    model = "fake-v1"
    max_batch_size = 8
    max_tokens = 64

    def __init__(self, instance_path, database_url=None, dimensions=8):
        self.instance_path, self.database_url, self.dimensions = instance_path, database_url, dimensions
        self.tokenizer = RegexTokenizer()

    def embed_documents(self, texts):
        return Embeddings(np.ones((len(texts), self.dimensions), np.float32) / self.dimensions ** 0.5, 0)

    def embed_query(self, text):
        return self.embed_documents([text])


class HalfAnEmbedder:
    """Has embed_documents but none of the rest of the contract."""

    def embed_documents(self, texts):
        return None


class Misconfigured:
    def __init__(self):
        raise ValueError("the region must be one of eu, us")
'''


@pytest.fixture
def distributions(tmp_path, monkeypatch):
    """Write fake distributions on sys.path: ``add(name, {group: {ep_name: "module:attr"}},
    modules={module: source})``. Module names get a unique suffix ``{id}``."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    suffix = uuid.uuid4().hex[:8]
    written = []

    def add(name, groups, modules=(), version="1.0"):
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, points in groups.items():
            lines += [f"[{group}]", *(f"{n} = {t.format(id=suffix)}" for n, t in points.items()), ""]
        (info / "entry_points.txt").write_text("\n".join(lines))
        for module, source in dict(modules).items():
            module = module.format(id=suffix)
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            written.append(module)
        importlib.invalidate_caches()

    yield add
    for module in written:
        sys.modules.pop(module, None)


# --------------------------------------------------------------------------- selection errors

def test_an_unknown_name_names_the_kind_and_lists_the_installed_ones(host):
    message = error_of(selection(EMBEDDER="nonexistent"), host)

    assert "embedder" in message and "'nonexistent'" in message
    installed = sorted(entry_points("embedder"))
    assert installed and all(name in message for name in installed), message
    assert "SPACIO_EMBEDDER" in message

    message = error_of(selection(VECTOR_STORE="qdrant"), host)
    assert "vector store 'qdrant'" in message
    assert all(name in message for name in entry_points("vector_store")), message

    message = error_of(selection(PARSERS="text,rtf"), host)
    assert "parser 'rtf'" in message and "pdf" in message


def test_a_required_kind_must_be_selected(host):
    assert "No chunker is selected" in error_of(selection(CHUNKER=""), host)
    assert "SPACIO_EMBEDDER" in error_of(selection(EMBEDDER=None), host)


def test_optional_kinds_may_stay_unselected(host):
    registry_ = Registry(selection(), host)
    assert registry_.generator is None and registry_.reranker is None


def test_invalid_options_name_the_plugin_and_the_field(host):
    message = error_of(selection(PLUGINS={"EMBEDDER": {"HASHING": {"DIMENSIONS": 1}}}), host)
    assert "'hashing'" in message and "dimensions" in message
    assert "SPACIO_PLUGINS__EMBEDDER__HASHING__" in message

    message = error_of(selection(PLUGINS={"EMBEDDER": {"HASHING": {"DIMENSION": 32}}}), host)
    assert "'hashing'" in message and "dimension" in message  # an unknown option is an error too

    message = error_of(selection(PLUGINS={"EMBEDDER": {"HASHING": 32}}), host)
    assert "'hashing'" in message and "mapping" in message


def test_a_plugin_without_options_schema_refuses_options(host):
    message = error_of(selection(PLUGINS={"CHUNKER": {"RECURSIVE": {"SIZE": 100}}}), host)
    assert "chunker 'recursive'" in message and "no options" in message and "size" in message
    message = error_of(selection(PLUGINS={"PARSER": {"TEXT": {"ENCODING": "latin-1"}}}), host)
    assert "parser 'text'" in message and "encoding" in message


def test_options_of_unselected_plugins_are_not_checked(host):
    """Options for a plugin the server does not use are not validated (nor is it imported)."""
    registry_ = Registry(selection(PLUGINS={"EMBEDDER": {"COHERE": {"BOGUS": 1}}}), host)
    assert registry_.embedder.model == "hashing-v1"


# --------------------------------------------------------------------------- options

def test_options_from_the_environment_reach_the_plugin_lower_cased(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACIO_EMBEDDER", "hashing")
    monkeypatch.setenv("SPACIO_PLUGINS__EMBEDDER__HASHING__DIMENSIONS", "48")
    monkeypatch.setenv("SPACIO_PLUGINS__EMBEDDER__HASHING__Max_Batch_Size", "7")

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'a.db'}", "JWT_SECRET_KEY": SECRET},
                     INSTANCE_PATH=str(tmp_path))

    embedder = registry(app).embedder
    assert (embedder.dimensions, embedder.max_batch_size) == (48, 7)
    assert registry(app).pipeline()["embedder"] == {"name": "hashing", "model": "hashing-v1", "dimensions": 48}


def test_an_invalid_option_in_the_environment_stops_create_app(monkeypatch, tmp_path):
    monkeypatch.setenv("SPACIO_PLUGINS__EMBEDDER__HASHING__DIMENSIONS", "\"many\"")
    with pytest.raises(PluginConfigError, match="dimensions"):
        create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'a.db'}", "JWT_SECRET_KEY": SECRET,
                    "EMBEDDER": "hashing"}, INSTANCE_PATH=str(tmp_path))


def test_the_host_provides_database_url_and_instance_path_when_declared(distributions, host):
    distributions("spacio-fake", {"spacio.embedders": {"fake": "fake_{id}:FakeEmbedder"}},
                  {"fake_{id}": FAKE_PLUGINS})

    embedder = Registry(selection(EMBEDDER="fake"), host).embedder
    assert (embedder.instance_path, embedder.database_url) == (host["instance_path"], host["database_url"])

    # what the user sets wins
    config = selection(EMBEDDER="fake", PLUGINS={"embedder": {"fake": {"Instance_Path": "/elsewhere"}}})
    assert Registry(config, host).embedder.instance_path == "/elsewhere"
    # a required host option without a host: the plugin's own validation error
    assert "instance_path" in error_of(selection(EMBEDDER="fake"), None)


def test_host_options_reach_the_real_stores_only_when_declared(host, tmp_path):
    store = Registry(selection(), host).vector_store
    assert Path(store.path) == tmp_path / "spacio.db"  # local: the app's own SQLite file

    pg = build("vector_store", "pgvector", selection(), {"database_url": "postgresql+psycopg://u@db.internal:5433/app"})
    assert pg.conninfo == "postgresql://u@db.internal:5433/app"  # no I/O happened: nothing listens there
    config = selection(PLUGINS={"VECTOR_STORE": {"PGVECTOR": {"DATABASE_URL": "postgresql://v@other:5432/vec"}}})
    assert build("vector_store", "pgvector", config, host).conninfo == "postgresql://v@other:5432/vec"
    # the hashing embedder declares neither: passing them would fail its schema
    assert build("embedder", "hashing", selection(), host).dimensions == 64


# --------------------------------------------------------------------------- broken plugins

def test_two_distributions_claiming_one_name_is_an_error(distributions, host):
    for vendor in ("acme", "globex"):
        distributions(f"spacio-{vendor}", {"spacio.embedders": {"twin": f"{vendor}_{{id}}:FakeEmbedder"}},
                      {f"{vendor}_{{id}}": FAKE_PLUGINS}, version="2.0" if vendor == "acme" else "3.1")

    message = error_of(selection(EMBEDDER="twin"), host)

    assert "'twin'" in message and "two distributions" in message
    assert "spacio-acme 2.0" in message and "spacio-globex 3.1" in message


def test_an_entry_point_that_fails_to_import_is_named(distributions, host):
    distributions("spacio-broken", {"spacio.embedders": {"broken": "broken_{id}:Embedder"}},
                  {"broken_{id}": "import vendor_sdk_that_is_not_installed_anywhere\n"}, version="0.3")

    message = error_of(selection(EMBEDDER="broken"), host)

    assert "embedder 'broken' (spacio-broken 0.3) failed to import" in message
    assert "ModuleNotFoundError" in message and "vendor_sdk_that_is_not_installed_anywhere" in message


def test_an_entry_point_naming_a_missing_attribute_is_named(distributions, host):
    distributions("spacio-typo", {"spacio.embedders": {"typo": "typo_{id}:FakeEmbeder"}},
                  {"typo_{id}": FAKE_PLUGINS})
    message = error_of(selection(EMBEDDER="typo"), host)
    assert "'typo'" in message and "failed to import" in message and "FakeEmbeder" in message


def test_an_object_that_does_not_implement_the_protocol_is_refused(distributions, host):
    distributions("spacio-half", {"spacio.embedders": {"half": "half_{id}:HalfAnEmbedder"},
                                  "spacio.vector_stores": {"wrong": "half_{id}:FakeEmbedder"}},
                  {"half_{id}": FAKE_PLUGINS})

    message = error_of(selection(EMBEDDER="half"), host)
    assert "embedder 'half'" in message and "does not implement" in message and "Embedder" in message
    # a complete embedder registered as a vector store is not a vector store
    message = error_of(selection(VECTOR_STORE="wrong"), host)
    assert "vector store 'wrong'" in message and "VectorStore" in message


def test_a_constructor_refusing_its_configuration_is_reported(distributions, host):
    distributions("spacio-picky", {"spacio.embedders": {"picky": "picky_{id}:Misconfigured"}},
                  {"picky_{id}": FAKE_PLUGINS})
    message = error_of(selection(EMBEDDER="picky"), host)
    assert "embedder 'picky'" in message and "could not be configured" in message and "region" in message


def test_only_the_selected_plugins_are_imported(tmp_path):
    """A fresh interpreter builds the default app; no unselected plugin (or its SDK) is imported."""
    script = textwrap.dedent("""
        import json, sys
        from spacio import create_app
        from spacio.rag import registry
        app = create_app({"SQLALCHEMY_DATABASE_URI": sys.argv[1], "JWT_SECRET_KEY": "s" * 40,
                          **json.loads(sys.argv[2])}, INSTANCE_PATH=sys.argv[3])
        print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}),
                          "selection": registry(app).selection}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACIO_")}

    def start(name, **config):  # both interpreters run at once: each takes seconds to import everything
        return subprocess.Popen(
            [sys.executable, "-c", script, f"sqlite:///{tmp_path / name}", json.dumps(config), str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)

    def result(process):
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        return json.loads(stdout.strip().splitlines()[-1])

    nowhere = {"VECTOR_STORE": {"PGVECTOR": {"DATABASE_URL": "postgresql://u@127.0.0.1:9/x"}}}  # never connected
    runs = [start("a.db"), start("b.db", EMBEDDER="hashing", VECTOR_STORE="pgvector", PARSERS="text", PLUGINS=nowhere)]
    default, other = map(result, runs)

    assert default["selection"]["embedder"] == ["local"] and default["selection"]["vector_store"] == ["local"]
    modules = set(default["modules"])
    assert {"spacio_minilm", "spacio_pdf", "spacio_docx"} <= modules  # selected (every parser by default)
    assert not modules & {"spacio_weaviate", "weaviate", "spacio_cohere", "cohere", "spacio_pgvector"}, modules

    assert other["selection"]["vector_store"] == ["pgvector"]
    other = set(other["modules"])
    assert "spacio_pgvector" in other
    assert not other & {"spacio_minilm", "onnxruntime", "spacio_pdf", "spacio_docx", "spacio_weaviate"}, other


# --------------------------------------------------------------------------- pipeline and catalogue

def test_a_space_is_served_with_the_plugins_it_recorded(host):
    """A space keeps its own embedder (model, dimensions), chunker and store: the selected
    ones when they match, else those it recorded, built on demand and kept."""
    registry_ = Registry(selection(), host)
    recorded = registry_.pipeline()
    assert recorded == {"chunker": {"name": "recursive"},
                        "embedder": {"name": "hashing", "model": "hashing-v1", "dimensions": 64},
                        "vector_store": {"name": "local"}}
    same = registry_.resolve(json.loads(json.dumps(recorded)))  # as stored in a JSON column
    assert (same.chunker, same.embedder, same.vector_store) == (
        registry_.chunker, registry_.embedder, registry_.vector_store)

    smaller = {**recorded, "embedder": {**recorded["embedder"], "dimensions": 32}}
    embedder = registry_.resolve(smaller).embedder
    assert embedder is not registry_.embedder and embedder.dimensions == 32
    assert registry_.resolve(smaller).embedder is embedder  # built once
    assert registry_.mismatch(smaller) is None
    assert embedder in registry_.plugins()  # closed with the others


def test_a_space_whose_recorded_plugins_cannot_be_built_says_why(host):
    registry_ = Registry(selection(), host)
    recorded = registry_.pipeline()

    other_model = {**recorded, "embedder": {"name": "hashing", "model": "hashing-v0", "dimensions": 64}}
    message = registry_.mismatch(other_model)
    assert "'hashing' (model hashing-v0, dimensions 64)" in message and "model hashing-v1" in message
    assert "reindex" in message
    missing = {**recorded, "embedder": {"name": "nowhere", "model": "m", "dimensions": 8}}
    assert "embedder 'nowhere'" in registry_.mismatch(missing) and "not installed" in registry_.mismatch(missing)
    other_store = {**recorded, "vector_store": {"name": "pgvector"}}  # no PostgreSQL configured
    assert "vector store 'pgvector'" in registry_.mismatch(other_store)
    other_chunker = {**recorded, "chunker": {"name": "semantic"}}
    assert "chunker 'semantic'" in registry_.mismatch(other_chunker)
    assert registry_.mismatch({}) is not None
    with pytest.raises(Unusable):
        registry_.resolve(other_model)


def test_a_generator_is_chosen_by_name_and_model(host):
    registry_ = Registry(selection(GENERATOR="extractive"), host)
    assert registry_.generator_for(None) is registry_.generator
    assert registry_.generator_for({"name": "paced"}) is registry_.generator_for({"name": "paced"})
    assert type(registry_.generator_for({"name": "paced"})).__name__ != type(registry_.generator).__name__
    assert registry_.generator_problem("paced") is None
    assert "not installed" in registry_.generator_problem("nowhere")


def test_catalogue_lists_every_installed_plugin_and_marks_the_selected(host):
    catalogue = Registry(selection(PARSERS="text, pdf"), host).catalogue()

    assert set(catalogue) == set(contracts.KINDS)
    for kind, items in catalogue.items():
        points = entry_points(kind)
        assert [item["name"] for item in items] == sorted(points)
        for item in items:
            dist = points[item["name"]].dist
            assert (item["kind"], item["distribution"], item["version"]) == (kind, dist.name, dist.version)
    selected = {kind: [i["name"] for i in items if i["selected"]] for kind, items in catalogue.items()}
    assert selected == {"parser": ["pdf", "text"], "chunker": ["recursive"], "embedder": ["hashing"],
                        "vector_store": ["local"], "generator": [], "reranker": []}
    builtin = {i["name"]: i for i in catalogue["embedder"]}["hashing"]
    assert builtin["distribution"] == "spacio"


def test_the_parser_selection_decides_which_media_types_are_read(host):
    everything = Registry(selection(), host)
    assert {"application/pdf", "text/plain", "text/html", "text/markdown", "application/json",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document"} <= set(everything.parsers)
    assert everything.selection["parser"] == sorted(entry_points("parser"))

    two = Registry(selection(PARSERS=["text", "pdf"]), host)
    assert set(two.parsers) == {"text/plain", "application/pdf"}
    assert Registry(selection(PARSERS="*"), host).selection["parser"] == everything.selection["parser"]


PARSERS_OF_TEXT = '''
from spacio.rag.contracts import ParsedDocument, Section


class Plain:
    media_types = frozenset({"text/plain"})

    def parse(self, blob):
        return ParsedDocument((Section("plain"),))


class Better(Plain):
    priority = 10
'''


def test_the_parser_with_the_higher_priority_reads_a_media_type(distributions, host):
    distributions("spacio-better", {"spacio.parsers": {"aaa-plain": "parsers_{id}:Plain",
                                                        "zzz-better": "parsers_{id}:Better"}},
                  {"parsers_{id}": PARSERS_OF_TEXT})
    assert type(Registry(selection(PARSERS="aaa-plain,zzz-better"), host).parsers["text/plain"]).__name__ == "Better"
    # equal priorities: the first by name, as before (text is built in: "aaa-plain" comes first)
    assert type(Registry(selection(PARSERS="aaa-plain,text"), host).parsers["text/plain"]).__name__ == "Plain"
