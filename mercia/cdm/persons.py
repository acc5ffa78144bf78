"""OMOP person, death and observation_period rows, derived from Mercia's extension tables.

Ingestion writes ``mercia_person_link`` and ``mercia_registration`` rows; linkage merges person_ids.
Both then rebuild the derived person rows here, so neither capability imports the other.
"""

from __future__ import annotations

import pyarrow as pa

from mercia.cdm.store import Store, quote

EHR_TYPE = 32817  # OMOP type concept "EHR"
# Tables whose rows are events of a person, and their date column (used for observation periods).
EVENT_DATES = {"visit_occurrence": "visit_start_date", "condition_occurrence": "condition_start_date",
               "drug_exposure": "drug_exposure_start_date", "procedure_occurrence": "procedure_date",
               "measurement": "measurement_date", "observation": "observation_date",
               "device_exposure": "device_exposure_start_date", "specimen": "specimen_date"}


def max_id(store: Store, table: str, column: str) -> int:
    """Largest id in the column (0 for an empty table): new rows are numbered after it."""
    return int(store.query_one(f"SELECT COALESCE(max({quote(column)}), 0) FROM {quote(table)}") or 0)


def rebuild_person_rows(store: Store, person_ids: pa.Table) -> None:
    """person, death and observation_period rows of the given persons, rebuilt from their links
    and events (one link per person chosen: a valid NHS number first, then the earliest load).
    ``person.care_site_id`` is the practice of the person's latest GP registration (a ``care_site``
    whose ``care_site_source_value`` is its ODS code, added when no site has that code yet): trials
    take a person's site from it, and an extract carries its practice only as its organisation.

    The statements go as two scripts (``execute_script``): fewer round trips, and on PostgreSQL no JIT,
    which the planner chose for the observation periods from its guess of the events just loaded
    (estimated cost ~1.7 million): ~1.0 s compiling for 43 ms of work, once per extract loaded."""
    store.temp_table_from_arrow("mercia_tmp_persons", "person_id BIGINT", person_ids)
    store.execute_script([f"DELETE FROM {table} WHERE person_id IN (SELECT person_id FROM mercia_tmp_persons)"
                          for table in ("person", "death", "observation_period")])
    next_location = max_id(store, "location", "location_id")
    next_site = max_id(store, "care_site", "care_site_id")
    next_period = max_id(store, "observation_period", "observation_period_id")
    # Observation periods: a person's GP registrations, overlapping ones merged (gaps and islands);
    # a person never registered gets one period spanning their events.
    union = " UNION ALL ".join(f"SELECT person_id, {col} AS d FROM {table} WHERE person_id IN "
                               "(SELECT person_id FROM mercia_tmp_persons)" for table, col in EVENT_DATES.items())
    store.execute_script([
        # one location per LSOA (the postcode itself is never kept): location_source_value = LSOA code
        f"""
        INSERT INTO location (location_id, location_source_value, country_source_value)
        SELECT {next_location} + row_number() OVER (ORDER BY lsoa), lsoa, 'England' FROM (
            SELECT DISTINCT lsoa FROM mercia_person_link WHERE lsoa IS NOT NULL
              AND person_id IN (SELECT person_id FROM mercia_tmp_persons)
              AND lsoa NOT IN (SELECT location_source_value FROM location
                               WHERE location_source_value IS NOT NULL)) new_lsoa""",
        # one site per registering practice: care_site_source_value = its ODS code (as an Organization's),
        # named as the practice is registered (mercia.services.sources) until an Organization names it
        f"""
        INSERT INTO care_site (care_site_id, care_site_name, care_site_source_value, place_of_service_source_value)
        SELECT {next_site} + row_number() OVER (ORDER BY new_practice.org), registered.name, new_practice.org,
               'Organization'
        FROM (SELECT DISTINCT org FROM mercia_registration
              WHERE person_id IN (SELECT person_id FROM mercia_tmp_persons)
                AND org NOT IN (SELECT care_site_source_value FROM care_site
                                WHERE care_site_source_value IS NOT NULL)) new_practice
        LEFT JOIN mercia_organisation registered ON registered.ods_code = new_practice.org""",
        """
        INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,
            birth_datetime, race_concept_id, ethnicity_concept_id, person_source_value, gender_source_value,
            race_source_value, location_id, care_site_id)
        SELECT x.person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth, birth_datetime, 0, 0,
               left(COALESCE(nhs_pseudonym, source_pseudonym), 50), gender_source_value, race_source_value,
               (SELECT min(location_id) FROM location WHERE location_source_value = x.lsoa),
               (SELECT min(care_site_id) FROM care_site WHERE care_site_source_value = practice.org)
        FROM (SELECT l.*, row_number() OVER (PARTITION BY person_id ORDER BY (nhs_status = 'valid') DESC,
                     load_id, org, source_pseudonym) AS rn
              FROM mercia_person_link l WHERE person_id IN (SELECT person_id FROM mercia_tmp_persons)) x
        LEFT JOIN (SELECT person_id, org, row_number() OVER (PARTITION BY person_id
                          ORDER BY start_date DESC, end_date DESC NULLS FIRST, org) AS latest
                   FROM mercia_registration WHERE person_id IN (SELECT person_id FROM mercia_tmp_persons)
                  ) practice ON practice.person_id = x.person_id AND practice.latest = 1
        WHERE rn = 1""",
        """
        INSERT INTO death (person_id, death_date, death_type_concept_id)
        SELECT person_id, min(death_date), """ + str(EHR_TYPE) + """ FROM mercia_person_link
        WHERE death_date IS NOT NULL AND person_id IN (SELECT person_id FROM mercia_tmp_persons)
        GROUP BY person_id""",
        f"""
        INSERT INTO observation_period (observation_period_id, person_id, observation_period_start_date,
            observation_period_end_date, period_type_concept_id)
        SELECT {next_period} + row_number() OVER (ORDER BY person_id, s), person_id, s, e, {EHR_TYPE} FROM (
            SELECT person_id, min(start_date) AS s, max(end_date) AS e FROM (
                SELECT *, sum(starts_island) OVER (PARTITION BY person_id ORDER BY start_date, end_date
                                                   ROWS UNBOUNDED PRECEDING) AS island FROM (
                    SELECT person_id, start_date, end_date,
                           CASE WHEN start_date <= max(end_date) OVER (PARTITION BY person_id
                               ORDER BY start_date, end_date ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
                           THEN 0 ELSE 1 END AS starts_island
                    FROM (SELECT r.person_id, r.start_date,
                                 COALESCE(r.end_date, (SELECT max(d) FROM ({union}) ev
                                                       WHERE ev.person_id = r.person_id), r.start_date) AS end_date
                          FROM mercia_registration r WHERE r.person_id IN (SELECT person_id FROM mercia_tmp_persons)
                         ) reg) flagged) islands
            GROUP BY person_id, island
            UNION ALL
            SELECT person_id, min(d), max(d) FROM ({union}) e
            WHERE person_id NOT IN (SELECT person_id FROM mercia_registration) GROUP BY person_id) periods""",
        "DROP TABLE IF EXISTS mercia_tmp_persons"])
