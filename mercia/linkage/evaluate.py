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
    Returns staged-person columns (identifiers included, for the loader) and the true person per record."""
    rng = np.random.default_rng(seed)
    first = rng.choice(_FORENAMES, persons)
    last = np.char.add(rng.choice(_SURNAMES, persons),
                       np.where(rng.random(persons) < 0.5, "", rng.choice(list("ABDEGHKLMNRST"), persons)))
    birth = np.datetime64("1930-01-01") + rng.integers(0, 90 * 365, persons).astype("timedelta64[D]")
    sex = rng.choice(["male", "female"], persons)
    district = np.char.add("B", rng.integers(1, 99, persons).astype(str))
    nhs_base = rng.choice(np.arange(400_000_000, 499_999_999), persons, replace=False)
    columns: dict[str, list] = {k: [] for k in ("person_ref", "nhs_number", "family", "given", "birth_date", "sex",
                                                "postcode")}
    truth = []
    for copy in range(copies):
        err = rng.random((6, persons))
        for i in range(persons):
            nhs = _with_check_digit(int(nhs_base[i]))
            if err[0, i] < error_rate:
                nhs = None
            elif err[1, i] < error_rate and nhs:
                nhs = nhs[:4] + str((int(nhs[4]) + 1) % 10) + nhs[5:]
            family = str(last[i])
            if err[2, i] < error_rate:
                pos = int(rng.integers(1, len(family)))
                family = family[:pos] + "X" + family[pos + 1:]
            day = str(birth[i])
            if err[3, i] < error_rate and int(day[8:]) <= 12:
                day = f"{day[:4]}-{day[8:]}-{day[5:7]}"
            place = str(district[i]) if err[4, i] >= error_rate else f"B{int(rng.integers(1, 99))}"
            columns["person_ref"].append(f"{copy}-{i}")
            columns["nhs_number"].append(nhs)
            columns["family"].append(family)
            columns["given"].append(str(first[i]))
            columns["birth_date"].append(day)
            columns["sex"].append(str(sex[i]))
            columns["postcode"].append(f"{place} {int(rng.integers(1, 9))}AA")
            truth.append(i)
    return columns, np.array(truth)


def _with_check_digit(base: int) -> str | None:
    digits = [int(c) for c in f"{base:09d}"]
    check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
    check = 0 if check == 11 else check
    return None if check == 10 else f"{base:09d}{check}"


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
