"""Concept search for the API and the web page, over ``mercia.vocab.search``."""

from __future__ import annotations

from typing import Any

from mercia.cdm import Store


def find_concepts(store: Store, text: str, *, domain: str | None = None, vocabulary: str | None = None,
                  standard_only: bool = False, limit: int = 20) -> list[dict[str, Any]]:
    """Best matches first; a domain filter is applied to a wider candidate list from vocab's ranking."""
    from mercia.vocab.search import search

    hits = search(store, text, vocabulary=vocabulary, standard_only=standard_only,
                  limit=limit if not domain else max(200, limit))
    if domain:
        hits = [h for h in hits if (h.get("domain_id") or "").lower() == domain.lower()]
    return hits[:limit]
