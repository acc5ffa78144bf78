"""The pieces that make a federated count fast at network scale: the benchmark's network builder, column-wise
network tokens, tokens salted per question, and the members' Arrow encoding the hub reads."""

from __future__ import annotations

import hashlib
import sys

import pyarrow as pa
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mercia.cdm import Store
from mercia.cdm.extensions import ensure_extension_tables
from mercia.cohorts import CohortExpression, run_cohort
from mercia.cohorts.registry import scratch_cohort
from mercia.federation.hub import member_rows, network_counts, token_integers
from mercia.federation.messages import MEMBERS, NodeResult, compressed_ipc
from mercia.federation.region import SCALED_TABLES, build_scaled_network, reference_cohort
from mercia.federation.tokens import (PersonTokens, cohort_tokens, network_tokens, new_salt, person_tokens_current,
                                      question_key, refresh_person_tokens, salt_tokens, token_blocks)
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


def token(name: str) -> str:
    """A stored network token (hex of an HMAC-SHA-256, as ingest writes them)."""
    return hashlib.sha256(name.encode()).hexdigest()


def salted(salt: str, stored: str) -> bytes:
    """The specification of a salted token, one block at a time: AES-128 under the question's key (SHA-256 of
    a label and the salt, first 16 bytes) of the first 16 bytes of the stored token, XOR those 16 bytes,
    cut to its first 8 bytes."""
    return salted_with_key(hashlib.sha256(b"mercia-federation/question-key\0" + salt.encode()).digest()[:16], stored)


def salted_with_key(key: bytes, stored: str) -> bytes:
    block = bytes.fromhex(stored[:32])
    encrypted = Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)
    return bytes(x ^ y for x, y in zip(encrypted, block))[:8]


def test_cohort_tokens_are_salted_per_question_on_every_engine(store):
    ensure_extension_tables(store)
    links = pa.table({"person_id": [1, 2, 3], "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"],
                      "nhs_status": ["valid"] * 3, "record_hash": ["h"] * 3, "gender_concept_id": [0] * 3,
                      "load_id": [1] * 3})
    store.execute("CREATE TABLE fed_test_link AS SELECT * FROM mercia_person_link WHERE 1 = 0")
    store.insert_arrow("fed_test_link", links)
    store.execute("INSERT INTO mercia_person_link SELECT * FROM fed_test_link")
    store.insert_arrow("mercia_network_token", pa.table({
        "org": ["X"] * 3, "source_pseudonym": ["s1", "s1", "s2"], "token_kind": ["nhs", "demographic", "demographic"],
        "token": [token("nhs-one"), token("dem-one"), token("dem-two")], "load_id": [1] * 3}))
    store.insert_arrow("cohort", pa.table({"cohort_definition_id": [9] * 3, "subject_id": [1, 2, 3],
                                           "cohort_start_date": pa.array([0] * 3, pa.int32()).cast(pa.date32()),
                                           "cohort_end_date": pa.array([0] * 3, pa.int32()).cast(pa.date32())}))
    salt, other = new_salt(), new_salt()
    rows = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, salt).to_pylist()}
    assert rows[1]["nhs"] == salted(salt, token("nhs-one")) and rows[1]["demographic"] == salted(salt, token("dem-one"))
    assert rows[2]["nhs"] is None and rows[2]["demographic"] == salted(salt, token("dem-two"))
    assert rows[3]["nhs"] is None and rows[3]["demographic"] is None   # no token: unlinkable
    again = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, other).to_pylist()}
    assert again[1]["nhs"] == salted(other, token("nhs-one")) != rows[1]["nhs"]   # another question, another token


def test_salting_keeps_equal_tokens_equal_and_refuses_what_is_not_a_token():
    key = question_key(new_salt())
    stored = [token("a")[:32], None, token("a")[:32].upper(), token("b")[:32], None]
    out = salt_tokens(*token_blocks(pa.chunked_array([stored[:2], stored[2:]])), key).to_pylist()
    assert out[0] == out[2] != out[3] and out[1] is None and out[4] is None and len(out[0]) == 8
    assert out[3] == salted_with_key(key, token("b"))
    assert salt_tokens(*token_blocks(pa.array([None, None], pa.string())), key).null_count == 2
    with pytest.raises(ValueError, match="not 32 hex digits"):
        token_blocks(pa.array([token("a")]))                     # 64 digits: not cut to 16 bytes
    with pytest.raises(ValueError, match="not hexadecimal"):
        token_blocks(pa.array(["g" * 32]))
    with pytest.raises(ValueError, match="not hexadecimal"):
        token_blocks(pa.array(["ab " + "c" * 29]))               # a space, which bytes.fromhex would skip


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


def cohort_of(store, cohort_id: int, persons: list[int]) -> None:
    store.insert_arrow("cohort", pa.table({"cohort_definition_id": [cohort_id] * len(persons), "subject_id": persons,
                                           "cohort_start_date": pa.array([0] * len(persons), pa.int32()).cast(pa.date32()),
                                           "cohort_end_date": pa.array([0] * len(persons), pa.int32()).cast(pa.date32())}))


def test_per_person_tokens_follow_links_changed_after_the_load(store):
    """Linkage merging two persons, or an opt-out deleting one, changes the links without a load: the next
    question sees it and rebuilds the per-person tokens, also those a node keeps in memory; so does a load."""
    ensure_extension_tables(store)
    store.execute("CREATE TABLE fed_test_link AS SELECT * FROM mercia_person_link WHERE 1 = 0")
    store.insert_arrow("fed_test_link", pa.table({
        "person_id": [1, 2, 3], "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"], "nhs_status": ["valid"] * 3,
        "record_hash": ["h"] * 3, "gender_concept_id": [0] * 3, "load_id": [1] * 3}))
    store.execute("INSERT INTO mercia_person_link SELECT * FROM fed_test_link")
    store.insert_arrow("mercia_network_token", pa.table({
        "org": ["X"] * 3, "source_pseudonym": ["s1", "s2", "s3"], "token_kind": ["demographic", "nhs", "nhs"],
        "token": [token("d1"), token("n2"), token("n3")], "load_id": [1] * 3}))
    assert refresh_person_tokens(store) == 3
    cohort_of(store, 8, [1, 2, 3])
    cohort_of(store, 9, [1, 3])
    held, salt = PersonTokens(), new_salt()
    before = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 8, salt, held).to_pylist()}
    assert before[1]["nhs"] is None and before[3]["nhs"] == salted(salt, token("n3"))
    store.execute("UPDATE mercia_person_link SET person_id = 1 WHERE source_pseudonym = 's2'")   # 2 merged into 1
    store.execute("DELETE FROM mercia_person_link WHERE person_id = 3")                          # 3 opted out
    assert not person_tokens_current(store)
    for kept in (held, None):   # the tokens a node keeps, and tokens read afresh
        rows = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, salt, kept).to_pylist()}
        assert rows[1]["nhs"] == salted(salt, token("n2")) and rows[1]["demographic"] == salted(salt, token("d1"))
        assert rows[3]["nhs"] is None and rows[3]["demographic"] is None and person_tokens_current(store)
    assert store.query("SELECT person_id FROM mercia_person_token ORDER BY 1") == [(1,)]
    store.execute("DELETE FROM mercia_network_token WHERE source_pseudonym = 's2'")   # a load corrects a record's
    store.insert_arrow("mercia_network_token", pa.table({                                # NHS number, as ingest does
        "org": ["X"], "source_pseudonym": ["s2"], "token_kind": ["nhs"], "token": [token("n1")], "load_id": [2]}))
    refresh_person_tokens(store)
    after = {r["person_id"]: r for r in cohort_tokens(store, "cohort", 9, salt, held).to_pylist()}
    assert after[1]["nhs"] == salted(salt, token("n1"))


def test_members_travel_as_arrow_and_count_the_same():
    tokens = [hashlib.sha256(str(i).encode()).digest()[:8] for i in range(6)]

    def sent(org: str, nhs: list, demographic: list, cells: list[str]) -> pa.Table:
        members = pa.table([pa.array(nhs, pa.binary(8)), pa.array(demographic, pa.binary(8)),
                            pa.array(cells).dictionary_encode()], schema=MEMBERS)
        result = NodeResult(task_id=1, org=org, nonce="n", status="answered", count=len(cells), members=members)
        received = NodeResult.from_wire(result.to_wire())
        assert received.members.equals(members) and received.count == len(cells)
        return member_rows(org, received)
    # site A knows persons 0, 1 by NHS number; site B knows person 1 by NHS number and person 0 only by
    # demographics (the demographic token A also holds for 0), and person 5 by nothing A has
    a = sent("A", [tokens[0], tokens[1]], [tokens[3], None], ["x", "y"])
    b = sent("B", [tokens[1], None, None], [None, tokens[3], tokens[5]], ["y", "y", "x"])
    assert a.column("nhs").null_count == 0 and b.column("nhs").null_count == 2
    assert a.column("nhs")[0].as_py() == int.from_bytes(tokens[0], sys.byteorder)
    both = pa.concat_tables([a, b])
    assert network_counts(both, partition=True) == (3, 2, {"x": 2, "y": 1})   # 0 counted in x, its smallest cell
    assert network_counts(both, partition=False) == (3, 2, {"x": 2, "y": 2})  # 0 in x and y, 1 in y, 5 in x
    assert network_counts(both.slice(0, 0), partition=True) == (0, 0, {})


def test_what_is_not_a_node_result_is_refused():
    good = NodeResult(task_id=1, org="A", nonce="n", status="answered", members=pa.table(
        [pa.array([b"1" * 8], pa.binary(8)), pa.array([None], pa.binary(8)),
         pa.array([""]).dictionary_encode()], schema=MEMBERS)).to_wire()
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        NodeResult.from_wire(b'{"task_id": 1}')
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        NodeResult.from_wire(good[:-40])                            # cut short
    wrong = pa.table({"nhs": pa.array([b"1" * 16], pa.binary(16))}).replace_schema_metadata(
        {"mercia.node_result": b'{"task_id": 1, "org": "A", "nonce": "n", "status": "answered"}'})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, wrong.schema) as writer:
        writer.write_table(wrong)
    with pytest.raises(ValueError, match="members must be"):
        NodeResult.from_wire(sink.getvalue().to_pybytes())        # 16-byte tokens, no cells
    with pytest.raises(ValueError, match="neither token"):
        NodeResult(task_id=1, org="A", nonce="n", status="answered", members=pa.table(
            [pa.array([None], pa.binary(8)), pa.array([None], pa.binary(8)), pa.array([""]).dictionary_encode()],
            schema=MEMBERS))
    for cell in (pa.DictionaryArray.from_arrays(pa.array([None], pa.int32()), pa.array([""])),   # null index
                 pa.DictionaryArray.from_arrays(pa.array([0], pa.int32()), pa.array([None], pa.string()))):
        no_cell = pa.table([pa.array([b"1" * 8], pa.binary(8)), pa.array([None], pa.binary(8)), cell], schema=MEMBERS)
        with pytest.raises(ValueError, match="no cell"):   # else the hub's count of the question fails, not the result
            NodeResult.from_wire(NodeResult.model_construct(
                task_id=1, org="A", nonce="n", status="answered", members=no_cell).to_wire())
    fields = {b"mercia.node_result": b'{"task_id": 1, "org": "A", "nonce": "n", "status": "answered"}'}
    for codec in ("zstd", "lz4"):   # a few bytes could unpack to any size: refused before anything is unpacked
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, MEMBERS.with_metadata(fields),
                               options=pa.ipc.IpcWriteOptions(compression=codec)) as writer:
            writer.write_table(NodeResult.from_wire(good).members)
        assert compressed_ipc(sink.getvalue().to_pybytes()) and not compressed_ipc(good)
        with pytest.raises(ValueError, match="compressed Arrow IPC"):
            NodeResult.from_wire(sink.getvalue().to_pybytes())
        # only the dictionary batch compressed (pyarrow reads such a stream, unpacking the dictionary)
        packed, plain = (list(pa.ipc.MessageReader.open_stream(body)) for body in (sink.getvalue(), good))
        assert [m.type for m in packed] == [m.type for m in plain] == ["schema", "dictionary", "record batch"]
        mixed = b"".join(m.serialize().to_pybytes() for m in (plain[0], packed[1], plain[2])) + b"\xff" * 4 + b"\0" * 4
        assert pa.ipc.open_stream(mixed).read_all().num_rows == NodeResult.from_wire(good).members.num_rows
        with pytest.raises(ValueError, match="compressed Arrow IPC"):
            NodeResult.from_wire(mixed)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, MEMBERS) as writer:
        writer.write_table(MEMBERS.empty_table())
    with pytest.raises(ValueError, match="no result fields"):
        NodeResult.from_wire(sink.getvalue().to_pybytes())
    assert member_rows("A", NodeResult(task_id=1, org="A", nonce="n", status="refused")).num_rows == 0
    odd = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), 2, [None, pa.py_buffer(b"12345678abcdefghXYZ")])
    assert token_integers(odd).to_pylist() == [
        int.from_bytes(b"12345678", sys.byteorder), int.from_bytes(b"abcdefgh", sys.byteorder)]
    assert token_integers(odd.slice(1)).to_pylist() == [int.from_bytes(b"abcdefgh", sys.byteorder)]
