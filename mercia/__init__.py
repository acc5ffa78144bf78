"""Mercia: an open-source clinical research data platform for an NHS region."""

__version__ = "0.1.0"
