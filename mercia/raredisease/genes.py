"""Gene prioritisation: combine the phenotype score of each gene's diseases with the genotype evidence.

A candidate gene comes from a list (each counts as carrying a rare, damaging variant) or from an annotated VCF
(SnpEff ``ANN``, VEP ``CSQ`` or ClinVar ``GENEINFO`` in INFO; the first sample's genotype gives the number of
alternate alleles). For gene g and each of its diseases D:

    log score(g, D) = log LR_phenotype(D) + log w(g) + log c(g, D)

where ``w`` is the strongest predicted impact among g's variants (HIGH 1, MODERATE 0.5, LOW 0.1, MODIFIER
0.02; 1 for a listed gene) and ``c`` is 0.1 when D is only recessive but g carries one allele (a heterozygous
single variant), else 1. A gene scores as its best disease; genes without an annotated disease come last.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mercia.raredisease.ranker import Case, Ranker

IMPACT_WEIGHT = {"HIGH": 1.0, "MODERATE": 0.5, "LOW": 0.1, "MODIFIER": 0.02}
RECESSIVE = "HP:0000007"
RECESSIVE_ONE_ALLELE = 0.1
INHERITANCE_ROOT = "HP:0000005"


class VcfError(ValueError):
    """A VCF line that cannot be read; says which line and field."""


@dataclass
class GeneEvidence:
    gene: str
    weight: float = 1.0  # predicted impact of the most damaging variant
    alleles: int = 2  # alternate alleles seen across its variants (2 = enough for a recessive disease)
    variants: list[str] = field(default_factory=list)


@dataclass
class GeneResult:
    rank: int
    gene: str
    score: float  # log10
    disease_id: str | None
    disease_label: str | None
    phenotype_score: float | None  # log10 LR of the best disease
    evidence: GeneEvidence

    def to_dict(self) -> dict:
        score = round(float(self.score), 4) if np.isfinite(self.score) else None  # None: no known disease
        return {"rank": self.rank, "gene": self.gene, "score": score, "disease_id": self.disease_id,
                "label": self.disease_label, "phenotype_score": self.phenotype_score,
                "impact_weight": self.evidence.weight, "alleles": self.evidence.alleles,
                "variants": self.evidence.variants}


def from_gene_list(genes: list[str]) -> dict[str, GeneEvidence]:
    return {g.strip(): GeneEvidence(g.strip()) for g in genes if g.strip()}


def read_vcf(path: str | Path) -> dict[str, GeneEvidence]:
    """Candidate genes from an annotated VCF (the file is expected to hold rare variants already)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    csq_fields: list[str] = []
    evidence: dict[str, GeneEvidence] = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.startswith("##INFO=<ID=CSQ"):
                csq_fields = line.split("Format: ")[1].split('"')[0].split("|")
                continue
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 8:
                raise VcfError(f"{path}: line {line_no}: expected at least 8 tab-separated fields")
            chrom, pos, _id, ref, alt, _qual, _filter, info = fields[:8]
            alleles = _alt_alleles(fields, path, line_no)
            if alleles == 0:
                continue
            for gene, impact in _genes(info, csq_fields, path, line_no):
                entry = evidence.setdefault(gene, GeneEvidence(gene, weight=0.0, alleles=0))
                entry.weight = max(entry.weight, IMPACT_WEIGHT.get(impact, 0.5))
                entry.alleles = min(entry.alleles + alleles, 2)
                entry.variants.append(f"{chrom}:{pos}:{ref}:{alt}")
    return evidence


def _alt_alleles(fields: list[str], path, line_no: int) -> int:
    if len(fields) < 10:
        return 1  # sites-only VCF: assume one allele
    keys = fields[8].split(":")
    if "GT" not in keys:
        raise VcfError(f"{path}: line {line_no}: field FORMAT has no GT")
    genotype = fields[9].split(":")[keys.index("GT")].replace("|", "/").split("/")
    return sum(allele not in ("0", ".") for allele in genotype)


def _genes(info: str, csq_fields: list[str], path, line_no: int):
    entries = dict(item.split("=", 1) for item in info.split(";") if "=" in item)
    if "ANN" in entries:  # SnpEff: Allele|Annotation|Impact|Gene_Name|...
        for annotation in entries["ANN"].split(","):
            parts = annotation.split("|")
            if len(parts) > 3 and parts[3]:
                yield parts[3], parts[2]
    elif "CSQ" in entries:
        if not csq_fields:
            raise VcfError(f"{path}: line {line_no}: field INFO/CSQ without a ##INFO=<ID=CSQ header")
        symbol, impact = csq_fields.index("SYMBOL"), csq_fields.index("IMPACT")
        for annotation in entries["CSQ"].split(","):
            parts = annotation.split("|")
            if parts[symbol]:
                yield parts[symbol], parts[impact]
    elif "GENEINFO" in entries:  # ClinVar: SYMBOL:id|SYMBOL:id
        for gene in entries["GENEINFO"].split("|"):
            yield gene.split(":")[0], "MODERATE"
    else:
        raise VcfError(f"{path}: line {line_no}: field INFO has no gene annotation (ANN, CSQ or GENEINFO)")


class GenePrioritiser:
    """Ranks candidate genes for cases with one ranker (the inheritance lookup is built once)."""

    def __init__(self, ranker: Ranker):
        self.ranker = ranker
        self.recessive_only = self._recessive_only()

    def rank(self, case: Case, candidates: dict[str, GeneEvidence], top: int = 20,
             scores: np.ndarray | None = None) -> list[GeneResult]:
        """Rank candidate genes by their best disease; ``scores`` (natural-log LR row) may be precomputed."""
        ranker, kb = self.ranker, self.ranker.kb
        if scores is None:
            scores = ranker.score_matrix([case])[0][0]
        results = []
        for gene, evidence in candidates.items():
            columns = ranker.disease_position[kb.diseases_of_gene(gene)]
            columns = columns[columns >= 0]
            if not len(columns) or evidence.weight <= 0:
                results.append((-np.inf, gene, None, evidence))
                continue
            one_allele = self.recessive_only[columns] & (evidence.alleles < 2)
            combined = scores[columns] + np.where(one_allele, np.log(RECESSIVE_ONE_ALLELE), 0.0)
            combined = combined + np.log(evidence.weight)
            best = int(np.argmax(combined))
            results.append((float(combined[best]), gene, int(columns[best]), evidence))
        results.sort(key=lambda r: (-r[0], r[1]))
        out = []
        for rank, (score, gene, column, evidence) in enumerate(results[:top], 1):
            disease = None if column is None else int(ranker.diseases[column])
            out.append(GeneResult(
                rank, gene, score / np.log(10) if np.isfinite(score) else float("-inf"),
                None if disease is None else str(kb.disease_ids[disease]),
                None if disease is None else str(kb.disease_names[disease]),
                None if column is None else float(scores[column] / np.log(10)), evidence))
        return out

    def _recessive_only(self) -> np.ndarray:
        """Candidate diseases whose only annotated mode of inheritance is autosomal recessive."""
        ranker, kb = self.ranker, self.ranker.kb
        ontology = kb.ontology
        root = ontology.index[INHERITANCE_ROOT]
        is_mode = ontology.ancestors[:, root].toarray().ravel() > 0
        is_mode[root] = False
        annotated = is_mode[kb.ann_term]
        columns = ranker.disease_position[kb.ann_disease[annotated]]
        terms = kb.ann_term[annotated]
        keep = columns >= 0
        n = len(ranker.diseases)
        recessive = np.bincount(columns[keep], weights=terms[keep] == ontology.index[RECESSIVE], minlength=n)
        total = np.bincount(columns[keep], minlength=n)
        return (recessive > 0) & (recessive == total)
