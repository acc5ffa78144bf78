"""VCF (``.vcf``, bgzipped ``.vcf.gz``, one or many samples) -> staged variant calls, read with htslib's
bcftools (``bcftools query``, bundled with pysam) and DuckDB.

Each sample of a file is one source record ``VCF/<file>/<sample>`` (as an NMR panel is one record per
sample): each of its calls carrying an ALT allele becomes a ``measurement`` (HGNC gene, genotype as value,
the OHDSI Genomic CDM convention described in mercia.ingest.genomics) and a ``variant_occurrence`` row with
the call's line (``source_line``).  Until 6 December every call was its own record, and its key, HMAC,
content hash and fate were most of the cost of loading it (docs/metabolomics.md).

- Multi-allelic sites are split into one record per ALT allele (as ``bcftools norm -m-``); the
  sample's genotype is rewritten for that allele: ``1`` = this allele, ``0`` = reference, ``.`` = another
  ALT allele or missing (the convention of ``vt decompose``).  After the split, bases shared by REF and
  ALT are trimmed (suffix first, then prefix, keeping one base; POS moves with the prefix).  Left-
  alignment needs the reference genome and is not done.
- Calls without this ALT allele (hom-ref, missing, other allele only) are read but write no rows.
- Each sample is staged once per file as a row without an allele (``_SampleKeys.sample_rows``, line: the ``#CHROM``
  header line naming it), so a sample with no carrier call is still its record: a resend in which it
  lost every call replaces its rows with none, and a sample without a person is rejected even so.
- Kept per call: GT, zygosity (heterozygous / homozygous / hemizygous), FORMAT DP and GQ, and the
  annotation of this ALT allele from VEP ``CSQ`` or SnpEff ``ANN`` (gene, consequence, HGVS c. and p.);
  ``INFO/GENE`` is the gene when neither is present.
- No Python per site: htslib parses every line (in ``bcftools query``, run in a child process, so on the
  other core) and prints CHROM, POS, REF, ALT, INFO's CSQ, ANN and GENE and each sample's GT, DP and GQ as
  text; Arrow reads that text (on one thread: threaded, it took twice the CPU) in batches of
  ``SITE_BATCH_BYTES`` and one DuckDB statement per batch (``_calls_sql``) splits the ALT alleles, finds
  their carriers, rewrites the genotypes, trims, picks the CSQ/ANN entry (``_annotation_sql``) and spells
  the rows.  The calls come only from bcftools' canonical output, never from the file's own text.  (Until
  6 December cyvcf2 handed each site to Python, about half of the reading.)  The rows are
  ``Staged.calls``, which the load writes set-based.
- Streamed: ``read_vcf_chunks`` hands the load chunks of about ``CALLS_PER_CHUNK`` carrier calls (whole
  sites), so a large file is never held whole.
- A sample's content hash covers its column of every line, order-free (``_sample_hashes``: one pass
  over the file's text, un-gzipped by ISA-L and hashed by DuckDB, before the calls are read, so every
  chunk already carries it).
- Sites are never split between chunks at one position (``CHROM``, ``POS``), so in a sorted file an
  allele listed twice for a sample is found in one chunk (the load keeps its last copy).
- A POS beyond ``MAX_POS`` (2^31 - 1) refuses the file whole (field ``POS``), found by the hashing pass before any
  call is read: bcftools would print it wrapped, and its calls would land at wrong positions.
- A file htslib cannot read to the end (a truncated ``.vcf.gz``, a corrupt record) is rejected as a whole:
  record ``VCF/<file>``, field ``file``, the htslib message (a corrupt record's names the field and its
  CHROM:POS); none of its calls are staged (``VcfReader.chunks`` says how when part of it was already
  handed on).  GT, DP or GQ used without a ``##FORMAT`` line, and GENE without an ``##INFO`` line (htslib
  assumes one, bcftools cannot print an undeclared tag) are declared for bcftools through ``bcftools
  reheader`` (``_Sites``).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from isal import igzip
from isal.igzip_lib import IsalError

from mercia.ingest.staging import CALL_SCHEMA, Staged

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
# Carrier calls per staged chunk of a streamed VCF: each chunk has fixed costs (~0.2 CPU-s: its scratch
# DuckDB, some 70 statements), so 500,000 took ~7% less CPU than 200,000 on the 95 MB trio file, for
# ~0.6 GB more peak RSS (2.0 GB there, the next chunk read ahead); 976,363 in one chunk peaked at 3.65 GB.
CALLS_PER_CHUNK = 500_000
BLOCK_SITES = 1_000  # sites a chunk may end after (``_Runs``)
SITE_BATCH_BYTES = 16 << 20  # bcftools' text per DuckDB statement (~24,000 sites of the trio benchmark file)
LONGEST_LINE = 256 << 20  # the longest line of a file the hashing pass reads (``_sample_hashes``)
# pysam's bundled bcftools, a command of it run in a child interpreter (the wheel ships no executable)
_BCFTOOLS = "import sys, pysam.bcftools; getattr(pysam.bcftools, sys.argv[1])(*sys.argv[2:], catch_stdout=False)"


class VcfFileError(ValueError):
    """A VCF htslib cannot open or read through, or one Mercia refuses whole (``field``: what the reject
    names); ``rejected``: its reject, staged alone, when the file broke after part of it had been handed to
    the load (which then rolls back)."""

    def __init__(self, message: str, rejected: Staged | None = None, field: str = "file"):
        super().__init__(message)
        self.rejected, self.field = rejected, field


# The largest POS a VCF holds: VCF 4.3 types an Integer as a 32-bit signed integer (section 1.3).  htslib
# parses larger ones, but bcftools query prints them wrapped round 2^32 (10,840,074,257 as 2,250,139,665 -
# 2^32 ...): a file with one is refused whole, before any call is read, rather than loaded at wrong places.
MAX_POS = 2**31 - 1


def _annotation_fields(header) -> dict[str, list[str]]:
    """'CSQ' / 'ANN' -> field names, from each INFO header's ``Format:`` description (pysam's header)."""
    out = {}
    for tag in ("CSQ", "ANN"):
        if tag not in header.info:
            continue
        description = header.info[tag].description or ""
        match = re.search(r"Format:\s*'?([^'\"]+)", description) or re.search(r"'([^']+)'", description)
        if match:
            out[tag] = [f.strip() for f in match.group(1).split("|")]
    return out


def _header_lines(file: Path) -> tuple[int, bool, int]:
    """How many header lines the file itself has (htslib's header adds lines it implies, such as
    ``##FILTER=<ID=PASS>``, so counting those would put every reject one line late), whether it is gzipped
    (un-gzipped with ISA-L, every member, as the FHIR reader does: a header spans BGZF blocks), and how many
    samples its last header line (``#CHROM``) names.  ``VcfFileError`` when the header cannot be un-gzipped."""
    with open(file, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    count, last = 0, b""
    try:
        with (igzip.open(file, "rb") if compressed else open(file, "rb")) as handle:
            for line in itertools.takewhile(lambda line: line.startswith(b"#"), handle):
                count, last = count + 1, line
    except (EOFError, OSError, IsalError) as exc:
        raise VcfFileError(f"not a readable VCF: {exc}") from exc
    return count, compressed, max(0, last.rstrip(b"\r\n").count(b"\t") - 8) if last.startswith(b"#CHROM") else 0


def _header(file: Path) -> tuple[list[str], str, set[str], set[str], dict[str, list[str]]]:
    """The file's samples, header text, FORMAT and INFO tags and annotation fields, as htslib (pysam) reads
    them; ``VcfFileError`` when it cannot."""
    import pysam

    verbosity = pysam.set_verbosity(0)  # (htslib would print that a .vcf.gz has no index, which is not needed)
    try:
        with pysam.VariantFile(str(file)) as vcf:
            return (list(vcf.header.samples), str(vcf.header), set(vcf.header.formats), set(vcf.header.info),
                    _annotation_fields(vcf.header))
    except (ValueError, OSError) as exc:
        # pysam names the full path: keep only the file's own name (an upload's folder is the server's)
        raise VcfFileError(f"not a readable VCF: {str(exc).replace(str(file), file.name)[:200]}") from exc
    finally:
        pysam.set_verbosity(verbosity)


def _sample_hashes(file: Path, header_lines: int, compressed: bool, samples: int) -> list[str]:
    """Each sample's content hash: the sum (order-free, as NMR's) of a 64-bit hash of every line's CHROM,
    POS, REF, ALT, INFO and FORMAT with the sample's column, and the line count.  It covers hom-ref calls
    too: a resend differing only there is a changed record.  The text is un-gzipped with ISA-L and split
    into columns by Arrow (one thread: its threaded parse took twice the CPU for a slower read) in blocks of
    ``SITE_BATCH_BYTES``, each hashed by one DuckDB statement; until 7 December DuckDB read the file itself
    (its own inflate, 2.15 s against 1.2 s a 95 MB file).  The sums are DuckDB's exact ones, block by block,
    so a file hashes as it did.  DuckDB's ``hash`` is not promised stable across its versions: an upgrade
    that changed it would make a resend ``changed`` once.  A file that cannot be read to the end (a
    truncated ``.vcf.gz``) raises ``VcfFileError`` before any of its calls is read, as does a line longer
    than ``LONGEST_LINE`` (Arrow needs a line within a block: the few files with lines over a block are
    read again in blocks that size)."""
    names = [f"c{i}" for i in range(9 + samples)]
    kept = ["c0", "c1", "c3", "c4", "c7", "c8", *names[9:]]
    # bytes, not text: Arrow's UTF-8 check of every INFO was a tenth of the pass, and DuckDB hashes a BLOB as the
    # VARCHAR of its bytes (the hashes did not move); POS stays text, for its cast to a number
    types = {n: pa.string() if n == "c1" else pa.binary() for n in kept}
    sums = ", ".join(f"sum(hash(line_hash, c{9 + i}))" for i in range(samples))
    query = f"""SELECT count(*), count(*) FILTER (WHERE position > {MAX_POS}), max(position), {sums} FROM (
        SELECT hash(c0, c1, c3, c4, c7, c8) AS line_hash, TRY_CAST(c1 AS HUGEINT) AS position, * FROM lines)"""
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # a streaming sum over small blocks
        for block in (SITE_BATCH_BYTES, LONGEST_LINE):
            try:
                count, beyond, largest, totals = 0, 0, 0, [None] * samples
                with igzip.open(file, "rb") if compressed else open(file, "rb") as text:
                    for _ in range(header_lines):  # (Arrow skips rows only within its first block)
                        text.readline()
                    blocks = pa_csv.open_csv(text, read_options=pa_csv.ReadOptions(
                            column_names=names, block_size=block, use_threads=False),
                            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
                            convert_options=pa_csv.ConvertOptions(column_types=types,
                                                                  include_columns=kept)) if text.peek(1) else ()
                    for lines in blocks:  # (a file without sites has none: Arrow calls it an empty CSV file)
                        con.register("lines", lines)
                        (rows, over, high, *parts), = con.execute(query).fetchall()
                        count, beyond = count + rows, beyond + over
                        largest = max(largest, high or 0)
                        totals = [t if p is None else int(p) + (t or 0) for t, p in zip(totals, parts)]
                break
            except pa.ArrowInvalid as exc:
                if "straddl" not in str(exc):
                    raise
                if block == LONGEST_LINE:
                    raise VcfFileError(f"a line longer than {LONGEST_LINE:,} bytes, the longest read; file not "
                                       "loaded") from exc
    except (pa.ArrowInvalid, EOFError, OSError, IsalError, duckdb.Error) as exc:
        message = str(exc).replace(str(file), file.name).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise VcfFileError(f"cannot be read to the end (truncated or corrupt): {message}; file not loaded") from exc
    finally:
        con.close()
    if beyond:
        raise VcfFileError(f"POS {largest:,} ({beyond:,} line{'s' if beyond > 1 else ''} beyond {MAX_POS:,}, the "
                           "largest position a VCF holds: a 32-bit integer, VCF 4.3 section 1.3); file not loaded",
                           field="POS")
    return [hashlib.md5(f"{count}\t{total}".encode()).hexdigest() for total in totals]


def _phenopacket_date(path: Path) -> str | None:
    """A VCF without ##fileDate takes the date of the phenopacket that points at it (region layout:
    ``rare_disease/<ODS>/phenopackets/<id>.json`` beside ``vcf/<id>.vcf``)."""
    if not path.exists():
        return None
    created = orjson.loads(path.read_bytes()).get("metaData", {}).get("created")
    return created[:10] if created else None


# What each annotation field is called in VEP's CSQ and in SnpEff's ANN.
_ANNOTATION_NAMES = {"CSQ": {"gene": "SYMBOL", "consequence": "Consequence", "hgvs": "HGVSc", "hgvs_p": "HGVSp"},
                     "ANN": {"gene": "Gene_Name", "consequence": "Annotation", "hgvs": "HGVS.c", "hgvs_p": "HGVS.p"}}


def _annotation_sql(annotations: dict[str, list[str]]) -> tuple[str, dict[str, str]]:
    """The annotation of each row of ``pairs`` (its ``tag``, ``note``: that tag's INFO text, ``raw_ref`` and
    ``raw_alt``): a query adding ``parts``, the first entry of its ALT allele (VEP writes a deletion's allele
    as '-' or without the shared base) split into fields, and the expressions of gene, consequence and HGVS
    c./p. over ``parts`` (empty fields NULL).  The first entry is usually this allele's, so it is tried first
    and the others split only when it is not; each entry is split once into a list (``split_part`` would
    split it again per field taken)."""
    def at(name: str) -> str:  # the field's position in the entries of the row's tag
        cases = " ".join(f"WHEN '{tag}' THEN {names.index(field) + 1}" for tag, names in annotations.items()
                         if (field := "Allele" if name == "allele" else _ANNOTATION_NAMES[tag][name]) in names)
        return f"CASE tag {cases} END" if cases else "NULL::INTEGER"

    allele = f"COALESCE({at('allele')}, 1)"  # without an Allele field, the first
    alleles = "(raw_alt, vep_allele, CASE WHEN vep_allele = '' THEN '-' ELSE vep_allele END)"
    query = f"""SELECT *, CASE WHEN note = '' OR tag IS NULL THEN NULL
                          WHEN first_parts[{allele}] IN {alleles} THEN first_parts
                          ELSE string_split(list_filter(string_split(note, ','),
                                                        lambda e: string_split(e, '|')[{allele}] IN {alleles})[1], '|')
                     END AS parts
        FROM (SELECT *, string_split(string_split(note, ',')[1], '|') AS first_parts,
                     CASE WHEN length(raw_ref) > 0 AND left(raw_alt, 1) = left(raw_ref, 1)
                               AND length(raw_alt) <> length(raw_ref) THEN raw_alt[2:] ELSE raw_alt END AS vep_allele
              FROM pairs)"""
    return query, {name: f"NULLIF(parts[{at(name)}], '')" for name in ("gene", "consequence", "hgvs", "hgvs_p")}


def _info_sql(tag: str) -> str:
    """The value of INFO ``tag`` as bcftools printed it in its own column (``%INFO/TAG``; '' when the site
    has none, which bcftools prints as '.').  Until 7 December the tag was found in the whole ``%INFO``
    text with ``strpos``: a third of this query's operator time on a VEP-annotated file."""
    return f"COALESCE(NULLIF(info_{tag.lower()}, '.'), '')"


def _calls_sql(samples: int, annotations: dict[str, list[str]]) -> str:
    """The query turning a batch of bcftools' site rows (``sites``: its text columns and ``site``, the
    site's number in the file) into carrier calls, ordered (site, ALT allele, sample).  Per ALT allele
    (split as the module describes) its carriers are the samples whose GT names its index; their GT is
    rewritten for it (``1`` this allele, ``0`` reference, ``.`` anything else); REF and ALT are trimmed of
    shared bases (suffix first, then prefix: at most length - 1 of either, POS moving with the prefix);
    the annotation is CSQ's, else ANN's (``_annotation_sql``), INFO/GENE the gene without one.  Each
    call comes from its site's row alone, so the query is one pipeline of projections, unnests and
    filters, in the sites' order (DuckDB keeps insertion order): until 7 December it was joins of
    materialised steps and a sort, a third more CPU for the same rows.  Parameter: the file's
    ``header_lines``.  Each call's ``sample`` (from 1, in the file's order) gives its record, hash, person and
    date (``_SampleKeys``), not the query: their text in every call was a tenth of its CPU."""
    def listed(tag: str) -> str:  # the samples' values of a FORMAT tag (and '' after the last one's ':')
        return f"string_split({tag.lower()}, ':')" if samples else "[]::VARCHAR[]"

    tag = " ".join(f"WHEN {_info_sql(name)} <> '' THEN '{name}'" for name in annotations)
    note = " ".join(f"WHEN {_info_sql(name)} <> '' THEN {_info_sql(name)}" for name in annotations)
    number = "CAST(NULLIF(split_part({}, ',', 1), '.') AS DOUBLE)"  # a FORMAT number's first value
    if annotations:
        noted, fields = _annotation_sql(annotations)
    else:
        noted, fields = "SELECT * FROM pairs", {name: "NULL::VARCHAR" for name in ("gene", "consequence", "hgvs", "hgvs_p")}
    # (each step is read once, so DuckDB inlines it: the whole query stays one pipeline)
    return f"""
        WITH alleles AS (
            SELECT *, CAST(alt_index AS VARCHAR) AS allele
            FROM (SELECT *, unnest(generate_series(1, len(alts))) AS alt_index
                  FROM (SELECT *, CASE WHEN alt = '.' THEN [] ELSE string_split(alt, ',') END AS alts,
                               {listed('GT')} AS gts, {listed('DP')} AS dps, {listed('GQ')} AS gqs
                        FROM sites))),
        candidates AS (  -- the samples whose GT text holds the allele's number (checked call by call below)
            SELECT site, chrom, CAST(pos AS BIGINT) AS pos, ref AS raw_ref, alt_index, allele, alts[alt_index] AS raw_alt,
                   gts, dps, gqs, candidates, info_gene, CASE {tag or "WHEN false THEN NULL"} END AS tag,
                   CASE {note or "WHEN false THEN ''"} END AS note
            FROM (SELECT *, list_filter(generate_series(1, {samples}), lambda i: contains(gts[i], allele)) AS candidates
                  FROM alleles)
            WHERE len(candidates) > 0),
        suffixed AS (
            SELECT *, CASE WHEN length(raw_ref) > 1 AND length(raw_alt) > 1 THEN list_max(list_filter(
                          range(0, least(length(raw_ref), length(raw_alt))),
                          lambda k: right(raw_ref, k) = right(raw_alt, k))) ELSE 0 END AS suffix
            FROM candidates),
        unsuffixed AS (
            SELECT *, left(raw_ref, length(raw_ref) - suffix) AS short_ref, left(raw_alt, length(raw_alt) - suffix)
                       AS short_alt
            FROM suffixed),
        pairs AS (  -- trimmed
            SELECT * EXCLUDE (pos, short_ref, short_alt, prefix, suffix), pos + prefix AS pos,
                   short_ref[prefix + 1:] AS ref, short_alt[prefix + 1:] AS alt
            FROM (SELECT *, CASE WHEN length(short_ref) > 1 AND length(short_alt) > 1 THEN list_max(list_filter(
                                range(0, least(length(short_ref), length(short_alt))),
                                lambda k: left(short_ref, k) = left(short_alt, k))) ELSE 0 END AS prefix
                  FROM unsuffixed)),
        noted AS ({noted}),
        calls AS (
            SELECT *, gts[sample] AS gt, string_split(replace(gts[sample], '|', '/'), '/') AS held
            FROM (SELECT site, chrom, pos, ref, alt, allele, gts, dps, gqs,
                         {fields['gene']} AS annotated_gene, {fields['consequence']} AS consequence,
                         {fields['hgvs']} AS hgvs, {fields['hgvs_p']} AS hgvs_p,
                         COALESCE(annotated_gene, NULLIF({_info_sql('GENE')}, '')) AS gene, unnest(candidates) AS sample
                  FROM noted))
        SELECT site, sample, $header_lines + site + 1 AS line, chrom, pos, ref, alt, gene,
               COALESCE(gene, chrom || ':' || pos) AS code,
               CASE WHEN contains(gt, '|') THEN array_to_string(states, '|') ELSE array_to_string(states, '/')
                   END AS genotype,
               hgvs, hgvs_p, consequence,
               CASE WHEN len(held) = 1 THEN 'hemizygous'
                    WHEN NOT (list_contains(states, '0') OR list_contains(states, '.')) THEN 'homozygous'
                    ELSE 'heterozygous' END AS zygosity,
               CAST({number.format('dps[sample]')} AS BIGINT) AS read_depth,
               {number.format('gqs[sample]')} AS genotype_quality
        FROM (SELECT *, list_transform(held, lambda h: CASE h WHEN allele THEN '1' WHEN '0' THEN '0' ELSE '.' END)
                            AS states
              FROM calls WHERE list_contains(held, allele))"""


class _SampleKeys:
    """A file's per-sample columns (record, hash, person, date; the assembly, one for all) as dictionary
    arrays over the sample's number: each sample's text is held once, for its calls and its row."""

    def __init__(self, file: str, samples: list[str], hashes: list[str], refs: list[str], dates: list[str | None],
                 assembly: str | None):
        self.values = {"record": pa.array([f"VCF/{file}/{sample}" for sample in samples], pa.string()),
                       "record_hash": pa.array(hashes, pa.string()), "person_ref": pa.array(refs, pa.string()),
                       "start": pa.array(dates, pa.string())}
        self.assembly = pa.array([assembly], pa.string())

    def _columns(self, index: pa.Array) -> dict[str, pa.Array]:
        return {name: pa.DictionaryArray.from_arrays(index, values) for name, values in self.values.items()}

    def of(self, calls: pa.Table) -> pa.Table:
        """``calls`` with its ``sample`` column (from 1) replaced by the sample's keys and the file's assembly."""
        index = pc.cast(pc.subtract(calls.column("sample").combine_chunks(), 1), pa.int32())
        columns = self._columns(index)
        columns["assembly"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(index), np.int32)), self.assembly)
        calls = calls.drop_columns(["sample"])
        for name, column in columns.items():
            calls = calls.append_column(name, column)
        return calls

    def sample_rows(self, line: int) -> pa.Table:
        """One row per sample without an allele (``alt`` NULL: nothing to write), staged with the file's first
        calls, so that every sample of the file is read as its record (``line``: the ``#CHROM`` line)."""
        count = len(self.values["record"])
        given = {**self._columns(pa.array(np.arange(count, dtype=np.int32))),
                 "line": pa.array(np.full(count, line, np.int64))}
        return pa.table({column.name: given[column.name] if column.name in given else pa.nulls(count, column.type)
                         for column in CALL_SCHEMA}, schema=CALL_SCHEMA)


class _ReadError(Exception):
    """htslib stopped inside a file: ``line`` is the last line read."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class VcfReader:
    """Files -> staged chunks of about ``calls_per_chunk`` carrier calls each (None: everything as one),
    whole sites per chunk, so a large VCF is never held whole."""

    def __init__(self, extract: str, calls_per_chunk: int | None = None):
        self.extract, self.calls_per_chunk = extract, calls_per_chunk

    def chunks(self, path: Path, sample_person: dict[str, str] | None = None, when: str | None = None
               ) -> Iterator[Staged]:
        """A file htslib cannot open, or cannot read to the end before any of it was handed on, is a
        reject (its calls are dropped); one that breaks after part of it was handed on raises
        ``VcfFileError`` (the caller's transaction rolls back) carrying that reject."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.name.endswith(VCF_SUFFIXES))
        chunk, held, held_rows = Staged(self.extract), [], 0
        for file in files:
            kept, kept_read, handed_on = [], 0, False
            try:
                for calls, read, revisits in self._file(file, sample_person or {}, when):
                    kept.append(calls)
                    kept_read += read
                    chunk.calls_revisit |= revisits
                    if self.calls_per_chunk and held_rows + sum(c.num_rows for c in kept) >= self.calls_per_chunk:
                        chunk.read += kept_read
                        yield self._filled(chunk, held + kept)
                        chunk, held, held_rows, kept, kept_read, handed_on = Staged(self.extract), [], 0, [], 0, True
            except _ReadError as exc:
                reason = (f"cannot read past line {exc.line} (truncated or corrupt): {str(exc).splitlines()[0][:200]}; "
                          "file not loaded")
                if handed_on:
                    rejected = Staged(self.extract, read=1)
                    rejected.reject(f"VCF/{file.name}", "file", reason, None)
                    raise VcfFileError(f"{file.name}: {reason}", rejected) from exc
                chunk.read += 1
                chunk.reject(f"VCF/{file.name}", "file", reason, None)
                continue
            except VcfFileError as exc:  # cannot be opened or read through, or refused whole: nothing read
                chunk.read += 1
                chunk.reject(f"VCF/{file.name}", exc.field, str(exc), None)
                continue
            chunk.read += kept_read
            held += kept
            held_rows += sum(c.num_rows for c in kept)
        yield self._filled(chunk, held)

    @staticmethod
    def _filled(chunk: Staged, calls: list[pa.Table]) -> Staged:
        """``chunk`` with the carrier calls staged for the load's bulk path (``Staged.calls``)."""
        chunk.calls = _staged_calls(calls)
        return chunk

    def _file(self, file: Path, sample_person: dict[str, str], when: str | None
              ) -> Iterator[tuple[pa.Table, int, bool]]:
        """(carrier calls, calls read, whether they reach back into positions an earlier piece held:
        ``_Spans``) per run of blocks of sites holding about ``calls_per_chunk`` carriers (all of them when
        None), cut (``_Runs``) after a block of ``BLOCK_SITES`` sites (extended so
        that a position's sites stay in one block) that brought the run to ``calls_per_chunk``.
        ``VcfFileError`` when htslib cannot open the file or DuckDB cannot read it to the end
        (``_sample_hashes``), ``_ReadError`` when bcftools stops inside."""
        number, compressed, named = _header_lines(file)
        # a file cut or corrupt in its body is found here, before htslib reads its header (pysam refuses a
        # BGZF file without its end marker, as any cut one is, naming no more than that)
        hashes = _sample_hashes(file, number, compressed, named) if named else []
        samples, text, formats, infos, annotations = _header(file)
        meta = {m.group(1): m.group(2) for m in re.finditer(r"^##(\w+)=(.*)$", text, re.MULTILINE)}
        date = when or meta.get("fileDate")
        if date and re.fullmatch(r"\d{8}", date):
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        refs = [sample_person.get(s, f"Subject/{s}") for s in samples]
        dates = [date or _phenopacket_date(file.parent.parent / "phenopackets" / f"{s}.json") for s in samples]
        con = duckdb.connect()
        query, params = _calls_sql(len(samples), annotations), {"header_lines": number}
        keys = _SampleKeys(file.name, samples, hashes, refs, dates, meta.get("reference") or None)
        runs = _Runs(self.calls_per_chunk, [keys.sample_rows(number)])
        spans = _Spans()
        try:
            with _Sites(file, text, len(samples), formats, infos, list(annotations)) as sites:
                for batch in sites.batches():
                    con.register("sites", pa.Table.from_batches([batch]))
                    calls = keys.of(con.sql(query, params=params).to_arrow_table())
                    for run, read in runs.add(batch, calls, len(samples)):
                        yield run, read, spans.revisited(run)
                if sites.failure:
                    raise _ReadError(number + sites.count, sites.failure)
        finally:
            con.close()
        run, read = runs.rest()
        yield run, read, spans.revisited(run)


class _Sites:
    """A file's sites as bcftools (htslib) prints them, read as Arrow batches of text columns (CHROM, POS,
    REF, ALT, the INFO tags the rows take (CSQ and ANN as declared, GENE: ``info_csq`` ...), then GT, DP and GQ
    as declared, each all samples' values).  bcftools runs in a child
    process (pysam's bundled bcftools, called in a fresh interpreter), so htslib's parse takes the other
    core while this one works on the previous batch; ``failure`` is htslib's message when it stopped
    inside the file."""

    def __init__(self, file: Path, header: str, samples: int, formats: set[str], infos: set[str],
                 annotations: list[str]):
        tags = ("GT", "DP", "GQ") if samples else ()
        notes = [*annotations, "GENE"]  # INFO tags, each printed alone (``_info_sql``)
        self.columns = ["chrom", "pos", "ref", "alt", *(f"info_{tag.lower()}" for tag in notes),
                        *(tag.lower() for tag in tags)]
        # one column per FORMAT tag, its samples' values each ended by ':' (no FORMAT value holds one)
        self.query = ["query", "-o", "/dev/stdout", "-f", "%CHROM\\t%POS\\t%REF\\t%ALT"
                      + "".join(f"\\t%INFO/{tag}" for tag in notes) + "".join(f"\\t[%{tag}:]" for tag in tags) + "\\n"]
        # bcftools cannot print a tag the header does not declare (htslib declares one only when a record
        # uses it): such a file is given a header declaring it, as htslib would (Type=String)
        self.missing = [f'##FORMAT=<ID={tag},Number=1,Type=String,Description="{tag}">' for tag in tags
                        if tag not in formats]
        self.missing += [f'##INFO=<ID={tag},Number=1,Type=String,Description="{tag}">' for tag in notes
                         if tag not in infos]
        self.file, self.header, self.count, self.failure = file, header, 0, None

    def __enter__(self):
        self.errors, self.processes = tempfile.TemporaryFile(), []
        if self.missing:
            self.declared = tempfile.NamedTemporaryFile("w", suffix=".txt")
            self.declared.write(self.header.replace("#CHROM", "".join(f"{line}\n" for line in self.missing) + "#CHROM",
                                                    1))
            self.declared.flush()
            self._start("reheader", "-h", self.declared.name, "-o", "/dev/stdout", str(self.file))
            self._start(*self.query, "-", stdin=self.processes[0].stdout)
            self.processes[0].stdout.close()  # (bcftools query holds it now)
        else:
            self._start(*self.query, str(self.file))
        return self

    def _start(self, *command: str, stdin=None) -> None:
        self.processes.append(subprocess.Popen([sys.executable, "-c", _BCFTOOLS, *command], stdin=stdin,
                                               stdout=subprocess.PIPE, stderr=self.errors))

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            if process.poll() is None:  # the reader stopped early: end bcftools, started here
                process.kill()
            process.wait()
            process.stdout.close()
        self.errors.close()
        if self.missing:
            self.declared.close()

    def batches(self) -> Iterator[pa.RecordBatch]:
        """Batches of about ``SITE_BATCH_BYTES`` of bcftools' text, each with ``site``: its sites' numbers
        in the file (from 0); after the last, ``failure`` tells whether bcftools read the file through."""
        try:
            reader = pa_csv.open_csv(self.processes[-1].stdout, read_options=pa_csv.ReadOptions(
                column_names=self.columns, block_size=SITE_BATCH_BYTES, use_threads=False),
                parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
                convert_options=pa_csv.ConvertOptions(column_types={name: pa.string() for name in self.columns}))
        except pa.ArrowInvalid:  # nothing printed: no site, or bcftools failed at the first
            reader = iter(())
        for batch in reader:
            yield batch.append_column("site", pa.array(np.arange(self.count, self.count + batch.num_rows)))
            self.count += batch.num_rows
        if any([process.wait() for process in self.processes]):
            self.errors.seek(0)
            # (bcftools names the full path: keep only the file's own name)
            messages = self.errors.read().decode(errors="replace").replace(str(self.file), self.file.name).splitlines()
            self.failure = next((m for m in messages if m.startswith("[E::")), None) or \
                next((m for m in messages if m.startswith("Error")), "bcftools stopped")


class _Runs:
    """Cuts a file's carrier calls into runs of about ``calls_per_chunk`` (None: one run) at the ends of
    blocks of ``BLOCK_SITES`` sites, a block running on while its next site has its last one's position (so
    a position's sites are never split between chunks).  The first run also holds the sample rows."""

    def __init__(self, calls_per_chunk: int | None, held: list[pa.Table]):
        self.calls_per_chunk, self.held, self.read = calls_per_chunk, held, 0
        self.closed = 0  # carriers in the blocks closed since the last cut
        self.open_sites, self.open_carriers, self.last = 0, 0, None  # the open block; the last site's position

    def add(self, batch: pa.RecordBatch, calls: pa.Table, samples: int) -> Iterator[tuple[pa.Table, int]]:
        """The runs this batch of sites (and its carrier calls, ordered by site) completes."""
        sites, first = batch.num_rows, batch.column("site")[0].as_py() if batch.num_rows else 0
        chrom, pos = batch.column("chrom"), pc.cast(batch.column("pos"), pa.int64()).to_numpy()
        moved = np.ones(sites, bool)  # the site's position is not its previous one's
        if sites:
            moved[1:] = pc.not_equal(chrom.slice(1), chrom.slice(0, sites - 1)).to_numpy(zero_copy_only=False) \
                | (pos[1:] != pos[:-1])
            moved[0] = (chrom[0].as_py(), int(pos[0])) != self.last
            self.last = (chrom[sites - 1].as_py(), int(pos[-1]))
        alts = batch.column("alt")
        read = samples * np.where(pc.equal(alts, ".").to_numpy(zero_copy_only=False), 0,
                                  pc.count_substring(alts, ",").to_numpy(zero_copy_only=False) + 1)
        site_of = calls.column("site").to_numpy() - first
        carriers = np.bincount(site_of, minlength=sites)
        start, cut = 0, 0  # the open block's first site in this batch; the last cut in it
        while True:
            earliest = start + max(BLOCK_SITES - self.open_sites, 0)  # the first site the block may end before
            candidates = np.flatnonzero(moved[earliest:])
            if not candidates.size:
                break
            end = earliest + int(candidates[0])  # the block ends before this site
            self.closed += self.open_carriers + int(carriers[start:end].sum())
            self.open_sites, self.open_carriers, start = 0, 0, end
            if self.calls_per_chunk and self.closed >= self.calls_per_chunk:
                bound = int(np.searchsorted(site_of, end))
                self.held.append(calls.slice(cut_call := int(np.searchsorted(site_of, cut)), bound - cut_call))
                yield self._cut(int(read[cut:end].sum()))
                cut = end
        self.open_sites += sites - start
        self.open_carriers += int(carriers[start:].sum())
        self.held.append(calls.slice(int(np.searchsorted(site_of, cut))))
        self.read += int(read[cut:].sum())

    def _cut(self, read: int) -> tuple[pa.Table, int]:
        run, read = _staged_calls(self.held), self.read + read
        self.held, self.read, self.closed = [], 0, 0
        return run, read

    def rest(self) -> tuple[pa.Table, int]:
        """The calls after the last cut (the file's end)."""
        return self._cut(0)


class _Spans:
    """Per chromosome, the span of (trimmed) positions of the calls a file handed on so far.  A sorted file's
    pieces follow one another, so an allele listed twice meets its copy in one chunk; a piece that reaches
    back into an earlier span (an unsorted file, or trimming moving a position over a chunk's edge) may
    repeat a call an earlier chunk wrote, which the load then looks up (``Staged.calls_revisit``)."""

    def __init__(self):
        self.held: dict[str, tuple[int, int]] = {}

    def revisited(self, calls: pa.Table) -> bool:
        spans = calls.group_by("chrom").aggregate([("pos", "min"), ("pos", "max")])
        revisits = False
        for chrom, low, high in zip(*(spans.column(c).to_pylist() for c in ("chrom", "pos_min", "pos_max"))):
            if chrom is None:  # the sample rows
                continue
            if chrom in self.held:
                held_low, held_high = self.held[chrom]
                revisits |= low <= held_high and high >= held_low
                low, high = min(low, held_low), max(high, held_high)
            self.held[chrom] = (low, high)
        return revisits


def _staged_calls(tables: list[pa.Table]) -> pa.Table:
    """Tables of calls (and sample rows) as one ``CALL_SCHEMA`` table."""
    return pa.concat_tables([t.select(CALL_SCHEMA.names).cast(CALL_SCHEMA) for t in tables]) if tables \
        else CALL_SCHEMA.empty_table()


def read_vcf(path: Path | str, sample_person: dict[str, str] | None = None) -> Staged:
    """The whole file (or folder of files) as one staged extract (``read_vcf_chunks`` for large files)."""
    return next(VcfReader(Path(path).name).chunks(Path(path), sample_person))


def read_vcf_chunks(path: Path | str, calls_per_chunk: int | None = None) -> Iterator[Staged]:
    """The file(s) streamed as staged chunks of about ``calls_per_chunk`` carrier calls (default
    ``CALLS_PER_CHUNK``) for one load (``load_staged`` takes them in one transaction)."""
    return VcfReader(Path(path).name, calls_per_chunk or CALLS_PER_CHUNK).chunks(Path(path))
