"""A record key repeated with different content in one extract: the copy read last is loaded, every
other copy is a ``superseded`` reject, and a resend of the same extract changes nothing (it used to
delete the stored rows and insert none)."""

from __future__ import annotations

import orjson

from tests.ingest.test_other_sources import ACUTE, write_acute
from tests.ingest.test_vcf import HEADER, _phenopackets, bgzip

REPEATED = "the record repeats in this extract with different content: only its last copy was loaded"
# a VCF sample is one record: what repeats is its call of one allele (mercia.ingest.load.REPEATED_CALL, SAME_CALL)
REPEATED_CALL = ("the sample's call of this allele repeats in the file with different content: only its last copy "
                 "was loaded")
SAME_CALL = "the sample's call of this allele repeats in the file with the same content: stored once"


def _vcf(folder, *lines):
    """A bgzipped VCF of ``lines`` (P1, P2, P3 genotypes) at one folder, returned as its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plain.vcf").write_text(HEADER + "".join(lines))
    bgzip(folder / "plain.vcf", folder / "trio.vcf.gz")
    (folder / "plain.vcf").unlink()
    return folder / "trio.vcf.gz"


def _site(genotype: str, depth: int) -> str:
    return f"chr17\t1000\t.\tA\tT\t50\tPASS\t.\tGT:DP:GQ\t{genotype}:{depth}:50\t0/0:1:1\t0/0:1:1\n"


def _trio_vcf(store, load, folder, *lines):
    """The trio's phenopackets loaded, and a VCF of ``lines`` for them at ``folder``."""
    folder.mkdir(exist_ok=True)
    _phenopackets(folder / "pp", ["P1", "P2", "P3"])
    load(store, "phenopackets", folder / "pp", "R9G")
    return _vcf(folder / "vcf", *lines)


def _genotypes(store) -> list[tuple]:
    return store.query("""SELECT v.genotype, v.read_depth, m.value_source_value FROM variant_occurrence v
                          JOIN measurement m USING (measurement_id) ORDER BY 1, 2""")


def _repeat_rejects(store, load_id: int, reason: str = REPEATED) -> list[tuple]:
    return store.query("SELECT line, field, reason, action FROM mercia_reject WHERE load_id = ? AND reason = ?",
                       [load_id, reason])


def test_vcf_allele_listed_twice_loads_its_last_copy_and_a_resend_is_unchanged(store, load, snapshot, tmp_path):
    # the same ALT at one site on lines 13 and 14 (header is 12 lines): P1's call of it twice, two contents
    twice = _trio_vcf(store, load, tmp_path, _site("0/1", 20), _site("1/1", 30))
    first = load(store, "vcf", twice, "R9G")
    assert (first.records, first.loaded, first.rejected, first.superseded) == (3, 3, 0, 0)  # a record a sample
    assert _genotypes(store) == [("1/1", 30, "1/1")]
    assert _repeat_rejects(store, first.load_id, REPEATED_CALL) == [(13, "ALT", REPEATED_CALL, "superseded")]
    assert store.query("SELECT source_record FROM mercia_reject WHERE reason = ?", [REPEATED_CALL]) == store.query(
        "SELECT source_record FROM mercia_provenance WHERE cdm_table = 'measurement'")  # names the sample's record
    before = snapshot(store)
    again = load(store, "vcf", twice, "R9G")
    assert (again.loaded, again.unchanged, again.changed) == (3, 3, 0)  # P2, P3 too (no row; hash kept)
    assert snapshot(store) == before
    # a corrected resend (the allele once) replaces the stored copy exactly once
    corrected = load(store, "vcf", _vcf(tmp_path / "corrected", _site("0/1", 20)), "R9G")
    # P1; P2 and P3 too: the hash covers hom-ref calls, and their call on the dropped line went with it
    assert (corrected.changed, corrected.unchanged) == (3, 0)
    assert _genotypes(store) == [("0/1", 20, "0/1")]
    assert store.query_one("SELECT count(*) FROM mercia_provenance WHERE cdm_table = 'measurement'") == 1


def _acute_with(extract, diagnoses: str):
    """The acute trust extract at ``extract`` with ``diagnoses`` as its diagnoses rows."""
    extract.mkdir()
    for name, text in {**ACUTE, "diagnoses.csv": "encounter_id,position,icd10_code\n" + diagnoses}.items():
        (extract / name).write_text(text)
    return extract


def test_csv_row_id_repeated_loads_its_last_copy_and_a_resend_is_unchanged(store, load, snapshot, tmp_path):
    extract = _acute_with(tmp_path / "R9A", "E1,1,I21.9\nE1,1,E11.9\nE2,1,M17.1\n")
    first = load(store, "csv", extract, "R9A", mapping="acute_trust")
    assert store.query("SELECT condition_source_value FROM condition_occurrence ORDER BY 1") == [
        ("E11.9",), ("M17.1",)]
    assert _repeat_rejects(store, first.load_id) == [(2, "record key", REPEATED, "superseded")]  # its line
    before = snapshot(store)
    again = load(store, "csv", extract, "R9A", mapping="acute_trust")
    assert again.changed == 0 and again.unchanged == first.loaded and snapshot(store) == before
    # the shipped extract: E1 position 1 is I21.9 once (position 2, E11.9, is a record of its own)
    corrected = load(store, "csv", write_acute(tmp_path / "fixed" / "R9A"), "R9A", mapping="acute_trust")
    assert corrected.changed == 1
    assert store.query("SELECT condition_source_value FROM condition_occurrence ORDER BY 1") == [
        ("E11.9",), ("I21.9",), ("M17.1",)]


def test_fhir_resource_id_repeated_without_meta_keeps_the_last_and_a_resend_is_unchanged(store, load, snapshot,
                                                                                         tmp_path):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}

    def height(value):
        return {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
                "status": "final", "effectiveDateTime": "2016-01-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
                "valueQuantity": {"value": value, "code": "cm"}}

    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "all.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in (patient, height(150),
                                                                                       height(155))))
    first = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (first.loaded, first.superseded) == (2, 0)
    assert store.query("SELECT value_as_number FROM measurement") == [(155.0,)]
    assert store.query("SELECT line, action FROM mercia_reject WHERE reason LIKE 'a newer version%'") == [
        (2, "superseded")]
    before = snapshot(store)
    again = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (again.unchanged, again.changed) == (2, 0) and snapshot(store) == before


SAME = "the record repeats in this extract with the same content: stored once"


def _same_rejects(store, load_id: int) -> list[tuple]:
    return store.query("SELECT line, field, action FROM mercia_reject WHERE load_id = ? AND reason = ? ORDER BY 1",
                       [load_id, SAME])


def test_fhir_resource_repeated_identically_is_stored_once_and_a_resend_is_unchanged(store, load, snapshot,
                                                                                   tmp_path):
    """A Bulk export repeating a resource (lines 2 and 4) stores it once; an Observation with two alike
    components in one resource keeps both (the copies are the resource's, not its rows')."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-05-01"}
    height = {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}, "status": "final",
              "effectiveDateTime": "2016-01-01", "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
              "valueQuantity": {"value": 150, "code": "cm"}}
    pressure = {"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/p1"},
                "status": "final", "effectiveDateTime": "2016-01-01",
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                               "valueQuantity": {"value": 120, "code": "mm[Hg]"}}] * 2}
    (tmp_path / "d1").mkdir()
    (tmp_path / "d1" / "all.ndjson").write_bytes(b"\n".join(orjson.dumps(r) for r in (patient, height, pressure,
                                                                                       height)))
    first = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (first.read, first.records, first.loaded, first.rejected, first.superseded) == (4, 3, 3, 0, 0)
    assert store.query("SELECT measurement_source_value, value_as_number FROM measurement ORDER BY 1") == [
        ("8302-2", 150.0), ("8480-6", 120.0), ("8480-6", 120.0)]
    assert _same_rejects(store, first.load_id) == [(2, "record key", "superseded")]
    before = snapshot(store)
    again = load(store, "fhir", tmp_path / "d1", "RX1")
    assert (again.unchanged, again.changed) == (3, 0) and snapshot(store) == before


def test_csv_row_repeated_identically_is_stored_once_and_a_resend_is_unchanged(store, load, snapshot, tmp_path):
    extract = _acute_with(tmp_path / "R9A", "E1,1,I21.9\nE2,1,M17.1\nE1,1,I21.9\n")
    first = load(store, "csv", extract, "R9A", mapping="acute_trust")
    shipped = load(store, "csv", write_acute(tmp_path / "shipped" / "R9A"), "R9B", mapping="acute_trust")
    # the shipped extract has the same records (E1/2 E11.9 instead of the copy of E1/1): counts alike but read
    assert (first.read, first.records, first.loaded, first.rejected) == (
        shipped.read, shipped.records - 1, shipped.loaded - 1, shipped.rejected)
    assert store.query("SELECT condition_source_value FROM condition_occurrence ORDER BY 1") == [
        ("E11.9",), ("I21.9",), ("I21.9",), ("M17.1",), ("M17.1",)]  # R9A: I21.9 once, M17.1; R9B: all three
    assert _same_rejects(store, first.load_id) == [(2, "record key", "superseded")]  # line 2: the first copy
    before = snapshot(store)
    again = load(store, "csv", extract, "R9A", mapping="acute_trust")
    assert again.changed == 0 and again.unchanged == first.loaded and snapshot(store) == before


def test_vcf_line_repeated_identically_is_stored_once(store, load, snapshot, tmp_path):
    twice = _trio_vcf(store, load, tmp_path, _site("0/1", 20), _site("0/1", 20))
    first = load(store, "vcf", twice, "R9G")
    assert (first.read, first.records, first.loaded, first.rejected) == (6, 3, 3, 0)
    assert _genotypes(store) == [("0/1", 20, "0/1")]
    assert store.query("SELECT line, field, action FROM mercia_reject WHERE load_id = ? AND reason = ?",
                       [first.load_id, SAME_CALL]) == [(13, "ALT", "superseded")]
    before = snapshot(store)
    again = load(store, "vcf", twice, "R9G")
    assert (again.unchanged, again.changed) == (3, 0) and snapshot(store) == before  # P2, P3 too (no row)


def test_vcf_copies_in_different_chunks_land_as_in_one_chunk(store, store_factory, engine, load, options, tmp_path,
                                                           monkeypatch):
    """Chunks of one call each: an allele of P1 at lines 13 and 14 (other genotype), one at 16 and 17
    (alike), P1's record spanning the chunks.  The reader keeps a position's sites in one chunk, so the
    copies meet there, and the counts, calls and rejects are those of one chunk (an unsorted file:
    ``test_vcf_unsorted_copies_in_different_chunks_keep_the_last``)."""
    from mercia.ingest import vcf
    from mercia.ingest.load import load_staged

    monkeypatch.setattr(vcf, "BLOCK_SITES", 1)
    other = "chr17\t2000\t.\tG\tC\t50\tPASS\t.\tGT:DP:GQ\t0/1:9:50\t0/0:1:1\t0/0:1:1\n"
    alike = "chr17\t3000\t.\tC\tA\t50\tPASS\t.\tGT:DP:GQ\t1/1:7:50\t0/0:1:1\t0/0:1:1\n"
    summaries, stores = [], (store, store_factory(engine))
    for target, per_chunk in zip(stores, (1, None)):
        path = _trio_vcf(target, load, tmp_path / f"split{per_chunk}", _site("0/1", 20), _site("1/1", 30), other,
                         alike, alike)
        chunks = list(vcf.read_vcf_chunks(path, per_chunk))
        assert len(chunks) == (4 if per_chunk else 1)  # chunked: the last holds the file's end (no calls)
        summaries.append(load_staged(target, chunks, "R9G", "vcf", options))
    chunked, whole = summaries
    assert (whole.records, whole.loaded, whole.unchanged, whole.changed, whole.rejected) == (3, 3, 0, 0, 0)
    assert chunked.__dict__ | {"load_id": 0} == whole.__dict__ | {"load_id": 0}
    for target in stores:
        assert _genotypes(target) == [("0/1", 9, "0/1"), ("1/1", 7, "1/1"), ("1/1", 30, "1/1")]
        assert target.query("SELECT line, reason, action FROM mercia_reject ORDER BY 1") == [
            (13, REPEATED_CALL, "superseded"), (16, SAME_CALL, "superseded")]


def test_vcf_unsorted_copies_in_different_chunks_keep_the_last(store, store_factory, engine, load, options, tmp_path,
                                                              monkeypatch):
    """An unsorted file read in chunks of one call: P1's allele at 1000 on lines 13 and 15 (other genotype)
    and at 3000 on lines 16 and 18 (alike), another site between each pair, so each copy is in its own
    chunk.  The earlier chunk's copy is taken back (its rows go, its line is a ``superseded`` reject), as
    when both copies are in one chunk."""
    from mercia.ingest import vcf
    from mercia.ingest.load import load_staged

    monkeypatch.setattr(vcf, "BLOCK_SITES", 1)
    alike = "chr17\t3000\t.\tC\tA\t50\tPASS\t.\tGT:DP:GQ\t1/1:7:50\t0/0:1:1\t0/0:1:1\n"
    lines = (_site("0/1", 20), "chr17\t2000\t.\tG\tC\t50\tPASS\t.\tGT:DP:GQ\t0/1:9:50\t0/0:1:1\t0/0:1:1\n",
             _site("1/1", 30), alike, "chr17\t4000\t.\tG\tT\t50\tPASS\t.\tGT:DP:GQ\t0/1:5:50\t0/0:1:1\t0/0:1:1\n",
             alike)
    summaries, stores = [], (store, store_factory(engine))
    for target, per_chunk in zip(stores, (1, None)):
        path = _trio_vcf(target, load, tmp_path / f"split{per_chunk}", *lines)
        chunks = list(vcf.read_vcf_chunks(path, per_chunk))
        assert len(chunks) == (7 if per_chunk else 1)
        summaries.append(load_staged(target, chunks, "R9G", "vcf", options))
    chunked, whole = summaries
    assert chunked.__dict__ | {"load_id": 0} == whole.__dict__ | {"load_id": 0}
    for target in stores:
        assert _genotypes(target) == [("0/1", 5, "0/1"), ("0/1", 9, "0/1"), ("1/1", 7, "1/1"), ("1/1", 30, "1/1")]
        assert target.query("SELECT line, reason, action FROM mercia_reject ORDER BY 1") == [
            (13, REPEATED_CALL, "superseded"), (16, SAME_CALL, "superseded")]
        assert target.query_one("SELECT count(*) FROM mercia_provenance WHERE cdm_table = 'measurement'") == 4
        assert target.query("SELECT source_line FROM variant_occurrence ORDER BY 1") == [(14,), (15,), (17,), (18,)]
