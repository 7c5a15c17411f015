"""Spacio: collaborative knowledge spaces with retrieval-augmented generation."""

from spacio.app import create_app

__all__ = ["create_app"]
