"""GA4GH Phenopackets v2: read one into a typed case, write a case back out as a valid Phenopacket.

Function API (also used by ``mercia ingest phenopackets``):

* ``read_phenopacket(source) -> RareDiseaseCase`` where ``source`` is a path, JSON text/bytes or a dict. The
  document is first validated against the Phenopacket v2 schema (the ``phenopackets`` protobuf classes, so an
  unknown field or a wrong type is an error naming the field), then the fields Mercia uses are extracted:
  subject (id, sex, date of birth, age at last encounter), phenotypic features (observed or excluded, onset as
  an ISO 8601 age or an HPO onset class), diseases (with onset) and the variants of the interpretations (gene,
  HGVS/VCF, allelic state, interpretation status, ACMG class).
* ``write_phenopacket(case, hpo_version=...) -> dict``: the Phenopacket JSON (camelCase) for a case, validated
  the same way before it is returned. ``mercia.raredisease.patients.load_case`` builds the case from the CDM.

Errors are ``PhenopacketError`` with the document id and the JSON path of the offending field.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phenopackets as pps
from google.protobuf import json_format

SEXES = {"MALE", "FEMALE", "OTHER_SEX", "UNKNOWN_SEX"}
SCHEMA_VERSION = "2.0"
GENO_LABELS = {"GENO:0000135": "heterozygous", "GENO:0000136": "homozygous", "GENO:0000134": "hemizygous"}
_ISO_AGE = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?")
# where protobuf's ParseError names the offending element: "... at Phenopacket.subject.dateOfBirth."
_PARSE_ERROR_PATH = re.compile(r" at Phenopacket\.(\S+?)\.*$")


class PhenopacketError(ValueError):
    """A Phenopacket that is not valid v2 or lacks a field Mercia needs; says which document and field
    (``field``: the JSON path, e.g. ``subject.dateOfBirth``, when one element is at fault)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def age_in_months(iso_age: str | None) -> int | None:
    """Whole months of an ISO 8601 age (``P3Y6M``, ``P10W``); None when there is none or it is not one."""
    parts = _ISO_AGE.match(iso_age or "")
    if not parts or not any(parts.groups()):
        return None
    years, months, weeks, days = (int(g or 0) for g in parts.groups())
    return years * 12 + months + (weeks * 7 + days) // 30


@dataclass
class Onset:
    """Onset as an ISO 8601 age (``P4M``) or an HPO onset class (``HP:0003577``), whichever the source gave."""

    age: str | None = None
    term: str | None = None
    label: str | None = None

    def source_value(self) -> str:
        return self.term or self.age or ""

    @classmethod
    def from_source_value(cls, value: str | None) -> Onset | None:
        if not value:
            return None
        return cls(term=value) if value.startswith("HP:") else cls(age=value)


@dataclass
class Phenotype:
    """An HPO term observed in the patient, or explicitly excluded."""

    term: str
    label: str = ""
    excluded: bool = False
    onset: Onset | None = None


@dataclass
class Disease(Phenotype):
    """A diagnosis (OMIM, ORPHA or MONDO id), or a disease explicitly ruled out."""


@dataclass
class Variant:
    gene_symbol: str
    gene_id: str = ""  # e.g. HGNC:13830
    hgvs: str = ""  # preferred expression (hgvs.c, else hgvs.g, else any)
    vcf: str = ""  # assembly:chrom:pos:ref:alt
    allelic_state: str = ""  # GENO id, e.g. GENO:0000135 heterozygous
    interpretation_status: str = ""  # CAUSATIVE, CANDIDATE, ...
    acmg: str = ""  # PATHOGENIC, ...


@dataclass
class RareDiseaseCase:
    id: str
    subject_id: str
    sex: str = "UNKNOWN_SEX"
    date_of_birth: dt.date | None = None
    age_at_last_encounter: str | None = None
    phenotypes: list[Phenotype] = field(default_factory=list)
    diseases: list[Disease] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    created: dt.datetime | None = None

    def birth_year(self, recorded: dt.date | None) -> int | None:
        """The year of birth: the date of birth's, else ``recorded`` (the record's date) less the age at last
        encounter; None when the case gives neither (a case report without an age: kept with the age unknown)."""
        if self.date_of_birth:
            return self.date_of_birth.year
        months = age_in_months(self.age_at_last_encounter)
        if recorded is None or months is None:
            return None
        return (recorded.year * 12 + recorded.month - 1 - months) // 12

    @property
    def observed(self) -> list[str]:
        return [p.term for p in self.phenotypes if not p.excluded]

    @property
    def excluded(self) -> list[str]:
        return [p.term for p in self.phenotypes if p.excluded]

    @property
    def genes(self) -> list[str]:
        return list(dict.fromkeys(v.gene_symbol for v in self.variants if v.gene_symbol))


def _load(source: Any) -> dict:
    if isinstance(source, dict):
        return source
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        try:
            source = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise PhenopacketError(f"cannot read phenopacket {source}: {exc.strerror}") from None
    try:
        data = json.loads(source)
    except json.JSONDecodeError as exc:
        raise PhenopacketError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PhenopacketError("a phenopacket must be a JSON object")
    return data


def validate(data: dict) -> None:
    """Check a Phenopacket JSON document against the v2 schema and the fields v2 requires."""
    doc = data.get("id", "<no id>")
    try:
        json_format.ParseDict(data, pps.Phenopacket())
    except json_format.ParseError as exc:
        path = _PARSE_ERROR_PATH.search(str(exc))
        raise PhenopacketError(f"phenopacket {doc}: not a valid Phenopacket v2: {exc}",
                               path.group(1) if path else None) from None
    for required in ("id", "metaData"):
        if not data.get(required):
            raise PhenopacketError(f"phenopacket {doc}: field {required} is required", required)
    for i, feature in enumerate(data.get("phenotypicFeatures", [])):
        if not feature.get("type", {}).get("id"):
            raise PhenopacketError(f"phenopacket {doc}: field phenotypicFeatures[{i}].type.id is required",
                                   f"phenotypicFeatures[{i}].type.id")
    for i, disease in enumerate(data.get("diseases", [])):
        if not disease.get("term", {}).get("id"):
            raise PhenopacketError(f"phenopacket {doc}: field diseases[{i}].term.id is required",
                                   f"diseases[{i}].term.id")


def _onset(element: dict | None) -> Onset | None:
    if not element:
        return None
    if "age" in element:
        return Onset(age=element["age"].get("iso8601duration"))
    if "ontologyClass" in element:
        return Onset(term=element["ontologyClass"]["id"], label=element["ontologyClass"].get("label"))
    return None  # other time elements (gestational age, ranges, timestamps) are not kept


def _variant(genomic: dict) -> Variant | None:
    interpretation = genomic.get("variantInterpretation")
    if interpretation:
        descriptor = interpretation.get("variationDescriptor", {})
        gene = descriptor.get("geneContext", {})
        expressions = {e.get("syntax"): e.get("value") for e in descriptor.get("expressions", [])}
        hgvs = next((expressions[s] for s in ("hgvs.c", "hgvs.g", "hgvs") if s in expressions), "")
        vcf = descriptor.get("vcfRecord")
        return Variant(
            gene_symbol=gene.get("symbol", ""),
            gene_id=gene.get("valueId", ""),
            hgvs=hgvs or next(iter(expressions.values()), "") or descriptor.get("label", ""),
            vcf=":".join(str(vcf.get(k, "")) for k in ("genomeAssembly", "chrom", "pos", "ref", "alt")) if vcf else "",
            allelic_state=descriptor.get("allelicState", {}).get("id", ""),
            interpretation_status=genomic.get("interpretationStatus", ""),
            acmg=interpretation.get("acmgPathogenicityClassification", ""),
        )
    gene = genomic.get("gene")
    if gene:
        return Variant(gene_symbol=gene.get("symbol", ""), gene_id=gene.get("valueId", ""),
                       interpretation_status=genomic.get("interpretationStatus", ""))
    return None


def read_phenopacket(source: Any) -> RareDiseaseCase:
    """Validate a Phenopacket v2 document and extract the case Mercia stores (see module docstring)."""
    data = _load(source)
    validate(data)
    subject = data.get("subject", {})
    if not subject.get("id"):
        raise PhenopacketError(f"phenopacket {data['id']}: field subject.id is required by Mercia", "subject.id")
    birth = subject.get("dateOfBirth")
    created = data["metaData"].get("created")
    case = RareDiseaseCase(
        id=data["id"],
        subject_id=subject["id"],
        sex=subject.get("sex", "UNKNOWN_SEX"),
        date_of_birth=dt.datetime.fromisoformat(birth.replace("Z", "+00:00")).date() if birth else None,
        age_at_last_encounter=subject.get("timeAtLastEncounter", {}).get("age", {}).get("iso8601duration"),
        created=dt.datetime.fromisoformat(created.replace("Z", "+00:00")) if created else None,
    )
    for feature in data.get("phenotypicFeatures", []):
        case.phenotypes.append(Phenotype(feature["type"]["id"], feature["type"].get("label", ""),
                                         bool(feature.get("excluded")), _onset(feature.get("onset"))))
    for disease in data.get("diseases", []):
        case.diseases.append(Disease(disease["term"]["id"], disease["term"].get("label", ""),
                                     bool(disease.get("excluded")), _onset(disease.get("onset"))))
    for interpretation in data.get("interpretations", []):
        for genomic in interpretation.get("diagnosis", {}).get("genomicInterpretations", []):
            variant = _variant(genomic)
            if variant is not None:
                case.variants.append(variant)
    return case


def _time_element(onset: Onset | None) -> dict | None:
    if onset is None:
        return None
    if onset.term:
        return {"ontologyClass": {"id": onset.term, "label": onset.label or ""}}
    return {"age": {"iso8601duration": onset.age}}


def _genomic_interpretation(subject: str, variant: Variant) -> dict:
    descriptor: dict[str, Any] = {
        "id": f"{variant.gene_symbol}:{variant.hgvs or variant.vcf or 'variant'}",
        "geneContext": {"valueId": variant.gene_id or variant.gene_symbol, "symbol": variant.gene_symbol},
        "moleculeContext": "genomic",
    }
    if variant.hgvs:
        syntax = "hgvs.c" if ":c." in variant.hgvs else "hgvs.g" if ":g." in variant.hgvs else "hgvs"
        descriptor["expressions"] = [{"syntax": syntax, "value": variant.hgvs}]
    if variant.vcf:
        assembly, chrom, pos, ref, alt = variant.vcf.split(":")
        descriptor["vcfRecord"] = {"genomeAssembly": assembly, "chrom": chrom, "pos": int(pos), "ref": ref,
                                   "alt": alt}
    if variant.allelic_state:
        descriptor["allelicState"] = {"id": variant.allelic_state, "label": GENO_LABELS.get(variant.allelic_state, "")}
    interpretation: dict[str, Any] = {"variationDescriptor": descriptor}
    if variant.acmg:
        interpretation["acmgPathogenicityClassification"] = variant.acmg
    return {"subjectOrBiosampleId": subject, "interpretationStatus": variant.interpretation_status or "UNKNOWN_STATUS",
            "variantInterpretation": interpretation}


def write_phenopacket(case: RareDiseaseCase, hpo_version: str, created_by: str = "mercia") -> dict:
    """A Phenopacket v2 JSON document for the case, validated before it is returned."""
    subject: dict[str, Any] = {"id": case.subject_id, "sex": case.sex if case.sex in SEXES else "UNKNOWN_SEX"}
    if case.date_of_birth:
        subject["dateOfBirth"] = f"{case.date_of_birth.isoformat()}T00:00:00Z"
    if case.age_at_last_encounter:
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": case.age_at_last_encounter}}
    features = []
    for p in case.phenotypes:
        feature: dict[str, Any] = {"type": {"id": p.term, "label": p.label}}
        if p.excluded:
            feature["excluded"] = True
        if p.onset:
            feature["onset"] = _time_element(p.onset)
        features.append(feature)
    diseases = []
    for d in case.diseases:
        disease: dict[str, Any] = {"term": {"id": d.term, "label": d.label}}
        if d.excluded:
            disease["excluded"] = True
        if d.onset:
            disease["onset"] = _time_element(d.onset)
        diseases.append(disease)
    created = (case.created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    document: dict[str, Any] = {
        "id": case.id,
        "subject": subject,
        "phenotypicFeatures": features,
        "diseases": diseases,
        "metaData": {
            "created": created.isoformat().replace("+00:00", "Z"),
            "createdBy": created_by,
            "resources": [{
                "id": "hp", "name": "human phenotype ontology", "url": "http://purl.obolibrary.org/obo/hp.owl",
                "version": hpo_version, "namespacePrefix": "HP", "iriPrefix": "http://purl.obolibrary.org/obo/HP_",
            }],
            "phenopacketSchemaVersion": SCHEMA_VERSION,
        },
    }
    if case.variants:
        document["interpretations"] = [{
            "id": f"{case.id}-interpretation",
            "progressStatus": "SOLVED" if any(v.interpretation_status == "CAUSATIVE" for v in case.variants)
            else "IN_PROGRESS",
            "diagnosis": {
                "disease": {"id": case.diseases[0].term, "label": case.diseases[0].label} if case.diseases
                else {"id": "NCIT:C41132", "label": "None"},
                "genomicInterpretations": [_genomic_interpretation(case.subject_id, v) for v in case.variants],
            },
        }]
    validate(document)
    return document
