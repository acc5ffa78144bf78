"""VCF loads pinned row for row: every table a load writes (measurement, variant_occurrence, provenance,
rejects, persons, observation periods...) as digests, for the first load, unchanged resend, corrected
resend, samples without a person, an implausible file date, streamed chunks.

The clinical rows (each measurement with its variant_occurrence, ids left out: ``_clinical``) are pinned
from the per-call record model (8b2966c, which wrote what the per-call event path of 898a365 wrote) and
must not change.  The other digests and the summaries were taken again on 6 December when a VCF sample
became one record per file: fewer records, one reject per rejected sample instead of one per call,
measurement and variant ids in (sample, file order) and the call's ``source_line`` beside its variant.  On
7 December the ids became the reading order (no sort by sample): the measurement, variant_occurrence and
provenance digests were taken again (the same row counts; every other table, the summaries and the clinical
rows unchanged, and the provenance rows joined to their measurement or variant, ids left out, identical to the
code before on both engines)."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import random
from pathlib import Path

from tests.ingest.test_vcf import BODY, HEADER, bgzip

PINS = Path(__file__).parent / "vcf_pinned.json"
PINNED_ON = dt.date(2026, 12, 5)


def _canonical(value) -> str:
    if isinstance(value, float | decimal.Decimal):
        return repr(round(float(value), 6))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return repr(value)


def _digests(store) -> dict[str, list]:
    """Per non-empty table: [row count, SHA-256 of its sorted canonical rows] (load log left out)."""
    from tests.ingest.conftest import take_snapshot

    out = {}
    for table, rows in take_snapshot(store).items():
        lines = sorted("\t".join(_canonical(v) for v in row) for row in rows)
        out[table] = [len(lines), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]]
    return out


def _clinical(store) -> str:
    """The SHA-256 of every measurement with its variant_occurrence, sorted, without ids or source line."""
    variants = {row.pop("measurement_id"): row
                for row in store.query_arrow("SELECT * FROM variant_occurrence").to_pylist()}
    lines = []
    for row in store.query_arrow("SELECT * FROM measurement").to_pylist():
        variant = variants.get(row.pop("measurement_id"), {})
        for column in ("variant_occurrence_id", "person_id", "source_line"):
            variant.pop(column, None)
        lines.append("\t".join(_canonical(v) for v in [*row.values(), *sorted(variant.items())]))
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:16]


def _summary(summary) -> list[int]:
    return [summary.read, summary.records, summary.loaded, summary.unchanged, summary.rejected, summary.withheld,
            summary.changed]


def _packets(folder: Path, ids: list[str]) -> Path:
    folder.mkdir()
    for pid in ids:
        subject = {"id": pid, "dateOfBirth": "2001-04-02T00:00:00Z", "sex": "MALE"}
        (folder / f"{pid}.json").write_text(json.dumps({
            "id": pid, "subject": subject, "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
            "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "t", "phenopacketSchemaVersion": "2.0"}}))
    return folder


def _random_vcf(path: Path, samples: int = 25, sites: int = 300) -> None:
    """Multi-allelic, haploid and diploid, phased, missing alleles and DP, CSQ on some sites."""
    rng = random.Random(11)
    names = [f"S{i}" for i in range(samples)]
    lines = []
    for site in range(sites):
        ref = rng.choice(["A", "AC", "ACG"])
        alts = rng.sample(["C", "G", "T", "AGG", ref + "T"], rng.randint(1, 3))  # distinct after trimming
        calls = []
        for _ in names:
            ploidy = 1 if rng.random() < 0.2 else 2
            alleles = [rng.choice([".", "0", "0", *[str(i) for i in range(1, len(alts) + 1)]]) for _ in range(ploidy)]
            depth = "." if rng.random() < 0.1 else str(rng.randint(1, 90))
            calls.append(("|" if rng.random() < 0.3 else "/").join(alleles) + f":{depth}:{site % 99}")
        info = ("CSQ=" + ",".join(f"{a[1:] if a[:1] == ref[:1] and len(a) != len(ref) else a}|missense_variant|"
                                  f"MODERATE|G{site % 7}|ENSG{site}|c.{site}A>{a}|p.X{site}" for a in alts)
                if site % 3 else f"GENE=G{site % 5}")
        lines.append(f"chr17\t{2000 + 3 * site}\t.\t{ref}\t{','.join(alts)}\t50\tPASS\t{info}\tGT:DP:GQ\t"
                     + "\t".join(calls) + "\n")
    path.write_text(HEADER.replace("\tP1\tP2\tP3\n", "\t" + "\t".join(names) + "\n") + "".join(lines))


def _family(folder: Path, body: str = BODY, header: str = HEADER) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "plain.vcf").write_text(header + body)
    bgzip(folder / "plain.vcf", folder / "family.vcf.gz")
    (folder / "plain.vcf").unlink()
    return folder / "family.vcf.gz"


def _scenarios(store, load, tmp_path: Path, monkeypatch) -> dict:
    import mercia.ingest.load as loading
    import mercia.ingest.staging as staging
    import mercia.ingest.vcf as vcf

    # the plausible-date window ends tomorrow, and reject reasons name it: the pins hold the day they were made
    for module in (staging, loading):
        monkeypatch.setattr(module, "latest_date", lambda: PINNED_ON + dt.timedelta(days=1))
    out = {}
    load(store, "phenopackets", _packets(tmp_path / "pp", ["P1", "P2", "P3"]), "R9G")
    family = _family(tmp_path / "a")
    out["family"] = [_summary(load(store, "vcf", family, "R9G")), _digests(store), _clinical(store)]
    out["family_again"] = [_summary(load(store, "vcf", family, "R9G")), _digests(store), _clinical(store)]
    corrected = _family(tmp_path / "b", BODY.replace("0/1:25:60", "0/1:26:60").replace("1:12:40", "1:12:41"))
    out["family_corrected"] = [_summary(load(store, "vcf", corrected, "R9G")), _digests(store), _clinical(store)]
    ancient = _family(tmp_path / "c", header=HEADER.replace("20240301", "18000101"))
    out["family_implausible_date"] = [_summary(load(store, "vcf", ancient, "R9G")), _digests(store), _clinical(store)]
    # 25 samples, S23 and S24 without a phenopacket; streamed in chunks
    load(store, "phenopackets", _packets(tmp_path / "pp2", [f"S{i}" for i in range(23)]), "R9G")
    _random_vcf(tmp_path / "rand.vcf")
    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 700)
    monkeypatch.setattr(vcf, "BLOCK_SITES", 50)
    for name in ("random_streamed", "random_again"):
        out[name] = [_summary(load(store, "vcf", tmp_path / "rand.vcf", "R9G")), _digests(store), _clinical(store)]
    return out


def test_vcf_loads_write_the_pinned_rows(heavy_store, load, tmp_path, monkeypatch):
    """PostgreSQL in the slow tier (eight loads and seven snapshots: ~1 minute there)."""
    store = heavy_store
    got = _scenarios(store, load, tmp_path, monkeypatch)
    assert got == json.loads(PINS.read_text())[store.dialect]
