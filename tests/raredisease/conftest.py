"""Fixtures for the rare-disease tests: one knowledge base and ranker per session (loading is ~1 s)."""

from __future__ import annotations

import pytest

from mercia.raredisease.kb import default_kb
from mercia.raredisease.ranker import Ranker


@pytest.fixture(scope="session")
def kb():
    return default_kb()


@pytest.fixture(scope="session")
def ranker(kb):
    return Ranker(kb)


@pytest.fixture(scope="session")
def examples(shared_data):
    folder = shared_data / "phenopackets" / "examples"
    files = sorted(folder.glob("*.json"))
    assert files, f"no phenopacket examples in {folder}"
    return files


@pytest.fixture(scope="session")
def write_release():
    """Writes a tiny HPO release (three terms, one obsolete; one annotation) into a folder."""
    return _write_release


def _write_release(folder, frequency="1/2"):
    obo = folder / "hp.obo"
    obo.write_text(
        "format-version: 1.2\ndata-version: hp/releases/2030-01-01\n\n"
        "[Term]\nid: HP:0000001\nname: All\n\n"
        "[Term]\nid: HP:0000118\nname: Phenotypic abnormality\nis_a: HP:0000001\n\n"
        "[Term]\nid: HP:0000002\nname: Thing\nsynonym: \"Widget\" EXACT []\nis_a: HP:0000118\n\n"
        "[Term]\nid: HP:0000003\nname: Old thing\nis_obsolete: true\nreplaced_by: HP:0000002\n")
    hpoa = folder / "phenotype.hpoa"
    header = ("database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\t"
              "modifier\taspect\tbiocuration")
    hpoa.write_text(f"#version: 2030-01-01\n{header}\n"
                    f"OMIM:1\tOne\t\tHP:0000003\tPMID:1\tPCS\t\t{frequency}\t\t\tP\tx\n")
    return obo, hpoa
