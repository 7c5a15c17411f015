"""PDF parser for Spacio, on pypdf (pure Python)."""

from spacio_pdf.parser import PdfOptionsSchema, PdfParser

__all__ = ["PdfParser", "PdfOptionsSchema"]
