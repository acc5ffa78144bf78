"""Gene prioritisation from a gene list or an annotated VCF."""

from __future__ import annotations

import pytest

from mercia.raredisease.genes import GenePrioritiser, VcfError, from_gene_list, read_vcf
from mercia.raredisease.ranker import Case

MARFAN_LIKE = Case(["HP:0001166", "HP:0001083", "HP:0002616", "HP:0000098", "HP:0100775"])
HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\n"


@pytest.fixture(scope="module")
def prioritiser(ranker):
    return GenePrioritiser(ranker)


def test_causal_gene_ranks_first_among_decoys(prioritiser):
    genes = from_gene_list(["BRCA2", "CFTR", "FBN1", "SCN1A", "DMD", "NOT_A_GENE"])
    ranked = prioritiser.rank(MARFAN_LIKE, genes)
    assert ranked[0].gene == "FBN1"
    assert ranked[0].disease_id in {"OMIM:154700", "OMIM:616914"}
    assert ranked[-1].gene == "NOT_A_GENE" and ranked[-1].disease_id is None
    assert ranked[-1].to_dict()["score"] is None  # JSON has no -infinity
    assert [r.rank for r in ranked] == list(range(1, 7))


def test_snpeff_vcf_gives_impact_and_alleles(tmp_path):
    vcf = tmp_path / "snpeff.vcf"
    vcf.write_text(HEADER
                   + "15\t48500000\t.\tC\tT\t50\tPASS\tANN=T|missense_variant|MODERATE|FBN1|ENSG1|x\tGT\t0/1\n"
                   + "7\t117559590\t.\tG\tA\t50\tPASS\tANN=A|stop_gained|HIGH|CFTR|ENSG2|x\tGT\t1/1\n"
                   + "7\t117559591\t.\tG\tA\t50\tPASS\tANN=A|stop_gained|HIGH|CFTR|ENSG2|x\tGT\t0/0\n")
    genes = read_vcf(vcf)
    assert genes["FBN1"].weight == 0.5 and genes["FBN1"].alleles == 1
    assert genes["CFTR"].weight == 1.0 and genes["CFTR"].alleles == 2
    assert genes["CFTR"].variants == ["7:117559590:G:A"]  # the 0/0 call is no variant


def test_vep_and_clinvar_annotations(tmp_path):
    vep = tmp_path / "vep.vcf"
    vep.write_text('##INFO=<ID=CSQ,Number=.,Type=String,Description="Consequence. Format: Allele|IMPACT|SYMBOL">\n'
                   + HEADER.split("\n", 1)[1] + "1\t10\t.\tA\tG\t.\t.\tCSQ=G|HIGH|TTN\tGT\t0/1\n")
    assert read_vcf(vep)["TTN"].weight == 1.0
    clinvar = tmp_path / "clinvar.vcf"
    clinvar.write_text("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n1\t10\t.\tA\tG\t.\t.\tGENEINFO=TTN:7273\n")
    assert read_vcf(clinvar)["TTN"].alleles == 1


def test_vcf_errors_name_line_and_field(tmp_path):
    bad = tmp_path / "bad.vcf"
    bad.write_text(HEADER + "1\t10\t.\tA\tG\t.\t.\tDP=3\tGT\t0/1\n")
    with pytest.raises(VcfError, match="line 3: field INFO"):
        read_vcf(bad)


def test_one_allele_in_a_recessive_only_gene_is_penalised(prioritiser):
    case = Case(["HP:0002110", "HP:0002205", "HP:0001738"])  # bronchiectasis, infections, pancreatic insufficiency
    both = prioritiser.rank(case, from_gene_list(["CFTR"]))[0]
    single = from_gene_list(["CFTR"])
    single["CFTR"].alleles = 1
    one = prioritiser.rank(case, single)[0]
    assert one.score < both.score
