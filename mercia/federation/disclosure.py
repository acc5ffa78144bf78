"""Disclosure control of federated counts: the platform's policies, plus SHRINE-style seeded noise.

Every per-site count and every network total passes ``publish``.  The platform's policies
(``mercia.privacy.disclosure``; OpenSAFELY by default) hide small counts and round.  ``shrine``
adds Gaussian noise (sd 1.33, clamped to +/-3, as i2b2/SHRINE) and hides counts of 10 or fewer; its
noise is seeded from the question and the nodes' data versions, so asking again returns the same
answer instead of letting the noise be averaged away.  ``none`` publishes true counts: it exists for
ground-truth tests and must be switched on explicitly (``allow_raw``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mercia.privacy.disclosure import DisclosureError, DisclosurePolicy, get_policy

SHRINE_SD, SHRINE_CLAMP, SHRINE_THRESHOLD = 1.33, 3, 10


@dataclass(frozen=True)
class FederatedPolicy:
    name: str
    description: str
    redacted_marker: str | None
    base: DisclosurePolicy | None = None

    def publish(self, value: int, seed: str) -> int | None:
        """The published count, or None when it must be hidden (shown as ``redacted_marker``)."""
        if self.name == "none":
            return value
        if self.name == "shrine":
            rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
            noisy = value + int(np.clip(round(rng.normal(0, SHRINE_SD)), -SHRINE_CLAMP, SHRINE_CLAMP))
            return None if noisy <= SHRINE_THRESHOLD else noisy
        return None if self.base.is_small(value) else self.base.publish_count(value)

    def publish_cells(self, total: int, cells: dict[str, int], partition: Callable[[str], str | None], seed: str,
                      cell_seed: str) -> tuple[int | None, dict[str, int | None]]:
        """A total and its cells published together, so that no hidden cell is the total less the cells
        shown (the platform's policies: ``DisclosurePolicy.publish_breakdown``, ``partition`` naming each
        cell's partition of the total); ``shrine`` and ``none`` publish each figure on its own (a cell's
        noise seeded by ``cell_seed`` and its name)."""
        if self.base is not None:
            return self.base.publish_breakdown(total, cells, partition=partition)
        return self.publish(total, seed), {cell: self.publish(n, cell_seed + cell) for cell, n in cells.items()}


def federated_policy(name: str, allow_raw: bool = False) -> FederatedPolicy:
    if name == "none":
        if not allow_raw:
            raise DisclosureError("the 'none' policy (true counts) is for ground-truth tests only; "
                                  "this hub does not allow it")
        return FederatedPolicy("none", "no disclosure control (test setting)", None)
    if name == "shrine":
        return FederatedPolicy("shrine", f"i2b2/SHRINE-style: Gaussian noise (sd {SHRINE_SD}, clamped "
                               f"+/-{SHRINE_CLAMP}) seeded by question and data version; {SHRINE_THRESHOLD} "
                               "or fewer hidden", f"<={SHRINE_THRESHOLD}")
    base = get_policy(name)
    return FederatedPolicy(base.name, base.description, base.redacted_marker, base)
