"""One entry point per source kind, shared by the CLI, the region loader, tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pyarrow as pa

from mercia.cdm import Store
from mercia.ingest.load import LoadOptions, LoadSummary, load_staged
from mercia.ingest.staging import Staged
from mercia.ingest.vcf import VcfFileError
from mercia.privacy.geography import GeographyLookup
from mercia.privacy.optout import read_opt_out_file
from mercia.privacy.policy import dob_policy
from mercia.privacy.pseudonym import Pseudonymiser, load_key

KINDS = ("fhir", "csv", "hl7v2", "phenopackets", "vcf", "nmr", "mztab", "mwtab")
# Readers that need a sample manifest (sample id -> person, collection date).
MANIFEST_KINDS = ("nmr", "mztab", "mwtab")


def default_options(kind: str, opt_out: Path | str | None = None, key_file: Path | str | None = None,
                    type_concept_id: int | None = None) -> LoadOptions:
    """Options from configuration: key, synthetic-NHS-number setting, DOB policy, geography files."""
    from mercia.config import load_settings

    settings = load_settings()
    allow = settings.allow_synthetic_nhs_numbers or os.environ.get("MERCIA_ALLOW_SYNTHETIC_NHS_NUMBERS") == "1"
    return LoadOptions(
        pseudonymiser=Pseudonymiser(load_key(key_file)), allow_synthetic_nhs_numbers=allow,
        dob_policy=dob_policy(), opt_out=read_opt_out_file(opt_out) if opt_out else frozenset(),
        geography=GeographyLookup.from_environment(), type_concept_id=type_concept_id)


def read_source(kind: str, path: Path | str, mapping: str | Path | None = None,
                manifest: Path | str | None = None, remove_technical_variation: bool = False) -> Staged:
    """``remove_technical_variation``: NMR only, the opt-in adjustment of ``mercia.ingest.nmr_technical``."""
    path = Path(path)
    if remove_technical_variation and kind != "nmr":
        raise ValueError(f"removing technical variation applies to NMR panels, not {kind}")
    if kind in MANIFEST_KINDS and manifest is None:
        raise ValueError(f"a {kind} file needs --manifest (CSV: sample_id, nhs_number or local_id, collection_date)")
    if not path.exists():
        raise FileNotFoundError(f"{kind} source not found: {path}")
    if kind in ("fhir", "csv"):  # the readers that carry PROM returns: their EQ-5D index is staged with them
        from mercia.ingest.proms import add_prom_scores
        if kind == "fhir":
            from mercia.ingest.fhir import read_fhir
            staged = read_fhir(path)
        else:
            from mercia.ingest.csv import read_csv_extract
            if mapping is None:
                raise ValueError("a CSV extract needs --mapping (a YAML file or a shipped name such as acute_trust)")
            staged = read_csv_extract(path, mapping)
        add_prom_scores(staged)
        return staged
    if kind == "hl7v2":
        from mercia.ingest.hl7v2 import read_hl7v2
        return read_hl7v2(path)
    if kind == "phenopackets":
        from mercia.ingest.genomics import read_phenopackets
        return read_phenopackets(path)
    if kind == "vcf":
        from mercia.ingest.vcf import read_vcf
        return read_vcf(path)
    if kind == "nmr":
        from mercia.ingest.nmr import read_nmr
        return read_nmr(path, manifest, remove_technical_variation=remove_technical_variation)
    if kind == "mztab":
        from mercia.ingest.mztab import read_mztab
        return read_mztab(path, manifest)
    if kind == "mwtab":
        from mercia.ingest.mwtab import read_mwtab
        return read_mwtab(path, manifest)
    raise ValueError(f"unknown source kind {kind!r}; one of {', '.join(KINDS)}")


def read_chunks(kind: str, path: Path | str, mapping: str | Path | None = None,
                manifest: Path | str | None = None,
                remove_technical_variation: bool = False) -> Generator[Staged, None, None]:
    """The source as staged chunks for one load: a large NMR panel streams in chunks of samples
    (``mercia.ingest.nmr.read_nmr_chunks``) and a VCF in chunks of sites (``read_vcf_chunks``) so that
    memory does not grow with the file; every other kind is one chunk, ``read_source``."""
    if kind == "nmr" and manifest is not None and Path(path).exists():
        from mercia.ingest.nmr import read_nmr_chunks
        yield from read_nmr_chunks(path, manifest, remove_technical_variation=remove_technical_variation)
    elif kind == "vcf":
        from mercia.ingest.vcf import read_vcf_chunks
        yield from read_vcf_chunks(path)
    else:
        yield read_source(kind, path, mapping, manifest, remove_technical_variation)


def read_ahead(chunks: Generator[Staged, None, None]) -> Iterator[Staged]:
    """``chunks`` with the next one read in a thread while the caller loads this one: a reader's DuckDB
    and Arrow work release the GIL, so reading and loading use both cores.  The reader must not touch
    the store (only the caller does).  Closed early (the load failed first), it waits for the read in
    flight, then closes ``chunks`` and so the file: no thread or handle outlives the load."""
    with closing(chunks), ThreadPoolExecutor(max_workers=1, thread_name_prefix="mercia-read-ahead") as pool:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk


def ingest(store: Store, kind: str, path: Path | str, org: str, mapping: str | Path | None = None,
           options: LoadOptions | None = None, on_step: Callable[[str], None] | None = None,
           manifest: Path | str | None = None, reid_store: Store | None = None,
           remove_technical_variation: bool = False) -> LoadSummary:
    """Read ``path`` as ``kind`` and load it for organisation ``org`` in one transaction.

    ``reid_store`` is the organisation's own store (never the research store): after the load, its
    re-identification key map (``mercia.trials.prescreen``) gets each patient's pseudonym, NHS number
    and local record id, so its care team can turn a trial worklist back into patients."""
    if reid_store is store:
        raise ValueError("the re-identification key map must live in the organisation's own store, "
                         "not in the research store")
    options = options or default_options(kind)
    if kind == "csv" and mapping is not None:
        from mercia.ingest.csv import load_mapping
        options.type_concept_id = load_mapping(mapping).get("type_concept_id", options.type_concept_id)
    if on_step:
        on_step(f"reading {kind} {Path(path).name}")
    persons: list[pa.Table] = []  # for the re-identification key map

    def prepared() -> Generator[Staged, None, None]:
        with closing(read_ahead(read_chunks(kind, path, mapping, manifest, remove_technical_variation))) as chunks:
            for number, staged in enumerate(chunks):
                if kind in MANIFEST_KINDS:
                    from mercia.vocab.metabolites import ensure_local_concepts
                    ensure_local_concepts(store, staged.codes(), staged.concept_names)
                if on_step:
                    on_step(f"loading {staged.read} records for {org}"
                            + (f" (chunk {number + 1})" if number else ""))
                if reid_store is not None:
                    persons.append(staged.persons.table())
                yield staged

    try:
        with closing(prepared()) as chunks:  # a load that fails first ends the read-ahead before its error goes on
            summary = load_staged(store, chunks, org, kind, options)
    except VcfFileError as exc:
        if exc.rejected is None:
            raise
        # a VCF that broke after part of it was loaded: the load rolled back; its reject is loaded alone
        summary = load_staged(store, exc.rejected, org, kind, options)
    if reid_store is not None:
        from mercia.trials.prescreen import record_extract_identities
        record_extract_identities(reid_store, org, pa.concat_tables(persons), options.pseudonymiser,
                                  options.allow_synthetic_nhs_numbers)
    return summary
