"""The pieces that make a federated count fast at network scale: the benchmark's network builder, column-wise
network tokens, tokens salted inside the node's store, and the packed member rows the hub unpacks."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pyarrow as pa
import pytest

from mercia.cdm import Store
from mercia.cdm.extensions import ensure_extension_tables
from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.registry import scratch_cohort
from mercia.federation.hub import member_rows, network_counts
from mercia.federation.messages import Members, NodeResult
from mercia.federation.region import SCALED_TABLES, build_scaled_network, reference_cohort
from mercia.federation.tokens import (cohort_tokens, network_tokens, new_salt, pack_tokens, person_tokens_current,
                                      refresh_person_tokens)
from mercia.privacy.policy import normalise_name, valid_partial_date
from mercia.privacy.pseudonym import Pseudonymiser
from mercia.synth.population import nhs_numbers

NETWORK_KEY = b"a network key of at least thirty-two bytes"


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    return build_scaled_network(tmp_path_factory.mktemp("scaled"), persons=2000, seed=7, network_key=NETWORK_KEY)


def nhs_tokens(store: Store) -> set[str]:
    return {r[0] for r in store.query("SELECT token FROM mercia_network_token WHERE token_kind = 'nhs'")}


def test_each_node_holds_its_share_and_about_a_fifth_are_at_two_or_more(scaled):
    assert len(scaled.nodes) == 5
    assert 0.17 <= scaled.seen_by_two_or_more / scaled.persons <= 0.23
    seen: dict[str, int] = {}
    for node in scaled.nodes:
        with node.open() as store:
            persons = store.query_one("SELECT count(*) FROM person")
            assert persons == scaled.persons_per_node[node.org]
            assert store.query_one("SELECT count(*) FROM mercia_person_link") == persons
            assert store.query_one("SELECT count(DISTINCT person_id) FROM observation_period") == persons
            for token in nhs_tokens(store):
                seen[token] = seen.get(token, 0) + 1
    # the NHS tokens tell the true overlap: one token per person, the same at every node holding them
    assert len(seen) == scaled.persons
    assert sum(1 for n in seen.values() if n >= 2) == scaled.seen_by_two_or_more
    assert sum(seen.values()) == sum(scaled.persons_per_node.values()) > scaled.persons


def test_every_event_is_at_exactly_one_of_its_persons_organisations(scaled):
    with Store(scaled.single) as single:
        expected = {t: single.query_one(f"SELECT count(*) FROM {t}") for t in SCALED_TABLES}
    found = dict.fromkeys(SCALED_TABLES, 0)
    for node in scaled.nodes:
        with node.open() as store:
            for table in SCALED_TABLES:
                found[table] += store.query_one(f"SELECT count(*) FROM {table}")
            # no event of a person the node does not hold
            assert not store.query_one("SELECT count(*) FROM condition_occurrence c "
                                       "LEFT JOIN person p ON p.person_id = c.person_id WHERE p.person_id IS NULL")
    assert found == expected and expected["measurement"] > 0


def test_the_union_of_node_cohorts_is_the_single_store_cohort(scaled):
    expression = CohortExpression.from_json(reference_cohort())
    with Store(scaled.single) as single, scratch_cohort(single) as cohort_id:
        truth = run_cohort(single, expression, cohort_id).persons
    union, naive = set(), 0
    for node in scaled.nodes:
        with node.open() as store, scratch_cohort(store) as cohort_id:
            run_cohort(store, expression, cohort_id)
            members = store.query(
                "SELECT t.token FROM cohort c JOIN mercia_person_link l ON l.person_id = c.subject_id "
                "JOIN mercia_network_token t ON t.source_pseudonym = l.source_pseudonym AND t.token_kind = 'nhs' "
                "WHERE c.cohort_definition_id = ?", [cohort_id])
        naive += len(members)
        union |= {r[0] for r in members}
    assert len(union) == truth > 0
    assert naive > truth   # shared persons are counted at more than one node


def test_node_tokens_are_the_network_key_hmac_of_the_persons_nhs_number(scaled):
    """The token a node holds for a person is what ingest computes from that person's NHS number."""
    numbers = nhs_numbers(scaled.persons, 7)
    with Store(scaled.single) as single:
        local = single.query("SELECT person_id, local_id FROM fed_membership WHERE org_index = 0 "
                             "ORDER BY local_id LIMIT 50")
    node = scaled.nodes[0]
    with node.open() as store:
        held = dict(store.query("SELECT l.person_id, t.token FROM mercia_person_link l JOIN mercia_network_token t "
                                "ON t.source_pseudonym = l.source_pseudonym AND t.token_kind = 'nhs'"))
    expected = Pseudonymiser(NETWORK_KEY).hash_values("network/nhs-number",
                                                      [str(numbers[person - 1]) for person, _ in local]).to_pylist()
    assert [held[local_id] for _, local_id in local] == expected


def test_network_tokens_column_wise_match_the_per_record_rules():
    """Accents, punctuation, impossible and partial dates, odd sex values: the same demographic token as
    the per-record normalisation (privacy.policy) gives."""
    family = ["O'Brien-Smith", "Zoë", None, "", "ß", "Smith", "Ærø", "x y"] * 3
    given = ["Ann", "Bob", "C", "D", "E", "", "Émile", "y"] * 3
    born = ["1990-01-05", "2020-02-30", "1990-1-05", "2000", "1990-01-05T12:00", None, "1985-12-31", "1985-12-31 "] * 3
    sex = ["F", "male", "", None, "M", "f", "Unknown", "m"] * 3
    persons = pa.table({"person_ref": [str(i) for i in range(len(family))], "nhs_number": [None] * len(family),
                        "family": family, "given": given, "birth_date": born, "sex": sex})
    got = network_tokens(NETWORK_KEY, persons, allow_synthetic=True)
    by_ref = {r["person_ref"]: r["token"] for r in got.to_pylist() if r["token_kind"] == "demographic"}
    expected = {}
    for i, (f, g, b, s) in enumerate(zip(family, given, born, sex)):
        parts = (normalise_name(f), normalise_name(g), valid_partial_date(b), (s or "").lower()[:1])
        if all(parts) and len(parts[2]) == 10:
            expected[str(i)] = Pseudonymiser(NETWORK_KEY).hash_values("network/demographic", ["|".join(parts)])[0].as_py()
    assert by_ref == expected and len(expected) == 9


def test_cohort_tokens_are_the_salted_hmac_on_every_engine(store):
    ensure_extension_tables(store)
    links = pa.table({"person_id": [1, 2, 3], "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"],
                      "nhs_status": ["valid"] * 3, "record_hash": ["h"] * 3, "gender_concept_id": [0] * 3,
                      "load_id": [1] * 3})
    store.execute("CREATE TABLE fed_test_link AS SELECT * FROM mercia_person_link WHERE 1 = 0")
    store.insert_arrow("fed_test_link", links)
    store.execute("INSERT INTO mercia_person_link SELECT * FROM fed_test_link")
    store.insert_arrow("mercia_network_token", pa.table({
        "org": ["X"] * 3, "source_pseudonym": ["s1", "s1", "s2"], "token_kind": ["nhs", "demographic", "demographic"],
        "token": ["nhs-one", "dem-one", "dem-two"], "load_id": [1] * 3}))
    store.insert_arrow("cohort", pa.table({"cohort_definition_id": [9] * 3, "subject_id": [1, 2, 3],
                                           "cohort_start_date": pa.array([0] * 3, pa.int32()).cast(pa.date32()),
                                           "cohort_end_date": pa.array([0] * 3, pa.int32()).cast(pa.date32())}))
    salt = new_salt()
    rows = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, salt).to_pylist()}

    def salted(token: str) -> bytes:
        return hmac.new(salt.encode(), token.encode(), hashlib.sha256).digest()[:16]

    assert rows[1]["nhs"] == salted("nhs-one") and rows[1]["demographic"] == salted("dem-one")
    assert rows[2]["nhs"] is None and rows[2]["demographic"] == salted("dem-two")
    assert rows[3]["nhs"] is None and rows[3]["demographic"] is None   # no token: unlinkable


def test_a_load_writes_each_persons_tokens_cut_to_16_bytes(scaled):
    """What a question joins on: per node person, the first 16 bytes (hex) of its NHS and demographic tokens."""
    for node in scaled.nodes[:2]:
        with node.open() as store:
            expected = {person: (nhs[:32], demographic[:32]) for person, nhs, demographic in store.query(
                "SELECT l.person_id, max(CASE WHEN t.token_kind = 'nhs' THEN t.token END), "
                "max(CASE WHEN t.token_kind = 'demographic' THEN t.token END) FROM mercia_person_link l "
                "JOIN mercia_network_token t ON t.source_pseudonym = l.source_pseudonym GROUP BY l.person_id")}
            held = {person: (nhs, demographic) for person, nhs, demographic in
                    store.query("SELECT person_id, nhs, demographic FROM mercia_person_token")}
            assert person_tokens_current(store)
        assert held == expected and len(held) == scaled.persons_per_node[node.org]


def test_per_person_tokens_follow_links_changed_after_the_load(store):
    """Linkage merging two persons, or an opt-out deleting one, changes the links without a load: the next
    question sees it and rebuilds the per-person tokens."""
    ensure_extension_tables(store)
    store.execute("CREATE TABLE fed_test_link AS SELECT * FROM mercia_person_link WHERE 1 = 0")
    store.insert_arrow("fed_test_link", pa.table({
        "person_id": [1, 2, 3], "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"], "nhs_status": ["valid"] * 3,
        "record_hash": ["h"] * 3, "gender_concept_id": [0] * 3, "load_id": [1] * 3}))
    store.execute("INSERT INTO mercia_person_link SELECT * FROM fed_test_link")
    store.insert_arrow("mercia_network_token", pa.table({
        "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"], "token_kind": ["demographic", "nhs", "nhs"],
        "token": ["d1", "n2", "n3"], "load_id": [1] * 3}))
    assert refresh_person_tokens(store) == 3
    store.execute("UPDATE mercia_person_link SET person_id = 1 WHERE source_pseudonym = 's2'")   # 2 merged into 1
    store.execute("DELETE FROM mercia_person_link WHERE person_id = 3")                          # 3 opted out
    assert not person_tokens_current(store)
    store.insert_arrow("cohort", pa.table({"cohort_definition_id": [9] * 2, "subject_id": [1, 3],
                                           "cohort_start_date": pa.array([0] * 2, pa.int32()).cast(pa.date32()),
                                           "cohort_end_date": pa.array([0] * 2, pa.int32()).cast(pa.date32())}))
    salt = new_salt()
    rows = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, salt).to_pylist()}
    assert rows[1]["nhs"] == hmac.new(salt.encode(), b"n2", hashlib.sha256).digest()[:16]
    assert rows[1]["demographic"] == hmac.new(salt.encode(), b"d1", hashlib.sha256).digest()[:16]
    assert rows[3]["nhs"] is None and person_tokens_current(store)
    assert store.query("SELECT person_id FROM mercia_person_token ORDER BY 1") == [(1,)]


def test_packed_members_unpack_to_the_same_counts():
    tokens = [hashlib.sha256(str(i).encode()).digest()[:16] for i in range(6)]
    def result(org: str, nhs: list, demographic: list, cells: list[str]) -> NodeResult:
        encoded = pa.array(cells).dictionary_encode()
        return NodeResult(task_id=1, org=org, nonce="n", status="answered", members=Members(
            nhs=pack_tokens(pa.array(nhs, pa.binary())), demographic=pack_tokens(pa.array(demographic, pa.binary())),
            cell=encoded.indices.to_pylist(), cell_names=encoded.dictionary.to_pylist()))
    # site A knows persons 0, 1 by NHS number; site B knows person 1 by NHS number and person 0 only by
    # demographics (the demographic token A also holds for 0), and person 5 by nothing A has
    a = member_rows("A", result("A", [tokens[0], tokens[1]], [tokens[3], None], ["x", "y"]))
    b = member_rows("B", result("B", [tokens[1], None, None], [None, tokens[3], tokens[5]], ["y", "y", "x"]))
    assert a.column("nhs_hi").null_count == 0 and b.column("nhs_hi").null_count == 2
    distinct, shared, cells = network_counts(pa.concat_tables([a, b]), partition=True)
    assert (distinct, shared, cells) == (3, 2, {"x": 2, "y": 1})


def test_malformed_packed_members_are_refused():
    with pytest.raises(ValueError, match="16 bytes for each of the 2 rows"):
        Members(nhs=base64.b64encode(bytes(16)).decode(), demographic="", cell=[0, 0], cell_names=[""])
    with pytest.raises(ValueError, match="index outside cell_names"):
        Members(nhs=pack_tokens(pa.array([b"1" * 16], pa.binary())), demographic=pack_tokens(pa.array([None], pa.binary())),
                cell=[1], cell_names=[""])
    bad = NodeResult(task_id=1, org="A", nonce="n", status="answered", members=Members.model_construct(
        nhs="!" * 24, demographic=pack_tokens(pa.array([None], pa.binary())), cell=[0], cell_names=[""]))
    with pytest.raises(ValueError, match="nhs: not base64"):
        member_rows("A", bad)
    assert member_rows("A", NodeResult(task_id=1, org="A", nonce="n", status="refused")).num_rows == 0
