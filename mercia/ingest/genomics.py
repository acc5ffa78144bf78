"""GA4GH Phenopackets v2 -> staged persons, HPO observations, OMIM conditions and variants (VCF: mercia.ingest.vcf).

Phenopackets are parsed and validated by ``mercia.raredisease.phenopackets.read_phenopacket`` (the
rare-disease capability owns the format); this module only maps the case into staged rows.

Genomic convention (documented in docs/ingest.md): each variant call becomes
- a ``measurement`` row, as the OHDSI Genomic CDM / OMOP oncology convention does: source value
  ``HGNC:<gene symbol>`` (concept from the vocabulary when present, else 0), ``value_source_value``
  the genotype and ``measurement_type_concept_id`` = Registry; and
- a row in ``variant_occurrence`` (a subset of the OHDSI G-CDM table of that name) keyed by that
  measurement: chromosome, position, reference/alternate allele, assembly, HGVS, genotype, gene.
The clinic appointment becomes an outpatient ``visit_occurrence`` on that date, and
HPO phenotypes go to ``observation`` (HPO concept; value Present/Absent as SNOMED qualifier
values 52101004 / 2667000, so excluded phenotypes keep their meaning); diseases to
``condition_occurrence`` (OMIM).  Phenopackets carry no event dates: the phenopacket's
``metaData.created`` is used, and a missing date of birth is estimated as a year from
``created - timeAtLastEncounter``.  A subject with neither is kept with the age unknown (year of birth
NULL, flagged in ``mercia_reject``): case reports often give no age, and the phenotypes, diagnosis and
variants are what a rare-disease clinic needs (docs/ingest.md).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pyarrow as pa

from mercia.ingest.staging import Staged, content_hash

PRESENT, ABSENT = "52101004", "2667000"  # SNOMED CT qualifier values
# A phenopacket variant, joined by the load to its record's measurement (``key``: the event's qualifier); the
# columns only VCF calls fill (mercia.ingest.vcf) stay empty.
VARIANT_SCHEMA = pa.schema([
    ("record", pa.string()), ("key", pa.string()), ("person_ref", pa.string()), ("assembly", pa.string()),
    ("chrom", pa.string()), ("pos", pa.int64()), ("ref", pa.string()), ("alt", pa.string()), ("gene", pa.string()),
    ("genotype", pa.string()), ("hgvs", pa.string()), ("hgvs_p", pa.string()), ("consequence", pa.string()),
    ("zygosity", pa.string()), ("read_depth", pa.int64()), ("genotype_quality", pa.float64()),
])


def _without_nulls(node):
    """Phenopackets are protobuf JSON, where ``null`` means the field's default: drop it, so that the
    reader sees an absent field instead of a None where an object belongs."""
    if isinstance(node, dict):
        return {k: _without_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_without_nulls(v) for v in node if v is not None]
    return node


class GenomicsReader:
    def __init__(self, extract: str):
        self.staged = Staged(extract, birth_date_field="subject.dateOfBirth", birth_date_optional=True)
        self.variants: dict[str, list] = {name: [] for name in VARIANT_SCHEMA.names}

    def read_phenopackets(self, path: Path) -> Staged:
        path = Path(path)
        files = [path] if path.is_file() else sorted(path.rglob("*.json"))
        for number, file in enumerate(files, start=1):
            self.read_phenopacket_bytes(file.read_bytes(), file.stem, number)
        return self.finish()

    def read_phenopacket_bytes(self, raw: bytes, name: str, number: int) -> None:
        from mercia.raredisease.phenopackets import PhenopacketError, read_phenopacket

        self.staged.read += 2  # the subject and the clinical record
        try:
            data = _without_nulls(orjson.loads(raw))
            if not isinstance(data, dict):  # read_phenopacket would take a JSON string for a file name
                raise PhenopacketError("a phenopacket must be a JSON object")
            case = read_phenopacket(data)
        except (orjson.JSONDecodeError, PhenopacketError) as exc:
            reason = f"not a valid phenopacket: {str(exc).split(':', 1)[-1].strip()[:200]}"
            field_name = getattr(exc, "field", None)
        except (AttributeError, TypeError, KeyError, ValueError):
            # the protobuf check lets some wrongly typed elements through to the rare-disease reader
            reason, field_name = "not a valid phenopacket: an element has the wrong JSON type", None
        else:
            self._case(data, case, content_hash(raw), number)
            return
        self.staged.reject(f"Subject/{name}", field_name, reason, number)
        self.staged.reject(f"Phenopacket/{name}", field_name, reason, number)

    def _case(self, data: dict, case, digest: str, number: int) -> None:
        from mercia.raredisease.phenopackets import age_in_months

        s = self.staged
        person_ref = f"Subject/{case.id}"  # subject ids repeat across case reports; one packet per person
        nhs = next((a.split(":", 1)[1] for a in data.get("subject", {}).get("alternateIds", [])
                    if a.lower().startswith("nhs:")), None)
        if not case.date_of_birth and case.age_at_last_encounter and age_in_months(case.age_at_last_encounter) is None:
            for rejected in (person_ref, f"Phenopacket/{case.id}"):  # an invalid age is not an unknown one
                s.reject(rejected, "subject.timeAtLastEncounter",
                         "age at last encounter not an ISO 8601 duration (PnYnMnWnD)", number)
            return
        year = case.birth_year(case.created.date() if case.created else None)  # None: age unknown
        birth = case.date_of_birth.isoformat() if case.date_of_birth else (str(year) if year is not None else None)
        s.persons.add(record=person_ref, record_hash=digest, person_ref=person_ref, nhs_number=nhs,
                      birth_date=birth, sex={"MALE": "male", "FEMALE": "female"}.get(case.sex), line=number)
        when = case.created.date().isoformat() if case.created else None
        record = f"Phenopacket/{case.id}"
        base = dict(record=record, record_hash=digest, person_ref=person_ref, start=when, line=number,
                    visit_ref=record)
        # the clinic appointment at which the phenopacket was recorded: an outpatient visit
        s.events.add(**base, kind="Visit", vocabulary="Visit class", code="AMB")
        for feature in case.phenotypes:
            s.events.add(**base, kind="Observation", vocabulary="HPO", code=feature.term, value_vocabulary="SNOMED",
                         value_code=ABSENT if feature.excluded else PRESENT,
                         qualifier="excluded" if feature.excluded else "observed")
        for disease in case.diseases:
            if not disease.excluded:
                s.events.add(**base, kind="Condition", vocabulary="OMIM", code=disease.term)
        for i, variant in enumerate(case.variants, start=1):
            parts = variant.vcf.split(":") if variant.vcf else []
            s.events.add(**base, kind="Measurement", vocabulary="HGNC", qualifier=f"variant {i}",
                         code=variant.gene_symbol or "unknown", value_vocabulary="GENO",
                         value_code=variant.allelic_state or None)
            self._variant(record, f"variant {i}", person_ref, parts[0] if parts else None, parts[1] if len(parts) > 1 else None,
                          int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None,
                          parts[3] if len(parts) > 3 else None, parts[4] if len(parts) > 4 else None,
                          variant.gene_symbol, variant.allelic_state, variant.hgvs)
        if not (case.phenotypes or case.diseases or case.variants):
            s.reject(record, "phenotypicFeatures", "phenopacket has no phenotypes, diseases or variants", number)

    def _variant(self, record, key, person_ref, assembly, chrom, pos, ref, alt, gene, genotype, hgvs) -> None:
        given = (record, key, person_ref, assembly, chrom, pos, ref, alt, gene, genotype, hgvs)
        for i, name in enumerate(VARIANT_SCHEMA.names):  # the VCF-only columns stay empty
            self.variants[name].append(given[i] if i < len(given) else None)

    def finish(self) -> Staged:
        self.staged.variants = pa.table(self.variants, schema=VARIANT_SCHEMA)
        return self.staged


def read_phenopackets(path: Path | str) -> Staged:
    return GenomicsReader(Path(path).name).read_phenopackets(Path(path))
