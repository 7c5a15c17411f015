"""Plugin discovery and construction.

Plugins are found through entry points (``spacio.parsers``, ``spacio.embedders``, ...);
the entry-point name is the config value. Built-ins are registered the same way, in
spacio's own packaging metadata. Only the selected plugins are imported. Everything that
can be wrong with the selection (an unknown name, a name two distributions claim, a
plugin that does not import, invalid options) stops the app at start with a message that
names the plugin.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from dataclasses import dataclass
from typing import Any

import marshmallow as ma

from spacio.rag import contracts

log = logging.getLogger(__name__)

PROTOCOLS = {
    "parser": contracts.Parser,
    "chunker": contracts.Chunker,
    "embedder": contracts.Embedder,
    "vector_store": contracts.VectorStore,
    "generator": contracts.Generator,
    "reranker": contracts.Reranker,
}
# the config key selecting each kind (PARSERS is a list; the others one name, or None)
SELECTION_KEYS = {
    "parser": "PARSERS",
    "chunker": "CHUNKER",
    "embedder": "EMBEDDER",
    "vector_store": "VECTOR_STORE",
    "generator": "GENERATOR",
    "reranker": "RERANKER",
}
HOST_OPTIONS = ("database_url", "instance_path")


class PluginConfigError(RuntimeError):
    """The plugin selection or options cannot work; raised while the app starts."""


class Unusable(RuntimeError):
    """A space's recorded plugins cannot be used on this server (``Registry.resolve``)."""


@dataclass(frozen=True)
class Pipeline:
    """The plugins one space's vectors depend on."""

    chunker: Any
    embedder: Any
    vector_store: Any


@dataclass(frozen=True)
class Installed:
    kind: str
    name: str
    distribution: str
    version: str
    target: str  # "module:attribute"
    entry_point: Any

    def describe(self, selected):
        return {"kind": self.kind, "name": self.name, "distribution": self.distribution,
                "version": self.version, "selected": selected}


def label(kind):
    return kind.replace("_", " ")


def installed(kind, entry_points=None) -> dict[str, Installed]:
    """The installed plugins of one kind by name; a name claimed twice is an error.
    ``entry_points``: the result of one ``importlib.metadata.entry_points()`` scan to pick
    from (a scan reads every distribution's metadata: ~20 ms, so a registry does one)."""
    group = contracts.KINDS[kind]
    points = importlib.metadata.entry_points(group=group) if entry_points is None else entry_points.select(group=group)
    found: dict[str, Installed] = {}
    for ep in points:
        dist = ep.dist
        item = Installed(kind, ep.name, dist.name if dist else "?", dist.version if dist else "?", ep.value, ep)
        other = found.get(ep.name)
        if other is not None and (other.distribution, other.target) != (item.distribution, item.target):
            raise PluginConfigError(
                f"The {label(kind)} name {ep.name!r} is claimed by two distributions: "
                f"{other.distribution} {other.version} ({other.target}) and {item.distribution} {item.version} "
                f"({item.target}). Uninstall one of them."
            )
        found[ep.name] = item
    return found


def selected_names(kind, config, parsers=None) -> list[str]:
    value = config.get(SELECTION_KEYS[kind])
    if kind == "parser":
        if value in (None, "", "*", ["*"]):
            return sorted(installed("parser") if parsers is None else parsers)
        if isinstance(value, str):
            value = value.split(",")
        return [v.strip() for v in value if v.strip()]
    return [value.strip()] if isinstance(value, str) and value.strip() else []


def plugin_options(kind, name, config) -> dict:
    """User options from ``PLUGINS[<KIND>][<NAME>]`` (SPACIO_PLUGINS__EMBEDDER__COHERE__MODEL),
    keys lower-cased; a plain dict in config works too."""
    plugins = {str(k).lower(): v for k, v in (config.get("PLUGINS") or {}).items()}
    per_kind = {str(k).lower(): v for k, v in (plugins.get(kind) or {}).items()}
    options = per_kind.get(name.lower()) or {}
    if not isinstance(options, dict):
        raise PluginConfigError(f"Options of {label(kind)} {name!r} must be a mapping, not {options!r}.")
    return {str(k).lower(): v for k, v in options.items()}


def build(kind, name, config, host_options=None, plugins=None, overrides=None):
    """Import, validate and construct one plugin (``plugins``: ``installed(kind)``, if known).
    ``overrides``: options that win over the configured ones (a space's recorded model)."""
    plugins = installed(kind) if plugins is None else plugins
    item = plugins.get(name)
    if item is None:
        known = ", ".join(sorted(plugins)) or "none"
        raise PluginConfigError(
            f"The {label(kind)} {name!r} is not installed (installed: {known}). "
            f"Set SPACIO_{SELECTION_KEYS[kind]} to an installed one, or pip install the plugin that provides it."
        )
    where = f"{label(kind)} {name!r} ({item.distribution} {item.version})"
    try:
        factory = item.entry_point.load()
    except Exception as exc:  # an import error of a third-party package, reported with its name
        raise PluginConfigError(f"The {where} failed to import: {exc.__class__.__name__}: {exc}") from exc

    options = {**plugin_options(kind, name, config), **(overrides or {})}
    schema_class = getattr(factory, "options_schema", None)
    if schema_class is not None:
        schema = schema_class() if isinstance(schema_class, type) else schema_class
        for key in HOST_OPTIONS:
            if key in schema.fields and key not in options and (host_options or {}).get(key) is not None:
                options[key] = host_options[key]
        try:
            options = schema.load(options)
        except ma.ValidationError as exc:
            env = f"SPACIO_PLUGINS__{kind.upper()}__{name.upper()}__<OPTION>"
            raise PluginConfigError(f"Invalid options for the {where}: {exc.messages} (set them as {env}).") from exc
    elif options:
        raise PluginConfigError(f"The {where} takes no options, but got {sorted(options)}.")

    try:
        plugin = factory(**options)
    except (TypeError, ValueError, ma.ValidationError, contracts.PluginError) as exc:
        raise PluginConfigError(f"The {where} could not be configured: {exc}") from exc
    if not isinstance(plugin, PROTOCOLS[kind]):
        raise PluginConfigError(f"The {where} does not implement the {label(kind)} contract "
                                f"(spacio.rag.contracts.{PROTOCOLS[kind].__name__}).")
    return plugin


class Registry:
    """The plugins one app uses, built once at start."""

    def __init__(self, config, host_options=None):
        self.config = config
        self._entry_points = importlib.metadata.entry_points()  # one scan for every kind
        self._installed: dict[str, dict[str, Installed]] = {}
        self.parsers: dict[str, Any] = {}  # media type -> parser
        parsers = self.installed_plugins("parser")
        self.selection = {kind: selected_names(kind, config, parsers) for kind in PROTOCOLS}
        for name in self.selection["parser"]:
            parser = build("parser", name, config, host_options, parsers)
            for media_type in parser.media_types:
                other = self.parsers.get(media_type)
                if other is None or _priority(parser) > _priority(other):  # equal: the first by name
                    self.parsers[media_type] = parser
        self.chunker = self._one("chunker", host_options, required=True)
        self.embedder = self._one("embedder", host_options, required=True)
        self.vector_store = self._one("vector_store", host_options, required=True)
        self.generator = self._one("generator", host_options)
        self.reranker = self._one("reranker", host_options)
        self._host_options = host_options
        self._lock = threading.Lock()
        # every plugin built, by (kind, name, overrides): the selected ones, and those built on
        # demand for a space that recorded others (its embedder's model, its generator)
        self._built: dict[tuple, Any] = {}
        for kind in ("chunker", "embedder", "vector_store", "generator", "reranker"):
            if self.selection[kind]:
                self._built[(kind, self.selection[kind][0], ())] = getattr(self, kind)

    def _one(self, kind, host_options, required=False):
        names = self.selection[kind]
        if not names:
            if required:
                raise PluginConfigError(f"No {label(kind)} is selected: set SPACIO_{SELECTION_KEYS[kind]}.")
            return None
        return build(kind, names[0], self.config, host_options, self.installed_plugins(kind))

    def plugin(self, kind, name, **overrides):
        """The plugin ``name`` of ``kind`` with ``overrides`` of its options, built the first
        time it is asked for and kept (``PluginConfigError`` if it cannot be built)."""
        key = (kind, name, tuple(sorted(overrides.items())))
        plugin = self._built.get(key)
        if plugin is None:
            with self._lock:
                plugin = self._built.get(key)
                if plugin is None:
                    plugin = build(kind, name, self.config, self._host_options, self.installed_plugins(kind),
                                   overrides=overrides)
                    self._built[key] = plugin
        return plugin

    def takes_option(self, kind, name, option) -> bool:
        """Whether the plugin's options include ``option`` (e.g. ``model``)."""
        item = self.installed_plugins(kind).get(name)
        if item is None:
            return False
        try:
            schema = getattr(item.entry_point.load(), "options_schema", None)
        except Exception:  # noqa: BLE001 - it does not import: building it says why
            return False
        if schema is None:
            return False
        return option in (schema() if isinstance(schema, type) else schema).fields

    def plugins(self) -> list[Any]:
        """Every plugin instance this registry built, each once."""
        built = [*self.parsers.values(), self.chunker, self.embedder, self.vector_store, self.generator,
                 self.reranker, *self._built.values()]
        unique: dict[int, Any] = {}
        for plugin in built:
            if plugin is not None:
                unique.setdefault(id(plugin), plugin)
        return list(unique.values())

    def close(self) -> None:
        """Call ``close()`` on the plugins that have one (connection pools, HTTP clients):
        when a web worker exits. A failure is logged; the others still close."""
        for plugin in self.plugins():
            close = getattr(plugin, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - exiting: report and go on
                    log.exception("closing %s failed", type(plugin).__name__)

    def ready(self, timeout: float) -> None:
        """Readiness (``GET /ready``): call the selected vector store's optional
        ``ready(timeout)``, which raises when the store cannot serve (a store without one
        counts as ready). The other kinds are not asked: an embedder or generator behind a
        paid API would be called on every probe."""
        check = getattr(self.vector_store, "ready", None)
        if callable(check):
            check(timeout)

    def installed_plugins(self, kind):
        """``installed(kind)`` from this registry's one scan of the entry points."""
        if kind not in self._installed:
            self._installed[kind] = installed(kind, self._entry_points)
        return self._installed[kind]

    def pipeline(self):
        """What a new space records: the plugins its vectors depend on."""
        return {
            "chunker": {"name": self.selection["chunker"][0]},
            "embedder": {"name": self.selection["embedder"][0], "model": self.embedder.model,
                         "dimensions": int(self.embedder.dimensions)},
            "vector_store": {"name": self.selection["vector_store"][0]},
        }

    def resolve(self, recorded) -> "Pipeline":
        """The plugins a space recorded (``pipeline()`` when it was made): the selected ones
        when they match, else the recorded ones built on demand, so a space keeps working,
        from its own vectors, after the server selects another embedder or store, until it is
        reindexed. ``Unusable`` when a recorded plugin cannot be built here (uninstalled, its
        options or key gone) or is not what was recorded (another model or dimensions)."""
        current = self.pipeline()
        parts = {}
        for part in ("chunker", "embedder", "vector_store"):
            have = recorded.get(part) or {}
            name = have.get("name")
            if all(have.get(key) == value for key, value in current[part].items()):
                parts[part] = getattr(self, part)
                continue
            overrides = {option: have[option] for option in ("model", "dimensions")
                         if part == "embedder" and have.get(option) is not None
                         and self.takes_option(part, name, option)}
            why = None
            try:
                plugin = self.plugin(part, name, **overrides) if name else None
            except PluginConfigError as exc:
                plugin, why = None, str(exc)
            if plugin is not None and part == "embedder" and (
                    plugin.model != have.get("model") or int(plugin.dimensions) != have.get("dimensions")):
                why = f"it now gives {_show({'name': name, 'model': plugin.model, 'dimensions': plugin.dimensions})}"
                plugin = None
            if plugin is None:
                raise Unusable(f"This space was created with the {label(part)} {_show(have)}, which this server "
                               f"cannot use{': ' + why if why else ''}. The server now uses {_show(current[part])}: "
                               f"reindex the space to move it there.")
            parts[part] = plugin
        return Pipeline(**parts)

    def mismatch(self, recorded):
        """Why a space recorded with ``recorded`` cannot be served here (``resolve``), or None."""
        try:
            self.resolve(recorded)
        except Unusable as exc:
            return str(exc)
        return None

    def generator_for(self, choice):
        """A space's generator: ``choice`` ``{"name", "model"?}`` from its settings, or the
        server's selected one when it has none (None if no generator is selected)."""
        if not choice:
            return self.generator
        name, model = choice.get("name"), choice.get("model")
        if model and self.takes_option("generator", name, "model"):
            return self.plugin("generator", name, model=model)
        return self.plugin("generator", name)

    def generator_problem(self, name) -> str | None:
        """Why the generator ``name`` cannot answer on this server (not installed, its
        options or key missing: its options schema refuses them), or None when it can."""
        if name not in self.installed_plugins("generator"):
            return f"The generator {name!r} is not installed."
        try:
            self.plugin("generator", name)
        except PluginConfigError as exc:
            return str(exc)
        return None

    def catalogue(self):
        """Every installed plugin per kind, with version and whether it is selected."""
        result = {}
        for kind in PROTOCOLS:
            chosen = set(self.selection[kind])
            plugins = sorted(self.installed_plugins(kind).items())
            result[kind] = [item.describe(name in chosen) for name, item in plugins]
        for entry in result["generator"]:  # a space may choose any generator that can answer here
            entry["problem"] = self.generator_problem(entry["name"])
            entry["usable"] = entry["problem"] is None
        return result


def _priority(parser) -> int:
    return int(getattr(parser, "priority", 0) or 0)


def _show(part):
    details = ", ".join(f"{k} {v}" for k, v in part.items() if k != "name")
    return f"{part.get('name')!r}" + (f" ({details})" if details else "")
