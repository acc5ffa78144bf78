"""Concept search for the API and the web page, over ``mercia.vocab.concepts``."""

from __future__ import annotations

from typing import Any

from mercia.cdm import Store

CANDIDATES = 200  # matches ranked by use, domain-filtered, before the best ``limit`` are kept


def find_concepts(store: Store, text: str, *, domain: str | None = None, vocabulary: str | None = None,
                  standard_only: bool = False, limit: int = 20) -> list[dict[str, Any]]:
    """Best matches first: how well the text matches (vocab's ranking: exact, prefix, word...), then
    standard concepts, then the most used (records in the store, as ATLAS sorts by record count), then
    vocab's order (shorter names first).  The counts only order the list; they are not shown."""
    from mercia.vocab.concepts import MATCH_RANKS, search
    from mercia.vocab.usage import record_counts

    hits = search(store, text, vocabulary=vocabulary, standard_only=standard_only, limit=max(CANDIDATES, limit))
    if domain:
        hits = [h for h in hits if (h.get("domain_id") or "").lower() == domain.lower()]
    used = record_counts(store, [h["concept_id"] for h in hits])
    hits.sort(key=lambda h: (MATCH_RANKS.index(h["match"]), h["standard_concept"] != "S",
                             -used.get(h["concept_id"], (0, 0))[0]))
    return hits[:limit]
