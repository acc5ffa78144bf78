"""Randomisation: simple, permuted blocks (random block sizes), stratified blocks, Pocock–Simon minimisation.

Every random draw comes from a ``KeyedStream``: HMAC-SHA-256 under a secret held outside the database,
applied to the trial, its settings version and the draw's position.  Nothing is drawn in advance, so no
allocation table exists to be read before a participant is randomised (allocation concealment), yet
anyone holding the key can reproduce every allocation for an audit.

Algorithms, from their published descriptions:
- permuted blocks with randomly varying block sizes (Matts & Lachin 1988, Controlled Clin Trials 9:327);
- minimisation (Pocock & Simon 1975, Biometrics 31:103): for each arm, the weighted sum over factors of
  the imbalance (range or variance of ratio-scaled counts) at the new participant's levels if the
  participant joined that arm; the arm with the least total imbalance is preferred with a biased-coin
  probability;
- unequal allocation ratios (Han, Enas & McEntegart 2009, Stat Med 28:3329): with arm L the arm of the
  smallest ratio and ``p`` its high probability, the preferred arm H gets
  ``p_H = 1 - (sum_{k != H} r_k / sum_{k != L} r_k) * (1 - p)`` and every other arm shares ``1 - p_H`` in
  proportion to its ratio, so the allocation ratio is kept in expectation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

KEY_ENV = "MERCIA_RANDOMISATION_KEY"
KEY_FILE_ENV = "MERCIA_RANDOMISATION_KEY_FILE"
METHODS = ("simple", "block", "stratified", "minimisation")


class RandomisationError(Exception):
    """Randomisation settings or a request that cannot be honoured; the message says which."""


def load_randomisation_key() -> bytes:
    """The secret behind every trial's random stream: ``$MERCIA_RANDOMISATION_KEY`` or the file named by
    ``$MERCIA_RANDOMISATION_KEY_FILE`` (outside the repository); at least 32 bytes."""
    raw = os.environ.get(KEY_ENV)
    if raw is None:
        path = os.environ.get(KEY_FILE_ENV)
        if not path:
            raise RandomisationError(f"no randomisation key: set {KEY_ENV} or {KEY_FILE_ENV} "
                                     "(e.g. a file made with `openssl rand -hex 32`, kept outside the repository)")
        resolved = Path(path).expanduser().resolve()
        if resolved.is_relative_to(Path(__file__).resolve().parents[2]):
            raise RandomisationError(f"refusing a randomisation key file inside the repository: {resolved}")
        raw = resolved.read_text().strip()
    if len(raw.encode()) < 32:
        raise RandomisationError("the randomisation key is too short: need at least 32 bytes")
    return raw.encode()


class KeyedStream:
    """Deterministic random numbers addressed by context: the same key and context give the same draw."""

    def __init__(self, key: bytes):
        self._key = key

    def __repr__(self) -> str:
        return "KeyedStream(<key hidden>)"

    def digest(self, *context: object) -> bytes:
        return hmac.new(self._key, "|".join(map(str, context)).encode(), hashlib.sha256).digest()

    def uniform(self, *context: object) -> float:
        """A draw in [0, 1) with 53 random bits."""
        return (int.from_bytes(self.digest(*context)[:8], "big") >> 11) / float(1 << 53)

    def generator(self, *context: object) -> np.random.Generator:
        return np.random.default_rng(int.from_bytes(self.digest(*context), "big"))

    def code(self, *context: object, length: int = 8) -> str:
        """A pack/kit code that reveals nothing about the arm without the key."""
        return self.digest("pack", *context).hex()[:length].upper()


@dataclass(frozen=True)
class Arm:
    code: str
    ratio: int = 1


@dataclass(frozen=True)
class Factor:
    name: str
    levels: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class Settings:
    """A trial's randomisation settings; fixed once the first participant is allocated."""

    method: Literal["simple", "block", "stratified", "minimisation"]
    arms: tuple[Arm, ...]
    factors: tuple[Factor, ...] = ()
    block_multiples: tuple[int, ...] = (1, 2)      # block size = sum(ratios) * a multiple drawn at random
    probability: float = 0.8                       # minimisation's biased-coin probability
    imbalance: Literal["range", "variance"] = "range"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise RandomisationError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if len(self.arms) < 2 or len({a.code for a in self.arms}) != len(self.arms):
            raise RandomisationError("a trial needs at least two arms with distinct codes")
        if any(a.ratio < 1 for a in self.arms):
            raise RandomisationError("allocation ratios are whole numbers of at least 1")
        if self.method in ("stratified", "minimisation") and not self.factors:
            raise RandomisationError(f"{self.method} randomisation needs at least one factor")
        for f in self.factors:
            if len(f.levels) < 2 or len(set(f.levels)) != len(f.levels):
                raise RandomisationError(f"factor {f.name!r} needs at least two distinct levels")
            if f.weight <= 0:
                raise RandomisationError(f"factor {f.name!r}: weight must be positive")
        if not self.block_multiples or any(m < 1 for m in self.block_multiples):
            raise RandomisationError("block multiples are whole numbers of at least 1")
        if not 0.5 <= self.probability <= 1:
            raise RandomisationError("the biased-coin probability is between 0.5 and 1")
        if self.imbalance not in ("range", "variance"):
            raise RandomisationError("imbalance is 'range' or 'variance'")

    @classmethod
    def from_dict(cls, d: dict) -> Settings:
        try:
            return cls(method=d["method"], arms=tuple(Arm(a["code"], int(a.get("ratio", 1))) for a in d["arms"]),
                       factors=tuple(Factor(f["name"], tuple(f["levels"]), float(f.get("weight", 1)))
                                     for f in d.get("factors", [])),
                       block_multiples=tuple(d.get("block_multiples", (1, 2))),
                       probability=float(d.get("probability", 0.8)), imbalance=d.get("imbalance", "range"))
        except (KeyError, TypeError, ValueError) as exc:
            raise RandomisationError(f"randomisation settings: missing or bad field {exc}") from exc

    def to_dict(self) -> dict:
        return {"method": self.method, "arms": [{"code": a.code, "ratio": a.ratio} for a in self.arms],
                "factors": [{"name": f.name, "levels": list(f.levels), "weight": f.weight} for f in self.factors],
                "block_multiples": list(self.block_multiples), "probability": self.probability,
                "imbalance": self.imbalance}

    def check_levels(self, levels: dict[str, str]) -> None:
        for f in self.factors:
            if levels.get(f.name) not in f.levels:
                raise RandomisationError(f"factor {f.name!r}: level {levels.get(f.name)!r} is not one of "
                                         f"{', '.join(f.levels)}")


def _weighted_pick(u: float, codes: Sequence[str], weights: Sequence[float]) -> str:
    total, acc = float(sum(weights)), 0.0
    for code, w in zip(codes, weights, strict=True):
        acc += w / total
        if u < acc:
            return code
    return codes[-1]


@dataclass
class Allocator:
    """Allocates participants one at a time under ``settings``, drawing from ``stream`` at ``context``.

    State is what has been allocated so far (counts per stratum, per factor level), so an allocator can be
    rebuilt from the stored allocations at any time (``replay``) and continues exactly where it left off.
    ``allocated`` counts every randomisation made, so no draw position or block place is used twice, even
    where a randomisation was later set aside as a duplicate enrolment (it counts in no balance).
    Counts are kept in plain lists: with a handful of arms and factors that is several times faster than
    numpy's per-call overhead, and minimisation must keep up with 1,000 allocations a second.
    """

    settings: Settings
    stream: KeyedStream
    context: tuple = ()
    allocated: int = 0
    per_stratum: dict[tuple, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self._codes = [a.code for a in s.arms]
        self._ratios = [float(a.ratio) for a in s.arms]
        self._level_index = [{lv: i for i, lv in enumerate(f.levels)} for f in s.factors]
        # margins[factor][level][arm]: participants allocated so far with that level, per arm
        self.margins = [[[0] * len(s.arms) for _ in f.levels] for f in s.factors]
        self._blocks: dict[tuple, tuple[int, int, list[str]]] = {}   # stratum -> (block no., start, block)

    def replay(self, history: Sequence[tuple[dict[str, str], str]], set_aside: Sequence[dict[str, str]] = ()
               ) -> Allocator:
        """Take earlier allocations (levels, arm) into account without drawing; ``set_aside``: the levels of
        randomisations set aside as duplicate enrolments, whose draws and block places are spent but whose
        participants count in no minimisation margin (the same human's kept randomisation does)."""
        for levels, arm in history:
            self._record(levels, self._codes.index(arm))
        for levels in set_aside:
            self._record(levels, None)
        return self

    def _stratum(self, levels: dict[str, str]) -> tuple:
        return tuple(levels[f.name] for f in self.settings.factors) if self.settings.method == "stratified" else ()

    def _record(self, levels: dict[str, str], arm: int | None) -> None:
        stratum = self._stratum(levels)
        self.per_stratum[stratum] = self.per_stratum.get(stratum, 0) + 1
        if arm is not None:
            for i, f in enumerate(self.settings.factors):
                self.margins[i][self._level_index[i][levels[f.name]]][arm] += 1
        self.allocated += 1

    def allocate(self, levels: dict[str, str] | None = None) -> tuple[str, dict]:
        """The next participant's arm and what was used to decide it (for the audit log)."""
        levels = levels or {}
        self.settings.check_levels(levels)
        method = self.settings.method
        n = self.allocated
        if method == "simple":
            u = self.stream.uniform(*self.context, "simple", n)
            arm, detail = _weighted_pick(u, self._codes, self._ratios), {"draw": u}
        elif method in ("block", "stratified"):
            stratum = self._stratum(levels)
            arm, detail = self._block_allocation(stratum, self.per_stratum.get(stratum, 0))
        else:
            arm, detail = self._minimise(levels, n)
        self._record(levels, self._codes.index(arm))
        return arm, {"method": method, "sequence": n + 1, "levels": levels, **detail}

    # -- permuted blocks ---------------------------------------------------------------------
    def _block(self, stratum: tuple, b: int) -> list[str]:
        s = self.settings
        base = [a.code for a in s.arms for _ in range(a.ratio)]
        m = s.block_multiples[int(self.stream.uniform(*self.context, "block-size", *stratum, b)
                                  * len(s.block_multiples))]
        return [str(c) for c in self.stream.generator(*self.context, "block", *stratum, b).permutation(base * m)]

    def _block_allocation(self, stratum: tuple, position: int) -> tuple[str, dict]:
        b, start, block = self._blocks.get(stratum) or (0, 0, self._block(stratum, 0))
        while position >= start + len(block):
            b, start = b + 1, start + len(block)
            block = self._block(stratum, b)
        self._blocks[stratum] = (b, start, block)
        return block[position - start], {"stratum": list(stratum), "block": b, "block_size": len(block)}

    # -- minimisation ------------------------------------------------------------------------
    def imbalance_if(self, levels: dict[str, str]) -> list[float]:
        """Total weighted imbalance per candidate arm, were the participant to join it."""
        ratios, k = self._ratios, len(self._codes)
        rows = [(f.weight, self.margins[i][self._level_index[i][levels[f.name]]])
                for i, f in enumerate(self.settings.factors)]
        variance = self.settings.imbalance == "variance"
        scores = []
        for cand in range(k):
            total = 0.0
            for weight, counts in rows:
                scaled = [(counts[a] + (a == cand)) / ratios[a] for a in range(k)]
                if variance:
                    mean = sum(scaled) / k
                    total += weight * sum((x - mean) ** 2 for x in scaled) / (k - 1)
                else:
                    total += weight * (max(scaled) - min(scaled))
            scores.append(total)
        return scores

    def _minimise(self, levels: dict[str, str], n: int) -> tuple[str, dict]:
        scores = self.imbalance_if(levels)
        low = min(scores)
        best = [i for i, sc in enumerate(scores) if sc - low <= 1e-9]
        u = self.stream.uniform(*self.context, "minimise", n)
        if len(best) == len(scores):
            total = sum(self._ratios)
            probs = [r / total for r in self._ratios]
            preferred = None
        else:
            preferred = best[int(self.stream.uniform(*self.context, "minimise-tie", n) * len(best))]
            probs = self._han_probabilities(preferred)
        arm = _weighted_pick(u, self._codes, probs)
        return arm, {"imbalance": dict(zip(self._codes, [round(x, 6) for x in scores], strict=True)),
                     "preferred": None if preferred is None else self._codes[preferred],
                     "probabilities": dict(zip(self._codes, [round(x, 6) for x in probs], strict=True)), "draw": u}

    def _han_probabilities(self, preferred: int) -> list[float]:
        r, p = self._ratios, self.settings.probability
        total, lowest = sum(r), min(r)
        p_high = 1 - (total - r[preferred]) / (total - lowest) * (1 - p)
        rest = total - r[preferred]
        return [p_high if i == preferred else (1 - p_high) * ri / rest for i, ri in enumerate(r)]


# -- simulation --------------------------------------------------------------------------------
def simulate(method: str, participants: int, factors: int, seed: int, probability: float = 0.8,
             levels_per_factor: Sequence[int] | None = None) -> list[dict]:
    """One simulated trial: ``participants`` with random factor levels (2–3 per factor), two arms 1:1.

    Returns one row per participant (participant, arm, factor_1..factor_K), reproducible for ``seed``.
    """
    if participants < 1 or factors < 0:
        raise RandomisationError("participants must be at least 1 and factors at least 0")
    stream = KeyedStream(f"mercia-simulation:{seed}".encode())
    rng = stream.generator("participants")
    sizes = list(levels_per_factor) if levels_per_factor else rng.integers(2, 4, size=factors).tolist()
    facs = tuple(Factor(f"factor_{i + 1}", tuple(f"L{j + 1}" for j in range(sizes[i]))) for i in range(factors))
    if method in ("stratified", "minimisation") and not facs:
        raise RandomisationError(f"{method} needs --factors of at least 1")
    settings = Settings(method=method, arms=(Arm("A"), Arm("B")), factors=facs, probability=probability)
    allocator = Allocator(settings, stream, ("simulation",))
    draws = [rng.integers(0, len(f.levels), size=participants) for f in facs]
    rows = []
    for i in range(participants):
        levels = {f.name: f.levels[int(draws[j][i])] for j, f in enumerate(facs)}
        arm, _ = allocator.allocate(levels)
        rows.append({"participant": i + 1, "arm": arm, **levels})
    return rows


def marginal_imbalance(rows: Sequence[dict], factor_names: Sequence[str], arms: tuple[str, str] = ("A", "B")) -> int:
    """Sum over every factor level of |n_A - n_B|: the marginal imbalance minimisation targets."""
    total = 0
    for name in factor_names:
        counts: dict[str, list[int]] = {}
        for r in rows:
            c = counts.setdefault(r[name], [0, 0])
            c[arms.index(r["arm"])] += 1
        total += sum(abs(a - b) for a, b in counts.values())
    return total
