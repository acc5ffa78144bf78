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
import pyarrow.compute as pc

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


# -- a network at benchmark scale --------------------------------------------------------------
SCALED_ORGS = ("M90001", "M90002", "R9A", "R9B", "R9P")   # two practices, two trusts, the laboratory
SCALED_TABLES = ("visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence",
                 "measurement", "observation")              # each row goes to one of its person's organisations
PER_PERSON_TABLES = ("person", "observation_period", "death")  # every organisation of the person has these
REFERENCE_TABLES = ("concept", "concept_relationship", "concept_ancestor", "concept_synonym", "location",
                    "care_site", "cdm_source")


@dataclass
class ScaledNetwork:
    """Node stores cut from one store holding everybody (``single``, the baseline), and what was asked of them."""
    single: str
    nodes: list[NodeStore]
    persons_per_node: dict[str, int]
    seen_by_two_or_more: int
    persons: int


def organisations_per_person(persons: int, orgs: int, shared: float, seed: int) -> pa.Table:
    """(person_id, org_index, rank, k): each person at k of ``orgs`` organisations (k = 1, 2 or 3; a share
    ``shared`` of persons at two or more, three in four of those at two), in a random order of organisations."""
    import numpy as np

    rng = np.random.default_rng([seed, 13])
    k = rng.choice([1, 2, 3], size=persons, p=[1 - shared, shared * 0.75, shared * 0.25])
    order = np.argsort(rng.random((persons, orgs)), axis=1)
    ids = np.arange(1, persons + 1, dtype=np.int64)
    parts = [(ids[k > j], order[k > j, j], np.full(int((k > j).sum()), j), k[k > j]) for j in range(3)]
    return pa.table({name: pa.array(np.concatenate([p[i] for p in parts]).astype(np.int64))
                     for i, name in enumerate(("person_id", "org_index", "rank", "k"))})


def build_scaled_network(out: Path | str, persons: int, seed: int, network_key: bytes, shared: float = 0.2,
                         orgs: tuple[str, ...] = SCALED_ORGS) -> ScaledNetwork:
    """One DuckDB store of ``persons`` (``mercia.synth.write_omop``, the single-store baseline), then one node
    store per organisation cut from it in DuckDB: the organisation's persons under ids of its own, their
    observation periods, its share of their events (each event at exactly one of the person's organisations,
    so the union of the node cohorts is the single store's cohort), the person links and the network tokens
    that ``tokens.record_network_tokens`` computes at ingest from the NHS number and demographics."""
    import numpy as np

    from mercia.cdm.extensions import ensure_extension_tables
    from mercia.cdm.schema import CDM_TABLES
    from mercia.synth import write_omop
    from mercia.synth.population import nhs_numbers

    out = Path(out)
    for sub in ("keys", "nodes"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    single = str(out / "single.duckdb")
    write_omop(single, persons, seed)
    membership = organisations_per_person(persons, len(orgs), shared, seed)
    with Store(single) as store, store.transaction():
        store.execute("DROP TABLE IF EXISTS fed_membership")
        store.execute("CREATE TABLE fed_membership (person_id BIGINT, org_index BIGINT, rank BIGINT, k BIGINT, "
                      "local_id BIGINT)")
        store.execute("CREATE TEMP TABLE fed_members (person_id BIGINT, org_index BIGINT, rank BIGINT, k BIGINT)")
        store.insert_arrow("fed_members", membership)
        # ids of the organisation's own: a seeded shuffle, so no node's ids line up with another's
        store.execute("INSERT INTO fed_membership SELECT *, row_number() OVER (PARTITION BY org_index "
                      "ORDER BY hash(person_id, org_index, ?)) FROM fed_members", [seed])
    nhs = nhs_numbers(persons, seed)
    rng = np.random.default_rng([seed, 17])
    nodes, counts = [], {}
    for index, org in enumerate(orgs):
        key_file = out / "keys" / f"{org}.pseudonym"
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
        node = NodeStore(org, str(out / "nodes" / f"{org}.duckdb"), key_file)
        Path(node.url).unlink(missing_ok=True)
        with node.open() as store:
            ensure_extension_tables(store)
            store.execute(f"ATTACH '{single}' AS src (READ_ONLY)")
            with store.transaction():
                for name in REFERENCE_TABLES:
                    store.execute(f"INSERT INTO {name} SELECT * FROM src.{name}")
                for name in PER_PERSON_TABLES + SCALED_TABLES:
                    columns = [c.name for c in CDM_TABLES[name].columns]
                    chosen = ("" if name in PER_PERSON_TABLES
                              else f" AND m.rank = hash(e.{columns[0]}, {seed}) % m.k")
                    select = ", ".join("m.local_id" if c == "person_id" else f"e.{c}" for c in columns)
                    store.execute(f"INSERT INTO {name} ({', '.join(columns)}) SELECT {select} FROM src.{name} e "
                                  f"JOIN src.fed_membership m ON m.person_id = e.person_id AND m.org_index = {index}"
                                  f"{chosen}")
                local = store.query_arrow(
                    "SELECT m.local_id, m.person_id, p.gender_concept_id, p.gender_source_value, p.year_of_birth, "
                    "p.month_of_birth, p.day_of_birth, p.birth_datetime, "
                    "strftime(p.birth_datetime, '%Y-%m-%d') AS birth_date FROM src.fed_membership m "
                    f"JOIN src.person p ON p.person_id = m.person_id WHERE m.org_index = {index} ORDER BY m.local_id")
                counts[org] = local.num_rows
                _record_links(store, org, local, nhs, rng, network_key,
                              Pseudonymiser(key_file.read_text().strip().encode()))
            store.execute("DETACH src")
        nodes.append(node)
    first = membership.filter(pc.equal(membership.column("rank"), 0))
    shared_persons = int(pc.sum(pc.greater_equal(first.column("k"), 2).cast(pa.int64())).as_py())
    return ScaledNetwork(single, nodes, counts, shared_persons, persons)


def _record_links(store: Store, org: str, local: pa.Table, nhs, rng, network_key: bytes,
                  pseudonymiser: Pseudonymiser) -> None:
    """The node's person links and network tokens, as a load writes them: the person's NHS number and
    demographics (names drawn like the synthetic region's) staged, then ``record_network_tokens``."""
    import numpy as np

    from mercia.federation.tokens import record_network_tokens
    from mercia.synth.population import GROUPS, names

    n = local.num_rows
    female = np.asarray(local.column("gender_source_value").to_numpy(zero_copy_only=False) == "F")
    given, family = names(rng, _Demographics(rng.integers(0, len(GROUPS), n), female))
    refs = pc.cast(local.column("local_id"), pa.string())
    staged = pa.table({"person_ref": refs,
                       "nhs_number": pa.array(nhs[local.column("person_id").to_numpy() - 1].astype(str)),
                       "family": pa.array(family, pa.string()), "given": pa.array(given, pa.string()),
                       "birth_date": local.column("birth_date"), "sex": local.column("gender_source_value")})
    load_id = 1
    store.execute("INSERT INTO mercia_load (load_id, org, extract, reader, loaded_at, records_read, records_loaded, "
                  "records_unchanged, records_rejected, records_withheld) "
                  "VALUES (?, ?, 'synthetic network cut', 'benchmark', now(), ?, ?, 0, 0, 0)",
                  [load_id, org, n, n])
    links = pa.table({"person_id": local.column("local_id"), "org": pa.array([org] * n, pa.string()),
                      "source_pseudonym": pseudonymiser.source_pseudonyms(org, refs),
                      "nhs_pseudonym": pseudonymiser.nhs_pseudonyms(staged.column("nhs_number")),
                      "gender_concept_id": local.column("gender_concept_id"),
                      "gender_source_value": local.column("gender_source_value"),
                      "year_of_birth": local.column("year_of_birth"), "month_of_birth": local.column("month_of_birth"),
                      "day_of_birth": local.column("day_of_birth"), "birth_datetime": local.column("birth_datetime")})
    store.execute("CREATE TEMP TABLE fed_links AS SELECT * FROM mercia_person_link LIMIT 0")
    store.insert_arrow("fed_links", links.append_column("load_id", pa.array([load_id] * n, pa.int64())))
    store.execute("INSERT INTO mercia_person_link (person_id, org, source_pseudonym, nhs_pseudonym, nhs_status, "
                  "record_hash, gender_concept_id, gender_source_value, year_of_birth, month_of_birth, day_of_birth, "
                  "birth_datetime, load_id) SELECT person_id, org, source_pseudonym, nhs_pseudonym, 'valid', "
                  "md5(source_pseudonym), gender_concept_id, gender_source_value, year_of_birth, month_of_birth, "
                  "day_of_birth, birth_datetime, load_id FROM fed_links")
    store.execute("DROP TABLE fed_links")
    record_network_tokens(store, org, staged, load_id, pseudonymiser, network_key, allow_synthetic=True)


@dataclass
class _Demographics:
    """What ``synth.population.names`` reads of a chunk of people."""
    group: object
    female: object

    def __len__(self) -> int:
        return len(self.group)
