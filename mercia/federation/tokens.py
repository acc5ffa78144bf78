"""Network linkage tokens: how a federated answer counts a person seen by three organisations once.

At ingest a node computes, beside its own pseudonyms, tokens per local person record: an HMAC of
the NHS number under the *network* key (held by every node, never by the hub) and a keyed
demographic token (normalised surname, forename, full date of birth and sex, the normalisation the
linkage tokens use).  A person is counted by NHS token; a person without one is counted by its
demographic token unless that token belongs to a person with an NHS number (two NHS numbers are
never merged by demographics).  For each question the hub sends a
fresh random salt and the node returns ``AES_k(token) XOR token`` for its cohort, ``k`` derived from the
salt (``salt_tokens``): the hub can count the union and overlap of sites for that question only, and
cannot link across questions or back to people.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mercia.cdm import Store
from mercia.cdm.extensions import ensure_extension_tables
from mercia.federation.messages import TOKEN_BYTES
from mercia.privacy.nhs import nhs_number_problems, normalise_nhs_numbers
from mercia.privacy.pseudonym import KeyError_, Pseudonymiser

NETWORK_KEY_ENV = "MERCIA_NETWORK_KEY"
NETWORK_KEY_FILE_ENV = "MERCIA_NETWORK_KEY_FILE"
SALT_BYTES = 32
AES_BLOCK = 16   # bytes of a per-person token (mercia_person_token holds them as 32 hex digits)
TOKEN_KINDS = ("nhs", "demographic")


def load_network_key(key_file: Path | str | None = None) -> bytes:
    """The network key: ``$MERCIA_NETWORK_KEY`` or a file (argument or ``$MERCIA_NETWORK_KEY_FILE``)."""
    raw = os.environ.get(NETWORK_KEY_ENV)
    if raw is None:
        key_file = key_file or os.environ.get(NETWORK_KEY_FILE_ENV)
        if key_file is None:
            raise KeyError_(f"no network key: set {NETWORK_KEY_ENV} or {NETWORK_KEY_FILE_ENV} "
                            "(the same secret on every node of the network; the hub never holds it)")
        try:
            raw = Path(key_file).expanduser().read_text().strip()
        except OSError as exc:
            raise KeyError_(f"cannot read network key file {key_file}: {exc.strerror}") from exc
    if len(raw.encode()) < 32:
        raise KeyError_("network key too short: need at least 32 bytes")
    return raw.encode()


def new_salt() -> str:
    return secrets.token_hex(SALT_BYTES)


def network_tokens(network_key: bytes, persons: pa.Table, allow_synthetic: bool) -> pa.Table:
    """(person_ref, token_kind, token) for staged persons: an ``nhs`` token for a valid NHS number and a
    ``demographic`` token whenever surname, forename, full date of birth and sex are all present."""
    network = Pseudonymiser(network_key)
    nhs = normalise_nhs_numbers(persons.column("nhs_number").combine_chunks())
    valid = pc.and_(pc.is_null(nhs_number_problems(nhs, allow_synthetic)), pc.invert(pc.is_null(nhs)))
    parts = [normalised_names(persons.column("family")), normalised_names(persons.column("given")),
             full_dates(persons.column("birth_date")),
             pc.utf8_slice_codeunits(pc.utf8_lower(persons.column("sex").cast(pa.string())), 0, 1)]
    complete = pc.and_kleene(pc.and_kleene(pc.greater(pc.utf8_length(parts[0]), 0),
                                           pc.greater(pc.utf8_length(parts[1]), 0)),
                             pc.and_kleene(pc.is_valid(parts[2]), pc.greater(pc.utf8_length(parts[3]), 0)))
    demographic = pc.if_else(pc.fill_null(complete, False), pc.binary_join_element_wise(*parts, "|"),
                             pa.scalar(None, pa.string()))
    refs = persons.column("person_ref").combine_chunks()
    both = pa.concat_tables([
        pa.table({"person_ref": refs, "token_kind": pa.array(["nhs"] * len(refs), pa.string()),
                  "token": network.hash_values("network/nhs-number", pc.if_else(valid, nhs, pa.scalar(None, pa.string())))}),
        pa.table({"person_ref": refs, "token_kind": pa.array(["demographic"] * len(refs), pa.string()),
                  "token": network.hash_values("network/demographic", demographic.combine_chunks())})])
    return both.filter(pc.invert(pc.is_null(both.column("token"))))


def normalised_names(names: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``privacy.policy.normalise_name`` over a column: accents folded (NFKD), ASCII letters only, upper case."""
    folded = pc.utf8_normalize(names.cast(pa.string()), form="NFKD")
    return pc.ascii_upper(pc.replace_substring_regex(folded, r"[^A-Za-z]", ""))


def full_dates(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """The first ten characters where they are a real ``YYYY-MM-DD`` date (``privacy.policy.valid_partial_date``
    for full dates), else null; a parse that does not print back the same (2020-02-30) is not a date."""
    text = pc.utf8_slice_codeunits(values.cast(pa.string()), 0, 10)
    parsed = pc.strptime(text, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.if_else(pc.fill_null(pc.equal(pc.strftime(parsed, format="%Y-%m-%d"), text), False), text,
                      pa.scalar(None, pa.string()))


def record_network_tokens(store: Store, org: str, persons: pa.Table, load_id: int, pseudonymiser: Pseudonymiser,
                          network_key: bytes, allow_synthetic: bool = False) -> int:
    """Store the network tokens of a load's persons (the staged table, identifiers still in clear, as
    ``mercia.ingest`` reads it), keyed by the organisation's source pseudonym; replaces earlier tokens
    of the same records, and rebuilds the per-person tokens.  Only persons the load linked get tokens:
    one withheld by the national data opt-out (or rejected) keeps none.  Returns the number stored."""
    if persons.num_rows == 0:
        return 0
    tokens = network_tokens(network_key, persons, allow_synthetic)
    pseudonyms = pseudonymiser.source_pseudonyms(org, tokens.column("person_ref"))
    rows = pa.table({"org": pa.array([org] * tokens.num_rows, pa.string()), "source_pseudonym": pseudonyms,
                     "token_kind": tokens.column("token_kind"), "token": tokens.column("token"),
                     "load_id": pa.array([load_id] * tokens.num_rows, pa.int64())})
    ensure_extension_tables(store)
    with store.transaction():
        store.temp_table_from_arrow("fed_refresh", "source_pseudonym VARCHAR", rows.select(["source_pseudonym"]))
        store.execute("DELETE FROM mercia_network_token WHERE org = ? AND source_pseudonym IN "
                      "(SELECT source_pseudonym FROM fed_refresh)", [org])
        linked = store.query_arrow("SELECT source_pseudonym FROM mercia_person_link WHERE org = ? AND source_pseudonym "
                                   "IN (SELECT source_pseudonym FROM fed_refresh)", [org]).column("source_pseudonym")
        rows = rows.filter(pc.is_in(rows.column("source_pseudonym"), linked.combine_chunks().cast(pa.string())))
        store.insert_arrow("mercia_network_token", rows)
        refresh_person_tokens(store)
    return rows.num_rows


# Per person: the NHS token of any of its local records and its demographic token, each cut to its first
# 16 bytes (32 hex digits; 128 bits are plenty to tell persons apart), so a question joins on person_id.
PERSON_TOKENS_SQL = """
    INSERT INTO mercia_person_token (person_id, nhs, demographic)
    SELECT l.person_id, substr(min(CASE WHEN t.token_kind = 'nhs' THEN t.token END), 1, 32),
           substr(min(CASE WHEN t.token_kind = 'demographic' THEN t.token END), 1, 32)
    FROM mercia_person_link l JOIN mercia_network_token t ON t.org = l.org AND t.source_pseudonym = l.source_pseudonym
    GROUP BY l.person_id"""
# What the per-person tokens depend on: which records link to which person, and the tokens stored.
SOURCE_FINGERPRINT_SQL = """
    SELECT (SELECT count(*) FROM mercia_person_link), (SELECT COALESCE(sum(person_id), 0) FROM mercia_person_link),
           (SELECT COALESCE(sum(load_id), 0) FROM mercia_person_link), (SELECT count(*) FROM mercia_network_token),
           (SELECT COALESCE(sum(load_id), 0) FROM mercia_network_token)"""


def _source_fingerprint(store: Store) -> str:
    return ":".join(str(int(v)) for v in store.query(SOURCE_FINGERPRINT_SQL)[0])


def refresh_person_tokens(store: Store) -> int:
    """Rebuild ``mercia_person_token`` from the person links and network tokens (after every load; each
    question also rebuilds it when links changed by another path).  Returns the persons with a token."""
    with store.transaction():
        store.execute("DELETE FROM mercia_person_token")
        store.execute(PERSON_TOKENS_SQL)
        store.execute("DELETE FROM mercia_person_token_source")
        store.execute("INSERT INTO mercia_person_token_source VALUES (?)", [_source_fingerprint(store)])
    return int(store.query_one("SELECT count(*) FROM mercia_person_token"))


def person_tokens_current(store: Store, fingerprint: str | None = None) -> bool:
    """Were the per-person tokens built from the links and tokens the store holds now (their ``fingerprint``,
    when the caller has it)?"""
    return (store.query_one("SELECT fingerprint FROM mercia_person_token_source")
            == (fingerprint or _source_fingerprint(store)))


class PersonTokens:
    """A node's per-person tokens in memory (person ids sorted; each token a 16-byte block), read again only
    when ``mercia_person_token`` changed: each question then finds its members' tokens with one numpy search
    instead of joining the table (at 40,000 members of 250,000 persons: the join 8.6 CPU-ms and decoding the
    hex 2 more, against about 2).  Memory: 41 bytes a person (10 MB at 250,000)."""

    def __init__(self) -> None:
        self._version: tuple[str, str | None, str] | None = None   # store, schema, source fingerprint held
        self._persons = np.zeros(0, np.int64)
        self._blocks = {kind: (np.zeros((0, AES_BLOCK), np.uint8), np.zeros(0, bool)) for kind in TOKEN_KINDS}

    def current(self, store: Store) -> PersonTokens:
        """Brought up to date with ``store``: its per-person tokens rebuilt first when the links or network
        tokens changed since they were built (a load, linkage merging persons, an opt-out), and read again
        whenever they are not the ones held."""
        fingerprint = _source_fingerprint(store)
        if not person_tokens_current(store, fingerprint):
            refresh_person_tokens(store)
        version = (store.location, store.schema, fingerprint)
        if version != self._version:
            held = store.query_arrow("SELECT person_id, nhs, demographic FROM mercia_person_token ORDER BY person_id")
            self._persons = held.column("person_id").to_numpy().astype(np.int64)
            self._blocks = {kind: token_blocks(held.column(kind)) for kind in TOKEN_KINDS}
            self._version = version
        return self

    def salted(self, persons: np.ndarray, key: bytes) -> pa.Table:
        """(person_id, nhs, demographic) for ``persons`` (distinct), each token salted under ``key``
        (``salt_tokens``); null where the person has no such token."""
        persons = np.sort(persons)   # a sorted search walks the held ids once
        if len(self._persons):
            at = np.minimum(np.searchsorted(self._persons, persons), len(self._persons) - 1)
            held = self._persons[at] == persons
        else:   # nobody has a token: every row null
            at, held = np.zeros(len(persons), np.intp), np.zeros(len(persons), bool)
        columns = {"person_id": pa.array(persons, pa.int64())}
        for kind, (blocks, valid) in self._blocks.items():
            columns[kind] = salt_tokens(blocks[at] if len(blocks) else np.zeros((len(at), AES_BLOCK), np.uint8),
                                        held & valid[at] if len(valid) else held, key)
        return pa.table(columns)


def cohort_tokens(store: Store, cohort_table: str, cohort_id: int, salt: str,
                  held: PersonTokens | None = None) -> pa.Table:
    """(person_id, nhs, demographic) for the cohort's members, each token salted for this question
    (``salt_tokens``; TOKEN_BYTES = 8 bytes, null: none): unlinkable to any other question, and equal at every
    node for the same person.  A person with neither token is counted as "unlinkable" (not de-duplicated).
    ``held``: the per-person tokens a node keeps between questions (``PersonTokens``; read afresh without)."""
    members = store.query_arrow(f"SELECT DISTINCT subject_id FROM {cohort_table} WHERE cohort_definition_id = ?",
                                [cohort_id]).column(0)
    tokens = (held or PersonTokens()).current(store)
    return tokens.salted(members.to_numpy().astype(np.int64), question_key(salt))


def question_key(salt: str) -> bytes:
    """The AES-128 key of one question, derived from the hub's salt for it (the hub can derive it too: the
    secret is the tokens, not the key)."""
    return hashlib.sha256(b"mercia-federation/question-key\0" + salt.encode()).digest()[:16]


def token_blocks(tokens: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte per-person tokens (32 hex digits, as ``mercia_person_token`` holds them; null: none) as a
    (rows, 16) byte array (zeros where null) and whether each row has one.  Raises ValueError on a token
    that is not 32 hex digits."""
    tokens = tokens.combine_chunks() if isinstance(tokens, pa.ChunkedArray) else tokens
    valid = tokens.is_valid().to_numpy(zero_copy_only=False)
    blocks = np.zeros((len(tokens), AES_BLOCK), np.uint8)
    present = tokens.drop_null().cast(pa.string())
    if len(present) == 0:
        return blocks, valid
    lengths = pc.utf8_length(present)
    if pc.min(lengths).as_py() != 2 * AES_BLOCK or pc.max(lengths).as_py() != 2 * AES_BLOCK:
        raise ValueError(f"a per-person token is not {2 * AES_BLOCK} hex digits (mercia_person_token)")
    offsets = np.frombuffer(present.buffers()[1], np.int32)[present.offset:present.offset + len(present) + 1]
    digits = present.buffers()[2][int(offsets[0]):int(offsets[-1])].to_pybytes()
    try:   # fromhex also skips spaces between bytes, which leaves fewer bytes than tokens: checked below
        decoded = np.frombuffer(bytes.fromhex(digits.decode("ascii")), np.uint8)
    except (UnicodeDecodeError, ValueError):
        decoded = None
    if decoded is None or len(decoded) != AES_BLOCK * len(present):
        raise ValueError("a per-person token is not hexadecimal (mercia_person_token)")
    blocks[valid] = decoded.reshape(-1, AES_BLOCK)
    return blocks, valid


def salt_tokens(blocks: np.ndarray, valid: np.ndarray, key: bytes) -> pa.Array:
    """16-byte per-person tokens (``token_blocks``; rows not ``valid`` give null) salted for one question: the
    first 8 bytes of ``AES_k(t) XOR t`` (Matyas-Meyer-Oseas), one AES-128-ECB call over every token block and
    one numpy XOR.  Equal tokens give equal outputs under one key; without ``t`` nobody holding ``k`` (the
    hub) can go back from an output to ``t``, so the outputs of two questions cannot be linked."""
    present = np.ascontiguousarray(blocks[valid])
    if len(present) == 0:
        return pa.nulls(len(valid), pa.binary(TOKEN_BYTES))
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    mixed = np.frombuffer(encryptor.update(present.tobytes()) + encryptor.finalize(), np.uint8).reshape(-1, AES_BLOCK)
    salted = np.zeros((len(valid), TOKEN_BYTES), np.uint8)
    salted[valid] = (mixed ^ present)[:, :TOKEN_BYTES]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(TOKEN_BYTES), len(valid),
                                                [pa.array(valid).buffers()[1], pa.py_buffer(salted)])
