"""Benchmark metabolomics and genomics loads into a fresh DuckDB file.

    .venv/bin/python benchmarks/metabolomics.py --nmr-samples 10000 --vcf-samples 20 --vcf-sites 20000

1. NMR: a synthetic UK Biobank-style wide file (``mercia.synth.metabolomics``: N samples x the 249 UK Biobank
   biomarkers, 4 sample-QC columns) with its manifest (one person per sample) is written, then loaded with
   ``ingest(store, "nmr", ...)`` in a fresh process: read + QC exclusion + derivation check + pseudonymise + map +
   load, streamed in chunks of ``CHUNK_SAMPLES`` samples inside one transaction (the next chunk is read in a
   thread while this one loads, so only their sum is timed; CPU seconds count both threads; skipped with
   ``--nmr-samples 0``; ``--nmr-study DIR`` keeps the written study there and reuses it on a later run of the
   same size, as the 1,000,000-sample file takes ~15 minutes to write; ``--generate-only`` writes it and stops).  Counted: measurement rows
   written; wall and CPU seconds of the whole ingest (the machine is shared, so wall time varies with other
   work: the 1-minute load average before and after is recorded); the load process's peak resident memory
   (generation excluded), its CPU seconds and RSS as each chunk starts (also printed to stderr as it goes),
   and its whole CPU (``load_process_cpu_seconds``: start-up and imports included); its demand for cores
   (``DemandSampler``: CPU seconds used while 1, 2 or 3+ of its threads were runnable) and from it the
   projected wall time on a quiet 2-core machine, a projection, not a measurement.
2. VCF: a synthetic bgzipped VCF of one of two shapes (``--vcf-shape``, see ``write_vcf``): ``cohort``, S
   samples x V sites, every tenth site bi-allelic ALT pair so the split runs, genotypes drawn at 5% alternate
   allele frequency; ``trio``, the rare-disease shape, a carrier at every site and a VEP CSQ annotation of
   three transcripts.  Loaded (streamed in chunks) with ``ingest(store, "vcf", ...)``
   after the samples' phenopackets (skipped with ``--vcf-samples 0``).  Counted: compressed bytes, calls read
   (samples x ALT alleles per site), variant rows written (carrier calls), wall and CPU seconds (process, all
   threads, and its children waited for: the reader's bcftools) of the ingest, calls per compressed byte
   (this file's density: synthetic genotypes compress far better than real ones, so a 3 GB real file holds
   fewer calls than 3 GB of this one); and, before the
   ingest, the CPU seconds of reading alone (``vcf_reading_floor``: cyvcf2 over the sites, with genotype
   arrays and DP, and Mercia's reader without the load); the ingest's CPU seconds per compressed GB of the
   shape (x3: a 3 GB file of it, if its cost stays linear); the peak RSS of the whole benchmark process
   (not its bcftools child's).
   ``--vcf-file`` loads a trio file written before (the ~3 GB one) instead, without the reading floor.

The issue's targets: 1,000,000 x 249 in <= 10 minutes (<= 1,200 CPU-s on 2 cores) with <= 4 GB; a 3 GB VCF in
<= 5 minutes.  The JSON says what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
KEY = os.urandom(32)  # one throwaway pseudonymisation key per run (loads of one run must share it)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def options():
    from mercia.ingest.load import LoadOptions
    from mercia.privacy.pseudonym import Pseudonymiser
    return LoadOptions(Pseudonymiser(KEY))


def cpu_seconds() -> float:
    """This process's CPU and that of its children waited for (the VCF reader's bcftools runs in one)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return round(int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


class DemandSampler:
    """Every 20 ms, how many of this process's threads are runnable (``/proc`` state R: running or waiting
    for a core) and the process CPU used since the last look.  A thread that wants a core is runnable whatever
    else the machine runs, so this is the load's own demand for cores: CPU used while n threads wanted to run
    would take 1/min(n, 2) s on two free cores, and the sum of that over the load is its projected wall time
    on a quiet 2-core machine (a projection: the other processes still change how the phases interleave)."""

    def __init__(self, interval: float = 0.02):
        import threading
        self.interval, self.stopped = interval, threading.Event()
        self.cpu_by_runnable: dict[int, float] = {}
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _watch(self) -> None:
        import threading
        me, last = str(threading.get_native_id()), time.process_time()
        while not self.stopped.wait(self.interval):
            runnable = 0
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/stat") as handle:
                        runnable += tid != me and handle.read().rsplit(")", 1)[1].split()[0] == "R"
                except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile (both seen)
                    pass
            now = time.process_time()
            self.cpu_by_runnable[min(runnable, 3)] = self.cpu_by_runnable.get(min(runnable, 3), 0.0) + now - last
            last = now

    def report(self) -> dict:
        """``sampled_cpu_seconds`` is the CPU the samples cover: the load's whole CPU unless the sampler stopped
        early (then the projection covers only that part)."""
        projected = sum(cpu / max(1, min(n, 2)) for n, cpu in self.cpu_by_runnable.items())
        return {"cpu_s_by_runnable_threads": {str(n): round(c, 1) for n, c in sorted(self.cpu_by_runnable.items())},
                "sampled_cpu_seconds": round(sum(self.cpu_by_runnable.values()), 1),
                "projected_quiet_2core_wall_seconds": round(projected, 1)}


def _nmr_load(workdir: Path, study: Path, key: bytes, out) -> None:
    """Child process: one NMR ingest, reporting its phases' wall and CPU seconds, its demand for cores
    (``DemandSampler``) and its own peak RSS."""
    from mercia.cdm import Store
    from mercia.ingest.load import LOAD_MEMORY_LIMIT, LoadOptions
    from mercia.ingest.service import ingest
    from mercia.privacy.pseudonym import Pseudonymiser

    marks = []

    def step(text: str) -> None:
        marks.append((text.split()[0], time.perf_counter(), time.process_time(), current_rss_mb()))
        if text.startswith("loading"):  # progress of a long run, to stderr as it goes
            print(f"chunk {sum(m[0] == 'loading' for m in marks)}: {round(marks[-1][2] - marks[0][2], 1)} CPU-s, "
                  f"{marks[-1][3]} MB", file=sys.stderr, flush=True)

    store = Store(str(workdir / "nmr.duckdb"))
    with DemandSampler() as demand:
        step("start")
        summary = ingest(store, "nmr", study / "nmr_wide.csv", "NMR01", options=LoadOptions(Pseudonymiser(key)),
                         manifest=study / "manifest.csv", on_step=step)
        step("done")
    rows = store.query_one("SELECT count(*) FROM measurement")
    store.close()
    at = {name: (wall, cpu, rss) for name, wall, cpu, rss in marks}
    chunks = [(round(cpu - at["start"][1], 1), rss) for name, _, cpu, rss in marks if name == "loading"]
    out.put({"measurement_rows": rows, "rejected": summary.rejected,
             "chunks": len(chunks), "store_memory_limit": LOAD_MEMORY_LIMIT,
             # (CPU seconds so far, RSS MB) as each chunk starts loading, at most ~40 of them
             "cpu_s_and_rss_mb_at_chunk_start": chunks[::max(1, len(chunks) // 40)] + chunks[-1:],
             "total_seconds": round(at["done"][0] - at["start"][0], 1),
             "total_cpu_seconds": round(at["done"][1] - at["start"][1], 1),
             "rss_at_end_mb": at["done"][2], "peak_rss_mb": peak_rss_mb(), **demand.report()})


def _study_samples(study: Path) -> int | None:
    """Samples of a study written before (its manifest's rows), None when there is none."""
    if not (study / "manifest.csv").exists() or not (study / "nmr_wide.csv").exists():
        return None
    with (study / "manifest.csv").open("rb") as handle:
        return sum(1 for _ in handle) - 1


def write_study(samples: int, study: Path) -> bool:
    """Write the study into ``study`` unless it holds one of this size already (same seed); True if written."""
    from mercia.synth.metabolomics import write_nmr_study

    if _study_samples(study) == samples:
        return False
    write_nmr_study(study, samples, seed=1)
    return True


def nmr(samples: int, workdir: Path, study: Path | None) -> dict:
    """Write the study (or reuse ``study`` when it holds one of this size, written with the same seed), then
    load it in a fresh process so that its peak RSS is the load's alone."""
    import multiprocessing

    from mercia.ingest.nmr import CHUNK_SAMPLES

    study = study or workdir / "nmr"
    start = time.perf_counter()
    reused = not write_study(samples, study)
    written = time.perf_counter() - start
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_nmr_load, args=(workdir, study, KEY, out))
    child.start()
    measured = out.get()
    child.join()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured["load_process_cpu_seconds"] = round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime
                                                 - cpu_before.ru_stime, 1)
    rows = measured["measurement_rows"]
    return {"samples": samples, "biomarkers": 249, "chunk_samples": CHUNK_SAMPLES,
            "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "file_mb": round((study / "nmr_wide.csv").stat().st_size / 1e6, 1),
            "study_reused": reused, "generate_seconds": round(written, 1), **measured,
            "rows_per_second": round(rows / measured["total_seconds"]),
            "rows_per_cpu_second": round(rows / measured["total_cpu_seconds"]),
            # CPU seconds / wall seconds: cores the load kept busy here, and on a quiet machine (projected)
            "parallelism": round(measured["total_cpu_seconds"] / measured["total_seconds"], 2),
            "projected_quiet_parallelism": round(measured["sampled_cpu_seconds"]
                                                 / measured["projected_quiet_2core_wall_seconds"], 2)}


CONSEQUENCES = ("missense_variant", "synonymous_variant", "intron_variant", "stop_gained", "frameshift_variant",
                "splice_region_variant", "3_prime_UTR_variant", "upstream_gene_variant")


def write_vcf(path: Path, samples: int, sites: int, seed: int = 0, shape: str = "cohort") -> None:
    """A bgzipped VCF.  ``cohort``: S samples, genotypes at 5% ALT frequency (most calls hom-ref), every
    tenth site with two ALT alleles, GT:DP, INFO/GENE.  ``trio``: the rare-disease shape (a proband and
    parents from one WGS run): every site has a carrier, GT:AD:DP:GQ, and a VEP CSQ annotation of three
    transcripts (Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|EXON|HGVSc|HGVSp|...)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    names = [f"V{i:05d}" for i in range(samples)]
    plain = path.with_suffix("")
    trio = shape == "trio"
    csq = ("Allele|Consequence|IMPACT|SYMBOL|Gene|Feature_type|Feature|BIOTYPE|EXON|INTRON|HGVSc|HGVSp|"
           "cDNA_position|CDS_position|Protein_position|Amino_acids|Codons|Existing_variation|DISTANCE|STRAND|"
           "gnomADg_AF|CLIN_SIG")
    with plain.open("w") as out:
        out.write("##fileformat=VCFv4.2\n##fileDate=20240301\n##reference=GRCh38\n##contig=<ID=chr1,length=248956422>\n"
                  '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene">\n'
                  f'##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
                  f'Format: {csq}">\n'
                  '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
                  '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allelic depths">\n'
                  '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
                  '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">\n'
                  "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(names) + "\n")
        position = 1000
        for site in range(sites):
            multi = site % 10 == 0
            if trio:  # each sample 0/0, 0/1 or 1/1 at genome-like proportions, at least one carrier
                alleles = np.sort(rng.choice(2, (samples, 2), p=[0.55, 0.45]), axis=1)
                if not alleles.any():
                    alleles[rng.integers(samples), 1] = 1
            else:
                alleles = (rng.random((samples, 2)) < 0.05).astype(int)
                if multi:
                    alleles *= rng.integers(1, 3, (samples, 2))
            position += int(rng.integers(1, 600)) if trio else 7
            if trio:
                depth = rng.integers(10, 60, samples)
                calls = "\t".join(f"{a}/{b}:{d - d * (a + b) // 4},{d * (a + b) // 4}:{d}:{int(q)}"
                                   for (a, b), d, q in zip(alleles, depth, rng.integers(20, 99, samples)))
                gene, transcript = f"GENE{site // 40}", 100000 + site // 40
                note = ",".join(
                    f"T|{CONSEQUENCES[(site + k) % len(CONSEQUENCES)]}|MODERATE|{gene}|ENSG00000{transcript:06d}|"
                    f"Transcript|ENST00000{transcript + k:06d}.{k + 1}|protein_coding|{site % 12 + 1}/12||"
                    f"ENST00000{transcript + k:06d}.{k + 1}:c.{site % 3000 + 1}A>T|"
                    f"ENSP00000{transcript + k:06d}.{k + 1}:p.Lys{site % 1000 + 1}Asn|{site % 3000 + 60}|"
                    f"{site % 3000 + 1}|{site % 1000 + 1}|K/N|aaA/aaT|rs{rng.integers(1, 10**9)}||1|"
                    f"{rng.random() / 100:.6f}|" for k in range(3))
                out.write(f"chr1\t{position}\t.\tA\tT\t{int(rng.integers(30, 3000))}\tPASS\tCSQ={note}"
                          f"\tGT:AD:DP:GQ\t{calls}\n")
            else:
                calls = "\t".join(f"{a}/{b}:30" for a, b in alleles)
                out.write(f"chr1\t{position}\t.\tA\t{'T,G' if multi else 'T'}\t50\tPASS\tGENE=G{site // 50}"
                          f"\tGT:DP\t{calls}\n")
    from cyvcf2 import VCF, Writer
    reader = VCF(str(plain))
    writer = Writer(str(path), reader, mode="wz")
    for record in reader:
        writer.write_record(record)
    writer.close()
    plain.unlink()


def vcf(samples: int, sites: int, workdir: Path, shape: str, given: Path | None = None) -> dict:
    import json as js

    from mercia.cdm import Store
    from mercia.ingest.service import ingest

    path = given or workdir / f"{shape}.vcf.gz"
    if not given:
        write_vcf(path, samples, sites, shape=shape)
    packets = workdir / "phenopackets"
    packets.mkdir()
    for i in range(samples):
        pid = f"V{i:05d}"
        (packets / f"{pid}.json").write_text(js.dumps({
            "id": pid, "subject": {"id": pid, "dateOfBirth": "1990-01-01T00:00:00Z", "sex": "FEMALE"},
            "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
            "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "bench", "phenopacketSchemaVersion": "2.0"}}))
    floor = None if given else vcf_reading_floor(path)
    store = Store(str(workdir / "vcf.duckdb"))
    ingest(store, "phenopackets", packets, "R9G", options=options())
    load_before = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), cpu_seconds()
    summary = ingest(store, "vcf", path, "R9G", options=options())
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    rows = store.query_one("SELECT count(*) FROM variant_occurrence")
    closing, closing_cpu = time.perf_counter(), cpu_seconds()
    store.close()
    closing, closing_cpu = time.perf_counter() - closing, cpu_seconds() - closing_cpu
    size = path.stat().st_size
    return {"shape": shape, "samples": samples, "sites": sites, "file": str(given) if given else None,
            "bgzip_mb": round(size / 1e6, 2),
            "load_average_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "calls_read": summary.read, "variant_rows": rows, "rejected": summary.rejected, "load_seconds": round(elapsed, 1),
            "load_cpu_seconds": round(cpu, 1),
            # not in the load's figures: the store's close, after the load committed (its rows durable and
            # queryable), runs DuckDB's checkpoint of the new row groups
            "close_seconds": round(closing, 1), "close_cpu_seconds": round(closing_cpu, 1),
            "calls_read_per_second": round(summary.read / elapsed),
            "calls_read_per_cpu_second": round(summary.read / cpu),
            "calls_per_bgzip_byte": round(summary.read / size, 2),
            "variant_rows_per_cpu_second": round(rows / cpu),
            # the ingest's CPU per compressed GB of this shape: x3 is what a 3 GB file of it would take
            "load_cpu_seconds_per_bgzip_gb": round(cpu / (size / 1e9)),
            "reading_cpu_seconds": floor, "peak_rss_mb_whole_benchmark_process": peak_rss_mb()}


def vcf_reading_floor(path: Path) -> dict:
    """CPU seconds of reading the file alone: cyvcf2 iterating its sites, then also taking each site's
    genotype array and FORMAT/DP (what any reader of calls must do), then Mercia's reader streaming its chunks
    (no load)."""
    from collections import deque

    from cyvcf2 import VCF

    from mercia.ingest.vcf import read_vcf_chunks

    def iterate(fields: bool) -> None:
        for site in VCF(str(path)):
            if fields:
                site.genotype.array()
                site.format("DP")

    out = {}
    for name, work in (("cyvcf2_sites", lambda: iterate(False)), ("cyvcf2_sites_genotypes_dp", lambda: iterate(True)),
                       ("mercia_reader", lambda: deque(read_vcf_chunks(path), maxlen=0))):
        cpu = cpu_seconds()
        work()
        out[name] = round(cpu_seconds() - cpu, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nmr-samples", type=int, default=10_000)
    parser.add_argument("--nmr-study", default=None,
                        help="folder for the NMR study: reused when it holds one of --nmr-samples samples (written "
                             "by an earlier run; same seed), else written there and kept")
    parser.add_argument("--generate-only", action="store_true",
                        help="only write the NMR study into --nmr-study (so that a later run can time the load alone)")
    parser.add_argument("--vcf-samples", type=int, default=20)
    parser.add_argument("--vcf-sites", type=int, default=20_000)
    parser.add_argument("--vcf-file", default=None,
                        help="load this VCF (written before, samples V00000...) instead of writing one")
    parser.add_argument("--vcf-shape", choices=("cohort", "trio"), default="cohort",
                        help="cohort: many samples, few carriers; trio: 3 samples, VEP CSQ, a carrier at every site")
    args = parser.parse_args()
    if args.generate_only:
        if not args.nmr_study:
            parser.error("--generate-only needs --nmr-study")
        write_study(args.nmr_samples, Path(args.nmr_study))
        return
    import mercia
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "mercia": str(Path(mercia.__file__).parent),
              "run_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.nmr_samples:
            result["nmr"] = nmr(args.nmr_samples, Path(tmp), args.nmr_study and Path(args.nmr_study))
            print(json.dumps(result["nmr"]))
        if args.vcf_samples:
            result["vcf"] = vcf(args.vcf_samples, args.vcf_sites, Path(tmp), args.vcf_shape,
                                args.vcf_file and Path(args.vcf_file))
            print(json.dumps(result["vcf"]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"metabolomics-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
