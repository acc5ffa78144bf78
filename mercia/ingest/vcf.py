"""VCF (``.vcf``, bgzipped ``.vcf.gz``, one or many samples) -> staged variant calls, read with cyvcf2 (htslib).

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
- Each sample is staged once per file as a row without an allele (``_sample_rows``, line: the ``#CHROM``
  header line naming it), so a sample with no carrier call is still its record: a resend in which it
  lost every call replaces its rows with none, and a sample without a person is rejected even so.
- Kept per call: GT, zygosity (heterozygous / homozygous / hemizygous), FORMAT DP and GQ, and the
  annotation of this ALT allele from VEP ``CSQ`` or SnpEff ``ANN`` (gene, consequence, HGVS c. and p.);
  ``INFO/GENE`` is the gene when neither is present.
- Vectorised: per block of ``BLOCK_SITES`` sites, numpy finds each ALT allele's carriers and their allele
  states in cyvcf2's stacked genotype/DP/GQ arrays for all samples (per site, Python only takes cyvcf2's
  fields); per chunk, DuckDB splits the CSQ/ANN annotations (``_annotation_sql``) and spells the rows (no
  Python work per call or annotation).  The rows are ``Staged.calls``, which the load writes set-based.
- Streamed: ``read_vcf_chunks`` hands the load chunks of about ``CALLS_PER_CHUNK`` carrier calls (whole
  sites), so a large file is never held whole.
- A sample's content hash covers its column of every line, order-free (``_sample_hashes``: one DuckDB
  pass over the file's text before the calls are read, so every chunk already carries it).
- Sites are never split between chunks at one position (``CHROM``, ``POS``), so in a sorted file an
  allele listed twice for a sample is found in one chunk (the load keeps its last copy).
- A file htslib cannot read to the end (a truncated ``.vcf.gz``, a corrupt record) is rejected as a whole:
  record ``VCF/<file>``, field ``file``, the htslib message; none of its calls are staged (``VcfReader.chunks``
  says how when part of it was already handed on).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
from isal import igzip

from mercia.ingest.staging import CALL_SCHEMA, Staged

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz")
_MISSING_INT = np.iinfo(np.int32).min
# Carrier calls per staged chunk of a streamed VCF: each chunk's load stays well under 1 GB
# (976,363 carrier rows loaded as one chunk peaked at 3.65 GB).
CALLS_PER_CHUNK = 200_000
BLOCK_SITES = 1_000  # sites whose genotypes one numpy pass reads (``_add_block``)


class VcfFileError(ValueError):
    """A VCF htslib cannot open or read through; ``rejected``: its reject, staged alone, when the file
    broke after part of it had been handed to the load (which then rolls back)."""

    def __init__(self, message: str, rejected: Staged | None = None):
        super().__init__(message)
        self.rejected = rejected


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


def _call_text(states: tuple[int, ...], phased: bool) -> tuple[str, str]:
    """(genotype, zygosity) of one call whose alleles are ``states`` (0 reference, 1 this ALT, 2 another
    ALT or missing, 3 absent: a haploid call in a diploid site)."""
    called = ["01."[state] for state in states if state != 3]
    zygosity = "hemizygous" if len(called) == 1 else "homozygous" if called.count("1") == len(called) else \
        "heterozygous"
    return ("|" if phased else "/").join(called), zygosity


def _header_lines(file: Path) -> tuple[int, bool]:
    """How many header lines the file itself has (htslib's ``raw_header`` adds lines it implies, such as
    ``##FILTER=<ID=PASS>``, so counting those would put every reject one line late), and whether it is
    gzipped (un-gzipped with ISA-L, every member, as the FHIR reader does: a header spans BGZF blocks)."""
    with open(file, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (igzip.open(file, "rb") if compressed else open(file, "rb")) as handle:  # (htslib read it whole first)
        return sum(1 for _ in itertools.takewhile(lambda line: line.startswith(b"#"), handle)), compressed


def _sample_hashes(file: Path, header_lines: int, compressed: bool, samples: list[str]) -> list[str]:
    """Each sample's content hash: the sum (order-free, as NMR's) of a 64-bit hash of every line's CHROM,
    POS, REF, ALT, INFO and FORMAT with the sample's column, and the line count, in one DuckDB pass over
    the text (~0.15 CPU-s per 10 MB of the trio file; an MD5 per call instead cost 11x as much on the
    500-sample file).  It covers hom-ref calls too: a resend differing only there is a changed record.
    DuckDB's ``hash`` is not promised stable across its versions: an upgrade that changed it would make a
    resend ``changed`` once.  A file DuckDB cannot read to the end (a truncated ``.vcf.gz``) raises
    ``VcfFileError`` before any of its calls is read."""
    columns = {f"c{i}": "VARCHAR" for i in range(9)} | {f"s{i}": "VARCHAR" for i in range(len(samples))}
    sums = ", ".join(f"CAST(sum(hash(line_hash, s{i})) AS VARCHAR)" for i in range(len(samples)))
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")  # a streaming sum: one core, the other is the reader's
        count, *totals = con.execute(f"""
            SELECT count(*), {sums} FROM (
                SELECT hash(c0, c1, c3, c4, c7, c8) AS line_hash, * FROM read_csv(
                    $file, compression = $compression, delim = chr(9), header = false, skip = $skip, quote = '',
                    escape = '', auto_detect = false, columns = $columns, max_line_size = 268435456))""",
            {"file": str(file), "compression": "gzip" if compressed else "none", "skip": header_lines,
             "columns": columns}).fetchone()
    except duckdb.Error as exc:
        message = str(exc).replace(str(file), file.name).splitlines()[0][:200]
        raise VcfFileError(f"cannot be read to the end (truncated or corrupt): {message}; file not loaded") from exc
    finally:
        con.close()
    return [hashlib.md5(f"{count}\t{total}".encode()).hexdigest() for total in totals]


def _phenopacket_date(path: Path) -> str | None:
    """A VCF without ##fileDate takes the date of the phenopacket that points at it (region layout:
    ``rare_disease/<ODS>/phenopackets/<id>.json`` beside ``vcf/<id>.vcf``)."""
    if not path.exists():
        return None
    created = orjson.loads(path.read_bytes()).get("metaData", {}).get("created")
    return created[:10] if created else None


# Per (site, ALT allele), as columns: where the file has it (site, line), the split and trimmed allele
# (chrom, pos, ref, alt), what its annotation is matched on (the untrimmed ``raw_ref``, ``raw_alt``), the
# site's INFO/GENE, annotation tag and text, and how many carrier calls it has.
_PAIR_COLUMNS = ("chrom", "pos", "ref", "alt", "raw_ref", "raw_alt", "info_gene", "tag", "note", "line", "calls")
_STRING_COLUMNS = ("chrom", "ref", "alt", "raw_ref", "raw_alt", "info_gene", "tag", "note")
# What each annotation field is called in VEP's CSQ and in SnpEff's ANN.
_ANNOTATION_NAMES = {"CSQ": {"gene": "SYMBOL", "consequence": "Consequence", "hgvs": "HGVSc", "hgvs_p": "HGVSp"},
                     "ANN": {"gene": "Gene_Name", "consequence": "Annotation", "hgvs": "HGVS.c", "hgvs_p": "HGVS.p"}}


def _annotation_sql(annotations: dict[str, list[str]]) -> str:
    """The ``notes`` query: per (site, ALT) row of ``pairs`` with an annotation, the first entry of its
    ALT allele (VEP writes a deletion's allele as '-' or without the shared base) split into gene,
    consequence and HGVS c./p. (empty fields NULL), for a whole chunk at once.  The first entry is
    usually this allele's, so it is tried first and the others split only when it is not; each entry
    is split once into a list (``split_part`` would split it again per field taken)."""
    def at(name: str) -> str:  # the field's position in the entries of the pair's tag
        cases = " ".join(f"WHEN '{tag}' THEN {names.index(field) + 1}" for tag, names in annotations.items()
                         if (field := "Allele" if name == "allele" else _ANNOTATION_NAMES[tag][name]) in names)
        return f"CASE tag {cases} END" if cases else "NULL::INTEGER"

    def field(name: str) -> str:
        return f"NULLIF(parts[{at(name)}], '')"

    allele = f"COALESCE({at('allele')}, 1)"  # without an Allele field, the first
    alleles = "(raw_alt, vep_allele, CASE WHEN vep_allele = '' THEN '-' ELSE vep_allele END)"
    return f"""
        WITH noted AS (
            SELECT pair, tag, raw_alt, note,
                   string_split(CASE WHEN contains(note, ',') THEN left(note, strpos(note, ',') - 1) ELSE note END, '|')
                       AS first_parts,
                   CASE WHEN length(raw_ref) > 0 AND left(raw_alt, 1) = left(raw_ref, 1)
                             AND length(raw_alt) <> length(raw_ref) THEN raw_alt[2:] ELSE raw_alt END AS vep_allele
            FROM pairs WHERE note <> '' AND tag IS NOT NULL)
        SELECT pair, {field("gene")} AS gene, {field("consequence")} AS consequence, {field("hgvs")} AS hgvs,
               {field("hgvs_p")} AS hgvs_p
        FROM (SELECT pair, tag, CASE WHEN first_parts[{allele}] IN {alleles} THEN first_parts
                                     ELSE string_split(list_filter(string_split(note, ','),
                                                                   lambda e: string_split(e, '|')[{allele}] IN {alleles})[1], '|')
                                END AS parts
              FROM noted)"""


class _Carriers:
    """A file's carrier calls as numpy pieces, one per (site, ALT allele); ``table`` joins them with the
    sites' annotations, samples and genotype texts in DuckDB (no Python work per call or annotation)."""

    def __init__(self):
        self.pairs: dict[str, list] = {name: [] for name in _PAIR_COLUMNS}
        self.calls: dict[str, list[np.ndarray]] = {"sample": [], "text": [], "depth": [], "quality": []}
        self.texts: dict[tuple[tuple[int, ...], bool], int] = {}  # (allele states, phased) -> row of texts
        self.count = 0  # carrier calls so far

    def add(self, pairs: dict[str, np.ndarray], carriers: np.ndarray, states: np.ndarray, phased: np.ndarray,
            depth: np.ndarray, quality: np.ndarray) -> None:
        """``pairs``: (site, ALT) columns (``_PAIR_COLUMNS``; "calls" carriers each); the other arrays:
        one row per carrier in that order, ``states`` its alleles for the row's ALT (see ``_call_text``)."""
        for name, values in pairs.items():
            self.pairs[name].append(values)
        self.count += carriers.size
        ploidy = states.shape[1]
        code = (states * (4 ** np.arange(ploidy))).sum(axis=1) + phased * 4 ** ploidy
        unique, inverse = np.unique(code, return_inverse=True)
        rows = [self.texts.setdefault((tuple(int(c) // 4 ** j % 4 for j in range(ploidy)), bool(c // 4 ** ploidy)),
                                      len(self.texts)) for c in unique]
        for name, values in (("sample", carriers), ("text", np.asarray(rows, np.int64)[inverse]), ("depth", depth),
                             ("quality", quality)):
            self.calls[name].append(values)

    def table(self, file: str, samples: list[str], hashes: list[str], refs: list[str], dates: list[str | None],
              assembly: str | None, annotations: dict[str, list[str]]) -> pa.Table:
        """One row per carrier call, in file order, with the ``CALL_SCHEMA`` columns."""
        pairs = {name: np.concatenate(values) if values else np.array([], object if name in _STRING_COLUMNS
                                                                      else np.int64)
                 for name, values in self.pairs.items()}
        call_pair = np.repeat(np.arange(pairs["calls"].size), pairs["calls"].astype(np.int64))
        pieces = {name: np.concatenate(values) if values else np.array([], np.float64 if name in ("depth", "quality")
                                                                         else np.int64)
                  for name, values in self.calls.items()}
        calls = pa.table({"position": np.arange(call_pair.size), "pair": call_pair, "sample": pieces["sample"],
                          "text": pieces["text"], "depth": pa.array(pieces["depth"], from_pandas=True),
                          "quality": pa.array(pieces["quality"], from_pandas=True)})
        texts = [_call_text(states, phased) for states, phased in self.texts]
        con = duckdb.connect()
        try:
            con.register("calls", calls)
            con.register("pairs", pa.table({"pair": np.arange(pairs["calls"].size), **{
                name: pa.array(values, pa.string() if name in _STRING_COLUMNS else pa.int64())
                for name, values in pairs.items() if name != "calls"}}))
            con.register("samples", pa.table({"sample": np.arange(len(samples)), "name": pa.array(samples, pa.string()),
                                              "record_hash": pa.array(hashes, pa.string()),
                                              "person_ref": pa.array(refs, pa.string()),
                                              "start": pa.array(dates, pa.string())}))
            con.register("texts", pa.table({"text": np.arange(len(texts), dtype=np.int64),
                                            "genotype": pa.array([g for g, _ in texts], pa.string()),
                                            "zygosity": pa.array([z for _, z in texts], pa.string())}))
            notes = _annotation_sql(annotations) if annotations else \
                "SELECT NULL::BIGINT AS pair, NULL AS gene, NULL AS consequence, NULL AS hgvs, NULL AS hgvs_p"
            con.execute(f"""CREATE TABLE sites AS
                SELECT p.pair, p.chrom, p.pos, p.ref, p.alt, p.line, COALESCE(n.gene, p.info_gene) AS gene,
                       n.consequence, n.hgvs, n.hgvs_p
                FROM pairs p LEFT JOIN ({notes}) n USING (pair)""")
            return con.sql("""
                SELECT 'VCF/' || $file || '/' || p.name AS record, p.record_hash, p.person_ref, p.start, s.line,
                       $assembly AS assembly, s.chrom, s.pos, s.ref, s.alt, s.gene,
                       COALESCE(s.gene, s.chrom || ':' || s.pos) AS code, t.genotype, s.hgvs, s.hgvs_p, s.consequence,
                       t.zygosity, CAST(c.depth AS BIGINT) AS read_depth, c.quality AS genotype_quality
                FROM calls c
                JOIN sites s USING (pair) JOIN samples p USING (sample) JOIN texts t USING (text)
                ORDER BY c.position""", params={"file": file, "assembly": assembly}).to_arrow_table()
        finally:
            con.close()


def _sample_rows(file: str, samples: list[str], hashes: list[str], refs: list[str], dates: list[str | None],
                 line: int) -> pa.Table:
    """One row per sample without an allele (``alt`` NULL: nothing to write), staged with the file's first
    calls, so that every sample of the file is read as its record."""
    given = {"record": [f"VCF/{file}/{sample}" for sample in samples], "record_hash": hashes, "person_ref": refs,
             "start": dates, "line": [line] * len(samples)}
    return pa.table({column.name: pa.array(given[column.name], column.type) if column.name in given
                     else pa.nulls(len(samples), column.type) for column in CALL_SCHEMA}, schema=CALL_SCHEMA)


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
            except VcfFileError as exc:  # cannot be opened or read through: nothing read
                chunk.read += 1
                chunk.reject(f"VCF/{file.name}", "file", str(exc), None)
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
        ``_Spans``) per block of sites of about ``calls_per_chunk`` carriers (one block when None);
        ``VcfFileError`` when htslib cannot open the file or DuckDB cannot read it to the end
        (``_sample_hashes``), ``_ReadError`` when htslib stops inside."""
        from cyvcf2 import VCF

        try:
            vcf = VCF(str(file), lazy=True)
        except Exception as exc:  # noqa: BLE001 (cyvcf2 raises bare Exception for unreadable files)
            # cyvcf2 names the full path: keep only the file's own name (an upload's folder is the server's)
            raise VcfFileError(f"not a readable VCF: {str(exc).replace(str(file), file.name)[:200]}") from exc
        header = {m.group(1): m.group(2) for m in re.finditer(r"^##(\w+)=(.*)$", vcf.raw_header, re.MULTILINE)}
        assembly = header.get("reference") or None
        date = when or header.get("fileDate")
        if date and re.fullmatch(r"\d{8}", date):
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        annotations = _annotation_fields(vcf)
        samples = list(vcf.samples)
        refs = [sample_person.get(s, f"Subject/{s}") for s in samples]
        dates = [date or _phenopacket_date(file.parent.parent / "phenopackets" / f"{s}.json") for s in samples]
        carriers, read, block, at, spans = _Carriers(), 0, [], None, _Spans()
        try:
            number, compressed = _header_lines(file)
            hashes = _sample_hashes(file, number, compressed, samples) if samples else []
            staged = [_sample_rows(file.name, samples, hashes, refs, dates, number)]  # with the first calls
            sites = iter(vcf)
            while True:
                try:
                    site = next(sites)
                except StopIteration:
                    break
                except Exception as exc:  # noqa: BLE001 (htslib read errors surface as bare Exception)
                    raise _ReadError(number, str(exc)) from exc
                number += 1
                if len(block) >= BLOCK_SITES and (site.CHROM, site.POS) != at:  # a position's sites in one block
                    _add_block(block, len(samples), carriers)
                    block = []
                    if self.calls_per_chunk and carriers.count >= self.calls_per_chunk:
                        staged.append(carriers.table(file.name, samples, hashes, refs, dates, assembly, annotations))
                        yield _staged_calls(staged), read, spans.revisited(staged[-1])
                        carriers, read, staged = _Carriers(), 0, []
                at = (site.CHROM, site.POS)
                alts = site.ALT  # (cyvcf2 builds the list on each access)
                read += len(samples) * len(alts)
                if samples:
                    info, tag, note = site.INFO, None, None
                    for tag in annotations:
                        if note := info.get(tag):
                            break
                    else:
                        tag = note = None
                    block.append((at[0], at[1], site.REF, alts, number, site.genotype.array(),
                                  _format_field(site, "DP"), _format_field(site, "GQ"), info.get("GENE"), tag, note))
        finally:
            vcf.close()
        _add_block(block, len(samples), carriers)
        staged.append(carriers.table(file.name, samples, hashes, refs, dates, assembly, annotations))
        yield _staged_calls(staged), read, spans.revisited(staged[-1])


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


def _first_numbers(values: list[np.ndarray | None], samples: int) -> np.ndarray:
    """A block's FORMAT numbers (first value per sample) as float64 (sites x samples), NaN when absent
    (htslib: int32 minimum for integers, NaN for floats; None: the tag is not declared)."""
    out = np.full((len(values), samples), np.nan)
    integer = np.zeros(len(values), bool)
    for i, site_values in enumerate(values):
        if site_values is not None:
            out[i] = site_values[:, 0]
            integer[i] = site_values.dtype.kind == "i"
    out[integer[:, None] & (out == _MISSING_INT)] = np.nan
    return out


def _add_block(block: list[tuple], samples: int, carriers: _Carriers) -> None:
    """A block of sites' carriers of each ALT allele (split as the module describes) found in one numpy
    pass over the block's stacked genotypes; calls in file order (site, ALT, sample).  Sites of lower
    ploidy are padded with absent alleles (state 3: not spelled, so a haploid call stays hemizygous)."""
    if not block:
        return
    chroms, positions, refs, alts, lines, genotypes, depths, qualities, genes, tags, notes = zip(*block)
    widths = {site_genotypes.shape[1] for site_genotypes in genotypes}
    if len(widths) == 1:  # one ploidy throughout (the usual case): one stack
        stacked = np.stack(genotypes)
        alleles, phased = stacked[:, :, :-1].astype(np.int16), stacked[:, :, -1].astype(bool)
    else:
        alleles = np.full((len(block), samples, max(widths) - 1), -2, np.int16)
        phased = np.zeros((len(block), samples), bool)
        for i, site_genotypes in enumerate(genotypes):
            alleles[i, :, :site_genotypes.shape[1] - 1] = site_genotypes[:, :-1]
            phased[i] = site_genotypes[:, -1].astype(bool)
    alt_counts = np.fromiter(map(len, alts), np.int64, len(block))
    if not alt_counts.max():  # no ALT allele in the whole block (ALT '.'): no carriers
        return
    found = [np.nonzero((alleles == index).any(axis=2) & (alt_counts >= index)[:, None]) + (index,)
             for index in range(1, int(alt_counts.max()) + 1)]
    site_of = np.concatenate([f[0] for f in found])
    sample_of = np.concatenate([f[1] for f in found])
    alt_of = np.concatenate([np.full(f[0].size, f[2]) for f in found])
    order = np.lexsort((sample_of, alt_of, site_of))
    site_of, sample_of, alt_of = site_of[order], sample_of[order], alt_of[order]
    width = int(alt_counts.max()) + 1
    pairs, counts = np.unique(site_of * width + alt_of, return_counts=True)
    pair_site, pair_alt = pairs // width, pairs % width
    flat_alts = np.array([alt for site_alts in alts for alt in site_alts], object)
    raw_alt = flat_alts[np.cumsum(alt_counts)[pair_site] - alt_counts[pair_site] + pair_alt - 1]
    raw_ref = np.array(refs, object)[pair_site]
    pos, ref, alt = np.array(positions, np.int64)[pair_site], raw_ref.copy(), raw_alt.copy()
    for i in np.nonzero((np.fromiter(map(len, raw_ref), np.int64, raw_ref.size) > 1)
                        & (np.fromiter(map(len, raw_alt), np.int64, raw_alt.size) > 1))[0]:
        pos[i], ref[i], alt[i] = _trim(int(pos[i]), raw_ref[i], raw_alt[i])  # only where both have 2+ bases
    carriers.add({"chrom": np.array(chroms, object)[pair_site], "pos": pos, "ref": ref, "alt": alt, "raw_ref": raw_ref,
                  "raw_alt": raw_alt, "info_gene": np.array(genes, object)[pair_site],
                  "tag": np.array(tags, object)[pair_site], "note": np.array(notes, object)[pair_site],
                  "line": np.array(lines, np.int64)[pair_site], "calls": counts},
                 sample_of, _states(alleles[site_of, sample_of], alt_of), phased[site_of, sample_of],
                 _first_numbers(depths, samples)[site_of, sample_of],
                 _first_numbers(qualities, samples)[site_of, sample_of])


def _states(held: np.ndarray, alt: np.ndarray) -> np.ndarray:
    """Each carrier's alleles for its ALT: 1 this ALT, 0 reference, 3 absent (padding), 2 anything else."""
    return np.where(held == alt[:, None], 1, np.where(held == 0, 0, np.where(held == -2, 3, 2)))


def read_vcf(path: Path | str, sample_person: dict[str, str] | None = None) -> Staged:
    """The whole file (or folder of files) as one staged extract (``read_vcf_chunks`` for large files)."""
    return next(VcfReader(Path(path).name).chunks(Path(path), sample_person))


def read_vcf_chunks(path: Path | str, calls_per_chunk: int | None = None) -> Iterator[Staged]:
    """The file(s) streamed as staged chunks of about ``calls_per_chunk`` carrier calls (default
    ``CALLS_PER_CHUNK``) for one load (``load_staged`` takes them in one transaction)."""
    return VcfReader(Path(path).name, calls_per_chunk or CALLS_PER_CHUNK).chunks(Path(path))
