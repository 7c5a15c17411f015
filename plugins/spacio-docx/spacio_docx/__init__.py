"""DOCX parser for Spacio: WordprocessingML read directly, zip and XML handled defensively."""

from spacio_docx.parser import DocxOptionsSchema, DocxParser

__all__ = ["DocxParser", "DocxOptionsSchema"]
