"""Benchmark metabolomics and genomics loads into a fresh DuckDB file.

    .venv/bin/python benchmarks/metabolomics.py --nmr-samples 10000 --vcf-samples 20 --vcf-sites 20000

1. NMR: a synthetic UK Biobank-style wide file (``mercia.synth.metabolomics``: N samples x the 249 UK Biobank
   biomarkers, 4 sample-QC columns) with its manifest (one person per sample) is written, then loaded with
   ``ingest(store, "nmr", ...)``: read + derivation check + pseudonymise + map + load.  Counted: measurement rows
   written, seconds, rows per second, peak resident memory of this process.
2. VCF: a synthetic bgzipped multi-sample VCF (S samples x V sites, every tenth site bi-allelic ALT pair so the
   split runs, genotypes drawn at 5% alternate allele frequency) loaded with ``ingest(store, "vcf", ...)``
   after the samples' phenopackets.  Counted: compressed bytes, calls read, variant rows written, seconds.

The issue's targets (1,000,000 x 249 in <= 10 minutes, a 3 GB VCF in <= 5 minutes) are far above what this
shared 2-core machine can be asked to run; the JSON says what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

RESULT = Path(__file__).resolve().parent / "results" / "metabolomics.json"
KEY = os.urandom(32)  # one throwaway pseudonymisation key per run (loads of one run must share it)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def options():
    from mercia.ingest.load import LoadOptions
    from mercia.privacy.pseudonym import Pseudonymiser
    return LoadOptions(Pseudonymiser(KEY))


def nmr(samples: int, workdir: Path) -> dict:
    from mercia.cdm import Store
    from mercia.ingest.service import ingest
    from mercia.synth.metabolomics import write_nmr_study

    start = time.perf_counter()
    write_nmr_study(workdir / "nmr", samples, seed=1)
    written = time.perf_counter() - start
    store = Store(str(workdir / "nmr.duckdb"))
    start = time.perf_counter()
    summary = ingest(store, "nmr", workdir / "nmr" / "nmr_wide.csv", "NMR01", options=options(),
                     manifest=workdir / "nmr" / "manifest.csv")
    elapsed = time.perf_counter() - start
    rows = store.query_one("SELECT count(*) FROM measurement")
    store.close()
    return {"samples": samples, "biomarkers": 249, "file_mb": round((workdir / "nmr" / "nmr_wide.csv").stat().st_size
                                                                   / 1e6, 1),
            "generate_seconds": round(written, 1), "load_seconds": round(elapsed, 1), "measurement_rows": rows,
            "rows_per_second": round(rows / elapsed), "rejected": summary.rejected, "peak_rss_mb": peak_rss_mb()}


def write_vcf(path: Path, samples: int, sites: int, seed: int = 0) -> None:
    import numpy as np
    rng = np.random.default_rng(seed)
    names = [f"V{i:05d}" for i in range(samples)]
    plain = path.with_suffix("")
    with plain.open("w") as out:
        out.write("##fileformat=VCFv4.2\n##fileDate=20240301\n##reference=GRCh38\n##contig=<ID=chr1,length=248956422>\n"
                  '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene">\n'
                  '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                  '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
                  "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(names) + "\n")
        for site in range(sites):
            multi = site % 10 == 0
            alleles = (rng.random((samples, 2)) < 0.05).astype(int)
            if multi:
                alleles *= rng.integers(1, 3, (samples, 2))
            calls = "\t".join(f"{a}/{b}:30" for a, b in alleles)
            out.write(f"chr1\t{1000 + site * 7}\t.\tA\t{'T,G' if multi else 'T'}\t50\tPASS\tGENE=G{site // 50}"
                      f"\tGT:DP\t{calls}\n")
    from cyvcf2 import VCF, Writer
    reader = VCF(str(plain))
    writer = Writer(str(path), reader, mode="wz")
    for record in reader:
        writer.write_record(record)
    writer.close()
    plain.unlink()


def vcf(samples: int, sites: int, workdir: Path) -> dict:
    import json as js

    from mercia.cdm import Store
    from mercia.ingest.service import ingest

    path = workdir / "cohort.vcf.gz"
    write_vcf(path, samples, sites)
    packets = workdir / "phenopackets"
    packets.mkdir()
    for i in range(samples):
        pid = f"V{i:05d}"
        (packets / f"{pid}.json").write_text(js.dumps({
            "id": pid, "subject": {"id": pid, "dateOfBirth": "1990-01-01T00:00:00Z", "sex": "FEMALE"},
            "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
            "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "bench", "phenopacketSchemaVersion": "2.0"}}))
    store = Store(str(workdir / "vcf.duckdb"))
    ingest(store, "phenopackets", packets, "R9G", options=options())
    start = time.perf_counter()
    summary = ingest(store, "vcf", path, "R9G", options=options())
    elapsed = time.perf_counter() - start
    rows = store.query_one("SELECT count(*) FROM variant_occurrence")
    store.close()
    return {"samples": samples, "sites": sites, "bgzip_mb": round(path.stat().st_size / 1e6, 2),
            "calls_read": summary.read, "variant_rows": rows, "rejected": summary.rejected, "load_seconds": round(elapsed, 1),
            "calls_read_per_second": round(summary.read / elapsed), "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nmr-samples", type=int, default=10_000)
    parser.add_argument("--vcf-samples", type=int, default=20)
    parser.add_argument("--vcf-sites", type=int, default=20_000)
    args = parser.parse_args()
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        result["nmr"] = nmr(args.nmr_samples, Path(tmp))
        print(json.dumps(result["nmr"]))
        result["vcf"] = vcf(args.vcf_samples, args.vcf_sites, Path(tmp))
        print(json.dumps(result["vcf"]))
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
