"""Statistical disclosure control: one policy object for every aggregate that leaves Mercia.

How to use it (CLI, API, web, exports all do exactly this and nothing else)::

    from mercia.privacy.disclosure import get_policy
    policy = get_policy()                 # the configured one (settings.disclosure_policy)
    safe = policy.apply(result)           # an AnalysisResult or a single StatTable
    safe.disclosure.policy                # "opensafely": every output says which policy it went through
    safe.tables[0].display_rows()         # strings with the policy's redaction marker, for humans
    safe.tables[0].to_csv()               # the same for files (exports)

Results are *typed* so that the policy can be applied generically: an ``AnalysisResult`` is a list of
``StatTable``; every column of a table declares its ``Kind``:

- ``COUNT``: a number of people (or of their records).  Its name must say it is a count
  (``count`` / ``count_...``).  Redacted when 1..threshold, then rounded.  ``denominator`` names the
  count (column, or ``"population"`` for the table's population) it is a part of, so that a cell
  whose complement is small (a near-100% cell) is redacted too.
- ``STATISTIC``: a summary of a group (mean, median, SD, quantile, person-years, a model estimate).
  ``basis`` names the counts that give the group size; redacted when any basis is redacted, otherwise
  rounded to a step tied to the published group size (``publish_statistic``) so it cannot reveal N.
- ``DERIVED``: a value computed from counts by a named ``formula`` (percent, rate, exact Poisson
  bounds, binary SMD).  Recomputed from the *published* (rounded) counts so that it cannot reveal the
  unrounded ones; redacted when any argument is redacted.
- ``LABEL``: names, codes, times, anything that is not about how many people.

``StatTable.partitions`` declares count columns whose rows partition a population (sex, age band):
there secondary suppression redacts further cells until the redacted cells together describe either
nobody or more than ``threshold`` people, and totals are recomputed from the published cells.
``StatTable.kind == "life_table"`` marks Kaplan–Meier/life tables (columns ``time``,
``count_at_risk``, ``count_events``, ``count_censored``): those get midpoint rounding of cumulative
counts, start from the population released by the count rule (so the number at risk at time 0 is the
number every other page shows for those people), and the survival curve is recomputed from them.

Policies (docs/disclosure.md gives sources and the full rules):
- ``opensafely`` (default): redact any statistic describing 1–7 people, round counts to the nearest
  5, totals from rounded cells, midpoint-6 rounding for life tables.
- ``nhse-hes``: NHS England's HES/ECDS method: 1–7 shown as ``*``, other counts and totals (from the
  true values) rounded to 5; rounding replaces secondary suppression.
- ``threshold10``: redact counts 1–9 (fewer than 10), no rounding; life tables midpoint-10.

Raw (uncontrolled) results carry ``disclosure=None``; every renderer refuses them
(``require_controlled``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mercia.privacy.spreadsheet import inert_rows

__all__ = [
    "AnalysisResult", "ColumnSpec", "DisclosureError", "DisclosurePolicy", "DisclosureStamp", "Kind",
    "PartitionSpec", "POLICIES", "StatTable", "get_policy", "kaplan_meier", "midpoint_round", "require_controlled",
]


class DisclosureError(Exception):
    """A result that cannot be controlled as described (the message names table and column)."""


class Kind(StrEnum):
    LABEL = "label"
    COUNT = "count"
    STATISTIC = "statistic"
    DERIVED = "derived"


POPULATION = "population"


# -- derived statistics: recomputed from published counts -------------------------------------
def _percent(num: float, den: float) -> float | None:
    return None if not den else 100.0 * num / den


def _rate(events: float, time: float, scale: float = 1.0) -> float | None:
    return None if not time else events / time * scale


def poisson_interval(events: float, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Garwood 1936) confidence limits for a Poisson count: the chi-squared quantiles
    chi2(alpha/2; 2k)/2 and chi2(1 - alpha/2; 2k + 2)/2, which are the inverse of the regularised lower
    incomplete gamma function at k and k + 1.  ``gammaincinv`` gives the same floats as ``chi2.ppf`` (checked
    for k = 0-1,999) at ~1/30 of the cost a call, and without importing ``scipy.stats``."""
    from scipy.special import gammaincinv

    lower = 0.0 if events <= 0 else float(gammaincinv(events, alpha / 2))
    upper = float(gammaincinv(events + 1, 1 - alpha / 2))
    return lower, upper


def _rate_lower(events: float, time: float, scale: float = 1.0) -> float | None:
    return None if not time else poisson_interval(events)[0] / time * scale


def _rate_upper(events: float, time: float, scale: float = 1.0) -> float | None:
    return None if not time else poisson_interval(events)[1] / time * scale


def smd_binary(count_a: float, n_a: float, count_b: float, n_b: float) -> float | None:
    """Standardised mean difference of a binary covariate (Austin 2009, Stat Med 28:3083)."""
    if not n_a or not n_b:
        return None
    p_a, p_b = count_a / n_a, count_b / n_b
    pooled = math.sqrt((p_a * (1 - p_a) + p_b * (1 - p_b)) / 2)
    if pooled == 0:
        return 0.0 if p_a == p_b else None
    return (p_a - p_b) / pooled


FORMULAS: dict[str, Callable[..., float | None]] = {
    "percent": _percent, "rate": _rate, "rate_lower": _rate_lower, "rate_upper": _rate_upper,
    "smd_binary": smd_binary,
}


# -- the typed result model -------------------------------------------------------------------
class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind
    label: str | None = None
    basis: list[str] = Field(default_factory=list, description="counts giving the group size")
    formula: str | None = None
    args: list[str] = Field(default_factory=list, description="formula arguments (columns)")
    scale: float | None = None
    resolution: float | None = Field(
        1.0, description="statistics: the step between the values summarised (1 for years, days, scores); "
                         "None for a model estimate (hazard ratio, p, SMD), released to 2 significant figures")
    quantile: float | None = Field(None, description="statistics: the fraction of a quantile, an observed value "
                                                     "(PERCENTILE_DISC); withheld where it is the group's smallest "
                                                     "or largest value")
    denominator: str | None = Field(None, description="the count this count is part of")
    rounding: str | None = Field(None, description="set by the policy: what was done to the values")

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.kind == Kind.COUNT and not (self.name == "count" or self.name.startswith("count_")):
            raise DisclosureError(f"count column {self.name!r} must be named count or count_*")
        if self.kind != Kind.COUNT and self.name.startswith("count"):
            raise DisclosureError(f"column {self.name!r} is named like a count but is {self.kind}")
        if self.kind == Kind.DERIVED and self.formula not in FORMULAS:
            raise DisclosureError(f"derived column {self.name!r}: unknown formula {self.formula!r}")
        if self.kind == Kind.STATISTIC and not self.basis:
            raise DisclosureError(f"statistic column {self.name!r} needs a basis count")
        return self


class PartitionSpec(BaseModel):
    """Rows of ``column`` (within equal values of ``within``) partition one population; a row with no
    value (None) in ``within`` is in no partition (a comparison's features beside its characteristics)."""
    model_config = ConfigDict(extra="forbid")

    column: str
    within: list[str] = Field(default_factory=list)
    total: str | None = Field(None, description="a label column naming each row: the row (outside the group) "
                                                "it names as the group's ``within`` value holds the group's "
                                                "people (a CONSORT box and the boxes it divides into)")


class DisclosureStamp(BaseModel):
    policy: str
    description: str
    redacted_marker: str
    applied_at: str


class StatTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    title: str
    kind: Literal["table", "life_table"] = "table"
    columns: list[ColumnSpec]
    rows: list[dict[str, Any]]
    population: int | None = Field(None, description="people the table describes (a count)")
    partitions: list[PartitionSpec] = Field(default_factory=list)
    nested: str | None = Field(None, description="a count column whose rows are nested: each row's people "
                                                 "are among the row before's (an attrition)")
    totals: list[dict[str, Any]] = Field(default_factory=list, description="from published cells")
    redacted: list[tuple[int, str]] = Field(default_factory=list, description="(row, column)")
    redacted_marker: str | None = None
    notes: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> StatTable:
        names = {c.name for c in self.columns}
        refs = names | {POPULATION}
        for col in self.columns:
            missing = [r for r in [*col.basis, *col.args, *([col.denominator] if col.denominator else [])]
                       if r not in refs]
            if missing:
                raise DisclosureError(f"table {self.name!r}, column {col.name!r}: unknown {missing}")
        for part in self.partitions:
            if part.column not in names or any(w not in names for w in part.within) or \
                    (part.total is not None and (part.total not in names or len(part.within) != 1)):
                raise DisclosureError(f"table {self.name!r}: bad partition {part}")
        if self.nested is not None and self.nested not in names:
            raise DisclosureError(f"table {self.name!r}: unknown nested column {self.nested!r}")
        for i, row in enumerate(self.rows):
            extra = set(row) - names
            if extra:
                raise DisclosureError(f"table {self.name!r}, row {i}: undeclared columns {sorted(extra)}")
        return self

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def find(self, prefix: str) -> str:
        """The column called ``prefix`` or renamed from it by a policy (``count_events_midpoint6``)."""
        for col in self.columns:
            if col.name == prefix or col.name.startswith(prefix + "_midpoint"):
                return col.name
        raise KeyError(f"table {self.name!r} has no column {prefix!r}")

    def values(self, column: str) -> list[Any]:
        name = self.find(column)
        return [row.get(name) for row in self.rows]

    def display_rows(self) -> list[dict[str, str]]:
        """Every cell as text, redacted cells shown with the policy's marker."""
        marker = self.redacted_marker or ""
        hidden = set(self.redacted)
        return [{c.name: (marker if (i, c.name) in hidden else _fmt(row.get(c.name))) for c in self.columns}
                for i, row in enumerate(self.rows)]


    def to_csv(self) -> str:
        """The table as CSV (header = column names), redacted cells as the policy's marker; for
        exports, which must only ever write controlled tables."""
        require_controlled(self)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([c.name for c in self.columns])
        hidden = set(self.redacted)
        writer.writerows(inert_rows([self.redacted_marker if (i, c.name) in hidden else
                                     ("" if row.get(c.name) is None else row.get(c.name)) for c in self.columns]
                                    for i, row in enumerate(self.rows)))
        return buffer.getvalue()


class AnalysisResult(BaseModel):
    """What every analysis returns: parameters, tables, and which disclosure policy was applied."""
    model_config = ConfigDict(extra="forbid")

    analysis: str
    title: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    tables: list[StatTable]
    disclosure: DisclosureStamp | None = None

    def table(self, name: str) -> StatTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"{self.analysis} result has no table {name!r}")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        size = abs(value)
        if value == 0 or 1 <= size < 1000:
            return f"{value:.1f}"
        return f"{value:,.0f}" if size >= 1000 else f"{value:.2e}" if size < 0.001 else f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def require_controlled(result: AnalysisResult | StatTable) -> None:
    """Raise unless ``result`` has been through a policy: renderers call this before any output."""
    controlled = result.disclosure is not None if isinstance(result, AnalysisResult) \
        else result.redacted_marker is not None
    if not controlled:
        raise DisclosureError("refusing to render a result that has not been through disclosure control")


# -- rounding ---------------------------------------------------------------------------------
def round_to(value: int, base: int) -> int:
    """Round half up to the nearest multiple of ``base`` (Python's round() rounds half to even)."""
    return int(math.floor(value / base + 0.5)) * base


def midpoint_round(value: int, to: int = 6) -> int:
    """OpenSAFELY midpoint rounding: 0 -> 0, 1..6 -> 3, 7..12 -> 9, ... (for ``to=6``)."""
    return 0 if value == 0 else math.ceil(value / to) * to - to // 2


# -- the policy -------------------------------------------------------------------------------
class DisclosurePolicy(BaseModel):
    """Redact counts 1..``threshold`` (and what derives from them), then round to ``rounding_base``."""
    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    threshold: int
    rounding_base: int | None
    life_table_bin: int
    redacted_marker: str
    secondary_suppression: bool = Field(
        True, description="hide more cells of a partition (and near-100% cells) so hidden ones stay hidden")
    totals_from_published_cells: bool = Field(
        True, description="totals are sums of published cells; otherwise the true total, rounded")

    def stamp(self) -> DisclosureStamp:
        return DisclosureStamp(policy=self.name, description=self.description,
                               redacted_marker=self.redacted_marker,
                               applied_at=datetime.now(UTC).isoformat(timespec="seconds"))

    def apply(self, result: AnalysisResult | StatTable) -> Any:
        """A disclosure-controlled copy of ``result`` (the input is not changed)."""
        if isinstance(result, StatTable):
            return self._apply_table(result)
        if result.disclosure is not None:
            if result.disclosure.policy == self.name:
                return result
            raise DisclosureError(f"result already controlled by {result.disclosure.policy!r}")
        return result.model_copy(update={"tables": [self._apply_table(t) for t in result.tables],
                                         "disclosure": self.stamp()})

    def is_small(self, value: int | None) -> bool:
        return value is not None and 1 <= value <= self.threshold

    def publish_count(self, value: int) -> int:
        return value if self.rounding_base is None else round_to(value, self.rounding_base)

    def statistic_step(self, resolution: float, group: int) -> float:
        """The step a statistic of ``group`` people (its published size) is rounded to: the power of ten
        at or above (threshold + 1) x resolution / group.  One person moves a mean by resolution / N,
        so each released value is then consistent with more than ``threshold`` different sums for
        every N the rounded count allows, and neither N nor a hidden cell can be read back from it."""
        return 10.0 ** math.ceil(math.log10((self.threshold + 1) * resolution / max(group, 1)))

    def publish_statistic(self, value: Any, resolution: float | None, basis: list[Any]) -> Any:
        """A statistic rounded so that it cannot identify its group size (docs/disclosure.md)."""
        if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return value
        if resolution is None:
            return float(f"{value:.2g}")
        sizes = [b for b in basis if isinstance(b, int | float) and b > 0]
        step = self.statistic_step(resolution, int(min(sizes)) if sizes else 1)
        return _round_to_step(value, step)

    def extreme_quantile(self, quantile: float | None, basis: list[Any]) -> bool:
        """Could this quantile be its group's smallest or largest value, one person's?  A PERCENTILE_DISC
        quantile q of N values is the ceil(qN)-th: P10 is the minimum for N <= 10, P90 the maximum for
        N <= 9.  Judged for every N the published group size allows, so that withholding it says nothing
        more about N than the published count does."""
        sizes = [int(b) for b in basis if isinstance(b, int | float) and b > 0]
        if quantile is None or not sizes:
            return False
        half = (self.rounding_base or 1) // 2
        return any(math.ceil(quantile * n) in (1, n)
                   for n in range(max(min(sizes) - half, 1), min(sizes) + half + 1))

    def too_close(self, value: int, other: int) -> bool:
        """Would ``value`` shown beside ``other``, a count of a cohort one criterion apart (a step of an
        attrition, a near-identical question), give the 1..threshold people between them?  Policies
        without secondary protection (nhse-hes) leave this to rounding."""
        return self.secondary_suppression and self.is_small(abs(value - other))

    def publish_beside(self, value: int, others: list[int]) -> int | None:
        """``value`` published (None: hidden) where the counts ``others`` of cohorts one criterion apart
        from it have been published before: hidden when small or ``too_close`` to any of them."""
        if self.is_small(value) or any(self.too_close(value, other) for other in others):
            return None
        return self.publish_count(value)

    def publish_breakdown(self, total: int, cells: dict[str, int], *,
                          partition: Callable[[str], str | None]) -> tuple[int | None, dict[str, int | None]]:
        """A total and its cells released together (None: hidden), as one table through this policy.

        Published one by one, a single hidden cell is the total less the cells shown; as a table each
        cell is part of the total (a near-100% cell is hidden) and the cells of one partition of the total
        (``partition(cell)`` names it: each person in one of its cells; None for a cell in none, such as
        a feature) get secondary suppression together."""
        table = self._apply_table(StatTable(
            name="breakdown", title="breakdown", population=total,
            columns=[ColumnSpec(name="cell", kind=Kind.LABEL), ColumnSpec(name="part", kind=Kind.LABEL),
                     ColumnSpec(name="count", kind=Kind.COUNT, denominator=POPULATION)],
            # a cell in no partition is a group of its own, to which secondary suppression adds nothing
            rows=[{"cell": cell, "part": _partition_group(partition(cell), cell), "count": count}
                  for cell, count in cells.items()],
            partitions=[PartitionSpec(column="count", within=["part"])]))
        return table.population, {row["cell"]: row["count"] for row in table.rows}

    # -- tables ---------------------------------------------------------------------------
    def _apply_table(self, table: StatTable) -> StatTable:
        if table.redacted_marker is not None:
            raise DisclosureError(f"table {table.name!r} has already been controlled")
        if table.kind == "life_table":
            return self._apply_life_table(table)
        rows = [dict(r) for r in table.rows]
        cols = {c.name: c for c in table.columns}
        counts = [c.name for c in table.columns if c.kind == Kind.COUNT]
        hidden: set[tuple[int, str]] = set()
        population_hidden = self.is_small(table.population)

        def true_count(i: int, name: str) -> int | None:
            return table.population if name == POPULATION else table.rows[i].get(name)

        def is_hidden(i: int, name: str) -> bool:
            return population_hidden if name == POPULATION else (i, name) in hidden

        for name in counts:  # primary suppression, and near-100% cells
            den = cols[name].denominator
            for i, row in enumerate(table.rows):
                value = _as_count(row.get(name), table.name, i, name)
                if self.is_small(value):
                    hidden.add((i, name))
                elif self.secondary_suppression and den and value is not None \
                        and true_count(i, den) is not None and self.is_small(true_count(i, den) - value):
                    hidden.add((i, name))
        groups = [(part.column, members, self._total_row(table, part, key, members))
                  for part in (table.partitions if self.secondary_suppression else [])
                  for key, members in _groups(table, part.within).items()]
        before = None
        while hidden != before:  # until stable: a cell hidden in one group is a total or a part in another
            before = set(hidden)
            for column, members, total in groups:
                hidden |= self._secondary(table, column, members, hidden, total)
            if table.nested:
                hidden |= self._nested(table, table.nested, hidden)
        changed = True
        while changed:  # a part of a hidden group is hidden too
            changed = False
            for name in counts:
                den = cols[name].denominator
                for i in range(len(rows)):
                    if den and (i, name) not in hidden and is_hidden(i, den):
                        hidden.add((i, name))
                        changed = True

        published: dict[tuple[int, str], Any] = {}
        for i in range(len(rows)):
            for name in counts:
                value = table.rows[i].get(name)
                published[(i, name)] = None if (i, name) in hidden or value is None \
                    else self.publish_count(int(value))
        population = None if table.population is None or population_hidden \
            else self.publish_count(table.population)

        def published_value(i: int, name: str) -> Any:
            if name == POPULATION:
                return population
            return published.get((i, name), rows[i].get(name))

        order = {Kind.LABEL: 0, Kind.COUNT: 0, Kind.STATISTIC: 1, Kind.DERIVED: 2}  # derived last
        for i, row in enumerate(rows):
            for col in sorted(table.columns, key=lambda c: order[c.kind]):
                if col.kind == Kind.COUNT:
                    row[col.name] = published[(i, col.name)]
                elif col.kind == Kind.STATISTIC:
                    if any(is_hidden(i, b) or _small_basis(self, true_count(i, b)) for b in col.basis) or \
                            self.extreme_quantile(col.quantile, [published_value(i, b) for b in col.basis]):
                        hidden.add((i, col.name))
                        row[col.name] = None
                    else:
                        row[col.name] = self.publish_statistic(
                            row.get(col.name), col.resolution, [published_value(i, b) for b in col.basis])
                elif col.kind == Kind.DERIVED:
                    refs = [*col.args, *col.basis]
                    if any(is_hidden(i, a) for a in refs) or \
                            any(_small_basis(self, true_count(i, b)) for b in col.basis):
                        hidden.add((i, col.name))
                        row[col.name] = None
                        continue
                    args = [published_value(i, a) for a in col.args]
                    if any(a is None for a in args):
                        row[col.name] = None
                        continue
                    extra = [col.scale] if col.scale is not None else []
                    row[col.name] = FORMULAS[col.formula](*args, *extra)

        totals = []
        for part in table.partitions:
            sums: dict[tuple, int] = {}
            for key, members in _groups(table, part.within).items():
                for i in members:
                    if self.totals_from_published_cells:
                        sums[key] = sums.get(key, 0) + (rows[i][part.column] or 0)
                    else:
                        sums[key] = sums.get(key, 0) + int(table.rows[i].get(part.column) or 0)
            if not self.totals_from_published_cells:
                sums = {k: None if self.is_small(v) else self.publish_count(v) for k, v in sums.items()}
            totals += [{**dict(zip(part.within, key)), part.column: total} for key, total in sums.items()]

        columns = [c.model_copy(update={"rounding": self._describe(c)}) for c in table.columns]
        return table.model_copy(update={
            "rows": rows, "columns": columns, "population": population, "totals": totals,
            "redacted": sorted(hidden), "redacted_marker": self.redacted_marker})

    def _secondary(self, table: StatTable, column: str, members: list[int], hidden: set[tuple[int, str]],
                   total: int | None) -> set[tuple[int, str]]:
        """Hide more cells of one partition until the hidden ones describe nobody or > threshold; where
        the group's total is a row of the table (``total``) and hidden, until they describe > threshold,
        so that a hidden total is never the sum of its parts all shown."""
        value = {i: int(table.rows[i].get(column) or 0) for i in members}
        out = {(i, column) for i in members if (i, column) in hidden}
        hidden_sum = sum(value[i] for i, _ in out)
        total_hidden = total is not None and (total, column) in hidden
        candidates = sorted((i for i in members if (i, column) not in out and value[i] > 0),
                            key=lambda i: (value[i], i))
        for i in candidates:
            if hidden_sum > self.threshold or (hidden_sum == 0 and not total_hidden):
                break
            out.add((i, column))
            hidden_sum += value[i]
        return out

    @staticmethod
    def _total_row(table: StatTable, part: PartitionSpec, key: tuple, members: list[int]) -> int | None:
        """The row holding a group's people (``PartitionSpec.total``), when it is not one of the group."""
        if part.total is None:
            return None
        rows = [i for i, row in enumerate(table.rows) if row.get(part.total) == key[0] and i not in members]
        return rows[0] if rows else None

    def _nested(self, table: StatTable, column: str, hidden: set[tuple[int, str]]) -> set[tuple[int, str]]:
        """Hide a step of a chain of nested counts that is 1..threshold more than the next step shown, so
        that no two steps shown side by side differ by a small count (the people one rule removed).
        Walks from the last step (the cohort itself, shown everywhere else) towards the first."""
        out, after = set(), None
        for i in reversed(range(len(table.rows))):
            value = table.rows[i].get(column)
            if (i, column) in hidden or value is None:
                continue
            if after is not None and self.too_close(int(value), after):
                out.add((i, column))
            else:
                after = int(value)
        return out

    def _describe(self, col: ColumnSpec) -> str | None:
        if col.kind == Kind.COUNT:
            rounding = f", rounded to nearest {self.rounding_base}" if self.rounding_base else ""
            return f"1-{self.threshold} redacted{rounding}"
        if col.kind == Kind.DERIVED:
            return "recomputed from published counts"
        if col.kind == Kind.STATISTIC:
            precision = ("2 significant figures" if col.resolution is None else
                         f"rounded to the power of ten at or above {self.threshold + 1} x {col.resolution:g} / N")
            ends = "" if col.quantile is None else "; withheld where it could be the group's smallest or largest value"
            return f"redacted where it describes {self.threshold} or fewer people; {precision}{ends}"
        return None

    # -- life tables ----------------------------------------------------------------------
    def _apply_life_table(self, table: StatTable) -> StatTable:
        """Midpoint-round cumulative events and censorings, re-derive the counts and numbers at
        risk from them, and recompute the product-limit curve with log-log Greenwood bounds.

        The number at risk at time 0 is the population released by the count rule
        (``publish_count``), not a midpoint of its own: one true count has one released number on
        every page (a cohort of 70 is 70 on its page and 70 at risk, not 69), and two roundings of
        the same count would together narrow it down."""
        to = self.life_table_bin
        suffix = f"_midpoint{to}"
        n = table.population
        if n is None:
            raise DisclosureError(f"life table {table.name!r} needs its population (people at time 0)")
        names = {"count_at_risk": "count_at_risk" + suffix + "_derived",
                 "count_events": "count_events" + suffix + "_derived",
                 "count_censored": "count_censored" + suffix + "_derived"}
        columns = [c.model_copy(update={"name": names.get(c.name, c.name),
                                        "label": f"{c.label or c.name} (midpoint {to})" if c.name in names
                                        else c.label,
                                        "basis": [names.get(b, b) for b in c.basis],
                                        "rounding": (f"the released population less cumulative counts rounded "
                                                     f"to midpoint {to}" if c.name == "count_at_risk" else
                                                     f"from cumulative counts rounded to midpoint {to}")
                                        if c.name in names else None}) for c in table.columns]
        stamp = {"population": None, "redacted_marker": self.redacted_marker, "columns": columns,
                 "totals": [], "partitions": []}
        start = self.publish_count(n)
        if n <= self.threshold or start <= self.threshold:  # nor a label that reads as a small count
            return table.model_copy(update={**stamp, "rows": [], "notes": [
                *table.notes, f"whole table redacted: too few people ({self.threshold} or fewer, "
                              f"or a released count that small)"]})
        kept, cum_events, cum_censored, prev_events, prev_censored = [], 0, 0, 0, 0
        for raw in table.rows:
            cum_events += int(raw["count_events"])
            cum_censored += int(raw["count_censored"])
            r_events, r_censored = midpoint_round(cum_events, to), midpoint_round(cum_censored, to)
            events, censored = r_events - prev_events, r_censored - prev_censored
            at_risk = start - prev_events - prev_censored
            prev_events, prev_censored = r_events, r_censored
            if at_risk <= 0:
                break
            if events == 0 and censored == 0 and kept:
                continue
            kept.append((raw, at_risk, events, censored))
        curve = kaplan_meier([(at_risk, events) for _, at_risk, events, _ in kept])
        rows = [{**{k: v for k, v in raw.items() if k not in names},
                 names["count_at_risk"]: at_risk, names["count_events"]: events, names["count_censored"]: censored,
                 "survival": surv, "survival_lower": lower, "survival_upper": upper}
                for (raw, at_risk, events, censored), (surv, lower, upper) in zip(kept, curve)]
        return table.model_copy(update={**stamp, "rows": rows, "population": start, "notes": [
            *table.notes, f"at risk at the start: the released number of people ({start:,}); events and "
                          f"censorings from cumulative counts rounded to midpoint {to}; curve recomputed "
                          f"from the rounded counts"]})


def kaplan_meier(steps: list[tuple[int, int]]) -> list[tuple[float, float, float]]:
    """The product-limit estimate with 95% bounds on the log(-log S) scale (Kalbfleisch & Prentice;
    Greenwood variance), per step of (number at risk, events), as lifelines reports it.

    Mercia's one Kaplan-Meier: analytics estimates curves with it and disclosure control re-estimates
    them from rounded counts with it, so a published curve and its controlled version agree by construction."""
    out, surv, greenwood = [], 1.0, 0.0
    for at_risk, events in steps:
        if events:
            surv *= 1 - events / at_risk
            greenwood += events / (at_risk * (at_risk - events)) if at_risk > events else math.inf
        out.append((surv, *_loglog_bounds(surv, greenwood)))
    return out


def _loglog_bounds(surv: float, greenwood: float, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% bounds on the log(-log S) scale (Kalbfleisch & Prentice), as lifelines reports them."""
    if surv <= 0 or surv >= 1 or greenwood == 0:
        return surv, surv
    if math.isinf(greenwood):
        return 0.0, surv
    spread = z * math.sqrt(greenwood) / math.log(surv)
    return surv ** math.exp(-spread), surv ** math.exp(spread)


def _round_to_step(value: float, step: float) -> float:
    """``value`` rounded half away from zero to a power-of-ten ``step``, without float noise."""
    decimals = max(0, -round(math.log10(step)))
    rounded = math.floor(abs(value) / step + 0.5) * step * (1 if value >= 0 else -1)
    return round(rounded, decimals) + 0.0


def _groups(table: StatTable, within: list[str]) -> dict[tuple, list[int]]:
    """Row numbers by their values of ``within`` (one partition each); rows with no value in it are in none."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(table.rows):
        key = tuple(row.get(w) for w in within)
        if None not in key:
            groups.setdefault(key, []).append(i)
    return groups


def _partition_group(name: str | None, cell: str) -> str:
    return f"partition:{name}" if name is not None else f"cell:{cell}"


def _small_basis(policy: DisclosurePolicy, value: Any) -> bool:
    return isinstance(value, int | float) and value <= policy.threshold


def _as_count(value: Any, table: str, row: int, column: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or int(value) != value:
        raise DisclosureError(f"table {table!r}, row {row}, column {column!r}: {value!r} is not a count")
    return int(value)


POLICIES: dict[str, DisclosurePolicy] = {p.name: p for p in [
    DisclosurePolicy(
        name="opensafely", threshold=7, rounding_base=5, life_table_bin=6, redacted_marker="[REDACTED]",
        description="OpenSAFELY output checking: statistics describing 7 or fewer people redacted "
                    "(with secondary suppression), counts rounded to the nearest 5, totals from rounded "
                    "cells, midpoint-6 rounding for Kaplan-Meier/life tables"),
    DisclosurePolicy(
        name="nhse-hes", threshold=7, rounding_base=5, life_table_bin=6, redacted_marker="*",
        secondary_suppression=False, totals_from_published_cells=False,
        description="NHS England HES/ECDS disclosure control (since September 2018): counts 1-7 shown as *, "
                    "other counts and totals rounded to the nearest 5 (rounding replaces secondary "
                    "suppression), means and other statistics of 1-7 people shown as *, midpoint-6 "
                    "rounding for life tables"),
    DisclosurePolicy(
        name="threshold10", threshold=9, rounding_base=None, life_table_bin=10,
        redacted_marker="[REDACTED]",
        description="threshold 10: counts below 10 (1-9) redacted with secondary suppression, no "
                    "rounding, midpoint-10 rounding for life tables"),
]}
_ALIASES = {"hes": "nhse-hes", "default": "opensafely"}


def get_policy(name: str | None = None) -> DisclosurePolicy:
    """The policy called ``name``, or the configured one (``disclosure_policy`` in mercia.config)."""
    if name is None:
        from mercia.config import load_settings

        name = load_settings().disclosure_policy
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in POLICIES:
        raise DisclosureError(f"unknown disclosure policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[key]


def iter_counts(result: AnalysisResult) -> Iterable[tuple[str, str, Any]]:
    """Every (table, column, value) of a count column, for checks such as the property tests."""
    for table in result.tables:
        for col in table.columns:
            if col.kind == Kind.COUNT:
                for row in table.rows:
                    yield table.name, col.name, row.get(col.name)
