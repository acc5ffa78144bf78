"""Load a whole synthetic region directory (layout: docs/synth.md, "Extract contract"), then link."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mercia.cdm import Store
from mercia.ingest.load import LoadSummary
from mercia.ingest.service import default_options, ingest
from mercia.privacy.geography import GeographyLookup

PROMS_ORG = "PROMS"  # the national PROMs programme, not an ODS organisation


@dataclass
class RegionPlan:
    kind: str
    path: Path
    org: str
    mapping: str | None = None
    manifest: Path | None = None   # sample manifest of a laboratory file (nmr)


def plan_region(directory: Path | str) -> list[RegionPlan]:
    """Every extract of a region directory, in load order (GP, acute, pathology, rare disease, metabolomics
    study, PROMs): persons come first, so that samples find theirs by NHS number."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"region directory not found: {root}")
    plan = [RegionPlan("fhir", p, p.name) for p in sorted((root / "gp").glob("*")) if p.is_dir()]
    plan += [RegionPlan("csv", p, p.name, "acute_trust") for p in sorted((root / "acute").glob("*")) if p.is_dir()]
    plan += [RegionPlan("hl7v2", p, p.name) for p in sorted((root / "pathology").glob("*")) if p.is_dir()]
    for clinic in sorted((root / "rare_disease").glob("*")):
        if (clinic / "phenopackets").is_dir():
            plan.append(RegionPlan("phenopackets", clinic / "phenopackets", clinic.name))
        if (clinic / "vcf").is_dir():
            plan.append(RegionPlan("vcf", clinic / "vcf", clinic.name))
    for study in sorted((root / "metabolomics").glob("*")):
        if (study / "nmr_wide.csv").is_file():
            plan.append(RegionPlan("nmr", study / "nmr_wide.csv", study.name, manifest=study / "manifest.csv"))
        plan += [RegionPlan("mztab", batch, study.name, manifest=study / "manifest.csv")
                 for batch in sorted((study / "mztab").glob("*.mzTab"))]
    if (root / "proms").is_dir():
        plan.append(RegionPlan("csv", root / "proms", PROMS_ORG, "proms"))
    if not plan:
        raise FileNotFoundError(f"{root} has none of gp/, acute/, pathology/, rare_disease/, metabolomics/, proms/")
    return plan


def region_geography(directory: Path | str) -> GeographyLookup | None:
    """The region's own postcode directory and deprivation file (``geography/``), when it has them."""
    onspd, imd = (Path(directory) / "geography" / name for name in ("onspd.csv", "imd.csv"))
    return GeographyLookup.from_files(onspd, imd) if onspd.exists() and imd.exists() else None


def ingest_region(store: Store, directory: Path | str, opt_out: Path | None = None,
                  on_extract: Callable[[RegionPlan, LoadSummary], None] | None = None) -> list[LoadSummary]:
    """Load every extract of the region, one transaction each.  Linking persons across organisations
    is the caller's next step (``mercia.linkage.probabilistic.link_store``): ingest does not import linkage."""
    summaries = []
    geography = region_geography(directory)
    for item in plan_region(directory):
        options = default_options(item.kind, opt_out=opt_out)
        options.geography = options.geography or geography
        summary = ingest(store, item.kind, item.path, item.org, mapping=item.mapping, options=options,
                         manifest=item.manifest)
        summaries.append(summary)
        if on_extract:
            on_extract(item, summary)
    return summaries
