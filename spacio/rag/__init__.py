"""The RAG core: the only code that knows plugins exist.

``contracts`` is the plugin API, ``registry`` finds and builds the selected plugins,
``pipeline`` runs them (ingestion now; retrieval and answers next).
"""

from flask import current_app

from spacio.rag.registry import PluginConfigError, Registry

__all__ = ["PluginConfigError", "Registry", "init_app", "registry"]


def init_app(app):
    """Build the selected plugins once; a bad selection stops the app here."""
    host = {"database_url": app.config["SQLALCHEMY_DATABASE_URI"], "instance_path": app.instance_path}
    app.extensions["spacio.rag"] = Registry(app.config, host)


def registry(app=None) -> Registry:
    return (app or current_app).extensions["spacio.rag"]
