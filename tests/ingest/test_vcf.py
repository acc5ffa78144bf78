"""VCF -> variant_occurrence: bgzip, multi-allelic split, multi-sample, CSQ/ANN, DP/GQ, truncated files."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mercia.ingest.staging import Staged
from mercia.ingest.vcf import read_vcf

CSQ_HEADER = ('##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence annotations from Ensembl VEP. '
              'Format: Allele|Consequence|IMPACT|SYMBOL|Gene|HGVSc|HGVSp">\n')
ANN_HEADER = ('##INFO=<ID=ANN,Number=.,Type=String,Description="Functional annotations: \'Allele | Annotation | '
              'Annotation_Impact | Gene_Name | Gene_ID | HGVS.c | HGVS.p\' ">\n')
HEADER = ("##fileformat=VCFv4.2\n##fileDate=20240301\n##reference=GRCh38\n##contig=<ID=chr17,length=83257441>\n"
          "##contig=<ID=chrX,length=156040895>\n" + CSQ_HEADER + ANN_HEADER +
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
          '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">\n'
          '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Genotype quality">\n'
          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\tP2\tP3\n")
BODY = (
    # multi-allelic deletion site in TP53, annotated by VEP (deletion alleles without the shared base)
    "chr17\t7675088\t.\tCAG\tC,CG\t50\tPASS\tCSQ=-|inframe_deletion|MODERATE|TP53|ENSG00000141510|"
    "ENST00000269305.9:c.5_6del|ENSP00000269305.4:p.Ala2del,G|frameshift_variant|HIGH|TP53|ENSG00000141510|"
    "ENST00000269305.9:c.6del|ENSP00000269305.4:p.Ala2fs\tGT:DP:GQ\t1/2:31:99\t0/1:25:60\t0/0:40:99\n"
    # SnpEff-annotated SNV, hemizygous on X for P3
    "chrX\t31478000\t.\tG\tA\t60\tPASS\tANN=A|stop_gained|HIGH|DMD|ENSG00000198947|c.100C>T|p.Gln34*\t"
    "GT:DP:GQ\t0/0:30:99\t0/0:.:.\t1:12:40\n")


def _phenopackets(folder, ids):
    folder.mkdir()
    for pid in ids:
        packet = {"id": pid, "subject": {"id": pid, "dateOfBirth": "2001-04-02T00:00:00Z", "sex": "MALE"},
                  "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
                  "metaData": {"created": "2024-01-01T00:00:00Z", "createdBy": "t", "phenopacketSchemaVersion": "2.0"}}
        (folder / f"{pid}.json").write_text(json.dumps(packet))


def bgzip(source, target):
    from cyvcf2 import VCF, Writer
    reader = VCF(str(source))
    writer = Writer(str(target), reader, mode="wz")
    for site in reader:
        writer.write_record(site)
    writer.close()
    reader.close()


@pytest.fixture
def vcf_gz(tmp_path):
    (tmp_path / "plain.vcf").write_text(HEADER + BODY)
    bgzip(tmp_path / "plain.vcf", tmp_path / "family.vcf.gz")
    (tmp_path / "plain.vcf").unlink()
    return tmp_path / "family.vcf.gz"


def _carriers(staged):
    """The staged calls with an allele (each sample is also staged once without one, to be read as its record)."""
    return staged.calls.filter(pc.is_valid(staged.calls.column("alt")))


def test_bgzip_multisample_multiallelic_split_with_annotations(vcf_gz):
    staged = read_vcf(vcf_gz)
    samples = staged.calls.filter(pc.is_null(staged.calls.column("alt")))
    assert samples.select(["record", "line"]).to_pylist() == [  # the #CHROM line (the header's 12th) names them
        {"record": f"VCF/family.vcf.gz/{p}", "line": 12} for p in ("P1", "P2", "P3")]
    variants = {(r["person_ref"], r["pos"], r["ref"], r["alt"]): r for r in _carriers(staged).to_pylist()}
    assert set(variants) == {("Subject/P1", 7675088, "CAG", "C"), ("Subject/P1", 7675088, "CA", "C"),
                             ("Subject/P2", 7675088, "CAG", "C"), ("Subject/P3", 31478000, "G", "A")}
    first = variants[("Subject/P1", 7675088, "CAG", "C")]
    assert (first["genotype"], first["zygosity"], first["read_depth"], first["genotype_quality"]) == \
        ("1/.", "heterozygous", 31, 99.0)
    assert (first["gene"], first["consequence"], first["hgvs"], first["hgvs_p"]) == (
        "TP53", "inframe_deletion", "ENST00000269305.9:c.5_6del", "ENSP00000269305.4:p.Ala2del")
    second = variants[("Subject/P1", 7675088, "CA", "C")]  # CAG>CG trimmed to CA>C
    assert (second["genotype"], second["consequence"]) == ("./1", "frameshift_variant")
    dmd = variants[("Subject/P3", 31478000, "G", "A")]
    assert (dmd["genotype"], dmd["zygosity"], dmd["gene"], dmd["hgvs_p"], dmd["read_depth"]) == \
        ("1", "hemizygous", "DMD", "p.Gln34*", 12)
    assert _carriers(staged).column("assembly").to_pylist() == ["GRCh38"] * 4


def test_vcf_gz_loads_into_variant_occurrence(store, load, vcf_gz, tmp_path):
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    summary = load(store, "vcf", vcf_gz, "R9G")
    assert (summary.records, summary.loaded, summary.rejected) == (3, 3, 0)  # a record per sample (P1, P2, P3)
    rows = store.query("""SELECT v.target_gene_symbol, v.alternate_allele, v.zygosity, v.read_depth, v.consequence,
                                 m.value_source_value, CAST(m.measurement_date AS VARCHAR)
                          FROM variant_occurrence v JOIN measurement m USING (measurement_id)
                          ORDER BY v.position, v.reference_allele, v.genotype""")
    assert ("DMD", "A", "hemizygous", 12, "stop_gained", "1", "2024-03-01") in rows
    assert len(rows) == 4
    again = load(store, "vcf", vcf_gz, "R9G")
    assert again.unchanged == 3 and store.query_one("SELECT count(*) FROM variant_occurrence") == 4


def test_a_gene_mapped_to_two_standard_concepts_is_one_measurement_per_call(store, load, vcf_gz, tmp_path):
    """An HGNC symbol with two valid 'Maps to' targets: each call is still one measurement (and one variant),
    of the smaller target; numbering the calls before joining the map gave each call two rows with one id."""
    valid = {"valid_start_date": pa.array([dt.date(1970, 1, 1)] * 3),
             "valid_end_date": pa.array([dt.date(2099, 12, 31)] * 3)}
    store.insert_arrow("concept", pa.table({
        "concept_id": [70, 71, 72], "concept_name": ["TP53", "TP53 variant", "TP53 gene"],
        "domain_id": ["Measurement"] * 3, "vocabulary_id": ["HGNC", "OMOP Genomic", "OMOP Genomic"],
        "concept_class_id": ["Gene"] * 3, "standard_concept": [None, "S", "S"],
        "concept_code": ["TP53", "N71", "N72"], **valid}))
    store.insert_arrow("concept_relationship", pa.table({
        "concept_id_1": [70, 70, 71], "concept_id_2": [72, 71, 71], "relationship_id": ["Maps to"] * 3,
        "valid_start_date": valid["valid_start_date"], "valid_end_date": valid["valid_end_date"]}))
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    load(store, "vcf", vcf_gz, "R9G")
    assert store.query("""SELECT count(*), count(DISTINCT measurement_id), min(measurement_source_concept_id),
                                 min(measurement_concept_id), max(measurement_concept_id)
                          FROM measurement WHERE measurement_source_value = 'TP53'""") == [(3, 3, 70, 71, 71)]
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 4


def test_truncated_vcf_gz_is_rejected_whole_and_nothing_loaded(store, load, vcf_gz, tmp_path):
    data = _many_sites(tmp_path).read_bytes()
    truncated = tmp_path / "cut" / "truncated.vcf.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    staged = read_vcf(truncated)
    (reject,) = staged.rejects.table().to_pylist()
    assert reject["record"] == "VCF/truncated.vcf.gz" and reject["field"] == "file"
    assert "truncated or corrupt" in reject["reason"] and staged.calls.num_rows == 0
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    summary = load(store, "vcf", truncated, "R9G")
    assert summary.rejected == 1 and store.query_one("SELECT count(*) FROM variant_occurrence") == 0


@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_a_position_beyond_a_32_bit_integer_refuses_the_file_and_the_largest_one_loads(store, load, tmp_path,
                                                                                         suffix):
    """VCF positions are 32-bit integers; bcftools printed 3,000,000,000 as -1,294,967,296 (wrapped round 2^32),
    and until 7 December the call loaded there.  2^31 - 1 itself is a position."""
    def vcf(name, *positions):
        plain = tmp_path / f"{name}.vcf"
        plain.write_text(HEADER + "".join(f"chr17\t{p}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t0/0:1:1\t"
                                          "0/0:1:1\n" for p in positions))
        if suffix == ".vcf":
            return plain
        bgzip(plain, tmp_path / f"{name}.vcf.gz")
        return tmp_path / f"{name}.vcf.gz"

    beyond = read_vcf(vcf("beyond", 1000, 3_000_000_000, 3_000_000_001))
    (reject,) = beyond.rejects.table().to_pylist()
    assert (reject["record"], reject["field"]) == (f"VCF/beyond{suffix}", "POS")
    assert reject["reason"].startswith("POS 3,000,000,001 (2 lines beyond 2,147,483,647") and beyond.calls.num_rows == 0
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    assert load(store, "vcf", vcf("beyond", 1000, 3_000_000_000, 3_000_000_001), "R9G").rejected == 1
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 0
    assert load(store, "vcf", vcf("largest", 1000, 2**31 - 1), "R9G").rejected == 0
    assert store.query("SELECT position FROM variant_occurrence ORDER BY 1") == [(1000,), (2**31 - 1,)]


def test_an_interleaved_file_looks_up_earlier_chunks_calls_within_the_loads_memory_limit(load, tmp_path, monkeypatch):
    """Each chunk of a file whose sites are interleaved (every fourth, four times over) reaches back into the
    positions earlier chunks held, so the load looks up the calls it already wrote.  Until 7 December that was
    one join which built a hash table of the load's provenance and variants: here, 200,000 calls in chunks of
    50,000 under a 48 MB limit, it ran out of memory (as a 3 GB file did under the real 512 MB)."""
    import mercia.ingest.load as load_module
    import mercia.ingest.vcf as vcf_module
    from mercia.cdm import Store

    monkeypatch.setattr(load_module, "LOAD_MEMORY_LIMIT", "48MB")
    monkeypatch.setattr(vcf_module, "CALLS_PER_CHUNK", 50_000)
    note = "T|missense_variant|MODERATE|GENE{g}|ENSG{g:011d}|ENST{g:011d}.1:c.{i}A>T|ENSP{g:011d}.1:p.Lys{i}Asn"
    sites = sorted(range(100_000), key=lambda i: (i % 4, i))
    path = tmp_path / "interleaved.vcf"
    path.write_text(HEADER + "".join(f"chr17\t{1000 + 7 * i}\t.\tA\tT\t50\tPASS\tCSQ={note.format(g=i // 40, i=i)}\t"
                                      "GT:DP:GQ\t0/1:20:50\t1/1:31:99\t0/0:12:40\n" for i in sites))
    store = Store(str(tmp_path / "cdm.duckdb"))
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    summary = load(store, "vcf", path, "R9G")
    assert (summary.rejected, summary.superseded) == (0, 0)
    assert store.query("SELECT count(*), count(DISTINCT position), min(position), max(position) FROM variant_occurrence"
                       ) == [(200_000, 100_000, 1000, 1000 + 7 * 99_999)]
    store.close()


def _many_sites(tmp_path, sites=5000):
    """A bgzipped 3-sample VCF with one heterozygous carrier per site (P1)."""
    big = tmp_path / "big.vcf"
    big.write_text(HEADER + "".join(f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t0/0:1:1\t0/0:1:1\n"
                                    for i in range(sites)))
    bgzip(big, tmp_path / "big.vcf.gz")
    big.unlink()
    return tmp_path / "big.vcf.gz"


def _calls(store):
    return store.query("""SELECT v.person_id, v.position, v.alternate_allele, v.genotype, v.zygosity, v.read_depth,
                                 m.value_source_value FROM variant_occurrence v JOIN measurement m USING (measurement_id)
                          ORDER BY 1, 2, 3""")


def test_streamed_chunks_land_what_one_chunk_does(store, store_factory, engine, load, tmp_path, monkeypatch):
    """A VCF streamed in chunks of 700 carrier calls (blocks of 100 sites: 8 chunks) lands the same calls as one chunk, and a
    resend of it is unchanged throughout."""
    import mercia.ingest.vcf as vcf

    path = _many_sites(tmp_path)
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    whole = store_factory(engine)
    load(whole, "phenopackets", tmp_path / "pp", "R9G")
    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 10**9)
    assert load(whole, "vcf", path, "R9G").loaded == 3  # P1, the one carrier, and P2, P3 with none
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 700)
    monkeypatch.setattr(vcf, "BLOCK_SITES", 100)  # a chunk ends after a block of sites
    assert len(list(vcf.read_vcf_chunks(path))) == 8
    summary = load(store, "vcf", path, "R9G")
    assert (summary.read, summary.loaded, summary.rejected) == (15000, 3, 0)
    assert _calls(store) == _calls(whole) and len(_calls(store)) == 5000
    # the person rows, rebuilt once after the last chunk, are one chunk's: the carrier's period spans its calls
    periods = """SELECT p.person_source_value, o.observation_period_start_date, o.observation_period_end_date
                 FROM person p JOIN observation_period o USING (person_id) ORDER BY 1, 2"""
    assert store.query(periods) == whole.query(periods) and len(store.query(periods)) == 3
    # P2 and P3, without a carrier call, wrote no row, but their hashes were kept: all three unchanged
    assert load(store, "vcf", path, "R9G").unchanged == 3
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 5000


def test_file_broken_after_chunks_were_loaded_leaves_nothing_but_its_reject(store, load, tmp_path, monkeypatch,
                                                                            snapshot):
    """A record htslib cannot parse (DP 'x') three quarters of the way in, streamed in chunks of 500
    calls: chunks were handed to the load before htslib stopped, so the load rolls back and the file's
    reject is loaded alone.  (A truncated ``.vcf.gz`` no longer gets that far: the hashing pass finds it
    before any chunk is handed on, ``test_truncated_vcf_gz_is_rejected_whole_and_nothing_loaded``.)"""
    import mercia.ingest.vcf as vcf

    broken = tmp_path / "cut" / "broken.vcf"
    broken.parent.mkdir()
    broken.write_text(HEADER + "".join(f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:"
                                       f"{'x' if i == 3750 else 20}:50\t0/0:1:1\t0/0:1:1\n" for i in range(5000)))
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    before = snapshot(store)
    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 500)
    assert isinstance(next(iter(vcf.read_vcf_chunks(broken))), Staged)  # a first chunk is handed on
    summary = load(store, "vcf", broken, "R9G")
    assert (summary.read, summary.loaded, summary.rejected) == (1, 0, 1)
    ((field, reason),) = store.query("SELECT field, reason FROM mercia_reject WHERE extract = 'broken.vcf'")
    assert field == "file" and "truncated or corrupt" in reason and "file not loaded" in reason
    after = snapshot(store)
    changed = {table for table in set(before) | set(after) if before.get(table) != after.get(table)}
    assert changed == {"mercia_reject"}  # (the snapshot leaves out the load log)


def test_gzip_not_a_vcf_is_a_reject(tmp_path):
    path = tmp_path / "x.vcf.gz"
    path.write_bytes(gzip.compress(b"hello\tworld\n"))
    staged = read_vcf(path)
    assert [r["field"] for r in staged.rejects.table().to_pylist()] == ["file"]


# A child reading a file's hashes with its address space capped 2 GiB above what it holds once imported.
_CAPPED_HASHING = """
import resource, sys
from pathlib import Path
from mercia.ingest import vcf
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + 2 * 2**30, size + 2 * 2**30))
path = Path(sys.argv[1])
print(len(vcf._sample_hashes(path, *vcf._header_lines(path))))
"""


def test_the_hashing_pass_needs_no_4_gib_buffer(tmp_path, vcf_gz):
    """DuckDB's CSV buffer defaults to 16 x max_line_size (4 GiB here), which a gzipped file fills as it is
    read (the 3.33 GB trio file peaked at 8.4 GB RSS): the pass now asks for 512 MiB."""
    done = subprocess.run([sys.executable, "-c", _CAPPED_HASHING, str(vcf_gz)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == ["3"]  # one hash per sample


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.booleans())
def test_garbage_is_rejected_not_raised(tmp_path, data, compress):
    path = tmp_path / ("g.vcf.gz" if compress else "g.vcf")
    path.write_bytes(gzip.compress(data) if compress else data)
    staged = read_vcf(path)
    rejects = staged.rejects.table().to_pylist()
    assert staged.calls.num_rows == 0 or not rejects
    assert all(r["field"] == "file" for r in rejects)


def test_vectorised_split_matches_the_calls_written(tmp_path):
    """Random multi-sample sites (1-3 ALT alleles, haploid and diploid calls in one site, phased and
    unphased, missing alleles and DP): the staged rows are exactly the carriers the generator wrote."""
    import random

    rng = random.Random(7)
    names = [f"S{i}" for i in range(25)]
    lines, expected = [], []
    for site in range(300):
        alts = rng.sample("CGT", rng.randint(1, 3))
        calls, written = [], []
        for sample in names:
            ploidy = 1 if rng.random() < 0.2 else 2
            alleles = [rng.choice([".", "0", "0", "0", *[str(i) for i in range(1, len(alts) + 1)]])
                       for _ in range(ploidy)]
            phased = ploidy == 2 and rng.random() < 0.3
            depth = None if rng.random() < 0.1 else rng.randint(1, 90)
            calls.append(("|" if phased else "/").join(alleles) + f":{'.' if depth is None else depth}:{site % 99}")
            written.append((sample, ploidy, alleles, phased, depth))
        for index, alt in enumerate(alts, start=1):  # split: ALT by ALT, samples in file order
            for sample, ploidy, alleles, phased, depth in written:
                if str(index) in alleles:
                    called = ["1" if a == str(index) else "0" if a == "0" else "." for a in alleles]
                    zygosity = "hemizygous" if ploidy == 1 else "homozygous" if called == ["1", "1"] else \
                        "heterozygous"
                    expected.append((f"VCF/rand.vcf/{sample}", 2000 + site, alt,
                                     ("|" if phased else "/").join(called), zygosity, depth, float(site % 99)))
        lines.append(f"chr17\t{2000 + site}\t.\tA\t{','.join(alts)}\t50\tPASS\t.\tGT:DP:GQ\t" + "\t".join(calls) + "\n")
    header = HEADER.replace("\tP1\tP2\tP3\n", "\t" + "\t".join(names) + "\n")
    (tmp_path / "rand.vcf").write_text(header + "".join(lines))
    staged = read_vcf(tmp_path / "rand.vcf")
    calls = _carriers(staged)
    rows = [(r["record"], r["pos"], r["alt"], r["genotype"], r["zygosity"], r["read_depth"], r["genotype_quality"])
            for r in calls.to_pylist()]
    assert rows == expected
    assert calls.column("record").to_pylist() == [r[0] for r in expected]
    assert calls.column("genotype").to_pylist() == [r[3] for r in expected]
    # the file's own line numbers (htslib's header adds a ##FILTER=<ID=PASS> line the file does not have)
    assert calls.column("line").to_pylist() == [header.count("\n") + r[1] - 2000 + 1 for r in expected]
    assert staged.read == sum(len(line.split("\t")[4].split(",")) for line in lines) * len(names)
    hashes = calls.column("record_hash").to_pylist()
    # a hash per sample (its record): the same for all its calls, different between samples, the same when read again
    assert len(set(zip(calls.column("record").to_pylist(), hashes))) == len(set(hashes)) == len(names)
    assert _carriers(read_vcf(tmp_path / "rand.vcf")).column("record_hash").to_pylist() == hashes


def _trio_sites(path, sites, p2_depth_at=None):
    """A bgzipped trio VCF, every sample a carrier at every site (P2's DP 21 at site ``p2_depth_at``)."""
    lines = [f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t0/1:{21 if i == p2_depth_at else 20}:50"
             f"\t1/1:20:50\n" for i in range(sites)]
    plain = path.with_suffix("")
    plain.write_text(HEADER + "".join(lines))
    bgzip(plain, path)
    plain.unlink()
    return path


def test_a_sample_is_one_record_across_streamed_chunks(store, load, snapshot, tmp_path, monkeypatch):
    """One record per (sample, file) though its calls span chunks: P3, without a person, is one reject
    naming the #CHROM line; a resend is unchanged as a whole; a resend with one call of P2 changed
    replaces P2's rows only.  Each variant row keeps its line, and its provenance the file's sample."""
    import mercia.ingest.vcf as vcf

    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 500)
    monkeypatch.setattr(vcf, "BLOCK_SITES", 100)
    _phenopackets(tmp_path / "pp", ["P1", "P2"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    (tmp_path / "a").mkdir()
    path = _trio_sites(tmp_path / "a" / "trio.vcf.gz", 1000)
    assert len(list(vcf.read_vcf_chunks(path))) == 6  # 300 calls a block, 600 a chunk, and the end
    first = load(store, "vcf", path, "R9G")
    assert (first.records, first.loaded, first.rejected, first.changed) == (3, 2, 1, 0)
    assert store.query("SELECT line, field, action FROM mercia_reject WHERE load_id = ?", [first.load_id]) == [
        (12, "subject", "rejected")]  # the #CHROM line
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 2000
    assert store.query_one("SELECT count(*) FROM variant_occurrence WHERE source_line <> position - 1000 + 13") == 0
    assert store.query("""SELECT p.cdm_table, count(DISTINCT p.source_record), count(*) FROM mercia_provenance p
                          WHERE p.load_id = ? GROUP BY 1 ORDER BY 1""", [first.load_id]) == [
        ("measurement", 2, 2000), ("variant_occurrence", 2, 2000)]
    before = snapshot(store)
    again = load(store, "vcf", path, "R9G")
    assert (again.records, again.unchanged, again.rejected, again.changed) == (3, 2, 1, 0)
    assert snapshot(store) == before
    p1_rows = store.query("""SELECT v.measurement_id FROM variant_occurrence v JOIN mercia_provenance p
                             ON p.cdm_table = 'variant_occurrence' AND p.row_id = v.variant_occurrence_id
                             WHERE v.genotype = '0/1' AND v.read_depth = 20 ORDER BY 1""")
    (tmp_path / "b").mkdir()
    corrected = load(store, "vcf", _trio_sites(tmp_path / "b" / "trio.vcf.gz", 1000, p2_depth_at=500), "R9G")
    assert (corrected.records, corrected.unchanged, corrected.changed, corrected.rejected) == (3, 1, 1, 1)
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 2000
    assert store.query("SELECT position, source_line FROM variant_occurrence WHERE read_depth = 21") == [(1500, 513)]
    p2 = store.query_one("SELECT person_id FROM variant_occurrence WHERE read_depth = 21")
    # P1's rows were kept as they were (same ids); P2's 1,000 rows were replaced
    assert [r for r in p1_rows if r in store.query("SELECT measurement_id FROM variant_occurrence WHERE person_id <> ?",
                                                    [p2])] == store.query(
        "SELECT measurement_id FROM variant_occurrence WHERE person_id <> ? ORDER BY 1", [p2])
    assert store.query_one("SELECT count(*) FROM variant_occurrence WHERE person_id = ?", [p2]) == 1000


@pytest.mark.parametrize("suffix", [".vcf", ".vcf.gz"])
def test_a_corrupt_call_rejects_its_file_naming_the_line(store, load, tmp_path, suffix):
    """htslib stops at a FORMAT value it cannot parse (DP 'x'), so the call cannot be told apart from the
    rest of its line: the file is rejected whole, naming a line before it (bcftools writes ahead) and
    htslib's message with the site's position, and nothing loads (decided 6 December: rejecting the call
    alone would need a second parser of FORMAT beside htslib's); gzipped alike."""
    bad = tmp_path / "bad.vcf"
    bad.write_text(HEADER + "chr17\t1000\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t0/0:1:1\t0/0:1:1\n"
                   "chr17\t1001\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:x:50\t0/1:20:50\t0/0:1:1\n")
    if suffix == ".vcf.gz":  # (htslib's BGZF of the text as it is: ``bgzip`` rewrites the records)
        import pysam

        pysam.tabix_compress(str(bad), str(tmp_path / "bad.vcf.gz"))
        bad = tmp_path / "bad.vcf.gz"
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    summary = load(store, "vcf", bad, "R9G")
    assert (summary.loaded, summary.rejected) == (0, 1)
    ((record, field, reason),) = store.query("SELECT source_record, field, reason FROM mercia_reject "
                                             "WHERE load_id = ?", [summary.load_id])
    assert record.startswith("VCF/") and field == "file" and "cannot read past line" in reason
    assert "Invalid character 'x' in 'DP' FORMAT field at chr17:1001" in reason  # htslib's own message
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 0


def test_a_file_without_sites_loads_its_samples_and_its_resend_is_unchanged(store, load, tmp_path):
    """A header and no site (a panel where nobody carries anything): each sample is read as its record, with
    the hash of no lines (Arrow calls such text an empty CSV file: the hashing pass reads no block)."""
    (tmp_path / "empty.vcf").write_text(HEADER)
    staged = read_vcf(tmp_path / "empty.vcf")
    assert staged.rejects.table().num_rows == 0 and staged.calls.num_rows == 3
    assert len(set(staged.calls.column("record_hash").to_pylist())) == 1  # no line: alike for every sample
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    first = load(store, "vcf", tmp_path / "empty.vcf", "R9G")
    again = load(store, "vcf", tmp_path / "empty.vcf", "R9G")
    assert (first.loaded, first.rejected, again.unchanged) == (3, 0, 3)
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 0


def test_a_line_longer_than_a_block_is_read_again_and_one_past_the_longest_is_refused(tmp_path, monkeypatch):
    """The hashing pass reads blocks of ``SITE_BATCH_BYTES`` and needs each line within one: a file with a
    longer line is read again in blocks of ``LONGEST_LINE``, with the same hashes; a line longer still
    refuses the file, saying so."""
    import mercia.ingest.vcf as vcf

    path = tmp_path / "lines.vcf"
    path.write_text(HEADER + BODY)
    hashes = vcf._sample_hashes(path, *vcf._header_lines(path))
    monkeypatch.setattr(vcf, "SITE_BATCH_BYTES", 64)  # shorter than every line
    assert vcf._sample_hashes(path, *vcf._header_lines(path)) == hashes
    monkeypatch.setattr(vcf, "LONGEST_LINE", 100)
    (reject,) = read_vcf(path).rejects.table().to_pylist()
    assert reject["field"] == "file" and reject["reason"].startswith("a line longer than 100 bytes")


def test_a_sample_that_lost_every_call_loses_its_rows(store, load, tmp_path):
    """Each sample is read as its record even without a carrier call, so a resend in which P2 carries
    nothing any more replaces P2's rows with none (P1's stay); sent again, every sample is unchanged, those
    without a row too (their hashes are kept in ``mercia_record_hash``)."""
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")

    def send(folder, p2):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "plain.vcf").write_text(HEADER + "".join(
            f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t{p2}:20:50\t0/0:1:1\n" for i in range(2)))
        bgzip(tmp_path / folder / "plain.vcf", tmp_path / folder / "trio.vcf.gz")
        return load(store, "vcf", tmp_path / folder / "trio.vcf.gz", "R9G")

    first = send("a", "0/1")
    assert (first.records, first.loaded) == (3, 3) and store.query_one("SELECT count(*) FROM variant_occurrence") == 4
    again = send("b", "0/0")
    assert (again.records, again.changed, again.unchanged) == (3, 1, 2)  # P2 changed; P1 and P3 (no row) unchanged
    assert store.query("SELECT DISTINCT person_id FROM variant_occurrence") == store.query(
        "SELECT person_id FROM variant_occurrence WHERE genotype = '0/1' AND read_depth = 20 LIMIT 1")
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 2
    resent = send("c", "0/0")
    assert (resent.records, resent.loaded, resent.unchanged, resent.changed) == (3, 3, 3, 0)
    assert store.query_one("SELECT count(*) FROM variant_occurrence") == 2
    assert store.query_one("SELECT count(*) FROM mercia_record_hash") == 2  # P2, P3: a record without a row


def test_a_header_over_several_bgzf_blocks_keeps_the_file_s_line_numbers(store, load, tmp_path):
    """A header of ~200 kB spans four BGZF blocks (gzip members, un-gzipped with ISA-L): the calls keep the
    file's own line numbers; the file cut in its body, or in its header, is rejected whole and stores nothing."""
    padding = "".join(f"##note{i}=a header line padded to about seventy bytes {'x' * 20}\n" for i in range(3000))
    plain = tmp_path / "long.vcf"
    plain.write_text(HEADER.replace("##reference=GRCh38\n", padding + "##reference=GRCh38\n") + "".join(
        f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t0/0:1:1\t0/0:1:1\n" for i in range(2000)))
    bgzip(plain, tmp_path / "long.vcf.gz")
    data = (tmp_path / "long.vcf.gz").read_bytes()
    assert data.count(b"\x1f\x8b\x08\x04") > 4  # BGZF blocks: the header's and the body's
    calls = _carriers(read_vcf(tmp_path / "long.vcf.gz"))
    assert calls.column("line").to_pylist() == list(range(3013, 5013))  # 3,012 header lines, then the sites
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    for name, cut, reason in (("body", len(data) * 3 // 4, "cannot be read to the end (truncated or corrupt)"),
                              ("header", 2000, "not a readable VCF")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "long.vcf.gz").write_bytes(data[:cut])
        summary = load(store, "vcf", tmp_path / name / "long.vcf.gz", "R9G")
        assert (summary.read, summary.loaded, summary.rejected) == (1, 0, 1)
        assert store.query_one("SELECT count(*) FROM variant_occurrence") == 0
        assert store.query_one("SELECT reason FROM mercia_reject WHERE load_id = ? AND field = 'file'",
                               [summary.load_id]).startswith(reason)


def test_a_sample_s_hash_is_kept_apart_only_while_it_has_no_row(store, load, tmp_path, monkeypatch):
    """Chunks of one call: P2's only call comes in the last chunk, so the hash its first chunk kept in
    ``mercia_record_hash`` is taken back (its rows' provenance holds it); P3, without a call, keeps it
    there, and a resend is unchanged for all three."""
    import mercia.ingest.vcf as vcf

    monkeypatch.setattr(vcf, "CALLS_PER_CHUNK", 1)
    monkeypatch.setattr(vcf, "BLOCK_SITES", 1)
    _phenopackets(tmp_path / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", tmp_path / "pp", "R9G")
    (tmp_path / "plain.vcf").write_text(HEADER + "".join(
        f"chr17\t{1000 + i}\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:20:50\t{'0/1' if i == 3 else '0/0'}:20:50\t0/0:1:1\n"
        for i in range(4)))
    assert len(list(vcf.read_vcf_chunks(tmp_path / "plain.vcf"))) == 5
    first = load(store, "vcf", tmp_path / "plain.vcf", "R9G")
    assert (first.loaded, store.query_one("SELECT count(*) FROM variant_occurrence")) == (3, 5)
    kept = store.query("SELECT source_record FROM mercia_record_hash")
    assert len(kept) == 1 and kept[0][0] not in {r for (r,) in store.query(
        "SELECT source_record FROM mercia_provenance WHERE cdm_table = 'variant_occurrence'")}
    again = load(store, "vcf", tmp_path / "plain.vcf", "R9G")
    assert (again.unchanged, again.changed, store.query_one("SELECT count(*) FROM variant_occurrence")) == (3, 0, 5)


# Awkward sites: multi-allelic with CSQ after another INFO tag, two sites at one position, INFO/GENE after a
# tag ending in GENE, an allele index beyond ALT, a deletion pair trimmed two ways, ALT '.', missing and
# haploid calls, phased with a missing allele, SnpEff ANN with INFO/GENE beside it.
AWKWARD = (
    "chr17\t100\t.\tA\tC,T\t50\tPASS\tDP=10;CSQ=C|missense_variant|MODERATE|TP53|ENSG1|c.1A>C|p.K1Q,"
    "T|stop_gained|HIGH|TP53|ENSG1|c.1A>T|p.K1*\tGT:DP:GQ\t1/2:30:99\t0|1:20:50\t./1:.:.\n"
    "chr17\t100\t.\tA\tG\t50\tPASS\tXGENE=no;GENE=G1\tGT:DP:GQ\t0/1:7:12\t0/0:1:1\t0/3:1:1\n"
    "chr17\t200\t.\tACGT\tAGT,ACG\t50\tPASS\t.\tGT:DP:GQ\t1/2:.:.\t2|2:4:9\t.:.:.\n"
    "chr17\t300\t.\tG\t.\t50\tPASS\t.\tGT:DP:GQ\t0/0:5:5\t./.:.:.\t0:5:5\n"
    "chrX\t400\t.\tC\tA\t50\tPASS\tANN=A|missense_variant|MODERATE|DMD|ENSG2|c.9G>T|p.E3D;GENE=NOTTHIS\t"
    "GT:DP:GQ\t1:12:40\t1|.:8:20\t0/0:3:3\n")


def test_awkward_sites_stage_what_the_cyvcf2_reader_staged(tmp_path):
    """The rows below are what the cyvcf2 reader (36eaa24) staged for ``AWKWARD``, row for row and in its
    order; the bcftools reader must stage the same (and count the same calls read: 3 samples x 6 ALTs)."""
    (tmp_path / "awkward.vcf").write_text(HEADER + AWKWARD)
    staged = read_vcf(tmp_path / "awkward.vcf")
    columns = ("line", "chrom", "pos", "ref", "alt", "gene", "code", "genotype", "zygosity", "read_depth",
               "genotype_quality", "consequence", "hgvs", "hgvs_p")
    assert staged.read == 18
    assert [(r["record"].rsplit("/", 1)[1], *(r[c] for c in columns)) for r in _carriers(staged).to_pylist()] == [
        ("P1", 12, "chr17", 100, "A", "C", "TP53", "TP53", "1/.", "heterozygous", 30, 99.0, "missense_variant",
         "c.1A>C", "p.K1Q"),
        ("P2", 12, "chr17", 100, "A", "C", "TP53", "TP53", "0|1", "heterozygous", 20, 50.0, "missense_variant",
         "c.1A>C", "p.K1Q"),
        ("P3", 12, "chr17", 100, "A", "C", "TP53", "TP53", "./1", "heterozygous", None, None, "missense_variant",
         "c.1A>C", "p.K1Q"),
        ("P1", 12, "chr17", 100, "A", "T", "TP53", "TP53", "./1", "heterozygous", 30, 99.0, "stop_gained",
         "c.1A>T", "p.K1*"),
        ("P1", 13, "chr17", 100, "A", "G", "G1", "G1", "0/1", "heterozygous", 7, 12.0, None, None, None),
        ("P1", 14, "chr17", 200, "AC", "A", None, "chr17:200", "1/.", "heterozygous", None, None, None, None, None),
        ("P1", 14, "chr17", 202, "GT", "G", None, "chr17:202", "./1", "heterozygous", None, None, None, None, None),
        ("P2", 14, "chr17", 202, "GT", "G", None, "chr17:202", "1|1", "homozygous", 4, 9.0, None, None, None),
        ("P1", 16, "chrX", 400, "C", "A", "DMD", "DMD", "1", "hemizygous", 12, 40.0, "missense_variant", "c.9G>T",
         "p.E3D"),
        ("P2", 16, "chrX", 400, "C", "A", "DMD", "DMD", "1|.", "heterozygous", 8, 20.0, "missense_variant",
         "c.9G>T", "p.E3D")]


def test_format_tags_the_header_does_not_declare_are_read(tmp_path):
    """GT, DP and GQ used without a ``##FORMAT`` line (htslib assumes them, bcftools cannot print an
    undeclared tag, so the reader declares them for it): the calls are read with their depth and quality
    (the cyvcf2 reader failed on the undeclared DP, an ``IndexError``)."""
    (tmp_path / "bare.vcf").write_text(
        "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tA\tB\n"
        "chr2\t100\t.\tG\tA,C\t.\tPASS\tGENE=X\tGT:DP:GQ\t0/1:12:30\t2|2:.:7\n"
        "chr2\t200\t.\tG\tA\t.\tPASS\t.\tGT\t1\t0/0\n")
    staged = read_vcf(tmp_path / "bare.vcf")
    assert staged.read == 6 and not staged.rejects.table().num_rows
    assert [(r["record"][-1], r["pos"], r["alt"], r["genotype"], r["read_depth"], r["genotype_quality"], r["gene"])
            for r in _carriers(staged).to_pylist()] == [
        ("A", 100, "A", "0/1", 12, 30.0, "X"), ("B", 100, "C", "1|1", None, 7.0, "X"),
        ("A", 200, "A", "1", None, None, None)]
