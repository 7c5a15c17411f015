"""The application factory: config -> extensions -> errors -> blueprints."""

import logging
import os
import re
import uuid

import sqlalchemy.exc
from flask import Flask, g, request
from sqlalchemy import event
from werkzeug.middleware.proxy_fix import ProxyFix

from spacio import config as config_module
from spacio import errors, jobs, logs, mail, metrics, rag
from spacio.jsonbody import JSONProvider
from spacio.tokens import normalize_bearer_scheme
from spacio.db import FairQueuePool, check_connections_on_checkout
from spacio.documents.uploads import UploadRequest
from spacio.extensions import api, cors, db, jwt, limiter, migrate

log = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def create_app(config=None, **overrides):
    """Build an app. ``config`` (a dict or object) and ``overrides`` win over the
    defaults and the ``SPACIO_*`` environment. Connects to nothing; the selected plugins
    are imported and validated (``spacio.rag.PluginConfigError`` if they cannot work)."""
    app = Flask("spacio", instance_path=overrides.pop("INSTANCE_PATH", None) or _env_instance_path())
    config_module.load(app, config, overrides)
    logs.init_app(app)  # once per process; a later app only sets format and level
    if app.config["PROXY_FIX_X_FOR"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=app.config["PROXY_FIX_X_FOR"], x_proto=1)

    app.request_class = UploadRequest  # bodies within their limits; per-file upload limit while it streams in
    app.json = JSONProvider(app)  # request.get_json() with spacio.jsonbody's limits
    _init_database(app)
    _init_tokens(app)
    _init_retry_after(app)  # before the limiter: its hook must run after the limiter's
    limiter.init_app(app)
    cors.init_app(
        app,
        resources={r"/api/*": {"origins": app.config["CORS_ORIGINS"]}},
        supports_credentials=True,
        allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
        expose_headers=["X-Pagination", "X-Request-ID", "Retry-After", "X-RateLimit-Limit",
                        "X-RateLimit-Remaining", "X-RateLimit-Reset"],
        max_age=600,
    )
    mail.init_app(app)
    rag.init_app(app)  # builds the selected plugins; a bad selection stops here
    jobs.init_app(app)
    api.init_app(app)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    api.spec.components.security_scheme("apiKeyAuth", {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                                       "description": "a key from POST /api/v1/api-keys"})
    app.register_error_handler(errors.SpacioError, errors.handle_spacio_error)
    app.register_error_handler(sqlalchemy.exc.TimeoutError, errors.handle_pool_timeout)
    app.register_error_handler(sqlalchemy.exc.OperationalError, errors.handle_database_unavailable)
    app.register_error_handler(sqlalchemy.exc.InterfaceError, errors.handle_database_unavailable)
    _init_request_hooks(app)

    from spacio.apikeys.routes import blp as apikeys_blp
    from spacio.auth.routes import blp as auth_blp
    from spacio.chat.routes import blp as chat_blp
    from spacio.documents.routes import blp as documents_blp
    from spacio.invites.routes import blp as invites_blp
    from spacio.ops import blp as ops_blp
    from spacio.rag.routes import blp as plugins_blp
    from spacio.spaces.routes import blp as spaces_blp
    from spacio.usage.routes import blp as usage_blp

    for blp in (auth_blp, apikeys_blp, spaces_blp, invites_blp, documents_blp, chat_blp, usage_blp, plugins_blp):
        api.register_blueprint(blp)
    app.register_blueprint(ops_blp)

    from spacio.cli import spacio_cli

    app.cli.add_command(spacio_cli)
    return app


def _env_instance_path():
    return os.environ.get("SPACIO_INSTANCE_PATH") or None


def _init_database(app):
    # models must be imported before Alembic or create_all look at the metadata
    from spacio import models  # noqa: F401

    if not config_module.is_embedded(app):  # a server's pool: waiting checkouts are served in turn
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"poolclass": FairQueuePool,
                                                   **app.config["SQLALCHEMY_ENGINE_OPTIONS"]}
    db.init_app(app)
    migrate.init_app(app, db, directory=app.config.get("MIGRATIONS_DIRECTORY") or _migrations_dir(),
                     compare_type=True, render_as_batch=True)
    @app.teardown_appcontext  # runs before Flask-SQLAlchemy's own (teardowns run in reverse)
    def _end_session(_exc):
        """Give the session back; if the server died under it, the rollback of a dead
        connection raises here, outside any handler (gunicorn would answer its own 500):
        drop the session's connections instead, pre-ping replaces them."""
        try:
            db.session.remove()
        except sqlalchemy.exc.DBAPIError:
            log.warning("closing a session on a dead database connection", exc_info=True)
            db.session.registry().invalidate()
            db.session.registry.clear()

    with app.app_context():
        engine = db.engine
    if engine.dialect.driver == "psycopg" and not app.config["SQLALCHEMY_ENGINE_OPTIONS"].get("pool_pre_ping"):
        check_connections_on_checkout(engine)  # pool_pre_ping without its round trip

    if config_module.is_embedded(app):
        busy_ms = int(app.config["SQLITE_BUSY_TIMEOUT_MS"])

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            # WAL's recommended sync level: a commit no longer waits for an fsync (the WAL is
            # synced at checkpoints), the file is never corrupted, and only a power cut can
            # lose the last commits. Ingestion commits 3 times a document: 5 ms each with FULL.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")  # ON DELETE CASCADE, as on Postgres
            cursor.close()


def _migrations_dir():
    """The project's top-level migrations/ (next to the package in a checkout)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def _init_tokens(app):
    from spacio.auth.services import session_user

    # tokens are read from the Authorization header only, never a cookie: no CSRF claim (the
    # library's default adds a random one, and a replayed refresh re-mints its pair identically)
    app.config["JWT_COOKIE_CSRF_PROTECT"] = False
    jwt.init_app(app)
    errors.init_jwt_errors(jwt)

    # flask-jwt-extended calls the blocklist check, then the user lookup, for every verified
    # token: the first loads the session with its user (one query), the second hands that
    # user on (kept in g, so for this request only)
    @jwt.token_in_blocklist_loader
    def _revoked(_header, payload):
        g.token_user = session_user(payload)
        return g.token_user is None

    @jwt.user_lookup_loader
    def _user(_header, _payload):
        return g.pop("token_user", None)  # None (no check ran): 401, never another user


def _init_retry_after(app):
    """flask-limiter puts ``Retry-After`` (its window's reset) on every response of a rate-limited
    route, and raises a 503's own (an upstream's ``retry_after``) to it. The header means "wait
    this long" only on a 429 (the limiter's) and where the app set it (a 503): keep those only.
    Registered before the limiter, so it runs after the limiter's hook (Flask runs
    ``after_request`` hooks in reverse)."""

    @app.after_request
    def _retry_after(response):
        if response.status_code != 429:
            own = g.pop("retry_after", None)
            if own is None:
                response.headers.pop("Retry-After", None)
            else:
                response.headers["Retry-After"] = own
        return response


def _init_request_hooks(app):
    json_max = app.config["JSON_MAX_BYTES"]

    @app.before_request
    def _before():
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        logs.request_started()
        normalize_bearer_scheme(request.environ)
        if request.mimetype != "multipart/form-data":
            request.max_content_length = json_max  # only uploads may be large

    @app.after_request
    def _after(response):
        g.retry_after = response.headers.get("Retry-After")  # before flask-limiter's hook changes it
        response.headers["X-Request-ID"] = g.get("request_id") or uuid.uuid4().hex
        seconds, route = logs.request_finished(response)  # the access line
        metrics.observe_request(request.method, route, response.status_code, seconds)
        return response
