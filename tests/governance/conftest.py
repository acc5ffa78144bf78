"""Shared governance fixtures: a Governance on each engine, a password that passes the NCSC rules and a
project end date a year ahead."""

from datetime import date, timedelta

import pytest

from mercia.governance import Governance

PW = "correct horse battery"
FUTURE = (date.today() + timedelta(days=365)).isoformat()
# What submission needs for the public register, beside purpose, domains and end date.
PUBLIC_TEXT = {"lay_summary": "We will look at health records with names removed to learn how to improve care.",
               "purpose_category": "research", "lead_organisation": "University of the Midlands"}


@pytest.fixture
def gov(store):
    return Governance(store)
