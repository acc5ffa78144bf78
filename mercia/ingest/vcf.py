"""VCF (``.vcf``, bgzipped ``.vcf.gz``, one or many samples) -> staged variant calls, read with cyvcf2 (htslib).

Each (sample, site, alternate allele) carrying that allele is one source record
``VCF/<file>/<sample>/<chrom>:<pos>:<ref>:<alt>``: a ``measurement`` (HGNC gene, genotype as value, the
OHDSI Genomic CDM convention described in mercia.ingest.genomics) and a ``variant_occurrence`` row.

- Multi-allelic sites are split into one record per ALT allele (as ``bcftools norm -m-``); the
  sample's genotype is rewritten for that allele: ``1`` = this allele, ``0`` = reference, ``.`` = another
  ALT allele or missing (the convention of ``vt decompose``).  After the split, bases shared by REF and
  ALT are trimmed (suffix first, then prefix, keeping one base; POS moves with the prefix).  Left-
  alignment needs the reference genome and is not done.
- Calls without this ALT allele (hom-ref, missing, other allele only) are read but are not records.
- Kept per call: GT, zygosity (heterozygous / homozygous / hemizygous), FORMAT DP and GQ, and the
  annotation of this ALT allele from VEP ``CSQ`` or SnpEff ``ANN`` (gene, consequence, HGVS c. and p.);
  ``INFO/GENE`` is the gene when neither is present.
- A file htslib cannot read to the end (a truncated ``.vcf.gz``, a corrupt record) is rejected as a whole:
  record ``VCF/<file>``, field ``file``, the htslib message; none of its calls are staged.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa

from mercia.ingest.staging import Staged, content_hash

VARIANT_SCHEMA = pa.schema([
    ("record", pa.string()), ("key", pa.string()), ("person_ref", pa.string()), ("assembly", pa.string()),
    ("chrom", pa.string()), ("pos", pa.int64()), ("ref", pa.string()), ("alt", pa.string()), ("gene", pa.string()),
    ("genotype", pa.string()), ("hgvs", pa.string()), ("hgvs_p", pa.string()), ("consequence", pa.string()),
    ("zygosity", pa.string()), ("read_depth", pa.int64()), ("genotype_quality", pa.float64()),
])
VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
_MISSING_INT = np.iinfo(np.int32).min


class VcfFileError(ValueError):
    """A VCF htslib cannot open or read through."""


def _annotation_fields(vcf) -> dict[str, list[str]]:
    """'CSQ' / 'ANN' -> field names, from each INFO header's ``Format:`` description."""
    out = {}
    for tag in ("CSQ", "ANN"):
        try:
            description = vcf.get_header_type(tag).get("Description", "")
        except KeyError:
            continue
        match = re.search(r"Format:\s*'?([^'\"]+)", description) or re.search(r"'([^']+)'", description)
        if match:
            out[tag] = [f.strip() for f in match.group(1).split("|")]
    return out


def _annotation_for(value: str | None, tag: str | None, names: list[str], alt: str, ref: str) -> dict:
    """The first annotation of ``alt`` (VEP writes deletions' allele as '-' or without the shared base)."""
    if not value or not tag:
        return {}
    vep_allele = alt[1:] if len(ref) and alt[:1] == ref[:1] and len(alt) != len(ref) else alt
    for entry in value.split(","):
        parts = entry.split("|")
        fields = dict(zip(names, parts))
        allele = fields.get("Allele", parts[0] if parts else "")
        if allele in (alt, vep_allele, vep_allele or "-") or (allele == "-" and not vep_allele):
            if tag == "CSQ":
                return {"gene": fields.get("SYMBOL") or None, "consequence": fields.get("Consequence") or None,
                        "hgvs": fields.get("HGVSc") or None, "hgvs_p": fields.get("HGVSp") or None}
            return {"gene": fields.get("Gene_Name") or None, "consequence": fields.get("Annotation") or None,
                    "hgvs": fields.get("HGVS.c") or None, "hgvs_p": fields.get("HGVS.p") or None}
    return {}


def _trim(pos: int, ref: str, alt: str) -> tuple[int, str, str]:
    while len(ref) > 1 and len(alt) > 1 and ref[-1] == alt[-1]:
        ref, alt = ref[:-1], alt[:-1]
    while len(ref) > 1 and len(alt) > 1 and ref[0] == alt[0]:
        ref, alt, pos = ref[1:], alt[1:], pos + 1
    return pos, ref, alt


def _format_field(site, tag: str) -> np.ndarray | None:
    try:
        return site.format(tag)
    except KeyError:  # the tag is not declared in the header
        return None


def _format_value(values: np.ndarray | None, sample: int) -> float | None:
    """A sample's FORMAT number, None when absent (htslib: int32 minimum or NaN)."""
    if values is None:
        return None
    value = values[sample, 0]
    if (values.dtype.kind == "f" and np.isnan(value)) or value == _MISSING_INT:
        return None
    return value.item()


def _phenopacket_date(path: Path) -> str | None:
    """A VCF without ##fileDate takes the date of the phenopacket that points at it (region layout:
    ``rare_disease/<ODS>/phenopackets/<id>.json`` beside ``vcf/<id>.vcf``)."""
    if not path.exists():
        return None
    created = orjson.loads(path.read_bytes()).get("metaData", {}).get("created")
    return created[:10] if created else None


class VcfReader:
    def __init__(self, extract: str):
        self.staged = Staged(extract)
        self.variants: dict[str, list] = {name: [] for name in VARIANT_SCHEMA.names}

    def read(self, path: Path, sample_person: dict[str, str] | None = None, when: str | None = None) -> Staged:
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.name.endswith(VCF_SUFFIXES))
        for file in files:
            self._file(file, sample_person or {}, when)
        self.staged.variants = pa.table(self.variants, schema=VARIANT_SCHEMA)
        return self.staged

    def _file(self, file: Path, sample_person: dict[str, str], when: str | None) -> None:
        from cyvcf2 import VCF

        file_record = f"VCF/{file.name}"
        try:
            vcf = VCF(str(file), lazy=True)
        except Exception as exc:  # noqa: BLE001 (cyvcf2 raises bare Exception for unreadable files)
            self.staged.read += 1
            # cyvcf2 names the full path: keep only the file's own name (an upload's folder is the server's)
            problem = str(exc).replace(str(file), file.name)[:200]
            self.staged.reject(file_record, "file", f"not a readable VCF: {problem}", None)
            return
        header = {m.group(1): m.group(2) for m in re.finditer(r"^##(\w+)=(.*)$", vcf.raw_header, re.MULTILINE)}
        assembly = header.get("reference") or None
        date = when or header.get("fileDate")
        if date and re.fullmatch(r"\d{8}", date):
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        annotations = _annotation_fields(vcf)
        samples = list(vcf.samples)
        refs = [sample_person.get(s, f"Subject/{s}") for s in samples]
        dates = [date or _phenopacket_date(file.parent.parent / "phenopackets" / f"{s}.json") for s in samples]
        header_lines = vcf.raw_header.count("\n")
        events, variants, read = {k: [] for k in ("record", "record_hash", "person_ref", "code", "start",
                                                   "value_code", "line")}, {k: [] for k in VARIANT_SCHEMA.names}, 0
        number, sites = header_lines, iter(vcf)
        try:
            while True:
                try:
                    site = next(sites)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 (htslib read errors surface as bare Exception)
                    self.staged.read += 1
                    self.staged.reject(file_record, "file", f"cannot read past line {number} (truncated or corrupt): "
                                       f"{str(exc).splitlines()[0][:200]}; file not loaded", None)
                    return
                number += 1
                read += len(samples) * len(site.ALT)
                self._site(site, number, samples, refs, dates, assembly, annotations, file.name, events, variants)
        finally:
            vcf.close()
        self.staged.read += read
        n = len(events["record"])
        self.staged.events.extend({**events, "kind": ["Measurement"] * n, "vocabulary": ["HGNC"] * n,
                                   "value_vocabulary": ["VCF GT"] * n, "qualifier": ["call"] * n}, n)
        for name, values in variants.items():
            self.variants[name].extend(values)

    def _site(self, site, number, samples, refs, dates, assembly, annotations, file, events, variants) -> None:
        genotypes = site.genotype.array() if samples else np.empty((0, 3), np.int16)
        ploidy = genotypes.shape[1] - 1
        alleles = genotypes[:, :ploidy]
        phased = genotypes[:, ploidy].astype(bool) if ploidy else np.zeros(0, bool)
        depth, quality = _format_field(site, "DP"), _format_field(site, "GQ")
        info_gene = site.INFO.get("GENE")
        tag = next((t for t in annotations if site.INFO.get(t)), None)
        annotation_value, names = (site.INFO.get(tag), annotations[tag]) if tag else (None, [])
        chrom = site.CHROM
        for index, raw_alt in enumerate(site.ALT, start=1):
            carriers = np.flatnonzero((alleles == index).any(axis=1))
            if carriers.size == 0:
                continue
            pos, ref, alt = _trim(site.POS, site.REF, raw_alt)
            note = _annotation_for(annotation_value, tag, names, raw_alt, site.REF)
            gene = note.get("gene") or info_gene
            for s in carriers:
                calls = alleles[s]
                called = [("1" if a == index else "0" if a == 0 else ".") for a in calls if a != -2]
                genotype = ("|" if phased[s] else "/").join(called)
                ones = called.count("1")
                zygosity = "hemizygous" if len(called) == 1 else "homozygous" if ones == len(called) else \
                    "heterozygous"
                record = f"VCF/{file}/{samples[s]}/{chrom}:{pos}:{ref}:{alt}"
                dp, gq = _format_value(depth, s), _format_value(quality, s)
                digest = content_hash(f"{chrom}\t{pos}\t{ref}\t{alt}\t{genotype}\t{dp}\t{gq}\t{note}".encode())
                for k, v in (("record", record), ("record_hash", digest), ("person_ref", refs[s]),
                             ("code", gene or f"{chrom}:{pos}"), ("start", dates[s]), ("value_code", genotype),
                             ("line", number)):
                    events[k].append(v)
                for k, v in (("record", record), ("key", "call"), ("person_ref", refs[s]), ("assembly", assembly),
                             ("chrom", chrom), ("pos", pos), ("ref", ref), ("alt", alt), ("gene", gene),
                             ("genotype", genotype), ("hgvs", note.get("hgvs")), ("hgvs_p", note.get("hgvs_p")),
                             ("consequence", note.get("consequence")), ("zygosity", zygosity),
                             ("read_depth", None if dp is None else int(dp)),
                             ("genotype_quality", None if gq is None else float(gq))):
                    variants[k].append(v)


def read_vcf(path: Path | str, sample_person: dict[str, str] | None = None) -> Staged:
    return VcfReader(Path(path).name).read(Path(path), sample_person)
