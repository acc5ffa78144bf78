"""The OMOP Common Data Model v5.4, defined once and rendered per engine.

Tables and columns follow the OHDSI CDM v5.4 DDL (github.com/OHDSI/CommonDataModel, inst/ddl/5.4).
The specification is kept as a compact text table below so that the whole model can be read on one
screen; ``CDM_TABLES`` is parsed from it at import time.

Three deliberate choices, documented in docs/cdm.md:
- every integer column is rendered as BIGINT (a superset of the spec's INTEGER) so that a region of
  5.4 million people, or sums over it, never overflow;
- VARCHAR lengths are kept as metadata (checked by data quality) but rendered unbounded, so that a
  long source value is a data-quality finding rather than a failed load;
- ``person.year_of_birth`` may be NULL (the spec requires it): a published rare-disease case report
  often gives no age, and the case is kept with the age unknown rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

CDM_VERSION = "5.4"
# OMOP concept for "OMOP CDM Version 5.4" (vocabulary 'CDM').
CDM_VERSION_CONCEPT_ID = 756265

# One line per column: "<column> <type>[!]" where ! marks NOT NULL.  A table starts with
# "== <table> <group> [pk=<column>]".  Types: int, bigint, date, ts, num, text, vcN (varchar(N)).
_SPEC = """
== person clinical pk=person_id
person_id int!
gender_concept_id int!
year_of_birth int
month_of_birth int
day_of_birth int
birth_datetime ts
race_concept_id int!
ethnicity_concept_id int!
location_id int
provider_id int
care_site_id int
person_source_value vc50
gender_source_value vc50
gender_source_concept_id int
race_source_value vc50
race_source_concept_id int
ethnicity_source_value vc50
ethnicity_source_concept_id int
== observation_period clinical pk=observation_period_id
observation_period_id int!
person_id int!
observation_period_start_date date!
observation_period_end_date date!
period_type_concept_id int!
== visit_occurrence clinical pk=visit_occurrence_id
visit_occurrence_id int!
person_id int!
visit_concept_id int!
visit_start_date date!
visit_start_datetime ts
visit_end_date date!
visit_end_datetime ts
visit_type_concept_id int!
provider_id int
care_site_id int
visit_source_value vc50
visit_source_concept_id int
admitted_from_concept_id int
admitted_from_source_value vc50
discharged_to_concept_id int
discharged_to_source_value vc50
preceding_visit_occurrence_id int
== visit_detail clinical pk=visit_detail_id
visit_detail_id int!
person_id int!
visit_detail_concept_id int!
visit_detail_start_date date!
visit_detail_start_datetime ts
visit_detail_end_date date!
visit_detail_end_datetime ts
visit_detail_type_concept_id int!
provider_id int
care_site_id int
visit_detail_source_value vc50
visit_detail_source_concept_id int
admitted_from_concept_id int
admitted_from_source_value vc50
discharged_to_source_value vc50
discharged_to_concept_id int
preceding_visit_detail_id int
parent_visit_detail_id int
visit_occurrence_id int!
== condition_occurrence clinical pk=condition_occurrence_id
condition_occurrence_id int!
person_id int!
condition_concept_id int!
condition_start_date date!
condition_start_datetime ts
condition_end_date date
condition_end_datetime ts
condition_type_concept_id int!
condition_status_concept_id int
stop_reason vc20
provider_id int
visit_occurrence_id int
visit_detail_id int
condition_source_value vc50
condition_source_concept_id int
condition_status_source_value vc50
== drug_exposure clinical pk=drug_exposure_id
drug_exposure_id int!
person_id int!
drug_concept_id int!
drug_exposure_start_date date!
drug_exposure_start_datetime ts
drug_exposure_end_date date!
drug_exposure_end_datetime ts
verbatim_end_date date
drug_type_concept_id int!
stop_reason vc20
refills int
quantity num
days_supply int
sig text
route_concept_id int
lot_number vc50
provider_id int
visit_occurrence_id int
visit_detail_id int
drug_source_value vc50
drug_source_concept_id int
route_source_value vc50
dose_unit_source_value vc50
== procedure_occurrence clinical pk=procedure_occurrence_id
procedure_occurrence_id int!
person_id int!
procedure_concept_id int!
procedure_date date!
procedure_datetime ts
procedure_end_date date
procedure_end_datetime ts
procedure_type_concept_id int!
modifier_concept_id int
quantity int
provider_id int
visit_occurrence_id int
visit_detail_id int
procedure_source_value vc50
procedure_source_concept_id int
modifier_source_value vc50
== device_exposure clinical pk=device_exposure_id
device_exposure_id int!
person_id int!
device_concept_id int!
device_exposure_start_date date!
device_exposure_start_datetime ts
device_exposure_end_date date
device_exposure_end_datetime ts
device_type_concept_id int!
unique_device_id vc255
production_id vc255
quantity int
provider_id int
visit_occurrence_id int
visit_detail_id int
device_source_value vc50
device_source_concept_id int
unit_concept_id int
unit_source_value vc50
unit_source_concept_id int
== measurement clinical pk=measurement_id
measurement_id int!
person_id int!
measurement_concept_id int!
measurement_date date!
measurement_datetime ts
measurement_time vc10
measurement_type_concept_id int!
operator_concept_id int
value_as_number num
value_as_concept_id int
unit_concept_id int
range_low num
range_high num
provider_id int
visit_occurrence_id int
visit_detail_id int
measurement_source_value vc50
measurement_source_concept_id int
unit_source_value vc50
unit_source_concept_id int
value_source_value vc50
measurement_event_id bigint
meas_event_field_concept_id int
== observation clinical pk=observation_id
observation_id int!
person_id int!
observation_concept_id int!
observation_date date!
observation_datetime ts
observation_type_concept_id int!
value_as_number num
value_as_string vc60
value_as_concept_id int
qualifier_concept_id int
unit_concept_id int
provider_id int
visit_occurrence_id int
visit_detail_id int
observation_source_value vc50
observation_source_concept_id int
unit_source_value vc50
qualifier_source_value vc50
value_source_value vc50
observation_event_id bigint
obs_event_field_concept_id int
== death clinical pk=person_id
person_id int!
death_date date!
death_datetime ts
death_type_concept_id int
cause_concept_id int
cause_source_value vc50
cause_source_concept_id int
== note clinical pk=note_id
note_id int!
person_id int!
note_date date!
note_datetime ts
note_type_concept_id int!
note_class_concept_id int!
note_title vc250
note_text text!
encoding_concept_id int!
language_concept_id int!
provider_id int
visit_occurrence_id int
visit_detail_id int
note_source_value vc50
note_event_id bigint
note_event_field_concept_id int
== note_nlp clinical pk=note_nlp_id
note_nlp_id int!
note_id int!
section_concept_id int
snippet vc250
offset vc50
lexical_variant vc250!
note_nlp_concept_id int
note_nlp_source_concept_id int
nlp_system vc250
nlp_date date!
nlp_datetime ts
term_exists vc1
term_temporal vc50
term_modifiers vc2000
== specimen clinical pk=specimen_id
specimen_id int!
person_id int!
specimen_concept_id int!
specimen_type_concept_id int!
specimen_date date!
specimen_datetime ts
quantity num
unit_concept_id int
anatomic_site_concept_id int
disease_status_concept_id int
specimen_source_id vc50
specimen_source_value vc50
unit_source_value vc50
anatomic_site_source_value vc50
disease_status_source_value vc50
== fact_relationship clinical
domain_concept_id_1 int!
fact_id_1 int!
domain_concept_id_2 int!
fact_id_2 int!
relationship_concept_id int!
== location health_system pk=location_id
location_id int!
address_1 vc50
address_2 vc50
city vc50
state vc2
zip vc9
county vc20
location_source_value vc50
country_concept_id int
country_source_value vc80
latitude num
longitude num
== care_site health_system pk=care_site_id
care_site_id int!
care_site_name vc255
place_of_service_concept_id int
location_id int
care_site_source_value vc50
place_of_service_source_value vc50
== provider health_system pk=provider_id
provider_id int!
provider_name vc255
npi vc20
dea vc20
specialty_concept_id int
care_site_id int
year_of_birth int
gender_concept_id int
provider_source_value vc50
specialty_source_value vc50
specialty_source_concept_id int
gender_source_value vc50
gender_source_concept_id int
== payer_plan_period health_economics pk=payer_plan_period_id
payer_plan_period_id int!
person_id int!
payer_plan_period_start_date date!
payer_plan_period_end_date date!
payer_concept_id int
payer_source_value vc50
payer_source_concept_id int
plan_concept_id int
plan_source_value vc50
plan_source_concept_id int
sponsor_concept_id int
sponsor_source_value vc50
sponsor_source_concept_id int
family_source_value vc50
stop_reason_concept_id int
stop_reason_source_value vc50
stop_reason_source_concept_id int
== cost health_economics pk=cost_id
cost_id int!
cost_event_id int!
cost_domain_id vc20!
cost_type_concept_id int!
currency_concept_id int
total_charge num
total_cost num
total_paid num
paid_by_payer num
paid_by_patient num
paid_patient_copay num
paid_patient_coinsurance num
paid_patient_deductible num
paid_by_primary num
paid_ingredient_cost num
paid_dispensing_fee num
payer_plan_period_id int
amount_allowed num
revenue_code_concept_id int
revenue_code_source_value vc50
drg_concept_id int
drg_source_value vc3
== drug_era derived pk=drug_era_id
drug_era_id int!
person_id int!
drug_concept_id int!
drug_era_start_date date!
drug_era_end_date date!
drug_exposure_count int
gap_days int
== dose_era derived pk=dose_era_id
dose_era_id int!
person_id int!
drug_concept_id int!
unit_concept_id int!
dose_value num!
dose_era_start_date date!
dose_era_end_date date!
== condition_era derived pk=condition_era_id
condition_era_id int!
person_id int!
condition_concept_id int!
condition_era_start_date date!
condition_era_end_date date!
condition_occurrence_count int
== episode derived pk=episode_id
episode_id bigint!
person_id bigint!
episode_concept_id int!
episode_start_date date!
episode_start_datetime ts
episode_end_date date
episode_end_datetime ts
episode_parent_id bigint
episode_number int
episode_object_concept_id int!
episode_type_concept_id int!
episode_source_value vc50
episode_source_concept_id int
== episode_event derived
episode_id bigint!
event_id bigint!
episode_event_field_concept_id int!
== metadata metadata pk=metadata_id
metadata_id int!
metadata_concept_id int!
metadata_type_concept_id int!
name vc250!
value_as_string vc250
value_as_concept_id int
value_as_number num
metadata_date date
metadata_datetime ts
== cdm_source metadata
cdm_source_name vc255!
cdm_source_abbreviation vc25!
cdm_holder vc255!
source_description text
source_documentation_reference vc255
cdm_etl_reference vc255
source_release_date date!
cdm_release_date date!
cdm_version vc10
cdm_version_concept_id int!
vocabulary_version vc20!
== concept vocabulary pk=concept_id
concept_id int!
concept_name vc255!
domain_id vc20!
vocabulary_id vc20!
concept_class_id vc20!
standard_concept vc1
concept_code vc50!
valid_start_date date!
valid_end_date date!
invalid_reason vc1
== vocabulary vocabulary pk=vocabulary_id
vocabulary_id vc20!
vocabulary_name vc255!
vocabulary_reference vc255
vocabulary_version vc255
vocabulary_concept_id int!
== domain vocabulary pk=domain_id
domain_id vc20!
domain_name vc255!
domain_concept_id int!
== concept_class vocabulary pk=concept_class_id
concept_class_id vc20!
concept_class_name vc255!
concept_class_concept_id int!
== concept_relationship vocabulary
concept_id_1 int!
concept_id_2 int!
relationship_id vc20!
valid_start_date date!
valid_end_date date!
invalid_reason vc1
== relationship vocabulary pk=relationship_id
relationship_id vc20!
relationship_name vc255!
is_hierarchical vc1!
defines_ancestry vc1!
reverse_relationship_id vc20!
relationship_concept_id int!
== concept_synonym vocabulary
concept_id int!
concept_synonym_name vc1000!
language_concept_id int!
== concept_ancestor vocabulary
ancestor_concept_id int!
descendant_concept_id int!
min_levels_of_separation int!
max_levels_of_separation int!
== source_to_concept_map vocabulary
source_code vc50!
source_concept_id int!
source_vocabulary_id vc20!
source_code_description vc255
target_concept_id int!
target_vocabulary_id vc20!
valid_start_date date!
valid_end_date date!
invalid_reason vc1
== drug_strength vocabulary
drug_concept_id int!
ingredient_concept_id int!
amount_value num
amount_unit_concept_id int
numerator_value num
numerator_unit_concept_id int
denominator_value num
denominator_unit_concept_id int
box_size int
valid_start_date date!
valid_end_date date!
invalid_reason vc1
== cohort results
cohort_definition_id int!
subject_id int!
cohort_start_date date!
cohort_end_date date!
== cohort_definition results
cohort_definition_id int!
cohort_definition_name vc255!
cohort_definition_description text
definition_type_concept_id int!
cohort_definition_syntax text
subject_concept_id int!
cohort_initiation_date date
"""

# Columns indexed on PostgreSQL besides primary keys (the OHDSI DDL's own index set, abridged to
# the columns every query here filters or joins on).  DuckDB relies on zone maps instead: ART
# indexes there slow bulk loads and do not speed up scans.  Each domain table's own concept: a
# cohort's criteria select a few concepts' rows, which the index finds without reading the table
# (GiBleed x 20: a small cohort's primary events 90 -> 8 ms of CPU against 1.3 million conditions).
_INDEXED_SUFFIXES = ("person_id", "ancestor_concept_id", "descendant_concept_id",
                     "subject_id", "cohort_definition_id")
_INDEXED_EXACT = {"concept_code", "vocabulary_id", "visit_occurrence_id",
                  "concept_id", "concept_id_1", "concept_id_2",
                  "visit_concept_id", "visit_detail_concept_id", "condition_concept_id", "drug_concept_id",
                  "procedure_concept_id", "device_concept_id", "measurement_concept_id",
                  "observation_concept_id", "specimen_concept_id", "episode_concept_id"}

_SQL_TYPES = {"int": "BIGINT", "bigint": "BIGINT", "date": "DATE", "ts": "TIMESTAMP",
              "num": "DOUBLE PRECISION", "text": "VARCHAR"}


@dataclass(frozen=True)
class Column:
    name: str
    spec_type: str  # as written in the spec: int, bigint, date, ts, num, text, vcN
    required: bool

    @property
    def sql_type(self) -> str:
        """The engine-neutral SQL type every engine here accepts."""
        return "VARCHAR" if self.spec_type.startswith("vc") else _SQL_TYPES[self.spec_type]

    @property
    def max_length(self) -> int | None:
        """The spec's VARCHAR length, checked by data quality rather than by the engine."""
        return int(self.spec_type[2:]) if self.spec_type.startswith("vc") else None

    @property
    def is_concept_id(self) -> bool:
        return self.name.endswith("concept_id") or "_concept_id_" in self.name


@dataclass(frozen=True)
class Table:
    name: str
    group: str  # clinical, health_system, health_economics, derived, metadata, vocabulary, results
    columns: tuple[Column, ...]
    primary_key: str | None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def indexed_columns(self) -> list[str]:
        return [c.name for c in self.columns
                if c.name != self.primary_key
                and (c.name in _INDEXED_EXACT or c.name.endswith(_INDEXED_SUFFIXES))]


def _parse(spec: str) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    header: list[str] | None = None
    columns: list[Column] = []

    def close() -> None:
        if header:
            name, group, *rest = header
            pk = rest[0].removeprefix("pk=") if rest else None
            tables[name] = Table(name, group, tuple(columns), pk)

    for line in spec.strip().splitlines():
        if line.startswith("== "):
            close()
            header, columns = line[3:].split(), []
        else:
            col, typ = line.split()
            columns.append(Column(col, typ.rstrip("!"), typ.endswith("!")))
    close()
    return tables


CDM_TABLES: dict[str, Table] = _parse(_SPEC)
VOCABULARY_TABLES = [t for t in CDM_TABLES.values() if t.group == "vocabulary"]
# Mercia-owned tables derived from concept/concept_synonym (the search index of mercia.vocab.concepts).
# Not part of the CDM: the loader drops them whenever it replaces those tables, so they are rebuilt.
VOCABULARY_CACHE_TABLES = ("mercia_concept_search", "mercia_concept_search_words", "mercia_concept_search_state",
                           "mercia_concept_search_build")
