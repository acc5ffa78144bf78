"""The typed, versioned messages between hub and nodes: no SQL ever crosses the wire."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from mercia.cohorts.model import CohortExpression
from mercia.privacy.differencing import cohort_parts

QUERY_VERSION = 1      # the question a researcher asks (the API's message)
# What hub and nodes speak (headers, signed requests, how tokens are salted, the result's encoding).
# 2: nodes salt per-person tokens of 16 bytes (mercia_person_token), so a version-1 node's tokens would never
# match a version-2 node's.  3: tokens salted with AES (``tokens.salt_tokens``) instead of HMAC, results as
# an Arrow IPC stream instead of JSON with base64.
PROTOCOL_VERSION = 3
PROTOCOL_HEADER = "X-Mercia-Protocol"


STRATA = ("sex", "age_band", "imd_quintile", "year")
Stratum = Literal["sex", "age_band", "imd_quintile", "year"]
FEATURE_DOMAINS = ("condition", "drug")


class CohortQuery(BaseModel):
    """What every question kind shares: one ATLAS/Circe cohort, run by each node's own cohort engine."""
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = QUERY_VERSION
    cohort: dict[str, Any] = Field(description="an ATLAS/Circe cohort definition (JSON object)")

    def expression(self) -> CohortExpression:
        return CohortExpression.from_json(self.cohort)

    def criteria(self) -> set[str]:
        """The cohort's parts a differencing attack would vary (``privacy.differencing``)."""
        return cohort_parts(self.cohort)


class FeasibilityQuery(CohortQuery):
    """How many distinct persons are in this cohort, per site and across the network; optionally
    stratified (each person counted once, in one stratum, so the strata add up to the total)."""

    kind: Literal["feasibility"] = "feasibility"
    strata: list[Stratum] = Field(default_factory=list, max_length=2,
                                  description="sex, age band (10 years, at index), IMD quintile, calendar year of index")

    @field_validator("strata")
    @classmethod
    def _distinct(cls, strata: list[str]) -> list[str]:
        if len(set(strata)) != len(strata):
            raise ValueError("each stratum may be named once")
        return strata


class TrialFeasibilityQuery(CohortQuery):
    """Trial feasibility over time: persons newly eligible each month (first entry into the eligibility
    cohort anywhere in the network), between two months inclusive."""

    kind: Literal["trial_feasibility"] = "trial_feasibility"
    start_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")
    end_month: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="YYYY-MM")

    @model_validator(mode="after")
    def _window(self) -> TrialFeasibilityQuery:
        (y0, m0), (y1, m1) = (map(int, m.split("-")) for m in (self.start_month, self.end_month))
        months = (y1 - y0) * 12 + m1 - m0 + 1
        if not 1 <= months <= 240:
            raise ValueError(f"{self.start_month}..{self.end_month}: choose 1 to 240 months, start before end")
        return self


class CharacterisationQuery(CohortQuery):
    """The cohort's characterisation across the network: persons by sex, age band and IMD quintile, and
    the prevalence of each condition/drug concept in the window before index — every person counted once."""

    kind: Literal["characterisation"] = "characterisation"
    domains: list[Literal["condition", "drug"]] = Field(default_factory=lambda: ["condition"], max_length=2)
    window_days: int = Field(365, ge=1, le=3650, description="days before index (index day included)")


Query = Annotated[FeasibilityQuery | TrialFeasibilityQuery | CharacterisationQuery, Field(discriminator="kind")]
QUERY = TypeAdapter(Query)
KINDS = ("feasibility", "trial_feasibility", "characterisation")


def partitioned(query: CohortQuery) -> bool:
    """Does each person fall in exactly one cell (strata, months) rather than in several (features)?"""
    return not isinstance(query, CharacterisationQuery)


def cell_partition(query: CohortQuery) -> Callable[[str], str | None]:
    """Which partition of the total a cell is in (its cells divide the cohort between them), None for a cell
    in none: all the cells of a stratified or monthly question; a characterisation's ``sex=``, ``age_band=``
    and ``imd_quintile=`` cells each (every person has one of each), not its features."""
    if partitioned(query):
        return lambda cell: ""
    return lambda cell: cell.split("=", 1)[0] if "=" in cell else None


class Task(BaseModel):
    """One node's share of one question: the salt for its tokens and a nonce valid until ``expires_at``."""

    task_id: int
    query_id: int
    org: str
    nonce: str
    salt: str
    expires_at: str
    policy: str
    query: Query


# A salted token: 8 bytes (``tokens.salt_tokens``).  Two different persons share one with probability
# 2**-64, so a question over N distinct persons merges some two of them with probability about N**2 / 2**65:
# 3e-8 at a million, 8e-7 at 5.4 million — far below the rounding every published count goes through.
TOKEN_BYTES = 8
# The linked cohort members of a result, one row per member and cell: the salted NHS token and the salted
# demographic token (null: none), and the cell.  They travel as the body of an Arrow IPC stream, not JSON.
MEMBERS = pa.schema([("nhs", pa.binary(TOKEN_BYTES)), ("demographic", pa.binary(TOKEN_BYTES)),
                     ("cell", pa.dictionary(pa.int32(), pa.string()))])
RESULT_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
_RESULT_METADATA = b"mercia.node_result"


class NodeResult(BaseModel):
    """What a node sends back (signed): published counts, the salted tokens of its cohort members per
    cell (``members``: a member's salted NHS token and/or salted demographic token, so the hub can tell
    that a person known only by demographics at one site is a person known by NHS number at another),
    and its data freshness.  On the wire (``to_wire``) the members are an Arrow IPC stream and every
    other field is JSON in its schema's metadata: 200,000 members cost the hub one Arrow read."""
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    task_id: int
    org: str
    nonce: str
    status: Literal["answered", "refused", "paused", "error"]
    reason: str | None = None
    count: int | None = Field(None, description="the site's count after the node's disclosure policy")
    cells: dict[str, int | None] = Field(default_factory=dict,
                                         description="the site's published count per cell (stratum, month, feature)")
    labels: dict[str, str] = Field(default_factory=dict, description="names of concept cells (vocabulary, not data)")
    members: pa.Table = Field(default_factory=MEMBERS.empty_table, exclude=True,
                              description="the linked members (``MEMBERS``), one row per member and cell")
    linked: int = Field(0, description="cohort persons with a network token (the rows of ``members`` belong to them)")
    unlinkable: int = Field(0, description="cohort persons with no network token (counted, not de-duplicated)")
    unlinkable_cells: dict[str, int] = Field(default_factory=dict)
    last_load: str | None = Field(None, description="when the node's store was last loaded (data freshness)")
    data_version: str | None = None

    @field_validator("members")
    @classmethod
    def _members_schema(cls, members: pa.Table) -> pa.Table:
        if not members.schema.equals(MEMBERS):
            raise ValueError(f"members must be {MEMBERS}, not {members.schema}")
        if pc.any(pc.and_(pc.is_null(members.column("nhs")), pc.is_null(members.column("demographic")))).as_py():
            raise ValueError("a member row with neither token (such members are counted as unlinkable)")
        cells = members.column("cell")
        if cells.null_count or any(chunk.dictionary.null_count for chunk in cells.chunks):
            raise ValueError("a member row with no cell")   # the hub's count could not place it
        return members

    def to_wire(self) -> bytes:
        """The result as sent: an Arrow IPC stream of the members, the other fields as JSON metadata."""
        sink = pa.BufferOutputStream()
        schema = MEMBERS.with_metadata({_RESULT_METADATA: self.model_dump_json().encode()})
        with pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(self.members.replace_schema_metadata(schema.metadata))
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_wire(cls, body: bytes) -> NodeResult:
        """Read ``to_wire``'s bytes; raises ValueError when they are not a node result.  A compressed stream
        is refused before anything is decompressed: its buffers could unpack to any size (``to_wire``
        never compresses, so the stream's buffers are never larger than the body the hub bounds)."""
        if compressed_ipc(body):
            raise ValueError("a compressed Arrow IPC stream (node results are sent uncompressed)")
        try:
            reader = pa.ipc.open_stream(body)
            members = reader.read_all()
            members.validate(full=True)   # offsets and dictionary indices inside their buffers
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"not an Arrow IPC stream of members: {exc}") from exc
        fields = (members.schema.metadata or {}).get(_RESULT_METADATA)
        if fields is None:
            raise ValueError("the stream carries no result fields (schema metadata)")
        parsed = cls.model_validate_json(fields)
        return parsed.model_copy(update={"members": cls._members_schema(members.replace_schema_metadata(None))})

    def secrets(self) -> list[str]:
        """Every salted token in the result, in hex (what must never reach a hub table or a user)."""
        return [token.hex() for name in ("nhs", "demographic")
                for token in self.members.column(name).drop_null().to_pylist()]


def compressed_ipc(body: bytes) -> bool:
    """Does any record or dictionary batch of this Arrow IPC stream say its body is compressed?  Read
    from each message's flatbuffer header (``Message.header`` → ``RecordBatch.compression``, field 3;
    a dictionary batch's record batch is its field 1) without reading the bodies.  Raises ValueError
    when the stream's messages cannot be read."""
    try:
        reader = pa.ipc.MessageReader.open_stream(body)
        while True:
            try:
                message = reader.read_next_message()
            except StopIteration:
                return False
            if message.type not in ("record batch", "dictionary"):   # pyarrow's names of the two batch kinds
                continue
            meta = message.metadata.to_pybytes()
            header = _table_field(meta, _root(meta), 2)
            batch = header if message.type == "record batch" else _table_field(meta, header, 1)
            if batch is not None and _field_offset(meta, batch, 3):
                return True
    except (pa.ArrowException, OSError, IndexError, struct.error) as exc:
        raise ValueError(f"not an Arrow IPC stream of members: {exc}") from exc


def _root(buf: bytes) -> int:
    return struct.unpack_from("<I", buf, 0)[0]


def _field_offset(buf: bytes, table: int, field: int) -> int:
    """A flatbuffer table's field position relative to the table (0: absent)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vtable_size = struct.unpack_from("<H", buf, vtable)[0]
    slot = 4 + 2 * field
    return struct.unpack_from("<H", buf, vtable + slot)[0] if slot < vtable_size else 0


def _table_field(buf: bytes, table: int | None, field: int) -> int | None:
    """The table a flatbuffer table's field points to (None: absent)."""
    if table is None:
        return None
    at = _field_offset(buf, table, field)
    return None if not at else table + at + struct.unpack_from("<I", buf, table + at)[0]
