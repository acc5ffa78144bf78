"""A synthetic federated network: one node store per organisation of a ``mercia.synth`` region.

Each organisation's extracts are ingested into its own store with its own pseudonymisation key;
all nodes share the network key.  The stores get the synthetic catalogue as their vocabulary
(standard concepts, and hospital ICD-10/OPCS-4 codes as source concepts mapped to them).
The ground truth of a federated count comes from the region's crosswalk (``region_person_truth``).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from mercia.cdm import Store
from mercia.ingest.region import PROMS_ORG, plan_region, region_geography
from mercia.ingest.service import default_options
from mercia.privacy.geography import GeographyLookup
from mercia.privacy.pseudonym import Pseudonymiser
from mercia.federation.cli import ingest_with_tokens

SOURCE_CONCEPT_BASE = 2_000_900_000   # local source concepts live above 2 billion (OHDSI convention)
T2DM, HBA1C = 201826, 3004410          # SNOMED 44054006, LOINC 4548-4 (catalogue concepts)


@dataclass
class NodeStore:
    org: str
    url: str
    key_file: Path
    schema: str | None = None

    def open(self) -> Store:
        return Store(self.url, schema=self.schema)


def catalogue_vocabulary(store: Store) -> None:
    """The synthetic catalogue as vocabulary: standard concepts mapping to themselves, and each
    hospital code (ICD-10, OPCS-4) a source concept that maps to the catalogue's standard concept."""
    from mercia.synth.catalogue import ALL, concept_rows

    standard = pa.Table.from_pylist(concept_rows())
    source, seen = [], set()
    for c in ALL.values():
        for vocabulary, code in (("ICD10", c.icd10), ("OPCS4", c.opcs4)):
            if code and c.concept_id and (vocabulary, code) not in seen:
                seen.add((vocabulary, code))
                source.append({"concept_id": SOURCE_CONCEPT_BASE + len(source), "concept_name": c.name,
                               "domain_id": c.domain, "vocabulary_id": vocabulary, "concept_class_id": "Source",
                               "standard_concept": None, "concept_code": code, "maps_to": c.concept_id})
    store.init_schema()
    with store.transaction():
        con_rows = standard.to_pylist() + [{k: v for k, v in r.items() if k != "maps_to"} for r in source]
        concept = pa.Table.from_pylist([{**r, "valid_start_date": "1970-01-01", "valid_end_date": "2099-12-31"}
                                        for r in con_rows])
        store.execute("DELETE FROM concept")
        store.execute("DELETE FROM concept_relationship")
        store.execute("DELETE FROM concept_ancestor")
        store.execute("CREATE TEMP TABLE IF NOT EXISTS fed_vocab (concept_id BIGINT, concept_name VARCHAR, "
                      "domain_id VARCHAR, vocabulary_id VARCHAR, concept_class_id VARCHAR, standard_concept VARCHAR, "
                      "concept_code VARCHAR, valid_start_date VARCHAR, valid_end_date VARCHAR)")
        store.execute("DELETE FROM fed_vocab")
        store.insert_arrow("fed_vocab", concept)
        store.execute("""INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,
                                              standard_concept, concept_code, valid_start_date, valid_end_date)
                         SELECT concept_id, concept_name, domain_id, vocabulary_id, concept_class_id, standard_concept,
                                concept_code, CAST(valid_start_date AS DATE), CAST(valid_end_date AS DATE)
                         FROM fed_vocab""")
        pairs = [(c["concept_id"], c["concept_id"]) for c in standard.to_pylist()]
        pairs += [(r["concept_id"], r["maps_to"]) for r in source]
        for one, two in pairs:
            store.execute("INSERT INTO concept_relationship (concept_id_1, concept_id_2, relationship_id, "
                          "valid_start_date, valid_end_date) VALUES (?, ?, 'Maps to', DATE '1970-01-01', "
                          "DATE '2099-12-31')", [one, two])
        store.execute("INSERT INTO concept_ancestor SELECT concept_id, concept_id, 0, 0 FROM concept "
                      "WHERE standard_concept = 'S'")


def build_node_stores(region: Path | str, out: Path | str, network_key: bytes) -> list[NodeStore]:
    """Ingest each organisation of ``region`` into its own DuckDB store under ``out/nodes``.

    Every organisation gets its own pseudonymisation key (written to ``out/keys/ORG.pseudonym``);
    the PROMs feed is national, not an organisation of the network, and is left out."""
    out = Path(out)
    (out / "keys").mkdir(parents=True, exist_ok=True)
    by_org = organisation_extracts(region)
    nodes = []
    for org, items in by_org.items():
        key_file = out / "keys" / f"{org}.pseudonym"
        if not key_file.exists():
            key_file.write_text(secrets.token_hex(32))
            key_file.chmod(0o600)
        node = NodeStore(org, str(out / "nodes" / f"{org}.duckdb"), key_file)
        load_node(node, items, network_key, region_geography(region))
        nodes.append(node)
    return nodes


def organisation_extracts(region: Path | str) -> dict[str, list]:
    """The region's extracts by organisation.  Neither the national PROMs feed nor the metabolomics study
    is a node: the study's samples find their persons in other organisations' loads (sample manifest)."""
    by_org: dict[str, list] = defaultdict(list)
    for item in plan_region(region):
        if item.org != PROMS_ORG and item.manifest is None:
            by_org[item.org].append(item)
    return by_org


def load_node(node: NodeStore, items: list, network_key: bytes, geography: GeographyLookup | None = None) -> None:
    """The catalogue vocabulary, then each extract with its network tokens, under the node's own key
    (postcodes become IMD deciles through ``geography``, the region's own lookup files)."""
    with node.open() as store:
        catalogue_vocabulary(store)
        for item in items:
            options = default_options(item.kind, key_file=node.key_file)
            options.pseudonymiser = Pseudonymiser(node.key_file.read_text().strip().encode())
            options.allow_synthetic_nhs_numbers = True   # a synthetic region only
            options.geography = options.geography or geography
            ingest_with_tokens(store, item.kind, item.path, node.org, options, network_key, mapping=item.mapping)


def reference_cohort() -> dict:
    """The built-in feasibility cohort: people with type 2 diabetes recorded (GP SNOMED or hospital
    ICD-10) or an HbA1c result (pathology) — seen by practices, trusts and the laboratory alike."""
    def concept_set(set_id: int, name: str, concept_id: int) -> dict:
        return {"id": set_id, "name": name, "expression": {"items": [
            {"concept": {"CONCEPT_ID": concept_id, "CONCEPT_NAME": name}, "includeDescendants": True}]}}
    return {"ConceptSets": [concept_set(0, "Type 2 diabetes mellitus", T2DM), concept_set(1, "HbA1c", HBA1C)],
            "PrimaryCriteria": {"CriteriaList": [{"ConditionOccurrence": {"CodesetId": 0, "First": True}},
                                                 {"Measurement": {"CodesetId": 1, "First": True}}],
                                "ObservationWindow": {"PriorDays": 0, "PostDays": 0},
                                "PrimaryCriteriaLimit": {"Type": "First"}},
            "QualifiedLimit": {"Type": "First"}, "ExpressionLimit": {"Type": "First"},
            "InclusionRules": [], "CensoringCriteria": [],
            "CollapseSettings": {"CollapseType": "ERA", "EraPad": 0}}


def true_distinct_persons(region: Path | str, nodes: list[NodeStore], cohort: dict | str) -> dict[str, object]:
    """Ground truth for a cohort definition: run on every node, the true persons behind each site's
    members (via the region's crosswalk), their union, and the per-site counts."""
    from mercia.cohorts import CohortExpression, run_cohort
    from mercia.cohorts.registry import scratch_cohort
    from mercia.linkage.evaluate import region_person_truth

    expression = CohortExpression.from_json(cohort)
    union: set[int] = set()
    per_site: dict[str, int] = {}
    for node in nodes:
        with node.open() as store, scratch_cohort(store) as cohort_id:
            run_cohort(store, expression, cohort_id)
            truth = region_person_truth(store, region, Pseudonymiser(node.key_file.read_text().strip().encode()))
            mapping = dict(zip(truth.column("person_id").to_pylist(), truth.column("true_person_id").to_pylist()))
            members = [r[0] for r in store.query("SELECT DISTINCT subject_id FROM cohort WHERE cohort_definition_id = ?",
                                                 [cohort_id])]
        persons = {mapping.get(m, ("unmapped", node.org, m)) for m in members}
        per_site[node.org] = len(members)
        union |= persons
    return {"distinct": len(union), "per_site": per_site, "naive_sum": sum(per_site.values())}
