"""A person's registered practice (``person.care_site_id``) is the practice of their latest GP registration,
as loaded through the front door: trials take a person's site from it (mercia.trials.eligibility)."""

from __future__ import annotations

import json

import pyarrow as pa

from mercia.trials.eligibility import PERSON_SITE

OLD_GP, NEW_GP, TRUST = "M90001", "M90002", "R9A"
MOVER, STAYER, INPATIENT = "9912003888", "9449307539", "9434765919"


def patient(pid: str, nhs: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "birthDate": "1970-01-01", "gender": "female",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}


def registration(pid: str, start: str, end: str | None = None) -> dict:
    period = {"start": start} | ({"end": end} if end else {})
    return {"resourceType": "EpisodeOfCare", "id": f"reg-{pid}-{start}", "status": "finished" if end else "active",
            "patient": {"reference": f"Patient/{pid}"}, "period": period}


def practice(ods: str) -> dict:
    return {"resourceType": "Organization", "id": f"org-{ods}", "name": f"Practice {ods}",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}]}


def extract(tmp_path, name: str, resources: list[dict]):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    (folder / "all.ndjson").write_text("\n".join(json.dumps(r) for r in resources) + "\n")
    return folder


def sites(store) -> dict[str, str]:
    """A person (``person_source_value``: their NHS pseudonym's first 50 characters) -> the ODS code of their
    registered practice."""
    return {pseudonym: site for pseudonym, site in store.query(
        f"SELECT p.person_source_value, ps.site FROM person p JOIN ({PERSON_SITE}) ps USING (person_id)")}


def test_the_registered_practice_is_the_latest_registration_s_and_each_practice_is_one_site(store, load, options,
                                                                                            tmp_path):
    # the new practice is named by an Organization resource (a trust's extract) before it sends its own extract
    load(store, "fhir", extract(tmp_path, "trust", [practice(NEW_GP), patient("i", INPATIENT)]), TRUST)
    load(store, "fhir", extract(tmp_path, "old", [
        patient("m", MOVER), registration("m", "2010-01-01", "2019-06-30"),
        patient("s", STAYER), registration("s", "2015-01-01")]), OLD_GP)
    pseudonym = {nhs: p[:50] for nhs, p in zip((MOVER, STAYER, INPATIENT), options.pseudonymiser.nhs_pseudonyms(
        pa.array([MOVER, STAYER, INPATIENT])).to_pylist())}
    assert sites(store) == {pseudonym[MOVER]: OLD_GP, pseudonym[STAYER]: OLD_GP}

    load(store, "fhir", extract(tmp_path, "new", [patient("m2", MOVER), registration("m2", "2019-07-01")]), NEW_GP)

    # the mover is at the new practice, the stayer still at the old; never registered, no practice
    assert sites(store) == {pseudonym[MOVER]: NEW_GP, pseudonym[STAYER]: OLD_GP}
    assert store.query_one("SELECT care_site_id FROM person WHERE person_source_value = ?",
                           [pseudonym[INPATIENT]]) is None
    practices = store.query("SELECT care_site_source_value, count(*) FROM care_site GROUP BY 1 ORDER BY 1")
    assert practices == [(OLD_GP, 1), (NEW_GP, 1)]
    assert store.query_one("SELECT count(DISTINCT care_site_id) = count(*) FROM care_site")


def test_sites_added_for_practices_between_chunks_of_one_load_keep_their_ids_distinct(store, options, tmp_path):
    """Each chunk numbers its sites after the earlier chunks', and the person rows, built once after the last
    chunk, add the registering practice's after all of them (until 7 December they were built after every
    chunk, so the second chunk numbered its site after the practice the first chunk's persons added)."""
    from mercia.ingest.load import load_staged
    from mercia.ingest.service import read_source

    first = extract(tmp_path / "1", "x", [practice("Y12345"), patient("m", MOVER), registration("m", "2010-01-01")])
    second = extract(tmp_path / "2", "x", [practice("Y99999"), patient("s", STAYER), registration("s", "2011-01-01")])
    load_staged(store, [read_source("fhir", first), read_source("fhir", second)], OLD_GP, "fhir", options)
    assert store.query("SELECT care_site_id, care_site_source_value FROM care_site ORDER BY 1, 2") == [
        (1, "Y12345"), (2, "Y99999"), (3, OLD_GP)]
    # both chunks' persons have their person row, registered at the practice, with an observation period
    assert store.query("""SELECT count(*), count(DISTINCT o.person_id), min(s.care_site_source_value),
                                 max(s.care_site_source_value) FROM person p
                          JOIN care_site s USING (care_site_id) JOIN observation_period o USING (person_id)""") == [
        (2, 2, OLD_GP, OLD_GP)]
