"""Configuration: embedded defaults, then ``SPACIO_*`` environment variables.

Every key below can be set as ``SPACIO_<KEY>``; values are parsed as JSON when they
look like JSON (numbers, booleans, lists), and ``__`` nests (``SPACIO_A__B=1`` sets
``config["A"]["B"]``). The defaults run everything in one process with no services:
SQLite under ``instance/``, in-memory rate limits, mail written to an outbox table.
"""

import os
import secrets
from urllib.parse import urlsplit

MIB = 1024 * 1024


class Defaults:
    # database: SQLite under the instance folder unless a URI is given
    SQLALCHEMY_DATABASE_URI = None
    # PostgreSQL: every checkout from the pool is checked without a round trip
    # (spacio.db.connection_alive); {"pool_pre_ping": true} adds SQLAlchemy's SELECT 1 instead
    SQLALCHEMY_ENGINE_OPTIONS = {}
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    SQLITE_BUSY_TIMEOUT_MS = 10_000

    # Redis: rate-limit storage now; broker and chat memory later. None = in-process.
    REDIS_URL = None

    # tokens
    JWT_SECRET_KEY = None  # embedded default: generated once into instance/jwt-secret
    JWT_ACCESS_TOKEN_EXPIRES = 15 * 60  # seconds
    JWT_REFRESH_TOKEN_EXPIRES = 30 * 24 * 3600
    # a spent refresh token presented again this soon after its rotation (a second tab, a retry
    # whose answer was lost) gets the pair that rotation issued; later, it revokes the session
    JWT_REFRESH_REUSE_GRACE_S = 20
    PASSWORD_RESET_EXPIRES_MINUTES = 60
    INVITE_EXPIRES_HOURS = 72

    # passwords: argon2id (argon2-cffi's RFC 9106 low-memory profile) + zxcvbn strength
    PASSWORD_MIN_LENGTH = 8
    PASSWORD_MIN_SCORE = 3  # zxcvbn score 0..4
    ARGON2_TIME_COST = 3
    ARGON2_MEMORY_COST = 64 * 1024  # KiB
    ARGON2_PARALLELISM = 4

    # the frontend: links in mails, default CORS origin
    FRONTEND_URL = "http://localhost:3000"
    CORS_ORIGINS = None  # list or comma-separated string; default: FRONTEND_URL's origin

    # mail: empty = outbox table + log; smtp://user:pass@host:port or smtps://...
    MAIL_URL = None
    MAIL_FROM = "Spacio <no-reply@localhost>"
    MAIL_TIMEOUT = 10
    MAIL_TLS_CA_FILE = None  # CA bundle for a server with a private CA; default: the system's

    # rate limits (flask-limiter strings); storage is REDIS_URL when set
    RATELIMIT_ENABLED = True
    RATELIMIT_HEADERS_ENABLED = True
    RATELIMIT_SWALLOW_ERRORS = True
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    RATELIMIT_KEY_PREFIX = "spacio"
    RATELIMIT_STRATEGY = "moving-window"  # exact: no double burst at a window's edge
    LOGIN_RATE_LIMIT = "10 per minute;100 per hour"  # per client address and per email
    REGISTER_RATE_LIMIT = "20 per hour"  # per client address
    PASSWORD_RESET_RATE_LIMIT = "5 per minute;20 per hour"  # per client address and per email
    INVITE_ACCEPT_RATE_LIMIT = "20 per minute"  # per client address and per user: token guessing
    INVITE_RATE_LIMIT = "60 per hour"  # invite requests per user (each up to 50 emails)
    # every authenticated request, per principal: a user (all their JWT sessions together) or one
    # API key (each key its own budget); a frontend polling a document once a second uses 60
    API_RATE_LIMIT = "600 per minute"
    UPLOAD_RATE_LIMIT = "30 per minute;300 per hour"  # upload requests per principal, on top of API_RATE_LIMIT
    API_KEYS_MAX_PER_USER = 20  # API keys a user may hold at once (each has its own API_RATE_LIMIT)
    # trusted reverse proxies in front of the app (X-Forwarded-For hops), 0 = none
    PROXY_FIX_X_FOR = 0

    # request size: uploads may be large, JSON bodies may not
    MAX_CONTENT_LENGTH = 100 * MIB
    JSON_MAX_BYTES = 1 * MIB

    # plugins: entry-point names (spacio.rag.registry); options per plugin as
    # SPACIO_PLUGINS__<KIND>__<NAME>__<OPTION>. PARSERS None = every installed parser.
    PARSERS = None
    CHUNKER = "recursive"
    EMBEDDER = "local"
    VECTOR_STORE = None  # default: local on SQLite, pgvector on PostgreSQL
    GENERATOR = "extractive"
    RERANKER = None

    # documents and ingestion
    UPLOAD_MAX_FILE_BYTES = 25 * MIB  # per file, enforced while the upload streams in
    UPLOAD_MAX_FILES = 20  # files per request
    MAX_PAGES = 500  # longer documents fail with too_many_pages
    CHUNK_SIZE = 256  # tokens of the embedder's tokenizer; a space's settings may override
    CHUNK_OVERLAP = 32
    EMBED_BATCH_SIZE = 64  # texts per call to the embedder (capped by its max_batch_size)
    INGEST_MAX_RETRIES = 4  # transient failures (a service down) are retried with backoff
    INGEST_MIN_BACKOFF_MS = 2_000
    INGEST_MAX_BACKOFF_MS = 120_000
    INGEST_TIME_LIMIT_MS = 30 * 60_000
    # embedded default: ingestion threads inside the web process. 2 overlap one document's
    # database work with another's embedding (bench/ingest.py: 14.5 docs/s, 12.4 with 1)
    INGEST_INPROCESS_THREADS = 2
    # Redis broker: a killed worker's messages come back after the heartbeat timeout once a
    # maintenance pass runs; Dramatiq's defaults (60 s, 0.1 % per fetch) take minutes
    BROKER_HEARTBEAT_TIMEOUT_MS = 10_000
    BROKER_MAINTENANCE_CHANCE = 200_000  # out of 1,000,000 fetches

    # answers
    SEARCH_TOP_K = 10  # hits /search and answers use when the request (or the space) sets none
    # grounded: the question's best cosine to a chunk reaches this. None: the threshold the
    # space's embedder declares (grounded_min_similarity, calibrated by bench/quality.py
    # --calibrate; each embedder has its own cosine scale)
    GROUNDED_MIN_SIMILARITY = None
    GROUNDED_MIN_KEYWORD_COVERAGE = 0.55  # mode=keyword (no embedding): share of the question's words in a hit
    # the prompt (spacio/rag/answering.py): passages in rank order while their estimated tokens
    # (spacio.rag.prompts.estimate_tokens) fit; the generator's answer length limit
    ANSWER_CONTEXT_TOKENS = 3000
    ANSWER_MAX_TOKENS = 1024
    # hybrid search (spacio/rag/retrieval.py; tuned on SciFact train with bench/quality.py --tune)
    SEARCH_CANDIDATES = 100  # hits the vector and the keyword search each contribute (at least top_k)
    SEARCH_FUSION = "convex"  # "convex": weighted sum of min-max normalised scores; "rrf": reciprocal ranks
    SEARCH_VECTOR_WEIGHT = 0.4  # the vector list's weight; the keyword list's is 1 - this
    SEARCH_DOCUMENT_WEIGHT = 0.5  # share of a chunk's score from its document's best chunk in each list
    SEARCH_RRF_K = 60  # "rrf" only
    RERANK_CANDIDATES = 50  # fused hits a reranker (SPACIO_RERANKER) reorders
    ASK_RATE_LIMIT = "120 per minute"  # /query and /chat calls per user (each may call a paid generator)
    CHAT_HISTORY_TURNS = 6  # last messages of a conversation (questions and answers) a chat's prompt carries
    CHAT_MEMORY_TTL_S = 24 * 3600  # Redis keeps a conversation's last messages this long after its last turn
    CHAT_MEMORY_TIMEOUT_S = 0.2  # Redis socket timeouts of the chat memory; slower = read the database
    CHAT_MEMORY_RETRY_S = 10  # after a Redis error the chat memory reads the database for this long

    # operations: logs, readiness, metrics
    # log lines: "json" (one object per line) or "text"; None: text on a terminal (make run),
    # json otherwise (the Procfile's processes on a platform, whose log collectors parse JSON)
    LOG_FORMAT = None
    LOG_LEVEL = "INFO"  # root log level; DEBUG also logs the requests to /health, /ready and /metrics
    READY_TIMEOUT_S = 2.0  # GET /ready: each check (database, Redis, vector store) gets this long
    METRICS_TOKEN = None  # GET /metrics needs "Authorization: Bearer <token>" when set; open when unset

    # OpenAPI: spec at /api/v1/openapi.json, Swagger UI at /docs, ReDoc at /redoc, all local
    API_TITLE = "Spacio"
    API_VERSION = "v1"
    API_SPEC_OPTIONS = {
        "info": {
            "description": (
                "Collaborative knowledge spaces. Log in with `POST /api/v1/auth/login` and send the "
                "access token as `Authorization: Bearer <token>`, or an API key (`POST /api/v1/api-keys`, one "
                "space) as `X-API-Key: <key>`. Lists are paginated with `page` and "
                "`page_size`; the `X-Pagination` header carries the totals. Every error has one body: "
                "`{code, status, message, reason, errors}`; switch on `reason`."
            )
        }
    }
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "api/v1/openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "docs"
    OPENAPI_SWAGGER_UI_URL = "/docs/assets/"
    OPENAPI_REDOC_PATH = "redoc"
    OPENAPI_REDOC_URL = "/static/redoc/redoc.standalone.js"
    # validatorUrl None: Swagger UI would otherwise send the spec's URL to an online validator
    OPENAPI_SWAGGER_UI_CONFIG = {"persistAuthorization": True, "validatorUrl": None}


def load(app, config=None, overrides=None):
    """Fill ``app.config``: defaults, then SPACIO_* env, then ``config``, then overrides."""
    app.config.from_object(Defaults)
    app.config.from_prefixed_env("SPACIO")
    if config is not None:
        if isinstance(config, dict):
            app.config.update(config)
        else:
            app.config.from_object(config)
    app.config.update(overrides or {})
    _derive(app)


def _derive(app):
    cfg = app.config
    if not cfg["SQLALCHEMY_DATABASE_URI"]:
        os.makedirs(app.instance_path, exist_ok=True)
        cfg["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "spacio.db")
    cfg["SQLALCHEMY_DATABASE_URI"] = _normalise_db_uri(cfg["SQLALCHEMY_DATABASE_URI"])
    if cfg["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # pool_pre_ping is pointless for a file, and SQLite's pool takes no size options
        cfg["SQLALCHEMY_ENGINE_OPTIONS"] = {
            k: v for k, v in cfg["SQLALCHEMY_ENGINE_OPTIONS"].items() if k != "pool_pre_ping"
        }
    if not cfg["JWT_SECRET_KEY"]:
        if not is_embedded(app):
            raise RuntimeError(
                "SPACIO_JWT_SECRET_KEY must be set when the database is not the embedded SQLite: "
                "every web worker must sign tokens with the same secret."
            )
        cfg["JWT_SECRET_KEY"] = _instance_secret(app.instance_path)
    if len(cfg["JWT_SECRET_KEY"]) < 32:
        raise RuntimeError("SPACIO_JWT_SECRET_KEY must be at least 32 characters long.")
    cfg["CORS_ORIGINS"] = cors_origins(cfg)
    if not cfg["VECTOR_STORE"]:
        cfg["VECTOR_STORE"] = "local" if is_embedded(app) else "pgvector"
    cfg["RATELIMIT_STORAGE_URI"] = cfg.get("RATELIMIT_STORAGE_URI") or cfg["REDIS_URL"] or "memory://"
    cfg["FRONTEND_URL"] = cfg["FRONTEND_URL"].rstrip("/")


def is_embedded(app):
    return app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite")


def _normalise_db_uri(uri):
    # PaaS providers hand out postgres:// URLs; psycopg 3 is the driver we ship
    for prefix in ("postgres://", "postgresql://"):
        if uri.startswith(prefix):
            return "postgresql+psycopg://" + uri[len(prefix):]
    return uri


def cors_origins(cfg):
    origins = cfg.get("CORS_ORIGINS")
    if not origins:
        parts = urlsplit(cfg["FRONTEND_URL"])
        return [f"{parts.scheme}://{parts.netloc}"]
    if isinstance(origins, str):
        origins = origins.split(",")
    return [o.strip().rstrip("/") for o in origins if o.strip()]


def _instance_secret(instance_path):
    """Read the embedded default's JWT secret, creating it once (mode 0600) if missing.

    Written to a temporary file and hard-linked into place, so two processes starting
    at once agree on one secret and never read a half-written file.
    """
    os.makedirs(instance_path, exist_ok=True)
    path = os.path.join(instance_path, "jwt-secret")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(48))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path, encoding="ascii") as f:
        return f.read().strip()
