"""plugins/README.md is the plugin author's guide: it must keep up with the code. Every
entry-point group, every member of every protocol (in that protocol's own section), every
contract test class with the fixtures an author must provide, and every fixture of the
pytest plugin are named in it, in backticks."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import spacio.testing.contracts
import spacio.testing.plugin
from spacio.rag import contracts
from spacio.rag.registry import PROTOCOLS

GUIDE = Path(__file__).resolve().parents[2] / "plugins" / "README.md"
# fixtures pytest itself provides
BUILTIN_FIXTURES = {"request", "tmp_path", "tmp_path_factory", "monkeypatch", "capsys", "capfd", "caplog",
                    "recwarn", "pytestconfig"}


def guide():
    """The guide without fenced code blocks (their backticks would pair up wrongly)."""
    return re.sub(r"^```.*?^```", "", GUIDE.read_text(), flags=re.S | re.M)


def code_spans(text):
    """The contents of `inline code`, whitespace squeezed (a span may wrap a line)."""
    return [re.sub(r"\s+", " ", span).strip() for span in re.findall(r"`([^`]+)`", text)]


def names_a(spans, name):
    """Some span is ``name`` or starts with it as a call/attribute: `parse(blob) -> ...`."""
    return any(re.match(rf"{re.escape(name)}(?![\w.])", span) for span in spans)


def protocols():
    return [obj for obj in vars(contracts).values()
            if inspect.isclass(obj) and obj.__module__ == contracts.__name__ and getattr(obj, "_is_protocol", False)]


def members(protocol):
    """The attributes and methods a protocol declares."""
    declared = set(getattr(protocol, "__annotations__", {}))
    declared |= {name for name, value in vars(protocol).items() if inspect.isfunction(value)}
    return sorted(name for name in declared if not name.startswith("_"))


def section(text, title):
    """The text under the ``### <title>`` heading, up to the next heading."""
    match = re.search(rf"^###\s+{re.escape(title)}\b.*?$(.*?)(?=^#{{1,3}}\s|\Z)", text, flags=re.S | re.M)
    assert match, f"plugins/README.md has no '### {title}' section"
    return match.group(1)


def is_fixture(value):
    return hasattr(value, "_fixture_function_marker") or hasattr(value, "_pytestfixturefunction")


def contract_classes():
    for info in pkgutil.iter_modules(spacio.testing.contracts.__path__):
        module = importlib.import_module(f"{spacio.testing.contracts.__name__}.{info.name}")
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__ and name.endswith("Contract"):
                yield module.__name__, value


def plugin_fixtures():
    return {name for name, value in vars(spacio.testing.plugin).items() if is_fixture(value)}


def fixtures_to_provide(cls):
    """The fixtures a contract class's tests need that neither it, the pytest plugin nor
    pytest provide: what a plugin author must write."""
    own = {name for name in dir(cls) if is_fixture(getattr(cls, name))}
    needed = set()
    for name in dir(cls):
        if not (name.startswith("test") or name in own):
            continue
        function = getattr(cls, name)
        parametrized = {arg.strip() for mark in getattr(function, "pytestmark", []) if mark.name == "parametrize"
                        for arg in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
        needed |= set(inspect.signature(function).parameters) - parametrized - {"self"}
    return needed - own - plugin_fixtures() - BUILTIN_FIXTURES


def table_row(text, first_cell):
    """The cells of the table row whose first cell is ``first_cell``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"plugins/README.md has no table row starting with {first_cell}")


def test_the_protocols_are_found():
    """The introspection below is not vacuous."""
    found = {p.__name__ for p in protocols()}
    assert found == {p.__name__ for p in PROTOCOLS.values()} | {"Tokenizer"}
    assert members(contracts.Embedder) == ["dimensions", "embed_documents", "embed_query", "max_batch_size",
                                           "max_tokens", "model", "tokenizer"]


@pytest.mark.parametrize("kind", sorted(contracts.KINDS))
def test_every_entry_point_group_is_documented_with_its_protocol(kind):
    row = table_row(guide(), kind.replace("_", " "))
    spans = code_spans(" | ".join(row))
    assert contracts.KINDS[kind] in spans, row
    assert PROTOCOLS[kind].__name__ in spans, row


@pytest.mark.parametrize("protocol", protocols(), ids=lambda p: p.__name__)
def test_every_member_of_every_protocol_is_documented_in_its_section(protocol):
    spans = code_spans(section(guide(), protocol.__name__))
    missing = [name for name in members(protocol) if not names_a(spans, name)]
    assert not missing, f"### {protocol.__name__} in plugins/README.md does not mention {missing}"


@pytest.mark.parametrize("module, cls", list(contract_classes()), ids=lambda v: getattr(v, "__name__", v))
def test_every_contract_class_is_documented_with_the_fixtures_to_provide(module, cls):
    _, where, fixtures = table_row(guide(), f"`{cls.__name__}`")[:3]
    assert code_spans(where) == [module]
    assert set(code_spans(fixtures)) == fixtures_to_provide(cls)


def test_there_is_a_contract_class_per_kind_a_plugin_author_implements():
    documented = {cls.__name__ for _, cls in contract_classes()}
    assert {"ParserContract", "ChunkerContract", "EmbedderContract", "VectorStoreContract"} <= documented


def test_every_fixture_of_the_pytest_plugin_is_documented():
    spans = code_spans(guide())
    fixtures = plugin_fixtures()
    assert fixtures, "spacio.testing.plugin defines no fixtures?"
    assert sorted(name for name in fixtures if name not in spans) == []
