"""How easy a lay summary is to read, so the people writing one for the public register can see it.

Scores come from ``textstat`` (Flesch reading ease and Flesch-Kincaid grade, Flesch 1948 and
Kincaid et al. 1975).  A UK reading age is the US school grade plus five years.  Flesch called a
reading ease of 60 or more "plain English"; a lay summary below it is flagged as hard to read.
"""

from __future__ import annotations

from typing import Any

import textstat

PLAIN_ENGLISH_EASE = 60.0


def readability(text: str) -> dict[str, Any] | None:
    """Reading ease (0-100, higher is easier), reading age in years (5-21), and whether it is
    plain English; None for empty text."""
    if not text.strip():
        return None
    ease = min(100.0, max(0.0, float(textstat.flesch_reading_ease(text))))
    age = min(21, max(5, round(float(textstat.flesch_kincaid_grade(text)) + 5)))
    return {"reading_ease": round(ease, 1), "reading_age": age, "plain_english": ease >= PLAIN_ENGLISH_EASE}
