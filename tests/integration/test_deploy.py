"""The deploy files against the code: docker-compose.yml (services, health checks, the
Procfile's commands, only environment names the app reads) and the README's tables of
environment variables (both ways: every setting documented, nothing documented that the
code does not read).

``python -m tests.integration.test_deploy`` prints README table rows for the settings the
README misses (default and comment taken from ``spacio/config.py``)."""

import ast
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from spacio.config import Defaults

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"
PROCESS_FILES = [ROOT / "gunicorn.conf.py", ROOT / "wsgi.py"]
# framework plumbing a deployer never sets (as tests/unit/test_config.py; flask-smorest's API_*
# keys by name, because API_RATE_LIMIT and API_KEYS_MAX_PER_USER are real settings)
INTERNAL = {"SQLALCHEMY_TRACK_MODIFICATIONS", "RATELIMIT_HEADERS_ENABLED", "RATELIMIT_SWALLOW_ERRORS",
            "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", "API_TITLE", "API_VERSION", "API_SPEC_OPTIONS"}
# read by the code outside Defaults (spacio/app.py: the instance folder is needed before config loads)
READ_OUTSIDE_DEFAULTS = {"INSTANCE_PATH"}
ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


# --------------------------------------------------------------------------- what the code reads

def settings():
    """Every documentable ``Defaults`` key."""
    return {k for k in vars(Defaults) if k.isupper() and k not in INTERNAL and not k.startswith("OPENAPI_")}


def procfile():
    lines = [line.split(":", 1) for line in PROCFILE.read_text().splitlines() if line.strip()]
    return {name.strip(): command.strip() for name, command in lines}


def process_env_names():
    """Environment names gunicorn.conf.py and wsgi.py read, and the Procfile expands."""
    names = set()
    for path in PROCESS_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            # os.environ.get("X", ...), os.environ["X"], os.getenv("X")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in ("get", "getenv") and node.args:
                target = node.func.value if node.func.attr == "get" else None
                if node.func.attr == "getenv" or getattr(target, "attr", None) == "environ":
                    if isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                        names.add(node.args[0].value)
            if isinstance(node, ast.Subscript) and getattr(node.value, "attr", None) == "environ":
                if isinstance(node.slice, ast.Constant):
                    names.add(node.slice.value)
    for command in procfile().values():
        names |= set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", command))
    return names


def plugin_option_exists(env_name):
    """``SPACIO_PLUGINS__<KIND>__<NAME>__<OPTION>`` names an installed plugin's real option."""
    registry = importlib.import_module("spacio.rag.registry")
    parts = env_name.removeprefix("SPACIO_PLUGINS__").lower().split("__")
    if len(parts) != 3:
        return False
    kind, name, option = parts
    if kind not in registry.PROTOCOLS:
        return False
    item = registry.installed(kind).get(name)
    if item is None:
        return False
    schema = getattr(item.entry_point.load(), "options_schema", None)
    fields = (schema() if isinstance(schema, type) else schema).fields if schema is not None else {}
    return option in fields


# --------------------------------------------------------------------------- what the README says

def readme_tables():
    """{first-column variable names} of every README table row, expanding the
    "`SPACIO_ARGON2_TIME_COST`, `_MEMORY_COST`" sibling style."""
    names = set()
    for line in README.read_text().splitlines():
        if not line.startswith("|"):
            continue
        first = line.split("|")[1]
        previous_prefix = None
        for token in re.findall(r"`([A-Z_][A-Z0-9_<>]*)`", first):
            if token.startswith("_") and previous_prefix:
                names.add(previous_prefix + token)
            elif "<" not in token:
                names.add(token)
                head = re.match(r"(SPACIO_[A-Z0-9]+|[A-Z0-9]+)_", token)
                previous_prefix = head.group(1) if head else None
    return names


def documented_settings():
    return {n.removeprefix("SPACIO_") for n in readme_tables() if n.startswith("SPACIO_")}


def documented_process_vars():
    return {n for n in readme_tables() if not n.startswith("SPACIO_")}


def comments_of_config():
    """{KEY: (default source, comment)} from spacio/config.py's Defaults."""
    source = (ROOT / "spacio" / "config.py").read_text().splitlines()
    out, pending = {}, []
    for line in source:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s{4}([A-Z][A-Z0-9_]*)\s*=\s*(.+?)(?:\s+#\s*(.*))?$", line)
        if match:
            key, default, comment = match.groups()
            out[key] = (default, comment or " ".join(pending))
        if not stripped or match:
            pending = []
    return out


def missing_rows(keys):
    """README rows for ``keys``, to paste into the Configuration table."""
    comments = comments_of_config()
    rows = []
    for key in sorted(keys):
        default, comment = comments.get(key, (repr(getattr(Defaults, key, None)), ""))
        value = getattr(Defaults, key, None)
        shown = "none" if value is None else json.dumps(value) if not isinstance(value, str) else value
        rows.append(f"| `SPACIO_{key}` | `{shown}` | {comment or 'TODO: what it does'} |")
    return rows


# --------------------------------------------------------------------------- README

def test_the_readme_documents_every_setting_and_nothing_else():
    documented = documented_settings()
    missing = sorted(settings() - documented)
    extra = sorted(documented - settings() - READ_OUTSIDE_DEFAULTS - {"PLUGINS"})
    assert not missing and not extra, (
        f"README tables vs spacio/config.py Defaults: missing {missing}, documented but not read {extra}.\n"
        "Rows for the missing ones (python -m tests.integration.test_deploy):\n" + "\n".join(missing_rows(missing)))


def test_the_readme_documents_the_process_variables_both_ways():
    read = {n for n in process_env_names() if not n.startswith("SPACIO_")}
    documented = documented_process_vars()
    missing, extra = sorted(read - documented), sorted(documented - read)
    assert not missing and not extra, (f"README process variables vs gunicorn.conf.py/wsgi.py/Procfile: "
                                       f"missing {missing}, documented but not read {extra}")


def test_spacio_names_the_process_files_read_are_settings():
    names = {n.removeprefix("SPACIO_") for n in process_env_names() if n.startswith("SPACIO_")}
    unknown = sorted(names - set(vars(Defaults)) - READ_OUTSIDE_DEFAULTS)
    assert not unknown, f"gunicorn.conf.py/wsgi.py read SPACIO_ names that are no Defaults key: {unknown}"


def test_the_readme_section_lists_the_procfile():
    text = README.read_text()
    deploy = text[text.index("## Deploy"):]
    for name, command in procfile().items():
        assert f"| `{name}` |" in deploy, name
        assert command.split("${")[0].split(" --")[0].strip() in deploy, command


# --------------------------------------------------------------------------- Procfile and gunicorn

def test_the_procfile_has_web_worker_and_release():
    processes = procfile()
    assert set(processes) == {"web", "worker", "release"}
    assert processes["web"] == "gunicorn -c gunicorn.conf.py wsgi:app"
    assert re.fullmatch(r"dramatiq tasks --processes \$\{DRAMATIQ_PROCESSES:-\d+\} "
                        r"--threads \$\{DRAMATIQ_THREADS:-\d+\}", processes["worker"])
    assert processes["release"] == "flask --app wsgi db upgrade"


def test_gunicorn_conf_reads_its_settings_from_the_environment(monkeypatch):
    import runpy

    from gunicorn.workers.ggevent import GeventWorker

    for name, value in {"PORT": "9123", "WEB_CONCURRENCY": "3", "GUNICORN_WORKER_CONNECTIONS": "77",
                        "GUNICORN_TIMEOUT": "11", "GUNICORN_GRACEFUL_TIMEOUT": "12", "GUNICORN_KEEPALIVE": "2",
                        "GUNICORN_LIMIT_REQUEST_LINE": "2048", "GUNICORN_LIMIT_REQUEST_FIELDS": "50",
                        "GUNICORN_LIMIT_REQUEST_FIELD_SIZE": "4096",
                        "SPACIO_SQLALCHEMY_DATABASE_URI": "postgresql://x/y", "GUNICORN_BIND": ""}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-metrics-dir")  # not created at import
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert issubclass(conf["worker_class"], GeventWorker)
    assert (conf["bind"], conf["workers"], conf["worker_connections"]) == ("0.0.0.0:9123", 3, 77)
    assert (conf["timeout"], conf["graceful_timeout"], conf["keepalive"]) == (11, 12, 2)
    assert (conf["limit_request_line"], conf["limit_request_fields"], conf["limit_request_field_size"]) == (
        2048, 50, 4096)
    monkeypatch.setenv("SPACIO_SQLALCHEMY_DATABASE_URI", "")
    assert runpy.run_path(str(ROOT / "gunicorn.conf.py"))["workers"] == 1  # embedded SQLite: one process


# --------------------------------------------------------------------------- docker-compose.yml

@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def shell_command(service):
    """A service's command as the shell line it runs (compose's ``$$`` is a literal ``$``)."""
    command = service["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    command = words[2] if words[:2] == ["sh", "-c"] else shlex.join(words)
    return " ".join(command.replace("$$", "$").split())


def test_the_services_exist_with_health_checks_and_volumes(compose):
    services = compose["services"]
    assert {"postgres", "redis", "weaviate", "release", "web", "worker"} <= set(services)
    assert "pgvector" in services["postgres"]["image"]
    for name in ("postgres", "redis", "weaviate", "web"):  # long-running and probeable
        check = services[name].get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
    assert "/ready" in " ".join(services["web"]["healthcheck"]["test"])  # database, Redis and store
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("redis", "/data"), ("weaviate", "/var/lib/weaviate")):
        volume = next(v for v in services[name]["volumes"] if v.endswith(":" + path))
        assert volume.split(":")[0] in compose["volumes"], f"{name}'s data is not on a named volume"


def test_web_and_worker_run_the_procfile_commands_after_the_release(compose):
    services, processes = compose["services"], procfile()
    assert shell_command(services["web"]) == processes["web"]
    assert shell_command(services["worker"]) == processes["worker"]
    assert shell_command(services["release"]).endswith("&& " + processes["release"])
    for name in ("web", "worker"):
        depends = services[name]["depends_on"]
        assert depends["release"]["condition"] == "service_completed_successfully"
        for service in ("postgres", "redis"):
            assert depends[service]["condition"] == "service_healthy"
        assert services[name].get("restart") in ("always", "unless-stopped", "on-failure")
    assert services["release"].get("restart") in (None, "no")


def test_the_web_gets_time_for_a_graceful_shutdown(compose):
    grace = compose["services"]["web"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > 30  # GUNICORN_GRACEFUL_TIMEOUT's default


def test_every_spacio_name_in_compose_is_read_by_the_app(compose):
    names = set()
    for name in ("release", "web", "worker"):  # the app's processes (the others are images' own settings)
        env = compose["services"][name].get("environment") or {}
        names |= set(env if isinstance(env, dict) else (e.split("=", 1)[0] for e in env))
    names |= set(re.findall(r"\$\{?(SPACIO_[A-Z0-9_]+)", COMPOSE.read_text()))
    spacio = {n for n in names if n.startswith("SPACIO_")}
    assert {"SPACIO_SQLALCHEMY_DATABASE_URI", "SPACIO_REDIS_URL", "SPACIO_JWT_SECRET_KEY"} <= spacio
    unknown = sorted(n for n in spacio if not n.startswith("SPACIO_PLUGINS__")
                     and n.removeprefix("SPACIO_") not in set(vars(Defaults)) | READ_OUTSIDE_DEFAULTS)
    bad_options = sorted(n for n in spacio if n.startswith("SPACIO_PLUGINS__") and not plugin_option_exists(n))
    assert not unknown and not bad_options, f"not read by the app: {unknown}; no such plugin option: {bad_options}"
    others = {n for n in names if not n.startswith("SPACIO_")} - {"PATH"}
    assert others <= process_env_names(), f"compose sets variables nothing reads: {others - process_env_names()}"


if __name__ == "__main__":
    missing = sorted(settings() - documented_settings())
    print("\n".join(missing_rows(missing)) if missing else "README documents every setting.")
