"""Linkage quality against a ground truth, and simulated demographics to measure it on.

Pairwise precision and recall: among all pairs of records put in the same person by linkage,
the share that truly are one person (precision); among all true same-person pairs, the share
that linkage joined (recall).  Computed from cluster sizes, so it is linear in records.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa


@dataclass
class Quality:
    precision: float
    recall: float
    true_pairs: int
    predicted_pairs: int
    correct_pairs: int


def pairwise_quality(predicted: np.ndarray | list, truth: np.ndarray | list) -> Quality:
    con = duckdb.connect()
    con.register("labels", pa.table({"p": pa.array(np.asarray(predicted)), "t": pa.array(np.asarray(truth))}))
    pairs = "sum(n * (n - 1) / 2)"
    predicted_pairs = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY p)").fetchall()[0][0]
    true_pairs = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY t)").fetchall()[0][0]
    correct = con.sql(f"SELECT COALESCE({pairs}, 0) FROM (SELECT count(*) n FROM labels GROUP BY p, t)").fetchall()[0][0]
    return Quality(precision=float(correct / predicted_pairs) if predicted_pairs else 1.0,
                   recall=float(correct / true_pairs) if true_pairs else 1.0,
                   true_pairs=int(true_pairs), predicted_pairs=int(predicted_pairs), correct_pairs=int(correct))


_FORENAMES = ("OLIVIA AMELIA ISLA AVA MIA IVY LILY ISABELLA ROSIE SOPHIA GRACE FREYA EVIE POPPY ELLA WILLOW ARIA "
              "EMILY SIENNA MAYA NOAH MUHAMMAD GEORGE OLIVER LEO ARTHUR OSCAR THEO HENRY ARCHIE JACK FREDDIE "
              "CHARLIE FINLEY TOMMY ISAAC ALFIE LUCA HARRY EDWARD SAMUEL JOSHUA DANIEL THOMAS JAMES WILLIAM "
              "PRIYA AISHA FATIMA RAJ AMIR SANJAY DEEPA ZARA IBRAHIM YUSUF HANNAH CHLOE RUBY JESSICA").split()
_SURNAMES = ("SMITH JONES TAYLOR BROWN WILLIAMS WILSON JOHNSON DAVIES PATEL WRIGHT ROBINSON WOOD THOMPSON EVANS "
             "WALKER WHITE ROBERTS GREEN HALL THOMAS CLARKE JACKSON WRIGHTSON HUGHES EDWARDS LEWIS HILL KHAN "
             "HARRIS MARTIN COOPER KING LEE MORRIS ALLEN MOORE CLARK SCOTT YOUNG WATSON PHILLIPS BAKER TURNER "
             "PARKER COLLINS BENNETT COOK BELL SHAH AHMED HUSSAIN SINGH KAUR BEGUM ALI MISTRY CHAUHAN").split()


def simulated_demographics(persons: int, copies: int = 2, error_rate: float = 0.05,
                           seed: int = 0) -> tuple[dict[str, list], np.ndarray]:
    """``copies`` records per person (as different organisations would hold them) with errors:
    NHS number missing or mistyped, a surname letter changed, day/month swapped, district changed.
    Returns staged-person columns (identifiers included, for the loader) and the true person per
    record (copy 0 of every person first, then copy 1, ...).  Vectorised: a million persons in seconds."""
    rng = np.random.default_rng(seed)
    first = rng.choice(np.array(_FORENAMES), persons)
    last = np.char.add(rng.choice(np.array(_SURNAMES), persons),
                       np.where(rng.random(persons) < 0.5, "", rng.choice(np.array(list("ABDEGHKLMNRST")), persons)))
    birth = (np.datetime64("1930-01-01") + rng.integers(0, 90 * 365, persons).astype("timedelta64[D]")).astype(str)
    sex = rng.choice(np.array(["male", "female"]), persons)
    district = np.char.add("B", rng.integers(1, 99, persons).astype(str))
    nhs = _nhs_numbers(rng.choice(np.arange(400_000_000, 499_999_999), persons, replace=False))
    columns: dict[str, list] = {k: [] for k in ("person_ref", "nhs_number", "family", "given", "birth_date", "sex",
                                                "postcode")}
    for copy in range(copies):
        err = rng.random((5, persons)) < error_rate
        number = nhs.copy()
        mistyped = err[1] & ~err[0] & (number != "")
        number[mistyped] = [n[:4] + str((int(n[4]) + 1) % 10) + n[5:] for n in number[mistyped]]
        number[err[0]] = ""
        family = last.copy()
        positions = rng.integers(1, np.char.str_len(family))
        family[err[2]] = [f[:p] + "X" + f[p + 1:] for f, p in zip(family[err[2]], positions[err[2]])]
        day = birth.copy()
        swap = err[3] & (np.char.str_len(day) == 10) & (np.array([int(d[8:]) for d in day]) <= 12)
        day[swap] = [f"{d[:4]}-{d[8:]}-{d[5:7]}" for d in day[swap]]
        place = np.where(err[4], np.char.add("B", rng.integers(1, 99, persons).astype(str)), district)
        postcode = np.char.add(np.char.add(place, " "), np.char.add(rng.integers(1, 9, persons).astype(str), "AA"))
        columns["person_ref"] += np.char.add(f"{copy}-", np.arange(persons).astype(str)).tolist()
        columns["nhs_number"] += [n or None for n in number.tolist()]
        columns["family"] += family.tolist()
        columns["given"] += first.tolist()
        columns["birth_date"] += day.tolist()
        columns["sex"] += sex.tolist()
        columns["postcode"] += postcode.tolist()
    return columns, np.tile(np.arange(persons), copies)


def _nhs_numbers(bases: np.ndarray) -> np.ndarray:
    """Ten-digit numbers with a modulus-11 check digit; '' where the check digit would be 10."""
    digits = (bases[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    check = 11 - (digits @ np.arange(10, 1, -1)) % 11
    check[check == 11] = 0
    out = np.char.add(np.char.zfill(bases.astype(str), 9), (check % 10).astype(str))
    out[check == 10] = ""
    return out.astype(object)


# How each region organisation type keys its patients in staging (see mercia.ingest readers).
PERSON_REF_FORMAT = {"gp": "{}", "acute": "{}", "pathology": "PID/{}", "rare_disease": "Subject/{}", "proms": "{}"}


def region_person_truth(store, region_dir, pseudonymiser) -> pa.Table:
    """(org, source_pseudonym, person_id, true_person_id) for every link record the region's
    crosswalk can identify; ``truth/crosswalk.parquet`` is read, never loaded into the store."""
    from pathlib import Path

    con = duckdb.connect()
    crosswalk = con.sql("SELECT person_id, org_code, org_type, local_id FROM read_parquet(?)",
                        params=[str(Path(region_dir) / "truth" / "crosswalk.parquet")]).to_arrow_table()
    refs = [PERSON_REF_FORMAT[t].format(local) for t, local in
            zip(crosswalk.column("org_type").to_pylist(), crosswalk.column("local_id").to_pylist())]
    orgs = crosswalk.column("org_code").to_pylist()
    pseudonyms = [None] * len(refs)
    for org in set(orgs):
        idx = [i for i, o in enumerate(orgs) if o == org]
        hashed = pseudonymiser.source_pseudonyms(org, [refs[i] for i in idx]).to_pylist()
        for i, h in zip(idx, hashed):
            pseudonyms[i] = h
    con.register("crosswalk", crosswalk.append_column("source_pseudonym", pa.array(pseudonyms, pa.string())))
    con.register("links", store.query_arrow("SELECT org, source_pseudonym, person_id FROM mercia_person_link"))
    return con.sql("""SELECT l.org, l.source_pseudonym, l.person_id, c.person_id AS true_person_id
                      FROM links l JOIN crosswalk c ON c.org_code = l.org AND c.source_pseudonym = l.source_pseudonym
                   """).to_arrow_table()


def region_linkage_quality(store, region_dir, pseudonymiser) -> Quality:
    truth = region_person_truth(store, region_dir, pseudonymiser)
    return pairwise_quality(truth.column("person_id").to_numpy(), truth.column("true_person_id").to_numpy())
