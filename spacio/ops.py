"""Operational endpoints outside /api/v1: liveness, and the docs' local assets."""

from flask import Blueprint, send_from_directory
from swagger_ui_bundle import swagger_ui_path

blp = Blueprint("ops", __name__)


@blp.get("/health")
def health():
    """Liveness: the process answers."""
    return {"status": "ok"}


@blp.get("/docs/assets/<path:filename>")
def swagger_assets(filename):
    """Swagger UI's files, served from the installed package (no CDN)."""
    return send_from_directory(swagger_ui_path, filename, max_age=86400)
